"""The spatio-temporal backbone: a shared per-frame FPN and one temporal module per FPN level.

``TemporalBackbone`` takes clips ``(N, T, C, H, W)``, runs the spatial FPN backbone on all N*T
frames and fuses the T maps of every level into one map for the centre frame. Cached series
inference calls the two halves itself: ``forward_frames`` (all that depends on one frame) once
per frame and ``fuse`` once per clip; see docs/ARCHITECTURE.md, "Backbone contract". With T = 1 it
has no temporal module and its output is exactly the spatial backbone's.

``MODEL.TEMPORAL.CHECKPOINT_BACKBONE`` recomputes the spatial backbone's activations in the
backward pass (``torch.utils.checkpoint``, non-reentrant) in segments of
``CHECKPOINT_CHUNK_FRAMES`` frames, so that only one segment's activations are alive at a time:
a T=9 clip then trains in less memory than a T=5 clip without it. BatchNorm in train mode would
update its running statistics twice per step (forward and recomputation); the recomputation runs
inside a context that restores them, so they are updated exactly once. Its batch statistics are
those of one segment, not of all N*T frames: with GroupNorm (the Base configs) checkpointing
changes nothing numerically (on CUDA up to TF32 rounding, as segments of other sizes may get
other convolution algorithms).

``MODEL.TEMPORAL.FUSION = "input"`` fuses time before the backbone instead (early fusion): the T
grey frames of a clip are the T input channels of one backbone pass, so the very first
convolution sees each pixel's time-intensity curve. A perforation that grows is then told from a
look-alike that jumps or washes out by a pixel-level filter that learns in a few hundred steps,
where feature fusion must first learn per-frame blob features and then compare them. It costs one
single-frame pass per frame (plus T-1 stem channels). The per-frame "features" are then the
normalised grey frames themselves (level ``"input"``), so cached series inference, the clip
ablations and the export treat both fusions alike. ``MODEL.TEMPORAL.INPUT_MAPS`` adds order
statistics and frame differences of the clip to the raw frames (:mod:`.time_course`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import DSAInputError
from .temporal_modules import FUSIONS, build_temporal_module, check_temporal_config
from .time_course import centre_channel, check_time_course_maps, time_course_channels, time_course_maps

__all__ = [
    "INPUT_LEVEL",
    "TEMPORAL_BACKBONE_BUILDERS",
    "TemporalBackbone",
    "build_temporal_backbone",
    "build_temporal_resnet_fpn_backbone",
    "build_temporal_retinanet_resnet_fpn_backbone",
]

logger = logging.getLogger(__name__)

# The one "level" of per-frame features under input fusion: the normalised grey frame.
INPUT_LEVEL = "input"


@contextlib.contextmanager
def _batchnorm_stats_preserved(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of ``module``'s training BatchNorm layers on exit."""
    buffers = [
        buf
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.training
        for buf in (layer.running_mean, layer.running_var, layer.num_batches_tracked)
        if buf is not None
    ]
    saved = [buf.clone() for buf in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in zip(buffers, saved):
                buf.copy_(value)


class TemporalBackbone(Backbone):
    """A spatial FPN backbone run per frame, fused over time by one module per level."""

    def __init__(
        self,
        spatial: Backbone,
        num_frames: int,
        temporal_modules: dict[str, nn.Module] | None = None,
        checkpoint_backbone: bool = False,
        checkpoint_chunk_frames: int = 4,
        fusion: str = "features",
        input_maps: tuple[str, ...] = ("frames",),
    ):
        """
        Args:
            spatial: the per-frame backbone (e.g. Detectron2's FPN), shared by all frames; under
                input fusion, the backbone of the whole clip (T input channels).
            num_frames: T, odd.
            temporal_modules: ``{level: module}`` for every output level of ``spatial``; must be
                None when T = 1 or under input fusion, and given otherwise.
            checkpoint_backbone: recompute the spatial backbone's activations in the backward pass.
            checkpoint_chunk_frames: frames per checkpointed segment.
            fusion: ``"features"`` (per FPN level, the paper's) or ``"input"`` (early fusion).
            input_maps: under input fusion, the map families the stem sees (:mod:`.time_course`).
        """
        super().__init__()
        levels = set(spatial.output_shape())
        if num_frames < 1 or num_frames % 2 == 0:
            raise ValueError(f"num_frames must be odd and positive, got {num_frames}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        self.input_fusion = fusion == "input" and num_frames > 1
        check_time_course_maps(input_maps)
        self.input_maps = tuple(input_maps)
        if (num_frames == 1 or self.input_fusion) != (temporal_modules is None):
            raise ValueError("temporal_modules must be None exactly when num_frames == 1 or under input fusion")
        if temporal_modules is not None and set(temporal_modules) != levels:
            raise ValueError(f"temporal_modules must cover the levels {sorted(levels)}")
        if checkpoint_chunk_frames < 1:
            raise DSAInputError(
                f"config: MODEL.TEMPORAL.CHECKPOINT_CHUNK_FRAMES is {checkpoint_chunk_frames}; "
                "it must be a positive number of frames."
            )
        self.spatial = spatial
        self.num_frames = num_frames
        self.temporal = None if temporal_modules is None else nn.ModuleDict(temporal_modules)
        self.checkpoint_backbone = checkpoint_backbone
        self.checkpoint_chunk_frames = checkpoint_chunk_frames
        if checkpoint_backbone and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in spatial.modules()
        ):
            logger.info(
                "Checkpointing a backbone with BatchNorm: in training its batch statistics are "
                "computed per segment of %d frames.",
                checkpoint_chunk_frames,
            )

    def output_shape(self) -> dict[str, ShapeSpec]:
        return self.spatial.output_shape()

    @property
    def input_centre_channel(self) -> int | None:
        """Under input fusion, the stem channel that holds the unaltered centre frame (else None)."""
        return centre_channel(self.input_maps, self.num_frames) if self.input_fusion else None

    @property
    def size_divisibility(self) -> int:
        return self.spatial.size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return self.spatial.padding_constraints

    def _recompute_contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        # (context of the first forward, context of the recomputation in backward)
        return contextlib.nullcontext(), _batchnorm_stats_preserved(self.spatial)

    def forward_frames(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything that depends on one frame only: (M, C, H, W) -> {level: (M, C', h, w)}.

        That is the spatial backbone, then the temporal module's per-frame stage where it has one
        (``per_frame``, e.g. the recurrent cells' input convolutions; C' = C otherwise). Under
        input fusion nothing runs per frame: the features are the grey frames (M, 1, H, W).
        """
        if self.input_fusion:
            return {INPUT_LEVEL: frames[:, :1]}
        features = self._checkpointed_spatial(frames)
        if self.temporal is None:
            return features
        return {level: _per_frame(self.temporal[level], x) for level, x in features.items()}

    def _checkpointed_spatial(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        if not (self.checkpoint_backbone and self.training and torch.is_grad_enabled()):
            return self.spatial(frames)
        segments = [
            checkpoint(self.spatial, chunk, use_reentrant=False, context_fn=self._recompute_contexts)
            for chunk in frames.split(self.checkpoint_chunk_frames)
        ]
        return {level: torch.cat([seg[level] for seg in segments]) for level in segments[0]}

    def fuse(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The temporal modules' clip stage: clips of :meth:`forward_frames` outputs {level: (N, T, C', h, w)}
        -> {level: (N, C, h, w)}.

        Under input fusion: the clip's grey frames {"input": (N, T, 1, H, W)} -> their time-course
        maps -> the backbone's levels.
        """
        if self.input_fusion:
            return self._checkpointed_spatial(time_course_maps(features[INPUT_LEVEL][:, :, 0], self.input_maps))
        if self.temporal is None:
            return {level: x[:, 0] for level, x in features.items()}
        return {level: _fuse_frames(self.temporal[level], x) for level, x in features.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Clips (N, T, C, H, W) -> {level: (N, C, h, w)}, fused for each clip's centre frame."""
        if x.dim() != 5:
            raise ValueError(f"TemporalBackbone expects clips (N, T, C, H, W), got {tuple(x.shape)}")
        n, t = x.shape[:2]
        if t != self.num_frames:
            raise DSAInputError(
                f"model input: clips have {t} frames but the backbone was built for "
                f"MODEL.TEMPORAL.NUM_FRAMES = {self.num_frames}; build the data mapper and the "
                "model from the same config."
            )
        if self.input_fusion:
            return self.fuse({INPUT_LEVEL: self.forward_frames(x.flatten(0, 1))[INPUT_LEVEL].unflatten(0, (n, t))})
        features = self._checkpointed_spatial(x.flatten(0, 1))
        if self.temporal is None:
            return features  # T == 1: exactly the spatial backbone
        # The module's own clip path: it computes per-frame parts only for the frames it reads.
        return {level: self.temporal[level](f.unflatten(0, (n, t))) for level, f in features.items()}


def _per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module.per_frame(x) if hasattr(module, "per_frame") else x


def _fuse_frames(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module.fuse_frames(x) if hasattr(module, "fuse_frames") else module(x)


def _build_temporal(cfg: CfgNode, input_shape: ShapeSpec, spatial_builder: str) -> TemporalBackbone:
    check_temporal_config(cfg)
    if spatial_builder in TEMPORAL_BACKBONE_BUILDERS or spatial_builder not in BACKBONE_REGISTRY:
        valid = sorted(n for n, _ in BACKBONE_REGISTRY if n not in TEMPORAL_BACKBONE_BUILDERS)
        raise DSAInputError(
            f"config: MODEL.TEMPORAL.SPATIAL_BACKBONE is {spatial_builder!r}, which is not a "
            f"spatial backbone builder; valid choices are {', '.join(valid)}."
        )
    num_frames = cfg.MODEL.TEMPORAL.NUM_FRAMES
    fusion = cfg.MODEL.TEMPORAL.FUSION
    input_maps = tuple(cfg.MODEL.TEMPORAL.INPUT_MAPS)
    if fusion == "input" and num_frames > 1:
        # The clip's time-course maps (by default its T grey frames) are the stem's input channels.
        channels = time_course_channels(input_maps, num_frames)
        input_shape = ShapeSpec(channels=channels, height=input_shape.height, width=input_shape.width)
    spatial = BACKBONE_REGISTRY.get(spatial_builder)(cfg, input_shape)
    modules = None
    if num_frames > 1 and fusion == "features":
        modules = {
            level: build_temporal_module(cfg, shape.channels)
            for level, shape in spatial.output_shape().items()
        }
    return TemporalBackbone(
        spatial,
        num_frames,
        modules,
        checkpoint_backbone=cfg.MODEL.TEMPORAL.CHECKPOINT_BACKBONE,
        checkpoint_chunk_frames=cfg.MODEL.TEMPORAL.CHECKPOINT_CHUNK_FRAMES,
        fusion=fusion,
        input_maps=input_maps,
    )


@BACKBONE_REGISTRY.register()
def build_temporal_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> TemporalBackbone:
    """Temporal wrapper around the builder named in ``MODEL.TEMPORAL.SPATIAL_BACKBONE``."""
    return _build_temporal(cfg, input_shape, cfg.MODEL.TEMPORAL.SPATIAL_BACKBONE)


@BACKBONE_REGISTRY.register()
def build_temporal_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> TemporalBackbone:
    """Temporal ResNet-FPN with RetinaNet's levels P3-P7."""
    return _build_temporal(cfg, input_shape, "build_retinanet_resnet_fpn_backbone")


@BACKBONE_REGISTRY.register()
def build_temporal_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> TemporalBackbone:
    """Temporal ResNet-FPN with the R-CNN levels P2-P6."""
    return _build_temporal(cfg, input_shape, "build_resnet_fpn_backbone")


TEMPORAL_BACKBONE_BUILDERS = (
    "build_temporal_backbone",
    "build_temporal_retinanet_resnet_fpn_backbone",
    "build_temporal_resnet_fpn_backbone",
)
