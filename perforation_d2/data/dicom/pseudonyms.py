"""Pseudonyms for DICOM identifiers: the secret salt and salted HMAC-SHA256 digests.

``pseudo_patient_id`` is ``"P-"`` + the first 16 hex digits of HMAC-SHA256(salt, patient
material) and ``series_key`` ``"S-"`` + the same HMAC of the series' instance or series UID (see
:mod:`perforation_d2.data.dicom`). The same salt gives the same identifiers, so it must be reused
to link a patient's series across imports, and kept secret: with it, a known PatientID can be
recognised. It is the one given, else ``$PERFORATION_D2_SALT``, else the per-user salt file
(``$PERFORATION_D2_SALT_FILE``, default ``~/.config/perforation_d2/salt``, created once with 32
random bytes, mode 0600), and is never written into any output.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import DSAInputError

SALT_ENV = "PERFORATION_D2_SALT"
SALT_FILE_ENV = "PERFORATION_D2_SALT_FILE"
DEFAULT_SALT_FILE = "~/.config/perforation_d2/salt"


def digest(salt: str, text: str) -> str:
    """The first 16 hex digits of HMAC-SHA256(salt, text).

    ``surrogateescape`` lets a file name that is not valid UTF-8 (``os.fsdecode`` of a bytes
    listing) be hashed by its own bytes; any valid text encodes exactly as UTF-8.
    """
    return hmac.new(
        salt.encode("utf-8", "surrogateescape"), text.encode("utf-8", "surrogateescape"), hashlib.sha256
    ).hexdigest()[:16]


def user_salt_file() -> Path:
    """The per-user salt file: ``$PERFORATION_D2_SALT_FILE``, else ``~/.config/perforation_d2/salt``."""
    return Path(os.path.expanduser(os.environ.get(SALT_FILE_ENV) or DEFAULT_SALT_FILE))


def _create_user_salt(path: Path) -> None:
    """Write 32 random bytes (hex) to ``path``, mode 0600, without ever clobbering an existing file.

    The salt is written to a private temporary file and hard-linked into place: a concurrent
    first run either wins the link or finds the complete file of the other run, never a half one.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
    finally:
        os.unlink(tmp)
    print(
        f"perforation_d2: created a new pseudonymisation salt in {path}; keep it secret and outside any "
        "folder you share (it links a patient's series across your imports).",
        file=sys.stderr,
    )


def _user_salt() -> str:
    path = user_salt_file()
    try:
        if not path.exists():
            _create_user_salt(path)
        salt = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise DSAInputError(
            f"{path}: cannot read or create the pseudonymisation salt file ({reason}); give --salt, "
            f"${SALT_ENV}, or a writable ${SALT_FILE_ENV}."
        ) from None
    if not salt:
        raise DSAInputError(f"{path}: the pseudonymisation salt file is empty; delete it or write a secret into it.")
    return salt


def resolve_salt(salt: str | None) -> str:
    """``salt`` when given, else ``$PERFORATION_D2_SALT``, else the per-user salt file.

    The salt file (:func:`user_salt_file`) is created once with a random salt, so that pseudonyms
    stay the same on every run and link a patient's series across one user's imports. It lives
    outside every output folder: a salt stored beside the pseudonyms would let anyone given the
    folder recompute them from guessed PatientIDs.
    """
    salt = salt if salt is not None else os.environ.get(SALT_ENV)
    if salt is None:
        return _user_salt()
    if not salt.strip():
        raise DSAInputError(f"the pseudonymisation salt (--salt or ${SALT_ENV}) is empty; give a non-empty secret.")
    return salt


@dataclass(frozen=True)
class UidCheck:
    """A SeriesInstanceUID kept only as a salted digest, so that it can be matched, not leaked."""

    salt: str
    digest: str | None

    @classmethod
    def of(cls, salt: str, uid: str | None) -> UidCheck:
        return cls(salt, digest(salt, "uid:" + uid) if uid else None)

    def matches(self, uid: str) -> bool:
        return self.digest is not None and hmac.compare_digest(self.digest, digest(self.salt, "uid:" + uid))
