"""The series-level auxiliary loss (``MODEL.SERIES_LOSS.WEIGHT``): what it computes, what it trains, errors."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from perforation_d2.errors import DSAInputError
from tests.modeling.test_models import clip_inputs, quick_cfg


def _model(weight: float, name: str = "retinanet_tconv_T5.yaml"):
    cfg = quick_cfg(name, **{"MODEL.SERIES_LOSS.WEIGHT": weight})
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return cfg, model


def _labelled(inputs: list[dict], labels: list[int]) -> list[dict]:
    return [{**x, "series_positive": label} for x, label in zip(inputs, labels)]


def test_off_by_default_and_no_term_without_weight():
    cfg, model = _model(0.0)
    assert cfg.MODEL.SERIES_LOSS.WEIGHT == 0.0
    with EventStorage():
        losses = model(clip_inputs(cfg.MODEL.TEMPORAL.NUM_FRAMES))  # no series label needed when off
    assert set(losses) == {"loss_cls", "loss_box_reg"}


def test_the_term_is_the_weighted_bce_of_each_clips_top1_logit():
    cfg, model = _model(0.5)
    inputs = _labelled(clip_inputs(cfg.MODEL.TEMPORAL.NUM_FRAMES), [1, 0])
    with EventStorage():
        losses = model(inputs)
    # The same top-1 logits, computed independently through the head on the fused features.
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        logits, _ = model.head([features[f] for f in model.head_in_features])
        # (N, A*K, H, W) per level -> every anchor's logit, then the highest of each clip
        top1 = torch.stack([torch.cat([level[n].flatten() for level in logits]).max() for n in range(len(inputs))])
    expected = 0.5 * F.binary_cross_entropy_with_logits(top1, torch.tensor([1.0, 0.0]))
    assert losses["loss_series"].item() == pytest.approx(expected.item(), rel=1e-5)
    # Its gradient moves the positive clip's top-1 score up and the negative one's down.
    model.zero_grad()
    losses["loss_series"].backward()
    assert any(p.grad is not None and p.grad.any() for p in model.head.cls_score.parameters())


@pytest.mark.parametrize("label", [1, 0])
def test_training_on_the_term_moves_the_top1_score_towards_the_series_label(label):
    cfg, model = _model(1.0)
    inputs = _labelled(clip_inputs(cfg.MODEL.TEMPORAL.NUM_FRAMES), [label, label])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def top1_logits() -> list[float]:
        with torch.no_grad():
            images = model.preprocess_image(inputs)
            features = model.backbone(images.tensor)
            logits, _ = model.head([features[f] for f in model.head_in_features])
        return [max(level[n].max().item() for level in logits) for n in range(len(inputs))]

    before = top1_logits()
    for _ in range(10):
        with EventStorage():
            loss = model(inputs)["loss_series"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = top1_logits()
    # From the focal-loss prior (p = 0.01) a positive label pulls hard and a negative one gently.
    if label:
        assert all(a > b + 0.3 for a, b in zip(after, before)), (before, after)
    else:
        assert all(a < b for a, b in zip(after, before)), (before, after)


def test_missing_series_label_names_the_input():
    cfg, model = _model(1.0)
    inputs = clip_inputs(cfg.MODEL.TEMPORAL.NUM_FRAMES)
    with EventStorage(), pytest.raises(DSAInputError, match=r"clip0\.png.*series_positive"):
        model(inputs)


@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf")])
def test_bad_weight_is_a_clear_error(weight):
    with pytest.raises(DSAInputError, match=r"MODEL\.SERIES_LOSS\.WEIGHT.*>= 0"):
        _model(weight)


def test_rcnn_refuses_the_term():
    with pytest.raises(DSAInputError, match=r"TemporalRetinaNet only"):
        _model(1.0, "faster_rcnn.yaml")
