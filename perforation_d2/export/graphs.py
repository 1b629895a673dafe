"""The two exported graphs of a RetinaNet-family model and the record written next to them.

``backbone.onnx`` maps normalised, padded frames ``(N, 3, H, W)`` to their per-frame FPN features
(one output per head level); ``head.onnx`` maps the clips of those features ``(B, T, C, h, w)`` per
level to the head's logits ``(B, A*K, h, w)`` and box deltas ``(B, A*4, h, w)`` per level, the
temporal module included. Batch and frame size are dynamic. Decoding (anchors, top-1, rescaling),
resizing and series optimisation stay in Python, shared with the PyTorch path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from torch import nn

from ..errors import DSAInputError

EXPORT_FILE = "export.json"
BACKBONE_FILE = "backbone.onnx"
HEAD_FILE = "head.onnx"
EXPORT_FORMAT = "perforation_d2 ONNX export"
EXPORT_VERSION = 1


def check_exportable(model: nn.Module, config_file: str) -> None:
    """Only RetinaNet-family models export: their head is dense, R-CNN's RPN + ROIAlign are not."""
    if not isinstance(model, RetinaNet):
        raise DSAInputError(
            f"{config_file}: builds a {type(model).__name__}; export supports RetinaNet-family models "
            "(single-frame RetinaNet and every temporal module on it). Faster / Cascade R-CNN run "
            "through the PyTorch runtime only."
        )


def frames_features(model: RetinaNet, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame features of the head's levels (what :class:`SeriesPredictor` caches)."""
    backbone = model.backbone
    if hasattr(backbone, "forward_frames"):
        return backbone.forward_frames(images)
    return backbone(images)


class FrameBackbone(nn.Module):
    """``frames (N, 3, H, W)`` normalised and padded -> per-frame features, one tensor per head level."""

    def __init__(self, model: RetinaNet):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = frames_features(self.model, frames)
        return tuple(features[level] for level in self.model.head_in_features)


class FusionHead(nn.Module):
    """Clips of per-frame features, one ``(B, T, C, h, w)`` per level -> logits..., deltas...

    T = 1 skips the temporal module, as the series predictor does.
    """

    def __init__(self, model: RetinaNet):
        super().__init__()
        self.model = model
        self.num_frames = int(getattr(model.backbone, "num_frames", 1))

    def forward(self, *clips: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = self.model.head_in_features
        if self.num_frames == 1:
            fused = {level: clip[:, 0] for level, clip in zip(levels, clips)}
        else:
            fused = self.model.backbone.fuse(dict(zip(levels, clips)))
        logits, deltas = self.model.head([fused[level] for level in levels])
        return (*logits, *deltas)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_fingerprint(cfg) -> str:
    """SHA-256 of the config as YAML, without what may differ between export and use (device, paths)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = ""
    cfg.MODEL.WEIGHTS = ""
    cfg.OUTPUT_DIR = ""
    return hashlib.sha256(cfg.dump().encode()).hexdigest()
