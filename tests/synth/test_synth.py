"""The synthetic DSA cohort generator (``python -m perforation_d2 synth``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from perforation_d2.cli import main
from perforation_d2.data.cohort import load_cohort
from perforation_d2.errors import DSAInputError
from perforation_d2.synth import series as synth_series
from perforation_d2.synth.cohort import generate_synthetic_cohort

SIZE = 96


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    generate_synthetic_cohort(out, num_patients=30, seed=0, size=SIZE)
    return out


def _load(cohort_dir: Path) -> tuple[dict, dict]:
    cohort = json.loads((cohort_dir / "cohort.json").read_text())
    truth = json.loads((cohort_dir / "synth_truth.json").read_text())
    return cohort, {v["video_id"]: v for v in truth["videos"]}


def _frames(cohort_dir: Path, cohort: dict, video_id: int) -> np.ndarray:
    images = sorted((i for i in cohort["images"] if i["video_id"] == video_id), key=lambda i: i["frame_id"])
    return np.stack([np.asarray(Image.open(cohort_dir / i["file_name"])) for i in images]).astype(np.float32)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = generate_synthetic_cohort(tmp_path / "a", 3, seed=5, size=64).parent
    b = generate_synthetic_cohort(tmp_path / "b", 3, seed=5, size=64).parent
    c = generate_synthetic_cohort(tmp_path / "c", 3, seed=6, size=64).parent
    files_a, files_b = _all_files(a), _all_files(b)
    assert files_a.keys() == files_b.keys()
    assert any(name.endswith(".png") and name.startswith("frames") for name in files_a)
    for name, data in files_a.items():
        assert data == files_b[name], name
    assert (a / "cohort.json").read_bytes() != (c / "cohort.json").read_bytes()
    frame = "frames/SYN-0001_S01/000.png"
    assert files_a[frame] != _all_files(c).get(frame)


def test_cohort_follows_the_spec(cohort_dir: Path) -> None:
    cohort = load_cohort(cohort_dir / "cohort.json")  # every SPEC section 1 check, images included
    videos = cohort["videos"]
    assert {v["cohort"] for v in videos} == {"synth"}
    assert all(v["label"] in (0, 1) for v in videos)
    assert all(v["patient_id"].startswith("SYN-") and len(v["patient_id"]) == 8 for v in videos)
    per_patient: dict[str, int] = {}
    for v in videos:
        per_patient[v["patient_id"]] = per_patient.get(v["patient_id"], 0) + 1
        assert v["width"] == v["height"] == SIZE
        if v["num_frames"] > 1:
            assert 250.0 <= v["frame_time_ms"] <= 1000.0
    assert len(per_patient) == 30 and set(per_patient.values()) <= {1, 2, 3}
    positive_patients = {v["patient_id"] for v in videos if v["label"] == 1}
    assert 0.3 <= len(positive_patients) / 30 <= 0.6
    for image in cohort["images"]:
        assert not Path(image["file_name"]).is_absolute()
        frame = Image.open(cohort_dir / image["file_name"])
        assert frame.mode == "L" and frame.size == (SIZE, SIZE)
    boxed = {a["video_id"] for a in cohort["annotations"]}
    assert boxed == {v["id"] for v in videos if v["label"] == 1}
    for ann in cohort["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
    preview = Image.open(cohort_dir / "preview.png")
    assert preview.mode == "RGB" and preview.width > 4 * SIZE


def test_series_lengths_range_from_single_frames_to_long_runs(cohort_dir: Path) -> None:
    cohort, _ = _load(cohort_dir)
    lengths = [v["num_frames"] for v in cohort["videos"]]
    assert 1 in lengths and max(lengths) >= 21 and max(lengths) <= 30
    assert np.mean([8 <= n <= 20 for n in lengths]) >= 0.5
    single = [v for v in cohort["videos"] if v["num_frames"] == 1]
    assert all(v["frame_time_ms"] is None for v in single)
    rng = np.random.default_rng(0)
    draws = np.array([synth_series.sample_num_frames(rng, 30) for _ in range(2000)])
    assert draws.min() == 1 and draws.max() == 30 and 0.6 < np.mean((draws >= 8) & (draws <= 20)) < 0.85


def test_perforation_starts_by_the_arterial_phase_and_persists(cohort_dir: Path) -> None:
    cohort, truth = _load(cohort_dir)
    boxes_by_video: dict[int, dict[int, list[float]]] = {}
    frame_of = {i["id"]: i["frame_id"] for i in cohort["images"]}
    instance_ids: dict[int, set[int]] = {}
    for ann in cohort["annotations"]:
        boxes_by_video.setdefault(ann["video_id"], {})[frame_of[ann["image_id"]]] = ann["bbox"]
        instance_ids.setdefault(ann["video_id"], set()).add(ann["instance_id"])
    positives = [v for v in cohort["videos"] if v["label"] == 1]
    assert len(positives) >= 8
    for v in positives:
        frames = sorted(boxes_by_video[v["id"]])
        phases = truth[v["id"]]["phases"]
        arterial = [f for f, p in enumerate(phases) if p == "arterial"]
        assert frames == list(range(frames[0], v["num_frames"])), v["name"]  # persists to the last frame
        if arterial:
            assert frames[0] <= arterial[-1], (v["name"], frames[0], phases)
        else:
            assert frames[0] == 0, v["name"]  # the run starts after the tear
        assert len(instance_ids[v["id"]]) == 1
        (perforation,) = [e for e in truth[v["id"]]["events"] if e["kind"] == "perforation"]
        assert perforation["frames"] == frames
    assert len({i for ids in instance_ids.values() for i in ids}) == len(positives)


def test_look_alikes_appear_in_negative_and_positive_series_unannotated(cohort_dir: Path) -> None:
    cohort, truth = _load(cohort_dir)
    kinds: set[str] = set()
    negatives_with = []
    positives_with = []
    for v in cohort["videos"]:
        shown = [e for e in truth[v["id"]]["events"] if e["kind"] != "perforation" and e["frames"]]
        kinds.update(e["kind"] for e in shown)
        (negatives_with if v["label"] == 0 else positives_with).append(bool(shown))
        for e in shown:
            if e["kind"] == "transient":
                assert len(e["frames"]) <= 2
            if e["kind"] == "venous_pool":
                assert all(truth[v["id"]]["phases"][f] in ("venous", "late") for f in e["frames"])
    assert kinds == {"crossing", "venous_pool", "transient"}
    assert np.mean(negatives_with) >= 0.7 and any(positives_with)
    assert {a["video_id"] for a in cohort["annotations"]} <= {v["id"] for v in cohort["videos"] if v["label"] == 1}


def test_perforation_is_darker_than_its_surroundings(cohort_dir: Path) -> None:
    cohort, _ = _load(cohort_dir)
    frame_of = {i["id"]: (i["video_id"], i["frame_id"]) for i in cohort["images"]}
    by_video: dict[int, list[tuple[int, list[float]]]] = {}
    for ann in cohort["annotations"]:
        vid, f = frame_of[ann["image_id"]]
        by_video.setdefault(vid, []).append((f, ann["bbox"]))
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    contrasts = []
    for vid, boxes in by_video.items():
        frames = _frames(cohort_dir, cohort, vid)
        for f, (x, y, w, h) in boxes:
            cx, cy = x + w / 2, y + h / 2
            core = (np.abs(xx - cx) <= w / 4) & (np.abs(yy - cy) <= h / 4)
            dist = np.maximum(np.abs(xx - cx) - w / 2, np.abs(yy - cy) - h / 2)
            ring = (dist >= 2) & (dist <= 2 + max(w, h) / 2)
            contrasts.append(np.median(frames[f][ring]) - frames[f][core].mean())
    contrasts = np.array(contrasts)
    assert contrasts.size > 50
    assert np.all(contrasts > 5.0), contrasts.min()
    assert np.median(contrasts) > 20.0


def _auc(labels: list[int], scores: list[float]) -> float:
    """ROC AUC as the Mann-Whitney probability that a positive outscores a negative (ties half)."""
    y, s = np.asarray(labels), np.asarray(scores)
    diff = s[y == 1][:, None] - s[y == 0][None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def _blob_response(frame: np.ndarray, sigma: float) -> np.ndarray:
    """Dark-blob strength (both Hessian eigenvalues of the darkness large): lines score ~0."""
    dark = -np.log((frame + 1.0) / 190.0)
    dxx = ndimage.gaussian_filter(dark, sigma, order=(0, 2))
    dyy = ndimage.gaussian_filter(dark, sigma, order=(2, 0))
    dxy = ndimage.gaussian_filter(dark, sigma, order=(1, 1))
    weaker = (dxx + dyy) / 2 + np.sqrt(((dxx - dyy) / 2) ** 2 + dxy**2)
    return ndimage.maximum_filter(np.maximum(-weaker, 0.0), 3)


def test_time_course_separates_what_one_frame_cannot(cohort_dir: Path) -> None:
    """A blob persisting over 4 frames classifies series far better than the darkest blob of any frame."""
    cohort, _ = _load(cohort_dir)
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    inside = np.hypot(xx - SIZE / 2, yy - SIZE / 2) < 0.42 * SIZE  # off the skull and field edges
    labels, single, persistent = [], [], []
    for v in cohort["videos"]:
        frames = _frames(cohort_dir, cohort, v["id"])
        response = np.stack([_blob_response(f, 0.021 * SIZE) * inside for f in frames])
        k = min(4, len(response))
        labels.append(v["label"])
        single.append(response.max())
        persistent.append(max(response[t : t + k].min(axis=0).max() for t in range(len(response) - k + 1)))
    auc_single, auc_temporal = _auc(labels, single), _auc(labels, persistent)
    print(f"series AUC: darkest blob of any frame {auc_single:.3f}, blob persisting 4 frames {auc_temporal:.3f}")
    assert auc_temporal > 0.8 and auc_temporal > auc_single + 0.15, (auc_single, auc_temporal)


def test_cohort_option_spreads_patients_over_sites(tmp_path: Path) -> None:
    generate_synthetic_cohort(tmp_path / "two", 4, seed=1, size=64, num_cohorts=2, positive_fraction=1.0)
    cohort = json.loads((tmp_path / "two" / "cohort.json").read_text())
    site_of: dict[str, set[str]] = {}
    for v in cohort["videos"]:
        site_of.setdefault(v["patient_id"], set()).add(v["cohort"])
    assert all(len(s) == 1 for s in site_of.values())
    assert set().union(*site_of.values()) == {"synth_a", "synth_b"}
    labels_by_patient: dict[str, list[int]] = {}
    for v in cohort["videos"]:
        labels_by_patient.setdefault(v["patient_id"], []).append(v["label"])
    assert all(any(labels) for labels in labels_by_patient.values())


def test_cli_refuses_to_overwrite_without_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cohort"
    args = ["synth", "--out", str(out), "--patients", "1", "--seed", "0", "--size", "64"]
    assert main(args) == 0
    before = _all_files(out)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and str(out) in err
    assert err.strip().count("\n") == 0  # one paragraph, no traceback
    assert _all_files(out) == before
    assert main([*args[:-4], "--seed", "1", "--size", "64", "--overwrite"]) == 0
    assert _all_files(out) != before
    # --overwrite never deletes a folder that this command did not write.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["synth", "--out", str(foreign), "--patients", "1", "--seed", "0", "--overwrite"]) == 2
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "foreign"]


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_render(*args, **kwargs)

    import perforation_d2.synth.cohort as synth

    real_render = synth.render_series
    monkeypatch.setattr(synth, "render_series", failing_render)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthetic_cohort(tmp_path / "cohort", 3, seed=0, size=64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("patients", "size", "options", "message"),
    [
        (0, 64, {}, "number of patients"),
        (2, 32, {}, "frame size"),
        (2, 64, {"positive_fraction": 1.5}, "positive fraction"),
        (2, 64, {"num_cohorts": 3}, "cohorts need at least"),
    ],
)
def test_bad_settings_are_reported(tmp_path: Path, patients: int, size: int, options: dict, message: str) -> None:
    with pytest.raises(DSAInputError, match=message):
        generate_synthetic_cohort(tmp_path / "x", patients, seed=0, size=size, **options)
    assert not (tmp_path / "x").exists()
    with pytest.raises(TypeError, match="unknown options"):
        generate_synthetic_cohort(tmp_path / "x", 1, seed=0, size=64, colour=True)


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "-1"], "--seed: must be between 0 and"),
    (["--size", "0"], "--size: must be between 64 and 2048"),
    (["--positive-fraction", "nan"], "--positive-fraction: must be a finite number"),
    (["--max-frames", "0"], "--max-frames: must be between 1 and"),
])
def test_cli_arguments_are_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   args: list[str], message: str) -> None:
    base = {"--out": str(tmp_path / "out"), "--patients": "1", "--seed": "0", "--size": "64"}
    base.update(dict(zip(args[::2], args[1::2])))
    with pytest.raises(SystemExit) as info:
        main(["synth", *[item for pair in base.items() for item in pair]])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_out_under_a_file_is_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["synth", "--out", str(a_file / "cohort"), "--patients", "1", "--seed", "0", "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {a_file / 'cohort'}") and "is a file, not a folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and a_file.read_text() == "mine"


def test_library_refuses_a_negative_seed(tmp_path: Path) -> None:
    with pytest.raises(DSAInputError, match=r"the seed \(--seed\) must be a non-negative integer"):
        generate_synthetic_cohort(tmp_path / "x", 1, seed=-1, size=64)
    assert list(tmp_path.iterdir()) == []
