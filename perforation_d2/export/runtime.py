"""Series inference through onnxruntime: the exported graphs inside the PyTorch series loop.

:class:`OnnxSeriesPredictor` is :class:`~perforation_d2.modeling.series_inference.SeriesPredictor`
with its backbone and fusion + head stages run by onnxruntime (CPU; CUDA when onnxruntime has it);
resizing, the feature window, clips, top-1 decoding and everything after are the same code, so
``predict --runtime onnxruntime`` differs from the PyTorch runtime only by the graphs' rounding.
An export is used only if its files and the given config and weights are the ones it recorded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from torch import nn

from ..errors import DSAInputError
from ..io.json_io import read_json
from ..modeling.series_inference import SeriesPredictor
from ..modeling.top1 import decode_retinanet_top1
from .graphs import (
    BACKBONE_FILE,
    EXPORT_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    HEAD_FILE,
    check_exportable,
    config_fingerprint,
    frame_levels,
    fused_levels,
    sha256_of,
)
from .rcnn import BOX_POOLER_FILE, RPN_HEAD_FILE, box_head_file, num_stages, onnx_rcnn_model

__all__ = ["OnnxSeriesPredictor", "onnx_series_predictor", "read_export", "require_onnxruntime"]


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or one paragraph saying how to get it."""
    try:
        import onnxruntime
    except ImportError:
        raise DSAInputError(
            "onnxruntime is not installed in this Python environment, so ONNX models cannot be exported "
            "or run. Install the pinned version (`python -m pip install -r requirements.txt`, or "
            "`python -m pip install onnx==1.23.2 onnxscript==0.7.2 ml_dtypes==0.5.4 onnxruntime==1.32.0`), "
            "or use the PyTorch runtime (predict without --runtime onnxruntime)."
        ) from None
    return onnxruntime


def read_export(folder: str | os.PathLike, cfg=None, weights: str | None = None) -> dict[str, Any]:
    """``export.json`` of ``folder``, after checking its files (and ``cfg`` / ``weights`` when given)
    against what it recorded; any mismatch raises ``DSAInputError`` naming the file."""
    folder = Path(folder)
    record_path = folder / EXPORT_FILE
    hint = "It is written by `python -m perforation_d2 export` next to backbone.onnx and head.onnx."
    record = read_json(record_path, "export record", hint)
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT or record.get("version") != EXPORT_VERSION:
        raise DSAInputError(f"{record_path}: is not a version-{EXPORT_VERSION} {EXPORT_FORMAT} record. {hint}")
    files = record.get("files") if isinstance(record.get("files"), dict) else {}
    graphs = {"backbone": BACKBONE_FILE, "head": HEAD_FILE}
    graphs.update({key: entry.get("file") for key, entry in files.items() if isinstance(entry, dict)})
    for key, name in graphs.items():
        if not isinstance(name, str) or Path(name).name != name:
            raise DSAInputError(f"{record_path}: its graph {key!r} is not a file name in the folder; export again.")
        path = folder / name
        if not path.is_file():
            raise DSAInputError(f"{path}: the ONNX model recorded in {record_path} is missing; export again.")
        if sha256_of(path) != record.get("files", {}).get(key, {}).get("sha256"):
            raise DSAInputError(
                f"{path}: does not match its record in {record_path} (its SHA-256 differs: the file was "
                "changed or replaced after export); export again, or use the folder it came from."
            )
    if cfg is not None and config_fingerprint(cfg) != record.get("config_sha256"):
        raise DSAInputError(
            f"{folder / BACKBONE_FILE}: was exported from a different config ({record.get('config_file')}) than "
            "the one given (their settings differ, config overrides included); its graphs and decoding would "
            "not match. Pass the config it was exported with, or export this config."
        )
    if weights is not None and sha256_of(weights) != record.get("weights", {}).get("sha256"):
        raise DSAInputError(
            f"{folder / BACKBONE_FILE}: was exported from other weights ({record.get('weights', {}).get('file')}) "
            f"than {weights}; export these weights, or pass the ones it was exported from."
        )
    return record


class OnnxSeriesPredictor(SeriesPredictor):
    """A :class:`SeriesPredictor` whose graphs run in onnxruntime: the backbone, the fusion + head
    (RetinaNet), or the fusion, RPN head, box pooler and box heads (R-CNN, :mod:`.rcnn`).

    ``model`` supplies the decoding settings only (anchors, box transform, proposal selection, test
    thresholds): build it from the config the export recorded (``read_export`` checks that). Runs in FP32.
    """

    def __init__(self, model: nn.Module, folder: str | os.PathLike, frame_size: int, batch_size: int = 4,
                 clip_ablation: str = "none", threads: int | None = None, allow_tf32: bool = False,
                 clip_span_ms: float = 0.0):
        check_exportable(model, str(folder))
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        # onnxruntime's CUDA provider uses TF32 unless told not to: strict FP32 unless "tf32" was asked.
        providers = [("CUDAExecutionProvider", {"use_tf32": int(allow_tf32)})] if "CUDAExecutionProvider" in available else []
        providers.append("CPUExecutionProvider")
        folder = Path(folder)

        def session(name: str):
            return ort.InferenceSession(str(folder / name), options, providers=providers)

        self.rcnn = not isinstance(model, RetinaNet)
        if self.rcnn:
            sessions = {"rpn": session(RPN_HEAD_FILE), "pooler": session(BOX_POOLER_FILE)}
            sessions.update({f"stage_{s}": session(box_head_file(s)) for s in range(num_stages(model))})
            model = onnx_rcnn_model(model, sessions)
        super().__init__(model, frame_size, batch_size=batch_size, precision="fp32", clip_ablation=clip_ablation,
                         clip_span_ms=clip_span_ms)
        self.backbone_session, self.head_session = session(BACKBONE_FILE), session(HEAD_FILE)
        self.levels, self.fused_levels = frame_levels(model), fused_levels(model)

    def _frame_features(self, images: torch.Tensor):
        self.backbone_frames += len(images)
        outputs = self.backbone_session.run(None, {"frames": images.detach().cpu().numpy()})
        return {level: torch.from_numpy(x) for level, x in zip(self.levels, outputs)}

    def _fuse(self, clips):
        if not self.rcnn:
            return clips  # the temporal module is inside head.onnx, run with the head by _head
        feeds = {f"clips_{level}": np.ascontiguousarray(clips[level].numpy()) for level in self.levels}
        return {level: torch.from_numpy(x) for level, x in zip(self.fused_levels, self.head_session.run(None, feeds))}

    def _head(self, features, image_sizes, output_size):
        if self.rcnn:
            return super()._head(features, image_sizes, output_size)  # top-1 on the ONNX-backed model
        feeds = {f"clips_{level}": np.ascontiguousarray(features[level].numpy()) for level in self.levels}
        outputs = [torch.from_numpy(x) for x in self.head_session.run(None, feeds)]
        count = len(self.fused_levels)
        detections = decode_retinanet_top1(self.model, [outputs[:count], outputs[count:]], image_sizes[0], output_size)
        self.fully_decoded_frames += detections.exact_frames
        return detections.to_instances()


def onnx_series_predictor(folder: str | os.PathLike | None, cfg, model: nn.Module, weights: str,
                          batch_size: int = 4) -> OnnxSeriesPredictor:
    """``predict --runtime onnxruntime``: the export in ``folder``, checked against ``cfg`` and ``weights``."""
    from ..modeling.precision import precision_from_cfg

    if folder is None:
        raise DSAInputError("--runtime onnxruntime needs --onnx DIR, the folder that `export` wrote.")
    read_export(folder, cfg, weights)
    precision = precision_from_cfg(cfg)
    if precision not in ("fp32", "tf32"):
        raise DSAInputError(
            f"TEST.DSA.PRECISION {precision!r}: the exported ONNX graphs compute in FP32, so onnxruntime cannot "
            "run them in that precision; use TEST.DSA.PRECISION fp32 (or tf32) with --runtime onnxruntime, "
            "or the PyTorch runtime for autocast precisions."
        )
    return OnnxSeriesPredictor(model, folder, cfg.INPUT.FRAME_SIZE, batch_size=batch_size,
                               clip_ablation=cfg.TEST.DSA.CLIP_ABLATION, allow_tf32=precision == "tf32",
                               clip_span_ms=cfg.MODEL.TEMPORAL.CLIP_SPAN_MS)
