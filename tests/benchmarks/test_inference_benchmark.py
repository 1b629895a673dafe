"""The "inference" section: one row pair per temporal model, each carrying issue 14's target."""

from __future__ import annotations

import argparse

from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.benchmarks.inference import _targets, benchmark_inference

# Issue 14's CPU targets, written out here rather than read from the module under test.
EXPECTED = {
    "TemporalConv T=5": (">= 4.5x", "<= 1.05x"),
    "TemporalAttention T=5": (">= 4.5x", "<= 1.05x"),
    "BiConvGRU T=5": (">= 3.5x", "<= 1.3x"),
    "BiConvLSTM T=5": (">= 3.5x", "<= 1.3x"),
    "input fusion T=5": ("", ""),
}


def test_quick_rows_carry_the_issue_targets():
    rows = benchmark_inference(argparse.Namespace(quick=True, device="cpu"))
    by_measure = {row.measure: row for row in rows}
    assert len(rows) == 2 * len(EXPECTED)
    for name, (speedup_target, per_frame_target) in EXPECTED.items():
        speedup = by_measure[f"cached vs naive series inference, {name}"]
        per_frame = by_measure[f"per-frame cost vs single-frame RetinaNet, {name}"]
        assert (speedup.target, per_frame.target) == (speedup_target, per_frame_target)
        assert speedup.value > 0 and per_frame.value > 0
        if speedup_target:
            assert speedup.met == (speedup.value >= float(speedup_target[3:-1]))
            assert per_frame.met == (per_frame.value <= float(per_frame_target[3:-1]))
        else:
            assert speedup.met is None and per_frame.met is None
    assert "nothing to cache" in by_measure["cached vs naive series inference, input fusion T=5"].note


def test_gpu_targets():
    assert _targets("BiConvLSTM", full_size=True, cuda=True) == (4.0, None)
    assert _targets("input", full_size=True, cuda=True) == (None, None)
    assert _targets("TemporalConv", full_size=False, cuda=True) == (None, None)
