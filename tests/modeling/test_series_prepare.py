"""``SeriesPredictor.prepare``: the CPU half of preprocessing, done once per series (in the loading
thread of ``data.prefetch``), in pinned memory on CUDA; predictions from it are the raw frames'."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from helpers.series_models import FRAME_SIZE, quick_cfg, random_frames, widen_heads
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.modeling.series_inference import SeriesPredictor, resize_frames


def model_on(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = quick_cfg("retinanet_tconv_T5.yaml", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.DEVICE", device)
    return widen_heads(build_model(cfg).eval())


def detections(instances) -> list:
    return [(i.pred_boxes.tensor.cpu().tolist(), i.scores.cpu().tolist(), i.pred_classes.cpu().tolist())
            for i in instances]


def test_prepared_frames_are_the_mappers_resize_whatever_the_chunks():
    predictor = SeriesPredictor(model_on("cpu"), FRAME_SIZE)
    frames = torch.from_numpy(random_frames(9, 70, 90))
    prepared = predictor.prepare(frames)
    assert prepared.frames.shape == (9, 1, FRAME_SIZE, FRAME_SIZE) and not prepared.frames.is_pinned()  # grey: one plane
    assert (prepared.height, prepared.width) == (70, 90)
    whole = resize_frames(frames, FRAME_SIZE)
    assert torch.equal(prepared.frames.expand(-1, 3, -1, -1), whole)
    # The predictor used to resize each backbone chunk on its own: the same pixels.
    for cuts in ([0, 1, 5, 9], [0, 3, 4, 7, 9], [0, 2, 9]):
        chunks = [resize_frames(frames[a:b], FRAME_SIZE) for a, b in zip(cuts, cuts[1:])]
        assert torch.equal(torch.cat(chunks), whole)
    rgb = torch.from_numpy(np.repeat(random_frames(2)[:, None], 3, axis=1))
    assert predictor.prepare(rgb).frames.shape == (2, 3, FRAME_SIZE, FRAME_SIZE)
    assert predictor.prepare(prepared) is prepared


def test_predicting_prepared_frames_equals_predicting_raw_frames():
    predictor = SeriesPredictor(model_on("cpu"), FRAME_SIZE, batch_size=2)
    frames = random_frames(7)
    raw = detections(predictor(frames))
    assert detections(predictor(predictor.prepare(frames))) == raw
    assert any(scores for _, scores, _ in raw)
    other_size = SeriesPredictor(predictor.model, 32).prepare(frames)
    with pytest.raises(ValueError, match="prepared at 32 px"):
        predictor(other_size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_on_cuda_frames_are_pinned_and_copied_asynchronously_with_the_same_results():
    predictor = SeriesPredictor(model_on("cuda"), FRAME_SIZE, batch_size=2)
    frames = random_frames(7)
    prepared = predictor.prepare(frames)
    assert prepared.frames.is_pinned()
    pageable = dataclasses.replace(prepared, frames=torch.empty(prepared.frames.shape, dtype=torch.uint8).copy_(prepared.frames))
    assert not pageable.frames.is_pinned()
    assert detections(predictor(prepared)) == detections(predictor(pageable)) == detections(predictor(frames))

