"""Checkpoints load without running code: crafted pickles are refused and their payload never runs."""

from __future__ import annotations

import builtins
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.solver import LRMultiplier
from fvcore.common.param_scheduler import CosineParamScheduler

from perforation_d2.engine.checkpoint import SafeDetectionCheckpointer
from perforation_d2.engine.operating_point import OperatingPoint
from perforation_d2.errors import DSAInputError


class _Payload:
    """Unpickling this object calls ``func(arg)``: here, creating a marker file."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _payload(kind: str, marker: str) -> _Payload:
    if kind == "os.system":
        return _Payload(os.system, f"touch '{marker}'")
    return _Payload(builtins.exec, f"open({marker!r}, 'w').close()")


def _write(fmt: str, path: str, obj) -> None:
    if fmt == "pth":
        torch.save(obj, path)
    elif fmt == "pth-legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as handle:
            pickle.dump(obj, handle, protocol=2)


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("fmt", ["pth", "pth-legacy", "pkl"])
def test_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, fmt, kind):
    suffix = ".pkl" if fmt == "pkl" else ".pth"
    weights = {k: v.numpy() if fmt == "pkl" else v for k, v in _model().state_dict().items()}

    # Control: the payload is live, plain unpickling runs it.
    control_marker = tmp_path / "control_marker"
    control = str(tmp_path / f"control{suffix}")
    _write(fmt, control, {"model": weights, "__author__": "x", "extra": _payload(kind, str(control_marker))})
    if fmt == "pkl":
        with open(control, "rb") as handle:
            pickle.load(handle)
    else:
        torch.load(control, weights_only=False)
    assert control_marker.exists()

    marker = tmp_path / "marker"
    path = str(tmp_path / f"evil{suffix}")
    _write(fmt, path, {"model": weights, "__author__": "x", "extra": _payload(kind, str(marker))})
    with pytest.raises(DSAInputError) as info:
        SafeDetectionCheckpointer(_model()).load(path)
    message = str(info.value)
    assert message.startswith(path)
    assert "refused" in message
    assert ("system" if kind == "os.system" else "exec") in message
    assert not marker.exists()


def test_our_checkpoint_round_trips_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = LRMultiplier(optimizer, CosineParamScheduler(1.0, 0.001), max_iter=10)
    for _ in range(3):
        model(torch.randn(2, 3, 3, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    point = OperatingPoint("youden")
    point.update({"threshold": 0.42, "sensitivity": 1.0, "specificity": 0.5}, "val", 2)
    saver = SafeDetectionCheckpointer(
        model, str(tmp_path), optimizer=optimizer, scheduler=scheduler, operating_point=point
    )
    saver.save("model_0000002", iteration=2)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    raw = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    assert raw["operating_point"]["threshold"] == 0.42

    fresh = _model()
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    fresh_scheduler = LRMultiplier(fresh_optimizer, CosineParamScheduler(1.0, 0.001), max_iter=10)
    fresh_point = OperatingPoint("youden")
    loader = SafeDetectionCheckpointer(
        fresh, str(tmp_path), optimizer=fresh_optimizer, scheduler=fresh_scheduler, operating_point=fresh_point
    )
    extra = loader.resume_or_load("", resume=True)
    assert extra["iteration"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert fresh_scheduler.last_epoch == scheduler.last_epoch == 3
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    momentum = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    fresh_momentum = [fresh_optimizer.state[p]["momentum_buffer"] for p in fresh.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, fresh_momentum))
    assert fresh_point.state == point.state


def test_detectron2_pkl_weights_load_through_the_restricted_unpickler(tmp_path):
    source = _model()
    path = tmp_path / "zoo.pkl"
    with open(path, "wb") as handle:  # protocol 2 stores array bytes through _codecs.encode
        pickle.dump(
            {"model": {k: v.numpy().copy() for k, v in source.state_dict().items()}, "__author__": "test"},
            handle,
            protocol=2,
        )
    target = _model()
    SafeDetectionCheckpointer(target).load(str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_pkl_with_object_arrays_of_forbidden_globals_is_refused(tmp_path):
    marker = tmp_path / "marker"
    array = np.empty(1, dtype=object)
    array[0] = _payload("os.system", str(marker))
    path = tmp_path / "objarray.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"w": array}, "__author__": "x"}, handle)
    with pytest.raises(DSAInputError, match="system"):
        SafeDetectionCheckpointer(_model()).load(str(path))
    assert not marker.exists()


def test_truncated_and_missing_checkpoints_are_clear_errors(tmp_path):
    SafeDetectionCheckpointer(_model(), str(tmp_path)).save("model_final")
    data = (tmp_path / "model_final.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DSAInputError, match="truncated.pth: not a readable"):
        SafeDetectionCheckpointer(_model()).load(str(truncated))
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": _model().state_dict()}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:200])
    with pytest.raises(DSAInputError, match="legacy.pth: not a readable"):
        SafeDetectionCheckpointer(_model()).load(str(legacy))
    pkl = tmp_path / "cut.pkl"
    pkl.write_bytes(pickle.dumps({"model": {"w": np.ones(100)}, "__author__": "x"})[:60])
    with pytest.raises(DSAInputError, match="cut.pkl: not a readable pickle"):
        SafeDetectionCheckpointer(_model()).load(str(pkl))
    with pytest.raises(DSAInputError, match="not found"):
        SafeDetectionCheckpointer(_model()).load(str(tmp_path / "absent.pth"))


class _Net(torch.nn.Module):
    def __init__(self, width: int = 3, extra: bool = False):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, width, 3)
        if extra:
            self.head = torch.nn.Linear(2, 2)


@pytest.mark.parametrize(
    ("saved", "message"),
    [
        (_Net(width=4), "2 parameter(s) of another shape (conv.weight (4, 1, 3, 3) vs (3, 1, 3, 3), conv.bias (4,) vs (3,))"),
        (_Net(extra=True), "2 unexpected parameter(s) (head.weight, head.bias)"),
    ],
)
def test_load_exact_refuses_weights_of_another_model(tmp_path, saved, message):
    SafeDetectionCheckpointer(saved, save_dir=str(tmp_path)).save("model")
    with pytest.raises(DSAInputError, match=r"do not match the model of cfg\.yaml") as error:
        SafeDetectionCheckpointer(_Net()).load_exact(str(tmp_path / "model.pth"), "cfg.yaml")
    assert message in str(error.value)


def test_load_exact_refuses_missing_weights_and_returns_the_extras(tmp_path):
    SafeDetectionCheckpointer(_Net(), save_dir=str(tmp_path)).save("small", operating_point={"threshold": 0.25})
    with pytest.raises(DSAInputError, match=r"2 missing parameter\(s\) \(head.weight, head.bias\)"):
        SafeDetectionCheckpointer(_Net(extra=True)).load_exact(str(tmp_path / "small.pth"), "cfg.yaml")
    model = _Net()
    extras = SafeDetectionCheckpointer(model).load_exact(str(tmp_path / "small.pth"), "cfg.yaml")
    assert extras["operating_point"] == {"threshold": 0.25}
