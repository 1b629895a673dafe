"""Evaluation's series loop with the next series loaded in a background thread (``data.prefetch``):
the same outputs as loading in turn, a bad frame raised at its series with its message, and no
loading thread left after an early stop or a failing evaluator. A real quick model (T=5, 64 px)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import build_model
from helpers.cohorts import make_toy_cohort
from helpers.series_models import FRAME_SIZE, quick_cfg, widen_heads
from helpers.threads import one_thread, prefetch_threads  # noqa: F401 (one_thread: autouse, one intra-op thread)

from perforation_d2.data import register_dsa_cohort
from perforation_d2.errors import DSAInputError
from perforation_d2.evaluation.inference import (
    inference_on_cohort,
    iterate_series_predictions,
    series_of_dataset,
)
from perforation_d2.modeling.series_inference import SeriesPredictor

FRAMES = [5, 3, 6, 2]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = quick_cfg("retinanet_tconv_T5.yaml", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    return widen_heads(build_model(cfg).eval())


def textured_cohort(tmp_path, name: str) -> list[list[dict]]:
    """A registered toy cohort whose frames are random textures (so every series predicts differently)."""
    json_file = make_toy_cohort(tmp_path / name, num_patients=len(FRAMES), frames=FRAMES, size=56)
    register_dsa_cohort(name, json_file)
    series = series_of_dataset(DatasetCatalog.get(name))
    rng = np.random.default_rng(0)
    for records in series:
        for path in records[0]["series_file_names"]:
            cv2.imwrite(path, rng.integers(0, 256, (56, 56), dtype=np.uint8))
    return series


def flat(results) -> list:
    """Everything the evaluator would see: each frame's record id and its top box, score and class."""
    rows = []
    for inputs, outputs in results:
        for record, output in zip(inputs, outputs, strict=True):
            instances = output["instances"]
            rows.append((record["image_id"], instances.image_size, instances.pred_boxes.tensor.tolist(),
                         instances.scores.tolist(), instances.pred_classes.tolist()))
    return rows


def test_overlapped_loading_gives_the_sequential_outputs(model, tmp_path):
    series = textured_cohort(tmp_path, "prefetch_equal_toy")
    predictor = SeriesPredictor(model, FRAME_SIZE, batch_size=2)
    with torch.no_grad():
        overlapped = flat(iterate_series_predictions(predictor, series))
        sequential = flat(iterate_series_predictions(predictor, series, prefetch_depth=0))
    assert overlapped == sequential  # the same frames, in the same order, bit for bit
    assert len(overlapped) == sum(FRAMES)
    assert sum(len(scores) for *_, scores, _ in overlapped) > 0, "no detection: the comparison would be vacuous"
    assert len({scores[0] for *_, scores, _ in overlapped if scores}) > 1
    assert not prefetch_threads()


def test_a_bad_frame_raises_at_its_series_with_its_message(model, tmp_path):
    series = textured_cohort(tmp_path, "prefetch_bad_frame_toy")
    bad = series[2][0]["series_file_names"][1]
    with open(bad, "wb") as file:
        file.write(b"not a PNG")
    predictor = SeriesPredictor(model, FRAME_SIZE, batch_size=2)
    seen, errors = {}, {}
    for depth in (0, 1):
        seen[depth] = []
        with torch.no_grad(), pytest.raises(DSAInputError) as caught:
            for inputs, _outputs in iterate_series_predictions(predictor, series, prefetch_depth=depth):
                seen[depth].append(inputs[0]["video_id"])
        errors[depth] = (type(caught.value), str(caught.value))
        assert not prefetch_threads()
    assert seen[1] == seen[0] == [series[0][0]["video_id"], series[1][0]["video_id"]]
    assert errors[1] == errors[0]
    assert errors[1][1].startswith(f"{bad}: is not a readable image")


def test_an_early_stop_leaves_no_loading_thread(model, tmp_path):
    series = textured_cohort(tmp_path, "prefetch_stop_toy")
    predictor = SeriesPredictor(model, FRAME_SIZE, batch_size=2)
    with torch.no_grad():
        generator = iterate_series_predictions(predictor, series)
        inputs, _ = next(generator)
        assert inputs[0]["video_id"] == series[0][0]["video_id"]
        generator.close()
    assert not prefetch_threads()


class FailingEvaluator(DatasetEvaluator):
    def reset(self):
        self.calls = 0

    def process(self, inputs, outputs):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("the evaluator failed")

    def evaluate(self):
        return {}


def test_a_failing_evaluator_leaves_no_loading_thread(model, tmp_path):
    textured_cohort(tmp_path, "prefetch_evaluator_toy")
    with pytest.raises(RuntimeError, match="evaluator failed"):
        inference_on_cohort(model, "prefetch_evaluator_toy", FailingEvaluator(), FRAME_SIZE, batch_size=2)
    assert not prefetch_threads()
