"""MODEL.DR_IOU.BETA reaches the loss each head computes (RetinaNet, Fast R-CNN, every Cascade stage).

Checking the attribute a head stores is not enough: the loss call could drop the argument and
fall back to its default margin (0.25). Each test feeds one foreground box whose DIoU loss is
worked out by hand and compares the head's box loss with ``ReLU(L - beta)`` for a margin other
than the default.
"""

from __future__ import annotations

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from perforation_d2 import add_perforation_config
from perforation_d2.config import config_path

# Prediction = anchor/proposal [0, 0, 10, 10] (zero deltas); ground truth [0, 0, 10, 20]:
# IoU = 100 / 200, centres (5, 5) and (5, 10): d^2 = 25, enclosing box 10 x 20: c^2 = 500,
# so 1 - IoU + d^2 / c^2 = 0.55.
PREDICTED = [0.0, 0.0, 10.0, 10.0]
TRUTH = [0.0, 0.0, 10.0, 20.0]
DIOU_LOSS = 0.55
BETAS = [0.1, 0.4]  # neither is the default 0.25


def _model(name: str, beta: float):
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.merge_from_file(str(config_path(f"quick/{name}")))
    cfg.INPUT.FRAME_SIZE = 64
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DR_IOU.BETA = beta
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("beta", BETAS)
def test_retinanet_box_loss_uses_the_configured_margin(beta):
    model = _model("retinanet.yaml", beta)
    assert model.box_reg_loss_type == "dr_iou"
    anchors = [Boxes(torch.tensor([PREDICTED]))]
    with EventStorage():
        losses = model.losses(
            anchors,
            [torch.zeros(1, 1, 1)],  # logits (N, R, K)
            [torch.tensor([0])],  # anchor 0 is a foreground of class 0
            [torch.zeros(1, 1, 4)],  # zero deltas: the prediction is the anchor
            [torch.tensor([TRUTH])],
        )
    normalizer = model.loss_normalizer  # RetinaNet's running foreground count, read back
    expected = max(DIOU_LOSS - beta, 0.0) / normalizer
    assert losses["loss_box_reg"].item() == pytest.approx(expected, rel=1e-5)


def _check_predictor(predictor, beta):
    assert predictor.box_reg_loss_type == "dr_iou"
    loss = predictor.box_reg_loss(
        torch.tensor([PREDICTED]),
        torch.tensor([TRUTH]),
        torch.zeros(1, predictor.bbox_pred.out_features),  # zero deltas (agnostic or per class)
        torch.tensor([0]),
    )
    # Normalised by the number of sampled regions: one.
    assert loss.item() == pytest.approx(max(DIOU_LOSS - beta, 0.0), rel=1e-5)


@pytest.mark.parametrize("beta", BETAS)
def test_fast_rcnn_box_loss_uses_the_configured_margin(beta):
    model = _model("faster_rcnn.yaml", beta)
    _check_predictor(model.roi_heads.box_predictor, beta)


def test_every_cascade_stage_uses_the_configured_margin():
    beta = BETAS[0]
    model = _model("cascade_rcnn.yaml", beta)
    predictors = list(model.roi_heads.box_predictor)
    assert len(predictors) == 3
    for predictor in predictors:
        _check_predictor(predictor, beta)
