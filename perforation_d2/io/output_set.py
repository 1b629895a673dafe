"""Writing a command's outputs as one set: all of them, or (on a failure) none of the new ones.

``evaluate`` and ``compare`` each write several files that belong together (metrics and the
plots drawn from them). Writing them one by one would leave, after a failure midway, a fresh
``metrics.json`` next to stale plots of an earlier run, or an incomplete set that a second run
then refuses to replace without ``--overwrite``. So every file is first rendered in memory by
the caller, then written atomically into a hidden staging folder inside the output folder, and
only when all are written are they renamed into place (renames within one file system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .atomic import atomic_write_bytes, check_outputs_free


def write_output_set(directory: str | os.PathLike, files: Mapping[str, bytes], overwrite: bool = False) -> list[Path]:
    """Write ``{file name: content}`` into ``directory`` as one set; returns the paths.

    Without ``overwrite`` no file of the set may exist (checked again just before the renames,
    against another run writing to the same place). If a rename fails, the files this call
    already moved in are removed again when they did not exist before (without ``overwrite``);
    with ``overwrite`` the earlier run's files they replaced cannot be restored.
    """
    directory = Path(directory)
    targets = {name: directory / name for name in files}
    check_outputs_free(targets.values(), overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=directory))
    moved: list[Path] = []
    try:
        for name, content in files.items():
            atomic_write_bytes(staging / name, content)
        check_outputs_free(targets.values(), overwrite)
        for name, target in targets.items():
            os.replace(staging / name, target)
            moved.append(target)
    except BaseException:
        if not overwrite:
            for target in moved:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return list(targets.values())
