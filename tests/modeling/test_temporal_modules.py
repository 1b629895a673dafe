"""Temporal fusion modules: shapes for any H, W and odd T, centre-frame semantics, registry errors."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import get_cfg

from perforation_d2 import add_perforation_config
from perforation_d2.errors import DSAInputError
from perforation_d2.modeling.temporal_modules import (
    TEMPORAL_MODULE_REGISTRY,
    BiConvGRU,
    BiConvLSTM,
    ConvGRUCell,
    ConvLSTMCell,
    TemporalAttention,
    TemporalConv,
    build_temporal_module,
    check_temporal_config,
)

MODULES = ["TemporalConv", "TemporalAttention", "BiConvGRU", "BiConvLSTM"]


def _cfg(module: str = "TemporalConv", num_frames: int = 5, **temporal):
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.MODEL.TEMPORAL.MODULE = module
    cfg.MODEL.TEMPORAL.NUM_FRAMES = num_frames
    cfg.MODEL.TEMPORAL.ATTENTION_DIM = 4
    for key, value in temporal.items():
        cfg.MODEL.TEMPORAL[key] = value
    return cfg


def test_registry_holds_the_papers_modules():
    assert sorted(name for name, _ in TEMPORAL_MODULE_REGISTRY) == sorted(MODULES)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("num_frames", [3, 5])
def test_any_spatial_size_and_gradients(module, num_frames):
    torch.manual_seed(0)
    fusion = build_temporal_module(_cfg(module, num_frames), channels=6)
    for shape in [(2, num_frames, 6, 5, 7), (1, num_frames, 6, 3, 11)]:
        out = fusion(torch.randn(shape))
        assert out.shape == (shape[0], 6, shape[3], shape[4])
    out.square().sum().backward()
    for name, param in fusion.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("module", MODULES)
def test_wrong_clip_length_is_rejected(module):
    fusion = build_temporal_module(_cfg(module, 5), channels=4)
    with pytest.raises(ValueError, match=r"\(N, 5, C, H, W\)"):
        fusion(torch.randn(1, 3, 4, 5, 5))


def test_temporal_conv_centre_init_returns_the_centre_map():
    x = torch.randn(2, 5, 8, 6, 9)
    conv = TemporalConv(_cfg(num_frames=5, CENTRE_INIT=True), channels=8)
    assert conv.conv.kernel_size == (5, 1, 1)
    torch.testing.assert_close(conv(x), x[:, 2])
    mean_conv = TemporalConv(_cfg(num_frames=5, CENTRE_INIT=False), channels=8)
    torch.testing.assert_close(mean_conv(x), x.mean(dim=1))


def test_temporal_conv_mixes_only_each_pixels_own_time_curve():
    conv = TemporalConv(_cfg(num_frames=3), channels=2)
    torch.nn.init.normal_(conv.conv.weight)
    x = torch.randn(1, 3, 2, 4, 4)
    y = x.clone()
    y[..., 0, 0] += 5.0  # change one pixel's curve in every frame
    changed = (conv(x) - conv(y)).abs().sum(dim=1)[0] > 0
    assert changed[0, 0] and changed.sum() == 1


def test_temporal_attention_is_a_softmax_over_frames_queried_by_the_centre():
    attention = TemporalAttention(_cfg("TemporalAttention", 5), channels=6)
    x = torch.randn(2, 5, 6, 4, 3)
    weights = attention.attention_weights(x)
    assert weights.shape == (2, 5, 4, 3)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 4, 3))
    # With the projection set to the identity and keys blind to content, the module adds the
    # plain mean over frames to the centre map.
    with torch.no_grad():
        attention.key.weight.zero_()
        attention.out_proj.weight.copy_(torch.eye(6)[:, :, None, None])
        attention.out_proj.bias.zero_()
    torch.testing.assert_close(attention(x), x[:, 2] + x.mean(dim=1))


@pytest.mark.parametrize("cls", [BiConvGRU, BiConvLSTM])
def test_reversing_a_clip_swaps_the_directions(cls):
    torch.manual_seed(0)
    rnn = cls(_cfg(cls.__name__, 5), channels=4)
    # Same weights in both directions: then the backward pass over a clip is the forward pass
    # over the reversed clip.
    rnn.backward_cell.load_state_dict(rnn.forward_cell.state_dict())
    x = torch.randn(2, 5, 4, 6, 5)
    forward_h, backward_h = rnn.centre_states(x)
    rev_forward_h, rev_backward_h = rnn.centre_states(x.flip(1))
    torch.testing.assert_close(rev_forward_h, backward_h)
    torch.testing.assert_close(rev_backward_h, forward_h)
    assert not torch.allclose(forward_h, backward_h)
    torch.testing.assert_close(rnn(x), rnn.proj(torch.cat([forward_h, backward_h], dim=1)))


@pytest.mark.parametrize("cls", [BiConvGRU, BiConvLSTM])
def test_each_direction_sees_its_own_side_of_the_centre(cls):
    torch.manual_seed(0)
    rnn = cls(_cfg(cls.__name__, 5), channels=4)
    x = torch.randn(1, 5, 4, 6, 6)
    later = x.clone()
    later[:, 4] += 1.0
    earlier = x.clone()
    earlier[:, 0] += 1.0
    forward_h, backward_h = rnn.centre_states(x)
    forward_later, backward_later = rnn.centre_states(later)
    forward_earlier, backward_earlier = rnn.centre_states(earlier)
    torch.testing.assert_close(forward_later, forward_h)  # the forward state ends at the centre
    assert not torch.allclose(backward_later, backward_h)
    torch.testing.assert_close(backward_earlier, backward_h)
    assert not torch.allclose(forward_earlier, forward_h)


@pytest.mark.parametrize("num_frames", [0, 2, 4, -1])
def test_even_or_non_positive_clip_length_is_an_input_error(num_frames):
    with pytest.raises(DSAInputError, match="MODEL.TEMPORAL.NUM_FRAMES"):
        check_temporal_config(_cfg(num_frames=num_frames))


def test_unknown_module_lists_the_choices():
    with pytest.raises(DSAInputError) as err:
        build_temporal_module(_cfg("TemporalTransformer", 5), channels=4)
    message = str(err.value)
    assert "MODEL.TEMPORAL.MODULE" in message and "TemporalTransformer" in message
    assert all(name in message for name in MODULES)
    check_temporal_config(_cfg("TemporalTransformer", 1))  # ignored for single frames


def test_even_rnn_kernel_is_an_input_error():
    with pytest.raises(DSAInputError, match="RNN_KERNEL_SIZE"):
        build_temporal_module(_cfg("BiConvGRU", 3, RNN_KERNEL_SIZE=2), channels=4)


def test_order_blind_attention_cannot_tell_a_clip_from_its_reverse():
    torch.manual_seed(0)
    attention = TemporalAttention(_cfg("TemporalAttention", 5), channels=6)
    x = torch.randn(2, 5, 6, 4, 3)
    torch.testing.assert_close(attention(x), attention(x.flip(1)))
    assert not any("offsets" in name for name, _ in attention.named_parameters())  # old checkpoints load


def test_order_encoded_attention_tells_a_clip_from_its_reverse():
    torch.manual_seed(0)
    attention = TemporalAttention(_cfg("TemporalAttention", 5, ORDER_ENCODING=True), channels=6)
    x = torch.randn(2, 5, 6, 4, 3)
    assert (attention(x) - attention(x.flip(1))).abs().max() > 1e-3
    # Weights still a softmax over the frames; the centre frame alone (every slot equal) is
    # unchanged by reversal, as it should be.
    torch.testing.assert_close(attention.attention_weights(x).sum(dim=1), torch.ones(2, 4, 3))
    still = x[:, 2:3].expand(-1, 5, -1, -1, -1)
    torch.testing.assert_close(attention(still), attention(still.flip(1)))
    attention(x).square().sum().backward()
    assert attention.key_offsets.grad.abs().sum() > 0 and attention.value_offsets.grad.abs().sum() > 0


def test_order_encoding_starts_sinusoidal_and_value_offsets_at_zero():
    attention = TemporalAttention(_cfg("TemporalAttention", 5, ORDER_ENCODING=True), channels=6)
    encoding = attention.key_offsets.detach()
    assert encoding.shape == (5, 4)
    # dim 4: frequencies 1 and 1/10 (100 ** (-j / 2)), sine then cosine of the offsets -2 .. 2.
    for t, offset in enumerate(range(-2, 3)):
        expected = [math.sin(offset), math.sin(offset / 10), math.cos(offset), math.cos(offset / 10)]
        assert encoding[t].tolist() == pytest.approx(expected, abs=1e-6)
    assert attention.value_offsets.detach().abs().sum() == 0
    # Value offsets are added to what the attention returns: with content-blind keys, no key
    # offsets and an identity projection, the module adds mean(x_t + v_t) to the centre map.
    x = torch.randn(1, 5, 6, 2, 2)
    with torch.no_grad():
        attention.key.weight.zero_()
        attention.key_offsets.zero_()
        attention.value_offsets.copy_(torch.arange(30.0).view(5, 6))
        attention.out_proj.weight.copy_(torch.eye(6)[:, :, None, None])
        attention.out_proj.bias.zero_()
    expected = x[:, 2] + x.mean(dim=1) + torch.arange(30.0).view(5, 6).mean(dim=0)[None, :, None, None]
    torch.testing.assert_close(attention(x), expected)


def _textbook_step(cell, x, state):
    """The cells' equations with one convolution over [x, h] (zero state included), as published."""
    from torch.nn import functional as F

    if isinstance(cell, ConvGRUCell):
        h = torch.zeros_like(x) if state is None else state
        update, reset = torch.sigmoid(cell.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(cell.candidate(torch.cat([x, reset * h], dim=1)))
        return (1 - update) * h + update * candidate
    h, c = (torch.zeros_like(x), torch.zeros_like(x)) if state is None else state
    i, f, o, g = cell.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
    c = F.sigmoid(f) * c + F.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@pytest.mark.parametrize("cell_class", [ConvGRUCell, ConvLSTMCell])
def test_split_cell_steps_equal_the_textbook_cell(cell_class):
    torch.manual_seed(0)
    cell = cell_class(4, 3)
    state_split = state_book = None
    for _ in range(3):
        x = torch.randn(2, 4, 7, 5)
        state_split = cell.step(cell.input_part(x), state_split)
        state_book = _textbook_step(cell, x, state_book)
        for a, b in zip(state_split if isinstance(state_split, tuple) else [state_split],
                        state_book if isinstance(state_book, tuple) else [state_book]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, channels_per_frame", [
    ("BiConvGRU", 2 * 3 * 4), ("BiConvLSTM", 2 * 4 * 4),
    ("TemporalAttention", 4 + 2 * 4), ("TemporalAttention_order", 4 + 2 * 4),
])
def test_per_frame_stage_then_clips_equals_the_clip_path(name, channels_per_frame):
    torch.manual_seed(0)
    module_name, _, order = name.partition("_")
    module = build_temporal_module(_cfg(module_name, 5, ORDER_ENCODING=bool(order)), 4)
    if order:
        with torch.no_grad():
            module.value_offsets.normal_()
    frames = torch.randn(7, 4, 6, 5)  # a series of 7 frames: clips 0..4, 1..5, 2..6
    parts = module.per_frame(frames)
    assert parts.shape == (7, channels_per_frame, 6, 5)
    clips = torch.stack([frames[s : s + 5] for s in range(3)])
    part_clips = torch.stack([parts[s : s + 5] for s in range(3)])
    torch.testing.assert_close(module.fuse_frames(part_clips), module(clips), rtol=1e-5, atol=1e-6)
