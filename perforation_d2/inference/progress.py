"""``predict --resume``: per-series progress that survives a kill, and the series packs it is made of.

Every finished series is packed into one zip (:func:`pack_series`: its :class:`SeriesRecord` as
``record.json`` and the files drawn for it, stored as written). Without ``--resume`` the packs
live in the run's staging folder and vanish with it. With ``--resume`` each pack is renamed into
``DIR/progress/<video_id>.zip`` as soon as its series is done, so a run killed at any moment
keeps every series it finished; the next ``--resume`` run predicts only the others and writes
the outputs from all packs, byte for byte what an uninterrupted run writes. The final commit of
the outputs removes the progress folder: its files are listed in the output marker under
``predict`` from the start (:meth:`Progress.begin`), and the output transaction removes the
files of its command's previous set that it does not write again.

Packs are trusted only for the run they were written for: ``progress/run.json`` holds the run's
fingerprint (config, weights, threshold, series found, result-changing options) and every pack
carries its digest; ``--resume`` with another fingerprint is refused (``--overwrite`` starts over).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.operating_point import Threshold
from ..errors import DSAInputError
from ..io.atomic import atomic_write_bytes
from ..io.json_io import json_bytes, read_json
from ..io.lock import exclusive_lock
from ..io.ownership import MARKER_FILE, Marker, check_files, check_relative_name, read_marker
from ..io.transaction import LOCK_FILE
from .result import SeriesRecord
from .sources import FoundSeries

PROGRESS_DIR = "progress"
RUN_FILE = f"{PROGRESS_DIR}/run.json"
RECORD_MEMBER = "record.json"
_FORMAT = 1
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so that a pack's bytes depend only on its content

# What the refusal names for each fingerprint field that differs.
_FIELDS = {
    "config": "the config (the merged --config-file and KEY VALUE overrides)",
    "weights": "the weights (--weights)",
    "threshold": "the decision threshold (--threshold / --operating-point)",
    "series": "the series found in --input",
    "settings": "the options that change results (e.g. --batch-size)",
}


def run_fingerprint(cfg: Any, weights: str, threshold: Threshold, found: FoundSeries,
                    settings: Mapping[str, Any]) -> dict:
    """What a run's results depend on: packs of a run with another fingerprint are never used."""
    from ..export.graphs import config_fingerprint, sha256_of

    series = [[s.video_id, s.name, s.patient_id, s.num_frames, s.image_ids] for s in found.sources]
    return {
        "format": _FORMAT,
        "config": config_fingerprint(cfg),
        "weights": sha256_of(weights),
        "threshold": {"value": threshold.value, "method": threshold.method,
                      "series_optimization": threshold.series_optimization},
        "series": hashlib.sha256(json.dumps(series).encode()).hexdigest(),
        "num_series": len(series),
        "settings": dict(sorted(settings.items())),
    }


def pack_name(video_id: int) -> str:
    return f"{PROGRESS_DIR}/{video_id}.zip"


def pack_series(record: SeriesRecord, root: Path, run_digest: str) -> bytes:
    """One zip: ``record.json`` (the record and the run's digest), then each of ``record.files`` from ``root``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as pack:
        meta = {"run": run_digest, "video_id": record.video_id, "entry": record.entry, "raw": record.raw,
                "optimized": record.optimized, "line": record.line, "files": record.files}
        pack.writestr(zipfile.ZipInfo(RECORD_MEMBER, _ZIP_TIME), json_bytes(meta, RECORD_MEMBER))
        for name in record.files:
            pack.writestr(zipfile.ZipInfo(name, _ZIP_TIME), (root / name).read_bytes())
    return buffer.getvalue()


def read_pack(path: Path, run_digest: str | None = None) -> SeriesRecord | None:
    """The record of the pack ``path``; None when it is unreadable, incomplete, or (with ``run_digest``)
    of another run."""
    try:
        with zipfile.ZipFile(path) as pack:
            meta = json.loads(pack.read(RECORD_MEMBER))
            names = set(pack.namelist())
            files = [check_relative_name(name) for name in meta["files"]]
            if (run_digest is not None and meta["run"] != run_digest) or not set(files) <= names:
                return None
            return SeriesRecord(int(meta["video_id"]), meta["entry"], meta["raw"], meta["optimized"],
                                meta["line"], files)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None


def unpack_files(path: Path, record: SeriesRecord, outputs: Any) -> None:
    """Write the files of ``record`` from its pack ``path`` into ``outputs`` (in the record's order)."""
    with zipfile.ZipFile(path) as pack:
        for name in record.files:
            outputs.write_bytes(name, pack.read(name))


def read_run_file(out: str | os.PathLike) -> dict | None:
    """The fingerprint in ``DIR/progress/run.json`` when ``DIR``'s marker lists it (a resumable run), else None."""
    out = Path(out)
    marker = read_marker(out) if out.is_dir() else None
    if marker is None or RUN_FILE not in marker.outputs.get("predict", []) or not (out / RUN_FILE).is_file():
        return None
    return read_json(out / RUN_FILE, "progress record of an earlier predict --resume run")


def check_fingerprint(out: str | os.PathLike, recorded: dict, fingerprint: dict) -> None:
    """Refuse, as one paragraph, to resume progress recorded for another run."""
    differs = [text for key, text in _FIELDS.items() if recorded.get(key) != fingerprint.get(key)]
    if recorded.get("format") != fingerprint.get("format") or recorded.get("num_series") != fingerprint.get("num_series"):
        differs = differs or [_FIELDS["series"]]
    if differs:
        raise DSAInputError(
            f"{Path(out) / RUN_FILE}: the progress in this folder was recorded by a predict run that differs from "
            f"this one in {'; '.join(differs)}, so --resume cannot continue it: its series would be mixed with "
            "results of a different model, threshold or input. Run the same command as before to continue it, "
            "pass --overwrite to discard that progress and start over, or choose another --out (nothing was written)."
        )


@dataclass
class Progress:
    """The ``--resume`` progress of one run in ``out`` (:attr:`fingerprint` as :func:`run_fingerprint` makes it)."""

    out: Path
    fingerprint: dict

    @property
    def digest(self) -> str:
        return hashlib.sha256(json_bytes(self.fingerprint, RUN_FILE)).hexdigest()

    def begin(self, video_ids: Iterable[int]) -> dict[int, SeriesRecord]:
        """List the progress files in the marker, record the fingerprint, and return the series already done."""
        video_ids = list(video_ids)
        names = [RUN_FILE, *(pack_name(v) for v in video_ids)]
        check_files(self.out, names, "predict", overwrite=True)  # never a file the tool did not write
        with exclusive_lock(self.out / LOCK_FILE, blocking=True):
            marker = read_marker(self.out) or Marker()
            listed = set(marker.outputs.get("predict", []))
            if not set(names) <= listed:
                # Listed before any of them is written, so a kill leaves only listed files.
                marker = marker.with_set("predict", listed | set(names))
                atomic_write_bytes(self.out / MARKER_FILE, marker.to_bytes(self.out / MARKER_FILE), overwrite=True)
        run_bytes = json_bytes(self.fingerprint, RUN_FILE)
        if not (self.out / RUN_FILE).is_file() or (self.out / RUN_FILE).read_bytes() != run_bytes:
            atomic_write_bytes(self.out / RUN_FILE, run_bytes, overwrite=True)
        done = {}
        for video_id in video_ids:
            path = self.out / pack_name(video_id)
            record = read_pack(path, self.digest) if path.is_file() else None
            if record is not None and record.video_id == video_id:
                done[video_id] = record
        return done

    def store(self, record: SeriesRecord, data: bytes, scratch: Path) -> None:
        """Commit the pack of a finished series: written in ``scratch`` (the run's staging), then renamed."""
        temporary = scratch / f"pack-{record.video_id}.zip"
        temporary.write_bytes(data)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())  # the rename must not outlive the bytes on a crash
        os.replace(temporary, self.out / pack_name(record.video_id))
