"""Box regression losses: the paper's DR-IoU (section 2.2) next to Detectron2's own.

``dr_iou_loss`` is DIoU with a margin: ``ReLU(1 - IoU + d^2 / c^2 - beta)``. Boxes whose DIoU loss
is already below ``beta`` get no loss and no gradient, because the borders of an extravasation are
ambiguous and chasing a perfect fit to the annotated box overfits. ``dense_box_regression_loss``
adds ``"dr_iou"`` to the loss types Detectron2's ``_dense_box_regression_loss`` knows, so that
RetinaNet, the Fast R-CNN box head and every Cascade stage select it with one config string.
"""

from __future__ import annotations

from typing import List

import torch
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.structures import Boxes

from ..errors import DSAInputError

__all__ = ["BOX_REG_LOSS_TYPES", "check_box_reg_loss_type", "dense_box_regression_loss", "dr_iou_loss"]

# Detectron2's four types plus the paper's DR-IoU.
BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou", "dr_iou")


def dr_iou_loss(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    beta: float = 0.25,
    reduction: str = "none",
    eps: float = 1e-7,
) -> torch.Tensor:
    """Distance-ReLU IoU loss ``ReLU(1 - IoU + d^2/c^2 - beta)`` of XYXY boxes of shape (..., 4).

    ``d`` is the distance between the box centres and ``c`` the diagonal of the smallest box
    enclosing both, so boxes that do not overlap still get a gradient pulling their centres
    together. ``beta = 0`` gives Detectron2's ``diou_loss``. ``reduction``: "none", "mean" or "sum".
    """
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)

    inter_w = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0)
    inter_h = (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0)
    intersection = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intersection + eps
    iou = intersection / union

    enclosing_diag_sq = (torch.max(x2, x2g) - torch.min(x1, x1g)) ** 2 + (
        torch.max(y2, y2g) - torch.min(y1, y1g)
    ) ** 2 + eps
    centre_dist_sq = ((x1 + x2 - x1g - x2g) ** 2 + (y1 + y2 - y1g - y2g) ** 2) / 4

    loss = torch.relu(1 - iou + centre_dist_sq / enclosing_diag_sq - beta)
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    if reduction != "none":
        raise ValueError(f"dr_iou_loss: reduction must be 'none', 'mean' or 'sum', not {reduction!r}")
    return loss


def check_box_reg_loss_type(loss_type: str, config_key: str) -> None:
    """Raise :class:`DSAInputError` when ``loss_type`` (read from ``config_key``) is not supported."""
    if loss_type not in BOX_REG_LOSS_TYPES:
        raise DSAInputError(
            f"config: {config_key} is {loss_type!r}, which is not a box regression loss; "
            f"valid choices are {', '.join(BOX_REG_LOSS_TYPES)}."
        )


def dense_box_regression_loss(
    anchors: List[Boxes | torch.Tensor],
    box2box_transform: Box2BoxTransform,
    pred_anchor_deltas: List[torch.Tensor],
    gt_boxes: List[torch.Tensor],
    fg_mask: torch.Tensor,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
    dr_iou_beta: float = 0.25,
) -> torch.Tensor:
    """Detectron2's ``_dense_box_regression_loss`` (summed over ``fg_mask``) plus ``"dr_iou"``.

    Arguments are those of ``_dense_box_regression_loss``; ``dr_iou_beta`` is DR-IoU's margin.
    """
    if box_reg_loss_type != "dr_iou":
        return _dense_box_regression_loss(
            anchors,
            box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            fg_mask,
            box_reg_loss_type=box_reg_loss_type,
            smooth_l1_beta=smooth_l1_beta,
        )
    if isinstance(anchors[0], Boxes):
        anchors = type(anchors[0]).cat(anchors).tensor
    else:
        anchors = cat(anchors)
    pred_boxes = torch.stack(
        [box2box_transform.apply_deltas(deltas, anchors) for deltas in cat(pred_anchor_deltas, dim=1)]
    )
    return dr_iou_loss(
        pred_boxes[fg_mask], torch.stack(gt_boxes)[fg_mask], beta=dr_iou_beta, reduction="sum"
    )
