"""The recurrent cells' inference shortcuts: weights reused between calls only while unchanged, tanh via sigmoid."""

from __future__ import annotations

import pytest
import torch

from perforation_d2.modeling.temporal_modules import BiConvGRU, BiConvLSTM, _tanh

CLASSES = [BiConvGRU, BiConvLSTM]


def _rnn(cls, seed: int = 0):
    torch.manual_seed(seed)
    return cls(channels=4, num_frames=5).eval()


def _cached(rnn, frames: torch.Tensor) -> torch.Tensor:
    """Cached series inference of clips 0..4, 1..5, 2..6 of ``frames``, without autograd."""
    with torch.no_grad():
        parts = rnn.per_frame(frames)
        return rnn.fuse_frames(torch.stack([parts[s : s + 5] for s in range(3)]))


def _reference(rnn, frames: torch.Tensor) -> torch.Tensor:
    """The clip path with autograd on, where nothing is reused: the cells' plain equations."""
    return rnn(torch.stack([frames[s : s + 5] for s in range(3)])).detach()


@pytest.mark.parametrize("cls", CLASSES)
def test_inference_reuses_weights_only_while_the_parameters_are_unchanged(cls):
    rnn = _rnn(cls)
    keys = set(rnn.state_dict())
    frames = torch.randn(7, 4, 6, 5)
    before = _cached(rnn, frames)
    torch.testing.assert_close(before, _reference(rnn, frames), rtol=1e-5, atol=1e-6)
    assert set(rnn.state_dict()) == keys  # the kept weights are no part of a checkpoint

    with torch.no_grad():  # in place, as an optimizer step
        rnn.backward_cell.gates.weight.mul_(-2.0)
    changed = _cached(rnn, frames)
    assert (changed - before).abs().max() > 1e-3
    torch.testing.assert_close(changed, _reference(rnn, frames), rtol=1e-5, atol=1e-6)

    other = _rnn(cls, seed=1)
    rnn.load_state_dict(other.state_dict())
    torch.testing.assert_close(_cached(rnn, frames), _cached(other, frames), rtol=1e-5, atol=1e-6)

    weight = rnn.forward_cell.gates.weight
    weight.data = weight.data * 0.5  # replaced, as .to() does
    torch.testing.assert_close(_cached(rnn, frames), _reference(rnn, frames), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", CLASSES)
def test_training_after_inference_reaches_every_parameter(cls):
    rnn, fresh = _rnn(cls), _rnn(cls)
    frames = torch.randn(7, 4, 6, 5)
    _cached(rnn, frames)  # inference first: its kept weights must not stand in for the parameters
    clips = torch.stack([frames[s : s + 5] for s in range(3)])
    for module in (rnn, fresh):
        module.train()
        module(clips).square().sum().backward()
    for (name, param), expected in zip(rnn.named_parameters(), fresh.parameters()):
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        torch.testing.assert_close(param.grad, expected.grad, msg=name)


def test_tanh_via_sigmoid_is_tanh():
    x = torch.cat([torch.linspace(-20, 20, 4001), torch.tensor([0.0, 1e-8, -1e-8, 88.0, -88.0, 1e4, -1e4])])
    x.requires_grad_(True)
    ours, theirs = _tanh(x), torch.tanh(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=3e-7)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=1e-6)
