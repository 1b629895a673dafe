"""The node's storage folder: received instances, the series index, and the result outbox.

::

    STORAGE/series/<S-...>/instances/<I-...>.dcm   instances as received (the hospital's images)
    STORAGE/series/<S-...>/state.json               the index entry: status, counts, generation
    STORAGE/outbox/<S-...>.<generation>/*.dcm       results not yet acknowledged by the destination
    STORAGE/sent/<S-...>.<generation>/*.dcm         results the destination acknowledged
    STORAGE/node.log                                the node's log

Folder and file names are salted pseudonyms of the SeriesInstanceUID / SOPInstanceUID; the index
holds pseudonyms, counts and statuses only. The received instances and the results (outbox,
sent) carry identity, as DICOM objects exchanged with the hospital must; nothing else here does.

A result set enters the outbox as a whole (a staging folder renamed into place) and each file
leaves it only when the destination acknowledged it, by a rename into ``sent/``. So a node killed
at any moment loses nothing, resends on restart what was pending and never resends what was
acknowledged (a kill between the acknowledgement and the rename is the one window in which a
file is sent twice; it carries the same SOP Instance UID, which a PACS stores once).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.dicom.pseudonyms import digest
from ..io.atomic import atomic_open, atomic_write_json

STATE_FILE = "state.json"
LOG_FILE = "node.log"

# Statuses of a series in the index.
RECEIVING = "receiving"  # instances arrived; not yet run (association open, or quiet period running)
ABORTED = "aborted"  # its last association was aborted: never run until a new association completes it
DONE = "done"  # results written to the outbox (generation ``generation``)
FAILED = "failed"  # could not be decoded or predicted; ``reason`` says why


def series_pseudonym(salt: str, series_uid: str) -> str:
    """``S-`` + the salted digest the DICOM reader gives a single-frame series of this UID."""
    return "S-" + digest(salt, "series:" + series_uid)


def instance_pseudonym(salt: str, sop_uid: str) -> str:
    return "I-" + digest(salt, "instance:" + sop_uid)


@dataclass
class SeriesState:
    """One series' index entry (pseudonyms and counts only)."""

    series: str
    status: str = RECEIVING
    instances: int = 0
    generation: int = 0
    reason: str = ""
    results: int = 0
    released: bool = False  # the association that delivered its last instance was released


class Storage:
    """The storage folder (module docstring); safe to use from several threads."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        # Held around every read-modify-write of an index entry (listener and worker both update it).
        self.lock = threading.RLock()
        for name in ("series", "outbox", "sent"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    # ---- received instances and the index ----------------------------------------------------
    def series_dir(self, series: str) -> Path:
        return self.root / "series" / series

    def instances_dir(self, series: str) -> Path:
        return self.series_dir(series) / "instances"

    def store_instance(self, series: str, instance: str, encoded: bytes) -> bool:
        """Write one received instance (Part 10 bytes); False when it replaced an earlier copy."""
        path = self.instances_dir(series) / f"{instance}.dcm"
        new = not path.exists()
        with atomic_open(path, "wb", overwrite=True) as handle:
            handle.write(encoded)
        return new

    def count_instances(self, series: str) -> int:
        return sum(1 for _ in self.instances_dir(series).glob("*.dcm"))

    def read_state(self, series: str) -> SeriesState | None:
        try:
            data = json.loads((self.series_dir(series) / STATE_FILE).read_text(encoding="utf-8"))
            return SeriesState(**data)
        except (OSError, ValueError, TypeError):
            return None

    def write_state(self, state: SeriesState) -> None:
        atomic_write_json(self.series_dir(state.series) / STATE_FILE, asdict(state), overwrite=True)

    def all_states(self) -> list[SeriesState]:
        states = []
        for folder in sorted((self.root / "series").iterdir()):
            state = self.read_state(folder.name)
            if state is None and any(self.instances_dir(folder.name).glob("*.dcm")):
                state = SeriesState(folder.name, instances=self.count_instances(folder.name))
            if state is not None:
                states.append(state)
        return states

    # ---- results -------------------------------------------------------------------------------
    def result_set(self, series: str, generation: int) -> str:
        return f"{series}.{generation}"

    def has_results(self, series: str, generation: int) -> bool:
        name = self.result_set(series, generation)
        return (self.root / "outbox" / name).is_dir() or (self.root / "sent" / name).is_dir()

    def staging_dir(self, series: str, generation: int) -> Path:
        path = self.root / "outbox" / f".{self.result_set(series, generation)}.part"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def publish(self, staging: Path, series: str, generation: int) -> None:
        """Move a complete staging folder into the outbox, as a whole."""
        os.replace(staging, self.root / "outbox" / self.result_set(series, generation))

    def pending(self) -> list[Path]:
        """Result files waiting for an acknowledgement, oldest result set first."""
        sets = [p for p in (self.root / "outbox").iterdir() if p.is_dir() and not p.name.startswith(".")]
        sets.sort(key=lambda p: (p.stat().st_mtime, p.name))
        # The report first: a PACS that files the SR before the capture shows the finding soonest.
        order = {"_SR.dcm": 0, "_SC.dcm": 1}
        return [f for folder in sets
                for f in sorted(folder.glob("*.dcm"), key=lambda f: (order.get(f.name[-7:], 2), f.name))]

    def acknowledge(self, path: Path) -> None:
        """Move an acknowledged result file from the outbox into ``sent/``."""
        target = self.root / "sent" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        with contextlib.suppress(OSError):  # not empty yet: other files of the set are pending
            path.parent.rmdir()

    def remove_stale_staging(self) -> None:
        for path in (self.root / "outbox").glob(".*.part"):
            shutil.rmtree(path, ignore_errors=True)
