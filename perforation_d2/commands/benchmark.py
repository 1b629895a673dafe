"""``python -m perforation_d2 benchmark``: speed and memory targets as ratios measured in one run.

These machines are noisy, so every figure is a ratio of two timings taken in the same process,
one right after the other, never an absolute time checked against a constant. Each area of the
package contributes a *section*: a function ``(args) -> list[BenchRow]`` named in ``SECTIONS``.
The command prints one table and, with ``--write``, rewrites ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import platform
from dataclasses import dataclass

from ..io.atomic import atomic_write_text, check_outputs_free

# section name -> "module:function"; run in this order.
SECTIONS: dict[str, str] = {
    "data": "perforation_d2.benchmarks.data:benchmark_data",
    "training": "perforation_d2.benchmarks.training:benchmark_training",
    "inference": "perforation_d2.benchmarks.inference:benchmark_inference",
    "evaluator": "perforation_d2.benchmarks.evaluation:benchmark_evaluator",
}


@dataclass
class BenchRow:
    """One line of the benchmark table."""

    section: str
    measure: str
    value: float  # a ratio (or a plain figure when ``unit`` says so)
    unit: str = "x"
    target: str = ""  # e.g. "<= 3x"; empty when the line is informative only
    met: bool | None = None
    note: str = ""  # what was compared with what, sizes, workers...

    def cells(self) -> list[str]:
        met = "" if self.met is None else ("yes" if self.met else "NO")
        value = f"{self.value:.3g}" if abs(self.value) < 1000 else f"{self.value:.0f}"
        return [self.section, self.measure, f"{value} {self.unit}".strip(), self.target, met, self.note]


HEADER = ["section", "measure", "value", "target", "met", "how"]


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def markdown_table(rows: list[BenchRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


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
        check_outputs_free([args.write], args.overwrite)
    rows: list[BenchRow] = []
    for name in args.sections:
        module_name, func_name = SECTIONS[name].split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        section_rows = func(args)
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
            "Every ratio is two timings taken in the same run, one after the other.\n\n"
            f"{table}\n"
        )
        atomic_write_text(args.write, text, overwrite=args.overwrite)
    failed = [r for r in rows if r.met is False]
    if failed:
        print(f"{len(failed)} target(s) not met: " + "; ".join(f"{r.section}/{r.measure}" for r in failed))
    return 0
