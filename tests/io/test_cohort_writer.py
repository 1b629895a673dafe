"""CohortWriter: the cohort JSON it writes (ids, fields, frame files) and its three targets."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from perforation_d2.data.cohort import cohort_problems, load_cohort
from perforation_d2.data.cohort_writer import COHORT_FILE, CohortWriter
from perforation_d2.io.ownership import MARKER_FILE
from perforation_d2.io.transaction import OutputTransaction


def fill(writer: CohortWriter, dtype=np.uint8) -> list[np.ndarray]:
    frames = [np.full((6, 8), 10 * (k + 1), dtype=dtype) for k in range(3)]
    a = writer.add_video("runA", 8, 6, "P-1", "site", 250.0, label=1)
    b = writer.add_video("runB", 8, 6, "P-2", "site", None)
    first = writer.add_frame(a, frames[0])
    writer.add_frame(a, frames[1])
    writer.add_frame(b, frames[2])
    writer.add_box(first + 1, [1, 2, 3, 4], instance_id=7)
    return frames


EXPECTED = {
    "info": {"description": "test"},
    "videos": [
        {"id": 1, "name": "runA", "width": 8, "height": 6, "patient_id": "P-1", "cohort": "site", "num_frames": 2,
         "frame_time_ms": 250.0, "label": 1},
        {"id": 2, "name": "runB", "width": 8, "height": 6, "patient_id": "P-2", "cohort": "site", "num_frames": 1,
         "frame_time_ms": None},
    ],
    "images": [
        {"id": 1, "file_name": "frames/runA/000.png", "video_id": 1, "frame_id": 0, "width": 8, "height": 6},
        {"id": 2, "file_name": "frames/runA/001.png", "video_id": 1, "frame_id": 1, "width": 8, "height": 6},
        {"id": 3, "file_name": "frames/runB/000.png", "video_id": 2, "frame_id": 0, "width": 8, "height": 6},
    ],
    "annotations": [
        {"id": 1, "image_id": 2, "video_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12.0, "iscrowd": 0,
         "instance_id": 7},
    ],
    "categories": [{"id": 1, "name": "perforation"}],
}


def test_a_cohort_written_into_a_transaction(tmp_path):
    out = tmp_path / "cohort"
    with OutputTransaction(out, "synth", whole_folder=True) as txn:
        writer = CohortWriter(txn, info={"description": "test"})
        frames = fill(writer)
        assert writer.write() == EXPECTED
        assert not out.exists()  # published only at the end
    text = (out / COHORT_FILE).read_text()
    assert json.loads(text) == EXPECTED and text == json.dumps(EXPECTED, indent=1) + "\n"
    for image, pixels in zip(EXPECTED["images"], frames):
        assert np.array_equal(np.asarray(Image.open(out / image["file_name"])), pixels)
    assert cohort_problems(load_cohort(out / COHORT_FILE), out / COHORT_FILE) == []
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["outputs"]["synth"] == sorted([COHORT_FILE, *(i["file_name"] for i in EXPECTED["images"])])


def test_a_plain_folder_and_sixteen_bit_frames(tmp_path):
    writer = CohortWriter(tmp_path / "scratch", info={"description": "test"})
    frames = fill(writer, np.uint16)
    writer.write()
    assert json.loads((tmp_path / "scratch" / COHORT_FILE).read_text()) == EXPECTED
    with Image.open(tmp_path / "scratch" / "frames" / "runA" / "001.png") as image:
        assert image.mode.startswith("I") and np.array_equal(np.asarray(image), frames[1])


def test_in_memory_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    writer = CohortWriter(None, info={"description": "test"})
    fill(writer)
    assert writer.write() == EXPECTED and list(tmp_path.iterdir()) == []
    bare = CohortWriter(None)
    bare.add_frame(bare.add_video("v", 4, 4, "p", "c", 100.0), file_name="s0/000.png")
    assert "info" not in bare.cohort() and bare.cohort()["images"][0]["file_name"] == "s0/000.png"


def test_the_toy_cohort_can_list_frames_out_of_order(tmp_path):
    from helpers.cohorts import frame_background, make_toy_cohort

    json_file = make_toy_cohort(tmp_path / "c", num_patients=2, frames=[3, 2], size=32, frame_order="shuffled")
    cohort = json.loads(json_file.read_text())
    assert [(i["video_id"], i["frame_id"]) for i in cohort["images"]] == [(1, 2), (2, 1), (1, 1), (2, 0), (1, 0)]
    assert [i["id"] for i in cohort["images"]] == [1, 2, 3, 4, 5]
    assert cohort_problems(cohort, json_file) == []
    images = {i["id"]: i for i in cohort["images"]}
    for annotation in cohort["annotations"]:  # patient 0 is positive: its boxes follow their frames
        assert images[annotation["image_id"]]["video_id"] == annotation["video_id"] == 1
    for image in cohort["images"]:
        pixels = np.asarray(Image.open(json_file.parent / image["file_name"]))
        assert pixels[0, 0] == frame_background(image["frame_id"])
