"""ROI heads whose box regression can use DR-IoU (Faster R-CNN and every Cascade R-CNN stage).

``DSAROIHeads`` / ``DSACascadeROIHeads`` are Detectron2's ``StandardROIHeads`` /
``CascadeROIHeads`` with ``DSAFastRCNNOutputLayers`` as box predictor(s); that predictor accepts
``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE: "dr_iou"`` (margin ``MODEL.DR_IOU.BETA``) next to
Detectron2's smooth_l1 / giou / diou / ciou, and rejects unknown types when it is built.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec, nonzero_tuple
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    FastRCNNOutputLayers,
    StandardROIHeads,
)

from .losses import check_box_reg_loss_type, dense_box_regression_loss

__all__ = ["DSACascadeROIHeads", "DSAFastRCNNOutputLayers", "DSAROIHeads"]


class DSAFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN box predictor with ``"dr_iou"`` among its box regression losses."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, dr_iou_beta: float = 0.25, **kwargs):
        """``dr_iou_beta``: DR-IoU's margin; other arguments as :class:`FastRCNNOutputLayers`."""
        super().__init__(input_shape, **kwargs)
        check_box_reg_loss_type(self.box_reg_loss_type, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE")
        self.dr_iou_beta = dr_iou_beta

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret["dr_iou_beta"] = cfg.MODEL.DR_IOU.BETA
        return ret

    def box_reg_loss(
        self,
        proposal_boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        pred_deltas: torch.Tensor,
        gt_classes: torch.Tensor,
    ) -> torch.Tensor:
        """Detectron2's box regression loss on the foreground proposals, DR-IoU included.

        Normalised, like Detectron2's, by the number of sampled regions (not of foreground ones),
        so every foreground example has the same influence whatever the batch's foreground count.
        """
        box_dim = proposal_boxes.shape[1]
        fg_inds = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] == box_dim:  # class-agnostic regression
            fg_pred_deltas = pred_deltas[fg_inds]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[fg_inds, gt_classes[fg_inds]]
        loss_box_reg = dense_box_regression_loss(
            [proposal_boxes[fg_inds]],
            self.box2box_transform,
            [fg_pred_deltas.unsqueeze(0)],
            [gt_boxes[fg_inds]],
            ...,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
            dr_iou_beta=self.dr_iou_beta,
        )
        return loss_box_reg / max(gt_classes.numel(), 1.0)


@ROI_HEADS_REGISTRY.register()
class DSAROIHeads(StandardROIHeads):
    """``StandardROIHeads`` (Faster R-CNN) with a DR-IoU-capable box predictor."""

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = DSAFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret


@ROI_HEADS_REGISTRY.register()
class DSACascadeROIHeads(CascadeROIHeads):
    """``CascadeROIHeads`` whose every stage has a DR-IoU-capable box predictor."""

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [
            DSAFastRCNNOutputLayers(
                cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=weights)
            )
            for head, weights in zip(ret["box_heads"], cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS)
        ]
        return ret
