"""Temporal fusion modules (paper section 2.3): T feature maps of a clip -> one map for its centre.

Every module maps ``(N, T, C, H, W) -> (N, C, H, W)``, works for any H, W (nothing spatial is
fixed at construction) and any odd T (the centre frame is index ``T // 2``). The temporal backbone
builds one module per FPN level, not shared across levels, as the paper fuses each level on its
own: the levels see structures of different sizes and their temporal statistics differ.

Modules are chosen by name (``MODEL.TEMPORAL.MODULE``) from ``TEMPORAL_MODULE_REGISTRY``; a
registered class is built as ``cls(cfg, channels)`` through Detectron2's ``@configurable``.

A module may also split itself into a per-frame stage and a clip stage, ``per_frame(x: (M, C, H,
W)) -> (M, C', H, W)`` and ``fuse_frames(y: (N, T, C', H, W)) -> (N, C, H, W)`` with
``fuse_frames(per_frame(frames) as clips) == forward(clips)``: whatever depends on one frame only
then runs once per frame in cached series inference, not once per clip (the recurrent cells'
input convolutions, the attention's keys and queries).
"""

from __future__ import annotations

import math

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode, configurable
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

from ..errors import DSAInputError
from .time_course import check_time_course_maps

__all__ = [
    "FUSIONS",
    "TEMPORAL_MODULE_REGISTRY",
    "BiConvGRU",
    "BiConvLSTM",
    "ConvGRUCell",
    "ConvLSTMCell",
    "TemporalAttention",
    "TemporalConv",
    "build_temporal_module",
    "check_temporal_config",
    "sinusoidal_offsets",
]

TEMPORAL_MODULE_REGISTRY = Registry("TEMPORAL_MODULE")
TEMPORAL_MODULE_REGISTRY.__doc__ = """
Registry of temporal fusion modules: ``module(x: (N, T, C, H, W)) -> (N, C, H, W)``, the fused map
of the clip's centre frame. Built as ``cls(cfg, channels)``.
"""


# Where a clip is fused: per FPN level after a shared per-frame backbone (the paper's), or at the
# input, the T frames as the backbone's input channels (see modeling/backbone.py).
FUSIONS = ("features", "input")


def _check_clip(x: torch.Tensor, num_frames: int, name: str) -> None:
    if x.dim() != 5 or x.shape[1] != num_frames:
        raise ValueError(f"{name} expects (N, {num_frames}, C, H, W) features, got {tuple(x.shape)}")


@TEMPORAL_MODULE_REGISTRY.register()
class TemporalConv(nn.Module):
    """Temporal convolution (section 2.3.2): a ``T x 1 x 1`` kernel over the T maps of each pixel.

    Not causal: it sees the frames before and after the centre, i.e. the time-intensity curve of
    every feature point. With ``centre_init`` the kernel starts as the identity on the centre
    frame (the model starts as its single-frame counterpart, handy with single-frame weights);
    otherwise it starts as the mean over the frames. Both are exact, so the fused map keeps the
    FPN's scale at the start of training.
    """

    @configurable
    def __init__(self, *, channels: int, num_frames: int, centre_init: bool = True):
        super().__init__()
        self.num_frames = num_frames
        self.conv = nn.Conv3d(channels, channels, kernel_size=(num_frames, 1, 1))
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            eye = torch.eye(channels)
            if centre_init:
                self.conv.weight[:, :, num_frames // 2, 0, 0] = eye
            else:
                self.conv.weight[:, :, :, 0, 0] = eye[:, :, None] / num_frames

    @classmethod
    def from_config(cls, cfg: CfgNode, channels: int) -> dict:
        return {
            "channels": channels,
            "num_frames": cfg.MODEL.TEMPORAL.NUM_FRAMES,
            "centre_init": cfg.MODEL.TEMPORAL.CENTRE_INIT,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_clip(x, self.num_frames, type(self).__name__)
        # (N, T, C, H, W) -> (N, C, T, H, W) -> (N, C, 1, H, W)
        return self.conv(x.transpose(1, 2)).squeeze(2)


@TEMPORAL_MODULE_REGISTRY.register()
class TemporalAttention(nn.Module):
    """Temporal attention (section 2.3.3): at every feature point the centre frame attends over T.

    ``q = W_q x_c`` and ``k_t = W_k x_t`` (1x1 convolutions to ``ATTENTION_DIM`` channels); the
    weights ``softmax_t(q . k_t / sqrt(D))`` are computed per feature point and average the frames'
    own features (values = features). The result is projected by a 1x1 convolution and added to
    the centre map, so the module refines rather than replaces the centre frame's features.

    Without ``order_encoding`` the module is blind to frame order: permuting the context frames
    permutes keys and values alike, so a clip and its reverse give the same output, and a
    perforation filling looks like a vessel emptying. With it, each clip slot ``t`` has a learned
    key offset ``e_t`` (``k_t = W_k x_t + e_t``, started as a sinusoidal encoding of ``t - T//2``,
    which differs between past and future) and a learned value offset ``v_t`` (started at 0, so
    the start equals the order-blind module's but for the key offsets), so that both where the
    attention looks and what it brings back depend on the slot.
    """

    @configurable
    def __init__(self, *, channels: int, num_frames: int, attention_dim: int = 64, order_encoding: bool = False):
        super().__init__()
        self.num_frames = num_frames
        self.query = nn.Conv2d(channels, attention_dim, kernel_size=1)
        # No key bias: it would add the same q . b to every frame's logit, which softmax ignores.
        self.key = nn.Conv2d(channels, attention_dim, kernel_size=1, bias=False)
        self.out_proj = nn.Conv2d(channels, channels, kernel_size=1)
        self.scale = 1.0 / math.sqrt(attention_dim)
        for layer in (self.query, self.key, self.out_proj):
            weight_init.c2_xavier_fill(layer)
        self.key_offsets: nn.Parameter | None = None
        self.value_offsets: nn.Parameter | None = None
        if order_encoding:
            self.key_offsets = nn.Parameter(sinusoidal_offsets(num_frames, attention_dim))
            self.value_offsets = nn.Parameter(torch.zeros(num_frames, channels))

    @classmethod
    def from_config(cls, cfg: CfgNode, channels: int) -> dict:
        return {
            "channels": channels,
            "num_frames": cfg.MODEL.TEMPORAL.NUM_FRAMES,
            "attention_dim": cfg.MODEL.TEMPORAL.ATTENTION_DIM,
            "order_encoding": cfg.MODEL.TEMPORAL.ORDER_ENCODING,
        }

    def _weights(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        # keys (N, T, D, H, W) of the clip's frames, query (N, D, H, W) of its centre frame.
        if self.key_offsets is not None:
            keys = keys + self.key_offsets[None, :, :, None, None]
        logits = (keys * query.unsqueeze(1)).sum(dim=2) * self.scale
        return logits.softmax(dim=1)

    def _attend(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        values = x if self.value_offsets is None else x + self.value_offsets[None, :, :, None, None]
        attended = (weights.unsqueeze(2) * values).sum(dim=1)
        return x[:, x.shape[1] // 2] + self.out_proj(attended)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Weights over the frames, shape (N, T, H, W), summing to 1 over T at each point."""
        _check_clip(x, self.num_frames, type(self).__name__)
        n, t = x.shape[:2]
        keys = self.key(x.flatten(0, 1)).unflatten(0, (n, t))
        return self._weights(keys, self.query(x[:, t // 2]))

    def per_frame(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (M, C, H, W) -> (M, C + 2D, H, W): the features, their key and their query.

        Keys and queries are 1x1 projections of one frame: computed once per frame, not once
        for each of the T clips that read the frame."""
        return torch.cat([x, self.key(x), self.query(x)], dim=1)

    def fuse_frames(self, parts: torch.Tensor) -> torch.Tensor:
        """Clips of :meth:`per_frame` outputs (N, T, C + 2D, H, W) -> (N, C, H, W), as :meth:`forward`."""
        _check_clip(parts, self.num_frames, type(self).__name__)
        dim = self.key.out_channels
        channels = parts.shape[2] - 2 * dim
        x, keys = parts[:, :, :channels], parts[:, :, channels : channels + dim]
        query = parts[:, parts.shape[1] // 2, channels + dim :]
        return self._attend(x, self._weights(keys, query))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(x, self.attention_weights(x))


def sinusoidal_offsets(num_frames: int, dim: int) -> torch.Tensor:
    """``(T, dim)`` encodings of the slot offsets ``t - T//2`` (Vaswani et al. 2017, sin and cos).

    The sine half is odd in the offset, so slot ``-i`` and ``+i`` get different encodings (a past
    frame is told from a future one); the centre slot's sine half is 0.
    """
    offsets = torch.arange(num_frames, dtype=torch.float32) - num_frames // 2
    half = max(1, dim // 2)
    freqs = torch.exp(-math.log(100.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = offsets[:, None] * freqs[None, :]
    encoding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)[:, :dim]
    if encoding.shape[1] < dim:
        encoding = torch.cat([encoding, torch.zeros(num_frames, dim - encoding.shape[1])], dim=1)
    return encoding


class ConvGRUCell(nn.Module):
    """Convolutional GRU cell (Ballas et al. 2015): gates are convolutions over [x, h].

    A convolution over [x, h] is one over x plus one over h, so the cell runs in two parts:
    :meth:`input_part` (the x halves of both convolutions, with their biases) depends on one
    frame only and is computed once per frame by cached series inference; :meth:`step` adds the
    h halves. A zero state (the first step) has no h half at all.
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.channels = channels
        self.gates = nn.Conv2d(2 * channels, 2 * channels, kernel_size, padding=self.padding)
        self.candidate = nn.Conv2d(2 * channels, channels, kernel_size, padding=self.padding)
        for layer in (self.gates, self.candidate):
            weight_init.c2_xavier_fill(layer)

    def input_part(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C, H, W) -> (M, 3C, H, W): the x halves of the gate and candidate convolutions."""
        c = self.channels
        weight = torch.cat([self.gates.weight[:, :c], self.candidate.weight[:, :c]])
        return F.conv2d(x, weight, torch.cat([self.gates.bias, self.candidate.bias]), padding=self.padding)

    def step(self, x_part: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """The next state from the frame's :meth:`input_part` and the state (None: zero)."""
        c = self.channels
        if h is None:
            update = torch.sigmoid(x_part[:, :c])
            return update * torch.tanh(x_part[:, 2 * c :])
        gates = x_part[:, : 2 * c] + F.conv2d(h, self.gates.weight[:, c:], padding=self.padding)
        update, reset = torch.sigmoid(gates).chunk(2, dim=1)
        candidate = torch.tanh(x_part[:, 2 * c :] + F.conv2d(reset * h, self.candidate.weight[:, c:], padding=self.padding))
        return (1 - update) * h + update * candidate

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        return self.step(self.input_part(x), h)


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (Shi et al. 2015); the state is the pair (h, c).

    Runs in two parts like :class:`ConvGRUCell`: :meth:`input_part` (the x half of the gate
    convolution, per frame) and :meth:`step`.
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.channels = channels
        self.gates = nn.Conv2d(2 * channels, 4 * channels, kernel_size, padding=self.padding)
        weight_init.c2_xavier_fill(self.gates)
        with torch.no_grad():
            # Forget-gate bias 1: remember by default early in training (Jozefowicz et al. 2015).
            self.gates.bias[channels : 2 * channels].fill_(1.0)

    def input_part(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C, H, W) -> (M, 4C, H, W): the x half of the gate convolution."""
        return F.conv2d(x, self.gates.weight[:, : self.channels], self.gates.bias, padding=self.padding)

    def step(self, x_part: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        """The next (h, c) from the frame's :meth:`input_part` and the state (None: zero)."""
        if state is None:
            i, _, o, g = x_part.chunk(4, dim=1)
            c = torch.sigmoid(i) * torch.tanh(g)
        else:
            h, c = state
            i, f, o, g = (x_part + F.conv2d(h, self.gates.weight[:, self.channels :], padding=self.padding)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        return self.step(self.input_part(x), state)


class _BidirectionalConvRNN(nn.Module):
    """Bidirectional convolutional RNN read out at the centre frame (section 2.3.1).

    The forward cell runs over t = 0 .. T-1 and the backward cell over T-1 .. 0; only their
    states at the centre frame t = T//2 are used, so each runs just the k+1 steps that reach it
    (later steps cannot influence those states). The two states are concatenated (2C channels)
    and projected back to C by a 1x1 convolution.

    Two stages, for cached series inference (``TemporalBackbone.forward_frames`` / ``fuse``):
    :meth:`per_frame` computes both cells' input parts once per frame, and :meth:`fuse_frames`
    runs the recurrence on a clip of them. A frame belongs to T clips, so the input half of every
    gate convolution is then computed once instead of up to T times. :meth:`forward` on a clip
    computes the input parts only for the frames each cell reads.
    """

    cell_class: type[nn.Module]

    @configurable
    def __init__(self, *, channels: int, num_frames: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise DSAInputError(
                f"config: MODEL.TEMPORAL.RNN_KERNEL_SIZE is {kernel_size}; it must be odd so that "
                "the recurrent gates keep the feature map's size."
            )
        self.num_frames = num_frames
        self.forward_cell = self.cell_class(channels, kernel_size)
        self.backward_cell = self.cell_class(channels, kernel_size)
        self.proj = nn.Conv2d(2 * channels, channels, kernel_size=1)
        weight_init.c2_xavier_fill(self.proj)

    @classmethod
    def from_config(cls, cfg: CfgNode, channels: int) -> dict:
        return {
            "channels": channels,
            "num_frames": cfg.MODEL.TEMPORAL.NUM_FRAMES,
            "kernel_size": cfg.MODEL.TEMPORAL.RNN_KERNEL_SIZE,
        }

    @staticmethod
    def _hidden(state) -> torch.Tensor:
        return state[0] if isinstance(state, tuple) else state

    def _recur(self, forward_parts: torch.Tensor, backward_parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre states from the input parts of frames 0..c (forward cell) and c..T-1 (backward cell)."""
        state = None
        for t in range(forward_parts.shape[1]):
            state = self.forward_cell.step(forward_parts[:, t], state)
        forward_h = self._hidden(state)
        state = None
        for t in range(backward_parts.shape[1] - 1, -1, -1):
            state = self.backward_cell.step(backward_parts[:, t], state)
        return forward_h, self._hidden(state)

    @staticmethod
    def _per_frame(cell: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return cell.input_part(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def centre_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (N, C, H, W) of the forward and the backward pass at the centre frame."""
        _check_clip(x, self.num_frames, type(self).__name__)
        centre = x.shape[1] // 2
        return self._recur(self._per_frame(self.forward_cell, x[:, : centre + 1]),
                           self._per_frame(self.backward_cell, x[:, centre:]))

    def per_frame(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (M, C, H, W) -> both cells' input parts (M, 2P, H, W), forward cell first."""
        return torch.cat([self.forward_cell.input_part(x), self.backward_cell.input_part(x)], dim=1)

    def fuse_frames(self, parts: torch.Tensor) -> torch.Tensor:
        """Clips of :meth:`per_frame` outputs (N, T, 2P, H, W) -> (N, C, H, W), equal to :meth:`forward`."""
        _check_clip(parts, self.num_frames, type(self).__name__)
        centre, half = parts.shape[1] // 2, parts.shape[2] // 2
        states = self._recur(parts[:, : centre + 1, :half], parts[:, centre:, half:])
        return self.proj(torch.cat(states, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat(self.centre_states(x), dim=1))


@TEMPORAL_MODULE_REGISTRY.register()
class BiConvGRU(_BidirectionalConvRNN):
    """Bidirectional convolutional GRU, read out at the centre frame."""

    cell_class = ConvGRUCell


@TEMPORAL_MODULE_REGISTRY.register()
class BiConvLSTM(_BidirectionalConvRNN):
    """Bidirectional convolutional LSTM, read out at the centre frame."""

    cell_class = ConvLSTMCell


def check_temporal_config(cfg: CfgNode) -> None:
    """Raise :class:`DSAInputError` for a clip length or temporal module the model cannot build."""
    num_frames = cfg.MODEL.TEMPORAL.NUM_FRAMES
    if not isinstance(num_frames, int) or num_frames < 1 or num_frames % 2 == 0:
        raise DSAInputError(
            f"config: MODEL.TEMPORAL.NUM_FRAMES is {num_frames!r}; it must be an odd positive "
            "integer (T = 2k+1 frames centred on the annotated frame, e.g. 1, 3, 5 or 9)."
        )
    fusion = cfg.MODEL.TEMPORAL.FUSION
    if fusion not in FUSIONS:
        raise DSAInputError(
            f"config: MODEL.TEMPORAL.FUSION is {fusion!r}; valid choices are {', '.join(FUSIONS)}."
        )
    if fusion == "input":
        check_time_course_maps(cfg.MODEL.TEMPORAL.INPUT_MAPS)
        return  # no temporal module: MODULE is not used
    name = cfg.MODEL.TEMPORAL.MODULE
    valid = sorted(registered for registered, _ in TEMPORAL_MODULE_REGISTRY)
    if num_frames > 1 and name not in valid:
        raise DSAInputError(
            f"config: MODEL.TEMPORAL.MODULE is {name!r}, which is not a temporal module; "
            f"valid choices are {', '.join(valid)}."
        )


def build_temporal_module(cfg: CfgNode, channels: int) -> nn.Module:
    """The module named by ``MODEL.TEMPORAL.MODULE`` for one FPN level of ``channels`` channels."""
    check_temporal_config(cfg)
    return TEMPORAL_MODULE_REGISTRY.get(cfg.MODEL.TEMPORAL.MODULE)(cfg, channels)
