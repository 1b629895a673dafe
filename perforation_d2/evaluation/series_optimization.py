"""Temporal-consistency series optimisation (SO): SPEC section 3, paper section 2.4.

A perforation persists over consecutive frames, so per-frame detections that agree in time are
more trustworthy than isolated ones. Given the top detection of every frame of one series:

1. detections in consecutive frames are *linked* when the centre of one box lies inside the
   other box (either direction, borders inclusive); a frame without detection breaks the chain;
2. a *trajectory* is a maximal chain of linked detections, weighted by
   ``sum(scores) * length``;
3. only the heaviest trajectory survives (ties: the earliest start) and each of its boxes gets
   the trajectory's mean score; every other detection of the series is dropped.

Because SO runs after keeping the top detection of each frame, a frame holds at most one
detection, so the link graph is a set of simple paths: a detection has at most one neighbour in
the previous and one in the next frame, and "maximal chain" means "maximal run of consecutive
linked frames". Trajectories therefore never branch or share detections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Detection:
    """One detection of one frame: box ``(x, y, w, h)`` in frame pixels and its score."""

    bbox: tuple[float, float, float, float]
    score: float


def centre_in_box(box: Sequence[float], other: Sequence[float]) -> bool:
    """Whether the centre of ``box`` lies inside ``other`` (both ``x, y, w, h``; borders inclusive)."""
    cx = box[0] + box[2] / 2.0
    cy = box[1] + box[3] / 2.0
    return other[0] <= cx <= other[0] + other[2] and other[1] <= cy <= other[1] + other[3]


def centres_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """The centre-overlap criterion: the centre of ``a`` inside ``b`` or the centre of ``b`` inside ``a``."""
    return centre_in_box(a, b) or centre_in_box(b, a)


def trajectories(frame_detections: Sequence[Detection | None]) -> list[tuple[int, int]]:
    """The maximal chains of linked detections as ``(first_frame, end_frame_exclusive)``, in frame order."""
    chains: list[tuple[int, int]] = []
    start: int | None = None
    for index, detection in enumerate(frame_detections):
        if detection is None:
            if start is not None:
                chains.append((start, index))
            start = None
            continue
        previous = frame_detections[index - 1] if index > 0 else None
        if start is not None and previous is not None and centres_overlap(previous.bbox, detection.bbox):
            continue
        if start is not None:
            chains.append((start, index))
        start = index
    if start is not None:
        chains.append((start, len(frame_detections)))
    return chains


def optimize_series(frame_detections: Sequence[Detection | None]) -> list[Detection | None]:
    """Apply SO to one series: ``frame_detections[t]`` is frame ``t``'s top detection (or None).

    Returns a new list of the same length in which only the heaviest trajectory's detections
    remain, each with the trajectory's mean score; the input is not modified. A series without
    any detection comes back unchanged (all None).
    """
    best: tuple[int, int] | None = None
    best_weight = float("-inf")
    for start, end in trajectories(frame_detections):
        scores = [frame_detections[t].score for t in range(start, end)]  # type: ignore[union-attr]
        weight = sum(scores) * (end - start)
        # Strictly heavier only: on ties the earliest trajectory (seen first) is kept.
        if weight > best_weight:
            best, best_weight = (start, end), weight
    optimized: list[Detection | None] = [None] * len(frame_detections)
    if best is None:
        return optimized
    start, end = best
    mean_score = sum(frame_detections[t].score for t in range(start, end)) / (end - start)  # type: ignore[union-attr]
    for t in range(start, end):
        optimized[t] = dataclasses.replace(frame_detections[t], score=mean_score)  # type: ignore[arg-type]
    return optimized
