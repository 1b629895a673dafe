"""``python -m perforation_d2 evaluate``: series-level metrics of one predictions file.

Writes ``DIR/metrics.json`` (every key of SPEC section 4), ``DIR/roc.png`` and ``DIR/pr.png``
and prints a short summary. A cohort with a single class still evaluates: the ROC values are
null in ``metrics.json`` and a warning says why (``compare``, which needs AUCs, refuses it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..data.cohort import load_cohort
from ..errors import DSAInputError
from ..utils.fileio import atomic_write_json, check_outputs_free
from .metrics import DSAMetricWarning, evaluate_series
from .plots import save_evaluation_plots


def read_predictions_json(path: str | Path) -> list[dict[str, Any]]:
    """Read a COCO results file. An empty file is an error; ``[]`` means "no detection"."""
    path = Path(path)
    if not path.is_file():
        raise DSAInputError(f"{path}: predictions file not found.")
    data = path.read_bytes()
    if not data.strip():
        raise DSAInputError(
            f"{path}: the predictions file is empty ({len(data)} bytes); a run without any detection "
            "is written as an empty JSON list [] (an empty file usually means an interrupted run)."
        )
    try:
        predictions = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DSAInputError(f"{path}: not valid JSON ({err}); expected a list of COCO results.") from None
    if not isinstance(predictions, list):
        raise DSAInputError(
            f"{path}: expected a JSON list of COCO results "
            f'{{"image_id", "category_id", "bbox": [x, y, w, h], "score"}}, found a {type(predictions).__name__}.'
        )
    return predictions


@contextlib.contextmanager
def printed_metric_warnings() -> Iterator[None]:
    """Print each :class:`DSAMetricWarning` raised inside as one ``warning: ...`` line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DSAMetricWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, DSAMetricWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_lines(metrics: dict[str, Any], series_optimization: bool) -> list[str]:
    """A few human-readable lines about ``metrics``."""
    m = metrics
    return [
        f"series: {m['num_series']} ({m['num_positive_series']} positive); "
        f"series optimisation: {'on' if series_optimization else 'off'}",
        f"AUC {_value(m['AUC'])}; Youden threshold {_value(m['threshold'])}: sensitivity "
        f"{_value(m['sensitivity'])}, specificity {_value(m['specificity'])}; "
        f"sensitivity at 95% specificity {_value(m['sens_at_95spec'])}",
        f"boxes at the threshold: IoU>=0.5 precision {_value(m['precision_iou50'])} recall "
        f"{_value(m['recall_iou50'])}; centre precision {_value(m['precision_center'])} recall "
        f"{_value(m['recall_center'])}; AUPRC_center {_value(m['AUPRC_center'])}",
        f"COCO AP50 {_value(m['AP50_coco'])}; COCO AP (centre) {_value(m['AP_center_coco'])}",
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, metavar="COHORT.json", help="cohort JSON (COCO-video)")
    parser.add_argument("--pred", required=True, metavar="PRED.json", help="COCO results of the model")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--no-series-optimization", action="store_true",
                        help="score the per-frame top detections without series optimisation")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DSAInputError(f"{out}: --out must be a folder, but a file of that name exists.")
    metrics_path = out / "metrics.json"
    check_outputs_free([metrics_path, out / "roc.png", out / "pr.png"], args.overwrite)
    cohort = load_cohort(args.gt, check_images=False)
    predictions = read_predictions_json(args.pred)
    series_optimization = not args.no_series_optimization
    with printed_metric_warnings():
        evaluation = evaluate_series(cohort, predictions, series_optimization, source=str(args.pred))
    atomic_write_json(metrics_path, evaluation.metrics, overwrite=args.overwrite)
    save_evaluation_plots(out, evaluation, overwrite=args.overwrite)
    for line in summary_lines(evaluation.metrics, series_optimization):
        print(line)
    print(f"wrote {metrics_path}, roc.png and pr.png")
    return 0
