"""An exclusive, self-cleaning lock file for runs that write to the same place.

The lock is a ``flock`` on a small file: it dies with its process, so a killed run never leaves
a stale lock behind, and the file is removed on release so that no lock file outlives the run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import DSAInputError


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, blocking: bool, busy_message: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (created, and removed on release).

    ``blocking=False`` raises :class:`DSAInputError` (``busy_message``, else a generic one) at once
    when another process holds the lock; ``blocking=True`` waits for it. Removing the file on
    release is safe: after locking, the inode check makes a process that opened the file just
    before its removal retry on the new file instead of holding a lock nobody else sees.
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
