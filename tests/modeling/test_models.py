"""The temporal meta-architectures on the quick configs: training steps, inference, inputs, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from perforation_d2 import add_perforation_config
from perforation_d2.errors import DSAInputError
from perforation_d2.modeling import DSAFastRCNNOutputLayers, TemporalGeneralizedRCNN, TemporalRetinaNet

QUICK = Path(__file__).resolve().parents[2] / "configs" / "quick"
QUICK_VARIANTS = [
    "retinanet.yaml",
    "retinanet_tconv_T5.yaml",
    "retinanet_tattn_T5.yaml",
    "retinanet_bigru_T5.yaml",
    "retinanet_bilstm_T5.yaml",
    "faster_rcnn.yaml",
    "cascade_rcnn.yaml",
]
SIZE = 64


def quick_cfg(name: str = "retinanet_tconv_T5.yaml", **overrides):
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.merge_from_file(str(QUICK / name))
    cfg.INPUT.FRAME_SIZE = SIZE
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def clip_inputs(num_frames: int, num_clips: int = 2, size: int = SIZE, seed: int = 0) -> list[dict]:
    """Inputs as the clip mapper makes them: uint8 (T, 3, H, W) clips, centre-frame Instances.

    Several boxes of different sizes per clip, so that anchors and random initial proposals
    overlap some of them at every IoU the heads train on (the DR-IoU margin zeroes the loss of
    near-perfect boxes, so a single box matched only by itself would leave regressors idle).
    """
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for clip in range(num_clips):
        boxes = []
        for side in (8, 12, 16, 24, 32):
            for _ in range(2):
                x0, y0 = torch.randint(0, size - side, (2,), generator=gen).tolist()
                boxes.append([x0, y0, x0 + side, y0 + side * (1.0 if clip == 0 else 0.75)])
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        inputs.append({
            "image": torch.randint(0, 256, (num_frames, 3, size, size), dtype=torch.uint8, generator=gen),
            "instances": instances,
            "height": 2 * size,
            "width": 3 * size,
            "file_name": f"clip{clip}.png",
        })
    return inputs


@pytest.mark.parametrize("name", QUICK_VARIANTS)
def test_one_training_step_reaches_every_parameter(name):
    overrides = {}
    if name == "cascade_rcnn.yaml":
        # With a random RPN, the foreground boxes of the later stages are the ground truths
        # themselves (appended to the proposals), whose DIoU is below the 0.25 margin: without
        # a margin every stage's regressor gets a gradient at the first step.
        overrides["MODEL.DR_IOU.BETA"] = 0.0
    cfg = quick_cfg(name, **overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage():
        losses = model(clip_inputs(cfg.MODEL.TEMPORAL.NUM_FRAMES))
    assert losses and all(math.isfinite(v.item()) for v in losses.values()), losses
    assert all(v.item() > 0 for k, v in losses.items() if "box_reg" in k), losses
    sum(losses.values()).backward()
    idle = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not idle, f"parameters without gradient: {idle}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["retinanet_bigru_T5.yaml", "cascade_rcnn.yaml"])
def test_inference_gives_at_most_one_detection_per_frame_in_input_pixels(name):
    # Zero score thresholds: without the per-frame limit there would be many detections.
    cfg = quick_cfg(name, **{"MODEL.RETINANET.SCORE_THRESH_TEST": 0.0, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 1
    model = build_model(cfg).eval()
    inputs = clip_inputs(cfg.MODEL.TEMPORAL.NUM_FRAMES, num_clips=3)
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 3
    for output in outputs:
        instances = output["instances"]
        assert len(instances) == 1
        assert instances.image_size == (2 * SIZE, 3 * SIZE)  # rescaled to "height" x "width"
        assert instances.pred_classes.tolist() == [0]
        box = instances.pred_boxes.tensor[0]
        assert 0 <= box[0] <= box[2] <= 3 * SIZE and 0 <= box[1] <= box[3] <= 2 * SIZE


def test_preprocessing_pads_clips_and_keeps_centre_frame_sizes():
    cfg = quick_cfg("retinanet_tattn_T5.yaml")
    model = build_model(cfg)
    inputs = clip_inputs(5)
    inputs[0]["image"] = inputs[0]["image"][..., :50, :60]
    images = model.preprocess_image(inputs)
    assert images.tensor.shape == (2, 5, 3, SIZE, SIZE)  # padded to a multiple of 32
    assert images.image_sizes == [(50, 60), (SIZE, SIZE)]
    # Each frame normalised with the config's per-channel mean and std.
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    expected = (inputs[1]["image"][4].float() - mean) / std
    torch.testing.assert_close(images.tensor[1, 4], expected)
    assert torch.all(images.tensor[0, :, :, 50:, :] == 0)


def test_single_frame_model_accepts_plain_images_and_clips_of_one():
    cfg = quick_cfg("retinanet.yaml")
    model = build_model(cfg).eval()
    clips = clip_inputs(1, num_clips=1)
    images = [{**clips[0], "image": clips[0]["image"][0]}]
    with torch.no_grad():
        from_clip = model(clips)[0]["instances"]
        from_image = model(images)[0]["instances"]
    assert torch.equal(from_clip.scores, from_image.scores)


@pytest.mark.parametrize("name", ["retinanet_tconv_T5.yaml", "faster_rcnn.yaml"])
def test_clip_length_disagreeing_with_the_config_names_both(name):
    model = build_model(quick_cfg(name))
    with pytest.raises(DSAInputError) as err:
        model(clip_inputs(3, num_clips=1))
    message = str(err.value)
    assert "clip0.png" in message and "3 frames" in message
    expected = cfg_frames = quick_cfg(name).MODEL.TEMPORAL.NUM_FRAMES
    assert f"NUM_FRAMES = {expected}" in message and cfg_frames != 3


@pytest.mark.parametrize("name", ["retinanet_bilstm_T5.yaml", "faster_rcnn.yaml"])
def test_training_visualisation_draws_the_centre_frame(name):
    cfg = quick_cfg(name, VIS_PERIOD=1)
    model = build_model(cfg)
    model.train()
    with EventStorage() as storage:
        model(clip_inputs(cfg.MODEL.TEMPORAL.NUM_FRAMES))
        images = storage._vis_data
    assert images
    _, image, _ = images[0]
    assert image.shape[0] == 3 and image.shape[1] >= SIZE and image.shape[2] >= SIZE


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou", "diou", "ciou"])
def test_detectron2_box_losses_still_train(loss_type):
    cfg = quick_cfg("retinanet_tconv_T5.yaml", **{"MODEL.RETINANET.BBOX_REG_LOSS_TYPE": loss_type})
    model = build_model(cfg)
    model.train()
    with EventStorage():
        losses = model(clip_inputs(5))
    assert math.isfinite(losses["loss_box_reg"].item()) and losses["loss_box_reg"].item() > 0


def test_dr_iou_is_the_configured_loss_of_every_head():
    retinanet = build_model(quick_cfg("retinanet.yaml"))
    assert isinstance(retinanet, TemporalRetinaNet)
    assert retinanet.box_reg_loss_type == "dr_iou" and retinanet.dr_iou_beta == 0.25
    cascade = build_model(quick_cfg("cascade_rcnn.yaml", **{"MODEL.DR_IOU.BETA": 0.1}))
    assert isinstance(cascade, TemporalGeneralizedRCNN)
    predictors = list(cascade.roi_heads.box_predictor)
    assert len(predictors) == 3
    for predictor in predictors:
        assert isinstance(predictor, DSAFastRCNNOutputLayers)
        assert predictor.box_reg_loss_type == "dr_iou" and predictor.dr_iou_beta == 0.1
    faster = build_model(quick_cfg("faster_rcnn.yaml"))
    assert isinstance(faster.roi_heads.box_predictor, DSAFastRCNNOutputLayers)


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("retinanet_tconv_T5.yaml", {"MODEL.TEMPORAL.MODULE": "TemporalLSTM"}, ["TemporalLSTM", "BiConvGRU"]),
        ("retinanet_tconv_T5.yaml", {"MODEL.TEMPORAL.NUM_FRAMES": 4}, ["NUM_FRAMES", "odd"]),
        ("retinanet.yaml", {"MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "l2"}, ["'l2'", "dr_iou", "smooth_l1"]),
        ("faster_rcnn.yaml", {"MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "iou"}, ["'iou'", "dr_iou", "ciou"]),
        ("cascade_rcnn.yaml", {"MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "iou"}, ["'iou'", "dr_iou"]),
        ("faster_rcnn.yaml", {"MODEL.RPN.BBOX_REG_LOSS_TYPE": "dr_iou"}, ["MODEL.RPN", "smooth_l1"]),
        ("faster_rcnn.yaml", {"MODEL.ROI_HEADS.NAME": "StandardROIHeads"}, ["DSAROIHeads", "DSACascadeROIHeads"]),
        ("retinanet.yaml", {"MODEL.BACKBONE.NAME": "build_retinanet_resnet_fpn_backbone"},
         ["build_temporal_retinanet_resnet_fpn_backbone", "build_temporal_resnet_fpn_backbone"]),
    ],
)
def test_bad_config_is_a_clear_error_at_build_time(name, overrides, expected):
    cfg = quick_cfg(name, **overrides)
    with pytest.raises(DSAInputError) as err:
        build_model(cfg)
    assert all(text in str(err.value) for text in expected), str(err.value)
