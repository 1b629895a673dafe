"""The paper's learning-rate schedule: cosine annealing after an *exponential* warm-up.

Detectron2's :func:`detectron2.solver.build_lr_scheduler` knows only "linear" and "constant"
warm-ups. The paper (section 4.1) warms up exponentially for 1500 iterations, as MMDetection's
``warmup="exp"`` does: during warm-up the multiplier is ``m(w) * WARMUP_FACTOR ** (1 - i / W)``,
where ``m(w)`` is the main schedule's value at the end of warm-up (``w = W / MAX_ITER``), so the
warm-up starts at ``WARMUP_FACTOR * m(w)`` and joins the main schedule without a jump, exactly like
Detectron2's linear warm-up. The schedules are fvcore ``ParamScheduler`` objects wrapped in
Detectron2's :class:`~detectron2.solver.LRMultiplier`, so checkpoints, the ``LRScheduler`` hook
and resuming work unchanged.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    CosineParamScheduler,
    ExponentialParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    StepWithFixedGammaParamScheduler,
)

from ..errors import DSAInputError

WARMUP_METHODS = ("exponential", "linear", "constant")
LR_SCHEDULERS = ("WarmupCosineLR", "WarmupMultiStepLR", "WarmupStepWithFixedGammaLR")


class ExponentialWarmupParamScheduler(CompositeParamScheduler):
    """Prepend an exponential warm-up to ``scheduler`` (same arguments as Detectron2's
    :class:`~detectron2.solver.lr_scheduler.WarmupParamScheduler`)."""

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        rescale_interval: bool = False,
    ):
        if not 0.0 < warmup_factor <= 1.0:
            raise ValueError(f"exponential warm-up needs 0 < warmup_factor <= 1, got {warmup_factor}")
        end_value = scheduler(0.0) if rescale_interval else scheduler(warmup_length)
        # start * decay ** where, where in [0, 1] over the warm-up: factor * end -> end.
        warmup = ExponentialParamScheduler(start_value=warmup_factor * end_value, decay=1.0 / warmup_factor)
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
            lengths=[warmup_length, 1 - warmup_length],
        )


def _main_schedule(cfg: CfgNode) -> ParamScheduler:
    """The schedule after warm-up, as a multiplier of BASE_LR (the choices of Detectron2)."""
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if name == "WarmupCosineLR":
        end_value = solver.BASE_LR_END / solver.BASE_LR
        if not 0.0 <= end_value <= 1.0:
            raise DSAInputError(
                f"config: SOLVER.BASE_LR_END ({solver.BASE_LR_END}) must lie between 0 and "
                f"SOLVER.BASE_LR ({solver.BASE_LR}) for the cosine schedule."
            )
        return CosineParamScheduler(1.0, end_value)
    if name == "WarmupMultiStepLR":
        steps = [step for step in solver.STEPS if step <= solver.MAX_ITER]
        return MultiStepParamScheduler(
            values=[solver.GAMMA**k for k in range(len(steps) + 1)],
            milestones=steps,
            num_updates=solver.MAX_ITER,
        )
    if name == "WarmupStepWithFixedGammaLR":
        return StepWithFixedGammaParamScheduler(
            base_value=1.0, gamma=solver.GAMMA, num_decays=solver.NUM_DECAYS, num_updates=solver.MAX_ITER
        )
    raise DSAInputError(
        f"config: unknown SOLVER.LR_SCHEDULER_NAME {name!r}; valid choices: {', '.join(LR_SCHEDULERS)}."
    )


def build_lr_multiplier(cfg: CfgNode) -> ParamScheduler:
    """The LR multiplier as a function of training progress in [0, 1] (warm-up included)."""
    solver = cfg.SOLVER
    method = solver.WARMUP_METHOD
    if method not in WARMUP_METHODS:
        raise DSAInputError(
            f"config: unknown SOLVER.WARMUP_METHOD {method!r}; valid choices: {', '.join(WARMUP_METHODS)}."
        )
    if solver.MAX_ITER <= 0:
        raise DSAInputError(f"config: SOLVER.MAX_ITER must be positive, got {solver.MAX_ITER}.")
    main = _main_schedule(cfg)
    if solver.WARMUP_ITERS <= 0:
        return main
    warmup_length = min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0)
    if method == "exponential":
        if not 0.0 < solver.WARMUP_FACTOR <= 1.0:
            raise DSAInputError(
                f"config: the exponential warm-up needs 0 < SOLVER.WARMUP_FACTOR <= 1, got "
                f"{solver.WARMUP_FACTOR}."
            )
        return ExponentialWarmupParamScheduler(
            main, solver.WARMUP_FACTOR, warmup_length, solver.RESCALE_INTERVAL
        )
    return WarmupParamScheduler(main, solver.WARMUP_FACTOR, warmup_length, method, solver.RESCALE_INTERVAL)


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """Drop-in replacement of Detectron2's ``build_lr_scheduler`` that adds the exponential warm-up."""
    return LRMultiplier(optimizer, multiplier=build_lr_multiplier(cfg), max_iter=cfg.SOLVER.MAX_ITER)
