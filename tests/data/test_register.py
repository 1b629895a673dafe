"""Registration with Detectron2: dataset dicts, metadata, idempotence, $DETECTRON2_DATASETS, loader."""

from __future__ import annotations

import json
import logging
import uuid

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
    "series_file_names", "num_frames", "annotations",
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
    good, broken, with_splits = unique("good"), unique("broken"), unique("split")
    make_toy_cohort(root / good, num_patients=2)
    bad_json = make_toy_cohort(root / broken, num_patients=2)
    bad_json.write_text("{oops")
    split_json = make_toy_cohort(root / with_splits, num_patients=4)
    assert main(["split", "--cohort", str(split_json), "--folds", "2", "--seed", "0", "--out", str(root / with_splits)]) == 0
    (root / "not_a_cohort").mkdir()
    (root / "README.md").write_text("layout notes")

    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    with caplog.at_level(logging.WARNING):
        names = register_cohorts_under()  # never raises on a broken cohort
    assert good in names and with_splits in names and f"{with_splits}_fold1_val" in names
    assert broken not in DatasetCatalog.list()
    assert any(str(bad_json) in record.getMessage() for record in caplog.records)
    assert MetadataCatalog.get(good).json_file == str((root / good / "cohort.json").resolve())
    assert len(DatasetCatalog.get(good)) == 10
    assert register_cohorts_under(root) == []  # already registered: skipped
    assert register_cohorts_under(tmp_path / "absent") == []


def test_import_time_registration_skips_only_the_frame_file_check(tmp_path):
    """``import perforation_d2`` registers with check_images=False: no stat per frame, JSON still checked."""
    root = tmp_path / "datasets"
    missing_frame, broken_json = unique("nofile"), unique("badjson")
    json_file = make_toy_cohort(root / missing_frame, num_patients=2)
    (root / missing_frame / "frames" / "v1" / "000.png").unlink()
    make_toy_cohort(root / broken_json, num_patients=2).write_text('{"videos": []}')
    with pytest.raises(DSAInputError, match="missing image file"):
        register_dsa_cohort(unique("explicit"), json_file)  # explicit registration: full check
    assert register_cohorts_under(root, check_images=False) == [missing_frame]
    assert len(DatasetCatalog.get(missing_frame)) == 10


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
