"""Cached series inference with clips spanning a fixed duration (MODEL.TEMPORAL.CLIP_SPAN_MS).

The cached path gathers each clip from per-frame features by the indices of
``data.mapper.clip_indices``; it must equal the naive per-clip path with the same span, for
feature and input fusion, run the backbone once per frame, hold only the frames still needed,
and refuse a series without a frame time. Quick models at 64 px with seeded random weights.
"""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from helpers.cohorts import make_toy_cohort
from helpers.series_models import FRAME_SIZE, quick_cfg, random_frames, widen_heads
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.data import DSAClipMapper, register_dsa_cohort
from perforation_d2.errors import DSAInputError
from perforation_d2.evaluation.inference import inference_on_cohort
from perforation_d2.modeling.series_inference import SeriesPredictor, naive_predict_series

SPAN_MS = 4000.0
CONFIGS = {"features": "retinanet_tconv_T5_span4s.yaml", "input": "retinanet_input_T5_span4s.yaml"}
_MODELS: dict[str, torch.nn.Module] = {}


def cfg_of(fusion: str):
    return quick_cfg(CONFIGS[fusion], "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")


def model_of(fusion: str) -> torch.nn.Module:
    if fusion not in _MODELS:
        torch.manual_seed(0)
        _MODELS[fusion] = widen_heads(build_model(cfg_of(fusion)).eval())
    return _MODELS[fusion]


def assert_same(cached, naive) -> None:
    assert len(cached) == len(naive)
    assert sum(len(a) for a in cached) > 0, "no detection at all: the comparison would be vacuous"
    for frame, (a, b) in enumerate(zip(cached, naive)):
        assert len(a) == len(b) <= 1, frame
        if len(a):
            torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=0)
            torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)


def test_the_span_configs_set_it():
    for fusion in CONFIGS:
        cfg = cfg_of(fusion)
        assert cfg.MODEL.TEMPORAL.CLIP_SPAN_MS == SPAN_MS and cfg.MODEL.TEMPORAL.NUM_FRAMES == 5
        assert cfg.MODEL.TEMPORAL.FUSION == fusion


@pytest.mark.parametrize("fusion", ["features", "input"])
@pytest.mark.parametrize(("num_frames", "frame_time", "batch"), [
    (3, 250.0, 2),  # shorter than the span: every slot clamped
    (14, 250.0, 3),  # 4 fps: slots 4 frames apart
    (6, 2000.0, 4),  # 0.5 fps: slots repeat frames
])
def test_cached_equals_naive_with_a_span(fusion, num_frames, frame_time, batch):
    model = model_of(fusion)
    frames = random_frames(num_frames, 64, 64, seed=num_frames)
    predictor = SeriesPredictor.from_config(model, cfg_of(fusion), batch_size=batch)
    assert predictor.clip_span_ms == SPAN_MS
    spatial_rows = []
    hook = model.backbone.spatial.register_forward_hook(lambda _m, args, _o: spatial_rows.append(len(args[0])))
    try:
        cached = predictor(frames, frame_time)
    finally:
        hook.remove()
    naive = naive_predict_series(model, frames, FRAME_SIZE, batch_size=batch, frame_time_ms=frame_time,
                                 clip_span_ms=SPAN_MS)
    assert_same(cached, naive)
    assert predictor.backbone_frames == num_frames  # per-frame features computed once per frame
    # Feature fusion: the spatial backbone saw each frame once; input fusion: each clip once.
    assert sum(spatial_rows) == num_frames


def test_the_span_changes_the_clips():
    model = model_of("features")
    frames = random_frames(14, 64, 64, seed=3)
    spanned = SeriesPredictor(model, FRAME_SIZE, clip_span_ms=SPAN_MS)(frames, 250.0)
    consecutive = SeriesPredictor(model, FRAME_SIZE)(frames, 250.0)
    assert any(not torch.equal(a.scores, b.scores) for a, b in zip(spanned, consecutive) if len(a) and len(b))


@pytest.mark.parametrize(("batch", "bound"), [(1, 17), (3, 19)])
def test_window_holds_only_frames_still_needed(batch, bound):
    # 4 fps, slots 4 frames apart: a batch of centres t..t+B-1 reads frames t-8 .. t+B-1+8.
    predictor = SeriesPredictor(model_of("features"), FRAME_SIZE, batch_size=batch, clip_span_ms=SPAN_MS)
    assert len(predictor(random_frames(30, 64, 64, seed=1), 250.0)) == 30
    assert predictor.peak_window_frames == bound
    assert predictor.backbone_frames == 30


def test_a_series_without_frame_time_is_refused_before_any_work():
    predictor = SeriesPredictor(model_of("features"), FRAME_SIZE, clip_span_ms=SPAN_MS)
    with pytest.raises(DSAInputError) as info:
        predictor(random_frames(4), None, "series angio_7")
    assert str(info.value).startswith("series angio_7: ") and "MODEL.TEMPORAL.CLIP_SPAN_MS" in str(info.value)
    assert predictor.backbone_frames == 0
    with pytest.raises(DSAInputError, match="MODEL.TEMPORAL.CLIP_SPAN_MS"):
        naive_predict_series(model_of("features"), random_frames(4), FRAME_SIZE, clip_span_ms=SPAN_MS)


def test_inference_on_cohort_uses_the_cohorts_frame_time(tmp_path):
    """The registered cohort's frame_time_ms (250 ms) reaches the predictor: same as mapper + model."""
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2, frames=[9, 2], size=48)
    register_dsa_cohort("series_inference_span_toy", json_file)
    model = model_of("features")
    calls = []

    class Recording:
        def reset(self):
            pass

        def process(self, inputs, outputs):
            calls.append((inputs, outputs))

        def evaluate(self):
            return {}

    inference_on_cohort(model, "series_inference_span_toy", Recording(), FRAME_SIZE, batch_size=2,
                        clip_span_ms=SPAN_MS)
    mapper = DSAClipMapper(cfg_of("features"), False)
    assert [len(inputs) for inputs, _ in calls] == [9, 2]
    for inputs, outputs in calls:
        with torch.no_grad():
            reference = model([mapper(record) for record in inputs])
        assert_same([o["instances"] for o in outputs], [r["instances"] for r in reference])
