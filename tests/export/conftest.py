"""Shared by the export tests: ``predict`` through both runtimes must give the same series results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.cohorts import make_toy_cohort

from perforation_d2.cli import main

# The graphs differ from PyTorch by operator order only.
BOX_TOLERANCE_PX = 1e-3
SCORE_TOLERANCE = 1e-5


def noisy_cohort(root) -> Path:
    """The toy cohort with random frames (its uniform grey frames would tie every anchor)."""
    from PIL import Image

    json_file = make_toy_cohort(root, num_patients=3, frames=[6, 3, 1], size=56)
    cohort = json.loads(json_file.read_text())
    rng = np.random.default_rng(5)
    for image in cohort["images"]:
        Image.fromarray(rng.integers(0, 256, size=(56, 56), dtype=np.uint8)).save(json_file.parent / image["file_name"])
    return json_file


def assert_predict_runtimes_agree(config, weights, folder, tmp_path) -> None:
    """``predict`` with onnxruntime (export in ``folder``) gives the PyTorch runtime's decisions,
    key frames, scores and boxes (series_scores.json) and the same per-frame boxes (predictions.json)."""
    cohort = noisy_cohort(tmp_path / "cohort")
    common = ["predict", "--config-file", str(config), "--weights", str(weights), "--input", str(cohort),
              "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "pytorch")]) == 0
    assert main([*common, "--out", str(tmp_path / "onnx"), "--runtime", "onnxruntime", "--onnx", str(folder)]) == 0
    scores = {r: json.loads((tmp_path / r / "series_scores.json").read_text()) for r in ("pytorch", "onnx")}
    assert scores["pytorch"].keys() == scores["onnx"].keys() and len(scores["onnx"]) == 3
    for video, expected in scores["pytorch"].items():
        got = scores["onnx"][video]
        assert got["perforation"] == expected["perforation"] and got["frame_of_max"] == expected["frame_of_max"]
        assert got["score"] == pytest.approx(expected["score"], abs=SCORE_TOLERANCE)
        assert got["box"] == pytest.approx(expected["box"], abs=BOX_TOLERANCE_PX)
    predictions = {r: json.loads((tmp_path / r / "predictions.json").read_text()) for r in ("pytorch", "onnx")}
    assert [p["image_id"] for p in predictions["onnx"]] == [p["image_id"] for p in predictions["pytorch"]]
    for got, expected in zip(predictions["onnx"], predictions["pytorch"]):
        assert got["bbox"] == pytest.approx(expected["bbox"], abs=BOX_TOLERANCE_PX)


@pytest.fixture
def predict_runtimes_agree():
    """:func:`assert_predict_runtimes_agree`, as a fixture (test modules do not import each other)."""
    return assert_predict_runtimes_agree


@pytest.fixture
def make_noisy_cohort():
    return noisy_cohort
