"""OutputTransaction: all-or-nothing file sets and whole folders, the ownership rule, leftovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from perforation_d2.errors import DSAInputError
from perforation_d2.io import transaction
from perforation_d2.io.ownership import MARKER_FILE
from perforation_d2.io.transaction import FolderClaim, OutputTransaction, folder_lock, write_output_files


def write_set(out, files, overwrite=False, command="evaluate"):
    assert write_output_files(out, command, files, overwrite) == [out / name for name in files]


def listed(folder):
    return json.loads((folder / MARKER_FILE).read_text())["outputs"]


def tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- file sets -------------------------------------------------------------------------------
def test_output_set_is_all_or_nothing(tmp_path, monkeypatch):
    """Moved from tests/commands/test_evaluate_cli.py (it tested io/output_set.write_output_set)."""
    out = tmp_path / "out"
    real_replace = os.replace

    def replace_failing_on_b(source, target):
        if os.path.basename(target) == "b.txt":
            raise OSError("disk gone")
        real_replace(source, target)

    monkeypatch.setattr(transaction.os, "replace", replace_failing_on_b)
    with pytest.raises(OSError, match="disk gone"):
        write_set(out, {"a.txt": b"1", "b.txt": b"2", "c.txt": b"3"})
    assert list(out.iterdir()) == []  # neither a.txt (moved in, then removed) nor the staging folder
    monkeypatch.setattr(transaction.os, "replace", real_replace)
    write_set(out, {"a.txt": b"1", "b.txt": b"2"})
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "a.txt", "b.txt"]
    assert (out / "b.txt").read_bytes() == b"2"
    with pytest.raises(DSAInputError, match="already exists"):
        write_set(out, {"c.txt": b"3", "b.txt": b"4"})
    assert not (out / "c.txt").exists() and (out / "b.txt").read_bytes() == b"2"


def test_a_failed_rename_into_the_folder_takes_back_what_it_moved(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "mine.txt").parent.mkdir()
    (out / "mine.txt").write_text("user")
    real_replace = os.replace

    def fail_second_rename_into_out(source, target):
        if os.path.dirname(target) == str(out) and os.path.basename(target) == "b.txt":
            raise OSError("disk gone")
        real_replace(source, target)

    monkeypatch.setattr(transaction.os, "replace", fail_second_rename_into_out)
    with pytest.raises(OSError, match="disk gone"):
        write_set(out, {"a.txt": b"1", "b.txt": b"2"})
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]  # a.txt taken back, no marker, no staging


def test_the_check_runs_before_any_work_and_creates_nothing(tmp_path):
    out = tmp_path / "out"
    write_set(out, {"a.txt": b"1"})
    with pytest.raises(DSAInputError, match=r"a\.txt: output already exists.*--overwrite"):
        OutputTransaction(out, "evaluate", names=["a.txt"])
    OutputTransaction(tmp_path / "new", "evaluate", names=["a.txt"])
    assert not (tmp_path / "new").exists()


def test_overwrite_replaces_the_previous_set_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    write_set(out, {"a.txt": b"1", "overlays/x.gif": b"x"}, command="predict")
    (out / "notes.txt").write_text("user")
    (out / "overlays" / "mine.png").write_text("user")
    write_set(out, {"metrics.json": b"m"}, command="evaluate")  # another command's set beside it
    write_set(out, {"a.txt": b"2", "overlays/y.gif": b"y"}, overwrite=True, command="predict")
    assert tree(out) == {
        MARKER_FILE: (out / MARKER_FILE).read_bytes(), "a.txt": b"2", "metrics.json": b"m", "notes.txt": b"user",
        "overlays/mine.png": b"user", "overlays/y.gif": b"y",
    }  # the previous run's x.gif is gone, nothing else
    assert listed(out) == {"evaluate": ["metrics.json"], "predict": ["a.txt", "overlays/y.gif"]}


@pytest.mark.parametrize("foreign", ["file", "folder"])
def test_overwrite_never_replaces_an_unlisted_file_or_folder(tmp_path, foreign):
    out = tmp_path / "out"
    out.mkdir()
    if foreign == "file":
        (out / "metrics.json").write_text("someone else's")
    else:
        (out / "metrics.json").mkdir()
        (out / "metrics.json" / "x").write_text("x")
    before = tree(out)
    with pytest.raises(DSAInputError, match="not written by perforation_d2"):
        write_set(out, {"metrics.json": b"m"}, overwrite=True)
    assert tree(out) == before and sorted(os.listdir(out)) == ["metrics.json"]


def test_a_foreign_manifest_is_never_trusted(tmp_path):
    """Another tool's manifest.json listing the user's files and a folder: nothing of it is touched."""
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "scan.bin").write_bytes(b"user data")
    (out / "report.txt").write_text("user report")
    (out / "manifest.json").write_text(json.dumps({"files": {"report.txt": "0", "data": "0", "data/scan.bin": "0"}}))
    before = tree(out)
    with pytest.raises(DSAInputError, match=r"manifest\.json: exists but was not written by perforation_d2"):
        write_set(out, {"predictions.json": b"[]", "manifest.json": b"{}"}, overwrite=True, command="predict")
    assert tree(out) == before


def test_a_garbled_marker_proves_nothing(tmp_path):
    out = tmp_path / "out"
    write_set(out, {"a.txt": b"1"})
    (out / MARKER_FILE).write_text('{"tool": "perforation_d2", "outputs": {"evaluate": ["../../etc/passwd"]}}')
    with pytest.raises(DSAInputError, match="not written by perforation_d2"):
        write_set(out, {"a.txt": b"2"}, overwrite=True)
    assert (out / "a.txt").read_bytes() == b"1"


def test_a_run_killed_between_renames_leaves_only_listed_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_set(out, {"a.txt": b"1", "b.txt": b"1"})
    real_replace = os.replace

    def die_on_b(source, target):
        if os.path.dirname(target) == str(out) and os.path.basename(target) == "b.txt":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(transaction.os, "replace", die_on_b)
    with pytest.raises(KeyboardInterrupt):
        write_set(out, {"a.txt": b"2", "b.txt": b"2", "c.txt": b"2"}, overwrite=True)
    monkeypatch.setattr(transaction.os, "replace", real_replace)
    assert set(listed(out)["evaluate"]) >= {p.name for p in out.iterdir() if p.name != MARKER_FILE}
    write_set(out, {"a.txt": b"3"}, overwrite=True)  # so --overwrite can always clean up
    assert sorted(os.listdir(out)) == [MARKER_FILE, "a.txt"]


def test_staging_of_dead_runs_is_removed_and_of_live_runs_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".evaluate-{int(dead.stdout)}-deadbeef.part"
    live = out / f".evaluate-{os.getppid()}-cafe.part"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "metrics.json").write_text("[")
    write_set(out, {"metrics.json": b"{}"})
    assert not stale.exists() and live.exists()


def test_out_that_is_a_file_or_lies_under_one_is_a_clean_error(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file, not a folder"), (tmp_path / "file" / "sub", "is a file")):
        for kwargs in ({"names": ["a.txt"]}, {"whole_folder": True}):
            with pytest.raises(DSAInputError, match=message):
                OutputTransaction(out, "x", True, **kwargs)
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlays").write_text("a file where a folder goes")
    with pytest.raises(DSAInputError, match="is a file where x writes the folder overlays/"):
        OutputTransaction(out, "x", True, names=["overlays/a.gif"])


# ---- whole folders ---------------------------------------------------------------------------
def build(out, files, overwrite=False, command="synth"):
    with OutputTransaction(out, command, overwrite, whole_folder=True) as txn:
        for name, content in files.items():
            txn.write_bytes(name, content)


def test_whole_folder_publishes_with_its_marker_and_leaves_nothing_beside(tmp_path):
    out = tmp_path / "out"
    build(out, {"cohort.json": b"{}", "frames/v1/000.png": b"p"})
    assert listed(out) == {"synth": ["cohort.json", "frames/v1/000.png"]}
    assert sorted(os.listdir(tmp_path)) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    build(empty, {"cohort.json": b"{}"})
    assert sorted(os.listdir(empty)) == [MARKER_FILE, "cohort.json"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_non_empty_folder_without_marker_is_refused_saying_what_is_there(tmp_path, overwrite):
    out = tmp_path / "out"
    (out / "frames").mkdir(parents=True)
    (out / "frames" / "mine.png").write_bytes(b"user")
    with pytest.raises(DSAInputError) as caught:
        build(out, {"cohort.json": b"{}"}, overwrite)
    message = str(caught.value)
    assert "frames/ (a folder of 1 file(s))" in message and "\n" not in message
    assert tree(out) == {"frames/mine.png": b"user"}
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_an_earlier_output_needs_overwrite_which_keeps_the_users_files(tmp_path):
    out = tmp_path / "out"
    build(out, {"cohort.json": b"1", "frames/v1/000.png": b"1", "preview.png": b"1"})
    (out / "notes.txt").write_text("user")
    (out / "frames" / "v1" / "mine.txt").write_text("user")
    with pytest.raises(DSAInputError, match="--overwrite"):
        build(out, {"cohort.json": b"2"})
    build(out, {"cohort.json": b"2", "frames/v2/000.png": b"2"}, overwrite=True)
    assert tree(out) == {MARKER_FILE: (out / MARKER_FILE).read_bytes(), "cohort.json": b"2",
                         "frames/v1/mine.txt": b"user", "frames/v2/000.png": b"2", "notes.txt": b"user"}
    assert listed(out) == {"synth": ["cohort.json", "frames/v2/000.png"]}
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_user_file_where_the_new_output_goes_refuses_and_changes_nothing(tmp_path):
    out = tmp_path / "out"
    build(out, {"cohort.json": b"1"})
    (out / "preview.png").write_text("user")
    before = tree(out)
    with pytest.raises(DSAInputError, match=r"preview\.png: you added this"):
        build(out, {"cohort.json": b"2", "preview.png": b"2"}, overwrite=True)
    assert tree(out) == before and sorted(os.listdir(tmp_path)) == ["out"]


def test_a_failed_build_leaves_the_previous_folder_untouched(tmp_path):
    out = tmp_path / "out"
    build(out, {"cohort.json": b"1"})
    before = tree(out)
    with pytest.raises(RuntimeError), OutputTransaction(out, "synth", True, whole_folder=True) as txn:
        txn.write_bytes("cohort.json", b"2")
        raise RuntimeError("render failed")
    assert tree(out) == before and sorted(os.listdir(tmp_path)) == ["out"]


def test_leftovers_of_killed_runs_are_cleaned_or_finished(tmp_path):
    out = tmp_path / "out"
    build(out, {"cohort.json": b"old"})
    # Killed between the two renames: the old output sits renamed aside and out is gone.
    os.rename(out, tmp_path / ".out.replaced-dead")
    (tmp_path / ".out.building-dead" / "frames").mkdir(parents=True)
    (tmp_path / ".out.lock").write_text("")  # its flock died with it
    with pytest.raises(DSAInputError, match="--overwrite"):
        build(out, {"cohort.json": b"new"})  # the old output is back, and it needs --overwrite
    assert tree(out)["cohort.json"] == b"old" and sorted(os.listdir(tmp_path)) == ["out"]
    # Killed after the swap, before the user's file was carried over from the old output.
    aside = tmp_path / "aside"
    build(aside, {"cohort.json": b"older"})
    (aside / "notes.txt").write_text("user")
    os.rename(aside, tmp_path / ".out.replaced-dead2")
    build(out, {"cohort.json": b"newer"}, overwrite=True)
    assert tree(out)["notes.txt"] == b"user" and tree(out)["cohort.json"] == b"newer"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_second_run_into_a_locked_folder_stops_at_once(tmp_path):
    out = tmp_path / "out"
    with folder_lock(out, "prepare-dicom"):
        with pytest.raises(DSAInputError, match="another prepare-dicom run is writing this output folder"):
            build(out, {"cohort.json": b"1"}, command="prepare-dicom")
    assert not out.exists()


def test_concurrent_whole_folder_runs_publish_one_complete_folder(tmp_path):
    out = tmp_path / "out"
    barrier = threading.Barrier(2)
    results = []

    def run(tag):
        barrier.wait()
        try:
            build(out, {f"frames/{i}.png": tag for i in range(30)} | {"cohort.json": tag}, overwrite=True)
            results.append(0)
        except DSAInputError:
            results.append(2)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in (b"a", b"b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0 in results
    contents = {v for k, v in tree(out).items() if k != MARKER_FILE}
    assert len(contents) == 1 and sorted(os.listdir(tmp_path)) == ["out"]


# ---- the demo's in-place claim ---------------------------------------------------------------
def test_folder_claim_lists_what_appeared_and_overwrite_removes_only_that(tmp_path):
    out = tmp_path / "demo"
    with FolderClaim(out, "demo") as claim:
        (out / "demo.log").write_text("log")
        claim.record()
        assert listed(out) == {"demo": ["demo.log"]}
        (out / "data").mkdir()
        (out / "data" / "cohort.json").write_text("{}")
    assert listed(out) == {"demo": ["data/cohort.json", "demo.log"]}
    (out / "keep.txt").write_text("user")
    with pytest.raises(DSAInputError, match="--overwrite"):
        FolderClaim(out, "demo")
    with FolderClaim(out, "demo", overwrite=True):
        assert sorted(os.listdir(out)) == [MARKER_FILE, "keep.txt"]
        (out / "demo.log").write_text("log 2")
    assert listed(out) == {"demo": ["demo.log"]}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    with pytest.raises(DSAInputError, match="holds no earlier demo output"):
        FolderClaim(foreign, "demo", overwrite=True)
