"""The exported graphs of a model and the record written next to them.

``backbone.onnx`` maps normalised, padded frames ``(N, 3, H, W)`` to their per-frame features (one
output per level the series predictor caches: the FPN levels, or the grey frame under input
fusion). For RetinaNet, ``head.onnx`` maps the clips of those features ``(B, T, C, h, w)`` per level
to the head's logits ``(B, A*K, h, w)`` and box deltas ``(B, A*4, h, w)`` per level, the temporal
module included. For Faster / Cascade R-CNN, ``head.onnx`` is the fusion alone (clips -> fused
features per level) and :mod:`.rcnn` adds the RPN head, the box pooler and the box head of each
stage. Batch and frame size are dynamic. Decoding (anchors, proposals, top-1, rescaling), resizing
and series optimisation stay in Python, shared with the PyTorch path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from torch import nn

from ..errors import DSAInputError

EXPORT_FILE = "export.json"
BACKBONE_FILE = "backbone.onnx"
HEAD_FILE = "head.onnx"
EXPORT_FORMAT = "perforation_d2 ONNX export"
EXPORT_VERSION = 1


def check_exportable(model: nn.Module, config_file: str) -> None:
    """RetinaNet-family models and Faster / Cascade R-CNN with box heads only export."""
    if isinstance(model, RetinaNet):
        return
    heads = getattr(model, "roi_heads", None)
    if (isinstance(model, GeneralizedRCNN) and isinstance(model.proposal_generator, RPN)
            and isinstance(heads, StandardROIHeads) and not heads.mask_on and not heads.keypoint_on):
        return
    raise DSAInputError(
        f"{config_file}: builds a {type(model).__name__}; export supports RetinaNet-family models and "
        "Faster / Cascade R-CNN with an RPN and box heads only (every temporal module on them). Other models run "
        "through the PyTorch runtime only."
    )


def fused_levels(model: nn.Module) -> list[str]:
    """The levels the head(s) read after fusion, in the backbone's order."""
    if isinstance(model, RetinaNet):
        return list(model.head_in_features)
    wanted = set(model.proposal_generator.in_features) | set(model.roi_heads.box_in_features)
    return [level for level in model.backbone.output_shape() if level in wanted]


def frame_levels(model: nn.Module) -> list[str]:
    """The levels of the per-frame features (what :class:`SeriesPredictor` caches)."""
    if getattr(model.backbone, "input_fusion", False):
        from ..modeling.backbone import INPUT_LEVEL

        return [INPUT_LEVEL]
    return fused_levels(model)


def frames_features(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame features (what :class:`SeriesPredictor` caches)."""
    backbone = model.backbone
    if hasattr(backbone, "forward_frames"):
        return backbone.forward_frames(images)
    return backbone(images)


class FrameBackbone(nn.Module):
    """``frames (N, 3, H, W)`` normalised and padded -> per-frame features, one tensor per frame level."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.levels = frame_levels(model)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = frames_features(self.model, frames)
        return tuple(features[level] for level in self.levels)


class FusionHead(nn.Module):
    """Clips of per-frame features, one ``(B, T, C, h, w)`` per frame level -> RetinaNet's logits...,
    deltas...; for R-CNN the fused features, one ``(B, C, h, w)`` per fused level.

    T = 1 skips the temporal module, as the series predictor does.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_frames = int(getattr(model.backbone, "num_frames", 1))
        self.levels, self.fused_levels = frame_levels(model), fused_levels(model)

    def forward(self, *clips: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.num_frames == 1:
            fused = {level: clip[:, 0] for level, clip in zip(self.levels, clips)}
        else:
            fused = self.model.backbone.fuse(dict(zip(self.levels, clips)))
        fused = [fused[level] for level in self.fused_levels]
        if not isinstance(self.model, RetinaNet):
            return tuple(fused)
        logits, deltas = self.model.head(fused)
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
