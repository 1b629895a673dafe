"""configs/: every YAML loads and builds; the paper's schedule; leaves say only what differs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from perforation_d2 import add_perforation_config
from perforation_d2.modeling import TemporalBackbone

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL_YAMLS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))
FULL_BASES = ["Base-DSA-RetinaNet.yaml", "Base-DSA-RCNN.yaml"]

# Table 1 (and sections 4.4 / 4.7) variants: (meta-architecture, ROI heads, T, temporal module).
RETINA, RCNN = "TemporalRetinaNet", "TemporalGeneralizedRCNN"
VARIANTS = {
    "faster_rcnn_R50_FPN.yaml": (RCNN, "DSAROIHeads", 1, None),
    "cascade_rcnn_R50_FPN.yaml": (RCNN, "DSACascadeROIHeads", 1, None),
    "retinanet_R50_FPN.yaml": (RETINA, None, 1, None),
    "retinanet_R50_FPN_diou.yaml": (RETINA, None, 1, None),
    "retinanet_R50_FPN_tconv_T5.yaml": (RETINA, None, 5, "TemporalConv"),
    "retinanet_R50_FPN_tattn_T5.yaml": (RETINA, None, 5, "TemporalAttention"),
    "retinanet_R50_FPN_bigru_T5.yaml": (RETINA, None, 5, "BiConvGRU"),
    "retinanet_R50_FPN_bilstm_T5.yaml": (RETINA, None, 5, "BiConvLSTM"),
    "retinanet_R50_FPN_tconv_T3.yaml": (RETINA, None, 3, "TemporalConv"),
    "retinanet_R50_FPN_tconv_T9_ckpt.yaml": (RETINA, None, 9, "TemporalConv"),
    "quick/retinanet.yaml": (RETINA, None, 1, None),
    "quick/retinanet_tconv_T5.yaml": (RETINA, None, 5, "TemporalConv"),
    "quick/retinanet_tattn_T5.yaml": (RETINA, None, 5, "TemporalAttention"),
    "quick/retinanet_bigru_T5.yaml": (RETINA, None, 5, "BiConvGRU"),
    "quick/retinanet_bilstm_T5.yaml": (RETINA, None, 5, "BiConvLSTM"),
    "quick/faster_rcnn.yaml": (RCNN, "DSAROIHeads", 1, None),
    "quick/cascade_rcnn.yaml": (RCNN, "DSACascadeROIHeads", 1, None),
}


def load(name: str) -> CfgNode:
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.merge_from_file(str(CONFIGS / name))
    return cfg


@pytest.mark.parametrize("name", ALL_YAMLS)
def test_every_config_builds_a_model(name):
    cfg = load(name)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)  # full-size models are built, not run (tests/test_models.py runs quick ones)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert isinstance(model.backbone, TemporalBackbone)
    assert model.backbone.num_frames == cfg.MODEL.TEMPORAL.NUM_FRAMES
    assert model.backbone.checkpoint_backbone == cfg.MODEL.TEMPORAL.CHECKPOINT_BACKBONE
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters()))  # nothing frozen
    frozen_bn = any("FrozenBatchNorm" in type(m).__name__ for m in model.modules())
    if name.startswith("pretrained/"):
        # ImageNet starts keep the checkpoint's norm: its BatchNorm statistics frozen, or GroupNorm.
        assert cfg.MODEL.RESNETS.NORM in ("FrozenBN", "GN") and frozen_bn == (cfg.MODEL.RESNETS.NORM == "FrozenBN")
    else:
        assert not frozen_bn  # trained from scratch
    assert all(torch.isfinite(p).all() for p in trainable)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_paper_variants(name):
    meta_arch, roi_heads, num_frames, module = VARIANTS[name]
    cfg = load(name)
    assert cfg.MODEL.META_ARCHITECTURE == meta_arch
    assert cfg.MODEL.TEMPORAL.NUM_FRAMES == num_frames
    if module is not None:
        assert cfg.MODEL.TEMPORAL.MODULE == module
    if roi_heads is not None:
        assert cfg.MODEL.ROI_HEADS.NAME == roi_heads
    loss = cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE if meta_arch == RETINA else cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE
    assert loss == ("diou" if name.endswith("_diou.yaml") else "dr_iou")
    assert cfg.MODEL.TEMPORAL.CHECKPOINT_BACKBONE == name.endswith("_ckpt.yaml")


@pytest.mark.parametrize("name", FULL_BASES)
def test_bases_follow_the_paper(name):
    cfg = load(name)
    solver = cfg.SOLVER
    assert (solver.MOMENTUM, solver.WEIGHT_DECAY, solver.BASE_LR) == (0.9, 1e-4, 5e-4)
    assert solver.LR_SCHEDULER_NAME == "WarmupCosineLR"
    assert (solver.WARMUP_METHOD, solver.WARMUP_ITERS) == ("exponential", 1500)
    assert solver.BASE_LR_END == pytest.approx(0.001 * solver.BASE_LR)
    assert solver.IMS_PER_BATCH == 2
    assert cfg.INPUT.FRAME_SIZE == 640 and cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53]
    assert cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.NORM in ("BN", "GN", "SyncBN")
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.WEIGHTS == ""
    heads = cfg.MODEL.RETINANET if cfg.MODEL.META_ARCHITECTURE == RETINA else cfg.MODEL.ROI_HEADS
    assert heads.NUM_CLASSES == 1
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 1
    assert cfg.MODEL.DR_IOU.BETA == 0.25
    assert cfg.DATASETS.TRAIN == ("synth_fold0_train",) and cfg.DATASETS.TEST == ("synth_fold0_val",)


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", [n for n in ALL_YAMLS if not Path(n).name.startswith("Base-")])
def test_leaves_say_only_what_differs(name):
    raw = yaml.safe_load((CONFIGS / name).read_text())
    base_name = str(Path(name).parent / raw.pop("_BASE_"))
    base, leaf = load(base_name), load(name)
    for key in _flat(raw):
        if key == "MODEL.TEMPORAL.MODULE":
            continue  # may be restated: it names the variant
        node_base, node_leaf = base, leaf
        for part in key.split("."):
            node_base, node_leaf = node_base[part], node_leaf[part]
        assert node_leaf != node_base, f"{name} repeats {key} = {node_leaf!r} from {base_name}"


@pytest.mark.parametrize("name", [n for n in ALL_YAMLS if n.startswith("quick/")])
def test_quick_configs_are_tiny_cpu_variants(name):
    cfg = load(name)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.DATALOADER.NUM_WORKERS == 0
    assert cfg.INPUT.FRAME_SIZE <= 128 and cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.MODEL.FPN.OUT_CHANNELS == 64 and cfg.SOLVER.IMS_PER_BATCH == 2
    assert cfg.SOLVER.MAX_ITER <= 500 and cfg.TEST.DETECTIONS_PER_IMAGE == 1
    assert min(min(sizes) for sizes in cfg.MODEL.ANCHOR_GENERATOR.SIZES) <= 8
