"""Spatio-temporal perforation detectors (paper sections 2.1-2.3).

Importing this package registers with Detectron2's registries: the temporal backbones
(``BACKBONE_REGISTRY``), ``TemporalRetinaNet`` and ``TemporalGeneralizedRCNN``
(``META_ARCH_REGISTRY``), ``DSAROIHeads`` and ``DSACascadeROIHeads`` (``ROI_HEADS_REGISTRY``), and
the temporal fusion modules (``TEMPORAL_MODULE_REGISTRY``).
"""

from .backbone import (
    TemporalBackbone,
    build_temporal_backbone,
    build_temporal_resnet_fpn_backbone,
    build_temporal_retinanet_resnet_fpn_backbone,
)
from .losses import BOX_REG_LOSS_TYPES, dr_iou_loss
from .meta_arch import TemporalGeneralizedRCNN, TemporalRetinaNet
from .roi_heads import DSACascadeROIHeads, DSAFastRCNNOutputLayers, DSAROIHeads
from .temporal_modules import (
    TEMPORAL_MODULE_REGISTRY,
    BiConvGRU,
    BiConvLSTM,
    TemporalAttention,
    TemporalConv,
    build_temporal_module,
)

__all__ = [
    "BOX_REG_LOSS_TYPES",
    "TEMPORAL_MODULE_REGISTRY",
    "BiConvGRU",
    "BiConvLSTM",
    "DSACascadeROIHeads",
    "DSAFastRCNNOutputLayers",
    "DSAROIHeads",
    "TemporalAttention",
    "TemporalBackbone",
    "TemporalConv",
    "TemporalGeneralizedRCNN",
    "TemporalRetinaNet",
    "build_temporal_backbone",
    "build_temporal_module",
    "build_temporal_resnet_fpn_backbone",
    "build_temporal_retinanet_resnet_fpn_backbone",
    "dr_iou_loss",
]
