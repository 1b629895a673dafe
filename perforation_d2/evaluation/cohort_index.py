"""The cohort as the metrics see it: frames numbered series by series, ground-truth boxes as arrays.

:class:`FrameLayout` is the frame numbering alone (which global frames belong to which series), all
the series-decision pipeline of :mod:`.predictions` needs, so ``predict`` can run it on one series
without a cohort. :class:`CohortIndex` adds the series labels, patients and ground truth of a
validated cohort dict; it is built once and reused for every predictions file scored on it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from ..data.cohort import series_labels

CATEGORY_ID = 1  # the cohort's only category (perforation), and the one every prediction must carry


def restrict_cohort(cohort: Mapping[str, Any], video_ids: Iterable[int]) -> dict[str, Any]:
    """The cohort reduced to the series ``video_ids`` (their videos, images and annotations)."""
    keep = set(video_ids)
    images = [img for img in cohort["images"] if img["video_id"] in keep]
    image_ids = {img["id"] for img in images}
    restricted = dict(cohort)
    restricted["videos"] = [video for video in cohort["videos"] if video["id"] in keep]
    restricted["images"] = images
    restricted["annotations"] = [ann for ann in cohort["annotations"] if ann["image_id"] in image_ids]
    return restricted


class FrameLayout:
    """Global frame numbers of consecutive series: ``frame_start[v] .. frame_start[v + 1]`` is series ``v``."""

    def __init__(self, frames_per_series: Sequence[int]):
        counts = np.asarray(frames_per_series, dtype=np.int64).reshape(-1)
        self.frame_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.frame_video = np.repeat(np.arange(len(counts)), counts).astype(np.int64)

    @property
    def num_series(self) -> int:
        return len(self.frame_start) - 1

    @property
    def num_frames(self) -> int:
        return int(self.frame_start[-1])


class CohortIndex(FrameLayout):
    """Arrays and lookups of one (validated) cohort, built once and reused across predictions.

    Frames are numbered globally, series by series in cohort order and by ``frame_id`` inside a
    series (whatever the order of the cohort's ``images`` list).
    """

    def __init__(self, cohort: Mapping[str, Any]):
        self.cohort = cohort
        videos = list(cohort["videos"])
        self.video_ids: list[int] = [int(video["id"]) for video in videos]
        self.patient_ids: list[str] = [str(video.get("patient_id", video["id"])) for video in videos]
        video_position = {video_id: position for position, video_id in enumerate(self.video_ids)}
        labels = series_labels(cohort)
        self.labels = np.array([int(labels[video_id]) for video_id in self.video_ids], dtype=np.int64)

        frames_of_video: list[list[tuple[int, int]]] = [[] for _ in videos]
        self.image_info: dict[int, Mapping[str, Any]] = {}
        for image in cohort["images"]:
            frames_of_video[video_position[image["video_id"]]].append((int(image["frame_id"]), int(image["id"])))
            self.image_info[int(image["id"])] = image
        super().__init__([len(frames) for frames in frames_of_video])
        self.frame_image_ids = np.array(
            [image_id for frames in frames_of_video for _, image_id in sorted(frames)], dtype=np.int64
        )
        self.frame_of_image: dict[int, int] = {
            int(image_id): position for position, image_id in enumerate(self.frame_image_ids.tolist())
        }

        annotations = list(cohort["annotations"])
        gt_frame = np.array([self.frame_of_image[int(ann["image_id"])] for ann in annotations], dtype=np.int64)
        gt_boxes = np.array([ann["bbox"] for ann in annotations], dtype=np.float64).reshape(-1, 4)
        order = np.argsort(gt_frame, kind="stable")
        self.gt_frame = gt_frame[order]
        self.gt_boxes = gt_boxes[order]
        self._gt_annotations = [annotations[i] for i in order.tolist()]
        # gt_first[f] .. gt_first[f + 1]: the ground-truth boxes of frame f.
        self.gt_first = np.searchsorted(self.gt_frame, np.arange(len(self.frame_image_ids) + 1))
        self._coco_gt: COCO | None = None

    @property
    def num_gt(self) -> int:
        return len(self.gt_frame)

    def coco_ground_truth(self) -> COCO:
        """The cohort as a pycocotools ``COCO`` object (every frame an image), built on first use."""
        if self._coco_gt is None:
            images = [
                {"id": int(image_id), "width": self.image_info[image_id]["width"],
                 "height": self.image_info[image_id]["height"]}
                for image_id in self.frame_image_ids.tolist()
            ]
            annotations = []
            for number, ann in enumerate(self._gt_annotations, start=1):
                x, y, w, h = (float(v) for v in ann["bbox"])
                annotations.append({
                    "id": number, "image_id": int(ann["image_id"]), "category_id": CATEGORY_ID,
                    "bbox": [x, y, w, h], "area": float(ann.get("area", w * h)), "iscrowd": 0,
                })
            coco = COCO()
            coco.dataset = {"images": images, "annotations": annotations,
                            "categories": [{"id": CATEGORY_ID, "name": "perforation"}]}
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco_gt = coco
        return self._coco_gt
