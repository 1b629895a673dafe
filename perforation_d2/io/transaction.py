"""All-or-nothing output sets: the one way a command publishes its outputs.

An :class:`OutputTransaction` collects a command's outputs in a hidden staging folder and
publishes them at the end, so a failed or interrupted run never leaves a half-written set that a
later run would trust. Two shapes share it:

- a *file set* (``predict``, ``evaluate``, ``compare``, ``split``): files written into a folder
  that may hold other things; staged in ``DIR/.<command>-<pid>-<hex>.part`` and renamed in one
  by one under the blocking lock ``DIR/.perforation_d2.lock``;
- a *whole folder* (``synth``, ``prepare-dicom``): built as ``.<DIR>.building-<hex>`` beside
  ``DIR`` and swapped in by renames, under the non-blocking lock ``.<DIR>.lock`` beside it, held
  for the whole run (a second run into the same folder stops at once).

Ownership (:mod:`.ownership`): the outputs are checked before any work (the constructor) and
again just before publishing; ``--overwrite`` replaces only what the folder's marker lists, and
files a user added to a whole folder are carried over into the new one. The marker is written
before the renames (listing old and new files) and again after, so even a run killed between two
renames leaves only listed files. :class:`FolderClaim` is the in-place variant for the demo,
whose steps are commands that each publish their own outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DSAInputError
from .atomic import atomic_write_bytes
from .json_io import json_bytes
from .lock import exclusive_lock
from .ownership import (
    MARKER_FILE,
    Marker,
    check_files,
    check_folder,
    check_relative_name,
    files_under,
    read_marker,
)

LOCK_FILE = ".perforation_d2.lock"


def folder_lock(out: str | os.PathLike, command: str) -> contextlib.AbstractContextManager[None]:
    """The non-blocking lock ``.<DIR>.lock`` beside the whole-folder output ``out`` (not inside:
    the folder is replaced by a rename). A second run fails at once instead of waiting."""
    out = Path(out)
    return exclusive_lock(
        out.parent / f".{out.name}.lock", blocking=False,
        busy_message=f"{out}: another {command} run is writing this output folder right now; wait for it to "
        "finish, then run again.",
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_marker(folder: Path, marker: Marker) -> None:
    atomic_write_bytes(folder / MARKER_FILE, marker.to_bytes(folder / MARKER_FILE), overwrite=True)


def _remove_listed(out: Path, names: Iterable[str]) -> None:
    """Remove the files ``names`` of ``out`` (never a folder, never outside ``out``) and the folders
    this leaves empty."""
    root = out.resolve()
    for name in names:
        path = out / name
        if path.is_symlink() or path.is_file():
            if root not in path.parent.resolve().parents and path.parent.resolve() != root:
                continue
            path.unlink()
            for parent in PurePosixPath(name).parents:
                if str(parent) == ".":
                    break
                with contextlib.suppress(OSError):
                    (out / parent).rmdir()  # only succeeds when empty


def _move_files(source: Path, target: Path, names: Iterable[str]) -> None:
    """Rename the files ``names`` from ``source`` into ``target`` where ``target`` has none of that name."""
    for name in sorted(names):
        destination = target / name
        if destination.exists() or destination.is_symlink():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source / name, destination)


class OutputTransaction:
    """A command's outputs under ``out``, published all at once (or not at all).

    ``names``: the outputs known before the work starts (checked at once, with ``overwrite``);
    more may be added while writing. ``whole_folder``: ``out`` is the command's folder and is
    replaced as a whole. ``durable``: files and folders are fsynced before publishing (for
    outputs that are expensive to recreate). Use as a context manager; the set is published on
    a clean exit of the ``with`` block (or by an earlier :meth:`commit`) and dropped on an error.
    """

    def __init__(self, out: str | os.PathLike, command: str, overwrite: bool = False, *,
                 names: Sequence[str] = (), whole_folder: bool = False, durable: bool = False):
        self.out = Path(out)
        self.command = command
        self.overwrite = overwrite
        self.whole_folder = whole_folder
        self.durable = durable
        self.names = [check_relative_name(name) for name in names]
        self._written: dict[str, None] = {}  # insertion order = rename order
        self._stack: contextlib.ExitStack | None = None
        self._staging: Path | None = None
        self.committed = False
        self.check()

    # ---- checks --------------------------------------------------------------------------------
    def check(self) -> Marker | None:
        """Raise :class:`DSAInputError` unless the outputs may be written (nothing is created)."""
        if self.whole_folder:
            return check_folder(self.out, self.command, self.overwrite)
        return check_files(self.out, [*self.names, *self._written], self.command, self.overwrite)

    # ---- writing -------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The staging folder: where the outputs are written (``path(name)`` is ``root / name``)."""
        if self._staging is None:
            raise RuntimeError("OutputTransaction used outside its `with` block")
        return self._staging

    def path(self, name: str) -> Path:
        """The staging path of the output ``name`` (its folder created): for writers that take a path."""
        check_relative_name(name)
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self._written[name] = None
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        with open(path, "wb") as handle:
            handle.write(data)
            if self.durable:
                handle.flush()
                os.fsync(handle.fileno())
        return path

    def write_text(self, name: str, text: str) -> Path:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DSAInputError(f"{self.out / name}: cannot write it: the text holds an unpaired surrogate "
                                f"(character {err.start}; typically a file name that is not valid UTF-8); "
                                "nothing was written.") from None
        return self.write_bytes(name, data)

    def write_json(self, name: str, obj: Any, indent: int | None = 1) -> Path:
        return self.write_bytes(name, json_bytes(obj, self.out / name, indent))

    def digests(self) -> dict[str, str]:
        """SHA-256 of every output written so far (a manifest's content)."""
        result = {}
        for name in self._written:
            digest = hashlib.sha256()
            with open(self.root / name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            result[name] = digest.hexdigest()
        return result

    # ---- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> OutputTransaction:
        stack = contextlib.ExitStack()
        try:
            if self.whole_folder:
                try:
                    self.out.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise DSAInputError(f"{self.out.parent}: cannot create the output's parent folder "
                                        f"({err.strerror}).") from None
                stack.enter_context(folder_lock(self.out, self.command))
                self._recover_leftovers()
                self.check()
                staging = self.out.parent / f".{self.out.name}.building-{secrets.token_hex(4)}"
            else:
                self.out.mkdir(parents=True, exist_ok=True)
                staging = self.out / f".{self.command}-{os.getpid()}-{secrets.token_hex(4)}.part"
            staging.mkdir()
            stack.callback(shutil.rmtree, staging, ignore_errors=True)
        except BaseException:
            stack.close()
            raise
        self._stack, self._staging = stack, staging
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self.committed:
                self.commit()
        finally:
            if self._stack is not None:
                self._stack.close()
            self._stack = self._staging = None

    def commit(self) -> list[Path]:
        """Publish the outputs written so far; returns their final paths."""
        missing = [name for name in self.names if name not in self._written]
        if missing:
            raise RuntimeError(f"outputs declared but not written: {missing}")
        if self.whole_folder:
            self._commit_folder()
        else:
            with exclusive_lock(self.out / LOCK_FILE, blocking=True):
                self._commit_files()
        self.committed = True
        return [self.out / name for name in self._written]

    def _commit_files(self) -> None:
        self._remove_stale_staging()
        old = self.check() or Marker()
        written = list(self._written)
        previous = set(old.outputs.get(self.command, []))
        # Listed before the renames, so that a run killed halfway leaves only files the marker lists.
        _write_marker(self.out, old.with_set(self.command, previous | set(written)))
        moved: list[tuple[Path, bool]] = []
        try:
            for name in written:
                target = self.out / name
                existed = target.exists() or target.is_symlink()
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.root / name, target)
                moved.append((target, existed))
        except BaseException:
            for target, existed in moved:
                if not existed:
                    with contextlib.suppress(FileNotFoundError):
                        target.unlink()
            if not any(existed for _, existed in moved):
                if old.outputs:
                    _write_marker(self.out, old)
                else:
                    (self.out / MARKER_FILE).unlink(missing_ok=True)
            raise
        _remove_listed(self.out, previous - set(written))  # the previous run's files this run has not
        _write_marker(self.out, old.with_set(self.command, written))
        if self.durable:
            _fsync_dir(self.out)

    def _commit_folder(self) -> None:
        out, staging = self.out, self.root
        old = self.check()
        user_files = files_under(out) - old.files() if old is not None else set()
        clashes = sorted(
            f for f in user_files for name in self._written
            if f == name or f.startswith(name + "/") or name.startswith(f + "/")
        )
        if clashes:
            raise DSAInputError(
                f"{out / clashes[0]}: you added this to the folder (its {MARKER_FILE} does not list it), and "
                f"{self.command} would now write there"
                + (f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else "")
                + "; move it away and run again (nothing was written)."
            )
        _write_marker(staging, Marker().with_set(self.command, self._written))
        if self.durable:
            for folder, _dirs, _files in os.walk(staging):
                _fsync_dir(Path(folder))
        replaced = out.parent / f".{out.name}.replaced-{secrets.token_hex(4)}"
        try:
            if old is None:  # no folder, or an empty one (rename() replaces an empty folder)
                os.rename(staging, out)
            else:
                os.rename(out, replaced)
                os.rename(staging, out)
        except OSError as err:
            if replaced.exists() and not out.exists():
                os.rename(replaced, out)
            raise DSAInputError(f"{out}: publishing the output failed ({err.strerror or type(err).__name__}); "
                                "the folder is as it was before this run.") from None
        if old is not None:
            # The user's files follow into the new folder; were this interrupted, the next run would
            # finish it (_recover_leftovers), so nothing of theirs is lost either way.
            _move_files(replaced, out, user_files)
            shutil.rmtree(replaced, ignore_errors=True)
        if self.durable:
            _fsync_dir(out.parent)

    # ---- leftovers of killed runs --------------------------------------------------------------
    def _remove_stale_staging(self) -> None:
        pattern = re.compile(rf"\.{re.escape(self.command)}-(\d+)-[0-9a-f]+\.part")
        for entry in self.out.iterdir():
            match = pattern.fullmatch(entry.name)
            if match and entry != self._staging and entry.is_dir() and not _pid_alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)

    def _recover_leftovers(self) -> None:
        """Under the folder lock: drop killed runs' build folders; finish an interrupted swap."""
        parent, name = self.out.parent, self.out.name
        for stale in parent.glob(f".{name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for replaced in parent.glob(f".{name}.replaced-*"):
            if not self.out.exists():
                os.rename(replaced, self.out)  # killed between the two renames: put the old output back
                continue
            marker = read_marker(replaced)
            listed = marker.files() if marker else set()
            _move_files(replaced, self.out, files_under(replaced) - listed)  # the user's files
            shutil.rmtree(replaced, ignore_errors=True)


class FolderClaim:
    """A folder that a multi-step command (the demo) fills in place, step by step.

    On entry the folder is checked like a whole-folder output; with ``overwrite`` the files the
    previous run's marker lists are removed (the user's stay). :meth:`record` (called after each
    step, and on exit) lists in the marker every file that appeared since the claim, so that a
    later ``--overwrite`` removes exactly those. The folder lock is held meanwhile.
    """

    def __init__(self, out: str | os.PathLike, command: str, overwrite: bool = False):
        self.out = Path(out)
        self.command = command
        self.overwrite = overwrite
        check_folder(self.out, command, overwrite)
        self._stack: contextlib.ExitStack | None = None
        self._kept: set[str] = set()

    def __enter__(self) -> FolderClaim:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        stack.enter_context(folder_lock(self.out, self.command))
        try:
            old = check_folder(self.out, self.command, self.overwrite)
            if old is not None:
                _remove_listed(self.out, old.files())
            self.out.mkdir(exist_ok=True)
            self._kept = files_under(self.out)
            _write_marker(self.out, Marker().with_set(self.command, []))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def record(self) -> None:
        """List every file written into the folder since the claim in its marker."""
        _write_marker(self.out, Marker().with_set(self.command, files_under(self.out) - self._kept))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.record()
        finally:
            if self._stack is not None:
                self._stack.close()
            self._stack = None



def write_output_files(out: str | os.PathLike, command: str, files: Mapping[str, bytes],
                       overwrite: bool = False) -> list[Path]:
    """Write ``{name: content}`` (rendered in memory) into ``out`` as one set; returns the paths."""
    with OutputTransaction(out, command, overwrite, names=list(files)) as txn:
        for name, content in files.items():
            txn.write_bytes(name, content)
    return [Path(out) / name for name in files]
