"""Patient-level stratified K-fold and leave-one-cohort-out: invariants, reproducibility, errors."""

from __future__ import annotations

import json
import random

import pytest
from helpers.cohorts import make_toy_cohort

from perforation_d2.cli import main
from perforation_d2.data.cohort import series_labels
from perforation_d2.data.splits import leave_one_cohort_out, make_patient_folds
from perforation_d2.errors import DSAInputError


def synthetic_cohort(num_patients: int, seed: int = 0, sites: int = 1) -> dict:
    """An in-memory cohort (ids and labels only: splits never read frames)."""
    rng = random.Random(seed)
    videos = []
    for patient in range(num_patients):
        for _ in range(rng.choice([1, 1, 2, 3])):
            videos.append({
                "id": len(videos) + 1, "patient_id": f"P{patient:03d}", "cohort": f"site{patient % sites}",
                "label": int(rng.random() < 0.4),
            })
    return {"videos": videos, "images": [], "annotations": []}


def check_folds(cohort: dict, folds: list[dict], k: int) -> None:
    labels = series_labels(cohort)
    all_ids = {v["id"] for v in cohort["videos"]}
    patient_of = {v["id"]: v["patient_id"] for v in cohort["videos"]}
    assert [f["fold"] for f in folds] == list(range(k))
    seen_val: list[int] = []
    val_patients_seen: set[str] = set()
    for fold in folds:
        train, val = set(fold["train_video_ids"]), set(fold["val_video_ids"])
        assert train | val == all_ids and not train & val
        assert set(fold["val_patients"]) == {patient_of[v] for v in val}
        assert set(fold["train_patients"]) == {patient_of[v] for v in train}
        assert not set(fold["val_patients"]) & set(fold["train_patients"])  # no patient on both sides
        assert not set(fold["val_patients"]) & val_patients_seen  # nor in two validation folds
        val_patients_seen |= set(fold["val_patients"])
        assert fold["n_pos_val"] == sum(labels[v] for v in val) >= 1
        assert fold["n_neg_val"] == len(val) - fold["n_pos_val"] >= 1
        assert fold["n_pos_train"] + fold["n_pos_val"] == sum(labels.values())
        seen_val += fold["val_video_ids"]
    assert sorted(seen_val) == sorted(all_ids)  # every series in exactly one validation fold


@pytest.mark.parametrize("k", [2, 3, 5])
def test_fold_invariants(k):
    cohort = synthetic_cohort(40, seed=k)
    check_folds(cohort, make_patient_folds(cohort, k, seed=7), k)


def test_positive_series_are_balanced_when_patients_have_one_series():
    videos = [{"id": i + 1, "patient_id": f"P{i}", "cohort": "a", "label": int(i % 3 == 0)} for i in range(31)]
    cohort = {"videos": videos, "images": [], "annotations": []}
    for seed in range(3):
        folds = make_patient_folds(cohort, 4, seed)
        positives = [f["n_pos_val"] for f in folds]
        negatives = [f["n_neg_val"] for f in folds]
        assert max(positives) - min(positives) <= 1, positives
        assert max(negatives) - min(negatives) <= 1, negatives


def test_same_seed_same_split_other_seed_other_split():
    cohort = synthetic_cohort(30, seed=1)
    assert make_patient_folds(cohort, 3, seed=5) == make_patient_folds(cohort, 3, seed=5)
    assert make_patient_folds(cohort, 3, seed=5) != make_patient_folds(cohort, 3, seed=6)


def test_too_many_folds_is_a_clear_error():
    cohort = synthetic_cohort(6, seed=2)
    with pytest.raises(DSAInputError, match="only 6 patients"):
        make_patient_folds(cohort, 7, 0)
    positives_only_two = {"videos": [
        {"id": i + 1, "patient_id": f"P{i}", "cohort": "a", "label": int(i < 2)} for i in range(10)
    ], "images": [], "annotations": []}
    with pytest.raises(DSAInputError, match="only 2 patients with a positive series"):
        make_patient_folds(positives_only_two, 3, 0)
    with pytest.raises(DSAInputError, match=">= 2"):
        make_patient_folds(cohort, 1, 0)


def test_leave_one_cohort_out():
    cohort = synthetic_cohort(24, seed=3, sites=3)
    splits = leave_one_cohort_out(cohort)
    assert [s["heldout"] for s in splits] == ["site0", "site1", "site2"]
    site_of = {v["id"]: v["cohort"] for v in cohort["videos"]}
    for split in splits:
        assert {site_of[v] for v in split["val_video_ids"]} == {split["heldout"]}
        assert split["heldout"] not in {site_of[v] for v in split["train_video_ids"]}
        assert len(split["train_video_ids"]) + len(split["val_video_ids"]) == len(cohort["videos"])
    assert leave_one_cohort_out(synthetic_cohort(10, sites=1)) == []

    cohort["videos"].append({"id": 999, "patient_id": "P000", "cohort": "site1", "label": 0})  # spans 2 sites
    with pytest.raises(DSAInputError, match="P000"):
        leave_one_cohort_out(cohort)


def test_split_command_writes_once(tmp_path, capsys):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=6, cohorts=("a", "b"))
    out = tmp_path / "out"
    args = ["split", "--cohort", str(json_file), "--folds", "3", "--seed", "4", "--out", str(out)]
    assert main(args) == 0
    written = json.loads((out / "splits.json").read_text())
    assert written["seed"] == 4 and written["num_folds"] == 3 and written["cohort"] == str(json_file.resolve())
    assert len(written["folds"]) == 3 and [s["heldout"] for s in written["loco"]] == ["a", "b"]
    before = (out / "splits.json").read_text()

    assert main(args) == 2  # exists: refused, untouched
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "splits.json").read_text() == before
    assert main([*args[:5], "--seed", "5", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "splits.json").read_text())["seed"] == 5

    assert main(["split", "--cohort", str(json_file), "--folds", "9", "--seed", "0", "--out", str(tmp_path / "x")]) == 2
    assert "only 6 patients" in capsys.readouterr().err
    assert not (tmp_path / "x" / "splits.json").exists()
