"""pycocotools' AP at IoU 0.5, and the same AP with the centre-overlap criterion as the matching function.

``COCOeval`` is given only the frames that hold a ground-truth box or a detection: the other
frames contribute nothing to it (its ``evaluateImg`` returns None for them), so the result is
identical to a run over every frame, in a fraction of the time.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .series_optimization import centres_overlap


class CentreOverlapCOCOeval(COCOeval):
    """``COCOeval`` whose matching function is the centre-overlap criterion (1.0 or 0.0)."""

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:  # pycocotools' camelCase name
        p = self.params
        if p.useCats:
            gt = self._gts[imgId, catId]
            dt = self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if len(gt) == 0 or len(dt) == 0:
            return []
        # Same detection order and truncation as COCOeval.computeIoU: evaluateImg relies on it.
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        return np.array(
            [[1.0 if centres_overlap(d["bbox"], g["bbox"]) else 0.0 for g in gt] for d in dt], dtype=np.float64
        )


def coco_ap50(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    image_ids: Sequence[int],
    evaluator_class: type[COCOeval] = COCOeval,
) -> float | None:
    """AP of ``results`` by pycocotools with ``iouThrs=[0.5]``, ``maxDets=[1]``, area "all".

    ``results`` are COCO results (``image_id``, ``category_id``, ``bbox``, ``score``).
    AP is the mean of ``eval["precision"]`` over the 101 recall thresholds (entries > -1);
    None when every entry is -1 (no ground-truth box among ``image_ids``).
    """
    annotations = [
        {**r, "id": number, "area": float(r["bbox"][2] * r["bbox"][3]), "iscrowd": 0}
        for number, r in enumerate(results, start=1)
    ]
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
        evaluator = evaluator_class(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.maxDets = [1]
        evaluator.params.areaRng = [[0.0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, 0, 0, 0]
    valid = precision[precision > -1]
    return float(np.mean(valid)) if len(valid) else None
