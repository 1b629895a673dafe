"""The issue-14 benchmark rows are produced with the measured numbers in their notes (tiny sizes)."""

from __future__ import annotations

from detectron2.data import DatasetCatalog
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.benchmarks.common import synthetic_series
from perforation_d2.benchmarks.deployment import (
    RCNN_LEAVES,
    _spread_head,
    decoding_rows,
    precision_rows,
    prefetch_rows,
)
from perforation_d2.benchmarks.inference import _config, _model, leaf_config
from perforation_d2.config import CONFIG_DIR


def test_decoding_and_precision_rows():
    model = _spread_head(_model(_config(False, "TemporalConv", 64, "cpu")))
    series = synthetic_series(4, 64)
    rows = decoding_rows(model, series, 64, 1, "cpu", "TemporalConv T=5", "tiny")
    rows += precision_rows(model, series, 64, 1, "cpu", "TemporalConv T=5", "tiny")
    assert [r.measure for r in rows] == [
        "Detectron2 decoding + NMS vs top-1 decoding, TemporalConv T=5", "bf16 vs fp32 speed, TemporalConv T=5",
    ]
    assert all(r.value > 0 for r in rows)
    assert "ms/frame saved" in rows[0].note
    assert "largest score difference" in rows[1].note and "median fp32 series score" in rows[1].note


def test_decoding_rows_of_the_rcnn_heads():
    series = synthetic_series(3, 64)
    for leaf, name in RCNN_LEAVES.items():
        model = _model(leaf_config(CONFIG_DIR / "quick" / leaf, 64, "cpu"))
        rows = decoding_rows(model, series, 64, 1, "cpu", f"single-frame {name}", "tiny")
        assert [r.measure for r in rows] == [f"Detectron2 decoding + NMS vs top-1 decoding, single-frame {name}"]
        assert rows[0].value > 0 and "ms/frame saved" in rows[0].note


def test_prefetch_row_reads_a_registered_cohort_both_ways():
    before = set(DatasetCatalog.list())
    rows = prefetch_rows(_model(_config(False, "TemporalConv", 64, "cpu")), 64, 2, 3, 48, 1, "cpu", "TemporalConv T=5",
                         "tiny")
    assert [r.measure for r in rows] == ["series read in a background thread vs in turn, TemporalConv T=5"]
    assert rows[0].value > 0 and rows[0].target == "" and rows[0].met is None  # information only
    assert "of the sequential time" in rows[0].note
    assert set(DatasetCatalog.list()) == before  # the scratch cohort is unregistered
