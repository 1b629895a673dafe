"""Which files in an output folder perforation_d2 wrote: the output marker and the checks on it.

Every output folder the tool writes carries the marker ``.perforation_d2-output.json``, naming
each command that wrote there and every file it wrote. It is the only ground on which anything
is replaced: ``--overwrite`` replaces a folder only when it carries the marker, and within it only
the files the marker lists; files a user added stay, and another tool's ``manifest.json`` or
``cohort.json`` proves nothing. A non-empty folder without the marker is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import DSAInputError
from .atomic import file_above
from .json_io import json_bytes, read_json

MARKER_FILE = ".perforation_d2-output.json"
TOOL = "perforation_d2"
_FORMAT = 1
_COUNT_LIMIT = 10000  # entries counted when describing a folder (the message stays quick on huge ones)


@dataclass
class Marker:
    """``outputs``: for each command that wrote into the folder, the files it wrote (relative, ``/``)."""

    outputs: dict[str, list[str]] = field(default_factory=dict)

    def files(self) -> set[str]:
        return {name for names in self.outputs.values() for name in names}

    def with_set(self, command: str, names: Iterable[str]) -> Marker:
        """A copy where ``command`` owns ``names`` (taken away from any other command's set)."""
        names = sorted(set(names))
        taken = set(names)
        outputs = {cmd: [n for n in files if n not in taken] for cmd, files in self.outputs.items() if cmd != command}
        outputs = {cmd: files for cmd, files in outputs.items() if files}
        outputs[command] = names
        return Marker(dict(sorted(outputs.items())))

    def to_bytes(self, where: Path) -> bytes:
        return json_bytes({"tool": TOOL, "format": _FORMAT, "outputs": self.outputs}, where)


def check_relative_name(name: str) -> str:
    """``name`` as a clean relative ``/`` path inside an output folder (a programming error otherwise)."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or str(path) != name or name == MARKER_FILE:
        raise ValueError(f"not a relative output name: {name!r}")
    return name


def read_marker(folder: Path) -> Marker | None:
    """The marker of ``folder``; None when it has none, or one that is not a valid perforation_d2 marker."""
    path = folder / MARKER_FILE
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = read_json(path, "output marker")
    except DSAInputError:
        return None
    outputs = data.get("outputs") if isinstance(data, dict) and data.get("tool") == TOOL else None
    if not isinstance(outputs, dict):
        return None
    marker = Marker()
    for command, names in outputs.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
        try:
            marker.outputs[command] = [check_relative_name(n) for n in names]
        except ValueError:
            return None
    return marker


def files_under(folder: Path) -> set[str]:
    """Every non-folder entry under ``folder`` (links not followed), relative with ``/``; not the marker."""
    found: set[str] = set()
    pending = [(folder, "")]
    while pending:
        current, prefix = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), name + "/"))
                elif name != MARKER_FILE:
                    found.add(name)
    return found


def describe_folder(folder: Path, limit: int = 5) -> str:
    """What ``folder`` holds, for a message: ``2 entries: frames/ (a folder of 12 files), notes.txt``."""
    entries = sorted(os.listdir(folder))
    shown = []
    for name in entries[:limit]:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            count = 0
            for _root, _dirs, files in os.walk(path):
                count += len(files)
                if count >= _COUNT_LIMIT:
                    break
            shown.append(f"{name}/ (a folder of {count}{'+' if count >= _COUNT_LIMIT else ''} file(s))")
        else:
            shown.append(name)
    more = f", and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {', '.join(shown)}{more}"


def check_out_path(out: Path) -> None:
    """``out`` may be (or become) a folder: it is not a file and does not lie under one."""
    if out.exists() and not out.is_dir():
        raise DSAInputError(f"{out}: exists and is a file, not a folder; --out names an output folder "
                            "(nothing was written).")
    blocking = file_above(out)
    if blocking is not None:
        raise DSAInputError(f"{out}: cannot be created because {blocking} is a file, not a folder "
                            "(nothing was written).")


def check_folder(out: Path, command: str, overwrite: bool) -> Marker | None:
    """May ``command`` replace the folder ``out`` as a whole? Returns its marker (None: absent or empty)."""
    check_out_path(out)
    if out.is_symlink():
        raise DSAInputError(f"{out}: is a symbolic link; {command} replaces its output folder as a whole, so give "
                            "the folder it points to, or a new one (nothing was written).")
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise DSAInputError(f"{out}: is the current folder (or holds it); {command} replaces its output folder as a "
                            "whole, so give a sub-folder as --out (nothing was written).")
    if not out.exists() or not any(os.scandir(out)):
        return None
    marker = read_marker(out)
    if marker is None:
        raise DSAInputError(
            f"{out}: holds no earlier {command} output (no {MARKER_FILE} marks anything there as written by "
            f"{TOOL}) but {describe_folder(out)}; {TOOL} never replaces or deletes files it did not write, "
            "with or without --overwrite: choose a new or empty folder, or move those away (nothing was written)."
        )
    if not overwrite:
        raise DSAInputError(
            f"{out}: already holds the output of {TOOL} {', '.join(sorted(marker.outputs)) or command}; pass "
            "--overwrite to replace it (files you added there are kept), or choose another folder "
            "(nothing was written)."
        )
    return marker


def check_files(out: Path, names: Iterable[str], command: str, overwrite: bool) -> Marker | None:
    """May ``command`` write the files ``names`` into ``out`` (other files there stay)? Returns its marker."""
    check_out_path(out)
    if not out.exists():
        return None
    marker = read_marker(out)
    listed = marker.files() if marker else set()
    existing, foreign = [], []
    for name in names:
        target = out / name
        for parent in PurePosixPath(name).parents:
            if str(parent) != "." and (out / parent).exists() and not (out / parent).is_dir():
                raise DSAInputError(f"{out / parent}: is a file where {command} writes the folder {parent}/; move it "
                                    "away or choose another --out (nothing was written).")
        if target.exists() or target.is_symlink():
            existing.append(target)
            if name not in listed or target.is_dir():
                foreign.append(target)
    if existing and not overwrite:
        raise DSAInputError(
            f"{existing[0]}: output already exists"
            + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
            + "; pass --overwrite to replace existing outputs (nothing was written)."
        )
    if foreign:
        raise DSAInputError(
            f"{foreign[0]}: exists but was not written by {TOOL} (the {MARKER_FILE} of {out} does not list it"
            + (f"; nor {len(foreign) - 1} more" if len(foreign) > 1 else "")
            + "), so --overwrite does not replace it: move it away or choose another --out (nothing was written)."
        )
    return marker
