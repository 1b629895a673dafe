"""Hostile input, one table: every case runs the real command in a subprocess and must end cleanly.

Each case prepares its input (a broken file, an absurd argument, an output folder that is not the
tool's) and names what it expects:

- "error": a non-zero exit, a stderr of one paragraph starting with ``error:`` (or, for a bad
  argument, argparse's usage followed by one ``error:`` sentence), no traceback, and NO file
  anywhere in the workspace created, changed or removed;
- "ok": exit 0, and nothing changed outside the case's own output folder.

All cases run once per module, a few at a time; each test checks one case's run. Every run has
a memory cap (``RLIMIT_AS``: the ~4 GB of address space that importing torch maps,
plus 2 GB) and a timeout, so a regression to unbounded work fails here instead of taking the
machine. ``$DETECTRON2_DATASETS``, ``$HOME`` and the pseudonymisation salt are pointed inside the
workspace. Classes: wrong predictions boxes, deep JSON, absurd frame ids, paths leaving the image
root, bad seeds and counts, outputs that are files or not the tool's, unreadable configs, lone
surrogates, broken cohorts under ``$DETECTRON2_DATASETS``, extreme DICOM frame times.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.cohorts import make_toy_cohort
from helpers.dicom_factory import make_identity, ramp_frames, write_xa
from helpers.quick_model import write_quick_model

REPO = Path(__file__).resolve().parents[1]
MEMORY_CAP = 6 * 2**30  # importing torch maps ~3.9 GB of address space; 2 GB more for the work
TIMEOUT_S = 300
WORKERS = 3  # cases run concurrently (each a subprocess importing torch: ~1 GB, ~5 s of CPU)
DEEP = "[" * 100_000 + "]" * 100_000


@dataclass
class Workspace:
    root: Path
    cohort: Path  # a valid cohort.json (frames listed out of order)
    preds: Path  # valid predictions on it
    config: Path  # a quick model's config and weights
    weights: Path
    dicom: Path  # a small valid XA file
    datasets: Path  # $DETECTRON2_DATASETS is datasets/<case> (empty unless the case fills it)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("hostile")
    cohort = make_toy_cohort(root / "toy", num_patients=4, frames=3, size=32, frame_order="shuffled")
    data = json.loads(cohort.read_text())
    preds = root / "preds.json"
    preds.write_text(json.dumps([{"image_id": im["id"], "category_id": 1, "bbox": [4, 4, 8, 8], "score": 0.1 * (k % 9)}
                                 for k, im in enumerate(data["images"])]))
    config, weights = write_quick_model(root / "model")
    dicom = write_xa(root / "dicom" / "run.dcm", ramp_frames(3, 32), identity=make_identity(0), frame_time=100.0)
    datasets = root / "datasets"
    datasets.mkdir()
    return Workspace(root, cohort, preds, config, weights, dicom, datasets)


# ---- building hostile inputs ------------------------------------------------------------------
def _cohort(w: Workspace) -> dict:
    return json.loads(w.cohort.read_text())


def _write(path: Path, content: str | bytes | object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    return path


def _changed_cohort(w: Workspace, case: Path, change: Callable[[dict], None]) -> Path:
    """A copy of the toy cohort.json beside its frames (same image root), changed by ``change``."""
    cohort = _cohort(w)
    change(cohort)
    return _write(w.cohort.parent / f"{case.name}.json", cohort)


def _preds_with_bbox(w: Workspace, case: Path, bbox: object, count: int | None = None) -> Path:
    images = _cohort(w)["images"][: count or None]
    return _write(case / "bad_preds.json",
                  [{"image_id": im["id"], "category_id": 1, "bbox": bbox, "score": 0.5} for im in images])


def _evaluate(w: Workspace, case: Path, pred: Path, *extra: str, gt: Path | None = None) -> list[str]:
    return ["evaluate", "--gt", str(gt or w.cohort), "--pred", str(pred), "--out", str(case / "out"), *extra]


def _predict(w: Workspace, case: Path, *extra: str, config: Path | None = None, source: Path | None = None,
             opts: tuple[str, ...] = ()) -> list[str]:
    return ["predict", "--config-file", str(config or w.config), "--weights", str(w.weights),
            "--input", str(source or w.cohort), "--out", str(case / "out"), "--device", "cpu", *extra, *opts]


def _compare(w: Workspace, case: Path, *extra: str) -> list[str]:
    return ["compare", "--gt", str(w.cohort), "--pred", str(w.preds), "--pred", str(w.preds), "--name", "a",
            "--name", "b", "--out", str(case / "out"), "--bootstrap", "10", *extra]


def _synth(case: Path, *extra: str, out: Path | None = None) -> list[str]:
    return ["synth", "--out", str(out or case / "out"), "--patients", "1", "--size", "32", "--max-frames", "2",
            "--no-preview", *extra]


def _user_folder(case: Path) -> Path:
    out = case / "out"
    _write(out / "frames" / "mine" / "0.png", b"the user's own frame")
    _write(out / "notes.txt", "the user's notes")
    return out


def _foreign_manifest(case: Path) -> Path:
    out = _user_folder(case)
    _write(out / "manifest.json", {"command": "perforation_d2 predict", "files": {"notes.txt": "0" * 64}})
    return out


def _broken_dataset(w: Workspace, case: Path) -> None:
    broken = w.datasets / case.name / "broken"
    cohort = _cohort(w)
    cohort["annotations"][0]["video_id"] = {"an": "object"}
    _write(broken / "cohort.json", cohort)


def _set_frame_time(w: Workspace, case: Path) -> Path:
    return write_xa(case / "slow.dcm", ramp_frames(3, 32), identity=make_identity(1), frame_time=1e6)


@dataclass
class Case:
    name: str
    argv: Callable[[Workspace, Path], list[str]]
    expect: str = "error"  # "error" or "ok"
    says: tuple[str, ...] = ()  # fragments the error paragraph must contain
    env: Callable[[Workspace, Path], None] | None = None  # extra preparation outside the case folder
    cap: int = MEMORY_CAP
    extra: dict = field(default_factory=dict)


def _frame_id(value: int) -> Callable[[dict], None]:
    def change(cohort: dict) -> None:
        cohort["images"][0]["frame_id"] = value
    return change


def _file_name(value: str) -> Callable[[dict], None]:
    def change(cohort: dict) -> None:
        cohort["images"][0]["file_name"] = value
    return change


CASES = [
    # 4. predictions boxes of the wrong shape
    Case("bbox_8_numbers", lambda w, c: _evaluate(w, c, _preds_with_bbox(w, c, [1, 2, 3, 4, 5, 6, 7, 8])), says=("bbox",)),
    Case("bbox_nested", lambda w, c: _evaluate(w, c, _preds_with_bbox(w, c, [[1, 2], [3, 4]])), says=("bbox",)),
    Case("bbox_2_numbers", lambda w, c: _evaluate(w, c, _preds_with_bbox(w, c, [1, 2], count=2)), says=("bbox",)),
    Case("bbox_infinite", lambda w, c: _evaluate(w, c, _write(c / "p.json", '[{"image_id": 1, "category_id": 1, '
                                                            '"bbox": [1, 2, 1e400, 4], "score": 0.5}]'))),
    Case("predictions_object", lambda w, c: _evaluate(w, c, _write(c / "p.json", {"image_id": 1}))),
    Case("image_id_huge", lambda w, c: _evaluate(w, c, _write(c / "p.json", [
        {"image_id": 10**30, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]))),
    # 6. deeply nested JSON in every JSON input
    Case("deep_cohort", lambda w, c: ["validate", str(_write(c / "cohort.json", DEEP))], says=("cohort.json",)),
    Case("deep_predictions", lambda w, c: _evaluate(w, c, _write(c / "p.json", DEEP)), says=("p.json",)),
    Case("deep_splits", lambda w, c: _evaluate(w, c, w.preds, "--splits", str(_write(c / "splits.json", DEEP)),
                                               "--fold", "0"), says=("splits.json",)),
    Case("deep_boxes", lambda w, c: ["prepare-dicom", "--input", str(w.dicom), "--out", str(c / "out"), "--salt", "s",
                                     "--boxes", str(_write(c / "boxes.json", DEEP))], says=("boxes.json",)),
    Case("cohort_not_utf8", lambda w, c: ["validate", str(_write(c / "cohort.json", b"\xff\xfe{\x00garbage"))]),
    Case("cohort_empty", lambda w, c: ["validate", str(_write(c / "cohort.json", b""))]),
    Case("cohort_is_a_list", lambda w, c: ["validate", str(_write(c / "cohort.json", [1, 2]))]),
    Case("video_id_object", lambda w, c: ["validate", str(_changed_cohort(w, c, lambda d: d["annotations"][0].update(
        video_id={"x": 1})))], says=("'video_id' must be an integer",)),
    Case("width_huge", lambda w, c: ["validate", str(_changed_cohort(w, c, lambda d: d["images"][0].update(
        width=10**12)))], says=("'width' must be a positive integer",)),
    # 2. numbers that must not size the work
    Case("frame_id_1e9_validate", lambda w, c: ["validate", str(_changed_cohort(w, c, _frame_id(10**9)))],
         says=("not contiguous",)),
    Case("frame_id_1e9_split", lambda w, c: ["split", "--cohort", str(_changed_cohort(w, c, _frame_id(10**9))),
                                             "--folds", "2", "--seed", "0", "--out", str(c / "out")]),
    Case("frame_id_1e9_evaluate", lambda w, c: _evaluate(w, c, w.preds, gt=_changed_cohort(w, c, _frame_id(10**9)))),
    Case("frame_id_1e9_predict", lambda w, c: _predict(w, c, source=_changed_cohort(w, c, _frame_id(10**9)))),
    Case("folds_1e9", lambda w, c: ["split", "--cohort", str(w.cohort), "--folds", "1000000000", "--seed", "0",
                                    "--out", str(c / "out")]),
    Case("bootstrap_1e8", lambda w, c: _compare(w, c, "--bootstrap", "100000000")),
    Case("synth_patients_1e9", lambda w, c: _synth(c, "--patients", "1000000000", "--seed", "0")),
    Case("synth_size_0", lambda w, c: _synth(c, "--size", "0", "--seed", "0")),
    Case("max_decoded_mib_inf", lambda w, c: ["prepare-dicom", "--input", str(w.dicom), "--out", str(c / "out"),
                                              "--salt", "s", "--max-decoded-mib", "inf"]),
    Case("max_decoded_mib_nan", lambda w, c: ["prepare-dicom", "--input", str(w.dicom), "--out", str(c / "out"),
                                              "--salt", "s", "--max-decoded-mib", "nan"]),
    Case("fold_1e20", lambda w, c: _evaluate(w, c, w.preds, "--splits", str(_write(c / "splits.json", {"folds": []})),
                                             "--fold", str(10**20))),
    Case("batch_size_0", lambda w, c: _predict(w, c, "--batch-size", "0")),
    # 4. paths that leave the image root, folders as frames
    Case("file_name_absolute", lambda w, c: ["validate", str(_changed_cohort(w, c, _file_name(str(w.dicom))))],
         says=("absolute path",)),
    Case("file_name_dotdot", lambda w, c: ["validate", str(_changed_cohort(w, c, _file_name("../dicom/run.dcm")))],
         says=("climbs out of the image root",)),
    Case("file_name_folder", lambda w, c: ["validate", str(_changed_cohort(w, c, _file_name("frames")))],
         says=("is a folder",)),
    Case("file_name_lone_surrogate", lambda w, c: ["validate", str(_write(
        w.cohort.parent / f"{c.name}.json",
        w.cohort.read_text().replace('"frames/v1/000.png"', '"frames/v1/\\udcff.png"', 1)))]),
    Case("path_lone_surrogate_validate", lambda w, c: ["validate", os.fsdecode(
        bytes(w.cohort.parent) + b"/bad\xff-" + c.name.encode() + b".json")], expect="ok",
        env=lambda w, c: _write(Path(os.fsdecode(bytes(w.cohort.parent) + b"/bad\xff-" + c.name.encode() + b".json")),
                                w.cohort.read_bytes())),
    Case("path_lone_surrogate_evaluate", lambda w, c: _evaluate(w, c, _write(Path(os.fsdecode(bytes(c) + b"/p\xff.json")),
                                                                          w.preds.read_bytes())), expect="ok"),
    # 6. seeds, outputs that are files
    Case("split_seed_negative", lambda w, c: ["split", "--cohort", str(w.cohort), "--folds", "2", "--seed", "-1",
                                              "--out", str(c / "out")], says=("--seed",)),
    Case("compare_seed_negative", lambda w, c: _compare(w, c, "--seed", "-1"), says=("--seed",)),
    Case("synth_seed_negative", lambda w, c: _synth(c, "--seed", "-1"), says=("--seed",)),
    Case("split_out_is_a_file", lambda w, c: ["split", "--cohort", str(w.cohort), "--folds", "2", "--seed", "0",
                                              "--out", str(_write(c / "taken", "a file"))]),
    Case("synth_out_under_a_file", lambda w, c: _synth(c, "--seed", "0", out=_write(c / "taken", "a file") / "sub")),
    # 6. configs
    Case("config_yaml_list", lambda w, c: _predict(w, c, config=_write(c / "list.yaml", "- a\n- b\n"))),
    Case("train_config_yaml_list", lambda w, c: ["train", "--config-file", str(_write(c / "list.yaml", "- a\n- b\n")),
                                                 "OUTPUT_DIR", str(c / "out")]),
    Case("config_base_loop", lambda w, c: ["train", "--config-file", str(_write(c / "loop.yaml", '_BASE_: "loop.yaml"\n')),
                                           "OUTPUT_DIR", str(c / "out")]),
    Case("frame_size_0_predict", lambda w, c: _predict(w, c, opts=("INPUT.FRAME_SIZE", "0")), says=("FRAME_SIZE",)),
    Case("frame_size_0_train", lambda w, c: ["train", "--config-file", str(w.config), "INPUT.FRAME_SIZE", "0",
                                             "OUTPUT_DIR", str(c / "out")], says=("FRAME_SIZE",)),
    # 1. output folders that are not the tool's: refused, files intact
    Case("prepare_dicom_user_folder", lambda w, c: ["prepare-dicom", "--input", str(w.dicom), "--out",
                                                    str(_user_folder(c)), "--salt", "s"]),
    Case("prepare_dicom_user_folder_overwrite", lambda w, c: ["prepare-dicom", "--input", str(w.dicom), "--out",
                                                              str(_user_folder(c)), "--salt", "s", "--overwrite"]),
    Case("predict_foreign_manifest_overwrite", lambda w, c: (_foreign_manifest(c), _predict(w, c, "--overwrite"))[1]),
    Case("synth_user_folder_overwrite", lambda w, c: (_user_folder(c), _synth(c, "--seed", "0", "--overwrite"))[1]),
    Case("split_user_folder", lambda w, c: (_user_folder(c), ["split", "--cohort", str(w.cohort), "--folds", "2",
                                                              "--seed", "0", "--out", str(c / "out")])[1],
         expect="ok"),  # a file set beside the user's files is fine: nothing of theirs is replaced
    # 3. a broken cohort under $DETECTRON2_DATASETS never breaks an unrelated command
    Case("broken_dataset_help", lambda w, c: ["validate", "--help"], expect="ok", env=_broken_dataset),
    Case("broken_dataset_split", lambda w, c: ["split", "--cohort", str(w.cohort), "--folds", "2", "--seed", "0",
                                               "--out", str(c / "out")], expect="ok", env=_broken_dataset),
    # 6. an extreme frame time is drawn, not a crash
    Case("frame_time_1e6_ms", lambda w, c: _predict(w, c, "--salt", "s", source=_set_frame_time(w, c)), expect="ok"),
]


# ---- running and checking ---------------------------------------------------------------------
def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Size and mtime of everything under ``root`` (except the folder ``skip``)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if d != skip.name]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            state[os.fsdecode(path.relative_to(root))] = (info.st_size, info.st_mtime_ns) if path.is_file() else (-1, 0)
    return state


def _limit_memory(cap: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def _is_clean_error(stderr: str) -> bool:
    """One paragraph starting with ``error:`` (after any ``warning:`` lines), argparse's usage + one
    ``error:`` sentence, or ``validate``'s report line ``COHORT: INVALID, N problems``; no traceback."""
    text = stderr.strip()
    if "Traceback" in text or not text or "\n\n" in text:
        return False
    lines = [line for line in text.splitlines() if not line.startswith("warning:")]
    if not lines:
        return False
    if lines[0].startswith("usage:"):
        return ": error: " in lines[-1]
    return lines[0].startswith("error:") or (len(lines) == 1 and ": INVALID, " in lines[0])


@dataclass
class Run:
    case: Case
    argv: list[str]
    own: Path  # the case's folder (its inputs and its output folder)
    before: dict
    after: dict | None = None
    result: subprocess.CompletedProcess | None = None
    error: str = ""
    shared_changed: list = field(default_factory=list)


def _environment(home: Path, datasets: Path) -> dict[str, str]:
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), HOME=str(home),
               MPLCONFIGDIR=str(home / "matplotlib"), PERFORATION_D2_SALT="hostile-salt", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    env.pop("PERFORATION_D2_SALT_FILE", None)
    return env


def _warm_font_cache(home: Path) -> None:
    # A fresh MPLCONFIGDIR makes matplotlib's first import print "building the font cache" to
    # stderr; with the cases running side by side, whichever start while it is built would print
    # it before their error paragraph. Built once here, as an installed tool has it.
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], check=True, capture_output=True,
                   env=_environment(home, home), timeout=TIMEOUT_S)


def _run(run: Run, workspace: Workspace, home: Path) -> Run:
    env = _environment(home, workspace.datasets / run.own.name)
    try:
        run.result = subprocess.run([sys.executable, "-m", "perforation_d2", *run.argv], capture_output=True,
                                    text=True, env=env, cwd=run.own, timeout=TIMEOUT_S,
                                    preexec_fn=_limit_memory(run.case.cap), errors="backslashreplace")
    except subprocess.TimeoutExpired:
        run.error = f"no answer within {TIMEOUT_S} s"
    run.after = _snapshot(run.own)
    return run


@pytest.fixture(scope="module")
def runs(workspace, tmp_path_factory, request) -> dict[str, Run]:
    """The selected cases prepared, then run WORKERS at a time; shared inputs snapshotted around all."""
    home = tmp_path_factory.mktemp("hostile_home")
    selected = {item.callspec.params["case"].name for item in request.session.items
                if getattr(item, "originalname", "") == "test_hostile_input_ends_cleanly"}
    prepared = {}
    for case in [case for case in CASES if case.name in selected]:
        own = workspace.root / "cases" / case.name
        own.mkdir(parents=True)
        (workspace.datasets / case.name).mkdir()
        if case.env:
            case.env(workspace, own)
        argv = case.argv(workspace, own)
        prepared[case.name] = Run(case, argv, own, _snapshot(own))
    _warm_font_cache(home)
    shared_before = _snapshot(workspace.root, skip=workspace.root / "cases")
    with ThreadPoolExecutor(WORKERS) as pool:
        done = list(pool.map(lambda run: _run(run, workspace, home), prepared.values()))
    shared_after = _snapshot(workspace.root, skip=workspace.root / "cases")
    changed_shared = sorted(k for k in shared_before.keys() | shared_after.keys()
                            if shared_before.get(k) != shared_after.get(k))
    for run in done:
        run.shared_changed = changed_shared
    return {run.case.name: run for run in done}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input_ends_cleanly(case, runs):
    run = runs[case.name]
    assert not run.error, run.error
    result = run.result
    report = f"argv {run.argv}\nexit {result.returncode}\nstderr:\n{result.stderr[-3000:]}\nstdout:\n{result.stdout[-1500:]}"
    assert not run.shared_changed, f"shared inputs changed (by some case): {run.shared_changed}"
    changed = sorted(k for k in run.before.keys() | run.after.keys() if run.before.get(k) != run.after.get(k))
    if case.expect == "ok":
        assert result.returncode == 0, report
        assert "Traceback" not in result.stderr, report
        outside = [k for k in changed if k != "out" and not k.startswith("out" + os.sep)]
        assert not outside, f"changed outside the output folder: {outside}\n{report}"
    else:
        assert result.returncode != 0, report
        assert _is_clean_error(result.stderr), report
        for fragment in case.says:
            assert fragment in result.stderr + result.stdout, (fragment, report)
        assert not changed, f"files changed by a refused run: {changed}\n{report}"
