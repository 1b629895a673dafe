"""Atomic, no-clobber output writing.

Outputs are written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a half-written file that a later run would trust, and two writers
never interleave bytes in one file. Existing outputs are only replaced when the caller passes
``overwrite=True`` (the commands' ``--overwrite``).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DSAInputError
from .json_io import json_bytes

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
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DSAInputError(
            f"{path}: cannot write it: the text holds an unpaired surrogate (character {err.start}; typically a "
            "file name that is not valid UTF-8); nothing was written."
        ) from None
    atomic_write_bytes(path, data, overwrite=overwrite)


def atomic_write_json(path: PathLike, obj: Any, overwrite: bool = False, indent: int | None = 1) -> None:
    atomic_write_bytes(path, json_bytes(obj, path, indent), overwrite=overwrite)


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


def check_free(path: PathLike, overwrite: bool) -> None:
    """Fail before any work starts when the single output file ``path`` cannot be written: it exists
    (without ``overwrite``), is a folder, or lies under a file. Output *sets* and folders go through
    :class:`~perforation_d2.io.transaction.OutputTransaction` instead."""
    path = Path(path)
    if path.is_dir():
        raise DSAInputError(f"{path}: is a folder; the output is a file (nothing was written).")
    blocking = file_above(path)
    if blocking is not None:
        raise DSAInputError(f"{path}: cannot be written because {blocking} is a file, not a folder "
                            "(nothing was written).")
    _check_clobber(path, overwrite)


def file_above(path: PathLike) -> Path | None:
    """The existing file (not folder) that ``path`` would have to lie under, if any."""
    for ancestor in Path(path).parents:
        if ancestor.exists():
            return None if ancestor.is_dir() else ancestor
    return None
