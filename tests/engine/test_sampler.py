"""PositiveFrameSampler: the configured share of positive frames, resumable, and wired into the trainer."""

from __future__ import annotations

import itertools
import math

import pytest
from helpers.cohorts import make_toy_cohort
from helpers.training import QUICK_TEMPORAL, tiny_opts, train_args

from perforation_d2.engine import Trainer, build_config
from perforation_d2.engine.train_loop import PositiveFrameSampler
from perforation_d2.errors import DSAInputError


def _draws(sampler: PositiveFrameSampler, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.8])
def test_positive_frame_rate_is_as_configured(fraction):
    positive = [i % 10 == 0 for i in range(300)]  # 10% of the frames have a box
    draws = _draws(PositiveFrameSampler(positive, fraction, per_rank_batch_size=2, seed=0), 20000)
    rate = sum(positive[i] for i in draws) / len(draws)
    # Binomial: within 4 standard deviations of the configured probability.
    assert abs(rate - fraction) < 4 * math.sqrt(fraction * (1 - fraction) / len(draws))
    assert {i for i in draws if positive[i]} == {i for i in range(300) if positive[i]}  # every positive used
    assert len({i for i in draws if not positive[i]}) == 270


def test_seeded_and_resumable():
    positive = [i < 5 for i in range(40)]
    first = _draws(PositiveFrameSampler(positive, 0.5, per_rank_batch_size=2, seed=7), 100)
    assert first == _draws(PositiveFrameSampler(positive, 0.5, per_rank_batch_size=2, seed=7), 100)
    assert first != _draws(PositiveFrameSampler(positive, 0.5, per_rank_batch_size=2, seed=8), 100)
    resumed = PositiveFrameSampler(positive, 0.5, per_rank_batch_size=2, seed=7)
    resumed.start_iter = 10  # 10 iterations of 2 frames consumed before the kill
    assert _draws(resumed, 80) == first[20:]


def test_single_kind_datasets_and_bad_values():
    only_positive = _draws(PositiveFrameSampler([True, True], 0.3, per_rank_batch_size=1, seed=0), 50)
    assert set(only_positive) == {0, 1}
    with pytest.raises(DSAInputError, match="no training frame has a perforation box"):
        PositiveFrameSampler([False, False], 0.5, per_rank_batch_size=1, seed=0)
    with pytest.raises(DSAInputError, match=r"DSA_POSITIVE_FRACTION = 1\.5 must be a probability"):
        PositiveFrameSampler([True, False], 1.5, per_rank_batch_size=1, seed=0)


def test_trainer_uses_it_from_the_config(tmp_path):
    # 1 positive patient of 4: a quarter of the frames have a box; the sampler makes it 3/4.
    cohort = make_toy_cohort(tmp_path / "sampler_toy", num_patients=4, frames=4, positive_patients=[0]).parent
    cfg = build_config(train_args(["--config-file", QUICK_TEMPORAL, *tiny_opts(
        cohort, tmp_path / "out", 1, "DATALOADER.DSA_POSITIVE_FRACTION", "0.75")]))
    loader, sampler = Trainer._train_loader_and_sampler(cfg)
    assert isinstance(sampler, PositiveFrameSampler)
    frames = [d for batch in itertools.islice(iter(loader), 60) for d in batch]
    rate = sum(len(d["instances"]) > 0 for d in frames) / len(frames)
    assert abs(rate - 0.75) < 4 * math.sqrt(0.75 * 0.25 / len(frames))
    clash = build_config(train_args(["--config-file", QUICK_TEMPORAL, *tiny_opts(
        cohort, tmp_path / "out2", 1, "DATALOADER.DSA_POSITIVE_FRACTION", "0.5",
        "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler")]))
    with pytest.raises(DSAInputError, match="both choose the training frames"):
        Trainer._train_loader_and_sampler(clash)
