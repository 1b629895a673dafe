"""The cross-validation report, rebuilt from whatever jobs have finished.

For every (model, run) whose jobs of all splits are done, the held-out predictions are pooled
(each series predicted by the model that never saw its patient) and scored over every series of
the cohort with the evaluator's metrics. Then: Table 1 (every column as mean +- sample std over
runs, plus the median ensemble per run), DeLong tests between every pair of models per run
(median p and the number of runs significant at 0.05), a one-way ANOVA of the runs' AUCs across
the temporal models, Table 2 when the configs differ only in the clip length T, Table 4 per
held-out cohort for leave-one-cohort-out, the learning curve over training fractions, and the
diagnostics of :mod:`.diagnostics` (time use, AUC over training). Cells whose jobs have not
finished are listed with the reason instead.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.stats import f_oneway

from ..data.cohort import load_cohort
from ..evaluation.cohort_index import CohortIndex, restrict_cohort
from ..evaluation.delong import delong_test
from ..evaluation.ensemble import ENSEMBLE_NAME, median_ensemble
from ..evaluation.metrics import DSAMetricWarning, SeriesEvaluation, evaluate_series
from ..evaluation.plots import learning_curve_png, pr_overlay_png, roc_plot_png
from ..evaluation.predictions import read_predictions_json
from ..evaluation.roc import roc_statistics
from ..io.transaction import write_output_files
from .diagnostics import time_course_oracle, time_use_table, training_curve_png, training_curves
from .jobs import DONE, job_state
from .plan import KFOLD, LOCO, TIME_USE_ABLATIONS, ExperimentPlan, Job
from .report_text import mean_std, report_markdown

TABLE_KEYS = ("AUC", "sensitivity", "specificity", "sens_at_95spec", "precision_iou50", "recall_iou50",
              "precision_center", "recall_center", "AUPRC_center", "AP50_coco", "AP_center_coco")
ENSEMBLE_KEYS = ("AUC", "sensitivity", "specificity", "sens_at_95spec")


class _Scorer:
    """Scores pooled predictions against (a restriction of) the cohort, one index per series set."""

    def __init__(self, plan: ExperimentPlan, series_optimization: dict[str, bool]):
        self.cohort = load_cohort(plan.cohort_json, check_images=False)
        self.series_optimization = series_optimization
        self._indexes: dict[tuple[int, ...], CohortIndex] = {}

    def score(self, model: str, video_ids: list[int], predictions: list[dict], source: str) -> SeriesEvaluation:
        key = tuple(sorted(video_ids))
        if key not in self._indexes:
            self._indexes[key] = CohortIndex(restrict_cohort(self.cohort, key))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DSAMetricWarning)
            return evaluate_series(self._indexes[key], predictions, self.series_optimization[model], source=source)


def _pool(scorer: _Scorer, model: str, jobs: list[Job], predictions_file: Callable[[Job], Path],
          source: str) -> tuple[list[dict], SeriesEvaluation]:
    """The held-out predictions of every job of one (model, run) as one set, scored over their series."""
    predictions = [p for job in jobs for p in read_predictions_json(predictions_file(job))]
    video_ids = sorted(v for job in jobs for v in list(job.val_video_ids))
    return predictions, scorer.score(model, video_ids, predictions, source)


def _only_num_frames_differ(dumps: dict[str, str]) -> bool:
    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    flats = [flat(yaml.safe_load(dump)) for dump in dumps.values()]
    differing = {key for a, b in itertools.combinations(flats, 2) for key in set(a) | set(b) if a.get(key) != b.get(key)}
    differing.discard("OUTPUT_DIR")
    return len(dumps) > 1 and differing == {"MODEL.TEMPORAL.NUM_FRAMES"}


def build_report(plan: ExperimentPlan, configs: dict[str, dict], ensemble: list[str] | None = None) -> dict[str, Any]:
    """Write ``DIR/report/`` from the finished jobs; returns ``results.json``'s content."""
    scorer = _Scorer(plan, {name: info["series_optimization"] for name, info in configs.items()})
    groups: dict[tuple[str, str, int], list[Job]] = defaultdict(list)
    for job in plan.jobs:
        groups[(job.config, job.split_set, job.run)].append(job)
    pooled: dict[tuple[str, str], dict[int, SeriesEvaluation]] = defaultdict(dict)
    ablated: dict[str, dict[int, dict[str, SeriesEvaluation]]] = defaultdict(dict)
    per_split: dict[tuple[str, str], dict[int, SeriesEvaluation]] = defaultdict(dict)
    missing, files = [], {}
    for (model, split_set, run), jobs in sorted(groups.items()):
        states = {job.split: job_state(job) for job in jobs}
        not_done = {split: state for split, state in states.items() if state.state != DONE}
        for job in jobs:
            if job.split not in not_done and split_set in (KFOLD, LOCO):
                per_split[(model, job.split)][run] = scorer.score(
                    model, list(job.val_video_ids), read_predictions_json(job.predictions_file), str(job.predictions_file))
        if not_done:
            missing.append({"model": model, "split_set": split_set, "run": run, "splits": {
                split: {"state": s.state, "detail": s.detail, "log": s.log} for split, s in not_done.items()}})
            continue
        predictions, pooled[(model, split_set)][run] = _pool(
            scorer, model, jobs, lambda job: job.predictions_file, f"{model} run {run}")
        files[f"pooled_predictions_{model}_{split_set}_run{run}.json"] = (json.dumps(predictions) + "\n").encode("utf-8")
        if all(job.time_use for job in jobs):
            # The time-use diagnostic's predictions, pooled exactly like the normal ones.
            for mode in TIME_USE_ABLATIONS:
                predictions, ablated[model].setdefault(run, {})[mode] = _pool(
                    scorer, model, jobs, lambda job, m=mode: job.ablation_predictions_file(m),
                    f"{model} run {run}, clips {mode}")
                name = f"pooled_predictions_{model}_{split_set}_run{run}_clip_{mode}.json"
                files[name] = (json.dumps(predictions) + "\n").encode("utf-8")

    kind = LOCO if plan.loco else KFOLD
    main = {model: runs for (model, split_set), runs in pooled.items() if split_set == kind}
    table1 = {model: {key: mean_std([runs[r].metrics[key] for r in sorted(runs)]) for key in TABLE_KEYS}
              for model, runs in main.items()}
    members = ensemble or [name for name in main if configs[name]["num_frames"] > 1] or list(main)
    members = [name for name in members if name in main]
    common_runs = sorted(set.intersection(*(set(main[m]) for m in members))) if members else []
    ensemble_runs = {}
    if len(members) >= 2 and common_runs:
        for run in common_runs:
            evaluation = main[members[0]][run]
            scores = median_ensemble([main[m][run].scores for m in members])
            ensemble_runs[run] = (evaluation.labels, scores, roc_statistics(evaluation.labels, scores))
        table1[ENSEMBLE_NAME] = {
            "AUC": mean_std([s.auc for _, _, s in ensemble_runs.values()]),
            "sensitivity": mean_std([s.sensitivity for _, _, s in ensemble_runs.values()]),
            "specificity": mean_std([s.specificity for _, _, s in ensemble_runs.values()]),
            "sens_at_95spec": mean_std([s.sens_at_95spec for _, _, s in ensemble_runs.values()]),
            "members": members,
        }
    scores_by_model = {model: {run: (ev.labels, ev.scores) for run, ev in runs.items()} for model, runs in main.items()}
    scores_by_model.update({ENSEMBLE_NAME: {run: (labels, s) for run, (labels, s, _) in ensemble_runs.items()}}
                           if ensemble_runs else {})
    delong = []
    for a, b in itertools.combinations(scores_by_model, 2):
        runs = sorted(set(scores_by_model[a]) & set(scores_by_model[b]))
        p_values = [delong_test(scores_by_model[a][r][0], scores_by_model[a][r][1], scores_by_model[b][r][1])["p_value"]
                    for r in runs]
        finite = [p for p in p_values if p is not None and np.isfinite(p)]
        delong.append({"a": a, "b": b, "runs": len(runs), "p_values": p_values,
                       "median_p": float(np.median(finite)) if finite else None,
                       "significant_runs": sum(p < 0.05 for p in finite)})
    temporal = [m for m in main if configs[m]["num_frames"] > 1] or list(main)
    auc_groups = [[ev.metrics["AUC"] for ev in main[m].values() if ev.metrics["AUC"] is not None] for m in temporal]
    anova = None
    if len(auc_groups) >= 2 and all(len(g) >= 2 for g in auc_groups):
        statistic, p_value = f_oneway(*auc_groups)
        anova = {"models": temporal, "F": float(statistic), "p_value": float(p_value)}
    results: dict[str, Any] = {
        "cohort": str(plan.cohort_json), "split_kind": kind, "runs": plan.runs, "std": "sample (ddof=1) over runs",
        "table1": table1, "delong": delong, "anova": anova, "missing": missing,
        "num_series": {model: len(next(iter(runs.values())).labels) for model, runs in main.items()},
    }
    if _only_num_frames_differ({m: configs[m]["dump"] for m in main}):
        results["table2"] = {str(configs[m]["num_frames"]): table1[m]["AUC"] for m in main}
    # Each held-out split on its own: the spread over folds (Table 4 for leave-one-cohort-out).
    by_split = {split: {model: mean_std([runs[r].metrics["AUC"] for r in sorted(runs)])
                        for (model, s), runs in per_split.items() if s == split}
                for split in sorted({s for _, s in per_split})}
    results["per_split_auc"] = by_split
    results["over_splits_auc"] = {
        model: mean_std([by_split[split][model]["mean"] for split in by_split if model in by_split[split]])
        for model in main}
    if plan.loco:
        results["table4"] = by_split
    if len(plan.fractions) > 1:
        curve: dict[str, dict[str, Any]] = defaultdict(dict)
        for (model, split_set), runs in pooled.items():
            fraction = 1.0 if split_set == kind else float(split_set.split("_frac")[1])
            curve[model][f"{fraction:g}"] = {"AUC": mean_std([ev.metrics["AUC"] for ev in runs.values()]),
                                             "sens_at_95spec": mean_std([ev.metrics["sens_at_95spec"] for ev in runs.values()])}
        results["learning_curve"] = curve
        files["learning_curve.png"] = learning_curve_png([
            (model, [float(f) for f in points], [c["AUC"]["mean"] for c in points.values()],
             [c["AUC"]["std"] for c in points.values()]) for model, points in curve.items()])
    time_use = time_use_table(main, ablated, {model: configs[model]["num_frames"] for model in main})
    if time_use:
        results["time_use"] = time_use
    oracle = time_course_oracle(plan.cohort_json, {job.split: list(job.val_video_ids) for job in plan.jobs
                                                   if job.split_set == kind})
    if oracle:
        results["time_course_oracle"] = oracle
    curves = training_curves([job for job in plan.jobs if job.split_set == kind and job_state(job).state == DONE],
                             {name: info["max_iter"] for name, info in configs.items()})
    if curves:
        results["training_curve"] = curves
        files["training_curve.json"] = (json.dumps(curves, indent=1) + "\n").encode("utf-8")
        files["training_curve.png"] = training_curve_png(curves)
    # ROC / PR overlays of the run whose AUC is closest to its model's mean (the paper's Fig. 6).
    representative = {}
    for model, runs in main.items():
        mean = table1[model]["AUC"]["mean"]
        if mean is not None:
            run = min(runs, key=lambda r: abs((runs[r].metrics["AUC"] or 0.0) - mean))
            representative[model] = (run, runs[run])
    results["overlay_runs"] = {model: run for model, (run, _) in representative.items()}
    files["roc_overlay.png"] = roc_plot_png(
        [(model, ev.roc_fpr, ev.roc_tpr, ev.metrics["AUC"]) for model, (_, ev) in representative.items()],
        title="Series-level ROC, pooled out-of-fold (run closest to the mean AUC)")
    files["pr_overlay.png"] = pr_overlay_png(
        [(model, ev.pr_precision, ev.pr_recall, ev.metrics["AUPRC_center"]) for model, (_, ev) in representative.items()],
        title="Box-level PR (centre criterion), pooled out-of-fold")
    files["results.json"] = (json.dumps(results, indent=1, allow_nan=False) + "\n").encode("utf-8")
    files["report.md"] = report_markdown(results).encode("utf-8")
    write_output_files(plan.out / "report", "cross-validate", files, overwrite=True)
    return results
