"""Top-1 decoding equals Detectron2's full inference (threshold, top-k, NMS, postprocess) + top-1.

Bit for bit (``torch.equal``): same box, same score, same class, same empty frames, for RetinaNet,
Faster R-CNN (class-specific and class-agnostic regression, several classes) and Cascade R-CNN,
T = 1, 3, 5, with random and with briefly trained weights, ties (uniform frames), frames without
any score above the threshold, and best boxes that fall outside the frame.

The reference is computed independently of the code under test, on the same features: Detectron2's
own inference of the head, ``detector_postprocess`` and the first maximum of the scores (the
project's top-1). Series through the model's own ``forward`` per clip agree within 1e-4 (the
backbone batches different frames together there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from helpers.series_models import FRAME_SIZE, quick_cfg, random_frames, widen_heads
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.modeling.series_inference import SeriesPredictor, naive_predict_series, resize_frames
from perforation_d2.modeling.top1 import decode_top1


def briefly_train(model: torch.nn.Module, steps: int = 6) -> torch.nn.Module:
    """A few SGD steps on random clips with one box each: weights shaped by the losses."""
    torch.manual_seed(1)
    num_frames = int(model.backbone.num_frames)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    model.train()
    for step in range(steps):
        inputs = []
        for k in range(2):
            clip = torch.from_numpy(random_frames(num_frames, FRAME_SIZE, FRAME_SIZE, seed=100 + 2 * step + k))
            instances = Instances((FRAME_SIZE, FRAME_SIZE))
            instances.gt_boxes = Boxes(torch.tensor([[10.0 + 4 * k, 12.0, 34.0 + 4 * k, 40.0]]))
            instances.gt_classes = torch.zeros(1, dtype=torch.int64)
            inputs.append({"image": clip[:, None].expand(-1, 3, -1, -1), "instances": instances})
        from detectron2.utils.events import EventStorage

        with EventStorage(step):
            losses = model(inputs)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


_MODELS: dict[tuple, torch.nn.Module] = {}


def model_for(name: str, *opts: str, weights: str = "random") -> torch.nn.Module:
    key = (name, weights, *opts)
    if key not in _MODELS:
        torch.manual_seed(0)
        model = build_model(quick_cfg(name, *opts))
        model = widen_heads(model) if weights == "random" else briefly_train(model)
        _MODELS[key] = model.eval()
    return _MODELS[key]


def detectron2_inference(model, images: ImageList, features: dict) -> list[Instances]:
    """The model's own inference from backbone features: all its detections per image."""
    if isinstance(model, DenseDetector):
        levels = [features[f] for f in model.head_in_features]
        return model.forward_inference(images, levels, model.head(levels))
    return model.roi_heads(images, features, model.proposal_generator(images, features, None)[0], None)[0]


class FullPathPredictor(SeriesPredictor):
    """The series predictor with Detectron2's own inference as its head, then the project's top-1.

    Same frames, clips and features as :class:`SeriesPredictor` (so any difference comes from the
    decoding): the dense head's ``forward_inference`` (threshold, top-k, NMS, detections per
    image) or the RPN + ROI heads, ``detector_postprocess`` and the first maximum of the scores.
    """

    def _head(self, features, image_sizes, output_size):
        some = next(iter(features.values()))
        images = ImageList(some.new_zeros((len(image_sizes), 0, *image_sizes[0])), image_sizes)
        results = detectron2_inference(self.model, images, features)
        outputs = []
        for result in results:
            result = detector_postprocess(result, *output_size)
            if len(result):
                best = int(torch.argmax(result.scores))  # the first maximum
                result = result[best : best + 1]
            outputs.append(result.to("cpu"))
        return outputs


def reference_top1(model, frames: np.ndarray, batch: int = 4) -> list[Instances]:
    """Detectron2's full inference path on the same features, then the first-maximum top-1."""
    return FullPathPredictor(model, FRAME_SIZE, batch_size=batch)(frames)


def assert_identical(got: list[Instances], want: list[Instances]) -> int:
    """Same detections to the bit; returns how many frames have one."""
    assert len(got) == len(want)
    for frame, (a, b) in enumerate(zip(got, want)):
        assert len(a) == len(b) <= 1, frame
        assert a.image_size == b.image_size, frame
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor), (frame, a.pred_boxes, b.pred_boxes)
        assert torch.equal(a.scores, b.scores), (frame, a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes), frame
    return sum(len(a) for a in got)


HEADS = [
    ("retinanet.yaml", ()),  # T = 1
    ("retinanet_tconv_T5.yaml", ("MODEL.TEMPORAL.NUM_FRAMES", "3")),  # T = 3
    ("retinanet_tconv_T5.yaml", ()),  # T = 5
    ("retinanet.yaml", ("MODEL.RETINANET.NUM_CLASSES", "3")),
    ("faster_rcnn.yaml", ()),  # class-specific regression, one class
    ("faster_rcnn.yaml", ("MODEL.ROI_HEADS.NUM_CLASSES", "3")),  # class-specific, three classes
    ("faster_rcnn.yaml", ("MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True")),
    ("faster_rcnn.yaml", ("MODEL.TEMPORAL.NUM_FRAMES", "3")),  # temporal Faster R-CNN
    ("cascade_rcnn.yaml", ()),  # three stages, scores averaged
    # top-k truncation per level and a single detection per image
    ("retinanet.yaml", ("MODEL.RETINANET.TOPK_CANDIDATES_TEST", "3", "TEST.DETECTIONS_PER_IMAGE", "1")),
    ("faster_rcnn.yaml", ("MODEL.RPN.POST_NMS_TOPK_TEST", "7", "TEST.DETECTIONS_PER_IMAGE", "1")),
]


@pytest.mark.parametrize(("config", "opts"), HEADS)
@pytest.mark.parametrize("weights", ["random", "trained"])
def test_top1_equals_the_full_path(config, opts, weights):
    if weights == "trained":
        # A few steps of focal loss push every score below 0.05: keep all candidates, so that
        # NMS over every anchor (or proposal) is exercised.
        opts = (*opts, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    model = model_for(config, *opts, weights=weights)
    frames = random_frames(4, seed=3)
    predictor = SeriesPredictor(model, FRAME_SIZE, batch_size=4)
    found = assert_identical(predictor(frames), reference_top1(model, frames))
    assert found > 0, "no detection at all: the comparison would be vacuous"


@pytest.mark.parametrize(("num_frames", "batch"), [(1, 4), (2, 1), (3, 2), (7, 3)])
def test_short_and_partial_series(num_frames, batch):
    model = model_for("retinanet_tconv_T5.yaml")
    frames = random_frames(num_frames, seed=num_frames)
    outputs = SeriesPredictor(model, FRAME_SIZE, batch_size=batch)(frames)
    assert assert_identical(outputs, reference_top1(model, frames, batch)) > 0
    # and, as before, within 1e-4 of the per-clip path through the model's own forward
    naive = naive_predict_series(model, frames, FRAME_SIZE, batch_size=batch)
    for a, b in zip(outputs, naive):
        assert len(a) == len(b)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("config", ["retinanet.yaml", "faster_rcnn.yaml", "cascade_rcnn.yaml"])
def test_frames_without_a_score_above_the_threshold_are_empty(config):
    thresholds = ("MODEL.RETINANET.SCORE_THRESH_TEST", "0.999", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.999")
    model = model_for(config, *thresholds)
    frames = random_frames(3, seed=5)
    outputs = SeriesPredictor(model, FRAME_SIZE)(frames)
    assert assert_identical(outputs, reference_top1(model, frames)) == 0
    assert all(o.image_size == (72, 88) for o in outputs)


def _raise_scores(model: torch.nn.Module, bias: float) -> None:
    with torch.no_grad():
        if hasattr(model, "head"):
            model.head.cls_score.bias.fill_(bias)
        else:
            predictors = model.roi_heads.box_predictor
            for predictor in predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]:
                predictor.cls_score.bias[:-1] = bias


@pytest.mark.parametrize("config", ["retinanet.yaml", "faster_rcnn.yaml", "cascade_rcnn.yaml"])
def test_ties_are_decided_as_the_full_path_decides_them(config):
    """Uniform frames: every interior anchor (proposal) has the same features, so the best score
    is shared by many candidates; Detectron2's torch.topk + NMS order decides, and so do we."""
    torch.manual_seed(0)
    model = widen_heads(build_model(quick_cfg(config)), std=0.0).eval()
    _raise_scores(model, 2.0)
    frames = np.full((3, 64, 64), 90, dtype=np.uint8)
    frames[1] = 200
    predictor = SeriesPredictor(model, FRAME_SIZE)
    outputs = predictor(frames)
    assert assert_identical(outputs, reference_top1(model, frames)) == 3
    assert predictor.fully_decoded_frames == 3  # every frame had a tie: none was guessed


def test_best_box_outside_the_frame_is_decided_by_the_full_path():
    """Deltas that push every box out of the frame: detector_postprocess drops the best box, and
    the answer is whatever NMS kept next (or nothing); the decoder hands those frames over."""
    torch.manual_seed(0)
    model = widen_heads(build_model(quick_cfg("retinanet.yaml"))).eval()
    with torch.no_grad():
        bias = model.head.bbox_pred.bias.view(-1, 4)
        bias[:, 0] = torch.linspace(-3.0, 12.0, len(bias))  # some anchors shift far right, some not
    frames = random_frames(3, seed=7)
    predictor = SeriesPredictor(model, FRAME_SIZE)
    assert_identical(predictor(frames), reference_top1(model, frames))
    assert predictor.fully_decoded_frames >= 1  # the case is exercised, not avoided


def test_decode_top1_on_features_directly():
    """decode_top1 on a batch of preprocessed frames equals the model's own inference on them."""
    model = model_for("faster_rcnn.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", "3")
    frames = torch.from_numpy(random_frames(5, seed=11))
    resized = resize_frames(frames, FRAME_SIZE)
    inputs = [{"image": image, "height": 72, "width": 88} for image in resized]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        detections = decode_top1(model, images, features, (72, 88))
        reference = FullPathPredictor(model, FRAME_SIZE)._head(features, images.image_sizes, (72, 88))
    assert detections.boxes.shape == (5, 4) and detections.found.dtype == torch.bool
    assert_identical(detections.to_instances(), reference)


def test_the_detectron2_decoding_option_gives_the_same_detections():
    """SeriesPredictor(decoding="detectron2"), the benchmark's old path, equals the reference too."""
    model = model_for("retinanet_tconv_T5.yaml")
    frames = random_frames(5, seed=13)
    old = SeriesPredictor(model, FRAME_SIZE, decoding="detectron2")
    assert assert_identical(old(frames), reference_top1(model, frames)) > 0
    assert old.fully_decoded_frames == 5
    with pytest.raises(ValueError, match="decoding must be one of top1, detectron2"):
        SeriesPredictor(model, FRAME_SIZE, decoding="nms")
