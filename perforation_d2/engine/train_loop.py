"""Detectron2's training steps, with non-finite losses reported by iteration and sample ids.

Detectron2's :class:`~detectron2.engine.SimpleTrainer` already stops on a NaN/inf loss, but only on
rank 0, after gathering the metrics, and without saying which samples were in the batch. Here
every rank remembers the ids of the batch it is training on, checks its own losses before the
optimizer step (so the weights never absorb a NaN update), and all ranks agree on the outcome (a
one-element all-reduce), so a NaN on one DDP rank stops every rank instead of leaving the others
waiting in the next collective. The error names the iteration, the non-finite loss terms and the
``image_id`` / ``video_id`` / ``frame_id`` / file of every sample of the offending batch(es).

The training samplers live here too: :class:`ResumableTrainingSampler` (uniform, resumable) and
:class:`PositiveFrameSampler` (a set share of frames with a perforation box, resumable).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from torch.utils.data import Sampler

from ..errors import DSAInputError


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's :class:`~detectron2.data.samplers.TrainingSampler` that can skip ahead.

    Detectron2 restarts the training sample stream from its beginning on ``--resume``, so a
    resumed run trains on other batches than an uninterrupted one. Setting ``start_iter`` (done
    by ``Trainer.resume_or_load``) before the loader is first iterated skips the indices that
    the first ``start_iter`` iterations consumed on this rank: the resumed run draws exactly the
    batches the uninterrupted run would have drawn (frames of one size, or
    ``DATALOADER.ASPECT_RATIO_GROUPING`` off, so that grouping does not hold frames back).
    """

    def __init__(self, size: int, per_rank_batch_size: int, shuffle: bool = True, seed: int | None = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.per_rank_batch_size = per_rank_batch_size
        self.start_iter = 0

    def __iter__(self) -> Iterator[int]:
        start = self._rank + self.start_iter * self.per_rank_batch_size * self._world_size
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)


class PositiveFrameSampler(Sampler):
    """An infinite training stream in which each frame is positive with a set probability.

    ``positive[i]`` says whether dataset frame ``i`` has a perforation box. Each draw takes a
    positive frame (uniformly among them) with probability ``positive_fraction``, else a frame
    without a box, so a batch of two holds no box with probability ``(1 - fraction) ** 2`` whatever
    the cohort's own share of positive frames (``DATALOADER.DSA_POSITIVE_FRACTION``). Like
    :class:`ResumableTrainingSampler` it is seeded, split across ranks by stride, and continues
    exactly where it stopped on ``--resume`` (``start_iter``). A dataset without frames of one kind
    draws only the other.
    """

    def __init__(self, positive: Sequence[bool], positive_fraction: float, per_rank_batch_size: int,
                 seed: int | None = None):
        if not 0.0 <= positive_fraction <= 1.0:
            raise DSAInputError(f"config DATALOADER.DSA_POSITIVE_FRACTION = {positive_fraction!r} must be a "
                                "probability in [0, 1] (0 samples frames uniformly).")
        flags = torch.as_tensor([bool(p) for p in positive], dtype=torch.bool)
        self._positives = torch.nonzero(flags).flatten()
        self._negatives = torch.nonzero(~flags).flatten()
        if len(self._positives) == 0:
            raise DSAInputError("config DATALOADER.DSA_POSITIVE_FRACTION > 0, but no training frame has a "
                                "perforation box: the training set has only negative frames.")
        self.positive_fraction = float(positive_fraction) if len(self._negatives) else 1.0
        self.per_rank_batch_size = per_rank_batch_size
        self.start_iter = 0
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = comm.get_rank(), comm.get_world_size()

    def _infinite_indices(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self._seed)
        chunk = 1024
        while True:
            take_positive = torch.rand(chunk, generator=generator) < self.positive_fraction
            pos = self._positives[torch.randint(len(self._positives), (chunk,), generator=generator)]
            neg = (self._negatives[torch.randint(len(self._negatives), (chunk,), generator=generator)]
                   if len(self._negatives) else pos)
            yield from torch.where(take_positive, pos, neg).tolist()

    def __iter__(self) -> Iterator[int]:
        start = self._rank + self.start_iter * self.per_rank_batch_size * self._world_size
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)


def has_box(dataset_dict: Mapping[str, Any]) -> bool:
    """Whether a training frame's dict holds a (non-crowd) perforation box."""
    return any(not ann.get("iscrowd", 0) for ann in dataset_dict.get("annotations", []))


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the message names the iteration and the samples."""


def batch_sample_ids(batch: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The identifying fields of each dataset dict of a training batch."""
    keys = ("image_id", "video_id", "frame_id", "file_name")
    return [{key: sample[key] for key in keys if key in sample} for sample in batch]


def _describe_samples(samples: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(", ".join(f"{key}={value}" for key, value in sample.items()) for sample in samples)


def nonfinite_loss_message(iteration: int, reports: Sequence[Mapping[str, Any]]) -> str:
    """One paragraph naming the iteration, the non-finite losses and the samples of each rank."""
    parts = []
    for report in reports:
        losses = ", ".join(f"{name}={value}" for name, value in report["losses"].items())
        parts.append(f"rank {report['rank']}: {losses}; batch: {_describe_samples(report['samples'])}")
    return (
        f"Training stopped: the loss became NaN or infinite at iteration {iteration} "
        f"({' | '.join(parts)}). The weights were not updated with this batch and the last checkpoint "
        "predates it. Check these frames and their boxes, and lower SOLVER.BASE_LR if the loss "
        "diverged (set SOLVER.STOP_ON_NONFINITE_LOSS False to fall back to Detectron2's own check)."
    )


class _NonFiniteLossCheck:
    """Mixin for Detectron2's trainers: remember the batch ids, stop on a non-finite loss."""

    stop_on_nonfinite: bool = True
    last_batch_ids: list[dict[str, Any]]

    @property
    def _data_loader_iter(self) -> Iterator[Any]:
        # Same lazy creation as SimpleTrainer, with each batch's ids recorded as it is drawn.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = self._recording_iter(iter(self.data_loader))
        return self._data_loader_iter_obj

    def _recording_iter(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self.last_batch_ids = batch_sample_ids(batch)
            yield batch

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = "",
                       iter: int | None = None) -> None:
        # Called by run_step after backward and before optimizer.step().
        if self.stop_on_nonfinite:
            self._raise_if_nonfinite(loss_dict, self.iter if iter is None else iter)
        super()._write_metrics(loss_dict, data_time, prefix, iter)

    def _raise_if_nonfinite(self, loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
        values = {name: float(value.detach().float().sum()) for name, value in loss_dict.items()}
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        if comm.get_world_size() > 1:
            device = next(iter(loss_dict.values())).device
            flag = torch.tensor([1.0 if bad else 0.0], device=device)
            dist.all_reduce(flag)
            if flag.item() == 0:
                return
            report = {"rank": comm.get_rank(), "losses": bad, "samples": self.last_batch_ids} if bad else None
            reports = [r for r in comm.all_gather(report) if r is not None]
        elif bad:
            reports = [{"rank": 0, "losses": bad, "samples": self.last_batch_ids}]
        else:
            return
        raise NonFiniteLossError(nonfinite_loss_message(iteration, reports))


class DSASimpleTrainer(_NonFiniteLossCheck, SimpleTrainer):
    """:class:`~detectron2.engine.SimpleTrainer` that reports non-finite losses with sample ids."""

    def __init__(self, model: torch.nn.Module, data_loader: Any, optimizer: torch.optim.Optimizer,
                 stop_on_nonfinite: bool = True, **kwargs: Any):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.stop_on_nonfinite = stop_on_nonfinite
        self.last_batch_ids = []


class DSAAMPTrainer(_NonFiniteLossCheck, AMPTrainer):
    """:class:`~detectron2.engine.AMPTrainer` that reports non-finite losses with sample ids."""

    def __init__(self, model: torch.nn.Module, data_loader: Any, optimizer: torch.optim.Optimizer,
                 stop_on_nonfinite: bool = True, **kwargs: Any):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.stop_on_nonfinite = stop_on_nonfinite
        self.last_batch_ids = []
