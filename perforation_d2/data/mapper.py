"""``DSAClipMapper``: a Detectron2 dataset dict (one frame) -> the clip the model reads.

The clip of ``T = MODEL.TEMPORAL.NUM_FRAMES`` frames is centred on the dict's frame; indices
outside the series repeat its first/last frame. Its frames are consecutive, or, with
``MODEL.TEMPORAL.CLIP_SPAN_MS`` > 0, chosen by time so that every clip spans the same duration
whatever the series' frame rate (:func:`clip_indices`, the one place that picks a clip's frames).
Cost is kept near that of a single frame by

* decoding each distinct frame once (edge repetition does not decode twice) and keeping decoded
  frames in a small per-process LRU cache (consecutive frames of a series share T-1 frames);
* composing resize and augmentation into one affine matrix per clip, applied in uint8, four
  frames per OpenCV call (see :mod:`.clip_transforms`).

Frames are read as grey: 8-bit PNGs as they are, 16-bit PNGs divided by 257 (the full 0..65535
range onto 0..255, rounded; store windowed 8-bit frames or full-range 16-bit ones), colour PNGs
converted to luminance. The grey frame is replicated to 3 channels as a read-only view
(``expand``): the model's normalisation copies it anyway, and a third of the bytes travel from
the loader's worker processes. Call ``.contiguous()`` before writing into an image in place.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils

from ..errors import DSAInputError
from .clip_transforms import ClipAffineTransform, DSAClipAugmentation

__all__ = ["DSAClipMapper", "FrameCache", "check_clip_frame_times", "check_clip_span", "check_frame_size",
           "check_input_config", "clip_indices", "read_grey_frame", "series_label"]

logger = logging.getLogger(__name__)


def clip_indices(
    frame_index: int,
    num_frames_in_series: int,
    clip_length: int,
    frame_time_ms: float | None = None,
    span_ms: float = 0.0,
    series: str = "the series",
) -> list[int]:
    """Frame indices of the clip of frame ``t`` (``T = 2k+1`` slots ``j = -k .. k``), clamped to the series.

    ``span_ms`` 0: the consecutive frames ``t-k .. t+k``. ``span_ms`` > 0: slot ``j`` is the frame
    whose time is nearest to ``time(t) + j * span_ms / (T - 1)``, frame ``i`` being at
    ``i * frame_time_ms`` (the series' frame interval); a tie takes the earlier frame, and slots
    repeat a frame when the series is slower than the span asks. So a clip covers ``span_ms``
    whatever the frame rate. A span without a frame time is a :class:`DSAInputError` naming
    ``series``: falling back to consecutive frames would silently change what the model sees. A
    one-frame series needs none: every slot is its frame whatever the timing.
    """
    half = clip_length // 2
    last = num_frames_in_series - 1
    if span_ms <= 0 or clip_length == 1 or num_frames_in_series == 1:
        offsets = range(-half, half + 1)
    else:
        step = span_ms / ((clip_length - 1) * _check_frame_time(frame_time_ms, span_ms, series))  # in frames
        # Nearest frame with ties to the earlier one: ceil(x - 1/2); the tolerance keeps an exact
        # tie (e.g. 0.5 fps with a 1 s step) a tie despite rounding in ``step``.
        offsets = [math.ceil(j * step - 0.5 - 1e-9) for j in range(-half, half + 1)]
    return [min(max(frame_index + offset, 0), last) for offset in offsets]


def _check_frame_time(frame_time_ms: float | None, span_ms: float, series: str) -> float:
    if frame_time_ms is None or not math.isfinite(frame_time_ms) or frame_time_ms <= 0:
        raise DSAInputError(
            f"{series}: has no frame time (got {frame_time_ms!r}), but config MODEL.TEMPORAL.CLIP_SPAN_MS = "
            f"{span_ms:g} chooses each clip's frames by time. Record the series' frame interval (the cohort's "
            "frame_time_ms of the video; FrameTime or FrameTimeVector in DICOM), or set "
            "MODEL.TEMPORAL.CLIP_SPAN_MS 0 for clips of consecutive frames (the model must have been trained "
            "that way)."
        )
    return float(frame_time_ms)


def check_clip_span(span_ms: float) -> float:
    """``MODEL.TEMPORAL.CLIP_SPAN_MS`` if it is a duration (finite, >= 0), else one :class:`DSAInputError`."""
    if isinstance(span_ms, bool) or not isinstance(span_ms, (int, float)) or not math.isfinite(span_ms) or span_ms < 0:
        raise DSAInputError(
            f"config MODEL.TEMPORAL.CLIP_SPAN_MS = {span_ms!r} is not a clip duration: use 0 (clips of "
            "consecutive frames) or a positive number of milliseconds (e.g. 4000)."
        )
    return float(span_ms)


def check_clip_frame_times(dataset_dicts: Iterable[dict], span_ms: float, dataset: str = "dataset") -> None:
    """With a clip span, every series of ``dataset_dicts`` must have a frame time: one
    :class:`DSAInputError` naming the first series that has none (call before training starts)."""
    if span_ms <= 0:
        return
    for record in dataset_dicts:
        single_frame = len(record.get("series_file_names", ())) == 1
        if record.get("series_frame_time_ms") is None and not single_frame:
            _check_frame_time(None, span_ms, series_label(record, dataset))


def series_label(record: dict, dataset: str = "dataset") -> str:
    """How an error names the series of a frame's dataset dict (its video id and frame folder)."""
    where = record.get("series_file_names", [record.get("file_name")])[0]
    folder = os.path.dirname(where) if where else "?"
    return f"{dataset}: video {record.get('video_id')} (frames in {folder})"


def read_grey_frame(path: str) -> np.ndarray:
    """One frame as a 2-D uint8 array (see the module docstring for the bit-depth rule)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DSAInputError(f"{path}: cannot read the frame ({err.strerror or err}).") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DSAInputError(f"{path}: is not a readable image (a cohort frame must be a PNG file).")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            image = np.ascontiguousarray(image[:, :, 0])
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=1.0 / 257.0)
    elif image.dtype != np.uint8:
        raise DSAInputError(
            f"{path}: unsupported pixel type {image.dtype}; frames must be 8- or 16-bit PNG."
        )
    return image


class FrameCache:
    """Least-recently-used decoded frames, bounded in bytes (0 disables it). One per process."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._frames: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, path: str, load: Callable[[str], np.ndarray]) -> np.ndarray:
        frame = self._frames.get(path)
        if frame is not None:
            self._frames.move_to_end(path)
            self.hits += 1
            return frame
        self.misses += 1
        frame = load(path)
        if 0 < frame.nbytes <= self.max_bytes:
            frame.setflags(write=False)  # shared by later clips: nobody may modify it
            self._frames[path] = frame
            self._bytes += frame.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._frames.popitem(last=False)
                self._bytes -= old.nbytes
        return frame

    def __len__(self) -> int:
        return len(self._frames)


def check_clip_length(num_frames: int) -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or num_frames % 2 == 0:
        raise DSAInputError(
            f"config MODEL.TEMPORAL.NUM_FRAMES = {num_frames!r} is not a valid clip length: a clip is "
            "centred on its frame, so use an odd number of frames (1, 3, 5, 7, 9, ...)."
        )
    return num_frames


MAX_FRAME_SIZE = 4096  # a clip of T frames of this side is already T x 16 MiB per channel


def check_frame_size(frame_size: int) -> int:
    if isinstance(frame_size, bool) or not isinstance(frame_size, int) or not 1 <= frame_size <= MAX_FRAME_SIZE:
        raise DSAInputError(
            f"config INPUT.FRAME_SIZE = {frame_size!r} is not a valid frame size: frames are resized to "
            f"FRAME_SIZE x FRAME_SIZE pixels, so use a positive integer up to {MAX_FRAME_SIZE} (640 in the paper)."
        )
    return frame_size


def _check_augmentation(aug_cfg) -> None:
    for key in ("HFLIP_PROB", "SHIFT_PROB", "SCALE_PROB", "ROTATE_PROB"):
        if not 0.0 <= aug_cfg[key] <= 1.0:
            raise DSAInputError(f"config INPUT.DSA_AUG.{key} = {aug_cfg[key]!r} must be a probability in [0, 1].")
    if not (0.0 < aug_cfg.SHIFT_LIMIT < 1.0 and 0.0 <= aug_cfg.SCALE_LIMIT < 1.0
            and 0.0 <= aug_cfg.ROTATE_LIMIT <= 180.0):
        raise DSAInputError(
            "config INPUT.DSA_AUG limits out of range: SHIFT_LIMIT must be in (0, 1), "
            "SCALE_LIMIT in [0, 1), ROTATE_LIMIT in [0, 180] degrees "
            f"(got {aug_cfg.SHIFT_LIMIT}, {aug_cfg.SCALE_LIMIT}, {aug_cfg.ROTATE_LIMIT})."
        )


def check_input_config(cfg) -> None:
    """The clip settings of ``cfg`` (clip length and span, frame size, augmentation ranges), each bad value
    one :class:`DSAInputError` paragraph: for a command to call before any work starts."""
    check_clip_length(cfg.MODEL.TEMPORAL.NUM_FRAMES)
    check_clip_span(cfg.MODEL.TEMPORAL.CLIP_SPAN_MS)
    check_frame_size(cfg.INPUT.FRAME_SIZE)
    _check_augmentation(cfg.INPUT.DSA_AUG)


class DSAClipMapper:
    """Map one frame's dataset dict to ``{"image": uint8 (T, 3, S, S), "instances", ...}``.

    The returned dict is the input dict (without ``"annotations"``) plus ``"image"`` and the centre
    frame's ``"instances"`` (``gt_boxes`` in the ``S x S`` frame, ``gt_classes`` 0); ``"height"`` and
    ``"width"`` stay the original frame size. Training applies ``DSAClipAugmentation`` (one draw per
    clip); inference only resizes.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        num_frames: int,
        frame_size: int,
        augmentation: DSAClipAugmentation | None = None,
        cache_mb: float = 256.0,
        clip_span_ms: float = 0.0,
    ):
        self.is_train = is_train
        self.num_frames = check_clip_length(num_frames)
        self.clip_span_ms = check_clip_span(clip_span_ms)
        self.frame_size = check_frame_size(frame_size)
        self.augmentation = augmentation
        self.cache = FrameCache(int(cache_mb * 2**20))
        mode = "training" if is_train else "inference"
        span = f" spanning {clip_span_ms:g} ms" if clip_span_ms > 0 else ""
        logger.info(f"[DSAClipMapper] {mode}: T={num_frames}{span}, {frame_size}px, augmentation {augmentation}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        check_frame_size(cfg.INPUT.FRAME_SIZE)  # before the augmentation is built from it
        if is_train and cfg.INPUT.DSA_AUG.ENABLED:
            _check_augmentation(cfg.INPUT.DSA_AUG)
            augmentation = DSAClipAugmentation.from_config(cfg)
        else:
            augmentation = None
        return {
            "is_train": is_train,
            "num_frames": cfg.MODEL.TEMPORAL.NUM_FRAMES,
            "frame_size": cfg.INPUT.FRAME_SIZE,
            "augmentation": augmentation,
            "cache_mb": cfg.INPUT.DSA_FRAME_CACHE_MB,
            "clip_span_ms": cfg.MODEL.TEMPORAL.CLIP_SPAN_MS,
        }

    def _read(self, path: str, dataset_dict: dict, frame_index: int) -> np.ndarray:
        frame = self.cache.get(path, read_grey_frame)
        expected = (dataset_dict["height"], dataset_dict["width"])
        if frame.shape != expected:
            raise DSAInputError(
                f"{path}: the frame is {frame.shape[1]}x{frame.shape[0]} pixels but the cohort declares "
                f"{expected[1]}x{expected[0]} for video {dataset_dict.get('video_id')} (frame {frame_index}); "
                "fix the cohort JSON or re-export the frame."
            )
        return frame

    def __call__(self, dataset_dict: dict) -> dict:
        out = dict(dataset_dict)
        files = out["series_file_names"]
        indices = clip_indices(out["frame_id"], len(files), self.num_frames, out.get("series_frame_time_ms"),
                               self.clip_span_ms, series_label(out))
        distinct = sorted(set(indices))
        frames = [self._read(files[i], out, i) for i in distinct]
        centre = frames[distinct.index(out["frame_id"])]

        if self.augmentation is not None:
            transform = self.augmentation.get_transform(centre)
        else:
            transform = ClipAffineTransform.resize(*centre.shape, self.frame_size, self.frame_size)
        warped = dict(zip(distinct, transform.apply_frames(frames)))

        size = self.frame_size
        clip = np.empty((self.num_frames, size, size), dtype=np.uint8)
        for slot, index in enumerate(indices):
            clip[slot] = warped[index]
        # Grey replicated to 3 channels as a view: a third of the memory to fill and to send
        # from the loader's worker processes (the model's normalisation makes its own copy).
        out["image"] = torch.from_numpy(clip).unsqueeze(1).expand(-1, 3, -1, -1)

        annotations = [
            utils.transform_instance_annotations(copy.copy(ann), transform, (size, size))
            for ann in out.pop("annotations", [])
            if ann.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(annotations, (size, size))
        out["instances"] = utils.filter_empty_instances(instances)
        return out
