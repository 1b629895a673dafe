"""Clip ablations for the time-use diagnostic: the same model, its clips' time course removed.

A temporal model that really reads the time course of a perforation (wash-in, growth,
persistence) should lose accuracy when that course is destroyed; one that is a single-frame
model in disguise does not. ``TEST.DSA.CLIP_ABLATION`` rebuilds every test clip of ``T = 2k+1``
frames (slots ``0 .. T-1``, centre slot ``k``) as:

* ``"none"``: the clip as it is;
* ``"centre"``: the centre frame repeated ``T`` times (no temporal context at all);
* ``"reverse"``: the slots in reverse order (growth becomes shrinkage, wash-in wash-out);
* ``"shuffle"``: the context slots in a random order (never the original one), drawn from a
  generator seeded by the centre frame's index, so every run and both inference paths shuffle
  alike.

The normal clip is the one :func:`~perforation_d2.data.mapper.clip_indices` picks (consecutive
frames, or frames spread over ``MODEL.TEMPORAL.CLIP_SPAN_MS``); an ablation reorders its slots and
never picks frames itself, so it means the same for both kinds of clip. The centre slot always
keeps the centre frame, so the frame being detected (and its boxes) is unchanged; only its
context moves. Each ablation is a reordering of the clip's slots
(:func:`clip_slot_order`), which the per-clip mapper (:class:`AblatedClipMapper`) applies to the
clip's frames and cached series inference can apply to the per-frame features of its windows
(:func:`ablate_clip_batch`): the spatial backbone runs on each frame alone, so both are the same.
A single-frame model (``T = 1``) has nothing to reorder and is left exactly as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DSAInputError

__all__ = ["CLIP_ABLATIONS", "AblatedClipMapper", "ablate_clip", "ablate_clip_batch", "check_clip_ablation",
           "clip_slot_order"]

CLIP_ABLATIONS = ("none", "centre", "reverse", "shuffle")
# Fixed so that "shuffle" is reproducible without a config seed (a diagnostic, not an augmentation).
_SHUFFLE_SEED = 20221


def check_clip_ablation(mode: str) -> str:
    """``mode`` if it names a clip ablation, else a :class:`DSAInputError` listing the valid ones."""
    if mode not in CLIP_ABLATIONS:
        raise DSAInputError(
            f"config TEST.DSA.CLIP_ABLATION = {mode!r} is not a clip ablation; valid choices are "
            f"{', '.join(CLIP_ABLATIONS)}."
        )
    return mode


def clip_slot_order(mode: str, clip_length: int, frame_index: int = 0) -> list[int]:
    """Slot ``j`` of the ablated clip takes slot ``order[j]`` of the normal clip.

    ``frame_index`` (the centre frame's index in its series) seeds ``"shuffle"`` only.
    """
    check_clip_ablation(mode)
    slots = list(range(clip_length))
    centre = clip_length // 2
    if mode == "none" or clip_length == 1:
        return slots
    if mode == "centre":
        return [centre] * clip_length
    if mode == "reverse":
        return slots[::-1]
    context = [s for s in slots if s != centre]
    rng = np.random.default_rng([_SHUFFLE_SEED, int(frame_index)])
    while True:
        drawn = [context[i] for i in rng.permutation(len(context))]
        if drawn != context:
            break
    return drawn[:centre] + [centre] + drawn[centre:]


def ablate_clip(clip: torch.Tensor, mode: str, frame_index: int = 0) -> torch.Tensor:
    """One clip ``(T, ...)`` with its slots reordered by ``mode`` (the input itself for ``"none"``)."""
    order = clip_slot_order(mode, int(clip.shape[0]), frame_index)
    if order == list(range(len(order))):
        return clip
    return clip[order]


def ablate_clip_batch(
    clips: dict[str, torch.Tensor], mode: str, frame_indices: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Per-level clip features ``{level: (B, T, C, h, w)}`` of centre frames ``frame_indices``, reordered.

    For cached series inference: the ``b``-th clip of every level gets the order of
    ``frame_indices[b]``, exactly as :class:`AblatedClipMapper` reorders that clip's frames.
    """
    if mode == "none" or not clips:
        return clips
    length = int(next(iter(clips.values())).shape[1])
    orders = torch.tensor([clip_slot_order(mode, length, int(t)) for t in frame_indices], dtype=torch.long)
    rows = torch.arange(len(orders)).unsqueeze(1)
    return {level: x[rows.to(x.device), orders.to(x.device)] for level, x in clips.items()}


class AblatedClipMapper:
    """A test-time clip mapper whose clips are reordered by a clip ablation.

    Wraps any mapper returning ``{"image": (T, 3, S, S), "frame_id", ...}`` (the
    :class:`~perforation_d2.data.DSAClipMapper`); the centre frame's ``instances`` are untouched,
    as the centre slot never moves. Single-frame images ``(3, S, S)`` pass through.
    """

    def __init__(self, mapper: Callable[[dict], dict[str, Any]], mode: str):
        self.mapper = mapper
        self.mode = check_clip_ablation(mode)

    def __call__(self, dataset_dict: dict) -> dict[str, Any]:
        out = self.mapper(dataset_dict)
        image = out["image"]
        if image.dim() == 4:
            out["image"] = ablate_clip(image, self.mode, int(out["frame_id"]))
        return out

    def __repr__(self) -> str:
        return f"AblatedClipMapper({self.mapper!r}, mode={self.mode!r})"
