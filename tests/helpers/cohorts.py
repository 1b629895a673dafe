"""Shared test helpers: a tiny, valid cohort of grey PNG frames written on the fly.

``make_toy_cohort`` is a plain function (``from conftest import make_toy_cohort``) so that any
test can build a cohort with the shape it needs; the ``toy_cohort`` fixture is the default one.
Its signature is a contract for every test module: extend it only with new keyword arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from perforation_d2.data.cohort_writer import COHORT_FILE, CohortWriter

SQUARE_VALUE = 255


def make_cfg(num_frames: int = 5, frame_size: int = 64, force_aug: bool = False):
    """Detectron2's default config plus perforation_d2's keys, with clip length and frame size set.

    ``force_aug`` sets every augmentation probability to 1 (each clip flipped, shifted, scaled
    and rotated).
    """
    from detectron2.config import get_cfg

    import perforation_d2

    cfg = get_cfg()
    perforation_d2.add_perforation_config(cfg)
    cfg.MODEL.TEMPORAL.NUM_FRAMES = num_frames
    cfg.INPUT.FRAME_SIZE = frame_size
    if force_aug:
        for key in ("HFLIP_PROB", "SHIFT_PROB", "SCALE_PROB", "ROTATE_PROB"):
            cfg.INPUT.DSA_AUG[key] = 1.0
    return cfg


def frame_background(frame_id: int) -> int:
    """Uniform grey level of frame ``frame_id`` of every toy series: tells frames apart."""
    return 16 + 8 * (frame_id % 20)


def make_toy_cohort(
    root: str | Path,
    num_patients: int = 4,
    frames: int | Sequence[int] = 5,
    size: int = 64,
    series_per_patient: int = 1,
    positive_patients: Sequence[int] | None = None,
    cohorts: Sequence[str] = ("toy",),
    bit_depth: int = 8,
    box_size: int | None = None,
    frame_order: str = "sorted",
) -> Path:
    """Write a valid cohort under ``root`` and return the path of its ``cohort.json``.

    - ``num_patients`` patients (``patient_id`` "P000", ...), each with ``series_per_patient``
      series; patient ``p`` belongs to ``cohorts[p % len(cohorts)]``.
    - ``frames``: frames per series, one int for all, or one int per series in creation order
      (1 makes a single-frame series).
    - Patients in ``positive_patients`` (default: the even-numbered ones) have positive series:
      every frame carries one box of ``box_size`` px (default ``size // 4``) at a per-series
      position, with a square of value 255 drawn exactly inside it. Negative series have no box.
    - Frame ``f`` is a uniform grey of ``frame_background(f)`` (16 + 8 * (f % 20)), so a test
      can tell from the pixels which frame it is looking at.
    - ``bit_depth`` 8 or 16 (16: values multiplied by 257, full-range 16-bit PNG).
    - Video ids, image ids and annotation ids count from 1; frames are ``frames/v{vid}/{f:03d}.png``.
    - ``frame_order="shuffled"`` lists the images out of frame order (each series backwards, the
      series interleaved), image ids numbered in that listed order: code that must sort frames
      by ``frame_id`` (not by position or image id) is exercised.
    """
    root = Path(root)
    positives = set(range(0, num_patients, 2) if positive_patients is None else positive_patients)
    box = box_size or max(2, size // 4)
    num_series = num_patients * series_per_patient
    lengths = [frames] * num_series if isinstance(frames, int) else list(frames)
    if len(lengths) != num_series:
        raise ValueError(f"frames lists {len(lengths)} lengths for {num_series} series")
    writer = CohortWriter(root, info={"description": "toy cohort written by tests/helpers/cohorts.py"},
                          png_compress_level=6)
    for series_index in range(num_series):
        patient = series_index // series_per_patient
        positive = patient in positives
        # A per-series box position, inside the frame whatever the size.
        x0 = (size // 8) + (7 * series_index) % max(1, size - box - size // 4)
        y0 = (size // 8) + (5 * series_index) % max(1, size - box - size // 4)
        vid = writer.add_video(f"series{series_index + 1}", size, size, f"P{patient:03d}",
                               cohorts[patient % len(cohorts)], 250.0)
        for frame_id in range(lengths[series_index]):
            pixels = np.full((size, size), frame_background(frame_id), dtype=np.uint16)
            if positive:
                pixels[y0:y0 + box, x0:x0 + box] = SQUARE_VALUE
            pixels = (pixels * 257).astype(np.uint16) if bit_depth == 16 else pixels.astype(np.uint8)
            image_id = writer.add_frame(vid, pixels, file_name=f"frames/v{vid}/{frame_id:03d}.png")
            if positive:
                writer.add_box(image_id, [x0, y0, box, box], instance_id=vid)
    if frame_order == "shuffled":
        _shuffle_images(writer)
    elif frame_order != "sorted":
        raise ValueError(f"frame_order must be 'sorted' or 'shuffled', got {frame_order!r}")
    writer.write()
    json_file = root / COHORT_FILE
    return json_file


def _shuffle_images(writer: CohortWriter) -> None:
    """Reorder ``writer``'s images (each series backwards, series interleaved) and renumber them."""
    by_video: dict[int, list[dict]] = {}
    for image in writer.images:
        by_video.setdefault(image["video_id"], []).append(image)
    columns = [list(reversed(images)) for images in by_video.values()]
    listed = [column[k] for k in range(max(map(len, columns), default=0)) for column in columns if k < len(column)]
    new_id = {image["id"]: number for number, image in enumerate(listed, start=1)}
    for image in listed:
        image["id"] = new_id[image["id"]]
    for annotation in writer.annotations:
        annotation["image_id"] = new_id[annotation["image_id"]]
    writer.images[:] = listed
