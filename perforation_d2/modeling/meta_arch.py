"""Meta-architectures that detect perforations on the centre frame of a clip.

``TemporalRetinaNet`` (RetinaNet, focal loss) and ``TemporalGeneralizedRCNN`` (Faster R-CNN with
``DSAROIHeads``, Cascade R-CNN with ``DSACascadeROIHeads``) take the clip mapper's inputs: dicts
whose ``"image"`` is a uint8 ``(T, 3, H, W)`` clip (docs/ARCHITECTURE.md, "Mapper output / model
input"). Each frame is normalised with ``MODEL.PIXEL_MEAN/STD`` and the clips are padded into an
``ImageList`` of shape ``(N, T, 3, H', W')`` whose ``image_sizes`` are the centre frames' sizes
(all frames of a clip have one size), so anchors, proposals and post-processing work as in
Detectron2 on the backbone's fused centre-frame features. T = 1 gives the single-frame baselines;
a ``(3, H, W)`` image is then accepted too. Outputs are Detectron2's usual
``[{"instances": Instances}]``, rescaled to each input's "height"/"width".
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from fvcore.nn import sigmoid_focal_loss
from torch.nn import functional as F

from ..errors import DSAInputError
from .backbone import TEMPORAL_BACKBONE_BUILDERS, TemporalBackbone
from .losses import check_box_reg_loss_type, dense_box_regression_loss
from .roi_heads import DSAFastRCNNOutputLayers
from .temporal_modules import check_temporal_config

__all__ = ["TemporalGeneralizedRCNN", "TemporalRetinaNet"]

# Detectron2's RPN knows only these (it calls _dense_box_regression_loss directly).
_RPN_BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")


def _check_backbone(backbone: Any) -> None:
    if not isinstance(backbone, TemporalBackbone):
        raise DSAInputError(
            f"config: MODEL.BACKBONE.NAME builds a {type(backbone).__name__}, but the temporal "
            "meta-architectures need a temporal backbone (also for NUM_FRAMES = 1); valid choices "
            f"are {', '.join(TEMPORAL_BACKBONE_BUILDERS)}."
        )


class _ClipInputs:
    """Clip preprocessing and centre-frame visualisation shared by the meta-architectures."""

    backbone: TemporalBackbone
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def _clip(self, dataset_input: Dict[str, Any]) -> torch.Tensor:
        """The input's clip as a (T, 3, H, W) tensor on the model's device, checked against T."""
        image = dataset_input["image"]
        num_frames = self.backbone.num_frames
        if image.dim() == 3 and num_frames == 1:
            image = image.unsqueeze(0)
        where = dataset_input.get("file_name", "model input")
        if image.dim() != 4:
            raise DSAInputError(
                f"{where}: the model expects a clip of shape (T, 3, H, W) in \"image\", got shape "
                f"{tuple(image.shape)}."
            )
        if image.shape[0] != num_frames:
            raise DSAInputError(
                f"{where}: the clip has {image.shape[0]} frames but the model was built for "
                f"MODEL.TEMPORAL.NUM_FRAMES = {num_frames}; build the data mapper and the model "
                "from the same config."
            )
        return self._move_to_current_device(image)

    def preprocess_image(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        """Normalise every frame and pad the clips into an ImageList (N, T, 3, H', W')."""
        clips = [(self._clip(x) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(
            clips,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def visualize_training(self, batched_inputs: List[Dict[str, Any]], results: list) -> None:
        """Detectron2's training visualisation, drawn on each clip's centre frame."""
        centre_inputs = []
        for x in batched_inputs:
            clip = x["image"]
            centre_inputs.append({**x, "image": clip[clip.shape[0] // 2] if clip.dim() == 4 else clip})
        super().visualize_training(centre_inputs, results)


@META_ARCH_REGISTRY.register()
class TemporalRetinaNet(_ClipInputs, RetinaNet):
    """RetinaNet on a temporal backbone, with DR-IoU among its box regression losses."""

    @configurable
    def __init__(self, *, dr_iou_beta: float = 0.25, **kwargs):
        """``dr_iou_beta``: DR-IoU's margin; other arguments as :class:`RetinaNet`."""
        super().__init__(**kwargs)
        _check_backbone(self.backbone)
        check_box_reg_loss_type(self.box_reg_loss_type, "MODEL.RETINANET.BBOX_REG_LOSS_TYPE")
        self.dr_iou_beta = dr_iou_beta

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        # Check the cheap things before building anything.
        check_temporal_config(cfg)
        check_box_reg_loss_type(cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE, "MODEL.RETINANET.BBOX_REG_LOSS_TYPE")
        ret = super().from_config(cfg)
        ret["dr_iou_beta"] = cfg.MODEL.DR_IOU.BETA
        return ret

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        if not self.training:
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        predictions = self.head(features)
        if "instances" not in batched_inputs[0]:
            raise DSAInputError("model input: training needs \"instances\" in every input dict.")
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        losses = self.forward_training(images, features, predictions, gt_instances)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            # Detections on the training batch, decoded from copies: inference sigmoids in place.
            with torch.no_grad():
                copies = [[p.detach().clone() for p in level] for level in predictions]
                results = self.forward_inference(images, features, copies)
            self.visualize_training(batched_inputs, results)
        return losses

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """RetinaNet's focal and box losses (see :meth:`RetinaNet.losses`), DR-IoU included."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)

        valid_mask = gt_labels >= 0
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)

        # No loss for the last (background) column of the one-hot targets.
        gt_labels_target = F.one_hot(gt_labels[valid_mask], num_classes=self.num_classes + 1)[:, :-1]
        # fvcore's eager focal loss, not Detectron2's TorchScript one: a scripted function that an
        # earlier caller in the process had run optimised keeps its optimised graph, whose
        # gradients differ in the last bits, so a training would depend on what ran before it.
        loss_cls = sigmoid_focal_loss(
            cat(pred_logits, dim=1)[valid_mask],
            gt_labels_target.to(pred_logits[0].dtype),
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )
        loss_box_reg = dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
            dr_iou_beta=self.dr_iou_beta,
        )
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}


@META_ARCH_REGISTRY.register()
class TemporalGeneralizedRCNN(_ClipInputs, GeneralizedRCNN):
    """Faster / Cascade R-CNN on a temporal backbone (RPN and ROI heads on the fused features)."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _check_backbone(self.backbone)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        check_temporal_config(cfg)
        box_loss = cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE
        check_box_reg_loss_type(box_loss, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE")
        rpn_loss = cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE
        if rpn_loss not in _RPN_BOX_REG_LOSS_TYPES:
            raise DSAInputError(
                f"config: MODEL.RPN.BBOX_REG_LOSS_TYPE is {rpn_loss!r}; valid choices are "
                f"{', '.join(_RPN_BOX_REG_LOSS_TYPES)}."
            )
        ret = super().from_config(cfg)
        predictors = getattr(ret["roi_heads"], "box_predictor", None)
        if not isinstance(predictors, torch.nn.ModuleList):
            predictors = [predictors]
        if box_loss == "dr_iou" and not all(isinstance(p, DSAFastRCNNOutputLayers) for p in predictors):
            raise DSAInputError(
                f"config: MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE is 'dr_iou' but MODEL.ROI_HEADS.NAME "
                f"{cfg.MODEL.ROI_HEADS.NAME!r} has no DR-IoU box predictor; valid choices are "
                "DSAROIHeads (Faster R-CNN) and DSACascadeROIHeads (Cascade R-CNN)."
            )
        return ret
