"""``python -m perforation_d2 compare``: several models on one cohort, as in the paper's Table 1.

Every predictions file and the median ensemble, with bootstrap AUC intervals and DeLong tests
(:mod:`perforation_d2.evaluation.comparison`). Writes ``compare.json``, ``table.md`` and
``roc_overlay.png``.

AUCs and DeLong tests need both classes (at least two series of each), so a cohort without
positive or without negative series is refused up front. ``--splits SPLITS.json --fold K``
(``--loco HELDOUT``, ``--part``) compares on one split's series, as ``evaluate`` does.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..arguments import bounded_int, seed
from ..errors import DSAInputError
from ..evaluation.cohort_index import CohortIndex
from ..evaluation.comparison import check_both_classes, compare_models, default_names
from ..evaluation.ensemble import ENSEMBLE_NAME
from ..evaluation.selection import add_split_arguments, check_split_arguments, evaluate_files, select_series
from ..experiments.diagnostics import TIME_USE_OUTPUTS, time_use_of_files_markdown
from ..io.transaction import OutputTransaction

# The bootstrap's cost grows linearly with N (one AUC per resample and model); beyond this bound a
# run takes hours and its percentile interval is no more precise than the AUC's own uncertainty.
MAX_BOOTSTRAP = 100_000
OUTPUT_NAMES = ("compare.json", "table.md", "roc_overlay.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, metavar="COHORT.json", help="cohort JSON (COCO-video)")
    parser.add_argument("--pred", required=True, action="append", metavar="PRED.json",
                        help="COCO results of one model (repeat, at least twice)")
    parser.add_argument("--name", action="append", metavar="NAME",
                        help="display name of each --pred, in the same order (default: file names)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--bootstrap", type=bounded_int(0, MAX_BOOTSTRAP, "a resample count"), default=2000,
                        metavar="N", help=f"patient-level bootstrap resamples for the AUC intervals (0: none; "
                                          f"at most {MAX_BOOTSTRAP})")
    parser.add_argument("--seed", type=seed, default=0, help="bootstrap seed (0 to 2**32-1)")
    parser.add_argument("--no-series-optimization", action="store_true",
                        help="score the per-frame top detections without series optimisation")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--time-use", action="store_true",
                        help="also score the clip ablations the time-use diagnostic keeps next to each --pred "
                             "(clip_centre/, clip_reverse/, clip_shuffle/predictions.json): AUC with and "
                             "without the time course, with paired patient-level bootstrap CIs")
    add_split_arguments(parser)


def _check_arguments(args: argparse.Namespace) -> list[str]:
    if len(args.pred) < 2:
        raise DSAInputError("compare: give at least two --pred files (use `evaluate` for a single model).")
    names = list(args.name) if args.name else default_names(args.pred)
    if len(names) != len(args.pred):
        raise DSAInputError(f"compare: {len(names)} --name for {len(args.pred)} --pred; give one name per file.")
    repeated = [name for name, count in Counter(names + [ENSEMBLE_NAME]).items() if count > 1]
    if repeated:
        raise DSAInputError(f"compare: model names must be unique and differ from {ENSEMBLE_NAME!r}; "
                            f"repeated: {', '.join(repeated)} (use --name).")
    check_split_arguments(args)
    return names


def run(args: argparse.Namespace) -> int:
    names = _check_arguments(args)
    # Checked before any work: a folder that is not this tool's, or outputs without --overwrite.
    written = OUTPUT_NAMES + (TIME_USE_OUTPUTS if args.time_use else ())
    outputs = OutputTransaction(args.out, "compare", args.overwrite, names=written)
    selection = select_series(args)
    index = CohortIndex(selection.cohort)
    check_both_classes(index, str(args.gt), selection.split, args.splits)
    series_optimization = not args.no_series_optimization
    evaluations = evaluate_files(selection, args.pred, series_optimization, index)
    comparison = compare_models(index, evaluations, names, [str(p) for p in args.pred], args.bootstrap, args.seed,
                                series_optimization, str(args.gt), selection.split, args.splits)
    time_use = None
    if args.time_use:
        time_use, time_table = time_use_of_files_markdown(selection, [str(p) for p in args.pred], names, evaluations,
                                                          series_optimization, index)
    with outputs:
        outputs.write_json("compare.json", comparison.report)
        outputs.write_text("table.md", comparison.table)
        outputs.write_bytes("roc_overlay.png", comparison.roc_png)
        if time_use is not None:
            outputs.write_json("time_use.json", time_use)
            outputs.write_text("time_use.md", "\n".join(time_table) + "\n")
    print(comparison.table, end="")
    if time_use is not None:
        print("\n".join(["", "Time use:", *time_table[2:]]))
    print(f"wrote {', '.join(str(Path(args.out) / n) for n in written)}")
    return 0
