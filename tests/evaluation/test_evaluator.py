"""DSASeriesEvaluator plumbing: a toy registered dataset and hand-made model outputs."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from helpers.metric_cases import GT, make_cohort

from perforation_d2.evaluation import DSASeriesEvaluator, compute_series_metrics
from perforation_d2.evaluation.cohort_index import restrict_cohort
from perforation_d2.evaluation.predictions import top_detection_to_coco

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def instances(boxes_xyxy, scores):
    result = Instances((128, 128))
    result.pred_boxes = Boxes(torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4))
    result.scores = torch.tensor(scores, dtype=torch.float32)
    result.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
    return result


@pytest.fixture
def toy_dataset(tmp_path):
    """Six series (10-15, even positions positive); the registered split holds series 10-13 only."""
    cohort = make_cohort([[[GT], [GT], [GT]] if v % 2 == 0 else [[], [], []] for v in range(6)])
    json_file = tmp_path / "cohort.json"
    json_file.write_text(json.dumps(cohort))
    records = [
        {"file_name": str(tmp_path / image["file_name"]), "image_id": image["id"], "height": 128, "width": 128,
         "video_id": image["video_id"], "frame_id": image["frame_id"]}
        for image in cohort["images"] if image["video_id"] <= 13
    ]
    name = f"dsa_toy_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(json_file=str(json_file), evaluator_type="dsa_series", thing_classes=["perforation"])
    yield name, cohort, records
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def fake_outputs(records):
    """Per frame: positives get the true box plus a weaker decoy, negatives a weak decoy on frame 1 only."""
    outputs = []
    for record in records:
        positive = (record["video_id"] - 10) % 2 == 0
        decoy = [0.0, 0.0, 10.0, 12.0]
        if positive:
            outputs.append(instances([decoy, [40.0, 40.0, 60.0, 60.0]], [0.25, 0.75]))
        elif record["frame_id"] == 1:
            outputs.append(instances([decoy], [0.5]))
        else:
            outputs.append(instances([], []))
    return outputs


def run_evaluator(evaluator, records):
    outputs = fake_outputs(records)
    evaluator.reset()
    for start in range(0, len(records), 3):
        evaluator.process(
            [{"image_id": r["image_id"]} for r in records[start : start + 3]],
            [{"instances": o} for o in outputs[start : start + 3]],
        )
    return evaluator.evaluate()


def test_evaluator_writes_every_output_and_returns_scalar_metrics(toy_dataset, tmp_path):
    name, cohort, records = toy_dataset
    out = tmp_path / "eval"
    results = run_evaluator(DSASeriesEvaluator(name, output_dir=str(out)), records)

    predictions = json.loads((out / "predictions.json").read_text())
    # Top-1 per frame, XYWH, category 1: 4 positive frames x 3 + one decoy of each negative series.
    assert len(predictions) == 2 * 3 + 2
    assert {"image_id": 1000, "category_id": 1, "bbox": [40.0, 40.0, 20.0, 20.0], "score": 0.75} in predictions
    assert {"image_id": 1101, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 12.0], "score": 0.5} in predictions

    expected = compute_series_metrics(restrict_cohort(cohort, [10, 11, 12, 13]), predictions)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(expected))
    assert json.loads((out / "series_scores.json").read_text()) == expected["series_scores"]
    assert expected["num_series"] == 4 and expected["AUC"] == 1.0 and expected["recall_iou50"] == 1.0
    assert results == {"dsa": {k: float(v) for k, v in expected.items() if k != "series_scores"}}
    for plot in ("roc.png", "pr.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC

    # A second round (as after the next training period) replaces the files.
    assert run_evaluator(DSASeriesEvaluator(name, output_dir=str(out)), records) == results


def test_evaluator_without_output_dir_or_series_optimization(toy_dataset, tmp_path):
    name, _, records = toy_dataset
    results = run_evaluator(DSASeriesEvaluator(name, distributed=False, series_optimization=False), records)
    assert results["dsa"]["num_series"] == 4.0 and results["dsa"]["AUC"] == 1.0
    assert all(isinstance(v, float) for v in results["dsa"].values())
    assert not list(tmp_path.glob("**/*.png"))


def test_single_class_split_logs_a_warning_and_omits_undefined_metrics(tmp_path, caplog):
    cohort = make_cohort([[[GT]], [[GT]]])
    json_file = tmp_path / "cohort.json"
    json_file.write_text(json.dumps(cohort))
    records = [{"image_id": image["id"], "video_id": image["video_id"]} for image in cohort["images"]]
    name = f"dsa_toy_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(json_file=str(json_file))
    try:
        evaluator = DSASeriesEvaluator(name)
        evaluator.process([{"image_id": 1000}], [{"instances": instances([[40, 40, 60, 60]], [0.9])}])
        with caplog.at_level(logging.WARNING, logger="perforation_d2.evaluation.evaluator"):
            results = evaluator.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert "one class" in caplog.text
    assert "AUC" not in results["dsa"] and "threshold" not in results["dsa"]
    assert results["dsa"]["AP50_coco"] == pytest.approx(51 / 101)


def test_top_detection_takes_the_first_maximum_and_skips_degenerate_boxes():
    tied = instances([[0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.5])
    assert top_detection_to_coco(tied, 7)[0]["bbox"] == [0.0, 0.0, 10.0, 10.0]
    degenerate = instances([[5, 5, 5, 9], [20, 20, 30, 30]], [0.9, 0.1])
    assert top_detection_to_coco(degenerate, 7)[0]["bbox"] == [20.0, 20.0, 10.0, 10.0]
    assert top_detection_to_coco(instances([], []), 7) == []
