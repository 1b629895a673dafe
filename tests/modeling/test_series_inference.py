"""Cached series inference equals the naive per-clip path, with a bounded feature window.

Models are the quick configs at 64 px with random (seeded) weights; the heads' weights are drawn
wider than at initialisation so that frame scores spread out and the top detection of a frame is
well defined (with the prior-probability init every anchor scores ~0.01).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import build_model
from helpers import series_models
from helpers.cohorts import make_toy_cohort
from helpers.series_models import FRAME_SIZE, random_frames, widen_heads
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.data import DSAClipMapper, register_dsa_cohort
from perforation_d2.engine import Trainer
from perforation_d2.evaluation.inference import inference_on_cohort
from perforation_d2.modeling.series_inference import (
    SeriesPredictor,
    naive_predict_series,
    resize_frames,
)


def quick_cfg(name: str, *opts: str):
    return series_models.quick_cfg(
        name, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *opts
    )


_MODELS: dict[tuple, torch.nn.Module] = {}


def random_model(name: str, *opts: str) -> torch.nn.Module:
    key = (name, *opts)
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = widen_heads(build_model(quick_cfg(name, *opts)).eval())
    return _MODELS[key]


def assert_same_detections(cached, naive) -> None:
    assert len(cached) == len(naive)
    found = 0
    for frame, (a, b) in enumerate(zip(cached, naive)):
        assert len(a) == len(b) <= 1, frame
        if len(a):
            found += 1
            assert a.image_size == b.image_size
            torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=0)
            torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
            assert int(a.pred_classes) == int(b.pred_classes)
    assert found > 0, "no detection at all: the comparison would be vacuous"


CASES = [
    # (config, overrides, frames in the series, centre frames per batch)
    ("retinanet.yaml", (), 4, 3),  # T = 1
    ("retinanet_tconv_T5.yaml", ("MODEL.TEMPORAL.NUM_FRAMES", "3"), 6, 4),  # T = 3
    ("retinanet_tconv_T5.yaml", (), 7, 3),  # T = 5, a partial last batch
    ("retinanet_tconv_T5.yaml", (), 3, 2),  # shorter than T
    ("retinanet_tconv_T5.yaml", (), 1, 4),  # a single frame
    ("retinanet_tattn_T5.yaml", (), 4, 4),
    ("faster_rcnn.yaml", ("MODEL.TEMPORAL.NUM_FRAMES", "3"), 4, 2),  # temporal Faster R-CNN
    ("cascade_rcnn.yaml", (), 2, 4),  # Cascade R-CNN, T = 1
]


@pytest.mark.parametrize(("config", "opts", "num_frames", "batch"), CASES)
def test_cached_equals_naive(config, opts, num_frames, batch):
    model = random_model(config, *opts)
    frames = random_frames(num_frames)
    predictor = SeriesPredictor(model, FRAME_SIZE, batch_size=batch)
    cached = predictor(frames)
    naive = naive_predict_series(model, frames, FRAME_SIZE, batch_size=batch)
    assert_same_detections(cached, naive)
    assert predictor.backbone_frames == num_frames  # the spatial backbone ran once per frame
    # Outputs are in original-frame pixels.
    assert cached[0].image_size == (72, 88)


def test_rgb_series_equals_grey_series():
    model = random_model("retinanet_tconv_T5.yaml")
    frames = random_frames(3)
    rgb = np.repeat(frames[:, None], 3, axis=1)
    predictor = SeriesPredictor(model, FRAME_SIZE)
    assert_same_detections(predictor(rgb), predictor(frames))


def _tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _tf32_seen_by_the_head(*predict_calls) -> tuple[set, tuple[bool, bool]]:
    """TF32 settings the model's head saw during ``predict_calls(model)`` (TF32 on before),
    and the settings right after; the caller's settings are restored."""
    before = _tf32()
    model = random_model("retinanet.yaml")
    seen = []
    hook = model.head.register_forward_pre_hook(lambda *_: seen.append(_tf32()))
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        for call in predict_calls:
            call(model)
        after = _tf32()
    finally:
        hook.remove()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert len(seen) >= len(predict_calls)
    return set(seen), after


def test_both_paths_run_with_tf32_off_and_restore_it():
    """On GPU, TF32 would make the two paths differ by more than 1e-4; both switch it off."""
    seen, after = _tf32_seen_by_the_head(
        lambda model: SeriesPredictor(model, FRAME_SIZE)(random_frames(2)),
        lambda model: naive_predict_series(model, random_frames(2), FRAME_SIZE),
    )
    assert seen == {(False, False)} and after == (True, True)


def test_allow_tf32_keeps_the_callers_setting():
    """TEST.DSA.ALLOW_TF32 trades the 1e-4 agreement for speed: the predictor then leaves TF32 alone."""
    seen, _ = _tf32_seen_by_the_head(lambda model: SeriesPredictor(model, FRAME_SIZE, allow_tf32=True)(random_frames(2)))
    assert seen == {(True, True)}


@pytest.mark.parametrize(("batch", "bound"), [(1, 5), (3, 7)])
def test_feature_window_is_bounded(batch, bound):
    model = random_model("retinanet_tconv_T5.yaml")
    predictor = SeriesPredictor(model, FRAME_SIZE, batch_size=batch)
    outputs = predictor(random_frames(12, 64, 64, seed=1))
    assert len(outputs) == 12
    # T = 5: at most batch + T - 1 frames of features are ever held, never the series.
    assert predictor.peak_window_frames == bound
    assert predictor.backbone_frames == 12


def test_resize_matches_the_test_mapper(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=1, frames=4, size=48)
    register_dsa_cohort("series_inference_mapper_toy", json_file)
    cfg = quick_cfg("retinanet_tconv_T5.yaml")
    mapper = DSAClipMapper(cfg, False)
    records = sorted(DatasetCatalog.get("series_inference_mapper_toy"), key=lambda r: r["frame_id"])
    # Make frames distinct beyond their uniform grey: a gradient exercises interpolation.
    from PIL import Image

    for index, path in enumerate(records[0]["series_file_names"]):
        ramp = (np.add.outer(np.arange(48), np.arange(48)) * (2 + index) % 256).astype(np.uint8)
        Image.fromarray(ramp).save(path)
    frames = np.stack([np.asarray(Image.open(p)) for p in records[0]["series_file_names"]])
    resized = resize_frames(torch.from_numpy(frames), FRAME_SIZE)
    for record in records:
        clip = mapper(record)["image"]
        t = record["frame_id"]
        indices = [min(max(i, 0), 3) for i in range(t - 2, t + 3)]
        assert torch.equal(clip, resized[indices])


class RecordingEvaluator(DatasetEvaluator):
    def reset(self):
        self.calls: list[tuple[list, list]] = []

    def process(self, inputs, outputs):
        self.calls.append((inputs, outputs))

    def evaluate(self):
        return {"calls": len(self.calls)}


def test_inference_on_cohort_matches_mapper_and_model(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=3, frames=[4, 1, 2], size=56)
    register_dsa_cohort("series_inference_cohort_toy", json_file)
    cfg = quick_cfg("retinanet_tconv_T5.yaml")
    model = random_model("retinanet_tconv_T5.yaml")
    evaluator = RecordingEvaluator()
    result = inference_on_cohort(model, "series_inference_cohort_toy", evaluator, FRAME_SIZE, batch_size=2)
    assert result == {"calls": 3}  # once per series
    mapper = DSAClipMapper(cfg, False)
    seen = []
    for inputs, outputs in evaluator.calls:
        assert len(inputs) == len(outputs)
        with torch.no_grad():
            reference = model([mapper(record) for record in inputs])
        assert_same_detections([o["instances"] for o in outputs], [r["instances"] for r in reference])
        seen += [record["image_id"] for record in inputs]
    assert sorted(seen) == list(range(1, 8))


def test_trainer_test_cached_equals_data_loader_path(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=4, frames=[3, 2, 3, 1], size=48)
    register_dsa_cohort("series_inference_trainer_toy", json_file)
    model = random_model("retinanet_tconv_T5.yaml")
    results = {}
    for cached in (True, False):
        cfg = quick_cfg(
            "retinanet_tconv_T5.yaml",
            "DATASETS.TEST", "('series_inference_trainer_toy',)",
            "TEST.DSA.CACHED_SERIES_INFERENCE", str(cached),
            "OUTPUT_DIR", str(tmp_path / f"out_{cached}"),
        )
        results[cached] = Trainer.test(cfg, model)
    assert results[True]["dsa"]["num_series"] == 4
    assert results[True]["dsa"].keys() == results[False]["dsa"].keys()
    for key, value in results[False]["dsa"].items():
        assert results[True]["dsa"][key] == pytest.approx(value, abs=1e-6), key
    cached, naive = (
        json.loads((tmp_path / f"out_{c}" / "inference" / "series_inference_trainer_toy" / "predictions.json").read_text())
        for c in (True, False)
    )
    assert len(cached) == len(naive) > 0
    for a, b in zip(cached, naive):
        assert a["image_id"] == b["image_id"]
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-4)
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
