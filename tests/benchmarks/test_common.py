"""The one benchmark timer (interleaved rounds, median of per-round ratios) and the shared inputs."""

from __future__ import annotations

import types

import numpy as np
import pytest

from perforation_d2.benchmarks import SECTIONS, common
from perforation_d2.benchmarks.common import BenchRow, markdown_table, synthetic_series, time_interleaved


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that moves only when a work says how long it took."""
    now = [0.0]
    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def advance(seconds: float) -> None:
        now[0] += seconds

    return advance


def test_rounds_interleave_the_works_in_order(fake_clock):
    calls = []
    works = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = time_interleaved(works, rounds=3)
    assert calls == ["a", "b", "c"] * 3
    assert all(len(times.times[name]) == 3 for name in works)


def test_ratio_is_the_median_of_per_round_ratios(fake_clock):
    # Per-round b/a: 2, 15, 1.5 -> median 2, whereas the ratio of the medians would be 6 / 2 = 3.
    a_times = iter([1.0, 2.0, 4.0])
    b_times = iter([2.0, 30.0, 6.0])
    times = time_interleaved({"a": lambda: fake_clock(next(a_times)), "b": lambda: fake_clock(next(b_times))}, 3)
    assert times.seconds("a") == 2.0 and times.seconds("b") == 6.0
    assert times.ratio("b", "a") == 2.0
    assert times.ratio("a", "b") == pytest.approx(0.5)


def test_keys_may_be_any_hashable(fake_clock):
    times = time_interleaved({(1, False): lambda: fake_clock(1.0), (9, True): lambda: fake_clock(4.0)}, 2)
    assert times.ratio((9, True), (1, False)) == 4.0


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="rounds"):
        time_interleaved({"a": lambda: None}, 0)


def test_synthetic_series_is_seeded_uint8_with_texture():
    series = synthetic_series(4, 32, seed=3)
    assert series.shape == (4, 32, 32) and series.dtype == np.uint8
    np.testing.assert_array_equal(series, synthetic_series(4, 32, seed=3))
    assert not np.array_equal(series, synthetic_series(4, 32, seed=4))
    assert series.std() > 5  # not flat: PNG coding must cost what it costs on real frames


def test_markdown_table_and_registry():
    row = BenchRow("data", "a | b", 2.5, target="<= 3x", met=True, note="n")
    assert markdown_table([row]).splitlines() == [
        "| section | measure | value | target | met | how |",
        "|---|---|---|---|---|---|",
        "| data | a / b | 2.5 x | <= 3x | yes | n |",
    ]
    assert list(SECTIONS) == ["data", "training", "inference", "evaluator", "deployment", "node"]
    assert all(callable(section) for section in SECTIONS.values())


def test_peak_rss_counts_from_the_reset():
    before = common.reset_peak_rss()
    assert before is not None  # Linux: the benchmark's memory rows depend on the reset
    block = np.ones(64 * 2**20, dtype=np.uint8)  # touched pages: 64 MiB resident
    grown = common.peak_rss_bytes() - before
    del block
    assert 60 * 2**20 <= grown < 200 * 2**20
    after = common.reset_peak_rss()
    assert common.peak_rss_bytes() - after < 32 * 2**20  # the mark went down with the block
