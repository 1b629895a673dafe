"""TemporalBackbone: the backbone contract, T = 1 equivalence and activation checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone, build_retinanet_resnet_fpn_backbone

from perforation_d2 import add_perforation_config
from perforation_d2.errors import DSAInputError
from perforation_d2.modeling.backbone import TemporalBackbone

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _cfg(config: str = "quick/retinanet.yaml", num_frames: int = 1, **temporal):
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.MODEL.TEMPORAL.NUM_FRAMES = num_frames
    for key, value in temporal.items():
        cfg.MODEL.TEMPORAL[key] = value
    return cfg


@pytest.mark.parametrize(
    "config, plain_builder, levels",
    [
        ("quick/retinanet.yaml", build_retinanet_resnet_fpn_backbone, ["p3", "p4", "p5", "p6", "p7"]),
        ("quick/faster_rcnn.yaml", build_resnet_fpn_backbone, ["p2", "p3", "p4", "p5", "p6"]),
    ],
)
def test_single_frame_wrapper_is_exactly_the_plain_backbone(config, plain_builder, levels):
    cfg = _cfg(config, num_frames=1)
    torch.manual_seed(0)
    wrapper = build_backbone(cfg)
    plain = plain_builder(cfg, ShapeSpec(channels=3))
    wrapper.spatial.load_state_dict(plain.state_dict())
    assert isinstance(wrapper, TemporalBackbone) and wrapper.temporal is None
    assert wrapper.num_frames == 1
    assert sorted(wrapper.output_shape()) == levels
    assert wrapper.output_shape() == plain.output_shape()
    assert wrapper.size_divisibility == plain.size_divisibility
    assert wrapper.padding_constraints == plain.padding_constraints
    # Same parameters: nothing is added for T = 1.
    assert sum(p.numel() for p in wrapper.parameters()) == sum(p.numel() for p in plain.parameters())
    frames = torch.randn(2, 3, 64, 64)
    wrapper.eval()
    plain.eval()
    with torch.no_grad():
        ours = wrapper(frames[:, None])
        theirs = plain(frames)
    assert sorted(ours) == levels
    for level in levels:
        assert torch.equal(ours[level], theirs[level]), level


def test_forward_is_forward_frames_then_fuse():
    cfg = _cfg(num_frames=3, MODULE="BiConvGRU")
    backbone = build_backbone(cfg).eval()
    assert backbone.num_frames == 3 and set(backbone.temporal) == set(backbone.output_shape())
    # One module per level, not shared.
    assert len({id(m) for m in backbone.temporal.values()}) == len(backbone.temporal)
    clips = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        fused = backbone(clips)
        frames = backbone.forward_frames(clips.flatten(0, 1))
        by_parts = backbone.fuse({k: v.unflatten(0, (2, 3)) for k, v in frames.items()})
    for level, shape in backbone.output_shape().items():
        assert fused[level].shape == (2, shape.channels, -(-64 // shape.stride), -(-64 // shape.stride))
        torch.testing.assert_close(fused[level], by_parts[level])


def test_clip_length_mismatch_names_both():
    backbone = build_backbone(_cfg(num_frames=5))
    with pytest.raises(DSAInputError, match=r"3 frames.*NUM_FRAMES = 5"):
        backbone(torch.randn(1, 3, 3, 64, 64))


def test_generic_builder_wraps_the_named_spatial_builder():
    cfg = _cfg("quick/faster_rcnn.yaml", num_frames=3)
    cfg.MODEL.BACKBONE.NAME = "build_temporal_backbone"
    cfg.MODEL.TEMPORAL.SPATIAL_BACKBONE = "build_resnet_fpn_backbone"
    assert sorted(build_backbone(cfg).output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    for bad in ("build_fancy_backbone", "build_temporal_backbone"):
        cfg.MODEL.TEMPORAL.SPATIAL_BACKBONE = bad
        with pytest.raises(DSAInputError) as err:
            build_backbone(cfg)
        assert "MODEL.TEMPORAL.SPATIAL_BACKBONE" in str(err.value)
        assert "build_retinanet_resnet_fpn_backbone" in str(err.value)
    assert "build_temporal_backbone" in BACKBONE_REGISTRY


def _loss_and_grads(backbone: TemporalBackbone, clips: torch.Tensor):
    backbone.zero_grad()
    features = backbone(clips)
    # A loss that weighs every level and position differently.
    loss = sum((f * torch.linspace(0.5, 1.5, f.numel()).view_as(f)).sum() for f in features.values())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in backbone.named_parameters()}


def _assert_grads_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    # Segments run convolutions on fewer frames, which may sum in another order (more so with
    # several threads: up to ~1.2e-5 of the scale was seen with 2): compare each gradient
    # relative to its own scale. A wrong recomputation is off by O(1) of the scale.
    for name, grad in expected.items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=1e-4 * scale, msg=name)


def test_checkpointing_gives_the_same_loss_and_gradients_with_groupnorm():
    cfg = _cfg(num_frames=3)  # quick configs use GroupNorm
    torch.manual_seed(0)
    plain = build_backbone(cfg).train()
    cfg.MODEL.TEMPORAL.CHECKPOINT_BACKBONE = True
    checkpointed = build_backbone(cfg).train()
    checkpointed.load_state_dict(plain.state_dict())
    clips = torch.randn(2, 3, 3, 64, 64)
    loss, grads = _loss_and_grads(plain, clips)
    ckpt_loss, ckpt_grads = _loss_and_grads(checkpointed, clips)
    torch.testing.assert_close(ckpt_loss, loss)
    _assert_grads_close(ckpt_grads, grads)


def _batchnorm_stats(backbone: TemporalBackbone) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in backbone.named_buffers() if "running" in n or "num_batches" in n}


def test_checkpointing_updates_batchnorm_statistics_once():
    cfg = _cfg(num_frames=3)
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.NORM = ""
    torch.manual_seed(0)
    plain = build_backbone(cfg).train()
    cfg.MODEL.TEMPORAL.CHECKPOINT_BACKBONE = True
    cfg.MODEL.TEMPORAL.CHECKPOINT_CHUNK_FRAMES = 6  # one segment holds all 2 x 3 frames
    checkpointed = build_backbone(cfg).train()
    checkpointed.load_state_dict(plain.state_dict())
    clips = torch.randn(2, 3, 3, 64, 64)
    loss, grads = _loss_and_grads(plain, clips)
    ckpt_loss, ckpt_grads = _loss_and_grads(checkpointed, clips)
    torch.testing.assert_close(ckpt_loss, loss)
    _assert_grads_close(ckpt_grads, grads)
    stats, ckpt_stats = _batchnorm_stats(plain), _batchnorm_stats(checkpointed)
    assert stats and all(int(v) == 1 for n, v in stats.items() if "num_batches" in n)
    for name, value in stats.items():
        torch.testing.assert_close(ckpt_stats[name], value, msg=name)

    # Segments of 2 frames: three BatchNorm updates in the forward pass, none in the recomputation.
    segmented = build_backbone(cfg.clone()).train()
    segmented.checkpoint_chunk_frames = 2
    segmented.load_state_dict(plain.state_dict())  # also copies num_batches_tracked = 1
    _loss_and_grads(segmented, clips)
    counts = {int(v) for n, v in _batchnorm_stats(segmented).items() if "num_batches" in n}
    assert counts == {1 + 3}


def test_checkpointing_with_frozen_batchnorm_statistics_matches():
    cfg = _cfg(num_frames=3, MODULE="TemporalAttention", CHECKPOINT_CHUNK_FRAMES=1)
    cfg.MODEL.RESNETS.NORM = "BN"
    torch.manual_seed(0)
    plain = build_backbone(cfg).train()
    cfg.MODEL.TEMPORAL.CHECKPOINT_BACKBONE = True
    checkpointed = build_backbone(cfg).train()
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()  # running statistics, as when fine-tuning with frozen statistics
    clips = torch.randn(1, 3, 3, 64, 64)
    loss, grads = _loss_and_grads(plain, clips)
    ckpt_loss, ckpt_grads = _loss_and_grads(checkpointed, clips)
    torch.testing.assert_close(ckpt_loss, loss)
    _assert_grads_close(ckpt_grads, grads)


def test_checkpointing_is_off_at_inference():
    cfg = _cfg(num_frames=3, CHECKPOINT_BACKBONE=True)
    backbone = build_backbone(cfg).eval()
    calls = []
    backbone.spatial.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        backbone(torch.randn(2, 3, 3, 64, 64))
    assert len(calls) == 1  # all six frames in one pass, no segments


def test_input_fusion_runs_one_backbone_on_the_stacked_grey_frames():
    cfg = _cfg("quick/retinanet_input_T5.yaml", num_frames=5)
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    assert backbone.input_fusion and backbone.temporal is None
    assert backbone.spatial.bottom_up.stem.conv1.weight.shape[1] == 5  # one input channel per slot
    torch.manual_seed(1)
    plain = build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=5)).eval()
    plain.load_state_dict(backbone.spatial.state_dict())
    grey = torch.randn(2, 5, 1, 64, 64)
    clips = grey.expand(-1, -1, 3, -1, -1)  # grey replicated to 3 channels, as the mapper sends it
    with torch.no_grad():
        fused = backbone(clips)
        frames = backbone.forward_frames(clips.flatten(0, 1))
        by_parts = backbone.fuse({k: v.unflatten(0, (2, 5)) for k, v in frames.items()})
        expected = plain(grey.flatten(1, 2))
        reversed_clip = backbone(clips.flip(1))
    assert list(frames) == ["input"] and frames["input"].shape == (10, 1, 64, 64)
    assert sorted(fused) == sorted(expected)
    for level in expected:
        assert torch.equal(fused[level], expected[level]), level
        assert torch.equal(by_parts[level], expected[level]), level
    # The stem sees frame order: a clip and its reverse give different features.
    assert not torch.allclose(reversed_clip["p3"], fused["p3"], atol=1e-4)


@pytest.mark.parametrize("config", ["retinanet_input_T5.yaml", "retinanet_maps_T5.yaml"])
def test_input_fusion_cached_series_inference_equals_the_naive_path(config):
    from detectron2.modeling import build_model
    from helpers.series_models import quick_cfg, random_frames, widen_heads

    from perforation_d2.modeling.series_inference import SeriesPredictor, naive_predict_series

    torch.manual_seed(0)
    cfg = quick_cfg(config, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    model = widen_heads(build_model(cfg).eval())
    frames = random_frames(7)
    predictor = SeriesPredictor(model, 64, batch_size=3)
    cached = predictor(frames)
    naive = naive_predict_series(model, frames, 64, batch_size=3)
    assert predictor.backbone_frames == 7
    assert len(cached) == len(naive) == 7
    for a, b in zip(cached, naive):
        assert len(a) == len(b) == 1
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


def test_unknown_fusion_is_one_clear_error():
    with pytest.raises(DSAInputError, match="MODEL.TEMPORAL.FUSION is 'late'.*features, input"):
        build_backbone(_cfg(num_frames=5, FUSION="late"))
