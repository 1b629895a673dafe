"""ImageNet starts: torchvision and MSRA/FAIR checkpoints load into configs/pretrained/, or fail clearly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from helpers.threads import one_thread  # noqa: F401 (autouse fixture)

import perforation_d2
from perforation_d2.engine import SafeDetectionCheckpointer
from perforation_d2.errors import DSAInputError
from perforation_d2.modeling.time_course import time_course_maps

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _cfg(name: str):
    cfg = get_cfg()
    perforation_d2.add_perforation_config(cfg)
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _random_torchvision(depth: int) -> torch.nn.Module:
    torch.manual_seed(depth)
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    with torch.no_grad():
        # Non-trivial BatchNorm statistics and affine terms, so that a wrong mapping shows.
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    return net.eval()


def _torchvision_stages(net: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = {}
    for index in range(1, 5):
        x = getattr(net, f"layer{index}")(x)
        out[f"res{index + 1}"] = x
    return out


@pytest.mark.parametrize("depth, config", [
    (18, "pretrained/quick_retinanet_R18_torchvision.yaml"),
    (18, "pretrained/quick_retinanet_tconv_T5_R18_torchvision.yaml"),
    (50, "pretrained/retinanet_R50_FPN_torchvision.yaml"),
])
def test_torchvision_resnet_loads_and_gives_torchvisions_features(tmp_path, depth, config):
    net = _random_torchvision(depth)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(net.state_dict(), path)  # exactly as torchvision users save it
    model = build_model(_cfg(config)).eval()
    SafeDetectionCheckpointer(model).load(str(path))
    bottom_up = model.backbone.spatial.bottom_up
    stem = bottom_up.stem.conv1.weight
    assert torch.equal(stem, net.conv1.weight)  # the first conv, copied as it is
    x = torch.randn(1, 3, 64, 64)
    expected = _torchvision_stages(net, x)
    bottom_up._out_features = ["res2", "res3", "res4", "res5"]  # ask for every stage
    with torch.no_grad():
        got = bottom_up(x)
    for stage in ("res2", "res3", "res4", "res5"):
        torch.testing.assert_close(got[stage], expected[stage], rtol=1e-4, atol=1e-5)


def _caffe2_name(d2_key: str) -> str:
    """Detectron2's ResNet name -> the MSRA .pkl name (written out here, independently of the loader)."""
    key = d2_key.replace("stem.conv1.norm.weight", "res_conv1_bn_s").replace("stem.conv1.norm.bias", "res_conv1_bn_b")
    key = key.replace("stem.conv1.weight", "conv1_w")
    for d2, c2 in ((".shortcut", ".branch1"), (".conv1", ".branch2a"), (".conv2", ".branch2b"), (".conv3", ".branch2c")):
        key = key.replace(d2, c2)
    key = key.replace(".norm.weight", "_bn_s").replace(".norm.bias", "_bn_b").replace(".weight", "_w")
    return key.replace(".", "_")


def test_msra_pkl_loads_through_the_restricted_unpickler(tmp_path):
    model = build_model(_cfg("pretrained/retinanet_R50_FPN_msra.yaml")).eval()
    bottom_up = model.backbone.spatial.bottom_up
    rng = np.random.default_rng(0)
    blobs = {
        _caffe2_name(k): rng.normal(size=tuple(v.shape)).astype(np.float32)
        for k, v in bottom_up.state_dict().items() if not k.endswith(("running_mean", "running_var"))
    }
    blobs["fc1000_w"] = rng.normal(size=(1000, 2048)).astype(np.float32)
    blobs["fc1000_b"] = np.zeros(1000, dtype=np.float32)
    assert "res2_0_branch2a_w" in blobs and "res_conv1_bn_s" in blobs and "res5_2_branch2c_bn_b" in blobs
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"blobs": blobs}, handle)
    SafeDetectionCheckpointer(model).load(str(path))
    state = bottom_up.state_dict()
    for d2_key, c2_key in (("stem.conv1.weight", "conv1_w"), ("res3.1.conv2.norm.weight", "res3_1_branch2b_bn_s"),
                           ("res4.0.shortcut.weight", "res4_0_branch1_w")):
        assert torch.equal(state[d2_key], torch.from_numpy(blobs[c2_key]))
    # Folded BatchNorm: FrozenBN's own statistics stay, so the layer is exactly x * s + b.
    norm = bottom_up.res2[0].conv1.norm
    x = torch.randn(1, 64, 3, 3)
    s, b = (torch.from_numpy(blobs[f"res2_0_branch2a_bn_{k}"]) for k in "sb")
    torch.testing.assert_close(norm(x), x * s[None, :, None, None] + b[None, :, None, None])


def test_unmatched_keys_are_one_clear_paragraph(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(_random_torchvision(18).state_dict(), path)
    model = build_model(_cfg("pretrained/retinanet_R50_FPN_torchvision.yaml"))  # a ResNet-50 model
    with pytest.raises(DSAInputError) as info:
        SafeDetectionCheckpointer(model).load(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: read as torchvision ImageNet weights, but they do not fit")
    assert "have another shape in the model (res2.0.conv1.weight (64, 64, 3, 3) vs (64, 64, 1, 1)" in message
    assert "ResNet keys of the model are not in the checkpoint (res2.0.conv3.norm.bias" in message
    assert "Supported formats: a torchvision ResNet state_dict" in message and "R-50.pkl" in message
    assert "\n" not in message
    # BatchNorm statistics into a GroupNorm model: the hint names the norm to use.
    gn_model = build_model(_cfg("quick/retinanet.yaml"))
    with pytest.raises(DSAInputError, match="use MODEL.RESNETS.NORM FrozenBN"):
        SafeDetectionCheckpointer(gn_model).load(str(path))


def test_other_checkpoints_load_as_before(tmp_path):
    model = build_model(_cfg("quick/retinanet.yaml"))
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    other = build_model(_cfg("quick/retinanet.yaml"))
    SafeDetectionCheckpointer(other).load(str(path))
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("maps, channels, centre", [
    (["frames"], 5, 2),
    (["extrema", "frames", "differences"], 13, 6),  # the centre frame after the 4 extrema maps
])
def test_rgb_stem_inflates_onto_the_input_fusion_stem(tmp_path, maps, channels, centre):
    net = _random_torchvision(18)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    cfg = _cfg("pretrained/quick_retinanet_input_T5_R18_torchvision.yaml")
    cfg.MODEL.TEMPORAL.INPUT_MAPS = maps
    model = build_model(cfg).eval()
    SafeDetectionCheckpointer(model).load(str(path))
    bottom_up = model.backbone.spatial.bottom_up
    stem = bottom_up.stem.conv1.weight
    assert stem.shape == (64, channels, 7, 7)
    assert torch.equal(stem[:, centre], net.conv1.weight.sum(dim=1))
    assert not stem[:, [c for c in range(channels) if c != centre]].any()
    # A clip of one repeated grey frame then gives torchvision's features of that frame in RGB.
    grey = torch.randn(1, 1, 64, 64)
    expected = _torchvision_stages(net, grey.expand(1, 3, 64, 64))
    bottom_up._out_features = ["res5"]
    with torch.no_grad():
        got = bottom_up(time_course_maps(grey.expand(1, 5, 64, 64), maps))
    torch.testing.assert_close(got["res5"], expected["res5"], rtol=1e-4, atol=1e-4)
