"""The time-use diagnostic: a trained model's series AUC with and without its clips' time course.

For every clip ablation (:mod:`perforation_d2.data.clip_ablation`: none, centre frame repeated,
reversed, context shuffled) the model is evaluated on ``DATASETS.TEST[0]`` as usual, each
ablation's predictions kept under ``OUTPUT_DIR/inference/<dataset>/clip_<ablation>/`` (so that
``evaluate`` and ``compare`` can score them with bootstrap CIs and DeLong tests), and the AUC and
sensitivity at 95% specificity of each are written to ``OUTPUT_DIR/time_use.json``. A model that
uses time loses much AUC under "centre" and "reverse"; a single-frame model loses nothing (its
clips have no context to remove), so it is evaluated once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.utils import comm

from ..data.clip_ablation import CLIP_ABLATIONS
from ..io.atomic import atomic_write_json

logger = logging.getLogger(__name__)

TIME_USE_FILE = "time_use.json"
_REPORTED = ("AUC", "sens_at_95spec")
PREDICTIONS_FILE = "predictions.json"


def ablation_predictions_path(evaluation_folder: str | os.PathLike, mode: str) -> str:
    """Where the diagnostic keeps clip ablation ``mode``'s predictions of the evaluation whose
    ``predictions.json`` is in ``evaluation_folder`` (``OUTPUT_DIR/inference/<dataset>``)."""
    return os.path.join(evaluation_folder, f"clip_{mode}", PREDICTIONS_FILE)


def find_ablation_predictions(predictions: str | os.PathLike) -> tuple[dict[str, str], int | None]:
    """The diagnostic's ablation predictions next to an evaluation's ``predictions`` file.

    Returns ``({mode: path} for the ablations present, T)``; T is read from the job's
    ``OUTPUT_DIR/time_use.json`` when the folders are where the trainer put them, else None.
    """
    folder = os.path.dirname(os.path.abspath(predictions))
    found = {mode: path for mode in CLIP_ABLATIONS[1:]
             if os.path.isfile(path := ablation_predictions_path(folder, mode))}
    summary_file = os.path.join(os.path.dirname(os.path.dirname(folder)), TIME_USE_FILE)
    num_frames = None
    try:
        with open(summary_file) as handle:
            summary = json.load(handle)
        if summary.get("dataset") == os.path.basename(folder):
            num_frames = int(summary["num_frames"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # T is only displayed; the ablation files are what counts
    return found, num_frames


def time_use_diagnostic(
    trainer_cls: type,
    cfg: CfgNode,
    model: torch.nn.Module,
    ablations: Sequence[str] = CLIP_ABLATIONS,
    write: bool = True,
    normal_results: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` under each clip ablation; return (and write) the time-use summary.

    ``normal_results``: what ``trainer_cls.test(cfg, model)`` just returned for this very model
    with unablated clips (the trainer's final evaluation); the "none" entry is then taken from it
    and its predictions from the default evaluator folder, instead of evaluating again.

    ``trainer_cls`` provides ``test(cfg, model, evaluators)`` and ``build_evaluator(cfg, dataset,
    output_folder)`` (the project's :class:`~perforation_d2.engine.Trainer`). Returns
    ``{"dataset", "num_frames", "ablations": {name: {"AUC", "sens_at_95spec", "predictions"}},
    "AUC_drop": {name: AUC(none) - AUC(name)}}``; AUCs are None where the dataset has one class.
    """
    dataset = cfg.DATASETS.TEST[0]
    num_frames = int(cfg.MODEL.TEMPORAL.NUM_FRAMES)
    modes = [m for m in ablations if m == "none" or num_frames > 1] or ["none"]
    summary: dict[str, Any] = {"dataset": dataset, "num_frames": num_frames, "ablations": {}, "AUC_drop": {}}
    for mode in modes:
        if mode == "none" and normal_results is not None and cfg.TEST.DSA.CLIP_ABLATION == "none":
            metrics = _dsa_metrics(normal_results, cfg)
            summary["ablations"][mode] = {
                **{key: _finite(metrics.get(key)) for key in _REPORTED},
                "predictions": os.path.join(cfg.OUTPUT_DIR, "inference", dataset, PREDICTIONS_FILE),
            }
            continue
        run_cfg = _with_ablation(cfg, mode)
        folder = os.path.dirname(ablation_predictions_path(os.path.join(cfg.OUTPUT_DIR, "inference", dataset), mode))
        evaluator = trainer_cls.build_evaluator(run_cfg, dataset, output_folder=folder)
        results = trainer_cls.test(run_cfg, model, [evaluator] + [
            trainer_cls.build_evaluator(run_cfg, name, output_folder=os.path.dirname(
                ablation_predictions_path(os.path.join(cfg.OUTPUT_DIR, "inference", name), mode)))
            for name in cfg.DATASETS.TEST[1:]
        ])
        metrics = _dsa_metrics(results, cfg)
        summary["ablations"][mode] = {
            **{key: _finite(metrics.get(key)) for key in _REPORTED},
            "predictions": os.path.join(folder, PREDICTIONS_FILE),
        }
        logger.info(f"Time-use diagnostic on {dataset}, clips '{mode}': "
                    + ", ".join(f"{k}={_fmt(summary['ablations'][mode][k])}" for k in _REPORTED))
    normal = summary["ablations"]["none"]["AUC"] if "none" in summary["ablations"] else None
    for mode, entry in summary["ablations"].items():
        if mode != "none":
            summary["AUC_drop"][mode] = None if normal is None or entry["AUC"] is None else normal - entry["AUC"]
    if write and comm.is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, TIME_USE_FILE)
        atomic_write_json(path, summary, overwrite=True)
        logger.info(f"Time-use diagnostic written to {path}")
    return summary


def _dsa_metrics(results: Mapping[str, Any], cfg: CfgNode) -> Mapping[str, Any]:
    # DefaultTrainer.test returns the evaluator's dict directly for a single test set.
    per_dataset = results if len(cfg.DATASETS.TEST) == 1 else results.get(cfg.DATASETS.TEST[0], {})
    return per_dataset.get("dsa", {})


def _with_ablation(cfg: CfgNode, mode: str) -> CfgNode:
    run_cfg = cfg.clone()
    run_cfg.defrost()
    run_cfg.TEST.DSA.CLIP_ABLATION = mode
    run_cfg.freeze()
    return run_cfg


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value and abs(value) != float("inf") else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def time_use_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of a :func:`time_use_diagnostic` summary (for logs and reports)."""
    lines = [f"time-use diagnostic on {summary['dataset']} (T={summary['num_frames']}):"]
    for mode, entry in summary["ablations"].items():
        drop = summary["AUC_drop"].get(mode)
        lines.append(f"  clips {mode:8s} AUC {_fmt(entry['AUC'])}, sens@95spec {_fmt(entry['sens_at_95spec'])}"
                     + ("" if drop is None else f", AUC lost {drop:+.4f}"))
    return lines


