"""Writing a COCO-video cohort: the one writer behind ``synth``, ``prepare-dicom``, benchmarks and tests.

A :class:`CohortWriter` numbers videos, frames and boxes from 1 in the order they are added,
writes each frame as an 8-bit (or 16-bit) grey PNG, and at the end the ``cohort.json`` listing
them (format: :mod:`perforation_d2.data.cohort`). Its target is an
:class:`~perforation_d2.io.transaction.OutputTransaction` (all-or-nothing, for commands), a plain
folder (written in place: scratch data of benchmarks and tests) or ``None`` (in memory only).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io.json_io import json_bytes
from ..io.transaction import OutputTransaction

COHORT_FILE = "cohort.json"
FRAMES_DIR = "frames"
CATEGORIES = [{"id": 1, "name": "perforation"}]


class CohortWriter:
    """Builds a cohort video by video; ``target``: an OutputTransaction, a folder, or None (in memory)."""

    def __init__(self, target: OutputTransaction | str | os.PathLike | None, info: dict[str, Any] | None = None,
                 png_compress_level: int = 1):
        self.target = target if target is None or isinstance(target, OutputTransaction) else Path(target)
        self.info = info
        self.png_compress_level = png_compress_level  # 1: frame noise barely compresses, speed matters
        self.videos: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._video_index: dict[int, dict[str, Any]] = {}

    def add_video(self, name: str, width: int, height: int, patient_id: str, cohort: str,
                  frame_time_ms: float | None, **extra: Any) -> int:
        """A new series (``extra``: further video fields, e.g. ``label``); returns its video id.
        ``num_frames`` counts the frames added to it."""
        video = {"id": len(self.videos) + 1, "name": name, "width": width, "height": height,
                 "patient_id": patient_id, "cohort": cohort, "num_frames": 0, "frame_time_ms": frame_time_ms,
                 **extra}
        self.videos.append(video)
        self._video_index[video["id"]] = video
        return video["id"]

    def add_frame(self, video_id: int, pixels: np.ndarray | None = None, file_name: str | None = None) -> int:
        """The next frame of ``video_id`` (``frame_id`` 0, 1, ...); returns its image id.

        ``pixels``: an ``(H, W)`` uint8 or uint16 array written as a PNG at ``file_name`` (default
        ``frames/<video name>/<frame_id:03d>.png``); None records the frame without writing a file.
        """
        video = self._video_index[video_id]
        frame_id = video["num_frames"]
        file_name = file_name or f"{FRAMES_DIR}/{video['name']}/{frame_id:03d}.png"
        if pixels is not None:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG", compress_level=self.png_compress_level)
            self._write(file_name, buffer.getvalue())
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "video_id": video_id, "frame_id": frame_id,
                            "width": video["width"], "height": video["height"]})
        video["num_frames"] = frame_id + 1
        return image_id

    def add_box(self, image_id: int, bbox: list[float], instance_id: int, area: float | None = None) -> int:
        """A perforation box ``[x, y, w, h]`` on the frame ``image_id``; returns its annotation id."""
        image = self.images[image_id - 1]
        annotation = {"id": len(self.annotations) + 1, "image_id": image_id, "video_id": image["video_id"],
                      "category_id": 1, "bbox": bbox, "area": float(bbox[2] * bbox[3]) if area is None else area,
                      "iscrowd": 0, "instance_id": instance_id}
        self.annotations.append(annotation)
        return annotation["id"]

    def cohort(self) -> dict[str, Any]:
        """The cohort JSON object as built so far."""
        head = {} if self.info is None else {"info": self.info}
        return {**head, "videos": self.videos, "images": self.images, "annotations": self.annotations,
                "categories": CATEGORIES}

    def write(self, name: str = COHORT_FILE) -> dict[str, Any]:
        """Write the cohort JSON (``indent=1``); returns the cohort object."""
        cohort = self.cohort()
        where = self.target.out / name if isinstance(self.target, OutputTransaction) else name
        self._write(name, json_bytes(cohort, where))
        return cohort

    def _write(self, name: str, data: bytes) -> None:
        if isinstance(self.target, OutputTransaction):
            self.target.write_bytes(name, data)
        elif self.target is not None:
            path = self.target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
