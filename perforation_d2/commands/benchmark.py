"""``python -m perforation_d2 benchmark``: speed and memory targets as ratios measured in one run.

Runs the sections of :mod:`perforation_d2.benchmarks` asked for, prints one table and, with
``--write``, writes it to a markdown file (``BENCHMARKS.md``).
"""

from __future__ import annotations

import argparse
import datetime as _dt

from ..benchmarks import SECTIONS
from ..benchmarks.common import BenchRow, machine_description, markdown_table
from ..io.atomic import atomic_write_text, check_free


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), help="sections to run"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (for tests)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--full-size", action="store_true",
                        help="GPU figures at the paper's size: 640 px, ResNet50-FPN, T=5 and T=9")
    parser.add_argument("--write", metavar="MD", default=None, help="also write the table to this markdown file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --write file")


def run(args: argparse.Namespace) -> int:
    if args.write:
        # Before the sections: a long run must not end in a refusal to write its table.
        check_free(args.write, args.overwrite)
    rows: list[BenchRow] = []
    for name in args.sections:
        section_rows = SECTIONS[name](args)
        for row in section_rows:
            print(" | ".join(row.cells()), flush=True)
        rows.extend(section_rows)
    table = markdown_table(rows)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print()
    print(f"Measured {stamp} on {machine_description()}")
    print(table)
    if args.write:
        text = (
            "# Benchmarks\n\n"
            f"Produced by `python -m perforation_d2 benchmark` on {stamp}.\n\n"
            f"Machine: {machine_description()}.\n\n"
            "Every ratio is the median over interleaved rounds of two timings taken in the same round.\n\n"
            f"{table}\n"
        )
        atomic_write_text(args.write, text, overwrite=args.overwrite)
    failed = [r for r in rows if r.met is False]
    if failed:
        print(f"{len(failed)} target(s) not met: " + "; ".join(f"{r.section}/{r.measure}" for r in failed))
    return 0
