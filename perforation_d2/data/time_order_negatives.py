"""Time-order negatives: training clips of a perforation put out of time order, labelled background.

A perforation appears, grows and persists (paper section 1); its look-alikes share its look in
any one frame and differ only in their time course. A detector trained on clips in their true
order only ever sees the perforation's course as positive and whatever the look-alikes do as
negative, and on a small cohort it can reach a low loss from single-frame appearance alone
(README, "Temporal learning"). ``INPUT.TIME_ORDER_NEGATIVES`` adds the missing contrast: with
probability ``PROB`` a training clip whose centre frame shows a perforation has its context slots
reversed or shuffled (as the time-use diagnostic does, :mod:`.clip_ablation`, the centre slot
staying in place) and, *if that makes the lesion shrink or vanish*, the clip is trained as a
frame without any box. The centre frame and its pixels are unchanged, so only the clip's time
course can tell the two apart; a model that ignores time pays for it in the loss.

Whether the new order breaks the course is read from the series' own boxes (the dataset dict's
``series_boxes``): each box of the centre frame is followed into every slot's frame through the
box whose centre overlaps it (:func:`~perforation_d2.box_geometry.centres_overlap`; none: size
0), its size being the square root of the box area. The reordered course *breaks* when some slot
is at least ``MIN_SHRINK`` (relative) smaller than the largest size of the slots before it. A
clip on a perforation's plateau (sizes equal within ``MIN_SHRINK``), a clip of repeated frames
(a slow series) and a clip in which only one of several perforations breaks keep their true
order and boxes: relabelling them would teach the model that a persisting perforation is
background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..box_geometry import centres_overlap
from ..errors import DSAInputError
from .clip_ablation import clip_slot_order

__all__ = ["TimeOrderNegatives", "check_time_order_negatives", "course_breaks", "lesion_sizes", "series_boxes"]

# The reorderings drawn for a negative, each with equal probability.
_MODES = ("reverse", "shuffle")


def check_time_order_negatives(prob: float, min_shrink: float) -> tuple[float, float]:
    """``INPUT.TIME_ORDER_NEGATIVES`` (PROB, MIN_SHRINK) if valid, else one :class:`DSAInputError`."""
    for key, value, low_open in (("PROB", prob, False), ("MIN_SHRINK", min_shrink, True)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
            interval = "(0, 1]" if low_open else "[0, 1]"
            raise DSAInputError(
                f"config INPUT.TIME_ORDER_NEGATIVES.{key} = {value!r} must be a number in {interval}: PROB is the "
                "chance that a training clip with a perforation is tried out of time order, MIN_SHRINK the "
                "relative shrinkage of the lesion that makes the reordered clip a negative (e.g. 0.2)."
            )
    return float(prob), float(min_shrink)


def series_boxes(frame_boxes: Sequence[Sequence[Sequence[float]]]) -> np.ndarray:
    """One series' boxes as a compact ``(K, 5)`` float32 array of rows ``(frame, x, y, w, h)``.

    ``frame_boxes[t]`` holds frame ``t``'s ``x, y, w, h`` boxes. One array per series, shared by its
    frames' dataset dicts, so a clip can follow a lesion through its neighbour frames.
    """
    rows = [(t, *box) for t, boxes in enumerate(frame_boxes) for box in boxes]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


def lesion_sizes(boxes: np.ndarray, centre_box: Sequence[float], frame_indices: Sequence[int]) -> list[float]:
    """Size (``sqrt(w * h)``) of the lesion of ``centre_box`` in each of ``frame_indices``, 0 where absent.

    In a frame, the lesion is the largest box whose centre overlaps ``centre_box``.
    """
    sizes = []
    for frame in frame_indices:
        rows = boxes[boxes[:, 0] == frame]
        matched = [math.sqrt(max(w, 0.0) * max(h, 0.0)) for _, x, y, w, h in rows.tolist()
                   if centres_overlap((x, y, w, h), centre_box)]
        sizes.append(max(matched, default=0.0))
    return sizes


def course_breaks(sizes: Sequence[float], min_shrink: float) -> bool:
    """Whether a lesion's sizes, in slot order, shrink by ``min_shrink`` or more below their running maximum."""
    peak = 0.0
    for size in sizes:
        if peak > 0.0 and (peak - size) / peak >= min_shrink:
            return True
        peak = max(peak, size)
    return False


class TimeOrderNegatives:
    """Draw, for one training clip, the slot order that makes it a time-order negative (or None).

    ``rng`` (for tests) replaces the draws from NumPy's global generator.
    """

    def __init__(self, prob: float, min_shrink: float, rng: np.random.Generator | None = None):
        self.prob, self.min_shrink = check_time_order_negatives(prob, min_shrink)
        self._rng = rng

    def _generator(self) -> np.random.Generator:
        if self._rng is not None:
            return self._rng
        # Drawn from the global RNG, which Detectron2 seeds per worker and checkpoints save
        # (engine/determinism.py), so a resumed run draws the same negatives.
        return np.random.default_rng(np.random.randint(2**31))  # noqa: NPY002

    def __call__(self, dataset_dict: dict, indices: Sequence[int]) -> list[int] | None:
        """For a clip of frames ``indices`` (centred on ``dataset_dict``'s frame): the reordered slots
        ``order`` (slot ``j`` takes slot ``order[j]``) if this clip becomes a negative, else None."""
        centre_boxes = [ann["bbox"] for ann in dataset_dict.get("annotations", ()) if ann.get("iscrowd", 0) == 0]
        if len(indices) < 3 or not centre_boxes:
            return None
        rng = self._generator()
        if rng.random() >= self.prob:
            return None
        boxes = dataset_dict.get("series_boxes")
        if boxes is None:
            raise DSAInputError(
                f"video {dataset_dict.get('video_id')}: its dataset dicts carry no 'series_boxes', which "
                "INPUT.TIME_ORDER_NEGATIVES needs to follow a perforation through a clip. Register the cohort "
                "with perforation_d2's register_dsa_cohort / register_dsa_splits, or set "
                "INPUT.TIME_ORDER_NEGATIVES.PROB 0."
            )
        order = clip_slot_order(_MODES[int(rng.integers(len(_MODES)))], len(indices), rng=rng)
        reordered = [indices[slot] for slot in order]
        for box in centre_boxes:
            if not course_breaks(lesion_sizes(boxes, box, reordered), self.min_shrink):
                return None
        return order

    def __repr__(self) -> str:
        return f"TimeOrderNegatives(prob={self.prob}, min_shrink={self.min_shrink})"
