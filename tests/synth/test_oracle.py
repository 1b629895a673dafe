"""The time-course oracle (``synth/oracle.py``) and where it is shown (``synth``, the cross-validation report).

The rule is checked on the generators' own courses (``hard.growth_course``) and on hand-made ones;
the AUC on a real hard cohort says that its time course separates the series that its single
frames cannot (``test_hard_synth.py`` checks the latter).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from perforation_d2.cli import main
from perforation_d2.errors import DSAInputError
from perforation_d2.experiments.diagnostics import oracle_statistics, time_course_oracle
from perforation_d2.experiments.report_text import time_course_oracle_markdown
from perforation_d2.synth.cohort import TRUTH_FILE, generate_synthetic_cohort
from perforation_d2.synth.hard import growth_course
from perforation_d2.synth.oracle import NO_BLOB_SCORE, RULE_TOLERANCE, course_violation, oracle_series_scores


def test_generated_growth_keeps_the_rule_even_rounded_as_the_truth_file_writes_it():
    rng = np.random.default_rng(0)
    for _ in range(200):
        dt = rng.choice([0.25, 0.5, 1.0, 2.0])
        times = dt * np.arange(12)
        onset = float(rng.uniform(0, 3))
        _, density = growth_course(rng, times, onset)
        shown = np.round(density[density > 0], 4)
        assert course_violation(shown) <= RULE_TOLERANCE


def test_a_fall_or_an_acceleration_breaks_the_rule_by_its_size():
    assert course_violation([0.3, 0.5, 0.4]) == pytest.approx(math.log(0.5 / 0.4))
    # Steps of log-density 0.095 then 1.0: growth that speeds up (a jump to a larger course).
    assert course_violation([0.1, 0.11, 0.3]) == pytest.approx(math.log(0.3 / 0.11) - math.log(0.11 / 0.1))
    assert course_violation([0.4]) == 0.0 and course_violation([0.2, 0.2, 0.2]) == 0.0
    with pytest.raises(ValueError, match="non-finite"):
        course_violation([0.2, float("nan")])


def _truth(*videos):
    return {"videos": [{"video_id": i + 1, "label": label, "events": events} for i, (label, events) in enumerate(videos)]}


def _event(densities):
    return {"kind": "x", "frames": list(range(len(densities))), "densities": densities}


def test_a_series_scores_its_best_blob():
    truth = _truth(
        (1, [_event([0.2, 0.3, 0.35, 0.37]), _event([0.5, 0.2])]),  # keeps the rule for 4 frames
        (0, [_event([0.5, 0.25])]),  # falls by half
        (0, []),  # nothing shown
        (0, [{"kind": "x", "frames": [], "densities": []}, _event([0.3])]),
    )
    scores = oracle_series_scores(truth)
    assert scores == {1: 4.0, 2: pytest.approx(-math.log(2)), 3: NO_BLOB_SCORE, 4: 1.0}
    assert oracle_series_scores(truth, [2, 4]) == {2: scores[2], 4: 1.0}
    with pytest.raises(ValueError, match=r"series \[7\] are not in the truth file"):
        oracle_series_scores(truth, [1, 7])
    statistics = oracle_statistics(truth)
    assert statistics["AUC"] == pytest.approx(1.0) and statistics["series"] == 4 and statistics["positives"] == 1
    assert oracle_statistics(truth, [2, 3])["AUC"] is None  # one class


@pytest.fixture(scope="module")
def hard_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oracle") / "cohort"
    generate_synthetic_cohort(out, 60, seed=5, size=64, max_frames=10, look_alikes="hard", preview=False)
    return out / "cohort.json"


def test_the_hard_cohorts_time_course_separates_its_series(hard_cohort):
    truth = json.loads((hard_cohort.parent / TRUTH_FILE).read_text())
    scores = oracle_series_scores(truth)
    labels = {v["video_id"]: v["label"] for v in truth["videos"]}
    auc = roc_auc_score([labels[i] for i in sorted(scores)], [scores[i] for i in sorted(scores)])
    assert auc > 0.85, auc
    assert oracle_statistics(truth)["AUC"] == pytest.approx(auc)


def test_the_report_section_holds_each_held_out_split_and_their_union(hard_cohort):
    truth = json.loads((hard_cohort.parent / TRUTH_FILE).read_text())
    ids = sorted(v["video_id"] for v in truth["videos"])
    held_out = {"fold0": ids[::2], "fold1": ids[1::2]}
    oracle = time_course_oracle(hard_cohort, held_out)
    assert oracle["pooled"] == oracle_statistics(truth, ids)
    assert oracle["per_split"] == {split: oracle_statistics(truth, v) for split, v in held_out.items()}
    text = "\n".join(time_course_oracle_markdown(oracle))
    assert f"| fold1 | {oracle['per_split']['fold1']['AUC']:.3f} |" in text
    assert f"| pooled | {oracle['pooled']['AUC']:.3f} |" in text and "grows and persists" in text


def test_a_real_cohort_has_no_oracle_and_a_foreign_truth_file_is_one_paragraph(tmp_path, hard_cohort):
    cohort_json = tmp_path / "cohort.json"
    cohort_json.write_text(hard_cohort.read_text())
    assert time_course_oracle(cohort_json, {"fold0": [1, 2]}) is None
    (tmp_path / TRUTH_FILE).write_text(json.dumps(_truth((1, [_event([0.2, 0.3])]))))
    with pytest.raises(DSAInputError) as error:
        time_course_oracle(cohort_json, {"fold0": [1, 2]})
    message = str(error.value)
    assert str(tmp_path / TRUTH_FILE) in message and "[2]" in message and "\n" not in message
    (tmp_path / TRUTH_FILE).write_text(json.dumps(_truth((1, [_event([0.2, None])]), (0, [_event([0.3])]))))
    with pytest.raises(DSAInputError, match="non-finite"):
        time_course_oracle(cohort_json, {"fold0": [1, 2]})


def test_synth_prints_the_oracle(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["synth", "--out", str(out), "--patients", "12", "--seed", "2", "--size", "64",
                 "--look-alikes", "hard", "--no-preview"]) == 0
    statistics = oracle_statistics(json.loads((out / TRUTH_FILE).read_text()))
    printed = capsys.readouterr().out
    assert (f"time-course oracle (perforation_d2/synth/oracle.py): AUC {statistics['AUC']:.3f}, sensitivity at 95% "
            f"specificity {statistics['sens_at_95spec']:.3f} over all {statistics['series']} series") in printed
