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
from ..experiments.diagnostics import TIME_USE_OUTPUTS, time_use_of_files_markdown
from ..io.transaction import OutputTransaction

OUTPUT_NAMES = ("metrics.json", "roc.png", "pr.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, metavar="COHORT.json", help="cohort JSON (COCO-video)")
    parser.add_argument("--pred", required=True, metavar="PRED.json", help="COCO results of the model")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--no-series-optimization", action="store_true",
                        help="score the per-frame top detections without series optimisation")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--time-use", action="store_true",
                        help="also score the clip ablations the time-use diagnostic keeps next to each --pred "
                             "(clip_centre/, clip_reverse/, clip_shuffle/predictions.json): AUC with and "
                             "without the time course, with paired patient-level bootstrap CIs")
    add_split_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_split_arguments(args)
    # Checked before any work: a folder that is not this tool's, or outputs without --overwrite.
    names = OUTPUT_NAMES + (TIME_USE_OUTPUTS if args.time_use else ())
    outputs = OutputTransaction(args.out, "evaluate", args.overwrite, names=names)
    selection = select_series(args)
    series_optimization = not args.no_series_optimization
    [evaluation] = evaluate_files(selection, [args.pred], series_optimization)
    time_use = None
    if args.time_use:
        time_use, table = time_use_of_files_markdown(selection, [args.pred], [Path(args.pred).name], [evaluation],
                                                     series_optimization)
    with outputs:
        outputs.write_json("metrics.json", evaluation.metrics)
        for name, png in evaluation_plot_pngs(evaluation).items():
            outputs.write_bytes(name, png)
        if time_use is not None:
            outputs.write_json("time_use.json", time_use)
            outputs.write_text("time_use.md", "\n".join(table) + "\n")
    if selection.split:
        print(f"evaluated {selection.split} of {args.splits}")
    for line in summary_lines(evaluation.metrics, series_optimization):
        print(line)
    if time_use is not None:
        print("\n".join(table[2:]))
    print(f"wrote {', '.join(str(Path(args.out) / n) for n in names)}")
    return 0
