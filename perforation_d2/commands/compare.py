"""``python -m perforation_d2 compare``: several models on one cohort, as in the paper's Table 1.

For every predictions file and for the ensemble (the per-series median of the models' series
scores, paper section 4.5; no box-level ensembling): AUC with a patient-level bootstrap 95%
confidence interval, Youden sensitivity / specificity, sensitivity at 95% specificity; for the
models also the box-level precision / recall under both criteria. Every pair of entries is
compared with DeLong's test (z, two-sided p, 95% CI of the AUC difference). Writes
``compare.json``, ``table.md`` and ``roc_overlay.png``.

AUCs and DeLong tests need both classes (at least two series of each), so a cohort without
positive or without negative series is refused up front. ``--splits SPLITS.json --fold K``
(``--loco HELDOUT``, ``--part``) compares on one split's series, as ``evaluate`` does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DSAInputError
from ..evaluation.bootstrap import BootstrapInterval, bootstrap_auc_intervals
from ..evaluation.delong import delong_test
from ..evaluation.metrics import CohortIndex, OperatingPoint, evaluate_series, roc_statistics
from ..evaluation.plots import roc_plot_png
from ..io.output_set import write_output_set
from .evaluate import (
    add_split_arguments,
    predictions_in_split,
    printed_metric_warnings,
    read_predictions_json,
    start_run,
    warn_series_without_predictions,
)

ENSEMBLE_NAME = "Ensemble (median)"
BOX_KEYS = ("precision_iou50", "recall_iou50", "precision_center", "recall_center",
            "AUPRC_center", "AP50_coco", "AP_center_coco")
# Table 1 of the paper: column title -> key of an entry ("" when the ensemble has none).
TABLE_COLUMNS = (
    ("Sens", "sensitivity"), ("Spec", "specificity"), ("mSens95", "sens_at_95spec"),
    ("AP50", "precision_iou50"), ("AR50", "recall_iou50"),
    ("AP_cin", "precision_center"), ("AR_cin", "recall_center"), ("AUPRC", "AUPRC_center"),
)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def default_names(paths: list[str]) -> list[str]:
    """File stems, or the paths as given when two stems coincide (run_a/pred.json, run_b/pred.json)."""
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else list(paths)


def classification_entry(name: str, point: OperatingPoint, interval: BootstrapInterval) -> dict[str, Any]:
    threshold = point.threshold
    return {
        "name": name,
        "AUC": point.auc,
        "AUC_ci95": [interval.low, interval.high],
        "bootstrap_resamples_used": interval.resamples,
        "bootstrap_resamples_single_class": interval.skipped,
        "threshold": _finite_or_none(threshold),
        "sensitivity": point.sensitivity,
        "specificity": point.specificity,
        "sens_at_95spec": point.sens_at_95spec,
    }


def markdown_tables(entries: list[dict[str, Any]], tests: list[dict[str, Any]], notes: list[str]) -> str:
    header = ["Method", "AUC (95% CI)"] + [title for title, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in entries:
        low, high = entry["AUC_ci95"]
        auc = _fmt(entry["AUC"]) + (f" ({low:.3f}-{high:.3f})" if low is not None else "")
        cells = [entry["name"].replace("|", "/"), auc] + [_fmt(entry.get(key)) for _, key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| DeLong test | AUC a | AUC b | AUC a - b (95% CI) | z | p |", "|---|---|---|---|---|---|"]
    for test in tests:
        difference = test["auc_a"] - test["auc_b"]
        z = "-" if test["z"] is None else f"{test['z']:.3f}"
        lines.append(
            f"| {test['a']} vs {test['b']} | {test['auc_a']:.3f} | {test['auc_b']:.3f} | "
            f"{difference:+.3f} ({test['ci_low']:+.3f} to {test['ci_high']:+.3f}) | {z} | {_fmt_p(test['p_value'])} |"
        )
    return "\n".join(lines + [""] + notes) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, metavar="COHORT.json", help="cohort JSON (COCO-video)")
    parser.add_argument("--pred", required=True, action="append", metavar="PRED.json",
                        help="COCO results of one model (repeat, at least twice)")
    parser.add_argument("--name", action="append", metavar="NAME",
                        help="display name of each --pred, in the same order (default: file names)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                        help="patient-level bootstrap resamples for the AUC intervals (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--no-series-optimization", action="store_true",
                        help="score the per-frame top detections without series optimisation")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
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
    if args.bootstrap < 0:
        raise DSAInputError(f"compare: --bootstrap must be >= 0, got {args.bootstrap}.")
    return names


def run(args: argparse.Namespace) -> int:
    names = _check_arguments(args)
    names_out = ("compare.json", "table.md", "roc_overlay.png")
    out, full_cohort, cohort, split = start_run(args, names_out)
    index = CohortIndex(cohort)
    labels = index.labels
    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    if positives < 2 or negatives < 2:
        raise DSAInputError(
            f"{args.gt}: the cohort{f' ({split} of {args.splits})' if split else ''} has {positives} positive "
            f"and {negatives} negative series; comparing AUCs (bootstrap intervals, DeLong tests) needs at "
            "least 2 of each."
        )
    predictions = [read_predictions_json(path) for path in args.pred]
    if split:
        predictions = [predictions_in_split(p, full_cohort, cohort, str(path)) for p, path in zip(predictions, args.pred)]
    series_optimization = not args.no_series_optimization
    with printed_metric_warnings():
        evaluations = [
            evaluate_series(index, preds, series_optimization, source=str(path))
            for path, preds in zip(args.pred, predictions)
        ]
    for path, preds in zip(args.pred, predictions):
        warn_series_without_predictions(cohort, preds, str(path), split)

    score_sets = [evaluation.scores for evaluation in evaluations]
    ensemble_scores = np.median(np.stack(score_sets), axis=0)
    all_names = names + [ENSEMBLE_NAME]
    all_scores = score_sets + [ensemble_scores]
    intervals = bootstrap_auc_intervals(labels, all_scores, index.patient_ids, args.bootstrap, args.seed)
    points = [roc_statistics(labels, scores) for scores in all_scores]

    entries = []
    for position, (name, point, interval) in enumerate(zip(all_names, points, intervals)):
        entry = classification_entry(name, point, interval)
        if position < len(evaluations):
            metrics = evaluations[position].metrics
            entry["predictions"] = str(args.pred[position])
            entry.update({key: metrics[key] for key in BOX_KEYS})
            entry["series_scores"] = metrics["series_scores"]
        else:
            entry["members"] = names
            entry["series_scores"] = {
                str(video_id): float(score) for video_id, score in zip(index.video_ids, ensemble_scores.tolist())
            }
        entries.append(entry)

    tests = []
    for (name_a, scores_a), (name_b, scores_b) in itertools.combinations(zip(all_names, all_scores), 2):
        result = delong_test(labels, scores_a, scores_b)
        tests.append({"a": name_a, "b": name_b, **{k: _finite_or_none(v) for k, v in result.items()}})

    report = {
        "cohort": str(args.gt),
        "num_series": len(labels),
        "num_positive_series": positives,
        "num_patients": len(set(index.patient_ids)),
        "series_optimization": series_optimization,
        "split": None if split is None else {"splits": str(args.splits), "selection": split},
        "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "unit": "patient", "level": 0.95,
                      "interval": "percentile"},
        "models": entries[:-1],
        "ensemble": entries[-1],
        "delong": tests,
    }
    notes = [
        f"{len(labels)} series ({positives} positive) of {report['num_patients']} patients; series optimisation "
        f"{'on' if series_optimization else 'off'}. AUC intervals: patient-level bootstrap, {args.bootstrap} "
        f"resamples, seed {args.seed}. Sens/Spec at the maximal Youden J; mSens95: sensitivity at >= 95% "
        "specificity. AP50/AR50 and AP_cin/AR_cin: box-level precision/recall at that threshold (IoU >= 0.5 "
        "and centre-overlap criteria); AUPRC: centre criterion. The ensemble is the median of the models' "
        "series scores (no box-level ensembling).",
    ]
    if split:
        notes.append(f"Series: {split} of {args.splits}.")
    table = markdown_tables(entries, tests, notes)
    roc_png = roc_plot_png(
        [(name, point.fpr, point.tpr, point.auc) for name, point in zip(all_names, points)], title="Series-level ROC"
    )
    report_json = json.dumps(report, indent=1, allow_nan=False) + "\n"
    write_output_set(
        out, {"compare.json": report_json.encode("utf-8"), "table.md": table.encode("utf-8"), "roc_overlay.png": roc_png},
        overwrite=args.overwrite,
    )
    print(table, end="")
    print(f"wrote {out / 'compare.json'}, table.md and roc_overlay.png")
    return 0
