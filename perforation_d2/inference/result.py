"""The result of ``predict`` for each series: its decision, its overlays and the output files.

:func:`~perforation_d2.evaluation.predictions.predict_one_series` runs the model on one series and
the series-decision pipeline on it (the one ``evaluate`` uses), so a series scores here what it
scores in ``evaluate`` on ``predictions.json``. :func:`series_record` decides a series and draws
its overlays (a :class:`SeriesRecord`); :class:`PredictionSet` collects the records, in input
order, into the output files (:mod:`.archive` runs the series, on one or several workers):

``predictions.json``
    COCO results, the top detection of every frame *before* series optimisation, in
    original-frame pixels: the file ``evaluate --pred`` reads (it applies SO itself).
``predictions_so.json``
    COCO results *after* series optimisation: the surviving trajectory of each series, each box
    with the trajectory's mean score.
``series_scores.json``
    ``{video_id: {...}}`` (video ids as strings, like ``metrics.json``'s ``series_scores``), each
    with ``name``, ``patient_id``, ``num_frames``, ``frame_time_ms``, ``image_ids`` (the
    ``image_id`` of each frame, in order), ``score`` (max score after SO, 0 without detection),
    ``perforation`` (``"yes"`` when ``score >= threshold``), ``threshold``, ``operating_point``
    (``youden``, ``spec95`` or ``manual``), ``frame_of_max`` (0-based frame of the trajectory's
    highest raw score, None without detection), ``box`` (``[x, y, w, h]`` there), ``gif`` and
    ``key_frame`` (paths relative to the output folder). Frames are always numbered by 0-based
    ``frame_id``, as in the cohort JSON: in this file, on the key frame's caption and in the console.
``overlays/<video_id>_<name>.gif`` / ``..._key.png``
    Every frame with the surviving box and score drawn (one GIF frame per series frame), and the
    key frame (``frame_of_max``; the middle frame without detection) at full resolution.
``manifest.json``
    Written last: every output file with its SHA-256. A folder without it holds no complete run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.register import safe_name
from ..engine.operating_point import Threshold
from ..evaluation.predictions import SeriesResult, predict_one_series  # noqa: F401  (imported from here too)
from ..io.transaction import OutputTransaction
from .sources import SeriesSource

PREDICTIONS_FILE = "predictions.json"
PREDICTIONS_SO_FILE = "predictions_so.json"
SERIES_SCORES_FILE = "series_scores.json"
MANIFEST_FILE = "manifest.json"
OVERLAY_DIR = "overlays"
# The outputs every run writes; the overlays depend on the series that could be read.
FIXED_OUTPUTS = (PREDICTIONS_FILE, PREDICTIONS_SO_FILE, SERIES_SCORES_FILE, MANIFEST_FILE)


def overlay_names(source: SeriesSource) -> tuple[str, str]:
    """The GIF and key-frame PNG of ``source``, relative to the output folder."""
    # The video id prefix keeps the name unique, visible and non-empty whatever the series name.
    stem = f"{OVERLAY_DIR}/{source.video_id:04d}_{safe_name(source.name)[:80]}"
    return f"{stem}.gif", f"{stem}_key.png"


@dataclass
class SeriesRecord:
    """One decided series as ``predict`` writes it: its ``series_scores.json`` entry, its COCO results
    before and after SO, its console line, and the output files drawn for it (in write order)."""

    video_id: int
    entry: dict
    raw: list[dict]
    optimized: list[dict]
    line: str
    files: list[str] = field(default_factory=list)


def series_record(source: SeriesSource, frames: np.ndarray, frame_time_ms: float | None, result: SeriesResult,
                  threshold: Threshold, outputs: Any) -> SeriesRecord:
    """Decide one series and draw its overlays through ``outputs.path(name)`` (an
    :class:`OutputTransaction`, or a worker's scratch files)."""
    from ..report.overlays import save_key_frame_png, save_series_gif

    gif_name, key_name = overlay_names(source)
    save_series_gif(outputs.path(gif_name), frames, result.boxes_xyxy, result.scores, frame_time_ms)
    key = result.frame_of_max if result.frame_of_max is not None else len(frames) // 2
    decision = "yes" if result.score >= threshold.value else "no"
    caption = (f"frame_id {key} of {len(frames)} frames  perforation: {decision} "
               f"(score {result.score:.3f}, threshold {threshold.value:.3f})")
    save_key_frame_png(outputs.path(key_name), frames[key], result.boxes_xyxy[key], result.scores[key], caption)
    box = None
    if result.frame_of_max is not None:
        x0, y0, x1, y1 = result.boxes_xyxy[result.frame_of_max]
        box = [x0, y0, x1 - x0, y1 - y0]
    entry = {
        "name": source.name, "patient_id": source.patient_id, "num_frames": len(frames),
        "frame_time_ms": frame_time_ms, "image_ids": source.image_ids,
        "score": result.score, "perforation": decision, "threshold": threshold.value,
        "operating_point": threshold.method, "frame_of_max": result.frame_of_max, "box": box,
        "gif": gif_name, "key_frame": key_name,
    }
    line = (f"{source.name}: perforation {decision} (score {result.score:.3f}"
            + (f", frame_id {result.frame_of_max})" if result.frame_of_max is not None else ")"))
    return SeriesRecord(source.video_id, entry, result.raw, result.optimized, line, [gif_name, key_name])


@dataclass
class PredictionSet:
    """The results of a run, series by series, written into the output transaction ``outputs``."""

    threshold: Threshold
    outputs: OutputTransaction
    raw: list[dict] = field(default_factory=list)
    optimized: list[dict] = field(default_factory=list)
    series_scores: dict[str, dict] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)

    def add(self, source: SeriesSource, frames: np.ndarray, frame_time_ms: float | None,
            result: SeriesResult) -> SeriesRecord:
        """Decide one series, draw its overlays into ``outputs`` and record it."""
        record = series_record(source, frames, frame_time_ms, result, self.threshold, self.outputs)
        self.add_record(record)
        return record

    def add_record(self, record: SeriesRecord) -> None:
        """Record a series decided elsewhere (its files already in ``outputs``)."""
        self.raw.extend(record.raw)
        self.optimized.extend(record.optimized)
        self.series_scores[str(record.video_id)] = record.entry
        self.summary.append(record.line)

    def write(self) -> None:
        """The three JSON files (the overlays are written by :meth:`add`), then the manifest of them all."""
        self.outputs.write_json(PREDICTIONS_FILE, self.raw)
        self.outputs.write_json(PREDICTIONS_SO_FILE, self.optimized)
        self.outputs.write_json(SERIES_SCORES_FILE, self.series_scores)
        # Last, so that it is renamed into place last: a folder with it holds a complete run.
        self.outputs.write_json(MANIFEST_FILE, {"command": "perforation_d2 predict", "files": self.outputs.digests()})

