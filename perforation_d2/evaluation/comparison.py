"""Several models compared on one cohort, as in the paper's Table 1 (the report of ``compare``).

For every model and for the ensemble (the per-series median of the models' series scores, paper
section 4.5; no box-level ensembling): AUC with a patient-level bootstrap 95% confidence
interval, Youden sensitivity / specificity, sensitivity at 95% specificity; for the models also
the box-level precision / recall under both criteria. Every pair of entries is compared with
DeLong's test (z, two-sided p, 95% CI of the AUC difference).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DSAInputError
from .bootstrap import BootstrapInterval, bootstrap_auc_intervals
from .cohort_index import CohortIndex
from .delong import delong_test
from .ensemble import ENSEMBLE_NAME, median_ensemble
from .metrics import SeriesEvaluation
from .plots import roc_plot_png
from .roc import RocStatistics, roc_statistics

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


def classification_entry(name: str, point: RocStatistics, interval: BootstrapInterval) -> dict[str, Any]:
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


def check_both_classes(index: CohortIndex, cohort_file: str, split: str | None = None,
                       splits_file: str | None = None) -> None:
    """AUCs and DeLong tests need both classes: at least two positive and two negative series."""
    positives = int(index.labels.sum())
    negatives = len(index.labels) - positives
    if positives < 2 or negatives < 2:
        raise DSAInputError(
            f"{cohort_file}: the cohort{f' ({split} of {splits_file})' if split else ''} has {positives} positive "
            f"and {negatives} negative series; comparing AUCs (bootstrap intervals, DeLong tests) needs at "
            "least 2 of each."
        )


@dataclass
class Comparison:
    """``compare.json`` (``report``), ``table.md`` (``table``) and ``roc_overlay.png`` (``roc_png``)."""

    report: dict[str, Any]
    table: str
    roc_png: bytes


def compare_models(
    index: CohortIndex,
    evaluations: Sequence[SeriesEvaluation],
    names: Sequence[str],
    sources: Sequence[str],
    bootstrap: int,
    seed: int,
    series_optimization: bool,
    cohort_file: str,
    split: str | None = None,
    splits_file: str | None = None,
) -> Comparison:
    """Compare the models whose evaluations on ``index`` are ``evaluations`` (from the files ``sources``).

    ``split`` describes the series of ``index`` when they are one split of ``splits_file``.
    """
    names = list(names)
    labels = index.labels
    positives = int(labels.sum())
    score_sets = [evaluation.scores for evaluation in evaluations]
    ensemble_scores = median_ensemble(score_sets)
    all_names = names + [ENSEMBLE_NAME]
    all_scores = score_sets + [ensemble_scores]
    intervals = bootstrap_auc_intervals(labels, all_scores, index.patient_ids, bootstrap, seed)
    points = [roc_statistics(labels, scores) for scores in all_scores]

    entries = []
    for position, (name, point, interval) in enumerate(zip(all_names, points, intervals)):
        entry = classification_entry(name, point, interval)
        if position < len(evaluations):
            metrics = evaluations[position].metrics
            entry["predictions"] = str(sources[position])
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
        "cohort": str(cohort_file),
        "num_series": len(labels),
        "num_positive_series": positives,
        "num_patients": len(set(index.patient_ids)),
        "series_optimization": series_optimization,
        "split": None if split is None else {"splits": str(splits_file), "selection": split},
        "bootstrap": {"resamples": bootstrap, "seed": seed, "unit": "patient", "level": 0.95,
                      "interval": "percentile"},
        "models": entries[:-1],
        "ensemble": entries[-1],
        "delong": tests,
    }
    notes = [
        f"{len(labels)} series ({positives} positive) of {report['num_patients']} patients; series optimisation "
        f"{'on' if series_optimization else 'off'}. AUC intervals: patient-level bootstrap, {bootstrap} "
        f"resamples, seed {seed}. Sens/Spec at the maximal Youden J; mSens95: sensitivity at >= 95% "
        "specificity. AP50/AR50 and AP_cin/AR_cin: box-level precision/recall at that threshold (IoU >= 0.5 "
        "and centre-overlap criteria); AUPRC: centre criterion. The ensemble is the median of the models' "
        "series scores (no box-level ensembling).",
    ]
    if split:
        notes.append(f"Series: {split} of {splits_file}.")
    table = markdown_tables(entries, tests, notes)
    roc_png = roc_plot_png(
        [(name, point.fpr, point.tpr, point.auc) for name, point in zip(all_names, points)], title="Series-level ROC"
    )
    return Comparison(report, table, roc_png)
