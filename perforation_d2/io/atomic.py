"""Atomic, no-clobber output writing.

Outputs are written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a half-written file that a later run would trust, and two writers
never interleave bytes in one file. Existing outputs are only replaced when the caller passes
``overwrite=True`` (the commands' ``--overwrite``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DSAInputError

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_clobber(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise DSAInputError(
            f"{path}: the output file already exists; pass --overwrite to replace it "
            "(nothing was written)."
        )


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", overwrite: bool = False) -> Iterator[io.IOBase]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    _check_clobber(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the output the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        if not overwrite and path.exists():
            # Another writer finished first: keep its file, do not clobber it.
            raise DSAInputError(
                f"{path}: the output file appeared while this run was writing it (another run "
                "writes to the same place?); pass --overwrite to replace it."
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes, overwrite: bool = False) -> None:
    with atomic_open(path, "wb", overwrite=overwrite) as handle:
        handle.write(data)


def atomic_write_text(path: PathLike, text: str, overwrite: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(path: PathLike, obj: Any, overwrite: bool = False, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n", overwrite=overwrite)


def atomic_save_image(path: PathLike, image: Any, overwrite: bool = False, **save_kwargs: Any) -> None:
    """Save a PIL image atomically (format from the suffix)."""
    path = Path(path)
    buffer = io.BytesIO()
    fmt = {".png": "PNG", ".gif": "GIF", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
    image.save(buffer, format=fmt, **save_kwargs)
    atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)


def atomic_save_figure(path: PathLike, figure: Any, overwrite: bool = False, **save_kwargs: Any) -> None:
    """Save a matplotlib figure atomically."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", **save_kwargs)
    atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)


def check_outputs_free(paths: Iterable[PathLike], overwrite: bool) -> None:
    """Fail before any work starts when an output exists and ``overwrite`` is False."""
    if overwrite:
        return
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        raise DSAInputError(
            f"{existing[0]}: output already exists"
            + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
            + "; pass --overwrite to replace existing outputs (nothing was written)."
        )


@contextlib.contextmanager
def exclusive_lock(path: PathLike, blocking: bool, busy_message: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (created, and removed on release).

    ``blocking=False`` raises :class:`DSAInputError` (``busy_message``, else a generic one) at once
    when another process holds the lock; ``blocking=True`` waits for it. The lock dies with its
    process, so a killed run never leaves a stale lock. Removing the file on release is safe: after
    locking, the inode check makes a process that opened the file just before its removal retry on
    the new file instead of holding a lock nobody else sees.
    """
    path = Path(path)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise DSAInputError(f"{path}: cannot create the lock file ({err.strerror}).") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DSAInputError(
                    busy_message or f"{path}: another run holds this lock right now; wait for it to finish."
                ) from None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file: lock the new one instead
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
