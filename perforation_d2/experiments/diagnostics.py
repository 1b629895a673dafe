"""The cross-validation report's diagnostics: does a model use time, and how did it train.

- :func:`time_use_table`: every model's pooled out-of-fold AUC and sensitivity at 95%
  specificity with its clips as they are, with the centre frame repeated, reversed and
  shuffled (the jobs' time-use diagnostic, pooled like the normal predictions), each AUC with a
  patient-level bootstrap 95% interval, and the AUC lost without context (normal - centre). A
  single-frame model has no context to remove: its normal figures fill every column.
- :func:`time_use_of_files`: the same table for ``evaluate --time-use`` / ``compare --time-use``,
  from the ablation predictions the diagnostic keeps next to each predictions file.
- :func:`time_course_oracle`: on a synthetic cohort, the AUC its true time courses allow
  (:mod:`perforation_d2.synth.oracle`) on the report's held-out series, pooled and per fold,
  the ceiling a model's time use is read against. Absent for a cohort without ``synth_truth.json``.
- :func:`training_curves`: the held-out side's AUC over training from each job's
  ``metrics.json`` (Detectron2's EvalHook puts the evaluator's ``dsa/AUC`` there every
  ``TEST.EVAL_PERIOD`` iterations and after the last one), one line per fold and run and their
  mean. The final models are ``model_final`` whatever this curve shows: it is a plot, never a
  model selection.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.time_use import find_ablation_predictions
from ..errors import DSAInputError
from ..evaluation.bootstrap import bootstrap_auc_intervals
from ..evaluation.cohort_index import CohortIndex
from ..evaluation.metrics import SeriesEvaluation
from ..evaluation.plots import learning_curve_png
from ..evaluation.roc import roc_statistics
from ..evaluation.selection import evaluate_files
from ..io.json_io import read_json
from ..synth.cohort import TRUTH_FILE
from ..synth.oracle import oracle_series_scores
from .plan import TIME_USE_ABLATIONS, Job
from .report_text import TIME_USE_SCOPE, mean_std, time_use_markdown

# What ``evaluate --time-use`` / ``compare --time-use`` add to their outputs.
TIME_USE_OUTPUTS = ("time_use.json", "time_use.md")
NORMAL = "none"
TIME_USE_MODES = (NORMAL, *TIME_USE_ABLATIONS)
# Patient-level bootstrap of the time-use AUCs, paired over the ablations (the same resamples).
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 2000, 0
CURVE_KEY = "dsa/AUC"


def time_use_table(main: dict[str, dict[int, SeriesEvaluation]],
                   ablated: dict[str, dict[int, dict[str, SeriesEvaluation]]],
                   num_frames: dict[str, int]) -> dict[str, Any]:
    """``{model: {"num_frames", "unchanged_by_construction", "modes": {mode: cells}, "AUC_drop_centre"}}``.

    ``main`` holds each model's pooled evaluation per run, ``ablated`` the pooled evaluation of
    each clip ablation per run (temporal models whose jobs ran the diagnostic). A temporal model
    without the diagnostic (``--no-time-use``) is left out; with no temporal model left there is
    nothing to tell and the table is empty.
    """
    table: dict[str, Any] = {}
    for model, runs in main.items():
        temporal = num_frames[model] is None or num_frames[model] > 1  # None: T unknown, ablations given
        if temporal and not all(run in ablated.get(model, {}) for run in runs):
            continue
        per_run = {run: {NORMAL: evaluation,
                         **(ablated[model][run] if temporal else dict.fromkeys(TIME_USE_ABLATIONS, evaluation))}
                   for run, evaluation in sorted(runs.items())}
        intervals = {run: bootstrap_auc_intervals(
            evals[NORMAL].labels, [evals[mode].scores for mode in TIME_USE_MODES], evals[NORMAL].patient_ids,
            BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED) for run, evals in per_run.items()}
        modes = {}
        for position, mode in enumerate(TIME_USE_MODES):
            modes[mode] = {
                "AUC": mean_std([evals[mode].metrics["AUC"] for evals in per_run.values()]),
                "sens_at_95spec": mean_std([evals[mode].metrics["sens_at_95spec"] for evals in per_run.values()]),
                "AUC_ci95": [[intervals[run][position].low, intervals[run][position].high] for run in per_run],
            }
        drops = [None if evals[NORMAL].metrics["AUC"] is None or evals["centre"].metrics["AUC"] is None
                 else evals[NORMAL].metrics["AUC"] - evals["centre"].metrics["AUC"] for evals in per_run.values()]
        table[model] = {"num_frames": num_frames[model], "unchanged_by_construction": not temporal,
                        "runs": list(per_run), "modes": modes, "AUC_drop_centre": mean_std(drops)}
    if not any(not row["unchanged_by_construction"] for row in table.values()):
        return {}
    return {"bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "unit": "patient",
                          "level": 0.95, "interval": "percentile"}, "models": table}


def time_use_of_files(selection: Any, paths: Sequence[str], names: Sequence[str], evaluations: Sequence[SeriesEvaluation],
                      series_optimization: bool, index: CohortIndex | None = None) -> dict[str, Any]:
    """:func:`time_use_table` of the models whose predictions are ``paths`` (already scored as
    ``evaluations``, shown as ``names``), each ablation scored on the same series (``selection``,
    an :class:`~perforation_d2.evaluation.selection.Selection`) with the same series optimisation.

    A file with all of the diagnostic's ablations next to it (``clip_<mode>/predictions.json``) gets
    a row; one with none is left out (a single-frame model, or a job run without the diagnostic),
    one with only some of them, or every file without any, is an error.
    """
    main, ablated, frames, missing = {}, {}, {}, []
    for path, name, evaluation in zip(paths, names, evaluations):
        found, num_frames = find_ablation_predictions(path)
        if not found and num_frames == 1:
            main[name], frames[name] = {0: evaluation}, 1  # single-frame, as its own diagnostic says
            continue
        absent = [mode for mode in TIME_USE_ABLATIONS if mode not in found]
        if absent and found:
            raise DSAInputError(
                f"{path}: --time-use found the clip ablations {', '.join(sorted(found))} next to it but not "
                f"{', '.join(absent)} (clip_<mode>/predictions.json); rerun the time-use diagnostic "
                "(train --eval-only ... TEST.DSA.TIME_USE_DIAGNOSTIC True) into that output folder.")
        if absent:
            missing.append(str(path))
            continue
        scored = evaluate_files(selection, [found[mode] for mode in TIME_USE_ABLATIONS], series_optimization, index)
        main[name], frames[name] = {0: evaluation}, num_frames
        ablated[name] = {0: dict(zip(TIME_USE_ABLATIONS, scored))}
    if not ablated:
        raise DSAInputError(
            f"--time-use: no clip-ablation predictions next to {', '.join(missing)} (the time-use diagnostic "
            "writes clip_centre/, clip_reverse/ and clip_shuffle/predictions.json beside the predictions.json of "
            "OUTPUT_DIR/inference/<dataset>/); produce them with `train --eval-only --config-file CFG "
            "MODEL.WEIGHTS model_final.pth TEST.DSA.TIME_USE_DIAGNOSTIC True OUTPUT_DIR DIR` and pass "
            "DIR/inference/<dataset>/predictions.json.")
    return time_use_table(main, ablated, frames)


def time_use_of_files_markdown(selection: Any, paths: Sequence[str], names: Sequence[str],
                               evaluations: Sequence[SeriesEvaluation], series_optimization: bool,
                               index: CohortIndex | None = None) -> tuple[dict[str, Any], list[str]]:
    """:func:`time_use_of_files` and its table as markdown lines, rows in the order of ``names``."""
    table = time_use_of_files(selection, paths, names, evaluations, series_optimization, index)
    return table, time_use_markdown(table, dict(zip(names, names)), scope=TIME_USE_SCOPE)


def oracle_statistics(truth: Mapping[str, Any], video_ids: Sequence[int] | None = None,
                      truth_file: str = TRUTH_FILE) -> dict[str, Any]:
    """``{"AUC", "sens_at_95spec", "series", "positives"}`` of the time-course oracle on ``video_ids``
    (every series of ``truth``, the parsed truth file, when None); AUC None with one class."""
    try:
        scores = oracle_series_scores(truth, video_ids)
        labels = {video["video_id"]: int(video["label"]) for video in truth["videos"]}
    except (KeyError, TypeError, ValueError) as error:
        raise DSAInputError(
            f"{truth_file}: the synthetic truth file does not describe these series ({error}); it should be the "
            f"{TRUTH_FILE} that `synth` wrote beside this cohort.json, with per series its video_id, label and "
            "events (frames, densities).") from None
    ids = sorted(scores)
    statistics = roc_statistics(np.array([labels[i] for i in ids]), np.array([scores[i] for i in ids]))
    return {"AUC": statistics.auc, "sens_at_95spec": statistics.sens_at_95spec, "series": len(ids),
            "positives": sum(labels[i] for i in ids)}


def time_course_oracle(cohort_json: str | Path, held_out: Mapping[str, Sequence[int]]) -> dict[str, Any] | None:
    """The time-course oracle on the report's held-out series: ``{"truth_file", "pooled", "per_split"}``.

    ``held_out`` maps each held-out split to its series (video ids); pooled is their union. None
    when the cohort has no synthetic truth file beside its ``cohort.json`` (a real cohort).
    """
    truth_file = Path(cohort_json).parent / TRUTH_FILE
    if not truth_file.is_file() or not held_out:
        return None
    truth = read_json(truth_file, "synthetic truth file")
    pooled = sorted({i for ids in held_out.values() for i in ids})
    return {"truth_file": str(truth_file), "pooled": oracle_statistics(truth, pooled, str(truth_file)),
            "per_split": {split: oracle_statistics(truth, list(ids), str(truth_file))
                          for split, ids in sorted(held_out.items())}}


def read_auc_points(metrics_file: Path, max_iter: int) -> dict[int, float]:
    """``{iterations trained: AUC}`` of the evaluations in one training's ``metrics.json``.

    EvalHook's periodic evaluation after ``k * EVAL_PERIOD`` iterations is stored under
    iteration ``k * EVAL_PERIOD - 1`` (the step just run), the final one under ``MAX_ITER``; a
    resumed training appends, and the later line of an iteration wins. Lines cut short by a
    killed training and undefined AUCs (one class) are skipped.
    """
    points: dict[int, float] = {}
    if not metrics_file.is_file():
        return points
    for line in metrics_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        value = entry.get(CURVE_KEY) if isinstance(entry, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value) and isinstance(entry.get("iteration"), int):
            points[min(entry["iteration"] + 1, max_iter)] = float(value)
    return points


def training_curves(jobs: Sequence[Job], max_iter: dict[str, int]) -> dict[str, Any]:
    """Per model: ``{"lines": {"fold0/run0": {iterations: AUC}}, "mean": {iterations: AUC}}``.

    Iterations are JSON keys (strings). The mean is taken at the iterations every line has. Only
    models with at least one line of two or more points (periodic evaluation) are returned.
    """
    curves: dict[str, Any] = {}
    for job in jobs:
        points = read_auc_points(job.metrics_file, max_iter[job.config])
        if len(points) >= 2:
            lines = curves.setdefault(job.config, {"lines": {}})["lines"]
            lines[f"{job.split}/run{job.run}"] = {str(i): auc for i, auc in sorted(points.items())}
    for entry in curves.values():
        common = set.intersection(*(set(line) for line in entry["lines"].values()))
        entry["mean"] = {i: float(np.mean([line[i] for line in entry["lines"].values()]))
                         for i in sorted(common, key=int)}
    return curves


def training_curve_png(curves: dict[str, Any]) -> bytes:
    """AUC vs iterations: per model a thin line per fold and run, its mean bold."""
    return learning_curve_png(
        [(model, [int(i) for i in entry["mean"]], list(entry["mean"].values()), [None] * len(entry["mean"]))
         for model, entry in curves.items()],
        title="Held-out AUC over training", xlabel="iterations",
        members={model: [([int(i) for i in line], list(line.values())) for line in entry["lines"].values()]
                 for model, entry in curves.items()})
