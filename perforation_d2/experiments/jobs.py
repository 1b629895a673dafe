"""One cross-validation job on disk: its state, and running it (resuming when it was interrupted).

A job runs in a process of its own (a local child process, or a submitit job) that holds the
lock ``OUTPUT_DIR/.job.lock`` for as long as it trains, so whoever looks at the folder can tell
a running job (lock held) from an interrupted one (no lock, no "done"): the latter is resumed
from its last checkpoint, the way ``train --resume`` continues any training. The job writes
``job_status.json`` itself: ``running`` when it starts, ``done`` or ``failed`` when it ends; a job
killed by a signal leaves ``running`` behind, which reads as interrupted.

``python -m perforation_d2.experiments.jobs OUTPUT_DIR -- TRAIN_ARGS...`` is the child process of
the local executor.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DSAInputError
from ..io.atomic import atomic_write_json
from ..io.json_io import read_json
from ..io.lock import exclusive_lock
from .plan import Job

STATUS_FILE = "job_status.json"
LOCK_FILE = ".job.lock"
LOG_FILE = "job.log"

PENDING, RUNNING, DONE, FAILED, INTERRUPTED = "pending", "running", "done", "failed", "interrupted"


@dataclass
class JobState:
    state: str
    log: str | None = None
    detail: str = ""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_status(output_dir: Path) -> dict:
    # A status that cannot be read (missing, or cut short by a kill) reads as "no status": the
    # job's lock and checkpoints still tell whether it runs or resumes.
    try:
        status = read_json(output_dir / STATUS_FILE, "job status file")
    except DSAInputError:
        return {}
    return status if isinstance(status, dict) else {}


def write_status(output_dir: Path, **fields: object) -> None:
    status = {**read_status(output_dir), **fields, "updated": _now()}
    atomic_write_json(output_dir / STATUS_FILE, status, overwrite=True)


def _lock_held(output_dir: Path) -> bool:
    """Whether a live process holds the job's lock (probing takes and drops the lock at once)."""
    if not (output_dir / LOCK_FILE).exists():
        return False
    try:
        with exclusive_lock(output_dir / LOCK_FILE, blocking=False):
            return False
    except DSAInputError:
        return True


def job_state(job: Job) -> JobState:
    """What the job's folder says about it (no process is asked, only files and its lock)."""
    status = read_status(job.output_dir)
    log = status.get("log")
    if status.get("state") == DONE and all(path.is_file() for path in job.result_files):
        return JobState(DONE, log)
    if _lock_held(job.output_dir):
        return JobState(RUNNING, log)
    if status.get("state") == FAILED:
        return JobState(FAILED, log, status.get("detail", ""))
    if status.get("state") == RUNNING or (job.output_dir / "last_checkpoint").exists():
        return JobState(INTERRUPTED, log, "stopped without finishing; resumes from its last checkpoint")
    return JobState(PENDING, log)


def execute_job(output_dir: Path, train_args: Sequence[str], log: str | None = None) -> int:
    """Train one job in this process under its lock; ``--resume`` when it has a checkpoint.

    Returns the training's exit status (0 = held-out predictions written). Raises
    :class:`DSAInputError` when another process runs the same job right now.
    """
    from ..engine.launch import cli

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    busy = f"{output_dir}: this job is running in another process right now; not starting it twice."
    with exclusive_lock(output_dir / LOCK_FILE, blocking=False, busy_message=busy):
        resume = (output_dir / "last_checkpoint").exists()
        write_status(output_dir, state=RUNNING, started=_now(), resumed=resume, pid=os.getpid(),
                     host=socket.gethostname(), log=log, detail="")
        argv = [*train_args[:2], "--resume", *train_args[2:]] if resume else list(train_args)
        try:
            returncode = cli(argv)
        except Exception as err:  # a failed job never stops the others: record why it failed
            write_status(output_dir, state=FAILED, detail=f"{type(err).__name__}: {err}")
            raise
        if returncode == 0:
            write_status(output_dir, state=DONE, finished=_now())
        else:
            write_status(output_dir, state=FAILED, finished=_now(), detail=f"training exited with status {returncode}")
        return returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[1] != "--":
        print("usage: python -m perforation_d2.experiments.jobs OUTPUT_DIR -- TRAIN_ARGS...", file=sys.stderr)
        return 2
    output_dir = Path(argv[0])
    try:
        return execute_job(output_dir, argv[2:], log=str(output_dir / LOG_FILE))
    except DSAInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
