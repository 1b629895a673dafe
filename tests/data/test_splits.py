"""Patient-level stratified K-fold and leave-one-cohort-out: invariants, reproducibility, errors."""

from __future__ import annotations

import json
import random

import pytest
from helpers.cohorts import make_toy_cohort

from perforation_d2.cli import main
from perforation_d2.data.cohort import series_labels
from perforation_d2.data.splits import leave_one_cohort_out, make_patient_folds, read_splits
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


# ---- read_splits: the one reader of a splits file ----------------------------------------------

def _cohort_of(video_ids: list[int]) -> dict:
    return {"videos": [{"id": v, "patient_id": f"P{v}", "cohort": "a"} for v in video_ids], "images": [],
            "annotations": []}


GOOD = {"folds": [{"fold": 0, "train_video_ids": [3, 4], "val_video_ids": [1, 2]},
                  {"fold": 1, "train_video_ids": [1, 2], "val_video_ids": [3, 4]}],
        "loco": [{"heldout": "site A", "train_video_ids": [3, 4], "val_video_ids": [1, 2]}]}


def test_read_splits_selects_folds_and_held_out_cohorts(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(GOOD))
    splits = read_splits(path, _cohort_of([1, 2, 3, 4]))
    assert [s.key for s in splits.folds] == [0, 1] and [s.key for s in splits.loco] == ["site A"]
    assert splits.fold(1).video_ids("val") == [3, 4] and splits.fold(1).video_ids("train") == [1, 2]
    assert splits.heldout("site A").description == "held-out cohort site A"
    assert splits.fold(0).description == "fold 0"
    with pytest.raises(DSAInputError, match=r"has no fold 5 \(available: 0, 1\)"):
        splits.fold(5)
    with pytest.raises(DSAInputError, match=r"has no held-out cohort B \(available: site A\)"):
        splits.heldout("B")
    with pytest.raises(DSAInputError, match=r"video ids \[5\] of the cohort are in no validation fold"):
        read_splits(path, _cohort_of([1, 2, 3, 4, 5]))


def _with(**changes):
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        index, field = key.split("__")
        data["folds"][int(index[1:])][field] = value
    return data


SPLIT_CASES = [
    ("top_list", [1, 2], "not a splits file"),
    ("folds_not_list", {"folds": {"0": []}}, "not a splits file"),
    ("loco_not_list", dict(GOOD, loco="all"), "'loco' must be a list or null"),
    ("fold_not_object", {"folds": [7]}, "fold entry #0: malformed entry"),
    ("fold_negative", _with(f0__fold=-1), "'fold' must be a non-negative integer"),
    ("fold_bool", _with(f0__fold=True), "'fold' must be a non-negative integer"),
    ("ids_string", _with(f0__val_video_ids="all"), "fold 0: 'val_video_ids' must be a list of video ids"),
    ("ids_float", _with(f0__val_video_ids=[1.0, 2]), "must be a list of video ids (integers), got 1.0"),
    ("ids_repeated", _with(f0__val_video_ids=[1, 1, 2]), "fold 0: 'val_video_ids' lists a video id twice"),
    ("ids_missing", {"folds": [{"fold": 0, "val_video_ids": [1]}]}, "fold 0: missing 'train_video_ids'"),
    ("both_sides", _with(f0__train_video_ids=[2, 3, 4]), "fold 0: video ids [2] are both in train and val"),
    ("fold_twice", _with(f1__fold=0), "fold 0 is listed more than once"),
    ("heldout_empty", dict(GOOD, loco=[{"heldout": "", "train_video_ids": [], "val_video_ids": []}]),
     "loco entry #0: 'heldout' must be a non-empty string"),
]


@pytest.mark.parametrize("name,content,message", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_bad_splits_files_are_one_paragraph(tmp_path, name, content, message):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DSAInputError) as info:
        read_splits(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_unreadable_splits_files(tmp_path):
    with pytest.raises(DSAInputError, match="splits file not found"):
        read_splits(tmp_path / "absent.json")
    nested = tmp_path / "nested.json"
    nested.write_text('{"folds": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DSAInputError, match="nested too deeply"):
        read_splits(nested)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"folds": [], "loco": [{"heldout": "\xe9"}]}')
    with pytest.raises(DSAInputError, match="not UTF-8"):
        read_splits(latin)


@pytest.mark.parametrize("args,message", [
    (["--seed", "-1"], "--seed: must be between 0 and"),
    (["--seed", "1.5"], "--seed: expected a seed"),
    (["--folds", "1"], "--folds: must be between 2 and"),
])
def test_split_arguments_are_checked_before_any_work(tmp_path, capsys, args, message):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=4)
    base = {"--cohort": str(json_file), "--folds": "2", "--seed": "0", "--out": str(tmp_path / "out")}
    base.update(dict(zip(args[::2], args[1::2])))
    with pytest.raises(SystemExit) as info:
        main(["split", *[item for pair in base.items() for item in pair]])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_split_out_must_be_a_folder(tmp_path, capsys):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=4)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out, message in ((a_file, "exists and is a file"), (a_file / "sub", "is a file, not a folder")):
        assert main(["split", "--cohort", str(json_file), "--folds", "2", "--seed", "0", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out}") and message in err and err.count("\n") == 1
    assert a_file.read_text() == "mine"
