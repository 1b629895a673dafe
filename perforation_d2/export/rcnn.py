"""The R-CNN graphs of an export, and the model whose R-CNN parts run them in onnxruntime.

Faster / Cascade R-CNN are split where Python has to decide: ``rpn_head.onnx`` (fused features ->
objectness logits and anchor deltas per level), then Detectron2's own proposal selection (top-k,
NMS) in Python, ``box_pooler.onnx`` (fused features + proposals in pooler format ``(R, 5)`` ->
ROIAlign'ed ``(R, C, 7, 7)``, multi-level as Detectron2's ``ROIPooler``) and ``box_head_<s>.onnx``
per stage (pooled -> class logits and box deltas). :func:`onnx_rcnn_model` puts these graphs in
place of the modules in a shallow copy of the model, so the top-1 decoding, Cascade's stage
chaining and every fallback are the project's and Detectron2's code, unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.modeling.poolers import assign_boxes_to_levels, convert_boxes_to_pooler_format
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.structures import Boxes
from torch import nn

RPN_HEAD_FILE = "rpn_head.onnx"
BOX_POOLER_FILE = "box_pooler.onnx"


def box_head_file(stage: int) -> str:
    return f"box_head_{stage}.onnx"


def num_stages(model: nn.Module) -> int:
    heads = model.roi_heads
    return heads.num_cascade_stages if isinstance(heads, CascadeROIHeads) else 1


def _stage(modules: nn.Module, stage: int) -> nn.Module:
    return modules[stage] if isinstance(modules, nn.ModuleList) else modules


class RpnHead(nn.Module):
    """Fused features of the RPN's levels -> objectness logits..., anchor deltas... per level."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.head = model.proposal_generator.rpn_head

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        objectness, deltas = self.head(list(features))
        return (*objectness, *deltas)


class BoxPooler(nn.Module):
    """``(rois (R, 5), *features)`` -> pooled ``(R, C, h, w)``: ``ROIPooler.forward`` on boxes already
    in pooler format (batch index, x0, y0, x1, y1), whose number varies per frame."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.pooler = model.roi_heads.box_pooler

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        rois, features = inputs[0], inputs[1:]
        pooler = self.pooler
        if len(pooler.level_poolers) == 1:
            return pooler.level_poolers[0](features[0], rois)
        levels = assign_boxes_to_levels([Boxes(rois[:, 1:])], pooler.min_level, pooler.max_level,
                                        pooler.canonical_box_size, pooler.canonical_level)
        output = rois.new_zeros((rois.shape[0], features[0].shape[1], *pooler.output_size))
        for level, (x, level_pooler) in enumerate(zip(features, pooler.level_poolers)):
            inds = torch.nonzero(levels == level).squeeze(1)
            output = output.index_put((inds,), level_pooler(x, rois[inds]))
        return output


class StageHead(nn.Module):
    """Pooled ``(R, C, h, w)`` -> (class logits (R, K+1), box deltas (R, 4 or 4K)) of one stage."""

    def __init__(self, model: nn.Module, stage: int):
        super().__init__()
        self.box_head = _stage(model.roi_heads.box_head, stage)
        self.box_predictor = _stage(model.roi_heads.box_predictor, stage)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.box_predictor(self.box_head(pooled))


def pooler_rois(model: nn.Module, fused: dict[str, torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
    """The PyTorch model's proposals for ``fused`` features, in pooler format: example and check
    inputs of the box graphs."""
    from detectron2.structures import ImageList

    some = next(iter(fused.values()))
    images = ImageList(some.new_zeros((len(some), 0, *image_size)), [image_size] * len(some))
    proposals, _ = model.proposal_generator(images, fused, None)
    return convert_boxes_to_pooler_format([p.proposal_boxes for p in proposals])


class _Session(nn.Module):
    """One onnxruntime session as a module: tensors in, tensors out (CPU float32)."""

    def __init__(self, session, names: Sequence[str]):
        super().__init__()
        self.session, self.names = session, list(names)

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        feeds = {name: np.ascontiguousarray(x.detach().cpu().float().numpy()) for name, x in zip(self.names, inputs)}
        return [torch.from_numpy(x) for x in self.session.run(None, feeds)]


class _OnnxRpnHead(_Session):
    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outputs = self.run(*features)
        return outputs[: len(features)], outputs[len(features):]


class _OnnxPooler(_Session):
    def __init__(self, session, names: Sequence[str], pooler: nn.Module):
        super().__init__(session, names)
        self.output_size = tuple(pooler.output_size)

    def forward(self, features: list[torch.Tensor], boxes: list[Boxes]) -> torch.Tensor:
        rois = convert_boxes_to_pooler_format(boxes)
        if len(rois) == 0:  # ROIPooler's answer for no boxes, without running a zero-row graph
            return features[0].new_zeros((0, features[0].shape[1], *self.output_size))
        return self.run(rois, *features)[0]


class _OnnxStageHead(_Session):
    def __init__(self, session, names: Sequence[str], predictor: nn.Module):
        super().__init__(session, names)
        self.widths = (predictor.cls_score.out_features, predictor.bbox_pred.out_features)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(pooled) == 0:
            return pooled.new_zeros((0, self.widths[0])), pooled.new_zeros((0, self.widths[1]))
        scores, deltas = self.run(pooled)
        return scores, deltas


class _Outputs(nn.Module):
    """A box predictor whose forward passes the ONNX stage head's outputs through; its decoding
    (``predict_boxes``, ``predict_probs``) and test settings are the original's."""

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(self, predictions):
        return predictions

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules") or {}  # not yet set while copying or unpickling
            if "predictor" not in modules:
                raise
            return getattr(modules["predictor"], name)


def _shallow(module: nn.Module) -> nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # replacing a child must not touch the original
    return clone


def graph_names(model: nn.Module) -> dict[str, list[str]]:
    """Input names of the R-CNN graphs (``rpn``, ``pooler``, ``stage``)."""
    return {
        "rpn": [f"fused_{level}" for level in model.proposal_generator.in_features],
        "pooler": ["rois"] + [f"fused_{level}" for level in model.roi_heads.box_in_features],
        "stage": ["pooled"],
    }


def onnx_rcnn_model(model: nn.Module, sessions: dict[str, object]) -> nn.Module:
    """A shallow copy of ``model`` whose RPN head, box pooler and box heads run ``sessions``
    (``"rpn"``, ``"pooler"``, ``"stage_<s>"``); everything else is the model's own."""
    names = graph_names(model)
    proxy = _shallow(model)
    proposal_generator = _shallow(model.proposal_generator)
    proposal_generator.rpn_head = _OnnxRpnHead(sessions["rpn"], names["rpn"])
    heads = _shallow(model.roi_heads)
    heads.box_pooler = _OnnxPooler(sessions["pooler"], names["pooler"], model.roi_heads.box_pooler)
    stage_heads = [_OnnxStageHead(sessions[f"stage_{s}"], names["stage"], _stage(model.roi_heads.box_predictor, s))
                   for s in range(num_stages(model))]
    predictors = [_Outputs(_stage(model.roi_heads.box_predictor, s)) for s in range(num_stages(model))]
    if isinstance(model.roi_heads, CascadeROIHeads):
        heads.box_head, heads.box_predictor = nn.ModuleList(stage_heads), nn.ModuleList(predictors)
    else:
        heads.box_head, heads.box_predictor = stage_heads[0], predictors[0]
    proxy.proposal_generator, proxy.roi_heads = proposal_generator, heads
    return proxy
