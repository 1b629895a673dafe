"""``python -m perforation_d2 evaluate``: series-level metrics of one predictions file.

Writes ``DIR/metrics.json`` (every metric key), ``DIR/roc.png`` and ``DIR/pr.png`` and prints a
short summary. A cohort with a single class still evaluates: the ROC values are null in
``metrics.json`` and a warning says why (``compare``, which needs AUCs, refuses it). A series
without any prediction scores 0; ``--splits SPLITS.json --fold K`` (or ``--loco HELDOUT``,
``--part``) scores only one split's series (:mod:`perforation_d2.evaluation.selection`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.metrics import summary_lines
from ..evaluation.plots import evaluation_plot_pngs
from ..evaluation.selection import add_split_arguments, check_split_arguments, evaluate_files, select_series
from ..io.transaction import OutputTransaction

OUTPUT_NAMES = ("metrics.json", "roc.png", "pr.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, metavar="COHORT.json", help="cohort JSON (COCO-video)")
    parser.add_argument("--pred", required=True, metavar="PRED.json", help="COCO results of the model")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--no-series-optimization", action="store_true",
                        help="score the per-frame top detections without series optimisation")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_split_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_split_arguments(args)
    # Checked before any work: a folder that is not this tool's, or outputs without --overwrite.
    outputs = OutputTransaction(args.out, "evaluate", args.overwrite, names=OUTPUT_NAMES)
    selection = select_series(args)
    series_optimization = not args.no_series_optimization
    [evaluation] = evaluate_files(selection, [args.pred], series_optimization)
    with outputs:
        outputs.write_json("metrics.json", evaluation.metrics)
        for name, png in evaluation_plot_pngs(evaluation).items():
            outputs.write_bytes(name, png)
    if selection.split:
        print(f"evaluated {selection.split} of {args.splits}")
    for line in summary_lines(evaluation.metrics, series_optimization):
        print(line)
    print(f"wrote {Path(args.out) / 'metrics.json'}, roc.png and pr.png")
    return 0
