"""TemporalAttention queries with the CENTRE frame (slot T // 2), at every feature point.

The expected weights and output are computed here from the module's own parameters with einsum,
``softmax_t((W_q x_c + b_q) . (W_k x_t) / sqrt(D))``, and compared with what the module does; a
query taken from frame 0 (or any other slot) gives other weights. A second test changes only
frame 0: with the centre as query, the weight ratios among the other frames stay the same.
"""

from __future__ import annotations

import math

import pytest
import torch

from perforation_d2.config import add_perforation_config
from perforation_d2.modeling.temporal_modules import TemporalAttention


def _attention(num_frames: int, channels: int, dim: int = 8) -> TemporalAttention:
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.MODEL.TEMPORAL.NUM_FRAMES = num_frames
    cfg.MODEL.TEMPORAL.ATTENTION_DIM = dim
    torch.manual_seed(0)
    module = TemporalAttention(cfg, channels=channels)
    with torch.no_grad():  # non-trivial biases so that every term matters
        module.query.bias.normal_()
        module.out_proj.bias.normal_()
    return module


@pytest.mark.parametrize("num_frames", [3, 5])
def test_weights_and_output_follow_the_centre_frame_query(num_frames):
    channels, dim = 6, 8
    module = _attention(num_frames, channels, dim)
    x = torch.randn(2, num_frames, channels, 4, 3)
    centre = num_frames // 2
    wq = module.query.weight[:, :, 0, 0]
    wk = module.key.weight[:, :, 0, 0]
    query = torch.einsum("dc,nchw->ndhw", wq, x[:, centre]) + module.query.bias[None, :, None, None]
    keys = torch.einsum("dc,ntchw->ntdhw", wk, x)
    logits = torch.einsum("ndhw,ntdhw->nthw", query, keys) / math.sqrt(dim)
    weights = logits.softmax(dim=1)
    with torch.no_grad():
        torch.testing.assert_close(module.attention_weights(x), weights)
        attended = torch.einsum("nthw,ntchw->nchw", weights, x)
        projected = torch.einsum("oc,nchw->nohw", module.out_proj.weight[:, :, 0, 0], attended)
        expected = x[:, centre] + projected + module.out_proj.bias[None, :, None, None]
        torch.testing.assert_close(module(x), expected)


def test_the_query_is_not_the_first_frame():
    module = _attention(5, 6)
    x = torch.randn(1, 5, 6, 4, 4)
    other = x.clone()
    other[:, 0] = torch.randn(1, 6, 4, 4)  # only frame 0 changes
    with torch.no_grad():
        w_x = module.attention_weights(x)
        w_other = module.attention_weights(other)
    # Logit differences among frames 1..4 depend only on the query and on their keys, which did not
    # change: softmax ratios between unchanged frames stay the same when the query is the centre.
    ratio = lambda w: w[:, 1:] / w[:, 1:2]  # noqa: E731
    torch.testing.assert_close(ratio(w_x), ratio(w_other))
