"""A trained model for ``predict``: its config, its weights (strictly matched) and its decision threshold.

Weights load only through :class:`~perforation_d2.engine.checkpoint.SafeDetectionCheckpointer`
(``weights_only``) and must match the config exactly
(:meth:`~perforation_d2.engine.checkpoint.SafeDetectionCheckpointer.load_exact`). The decision
threshold is the operating point stored with the model
(:func:`~perforation_d2.engine.operating_point.stored_threshold`), or a manual one.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..engine.operating_point import Threshold, stored_threshold
from ..errors import DSAInputError


def resolve_device(requested: str | None) -> str:
    """``requested`` (``cpu`` / ``cuda``), checked; None: cuda when PyTorch sees a GPU, else cpu."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise DSAInputError("--device cuda: no CUDA GPU is available to PyTorch here; use --device cpu.")
    return requested


def load_model(config_file: str, weights: str, device: str, opts: Sequence[str] = ()) -> tuple[Any, Any, dict]:
    """``(cfg, model, checkpoint extras)``: the model of ``config_file`` with ``weights``, in eval mode."""
    from detectron2.modeling import build_model

    from ..engine.checkpoint import SafeDetectionCheckpointer
    from ..engine.trainer import build_config

    cfg = build_config(argparse.Namespace(config_file=config_file, opts=list(opts)))
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    if not os.path.isfile(weights):
        raise DSAInputError(f"{weights}: weights file not found (--weights).")
    model = build_model(cfg)
    model.eval()
    extras = SafeDetectionCheckpointer(model).load_exact(weights, config_file)
    return cfg, model, extras


def choose_threshold(weights: str, extras: Mapping[str, Any], method: str, manual: float | None,
                     series_optimization: bool = True) -> Threshold:
    """The decision threshold: ``manual`` when given (scores computed with ``series_optimization``),
    else the stored ``method`` operating point (with the SO setting it was chosen under)."""
    if manual is not None:
        if not math.isfinite(manual):
            raise DSAInputError(f"--threshold {manual}: must be a finite number.")
        return Threshold(float(manual), "manual", "--threshold", series_optimization)
    return stored_threshold(weights, extras, method)
