"""Atomic single files, the single-file output check and the lock."""

from __future__ import annotations

import os
import threading
import time

import pytest

from perforation_d2.errors import DSAInputError
from perforation_d2.io.atomic import atomic_open, atomic_write_bytes, check_free
from perforation_d2.io.lock import exclusive_lock


def test_a_file_that_appears_while_writing_is_kept(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(DSAInputError, match="appeared while this run was writing"):
        with atomic_open(target) as handle:
            handle.write(b"mine")
            target.write_bytes(b"the other run's")  # another writer finished first
    assert target.read_bytes() == b"the other run's"
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]  # no .part file left


def test_a_failed_write_leaves_the_old_file_and_no_part_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target, overwrite=True) as handle:
        handle.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_outputs_get_the_permissions_of_a_plain_open(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "x", b"1")
    finally:
        os.umask(mask)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644


def test_check_free(tmp_path):
    (tmp_path / "exists.md").write_text("x")
    (tmp_path / "folder").mkdir()
    check_free(tmp_path / "new.md", overwrite=False)
    check_free(tmp_path / "exists.md", overwrite=True)
    for path, overwrite, message in [
        (tmp_path / "exists.md", False, "already exists; pass --overwrite"),
        (tmp_path / "folder", True, "is a folder"),
        (tmp_path / "exists.md" / "below.md", True, "exists.md is a file, not a folder"),
    ]:
        with pytest.raises(DSAInputError, match=message):
            check_free(path, overwrite)


def test_lock_busy_blocking_and_removed_after_release(tmp_path):
    lock = tmp_path / ".x.lock"
    order = []
    with exclusive_lock(lock, blocking=False):
        with pytest.raises(DSAInputError, match="busy here"):
            with exclusive_lock(lock, blocking=False, busy_message="busy here"):
                pass

        def waiter():
            with exclusive_lock(lock, blocking=True):
                order.append("waiter")

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)
        order.append("holder")
    thread.join(10)
    assert order == ["holder", "waiter"]
    assert not lock.exists()
