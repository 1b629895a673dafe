"""Files left out of a DICOM import: :class:`SkippedFile`, printable and as pseudonymous records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import DSAInputError
from .dataset import shown_path
from .pseudonyms import digest


@dataclass(frozen=True)
class SkippedFile:
    """One input file left out, and why.

    ``reason`` names no file and quotes no header value; where it concerns another input file
    it says ``{related}`` for it, shown as that file's path in :attr:`message` and as its
    pseudonym in :meth:`record`.
    """

    path: Path
    reason: str
    input_index: int  # position in the input listing: a folder's files by name, then its sub-folders' (0: a file)
    related: Path | None = None

    @property
    def message(self) -> str:
        """``"path: skipped, reason"``, printable whatever bytes the file names hold."""
        reason = self.reason.replace("{related}", shown_path(self.related)) if self.related else self.reason
        return f"{shown_path(self.path)}: skipped, {reason}"

    def record(self, salt: str, root: Path) -> dict[str, object]:
        """A machine-readable entry without identifying values: the file as a salted pseudonym of
        its path relative to ``root`` (folder names may carry patient names), its position in the
        sorted input listing, and the reason."""
        reason = self.reason.replace("{related}", file_pseudonym(salt, root, self.related)) if self.related else self.reason
        return {"file": file_pseudonym(salt, root, self.path), "input_index": self.input_index, "reason": reason}


def file_pseudonym(salt: str, root: Path, path: Path) -> str:
    """``"F-"`` + the salted digest of ``path`` relative to ``root`` (its name when it is ``root``)."""
    relative = path.relative_to(root).as_posix() if path != root else path.name
    return "F-" + digest(salt, "path:" + relative)


def reason_of(error: DSAInputError, path: Path) -> str:
    """An error about ``path`` ("path: problem ...") reworded as a skip reason ("problem ...")."""
    text, prefix = str(error), f"{shown_path(path)}: "
    return text[len(prefix):] if text.startswith(prefix) else text
