"""``python -m perforation_d2 evaluate``: series-level metrics of one predictions file.

Writes ``DIR/metrics.json`` (every key of SPEC section 4), ``DIR/roc.png`` and ``DIR/pr.png``
and prints a short summary. A cohort with a single class still evaluates: the ROC values are
null in ``metrics.json`` and a warning says why (``compare``, which needs AUCs, refuses it).

A series without any prediction scores 0. Predictions of one fold's validation run cover only
that fold's series, so ``--splits SPLITS.json --fold K`` (or ``--loco HELDOUT``; the file of the
``split`` command) restricts the cohort to that fold's validation (``--part train``: training)
series; predictions on frames of the other series are ignored. Without it, a predictions file
that leaves some series without any prediction gets a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..data.cohort import load_cohort
from ..errors import DSAInputError
from ..evaluation.metrics import DSAMetricWarning, evaluate_series, restrict_cohort
from ..evaluation.plots import evaluation_plot_pngs
from ..io.atomic import check_outputs_free
from ..io.output_set import write_output_set


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


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--splits SPLITS.json`` with ``--fold K`` or ``--loco HELDOUT``, and ``--part val|train``."""
    group = parser.add_argument_group("evaluating one split (series of other splits are left out)")
    group.add_argument("--splits", metavar="SPLITS.json", help="splits file written by the split command")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--fold", type=int, metavar="K", help="the series of fold K")
    choice.add_argument("--loco", metavar="HELDOUT", help="the series of the leave-one-cohort-out split of HELDOUT")
    group.add_argument("--part", choices=("val", "train"), default="val",
                       help="the validation (default) or training series of that split")


def _read_split(args: argparse.Namespace) -> tuple[list[int], str] | None:
    """The video ids selected by the split arguments and their description; None without them."""
    if args.splits is None:
        if args.fold is not None or args.loco is not None:
            raise DSAInputError("--fold and --loco select a split of a splits file: pass --splits SPLITS.json.")
        return None
    path = Path(args.splits)
    if args.fold is None and args.loco is None:
        raise DSAInputError(f"{path}: say which split to evaluate with --fold K or --loco HELDOUT.")
    try:
        splits = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DSAInputError(f"{path}: splits file not found.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DSAInputError(f"{path}: cannot read the splits file ({err}).") from None
    if not isinstance(splits, dict) or not isinstance(splits.get("folds"), list):
        raise DSAInputError(f"{path}: not a splits file: expected a JSON object with a 'folds' list "
                            "(written by `python -m perforation_d2 split`).")
    if args.fold is not None:
        kind, key, wanted, entries = "fold", "fold", args.fold, splits["folds"]
    else:
        kind, key, wanted, entries = "held-out cohort", "heldout", args.loco, splits.get("loco") or []
    entries = [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []
    matches = [entry for entry in entries if key in entry and str(entry[key]) == str(wanted)]
    if not matches:
        available = ", ".join(str(entry.get(key)) for entry in entries) or "none"
        raise DSAInputError(f"{path}: has no {kind} {wanted} (available: {available}).")
    ids = matches[0].get(f"{args.part}_video_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
        raise DSAInputError(f"{path}: {kind} {wanted} has no list of video ids '{args.part}_video_ids'.")
    return ids, f"{kind} {wanted}, {args.part} series"


def start_run(args: argparse.Namespace, output_names: tuple[str, ...]) -> tuple[Path, dict, dict, str | None]:
    """Shared start of ``evaluate`` and ``compare``: check the output folder and files up front,
    then load the cohort and select the split. Returns ``(out, full cohort, selected cohort, split)``."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DSAInputError(f"{out}: --out must be a folder, but a file of that name exists.")
    check_outputs_free([out / name for name in output_names], args.overwrite)
    full_cohort = load_cohort(args.gt, check_images=False)
    cohort, split = select_split(full_cohort, args)
    return out, full_cohort, cohort, split


def select_split(cohort: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """The cohort restricted to the split the arguments select (unchanged without ``--splits``)."""
    selection = _read_split(args)
    if selection is None:
        return cohort, None
    video_ids, description = selection
    unknown = sorted(set(video_ids) - {video["id"] for video in cohort["videos"]})
    if unknown:
        raise DSAInputError(f"{args.splits}: {description} names video ids {unknown[:10]} that {args.gt} does not "
                            "have (a splits file of another cohort?).")
    return restrict_cohort(cohort, video_ids), description


def predictions_in_split(
    predictions: list[Any], cohort: Mapping[str, Any], selected: Mapping[str, Any], source: str
) -> list[Any]:
    """``predictions`` without those on frames of ``cohort`` outside ``selected`` (reported on stderr).

    Entries on unknown frames and malformed entries are kept, for the validation to report.
    """
    outside = {image["id"] for image in cohort["images"]} - {image["id"] for image in selected["images"]}
    kept = [p for p in predictions
            if not (isinstance(p, dict) and isinstance(p.get("image_id"), int) and p["image_id"] in outside)]
    if len(kept) < len(predictions):
        print(f"note: {source}: ignored {len(predictions) - len(kept)} predictions on frames of series outside "
              "the selected split.", file=sys.stderr)
    return kept


def warn_series_without_predictions(
    cohort: Mapping[str, Any], predictions: list[dict[str, Any]], source: str, split: str | None
) -> None:
    """Warn when some, not all, series of ``cohort`` have no prediction on any frame (they score 0).

    ``predictions`` must be validated against ``cohort`` (every ``image_id`` a frame of it).
    """
    video_of_image = {image["id"]: image["video_id"] for image in cohort["images"]}
    covered = {video_of_image[p["image_id"]] for p in predictions}
    missing = [video["id"] for video in cohort["videos"] if video["id"] not in covered]
    if not missing or len(missing) == len(cohort["videos"]):
        return
    hint = ("" if split else " If these are the predictions of one fold's validation run, pass --splits SPLITS.json "
            "--fold K so that only that fold's series are scored.")
    print(f"warning: {source}: {len(missing)} of {len(cohort['videos'])} series have no prediction on any frame "
          f"(e.g. video ids {missing[:5]}) and score 0.{hint}", file=sys.stderr)


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
    add_split_arguments(parser)


def run(args: argparse.Namespace) -> int:
    names = ("metrics.json", "roc.png", "pr.png")
    out, full_cohort, cohort, split = start_run(args, names)
    predictions = read_predictions_json(args.pred)
    if split:
        predictions = predictions_in_split(predictions, full_cohort, cohort, str(args.pred))
    series_optimization = not args.no_series_optimization
    with printed_metric_warnings():
        evaluation = evaluate_series(cohort, predictions, series_optimization, source=str(args.pred))
    warn_series_without_predictions(cohort, predictions, str(args.pred), split)
    metrics_json = json.dumps(evaluation.metrics, indent=1, allow_nan=False) + "\n"
    write_output_set(out, {"metrics.json": metrics_json.encode("utf-8"), **evaluation_plot_pngs(evaluation)},
                     overwrite=args.overwrite)
    if split:
        print(f"evaluated {split} of {args.splits}")
    for line in summary_lines(evaluation.metrics, series_optimization):
        print(line)
    print(f"wrote {out / 'metrics.json'}, roc.png and pr.png")
    return 0
