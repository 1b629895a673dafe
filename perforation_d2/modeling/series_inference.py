"""Cached sliding-window inference over whole DSA series.

The naive way to predict a series of F frames feeds F clips of T frames to the model, so the
spatial backbone (the most expensive part of the network) runs F*T times and every frame's
features are recomputed T times. :class:`SeriesPredictor` runs the spatial backbone once per frame
(``TemporalBackbone.forward_frames``), keeps a sliding window of per-frame features, and builds
each centre frame's clip from that window before the temporal module (``fuse``) and the head,
whose output is decoded straight to each frame's top detection (:mod:`.top1`, no NMS).

Clips follow the data layer exactly: the clip of centre frame ``t`` is the frames that
:func:`~perforation_d2.data.mapper.clip_indices` picks (``clamp(t-k .. t+k)``, or with
``MODEL.TEMPORAL.CLIP_SPAN_MS`` the frames nearest to evenly spaced times, from the series' frame
time). Each batch of ``B`` consecutive centre frames gathers its ``(B, T)`` clips from the cached
per-frame features by those index lists (under input fusion the cached "features" are the grey
frames; the same code serves both).

Memory is bounded by the window, not the series: a frame's features are computed when a clip
first needs them and dropped once no later clip does, so the window holds the frames from the
batch's earliest to its latest clip frame: ``B + T - 1`` frames for consecutive clips, about
``B + span / frame time`` with a span (plus one gathered ``(B, T)`` copy while the temporal module
runs), so a 60-frame series at 1024 px costs what a short one does.
:attr:`SeriesPredictor.peak_window_frames` records the largest window seen. Besides the window the
predictor holds the series resized to the model's input (uint8, one plane per grey frame):
:meth:`SeriesPredictor.prepare` makes it, the CPU half of preprocessing, and may run in another
thread while the previous series is predicted (:mod:`perforation_d2.data.prefetch`). When the
model is on CUDA it is made in pinned host memory, so that each batch's copy to the GPU is
asynchronous (``non_blocking``; the kernels that read it run after it on the same stream).

Both paths compute the same numbers: on CPU they agree to the last bit in our tests. On CUDA,
PyTorch runs convolutions in TF32 by default, and the two paths batch different frames together,
so cuDNN may pick different kernels; with TF32 the scores differed by up to ~1e-4 and boxes by up
to ~1e-2 px (seen on an H200 at 640 px). Both paths therefore run in strict FP32 unless
``TEST.DSA.PRECISION`` asks otherwise (:mod:`.precision`; previous settings restored afterwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.layers import move_device_like
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import ImageList, Instances
from torch import nn

from ..data.clip_ablation import ablate_clip_batch, check_clip_ablation
from ..data.clip_transforms import ClipAffineTransform
from ..data.mapper import check_clip_span, clip_indices, read_grey_frame
from ..errors import DSAInputError
from .precision import check_precision, precision_context, precision_from_cfg
from .top1 import decode_full, decode_top1, top1

__all__ = ["PreparedSeries", "SeriesPredictor", "load_series_frames", "naive_predict_series", "resize_frames"]

Features = dict[str, torch.Tensor]
_DECODERS = {"top1": decode_top1, "detectron2": decode_full}


def _as_grey_or_rgb_uint8(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(F, H, W)`` or ``(F, 3, H, W)`` uint8 frames as a CPU uint8 tensor, validated."""
    frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if frames.dtype != torch.uint8:
        raise ValueError(f"series frames must be uint8, got {frames.dtype}")
    if frames.dim() not in (3, 4) or (frames.dim() == 4 and frames.shape[1] != 3) or len(frames) == 0:
        raise ValueError(f"series frames must be (F, H, W) or (F, 3, H, W) with F >= 1, got {tuple(frames.shape)}")
    return frames.cpu()


def _resize_planes(frames: torch.Tensor, frame_size: int, pin_memory: bool = False) -> torch.Tensor:
    """``(F, H, W)`` or ``(F, 3, H, W)`` uint8 -> ``(F, C, S, S)`` uint8 (C = 1 or 3), each plane resized
    with :meth:`ClipAffineTransform.resize` into a new tensor (in pinned memory with ``pin_memory``)."""
    height, width = int(frames.shape[-2]), int(frames.shape[-1])
    transform = ClipAffineTransform.resize(height, width, frame_size, frame_size)
    planes = [np.ascontiguousarray(p) for p in frames.reshape(-1, height, width).numpy()]
    channels = 1 if frames.dim() == 3 else 3
    resized = torch.empty((len(frames), channels, frame_size, frame_size), dtype=torch.uint8, pin_memory=pin_memory)
    np.stack(transform.apply_frames(planes), out=resized.view(-1, frame_size, frame_size).numpy())
    return resized


def resize_frames(frames: torch.Tensor, frame_size: int) -> torch.Tensor:
    """``(F, H, W)`` or ``(F, 3, H, W)`` uint8 -> ``(F, 3, S, S)`` uint8, resized as the test-time mapper does.

    The mapper resizes with :meth:`ClipAffineTransform.resize` (bilinear, in uint8) and replicates
    the grey frame to 3 channels; the same transform is used here so both paths see identical pixels.
    """
    return _resize_planes(frames, frame_size).expand(-1, 3, -1, -1)


@dataclass(frozen=True)
class PreparedSeries:
    """A series resized to a predictor's input size (:meth:`SeriesPredictor.prepare`), ready to predict."""

    frames: torch.Tensor  # (F, C, S, S) uint8, C = 1 (grey) or 3 (RGB); pinned when the model is on CUDA
    height: int  # the original frame size (outputs are in its pixels)
    width: int

    def __len__(self) -> int:
        return len(self.frames)


class SeriesPredictor:
    """Predict every frame of a series with the backbone run once per frame.

    Works for :class:`TemporalRetinaNet` (any Detectron2 ``DenseDetector``) and
    :class:`TemporalGeneralizedRCNN` (any ``GeneralizedRCNN``, Cascade included) whose backbone
    follows the ``TemporalBackbone`` contract, and for plain single-frame Detectron2 models (T=1).

    Args:
        model: the detector, in eval mode (the predictor does not change its mode).
        frame_size: the model's input size, ``cfg.INPUT.FRAME_SIZE`` (frames are resized to it
            exactly as the test-time mapper does).
        batch_size: centre frames per temporal/head batch; the window holds at most
            ``batch_size + T - 1`` frames of features.
        allow_tf32: deprecated spelling of ``precision="tf32"`` (``TEST.DSA.ALLOW_TF32``).
        precision: ``TEST.DSA.PRECISION`` (:mod:`.precision`); default ``"fp32"``. A mode the
            model's device cannot run raises ``DSAInputError`` here.
        clip_ablation: ``TEST.DSA.CLIP_ABLATION``: reorder each clip's frames as the test-time
            ``AblatedClipMapper`` does (``"none"``: as they are).
        decoding: ``"top1"`` (:func:`~.top1.decode_top1`) or ``"detectron2"`` (Detectron2's full
            decoding with NMS, then top-1: the same detections, slower; for benchmarks).
        clip_span_ms: ``MODEL.TEMPORAL.CLIP_SPAN_MS`` (0: clips of consecutive frames); with a
            span, every call must give the series' ``frame_time_ms``.
    """

    def __init__(
        self,
        model: nn.Module,
        frame_size: int,
        batch_size: int = 4,
        allow_tf32: bool = False,
        precision: str | None = None,
        clip_ablation: str = "none",
        decoding: str = "top1",
        clip_span_ms: float = 0.0,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not isinstance(model, (DenseDetector, GeneralizedRCNN)):
            raise TypeError(f"cached series inference supports RetinaNet and R-CNN models, not {type(model).__name__}")
        self.model = model
        self.frame_size = int(frame_size)
        self.batch_size = int(batch_size)
        if precision is None:
            precision = "tf32" if allow_tf32 else "fp32"
        elif allow_tf32 and precision != "tf32":
            raise ValueError(f"allow_tf32=True contradicts precision={precision!r}; pass only precision")
        check_precision(precision, model.pixel_mean.device)
        self.precision = precision
        self.clip_ablation = check_clip_ablation(clip_ablation)
        if decoding not in _DECODERS:
            raise ValueError(f"decoding must be one of {', '.join(_DECODERS)}, not {decoding!r}")
        self._decode = _DECODERS[decoding]
        self.clip_span_ms = check_clip_span(clip_span_ms)
        backbone = model.backbone
        self.num_frames = int(getattr(backbone, "num_frames", 1))
        if self.num_frames < 1 or self.num_frames % 2 == 0:
            raise ValueError(f"the clip length T must be odd and >= 1, got {self.num_frames}")
        self._is_temporal = hasattr(backbone, "forward_frames") and hasattr(backbone, "fuse")
        # Instrumentation: the largest number of frames whose features were held at once, how
        # many times the spatial backbone ran on a frame (once per frame is the point), and how
        # many frames the top-1 decoder handed to Detectron2's full decoding (ties, empty boxes).
        self.peak_window_frames = 0
        self.backbone_frames = 0
        self.fully_decoded_frames = 0

    @classmethod
    def from_config(cls, model: nn.Module, cfg, batch_size: int = 4) -> SeriesPredictor:
        """The predictor that ``cfg``'s settings ask for (frame size, clip span, precision, clip ablation)."""
        return cls(
            model,
            frame_size=cfg.INPUT.FRAME_SIZE,
            batch_size=batch_size,
            precision=precision_from_cfg(cfg),
            clip_ablation=cfg.TEST.DSA.CLIP_ABLATION,
            clip_span_ms=cfg.MODEL.TEMPORAL.CLIP_SPAN_MS,
        )

    # ---- the three stages ----------------------------------------------------------------
    def prepare(self, frames: np.ndarray | torch.Tensor | PreparedSeries) -> PreparedSeries:
        """The CPU half of preprocessing for a whole series: the frames validated and resized to the
        model's input exactly as the test-time mapper does, in pinned memory when the model is on CUDA.

        It reads only the frame size and the model's device, so it may run in another thread while
        this predictor predicts another series (:mod:`perforation_d2.data.prefetch`).
        """
        if isinstance(frames, PreparedSeries):
            return frames
        frames = _as_grey_or_rgb_uint8(frames)
        pin = self.model.pixel_mean.device.type == "cuda"
        return PreparedSeries(_resize_planes(frames, self.frame_size, pin_memory=pin), int(frames.shape[-2]),
                              int(frames.shape[-1]))

    def _preprocess(self, resized: torch.Tensor) -> ImageList:
        """Frames resized by :meth:`prepare`, ``(M, C, S, S)`` uint8: to the device, normalised and
        padded exactly as the mapper and the meta-architecture do (grey replicated to 3 channels)."""
        model = self.model
        if resized.is_pinned():  # asynchronous: the kernels below run after the copy on the same stream
            images = resized.to(model.pixel_mean.device, non_blocking=True)
        else:
            images = move_device_like(resized, model.pixel_mean)
        images = images.float().expand(-1, 3, -1, -1)
        images = (images - model.pixel_mean) / model.pixel_std
        return ImageList.from_tensors(
            list(images),
            model.backbone.size_divisibility,
            padding_constraints=model.backbone.padding_constraints,
        )

    def _frame_features(self, images: torch.Tensor) -> Features:
        backbone = self.model.backbone
        self.backbone_frames += len(images)
        if self._is_temporal:
            return backbone.forward_frames(images)
        return backbone(images)

    def _fuse(self, clips: Features) -> Features:
        if self.num_frames == 1:
            # T = 1: the temporal backbone equals the spatial one; no temporal module runs.
            return {level: x[:, 0] for level, x in clips.items()}
        return self.model.backbone.fuse(clips)

    def _head(
        self, features: Features, image_sizes: list[tuple[int, int]], output_size: tuple[int, int]
    ) -> list[Instances]:
        """The top detection of each centre frame, in output-frame pixels."""
        some = next(iter(features.values()))
        # The heads read only the image sizes (and the device) from the ImageList.
        images = ImageList(some.new_zeros((len(image_sizes), 0, *image_sizes[0])), image_sizes)
        detections = self._decode(self.model, images, features, output_size)
        self.fully_decoded_frames += detections.exact_frames
        return detections.to_instances()

    # ---- the series loop -----------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self, frames: np.ndarray | torch.Tensor | PreparedSeries, frame_time_ms: float | None = None,
        series: str | None = None,
    ) -> list[Instances]:
        """Top-1 ``Instances`` of every frame, boxes in original-frame pixels.

        ``frames``: the whole series, ``(F, H, W)`` grey or ``(F, 3, H, W)``, uint8, or what
        :meth:`prepare` made of it (the same results);
        ``frame_time_ms``: its frame interval (needed with a clip span; ``series`` names it in the
        error when missing). Runs in the predictor's precision (strict FP32 by default, so that it
        matches :func:`naive_predict_series` on GPU too).
        """
        with precision_context(self.precision, self.model.pixel_mean.device):
            return self._predict(frames, frame_time_ms, series or "the series")

    def _predict(self, frames: np.ndarray | torch.Tensor | PreparedSeries, frame_time_ms: float | None,
                 series: str) -> list[Instances]:
        prepared = self.prepare(frames)
        if prepared.frames.shape[-1] != self.frame_size:
            raise ValueError(f"the series was prepared at {prepared.frames.shape[-1]} px, this predictor's input "
                             f"is {self.frame_size} px")
        num_series_frames = len(prepared)
        height, width = prepared.height, prepared.width
        clip_len = self.num_frames
        clips_of = [clip_indices(t, num_series_frames, clip_len, frame_time_ms, self.clip_span_ms, series)
                    for t in range(num_series_frames)]
        last_use = {}  # frame index -> the last centre frame whose clip reads it
        for t, clip in enumerate(clips_of):
            for index in clip:
                last_use[index] = t
        window: dict[int, Features] = {}  # frame index -> its features, each (C, h, w)
        next_frame = 0  # first frame whose features are not computed yet
        chunk = self.batch_size + clip_len - 1  # frames per backbone run, at most
        image_size: tuple[int, int] | None = None
        outputs: list[Instances] = []
        for start in range(0, num_series_frames, self.batch_size):
            stop = min(num_series_frames, start + self.batch_size)
            batch = clips_of[start:stop]
            for index in [i for i in window if last_use[i] < start]:
                del window[index]
            # A clip's slots are ordered in time and clips move forward with their centre, so the
            # batch reads frames up to its last clip's last slot, and each frame is computed once.
            last_needed = batch[-1][-1]
            while next_frame <= last_needed:
                until = min(last_needed + 1, next_frame + chunk)
                images = self._preprocess(prepared.frames[next_frame:until])
                image_size = images.image_sizes[0]
                features = self._frame_features(images.tensor)
                for offset, index in enumerate(range(next_frame, until)):
                    # clone: a view would keep the whole chunk's storage alive after eviction.
                    window[index] = {level: x[offset].clone() for level, x in features.items()}
                del features, images
                next_frame = until
            self.peak_window_frames = max(self.peak_window_frames, len(window))

            slots = [index for clip in batch for index in clip]
            clips = {
                level: torch.stack([window[i][level] for i in slots]).unflatten(0, (len(batch), clip_len))
                for level in window[slots[0]]
            }  # each (B, T, C, h, w)
            clips = ablate_clip_batch(clips, self.clip_ablation, range(start, stop))
            fused = self._fuse(clips)
            del clips
            assert image_size is not None
            outputs.extend(self._head(fused, [image_size] * (stop - start), (height, width)))
        return outputs


def naive_predict_series(
    model: nn.Module,
    frames: np.ndarray | torch.Tensor,
    frame_size: int,
    batch_size: int = 4,
    precision: str = "fp32",
    frame_time_ms: float | None = None,
    clip_span_ms: float = 0.0,
) -> list[Instances]:
    """The reference path: one clip per frame through ``model(batched_inputs)``, top-1 per frame.

    Builds each clip like the test-time mapper (the frames of
    :func:`~perforation_d2.data.mapper.clip_indices`, resized to ``frame_size``) and runs the
    model's own ``forward``, so the backbone runs T times per frame. Like :class:`SeriesPredictor`,
    it runs in strict FP32 unless ``precision`` says otherwise.
    """
    check_precision(precision, model.pixel_mean.device)
    frames = _as_grey_or_rgb_uint8(frames)
    clip_len = int(getattr(model.backbone, "num_frames", 1))
    height, width = int(frames.shape[-2]), int(frames.shape[-1])
    clips_of = [clip_indices(t, len(frames), clip_len, frame_time_ms, check_clip_span(clip_span_ms))
                for t in range(len(frames))]
    resized = resize_frames(frames, frame_size)
    outputs: list[Instances] = []
    with torch.no_grad(), precision_context(precision, model.pixel_mean.device):
        for start in range(0, len(frames), batch_size):
            inputs = []
            for t in range(start, min(len(frames), start + batch_size)):
                image = resized[clips_of[t]] if clip_len > 1 else resized[t]
                inputs.append({"image": image, "height": height, "width": width})
            for output in model(inputs):
                outputs.append(top1(output["instances"]).to("cpu"))
    return outputs


def load_series_frames(record: dict, loader: Callable[[str], np.ndarray] = read_grey_frame) -> np.ndarray:
    """All frames of the series of ``record`` (its ``series_file_names``), ``(F, H, W)`` uint8.

    Every frame must have the size the cohort declares (as the mapper checks).
    """
    expected = (record["height"], record["width"])
    frames = []
    for path in record["series_file_names"]:
        frame = loader(path)
        if frame.shape != expected:
            raise DSAInputError(
                f"{path}: the frame is {frame.shape[1]}x{frame.shape[0]} pixels but the cohort declares "
                f"{expected[1]}x{expected[0]} for video {record.get('video_id')}; fix the cohort JSON "
                "or re-export the frame."
            )
        frames.append(frame)
    return np.stack(frames)
