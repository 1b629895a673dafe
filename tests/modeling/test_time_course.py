"""Time-course maps (MODEL.TEMPORAL.INPUT_MAPS): what they compute, and how ablations act on them."""

from __future__ import annotations

import re

import pytest
import torch
from detectron2.modeling import build_backbone

from perforation_d2.errors import DSAInputError
from perforation_d2.modeling.time_course import centre_channel, time_course_channels, time_course_maps

ALL_MAPS = ["frames", "extrema", "differences"]


def test_channels_and_centre_follow_the_listed_order():
    assert time_course_channels(ALL_MAPS, 5) == 5 + 4 + 4
    assert time_course_channels(["extrema"], 9) == 4
    assert centre_channel(ALL_MAPS, 5) == 2
    assert centre_channel(["differences", "frames"], 5) == 4 + 2
    assert centre_channel(["extrema", "differences"], 5) is None
    maps = time_course_maps(torch.randn(2, 5, 6, 6), ["differences", "frames"])
    assert maps.shape == (2, 9, 6, 6)


def test_a_growing_pixel_and_a_jumping_pixel_differ_where_frames_alone_need_comparing():
    growing = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]).view(1, 5, 1, 1)
    jumping = torch.tensor([3.0, 0.5, 2.0, 4.0, 1.0]).view(1, 5, 1, 1)  # same centre value
    rise_past, fall_past, rise_future, fall_future = time_course_maps(growing, ["extrema"]).flatten().tolist()
    # Filled before the centre frame and filling after it: no rise before, no fall after.
    assert (rise_past, fall_past, rise_future, fall_future) == (0.0, 2.0, 2.0, 0.0)
    assert time_course_maps(jumping, ["extrema"]).flatten().tolist() == [1.0, 1.5, 2.0, 1.0]
    assert time_course_maps(growing, ["differences"]).flatten().tolist() == [1.0, 1.0, 1.0, 1.0]


def test_clip_ablations_act_on_the_maps():
    clip = torch.randn(3, 5, 8, 8)
    maps = time_course_maps(clip, ALL_MAPS)
    # Centre frame repeated: every map but the frames is 0, the frames are the centre frame.
    static = time_course_maps(clip[:, 2:3].expand(-1, 5, -1, -1), ALL_MAPS)
    assert not static[:, 5:].any()
    assert torch.equal(static[:, :5], clip[:, 2:3].expand(-1, 5, -1, -1))
    # Reversed: past and future extrema swap, the differences reverse and change sign.
    reverse = time_course_maps(clip.flip(1), ALL_MAPS)
    assert torch.equal(reverse[:, 5:9], maps[:, [7, 8, 5, 6]])
    assert torch.equal(reverse[:, 9:], -maps[:, 9:].flip(1))
    assert torch.equal(time_course_maps(clip, ["frames"]), clip)


@pytest.mark.parametrize("maps, problem", [
    (["frames", "speed"], "'speed' is not a map"),
    ([], "it is empty"),
    (["frames", "frames"], "a map is listed twice"),
    ("frames", "the string 'frames'; it must be a list"),
])
def test_bad_input_maps_are_one_clear_error(maps, problem):
    from helpers.series_models import quick_cfg

    cfg = quick_cfg("retinanet_input_T5.yaml")
    cfg.MODEL.TEMPORAL.INPUT_MAPS = maps
    with pytest.raises(DSAInputError, match=f"MODEL.TEMPORAL.INPUT_MAPS is .*{re.escape(problem)}.*frames, extrema, differences"):
        build_backbone(cfg)


def test_maps_config_builds_a_stem_of_every_map_channel():
    from helpers.series_models import quick_cfg

    backbone = build_backbone(quick_cfg("retinanet_maps_T5.yaml")).eval()
    assert backbone.spatial.bottom_up.stem.conv1.weight.shape[1] == 13
    assert backbone.input_centre_channel == 2
    clips = torch.randn(2, 5, 1, 64, 64).expand(-1, -1, 3, -1, -1)
    with torch.no_grad():
        fused = backbone(clips)
        centre_repeated = backbone(clips[:, 2:3].expand(-1, 5, -1, -1, -1))
    assert fused["p3"].shape[0] == 2
    assert not torch.allclose(fused["p3"], centre_repeated["p3"], atol=1e-4)
