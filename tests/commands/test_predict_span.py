"""``predict`` with clips spanning a fixed duration (MODEL.TEMPORAL.CLIP_SPAN_MS): the cohort's
frame_time_ms picks each clip's frames, and a series without one is refused in one paragraph.
"""

from __future__ import annotations

import json

import pytest
from helpers.cohorts import make_toy_cohort
from helpers.quick_model import write_quick_model
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.cli import main
from perforation_d2.data.cohort import load_cohort
from perforation_d2.data.register import cohort_dataset_dicts
from perforation_d2.inference.model import load_model
from perforation_d2.modeling.series_inference import SeriesPredictor, load_series_frames

SPAN = ["MODEL.TEMPORAL.CLIP_SPAN_MS", "4000.0"]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return write_quick_model(tmp_path_factory.mktemp("span_model"))


def _predict(model_files, cohort, out) -> int:
    config, weights = model_files
    return main(["predict", "--config-file", str(config), "--weights", str(weights), "--input", str(cohort),
                 "--out", str(out), "--device", "cpu", *SPAN])


def test_predict_picks_clip_frames_by_the_cohorts_frame_time(model_files, tmp_path):
    cohort = make_toy_cohort(tmp_path / "c", num_patients=1, frames=10, size=48)  # frame_time_ms 250
    assert _predict(model_files, cohort, tmp_path / "out") == 0
    predictions = {p["image_id"]: p["score"] for p in json.loads((tmp_path / "out" / "predictions.json").read_text())}
    config, weights = model_files
    cfg, model, _ = load_model(str(config), str(weights), "cpu", SPAN)
    record = cohort_dataset_dicts(load_cohort(cohort), cohort.parent)[0]
    expected = SeriesPredictor.from_config(model, cfg)(load_series_frames(record), 250.0)
    assert len(predictions) == sum(len(e) for e in expected) > 0
    for image_id, instances in enumerate(expected, start=1):
        if len(instances):
            assert predictions[image_id] == pytest.approx(float(instances.scores[0]), abs=1e-6)


def test_predict_refuses_a_series_without_frame_time(model_files, tmp_path, capsys):
    cohort = make_toy_cohort(tmp_path / "c", num_patients=1, frames=3, size=48)
    data = json.loads(cohort.read_text())
    data["videos"][0]["frame_time_ms"] = None
    cohort.write_text(json.dumps(data))
    assert _predict(model_files, cohort, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "series series1: has no frame time" in error and "MODEL.TEMPORAL.CLIP_SPAN_MS" in error
    assert "Traceback" not in error
    assert not (tmp_path / "out" / "predictions.json").exists()
