"""Hostile cohort files: strict schema, safe frame paths, bounded memory, one paragraph each.

Each case below is a cohort an adversarial user could hand to ``validate``, ``split``, ``evaluate``
or import-time registration; the expected outcome is a :class:`DSAInputError` whose single
paragraph names the file and the offending ids, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.cohorts import make_toy_cohort

from perforation_d2.cli import main
from perforation_d2.data.cohort import cohort_problems, load_cohort
from perforation_d2.errors import DSAInputError


def _rewrite(json_file: Path, mutate) -> None:
    cohort = json.loads(json_file.read_text())
    mutate(cohort)
    json_file.write_text(json.dumps(cohort))


def _image(cohort: dict, image_id: int) -> dict:
    return next(i for i in cohort["images"] if i["id"] == image_id)


def _video(cohort: dict, video_id: int) -> dict:
    return next(v for v in cohort["videos"] if v["id"] == video_id)


# (id, mutation of the toy cohort (video 1: images 1-5, annotations 1-5), words the message must contain)
CASES = [
    ("annotation_video_id_object", lambda c: c["annotations"][0].update(video_id={"a": 1}),
     ["annotation id 1", "'video_id' must be an integer"]),
    ("annotation_area_nan_like", lambda c: c["annotations"][0].update(area="big"),
     ["annotation id 1", "'area' must be a non-negative finite number"]),
    ("category_object", lambda c: c["annotations"][1].update(category_id=[1]),
     ["annotation id 2", "category_id must be 1"]),
    ("iscrowd_bool", lambda c: c["annotations"][1].update(iscrowd=False), ["annotation id 2", "iscrowd must be 0"]),
    ("id_beyond_int64", lambda c: _image(c, 3).update(frame_id=2**70), ["image id 3", "'frame_id' must be an integer"]),
    ("width_huge", lambda c: _video(c, 2).update(width=10**12), ["video id 2", "'width' must be a positive integer up to"]),
    ("name_too_long", lambda c: _video(c, 2).update(name="x" * 300), ["video id 2", "'name' must be a non-empty string"]),
    ("label_float", lambda c: _video(c, 2).update(label=1.0), ["video id 2", "'label' must be 0 or 1"]),
    ("frame_time_negative", lambda c: _video(c, 2).update(frame_time_ms=-5), ["video id 2", "'frame_time_ms'"]),
    ("bbox_nested", lambda c: c["annotations"][0].update(bbox=[[8, 8], [16, 16]]), ["annotation id 1", "'bbox' must be"]),
    ("bbox_eight_numbers", lambda c: c["annotations"][0].update(bbox=[8] * 8), ["annotation id 1", "'bbox' must be"]),
    ("file_name_absolute", lambda c: _image(c, 2).update(file_name="/etc/passwd"),
     ["image id 2", "must be relative", "/etc/passwd"]),
    ("file_name_escapes", lambda c: _image(c, 2).update(file_name="frames/../../secret.png"),
     ["image id 2", "climbs out of the image root"]),
    ("file_name_root", lambda c: _image(c, 2).update(file_name="./"), ["image id 2", "names the image root itself"]),
    ("file_name_nul", lambda c: _image(c, 2).update(file_name="a\x00b.png"), ["image id 2", "'file_name' must be"]),
    ("file_name_folder", lambda c: _image(c, 2).update(file_name="frames/v1"), ["image id 2", "is a folder, not a frame"]),
]


@pytest.mark.parametrize("name,mutate,words", CASES, ids=[c[0] for c in CASES])
def test_hostile_fields_are_one_paragraph_naming_the_ids(tmp_path, name, mutate, words):
    json_file = make_toy_cohort(tmp_path / "c")
    _rewrite(json_file, mutate)
    with pytest.raises(DSAInputError) as info:
        load_cohort(json_file)
    message = str(info.value)
    assert message.startswith(str(json_file)) and "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_video_id_object_is_a_problem_not_a_type_error(tmp_path):
    """The case of issue 10 item 3 (an unhashable video_id made the validator raise TypeError)."""
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2)
    _rewrite(json_file, lambda c: c["annotations"][0].update(video_id={"id": 1}))
    problems = cohort_problems(json.loads(json_file.read_text()), json_file, check_images=False)
    assert problems == ["annotation id 1: 'video_id' must be an integer (64-bit) when present, got {'id': 1}"]


def test_symlink_out_of_the_image_root_is_refused(tmp_path):
    outside = tmp_path / "outside.png"
    json_file = make_toy_cohort(tmp_path / "c", num_patients=1)
    frame = tmp_path / "c" / "frames" / "v1" / "001.png"
    outside.write_bytes(frame.read_bytes())
    frame.unlink()
    frame.symlink_to(outside)
    with pytest.raises(DSAInputError, match=r"image id 2 \(video 1, frame 1\): .*001\.png leads outside the image root"):
        load_cohort(json_file)
    # a link to a folder of frames outside the root: the frames through it are outside too
    frame.unlink()
    frame.write_bytes(outside.read_bytes())
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "c" / "frames" / "v1").rename(elsewhere)
    (tmp_path / "c" / "frames" / "v1").symlink_to(elsewhere, target_is_directory=True)
    problems = cohort_problems(json.loads(json_file.read_text()), json_file)
    assert len(problems) == 5 and all("leads outside the image root" in p for p in problems)
    # a link inside the root is fine
    (tmp_path / "c" / "frames" / "v1").unlink()
    elsewhere.rename(tmp_path / "c" / "frames" / "real")
    (tmp_path / "c" / "frames" / "v1").symlink_to(tmp_path / "c" / "frames" / "real", target_is_directory=True)
    assert load_cohort(json_file)["videos"]


def test_lone_surrogate_and_deep_nesting_are_one_paragraph(tmp_path, capsys):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=1)
    text = json_file.read_text().replace('"series1"', '"series\\ud800"')
    json_file.write_text(text)
    assert main(["validate", str(json_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {json_file}") and "surrogate" in err and err.count("\n") == 1
    json_file.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["validate", str(json_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {json_file}") and "nested too deeply" in err and err.count("\n") == 1


def test_validate_checks_its_image_root_argument(tmp_path, capsys):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=1)
    assert main(["validate", str(json_file), "--image-root", str(json_file)]) == 2
    assert "--image-root must be an existing folder" in capsys.readouterr().err


_CAPPED = """
import contextlib, io, json, resource, sys
from perforation_d2.cli import main  # imports (torch, detectron2) before the cap: only the work is capped
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
cap = vm + {cap_mib} * 2**20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except BaseException as exc:  # MemoryError included: reported, not raised
            code = f"{{type(exc).__name__}}: {{exc}}"
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_capped(commands: list[list[str]], cap_mib: int = 400) -> list[tuple[int | str, str, str]]:
    """``(exit status, stdout, stderr)`` of each ``python -m perforation_d2`` command line, run in
    one process whose address space is capped ``cap_mib`` above what the imports took: a
    validation that allocates by the numbers in the file fails instead of taking the machine."""
    code = textwrap.dedent(_CAPPED.format(cap_mib=cap_mib))
    env = dict(os.environ, DETECTRON2_DATASETS=os.devnull)
    result = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [tuple(r) for r in json.loads(result.stdout.splitlines()[-1])]


def test_huge_numbers_are_reported_in_bounded_memory(tmp_path):
    """A frame_id of 10**9 once made the contiguity check build range(10**9) (22 GB); huge ids and
    frame numbers in every entry must cost no more than small ones."""
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2, frames=3)
    _rewrite(json_file, lambda c: _image(c, 3).update(frame_id=10**9))
    every = make_toy_cohort(tmp_path / "every", num_patients=3, frames=4)

    def huge(c):
        for image in c["images"]:
            image["frame_id"] = image["frame_id"] * 10**17
            image["id"] += 2**62
        for ann in c["annotations"]:
            ann["image_id"] += 2**62
    _rewrite(every, huge)
    validate, split, validate_every = run_capped([
        ["validate", str(json_file), "--skip-images"],
        ["split", "--cohort", str(json_file), "--folds", "2", "--seed", "0", "--out", str(tmp_path / "s")],
        ["validate", str(every)],
    ])
    assert validate[0] == 1, validate
    assert ("video id 1: frame_id not contiguous from 0 (missing frame_id 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... "
            "(999999998 in all))") in validate[1]
    assert split[0] == 2 and split[2].startswith(f"error: {json_file}") and "999999998 in all" in split[2], split
    assert not (tmp_path / "s").exists()
    assert validate_every[0] == 1 and validate_every[1].count("not contiguous") == 3, validate_every
