"""The paper's LR schedule: exponential warm-up into cosine annealing to 0.001x the base LR."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler

from perforation_d2.config import add_perforation_config
from perforation_d2.engine.lr_scheduler import build_lr_multiplier, build_lr_scheduler
from perforation_d2.errors import DSAInputError

BASE_LR = 5e-4


def _cfg(**solver):
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.BASE_LR_END = BASE_LR * 0.001
    cfg.SOLVER.MAX_ITER = 1000
    cfg.SOLVER.WARMUP_ITERS = 150
    cfg.SOLVER.WARMUP_FACTOR = 0.001
    cfg.SOLVER.WARMUP_METHOD = "exponential"
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _lrs(cfg, builder=build_lr_scheduler):
    """The LR used at each iteration, stepping the scheduler like Detectron2's LRScheduler hook."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    scheduler = builder(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _cosine(where: float, end: float = 0.001) -> float:
    return end + 0.5 * (1 - end) * (1 + math.cos(math.pi * where))


def test_exponential_warmup_is_geometric_and_joins_the_cosine():
    cfg = _cfg()
    lrs = _lrs(cfg)
    warmup, max_iter = cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER
    joint = BASE_LR * _cosine(warmup / max_iter)
    # Starts at WARMUP_FACTOR x the cosine value at the end of warm-up ...
    assert lrs[0] == pytest.approx(0.001 * joint, rel=1e-9)
    # ... and grows by the same factor every iteration: LR_i = joint * 0.001 ** (1 - i / W).
    for i in range(warmup):
        assert lrs[i] == pytest.approx(joint * 0.001 ** (1 - i / warmup), rel=1e-9), i
    ratios = [lrs[i + 1] / lrs[i] for i in range(warmup - 1)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)
    assert ratios[0] == pytest.approx(1000 ** (1 / warmup), rel=1e-9)
    # Then the cosine, without a jump at the junction.
    for i in range(warmup, max_iter):
        assert lrs[i] == pytest.approx(BASE_LR * _cosine(i / max_iter), rel=1e-9), i
    assert lrs[warmup] / lrs[warmup - 1] == pytest.approx(ratios[0], rel=1e-3)
    # Monotone: up during warm-up, down afterwards.
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1]))
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))


def test_cosine_ends_at_one_thousandth_of_the_base_lr():
    cfg = _cfg()
    multiplier = build_lr_multiplier(cfg)
    assert multiplier(1.0) == pytest.approx(0.001, rel=1e-12)
    lrs = _lrs(cfg)
    assert lrs[-1] == pytest.approx(BASE_LR * _cosine((cfg.SOLVER.MAX_ITER - 1) / cfg.SOLVER.MAX_ITER), rel=1e-9)
    assert lrs[-1] < BASE_LR * 0.00101


def test_paper_defaults_use_the_exponential_warmup():
    cfg = get_cfg()
    add_perforation_config(cfg)
    assert cfg.SOLVER.WARMUP_METHOD == "exponential"


@pytest.mark.parametrize("method", ["linear", "constant"])
@pytest.mark.parametrize("name", ["WarmupCosineLR", "WarmupMultiStepLR"])
def test_linear_and_constant_warmups_match_detectron2(method, name):
    cfg = _cfg(WARMUP_METHOD=method, LR_SCHEDULER_NAME=name, STEPS=(600, 900), MAX_ITER=1000)
    assert _lrs(cfg) == pytest.approx(_lrs(cfg, d2_build_lr_scheduler), rel=1e-12)


def test_no_warmup():
    cfg = _cfg(WARMUP_ITERS=0)
    lrs = _lrs(cfg)
    assert lrs[0] == pytest.approx(BASE_LR)


@pytest.mark.parametrize(
    ("solver", "needle"),
    [
        ({"WARMUP_METHOD": "cubic"}, "exponential, linear, constant"),
        ({"WARMUP_FACTOR": 0.0}, "WARMUP_FACTOR"),
        ({"LR_SCHEDULER_NAME": "OneCycle"}, "WarmupCosineLR"),
        ({"BASE_LR_END": 1.0}, "BASE_LR_END"),
    ],
)
def test_bad_schedule_settings_are_clear_errors(solver, needle):
    with pytest.raises(DSAInputError, match=needle):
        build_lr_multiplier(_cfg(**solver))
