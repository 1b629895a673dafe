"""Cohort validation (SPEC section 1): every problem, named with its file and ids; the validate command."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from helpers.cohorts import make_toy_cohort

from perforation_d2.cli import main
from perforation_d2.data.cohort import cohort_problems, load_cohort, series_labels
from perforation_d2.errors import DSAInputError


def _rewrite(json_file: Path, mutate) -> dict:
    cohort = json.loads(json_file.read_text())
    mutate(cohort)
    json_file.write_text(json.dumps(cohort))
    return cohort


def _image(cohort: dict, image_id: int) -> dict:
    return next(i for i in cohort["images"] if i["id"] == image_id)


def _video(cohort: dict, video_id: int) -> dict:
    return next(v for v in cohort["videos"] if v["id"] == video_id)


def _set(entry: dict, **values) -> None:
    entry.update(values)


# (id, mutation of the toy cohort, words the message must contain). The toy cohort: video 1
# (positive, image ids 1-5, annotation ids 1-5), video 2 (negative, image ids 6-10), ...
CASES = [
    ("unknown_video_id", lambda c: _set(_image(c, 2), video_id=99), ["image id 2", "unknown video_id 99"]),
    ("unknown_image_id", lambda c: _set(c["annotations"][0], image_id=999),
     ["annotation id 1", "unknown image_id 999"]),
    ("duplicate_frame_id", lambda c: _set(_image(c, 2), frame_id=0),
     ["video id 1", "duplicate frame_id 0", "image ids 1, 2"]),
    ("non_contiguous_frame_id", lambda c: _set(_image(c, 5), frame_id=7),
     ["video id 1", "not contiguous", "missing frame_id 4, 5, 6"]),
    ("non_positive_box", lambda c: _set(c["annotations"][1], bbox=[3, 3, 0, 5]),
     ["annotation id 2", "image 2", "non-positive box size 0x5"]),
    ("negative_box", lambda c: _set(c["annotations"][1], bbox=[3, 3, 4, -1]),
     ["annotation id 2", "non-positive box size"]),
    ("box_outside", lambda c: _set(c["annotations"][2], bbox=[60, 10, 8, 8]),
     ["annotation id 3", "image 3", "outside the 64x64 image"]),
    ("box_negative_origin", lambda c: _set(c["annotations"][2], bbox=[-1, 10, 8, 8]),
     ["annotation id 3", "outside"]),
    ("missing_key", lambda c: _video(c, 2).pop("patient_id"), ["video id 2", "missing key 'patient_id'"]),
    ("wrong_type", lambda c: _set(_image(c, 7), width="64"), ["image id 7", "'width' must be a positive integer"]),
    ("bool_is_not_int", lambda c: _set(_image(c, 7), frame_id=True), ["image id 7", "'frame_id' must be an integer"]),
    ("bad_bbox_type", lambda c: _set(c["annotations"][0], bbox=[1, 2, 3]), ["annotation id 1", "'bbox' must be"]),
    ("video_id_disagrees", lambda c: _set(c["annotations"][0], video_id=2),
     ["annotation id 1", "video_id 2", "disagrees", "image 1", "video 1"]),
    ("empty_cohort", lambda c: c.update(videos=[], images=[], annotations=[]), ["empty", "no series"]),
    ("image_size_differs", lambda c: _set(_image(c, 8), width=32, height=32),
     ["image id 8", "video 2", "32x32 differs", "64x64"]),
    ("num_frames_mismatch", lambda c: _set(_video(c, 3), num_frames=9), ["video id 3", "num_frames is 9", "5 frames"]),
    ("video_without_frames", lambda c: c["videos"].append(dict(_video(c, 1), id=50)),
     ["video id 50", "no frames"]),
    ("duplicate_video_id", lambda c: c["videos"].append(dict(_video(c, 1))), ["duplicate video id 1"]),
    ("duplicate_image_id", lambda c: _set(_image(c, 9), id=8), ["duplicate image id 8"]),
    ("bad_label", lambda c: _set(_video(c, 2), label=2), ["video id 2", "'label' must be 0 or 1"]),
    ("bad_category", lambda c: _set(c["annotations"][4], category_id=2), ["annotation id 5", "category_id must be 1"]),
    ("missing_section", lambda c: c.pop("images"), ["missing key 'images'"]),
    ("section_wrong_type", lambda c: _set(c, annotations={}), ["'annotations' must be a list"]),
]


@pytest.mark.parametrize("name,mutate,words", CASES, ids=[c[0] for c in CASES])
def test_every_validation_error_names_file_and_ids(tmp_path, name, mutate, words):
    json_file = make_toy_cohort(tmp_path / "c")
    load_cohort(json_file)  # valid before the mutation
    _rewrite(json_file, mutate)
    with pytest.raises(DSAInputError) as info:
        load_cohort(json_file)
    message = str(info.value)
    assert str(json_file) in message
    for word in words:
        assert word in message, (word, message)
    assert "\n" not in message


def test_missing_image_files_are_listed(toy_cohort):
    os.remove(toy_cohort.parent / "frames" / "v1" / "002.png")
    os.remove(toy_cohort.parent / "frames" / "v4" / "000.png")
    with pytest.raises(DSAInputError) as info:
        load_cohort(toy_cohort)
    message = str(info.value)
    assert str(toy_cohort) in message and "2 problems" in message
    assert "image id 3 (video 1, frame 2): missing image file" in message and "v1/002.png" in message
    assert "image id 16 (video 4, frame 0)" in message


def test_all_problems_are_listed_at_once(toy_cohort):
    def several(c):
        _set(_image(c, 2), video_id=99)
        _set(c["annotations"][2], bbox=[60, 10, 8, 8])
        _set(_image(c, 12), frame_id=11)
        _video(c, 4).pop("cohort")

    cohort = _rewrite(toy_cohort, several)
    problems = cohort_problems(cohort, toy_cohort, check_images=False)
    # Image 2 leaving video 1 also leaves a gap in video 1's frames: 5 problems, nothing repeated.
    assert len(problems) == 5, problems
    joined = " | ".join(problems)
    for word in ("image id 2: unknown video_id 99", "video id 1: frame_id not contiguous", "annotation id 3",
                 "video id 3: frame_id not contiguous", "video id 4: missing key 'cohort'"):
        assert word in joined


def test_unreadable_and_non_json_files(tmp_path):
    with pytest.raises(DSAInputError, match="does not exist"):
        load_cohort(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DSAInputError, match=r"bad\.json: is not valid JSON"):
        load_cohort(bad)
    with pytest.raises(DSAInputError, match="folder"):
        load_cohort(tmp_path)
    top_list = tmp_path / "list.json"
    top_list.write_text("[]")
    with pytest.raises(DSAInputError, match="top level must be a JSON object"):
        load_cohort(top_list)


def test_image_root_and_skip_images(tmp_path):
    json_file = make_toy_cohort(tmp_path / "frames_here", num_patients=2)
    moved = tmp_path / "elsewhere" / "cohort.json"
    moved.parent.mkdir()
    moved.write_text(json_file.read_text())
    with pytest.raises(DSAInputError, match="missing image file"):
        load_cohort(moved)  # default root: the JSON's folder, which has no frames
    assert load_cohort(moved, image_root=json_file.parent)["videos"]
    assert load_cohort(moved, check_images=False)["videos"]


def test_series_labels_use_label_then_boxes(toy_cohort):
    cohort = load_cohort(toy_cohort)
    assert series_labels(cohort) == {1: 1, 2: 0, 3: 1, 4: 0}
    _video(cohort, 2)["label"] = 1  # a positive series without boxes is legal
    _video(cohort, 3)["label"] = None
    assert series_labels(cohort) == {1: 1, 2: 1, 3: 1, 4: 0}


def test_label_0_with_boxes_is_legal_and_wins(toy_cohort, caplog):
    """SPEC section 1: the label is `label` when present, boxes only decide without it."""
    cohort = _rewrite(toy_cohort, lambda c: _set(_video(c, 1), label=0))
    with caplog.at_level(logging.WARNING, logger="perforation_d2.data.cohort"):
        assert cohort_problems(cohort, toy_cohort) == []
    assert "video id 1 has label 0 but 5 box(es)" in caplog.text
    assert series_labels(load_cohort(toy_cohort))[1] == 0


def test_validate_command_exit_codes(tmp_path, capsys):
    json_file = make_toy_cohort(tmp_path / "ok", num_patients=3, series_per_patient=2, frames=[1, 2, 3, 4, 5, 6])
    assert main(["validate", str(json_file)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "3 patients, 6 series (4 positive), 21 frames, 14 boxes" in out

    _rewrite(json_file, lambda c: (_set(c["annotations"][0], image_id=999), _set(c["annotations"][1], bbox=[0, 0, -2, 4])))
    assert main(["validate", str(json_file)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2
    assert any("unknown image_id 999" in line for line in lines)
    assert any("non-positive box size" in line for line in lines)
    assert "INVALID, 2 problems" in captured.err

    broken = tmp_path / "broken.json"
    broken.write_text("]")
    assert main(["validate", str(broken)]) == 2
    assert "broken.json" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "absent.json")]) == 2

    # --image-root: frames found elsewhere
    other = make_toy_cohort(tmp_path / "frames_only", num_patients=1)
    copy = tmp_path / "copy.json"
    copy.write_text(other.read_text())
    assert main(["validate", str(copy)]) == 1
    assert main(["validate", str(copy), "--image-root", str(other.parent)]) == 0
