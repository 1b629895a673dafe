"""Top-1 decoding without NMS: the one detection per frame that the product keeps, batched.

Detectron2's inference decodes up to thousands of candidates per image, runs NMS and returns up to
100 detections, in a Python loop over images; the project then keeps the highest-scoring one
(:func:`~perforation_d2.modeling.series_inference.top1`, after ``detector_postprocess``). NMS never
removes the highest-scoring candidate, so that detection is the best-scoring anchor (RetinaNet) or
(proposal, class) pair (Faster / Cascade R-CNN) above the test score threshold, decoded alone.
:func:`decode_top1` finds it for all frames of a batch at once with tensor operations.

It returns what the full path returns, bit for bit (tests/modeling/test_top1.py). Where the short
cut cannot know the full path's answer, it asks the full path, for those frames only:
- ties: two candidates share the best score. Detectron2 orders them with ``torch.topk``, whose order
  among equal values PyTorch does not specify (on CPU it is a heap order), then NMS's stable sort,
  and the project's top-1 takes the first; no closed-form rule reproduces that order;
- the best box is empty (or not finite) in the output frame: ``detector_postprocess`` drops it,
  and the answer is the best box that NMS kept, which depends on what the dropped box suppressed;
- non-finite R-CNN outputs (Detectron2 drops those rows first), unequal frame sizes in one batch,
  test settings below 1 (``TEST_TOPK_CANDIDATES``, ``DETECTIONS_PER_IMAGE``), mask or keypoint
  heads, and heads other than RetinaNet, ``StandardROIHeads`` and ``CascadeROIHeads``.
Scores are computed exactly as Detectron2 computes them (see :func:`_retinanet_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

__all__ = ["Top1Detections", "decode_full", "decode_retinanet_top1", "decode_top1", "top1"]

Features = dict[str, torch.Tensor]


def top1(instances: Instances) -> Instances:
    """The highest-scoring detection (the first one on ties), or an empty ``Instances``."""
    if len(instances) == 0:
        return instances
    best = int(torch.argmax(instances.scores))
    return instances[best : best + 1]


@dataclass
class Top1Detections:
    """The top detection of each of ``N`` frames, in output-frame pixels, as batched tensors.

    ``boxes`` (N, 4) XYXY float32, ``scores`` (N,), ``classes`` (N,) int64 and ``found`` (N,) bool;
    rows where ``found`` is False hold zeros. ``image_size`` is the output frame's (height, width).
    ``exact_frames`` counts the frames that were decoded by Detectron2's full path.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    found: torch.Tensor
    image_size: tuple[int, int]
    exact_frames: int = 0

    def to_instances(self) -> list[Instances]:
        """One CPU ``Instances`` per frame, with 0 or 1 detection (what ``top1`` returns)."""
        boxes, scores = self.boxes.cpu(), self.scores.cpu()
        classes, found = self.classes.cpu(), self.found.cpu().tolist()
        outputs = []
        for index, present in enumerate(found):
            keep = slice(index, index + 1) if present else slice(0, 0)
            outputs.append(Instances(
                self.image_size, pred_boxes=Boxes(boxes[keep]), scores=scores[keep], pred_classes=classes[keep]
            ))
        return outputs


def _empty(num_frames: int, device: torch.device, image_size: tuple[int, int]) -> Top1Detections:
    return Top1Detections(
        boxes=torch.zeros((num_frames, 4), device=device),
        scores=torch.zeros((num_frames,), device=device),
        classes=torch.zeros((num_frames,), dtype=torch.int64, device=device),
        found=torch.zeros((num_frames,), dtype=torch.bool, device=device),
        image_size=image_size,
    )


def _best_per_frame(candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``candidates`` (N, M): scores with non-candidates at -inf -> (best score, its index, found, tied)."""
    best_score, best_index = candidates.max(dim=1)
    found = best_score > float("-inf")
    tied = found & ((candidates == best_score[:, None]).sum(dim=1) > 1)
    return best_score, best_index, found, tied


def _finish(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    found: torch.Tensor,
    needs_full_path: torch.Tensor,
    model_size: tuple[int, int],
    output_size: tuple[int, int],
    full_path,
) -> Top1Detections:
    """Rescale and clip as ``detector_postprocess`` does, then let the full path decode the frames it must.

    ``full_path(frame) -> Instances`` gives Detectron2's detections of one frame (model input size).
    """
    height, width = output_size
    scaled = Boxes(boxes.clone())
    # detector_postprocess's own operations (same Python-float scales, same clip), so same bits.
    scaled.scale(width / model_size[1], height / model_size[0])
    scaled.clip(output_size)
    usable = scaled.nonempty() & torch.isfinite(boxes).all(dim=1)
    needs_full_path = needs_full_path | (found & ~usable)
    found = found & ~needs_full_path
    zero = torch.zeros((), device=boxes.device)
    result = Top1Detections(
        boxes=torch.where(found[:, None], scaled.tensor, zero),
        scores=torch.where(found, scores, zero.to(scores.dtype)),
        classes=torch.where(found, classes, torch.zeros_like(classes)),
        found=found,
        image_size=(int(height), int(width)),
    )
    frames = needs_full_path.nonzero()[:, 0].tolist()  # the one host sync of the batch
    for frame in frames:
        best = top1(detector_postprocess(full_path(frame), height, width))
        if len(best):
            result.boxes[frame] = best.pred_boxes.tensor[0]
            result.scores[frame] = best.scores[0].to(result.scores.dtype)
            result.classes[frame] = best.pred_classes[0]
            result.found[frame] = True
    result.exact_frames = len(frames)
    return result


def _retinanet_scores(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid of (N, HWA, K) logits with the bits Detectron2's per-image ``sigmoid_`` gives.

    On CPU, ATen computes the tail of each contiguous run (fewer elements than one vector) with a
    scalar formula that can differ from the vector one in the last bit, so the scores depend on
    where an image's block starts: apply it per image, as ``RetinaNet.forward_inference`` does
    (a few calls per batch). Elsewhere every element goes through one formula: one call.
    """
    if logits.device.type != "cpu":
        return logits.sigmoid()
    return torch.stack([x.sigmoid() for x in logits])


def decode_retinanet_top1(
    model: RetinaNet,
    predictions: list[list[torch.Tensor]],
    model_size: tuple[int, int],
    output_size: tuple[int, int],
) -> Top1Detections:
    """:func:`decode_top1` from RetinaNet head outputs ``[logits per level, deltas per level]``
    (each ``(N, A*K, h, w)`` / ``(N, A*4, h, w)``) of ``N`` frames of input size ``model_size``.

    Only the model's decoding settings are used (anchors, box transform, test thresholds), so the
    head may have run elsewhere (onnxruntime)."""
    logits, deltas = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
    # Decoding in FP32 whatever the precision mode (autocast leaves half-precision head outputs).
    scores = [_retinanet_scores(x.float()) for x in logits]
    deltas = [x.float() for x in deltas]
    anchors = model.anchor_generator(predictions[0])  # reads only the levels' sizes
    num_frames, num_classes = len(scores[0]), model.num_classes
    model_size = tuple(model_size)

    def full_path(frame: int) -> Instances:
        return model.inference_single_image(
            anchors, [s[frame] for s in scores], [d[frame] for d in deltas], model_size
        )

    flat = torch.cat([s.flatten(1) for s in scores], dim=1)  # (N, sum of HWA*K), levels in order
    candidates = torch.where(flat > model.test_score_thresh, flat, torch.tensor(float("-inf"), device=flat.device))
    best_score, best_index, found, tied = _best_per_frame(candidates)
    anchor_index = best_index // num_classes
    frame_index = torch.arange(num_frames, device=flat.device)
    boxes = model.box2box_transform.apply_deltas(
        torch.cat(deltas, dim=1)[frame_index, anchor_index], Boxes.cat(anchors).tensor[anchor_index]
    )
    if model.test_topk_candidates < 1 or model.max_detections_per_image < 1:
        tied = torch.ones_like(tied)  # settings the short cut does not model: the full path decides
    return _finish(boxes, best_score, best_index % num_classes, found, tied, model_size, output_size, full_path)


def _box_head_outputs(roi_heads: StandardROIHeads, features: Features, proposals: list[Instances]):
    """Per-image (boxes, scores) exactly as the ROI heads pass them to ``fast_rcnn_inference``.

    Faster R-CNN: the box predictor's ``predict_boxes`` / ``predict_probs``. Cascade R-CNN: every
    stage refines the previous stage's boxes, the scores are the stages' mean (with Detectron2's
    expression, for the same bits), the boxes those of the last stage.
    """
    box_features = [features[f] for f in roi_heads.box_in_features]
    if not isinstance(roi_heads, CascadeROIHeads):
        predictions = roi_heads.box_predictor(
            roi_heads.box_head(roi_heads.box_pooler(box_features, [p.proposal_boxes for p in proposals]))
        )
        predictor = roi_heads.box_predictor
        return predictor.predict_boxes(predictions, proposals), predictor.predict_probs(predictions, proposals), predictor
    image_sizes = [p.image_size for p in proposals]
    stage_scores, boxes = [], None
    for stage in range(roi_heads.num_cascade_stages):
        if stage > 0:
            proposals = roi_heads._create_proposals_from_boxes(boxes, image_sizes)
        predictions = roi_heads._run_stage(box_features, proposals, stage)
        predictor = roi_heads.box_predictor[stage]
        boxes = predictor.predict_boxes(predictions, proposals)
        stage_scores.append(predictor.predict_probs(predictions, proposals))
    scores = [sum(list(per_image)) * (1.0 / roi_heads.num_cascade_stages) for per_image in zip(*stage_scores)]
    return boxes, scores, predictor


def _rcnn_top1(
    model: GeneralizedRCNN, images: ImageList, features: Features, output_size: tuple[int, int]
) -> Top1Detections:
    proposals, _ = model.proposal_generator(images, features, None)
    boxes, scores, predictor = _box_head_outputs(model.roi_heads, features, proposals)
    model_size = tuple(images.image_sizes[0])
    num_frames = len(proposals)
    device = images.tensor.device

    def full_path(frame: int) -> Instances:
        return fast_rcnn_inference_single_image(
            boxes[frame], scores[frame], model_size, predictor.test_score_thresh,
            predictor.test_nms_thresh, predictor.test_topk_per_image,
        )[0]

    counts = [len(p) for p in proposals]
    if max(counts, default=0) == 0:
        return _empty(num_frames, device, output_size)
    all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)  # (R, C*4), (R, K+1)
    num_reg_classes = all_boxes.shape[1] // 4
    finite = torch.isfinite(all_boxes).all(dim=1) & torch.isfinite(all_scores).all(dim=1)
    clipped = Boxes(all_boxes.reshape(-1, 4))
    clipped.clip(model_size)
    clipped = clipped.tensor.view(-1, num_reg_classes, 4)
    foreground = all_scores[:, :-1]
    num_classes = foreground.shape[1]
    minus_inf = torch.tensor(float("-inf"), device=device)
    candidates = torch.where(foreground > predictor.test_score_thresh, foreground, minus_inf)
    # (N, R_max * K) in Detectron2's (proposal, class) order, frames padded with -inf.
    padded = nn.utils.rnn.pad_sequence(list(candidates.split(counts)), batch_first=True, padding_value=float("-inf"))
    best_score, best_index, found, tied = _best_per_frame(padded.flatten(1))
    offsets = torch.tensor([0, *counts[:-1]], device=device).cumsum(0)
    row = offsets + best_index // num_classes
    cls = best_index % num_classes
    box = clipped[row, cls if num_reg_classes > 1 else torch.zeros_like(cls)]
    frame_of_row = torch.repeat_interleave(torch.arange(num_frames, device=device), torch.tensor(counts, device=device))
    not_finite = torch.zeros(num_frames, dtype=torch.int64, device=device).index_add_(
        0, frame_of_row, (~finite).long()
    ) > 0
    return _finish(box, best_score, cls, found, tied | not_finite, model_size, output_size, full_path)


def decode_full(model: nn.Module, images: ImageList, features: Features, output_size) -> Top1Detections:
    """Detectron2's own inference (NMS and all), ``detector_postprocess`` and the project's top-1:
    what :func:`decode_top1` replaces, used for heads the short cut does not cover."""
    if isinstance(model, DenseDetector):
        head_features = [features[f] for f in model.head_in_features]
        results = model.forward_inference(images, head_features, model.head(head_features))
    else:
        proposals, _ = model.proposal_generator(images, features, None)
        results, _ = model.roi_heads(images, features, proposals, None)
    device = images.tensor.device
    num_frames = len(results)
    nothing = _empty(num_frames, device, output_size)
    return _finish(nothing.boxes, nothing.scores, nothing.classes, nothing.found,
                   torch.ones(num_frames, dtype=torch.bool, device=device), tuple(images.image_sizes[0]),
                   output_size, lambda frame: results[frame])


def _short_cut_applies(model: nn.Module, images: ImageList) -> bool:
    if len({tuple(size) for size in images.image_sizes}) != 1:
        return False
    if isinstance(model, RetinaNet):
        return True
    if isinstance(model, GeneralizedRCNN):
        heads = model.roi_heads
        predictor = heads.box_predictor[-1] if isinstance(heads, CascadeROIHeads) else getattr(heads, "box_predictor", None)
        return (
            isinstance(heads, StandardROIHeads)
            and not heads.mask_on
            and not heads.keypoint_on
            and predictor is not None
            and predictor.test_topk_per_image >= 1
        )
    return False


def decode_top1(
    model: nn.Module, images: ImageList, features: Features, output_size: tuple[int, int]
) -> Top1Detections:
    """The top-1 detection of every image of ``images``, rescaled to ``output_size`` (height, width).

    ``model`` is a Detectron2 RetinaNet-style ``DenseDetector`` or ``GeneralizedRCNN`` in eval
    mode; ``features`` are its backbone's (here: fused centre-frame) features of ``images``, whose
    tensor only supplies the device. Equals, for every frame, ``top1(detector_postprocess(r, H, W))``
    of the model's own inference result ``r``.
    """
    if not _short_cut_applies(model, images):
        return decode_full(model, images, features, output_size)
    if isinstance(model, RetinaNet):
        head_features = [features[f] for f in model.head_in_features]
        return decode_retinanet_top1(model, model.head(head_features), images.image_sizes[0], output_size)
    return _rcnn_top1(model, images, features, output_size)
