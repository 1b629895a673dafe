"""Registration with Detectron2: dataset dicts, metadata, idempotence, $DETECTRON2_DATASETS, loader."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.structures import BoxMode
from helpers.cohorts import make_cfg, make_toy_cohort

from perforation_d2.cli import main
from perforation_d2.data import (
    DSAClipMapper,
    register_cohorts_under,
    register_dsa_cohort,
    register_dsa_splits,
)
from perforation_d2.errors import DSAInputError

DICT_KEYS = {
    "file_name", "image_id", "height", "width", "video_id", "frame_id", "patient_id", "cohort",
    "series_file_names", "num_frames", "series_frame_time_ms", "annotations",
}


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_one_dict_per_frame_as_documented(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2, frames=[3, 1])
    name = unique("reg")
    register_dsa_cohort(name, json_file, json_file.parent)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 4
    assert all(set(d) == DICT_KEYS for d in dicts)
    first = dicts[0]
    series = [str(tmp_path / "c" / "frames" / "v1" / f"{i:03d}.png") for i in range(3)]
    assert first["series_file_names"] == series and first["file_name"] == series[0]
    assert [d["frame_id"] for d in dicts] == [0, 1, 2, 0]
    assert [d["num_frames"] for d in dicts] == [3, 3, 3, 1]
    assert {d["series_frame_time_ms"] for d in dicts} == {250.0}  # the toy cohort's frame_time_ms
    assert (first["video_id"], first["patient_id"], first["cohort"], first["image_id"]) == (1, "P000", "toy", 1)
    assert first["annotations"] == [{"bbox": [8.0, 8.0, 16.0, 16.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}]
    assert dicts[3]["annotations"] == []  # patient 1 is negative
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["perforation"]
    assert meta.json_file == str(json_file.resolve()) and meta.image_root == str(json_file.parent.resolve())
    assert meta.evaluator_type == "dsa_series"


def test_registration_validates_up_front_and_is_idempotent(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2)
    name = unique("idem")
    register_dsa_cohort(name, json_file)  # image root defaults to the JSON's folder
    register_dsa_cohort(name, json_file, json_file.parent)  # same files again: fine
    assert len(DatasetCatalog.get(name)) == 10

    other = make_toy_cohort(tmp_path / "other", num_patients=1)
    with pytest.raises(DSAInputError, match=f"'{name}'.*already registered"):
        register_dsa_cohort(name, other)

    cohort = json.loads(json_file.read_text())
    cohort["images"][0]["video_id"] = 77
    bad = tmp_path / "c" / "bad.json"
    bad.write_text(json.dumps(cohort))
    bad_name = unique("bad")
    with pytest.raises(DSAInputError, match=r"bad\.json.*unknown video_id 77"):
        register_dsa_cohort(bad_name, bad)
    assert bad_name not in DatasetCatalog.list()


def test_splits_are_registered_and_checked(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=6, cohorts=("siteA", "siteB"))
    assert main(["split", "--cohort", str(json_file), "--folds", "2", "--seed", "1", "--out", str(json_file.parent)]) == 0
    splits_file = json_file.parent / "splits.json"
    name = unique("sp")
    names = register_dsa_splits(splits_file, name, json_file)
    assert set(names) == {f"{name}_fold{k}_{s}" for k in (0, 1) for s in ("train", "val")} | {
        f"{name}_loco_{site}_{s}" for site in ("siteA", "siteB") for s in ("train", "val")}
    splits = json.loads(splits_file.read_text())
    val = DatasetCatalog.get(f"{name}_fold0_val")
    assert {d["video_id"] for d in val} == set(splits["folds"][0]["val_video_ids"])
    assert MetadataCatalog.get(f"{name}_fold0_val").video_ids == splits["folds"][0]["val_video_ids"]
    assert {d["cohort"] for d in DatasetCatalog.get(f"{name}_loco_siteB_val")} == {"siteB"}
    register_dsa_splits(splits_file, name, json_file)  # idempotent

    splits["folds"][1]["val_video_ids"].append(999)
    splits["folds"][0]["val_video_ids"] = []
    splits_file.write_text(json.dumps(splits))
    with pytest.raises(DSAInputError) as info:
        register_dsa_splits(splits_file, unique("sp"), json_file)
    message = str(info.value)
    assert "splits.json" in message and "999" in message and "in no validation fold" in message


def test_cohorts_under_detectron2_datasets(tmp_path, monkeypatch, caplog):
    root = tmp_path / "datasets"
    good, broken, with_splits, bad_splits = unique("good"), unique("broken"), unique("split"), unique("badsplits")
    make_toy_cohort(root / good, num_patients=2)
    bad_json = make_toy_cohort(root / broken, num_patients=2)
    bad_json.write_text("{oops")
    split_json = make_toy_cohort(root / with_splits, num_patients=4)
    assert main(["split", "--cohort", str(split_json), "--folds", "2", "--seed", "0", "--out", str(root / with_splits)]) == 0
    make_toy_cohort(root / bad_splits, num_patients=2)
    (root / bad_splits / "splits.json").write_text('{"folds": "all"}')
    (root / "not_a_cohort").mkdir()
    (root / "README.md").write_text("layout notes")

    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    with caplog.at_level(logging.WARNING):
        names = register_cohorts_under()  # never raises on a broken cohort
    assert good in names and with_splits in names and f"{with_splits}_fold1_val" in names
    # Lazy: the broken JSON is not read until its dataset is needed, and then fails naming the file.
    assert broken in names
    with pytest.raises(DSAInputError, match=rf"^{re.escape(str(bad_json.resolve()))}: is not valid JSON"):
        DatasetCatalog.get(broken)
    # A broken splits file (read now, for the fold names) is a warning naming it; the cohort itself works.
    bad_splits_file = root / bad_splits / "splits.json"
    assert any(str(bad_splits_file) in record.getMessage() for record in caplog.records)
    assert bad_splits in names and not any(n.startswith(f"{bad_splits}_fold") for n in names)
    assert len(DatasetCatalog.get(bad_splits)) == 10
    assert MetadataCatalog.get(good).json_file == str((root / good / "cohort.json").resolve())
    assert len(DatasetCatalog.get(good)) == 10
    assert register_cohorts_under(root) == []  # already registered: skipped
    assert register_cohorts_under(tmp_path / "absent") == []


def test_import_time_registration_skips_only_the_frame_file_check(tmp_path):
    """``import perforation_d2`` registers with check_images=False: no stat per frame, JSON still checked
    (on the first ``DatasetCatalog.get``)."""
    root = tmp_path / "datasets"
    missing_frame, broken_json = unique("nofile"), unique("badjson")
    json_file = make_toy_cohort(root / missing_frame, num_patients=2)
    (root / missing_frame / "frames" / "v1" / "000.png").unlink()
    make_toy_cohort(root / broken_json, num_patients=2).write_text('{"videos": []}')
    with pytest.raises(DSAInputError, match="missing image file"):
        register_dsa_cohort(unique("explicit"), json_file)  # explicit registration: full check
    assert sorted(register_cohorts_under(root, check_images=False)) == sorted([missing_frame, broken_json])
    assert len(DatasetCatalog.get(missing_frame)) == 10
    with pytest.raises(DSAInputError, match="missing key 'images'"):
        DatasetCatalog.get(broken_json)


def test_train_loader_round_trip(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=4, frames=[3, 4, 1, 5])
    name = unique("loader")
    register_dsa_cohort(name, json_file)
    cfg = make_cfg(num_frames=3, frame_size=48)
    cfg.DATASETS.TRAIN = (name,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    loader = build_detection_train_loader(cfg, mapper=DSAClipMapper(cfg, is_train=True))
    batch = next(iter(loader))
    assert len(batch) == 2
    for sample in batch:
        assert tuple(sample["image"].shape) == (3, 3, 48, 48)
        assert len(sample["instances"]) <= 1 and sample["instances"].image_size == (48, 48)
        assert sample["video_id"] in (1, 3)  # only positive frames survive FILTER_EMPTY_ANNOTATIONS


def test_registration_under_datasets_is_lazy(tmp_path):
    """Names are registered without reading the cohort; the JSON is read and validated on get."""
    root = tmp_path / "datasets"
    name = unique("lazy")
    json_file = make_toy_cohort(root / name, num_patients=4)
    assert main(["split", "--cohort", str(json_file), "--folds", "2", "--seed", "0", "--out", str(root / name)]) == 0
    valid = json_file.read_text()
    json_file.write_text("not even JSON")  # broken before the scan: nothing notices yet
    names = register_cohorts_under(root, check_images=False)
    assert names == [name, *(f"{name}_fold{k}_{s}" for k in (0, 1) for s in ("train", "val"))]
    json_file.write_text(valid)  # repaired before the first get: the get reads this version
    assert len(DatasetCatalog.get(f"{name}_fold0_val")) + len(DatasetCatalog.get(f"{name}_fold0_train")) == 20

    other = unique("lazy")
    other_json = make_toy_cohort(root / other, num_patients=2)
    assert register_cohorts_under(root, check_images=False) == [other]
    cohort = json.loads(other_json.read_text())
    cohort["images"][0]["video_id"] = 77  # invalid after the scan: the get reports it
    other_json.write_text(json.dumps(cohort))
    with pytest.raises(DSAInputError) as info:
        DatasetCatalog.get(other)
    message = str(info.value)
    assert message.startswith(f"{other_json.resolve()}: 2 problems: image id 1: unknown video_id 77")
    assert "\n" not in message


def test_a_stale_splits_file_fails_on_get_of_a_fold_only(tmp_path):
    root = tmp_path / "datasets"
    name = unique("stale")
    json_file = make_toy_cohort(root / name, num_patients=4)
    assert main(["split", "--cohort", str(json_file), "--folds", "2", "--seed", "0", "--out", str(root / name)]) == 0
    splits = json.loads((root / name / "splits.json").read_text())
    splits["folds"][0]["val_video_ids"].append(404)
    (root / name / "splits.json").write_text(json.dumps(splits))
    assert f"{name}_fold0_val" in register_cohorts_under(root, check_images=False)
    assert len(DatasetCatalog.get(name)) == 20  # the cohort itself is fine
    with pytest.raises(DSAInputError, match=r"splits\.json: 1 problem: fold 0: val_video_ids names video ids \[404\]"):
        DatasetCatalog.get(f"{name}_fold1_train")


def test_missing_splits_file_is_named_as_such(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2)
    missing = tmp_path / "c" / "splits.json"
    with pytest.raises(DSAInputError) as info:
        register_dsa_splits(missing, unique("nosplits"), json_file)
    message = str(info.value)
    assert message.startswith(f"{missing}: splits file not found") and "cohort file" not in message


def _broken_datasets(tmp_path) -> tuple[dict, str]:
    """$DETECTRON2_DATASETS holding cohorts broken in ways that used to break every command."""
    root = tmp_path / "datasets"
    json_file = make_toy_cohort(root / "object_video_id", num_patients=2)
    cohort = json.loads(json_file.read_text())
    cohort["annotations"][0]["video_id"] = {"id": 1}  # a TypeError in the validator, once
    json_file.write_text(json.dumps(cohort))
    make_toy_cohort(root / "nested", num_patients=1).write_text("[" * 50_000 + "]" * 50_000)
    make_toy_cohort(root / "bad_splits", num_patients=1)
    (root / "bad_splits" / "splits.json").write_bytes(b"\xff\xfe{")
    (root / "unreadable" / "cohort.json").mkdir(parents=True)  # a folder where the file should be
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))
    return env, str(json_file)


def test_broken_cohorts_under_datasets_never_break_another_command(tmp_path):
    env, broken_json = _broken_datasets(tmp_path)
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    helped = run([sys.executable, "-m", "perforation_d2", "--help"])
    assert helped.returncode == 0 and "COMMAND" in helped.stdout and "Traceback" not in helped.stderr
    good = make_toy_cohort(tmp_path / "good", num_patients=2)
    # one process: validate an unrelated cohort, then ask for the broken one by name
    code = (
        "import sys\n"
        "from perforation_d2.cli import main\n"
        "from detectron2.data import DatasetCatalog\n"
        "from perforation_d2.errors import DSAInputError\n"
        f"assert main(['validate', {str(good)!r}]) == 0\n"
        "try:\n"
        "    DatasetCatalog.get('object_video_id')\n"
        "except DSAInputError as err:\n"
        "    print('GET-ERROR', err)\n"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "OK: 2 patients" in result.stdout
    get_error = next(line for line in result.stdout.splitlines() if line.startswith("GET-ERROR"))
    assert f"{Path(broken_json).resolve()}: 1 problem: annotation id 1: 'video_id' must be an integer" in get_error
    # the splits file that cannot be decoded is a warning naming it, at import
    assert "bad_splits" in result.stderr and "not UTF-8" in result.stderr


def test_frames_listed_out_of_order_come_out_in_frame_order(tmp_path):
    """Dataset dicts follow frame_id, not the order of 'images' in the file."""
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2, frames=[4, 3])
    cohort = json.loads(json_file.read_text())
    cohort["images"] = cohort["images"][::-1]  # frame 3, 2, 1, 0 of video 2 first, then video 1's
    json_file.write_text(json.dumps(cohort))
    name = unique("order")
    register_dsa_cohort(name, json_file)
    dicts = DatasetCatalog.get(name)
    assert [(d["video_id"], d["frame_id"]) for d in dicts] == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2)]
    expected = [str(json_file.parent.resolve() / "frames" / "v1" / f"{f:03d}.png") for f in range(4)]
    assert dicts[0]["series_file_names"] == expected
    assert [d["image_id"] for d in dicts[:4]] == [1, 2, 3, 4]
