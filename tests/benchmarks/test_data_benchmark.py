"""The benchmark's data section runs end to end on its own temporary cohort (no timing asserted)."""

from __future__ import annotations

import argparse
import math

from detectron2.data import DatasetCatalog

from perforation_d2.benchmarks.common import write_bench_cohort
from perforation_d2.benchmarks.data import benchmark_data
from perforation_d2.data.cohort import load_cohort


def test_bench_cohort_is_valid(tmp_path):
    cohort = load_cohort(write_bench_cohort(tmp_path, num_series=2, num_frames=3, size=32))
    assert len(cohort["images"]) == 6 and len(cohort["annotations"]) == 6


def test_data_section_rows():
    before = set(DatasetCatalog.list())
    rows = benchmark_data(argparse.Namespace(quick=True))
    measures = [row.measure for row in rows]
    assert len(rows) == 6 and all(row.section == "data" for row in rows)
    assert any("warm frame cache" in m for m in measures) and any("no frame cache" in m for m in measures)
    assert [m for m in measures if "train loader" in m][-1].endswith("2 workers")
    assert measures[-1] == "DICOM decode peak memory / decoded size" and rows[-1].target == "<= 3x"
    for row in rows:
        assert math.isfinite(row.value) and row.value > 0 and row.unit == "x"
        assert (row.met is None) == (row.target == "")
        assert "256 px" in row.note
    assert set(DatasetCatalog.list()) == before  # its temporary dataset is unregistered
