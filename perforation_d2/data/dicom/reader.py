"""Read DICOM X-ray angiography series into 8-bit frame stacks, with pseudonymous identifiers.

This is the reading half of ``prepare-dicom`` (and of ``predict`` on DICOM input):
``read_dicom_series(path, salt)`` returns one :class:`DicomSeries` per acquisition run found at
``path``. For large inputs, ``scan_dicom_input(path, salt)`` runs only the header pass (series
plans, skip reasons, every check that needs no decoding) and ``DicomScan.read(plan)`` /
``DicomScan.iter_series()`` decode one series at a time.

Input
-----
``path`` is one DICOM Part 10 file or a folder searched recursively (symbolic links to folders are
not followed). A multi-frame file (NumberOfFrames > 1) is one series. Single-frame files are
grouped into series by SeriesInstanceUID and ordered by InstanceNumber, then AcquisitionTime, then
ContentTime, then file path. Accepted: the XA and XRF storage SOP classes (classic, enhanced and
the retired bi-plane XA) with Modality ``XA`` or ``RF``; for the enhanced classes the top-level
attributes are used and per-frame functional groups are not read. Any other file is *skipped*
with a recorded reason (a CT image, a DICOMDIR, a presentation state, a non-DICOM file inside a
folder), not an error, unless nothing remains. A damaged file is an error that names the file
and what is wrong with it.

Pixel pipeline (per series, all frames share one mapping)
---------------------------------------------------------
1. Header checks *before any decoding*: one grey sample per pixel (MONOCHROME1/2), BitsAllocated
   8 or 16 with 1 <= BitsStored <= BitsAllocated (or 32/64-bit Float Pixel Data), at least one
   frame, and a decoded size ``frames x rows x columns x bytes`` under ``max_decoded_bytes``
   (default 2 GiB per series). Nothing is ever allocated from header values before these checks;
   native pixel data must also hold at least the declared number of bytes (else "truncated"),
   and encapsulated data at least one fragment per frame. Compressed data needs a decoder
   plugin; a missing one is reported with the packages to install.
2. Decoding with pydicom, which applies PixelRepresentation (signed/unsigned) for any BitsStored
   up to 16 (8, 12, 16 ...).
3. Modality LUT with pydicom's ``apply_modality_lut`` (per file): the ModalityLUTSequence when
   present, else RescaleSlope/RescaleIntercept. For integer data it is evaluated once per
   possible stored value (a table), so the whole pipeline is one lookup per pixel.
4. Windowing to 8 bit, taken from the first file of the series: the first VOILUTSequence item
   when present (its output range scaled to 0-255); else the first WindowCenter/WindowWidth pair
   with VOILUTFunction LINEAR (default), LINEAR_EXACT or SIGMOID as defined in DICOM PS3.3
   C.11.2.1.2; else a robust window from the 0.5th to the 99.5th percentile of all the series'
   modality values, nearest-rank (exact for integer data, via a histogram; from an evenly strided
   sample of at most 4 million values for float data). ``DicomSeries.windowing`` says which.
5. MONOCHROME1 inversion (255 - y) *after* windowing, because DICOM defines the window on the
   stored (non-inverted) values and inverts at display.
6. PixelIntensityRelationship ``LOG`` (logarithmic detector values, as DSA subtraction images
   are made of) is recorded in ``DicomSeries.intensity_relationship`` but not converted: the
   detector is trained and applied on these same displayed values, and converting LOG to LIN
   would need the exposure model the header does not carry.
7. Float Pixel Data with NaN or infinite values is rejected with :class:`DSAInputError`.

Frame time (``frame_time_ms``), from the first file of the series
-----------------------------------------------------------------
FrameTime (0018,1063) in ms; else FrameTimeVector (0018,1065): its first entry is the time of
frame 1 (0 by definition), the others are the increments to the previous frame, so the mean of
the entries after the first; else 1000 / CineRate (0018,0040); else 1000 /
RecommendedDisplayFrameRate (0008,2144); else ``None``. Non-positive or non-finite values are
ignored.

Pseudonymisation and privacy
----------------------------
``pseudo_patient_id`` is ``"P-"`` + the first 16 hex digits of HMAC-SHA256(salt, PatientID)
(falling back to PatientName + PatientBirthDate, then StudyInstanceUID, when PatientID is empty);
``series_key`` is ``"S-"`` + the same HMAC of the SOPInstanceUID of a multi-frame file or the
SeriesInstanceUID of a single-frame series. The same salt gives the same identifiers, so the salt
must be reused to link a patient's series across imports, and kept secret: with it, a known
PatientID can be recognised. The salt is the one given, else ``$PERFORATION_D2_SALT``, else the
per-user salt file (``$PERFORATION_D2_SALT_FILE``, default ``~/.config/perforation_d2/salt``,
created once with 32 random bytes, mode 0600); it is never written into any output. No other header value leaves this module (beyond pixels, image size
and frame time): error and skip messages name the file path the user gave and describe the
problem without attribute values (a Modality or SOP class is named only when it is a standard
term), and pydicom's own warnings and log records, which may quote attribute values, are
silenced while reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import mmap
import os
import re
import secrets
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, UID_dictionary

from ...errors import DSAInputError

SALT_ENV = "PERFORATION_D2_SALT"
SALT_FILE_ENV = "PERFORATION_D2_SALT_FILE"
DEFAULT_SALT_FILE = "~/.config/perforation_d2/salt"
DEFAULT_MAX_DECODED_BYTES = 2 * 1024**3
PERCENTILE_WINDOW = (0.5, 99.5)
_FLOAT_SAMPLE = 4_000_000

ACCEPTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.1.1": "Enhanced XA Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2.1": "Enhanced XRF Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.3": "X-Ray Angiographic Bi-Plane Image Storage (retired)",
}
ACCEPTED_MODALITIES = {"XA", "RF"}
# Defined terms of (0008,0060) Modality: only these are ever echoed in a skip reason, so that a
# free-text value in a malformed file cannot carry identity into the output.
_STANDARD_MODALITIES = {
    "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CR", "CT", "CTPROTOCOL", "DG", "DOC", "DX", "ECG",
    "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LS",
    "MG", "MR", "M3D", "NM", "OAM", "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS",
    "OT", "PLAN", "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTPLAN",
    "RTRECORD", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP", "TG",
    "US", "VA", "XA", "XC",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Transfer syntax -> what to install when pydicom has no working decoder plugin for it.
_JPEG_PACKAGES = "pylibjpeg==2.1.0 and pylibjpeg-libjpeg==2.1.0 (these pins keep numpy 1.x), or python-gdcm"
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _JPEG_PACKAGES + ", or Pillow",
    "1.2.840.10008.1.2.4.51": _JPEG_PACKAGES + ", or Pillow",
    "1.2.840.10008.1.2.4.57": _JPEG_PACKAGES,
    "1.2.840.10008.1.2.4.70": _JPEG_PACKAGES,
    "1.2.840.10008.1.2.4.80": _JPEG_PACKAGES + ", or pyjpegls",
    "1.2.840.10008.1.2.4.81": _JPEG_PACKAGES + ", or pyjpegls",
    "1.2.840.10008.1.2.5": "pylibjpeg and pylibjpeg-rle, or python-gdcm",
}
_J2K_PACKAGES = "pylibjpeg and pylibjpeg-openjpeg, or Pillow, or python-gdcm"

# pydicom's warning filters, logger state and validation mode are process-wide: reads hold this
# lock while they change them, so concurrent reads (threads) cannot restore each other's state.
_PYDICOM_SETTINGS_LOCK = threading.RLock()


def _digest(salt: str, text: str) -> str:
    return hmac.new(salt.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


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
class _UidCheck:
    """A SeriesInstanceUID kept only as a salted digest, so that it can be matched, not leaked."""

    salt: str
    digest: str | None

    @classmethod
    def of(cls, salt: str, uid: str | None) -> _UidCheck:
        return cls(salt, _digest(salt, "uid:" + uid) if uid else None)

    def matches(self, uid: str) -> bool:
        return self.digest is not None and hmac.compare_digest(self.digest, _digest(self.salt, "uid:" + uid))


@dataclass
class DicomSeries:
    """One acquisition run, decoded and windowed to 8 bit (see the module docstring).

    ``frames`` is ``uint8 (F, H, W)``. ``source_files`` are the files the frames came from, in
    series order, and ``frame_sources[i] = (file index, frame index within that file)``.
    ``skipped`` holds the reason for every input file the read left out ("path: why"); it is the
    same list for every series of one read. Identifiers are pseudonyms (module docstring).
    """

    frames: np.ndarray
    frame_time_ms: float | None
    pseudo_patient_id: str
    series_key: str
    source_files: list[Path]
    skipped: list[str]
    frame_sources: list[tuple[int, int]]
    windowing: str
    intensity_relationship: str | None
    _uid_check: _UidCheck = field(repr=False)

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def has_series_uid(self, uid: str) -> bool:
        """Whether ``uid`` is this series' SeriesInstanceUID (the UID itself is not kept)."""
        return self._uid_check.matches(uid)


@dataclass
class _FileHeader:
    """What the header pass learns about one accepted file (values stay inside this module)."""

    path: Path
    transfer_syntax: UID
    is_float: bool
    rows: int
    columns: int
    num_frames: int
    multi_frame: bool
    bits_allocated: int
    photometric: str
    series_uid: str | None
    sop_uid: str | None
    patient_material: str | None
    instance_number: int | None
    acquisition_time: float | None
    content_time: float | None

    @property
    def decoded_bytes(self) -> int:
        return self.num_frames * self.rows * self.columns * max(self.bits_allocated // 8, 1)


@dataclass
class SeriesPlan:
    """A series found by the header pass, before decoding: enough to validate annotations."""

    series_key: str
    pseudo_patient_id: str
    files: list[_FileHeader]
    _uid_check: _UidCheck = field(repr=False)

    def has_series_uid(self, uid: str) -> bool:
        """Whether ``uid`` is this series' SeriesInstanceUID (the UID itself is not kept)."""
        return self._uid_check.matches(uid)

    @property
    def source_files(self) -> list[Path]:
        return [f.path for f in self.files]

    @property
    def frames_per_file(self) -> list[int]:
        return [f.num_frames for f in self.files]

    @property
    def num_frames(self) -> int:
        return sum(self.frames_per_file)

    @property
    def height(self) -> int:
        return self.files[0].rows

    @property
    def width(self) -> int:
        return self.files[0].columns


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records (they may quote attribute values) and let it
    read invalid values without raising, so that every failure is ours to word. Serialises reads
    across threads (see ``_PYDICOM_SETTINGS_LOCK``)."""
    pydicom_logger = logging.getLogger("pydicom")
    with _PYDICOM_SETTINGS_LOCK, warnings.catch_warnings():
        was_disabled = pydicom_logger.disabled
        mode = pydicom_config.settings.reading_validation_mode
        warnings.simplefilter("ignore")
        pydicom_logger.disabled = True
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        try:
            yield
        finally:
            pydicom_config.settings.reading_validation_mode = mode
            pydicom_logger.disabled = was_disabled


def _read_dataset(path: Path, stop_before_pixels: bool) -> Dataset:
    """Parse ``path`` (not empty) through a read-only memory map.

    Reading from a map rather than a buffered file matters for hostile files: an element whose
    declared length is huge makes pydicom ask for that many bytes, which a map answers with the
    bytes that exist instead of allocating the declared size first. Only a failure to open the
    file is raised as is (as DSAInputError); parse errors propagate to the caller.
    """
    try:
        handle = open(path, "rb")  # closed by the with statement below
    except OSError as err:
        raise DSAInputError(f"{path}: cannot be read ({err.strerror or type(err).__name__}).") from None
    with handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return pydicom.dcmread(mapped, stop_before_pixels=stop_before_pixels)


def _get(ds: Dataset, keyword: str, convert: Callable[[Any], Any] = lambda v: v) -> Any:
    """``convert(ds.keyword)``, or None when absent, empty or unparsable (hostile files)."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return convert(value)
    except Exception:  # any parse failure of a single value means "unusable value"
        return None


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple, MultiValue)) else value


def _as_int(value: Any) -> int:
    return int(_first(value))


def _as_float(value: Any) -> float:
    number = float(_first(value))
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def _as_text(value: Any) -> str:
    return str(_first(value)).strip()


def _parse_time(value: Any) -> float:
    """DICOM TM (``HHMMSS.FFFFFF``, or the old ``HH:MM:SS``) in seconds since midnight."""
    text = str(_first(value)).strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
    if not match:
        raise ValueError("not a time")
    hours, minutes, seconds, fraction = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + float(fraction or 0)


def _sop_class_text(uid: str) -> str:
    return f"SOP class {UID_dictionary[uid][0]}" if uid in UID_dictionary else "an unknown SOP class"


def _transfer_syntax_text(uid: str) -> str:
    return UID_dictionary[uid][0] if uid in UID_dictionary else "an unknown transfer syntax"


def _frame_time_ms(ds: Dataset) -> float | None:
    frame_time = _get(ds, "FrameTime", _as_float)
    if frame_time is not None and frame_time > 0:
        return frame_time
    vector = _get(ds, "FrameTimeVector", lambda v: [float(x) for x in (v if isinstance(v, MultiValue) else [v])])
    if vector is not None and len(vector) >= 2:
        mean = float(np.mean(vector[1:]))
        if math.isfinite(mean) and mean > 0:
            return mean
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _get(ds, keyword, _as_float)
        if rate is not None and rate > 0:
            return 1000.0 / rate
    return None


class DicomScan:
    """The header pass over an input: accepted files grouped into series, and skip reasons.

    ``plans`` lists the series in order of their first file's path; ``read(plan)`` decodes one
    (so a caller can process a large input one series at a time); ``skipped`` lists "path: why"
    for every file left out.
    """

    def __init__(self, root: Path, salt: str, max_decoded_bytes: int) -> None:
        self.root = root
        self.salt = salt
        self.max_decoded_bytes = max_decoded_bytes
        self.plans: list[SeriesPlan] = []
        self.skipped: list[str] = []
        self.skipped_files: set[Path] = set()

    # ---- header pass ----------------------------------------------------------------------
    def _input_files(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        if not self.root.is_dir():
            raise DSAInputError(f"{self.root}: no such file or folder (give a DICOM file or a folder of them).")
        files = []
        for folder, subfolders, names in os.walk(self.root):
            subfolders.sort()
            files += [Path(folder) / name for name in sorted(names)]
        return [f for f in files if f.is_file()]

    def _header(self, path: Path, from_folder: bool) -> _FileHeader | None:
        """Parse one file's header; None (with a skip reason) when it is not an XA/XRF image."""
        size = path.stat().st_size
        if size == 0:
            return self._skip_or_fail(path, from_folder, "is an empty file, not a DICOM file")
        try:
            ds = _read_dataset(path, stop_before_pixels=True)
        except DSAInputError:
            raise
        except InvalidDicomError:
            return self._skip_or_fail(
                path, from_folder, "is not a DICOM file (no 'DICM' marker after the 128-byte preamble)"
            )
        except Exception as err:  # pydicom raises many types on damaged headers
            raise DSAInputError(
                f"{path}: the DICOM header cannot be parsed ({type(err).__name__}); the file is damaged or "
                "truncated. Re-export it from the archive, or move it out of the input."
            ) from None

        sop_class = _get(ds, "SOPClassUID", _as_text) or _get(ds.file_meta, "MediaStorageSOPClassUID", _as_text)
        modality = _get(ds, "Modality", _as_text)
        if sop_class is None:
            self._skip(path, f"{path}: skipped, the header has no SOP Class UID (a damaged or non-image file)")
            return None
        if sop_class not in ACCEPTED_SOP_CLASSES:
            self._skip(path, f"{path}: skipped, {_sop_class_text(sop_class)} is not an XA/XRF image")
            return None
        if modality is not None and modality.upper() not in ACCEPTED_MODALITIES:
            shown = modality if modality.upper() in _STANDARD_MODALITIES else "a non-standard value"
            self._skip(path, f"{path}: skipped, Modality is {shown}, not XA or RF")
            return None

        transfer_syntax = UID(_get(ds.file_meta, "TransferSyntaxUID", _as_text) or "1.2.840.10008.1.2")
        samples = _get(ds, "SamplesPerPixel", _as_int)
        photometric = (_get(ds, "PhotometricInterpretation", _as_text) or "").upper()
        if samples not in (None, 1) or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            self._skip(path, f"{path}: skipped, not a greyscale image (only MONOCHROME1/2 are imported)")
            return None

        rows, columns = _get(ds, "Rows", _as_int), _get(ds, "Columns", _as_int)
        bits_allocated = _get(ds, "BitsAllocated", _as_int)
        bits_stored = _get(ds, "BitsStored", _as_int)
        declared_frames = _get(ds, "NumberOfFrames", _as_int)
        is_float = bits_allocated in (32, 64) and bits_stored is None
        problems = []
        if rows is None or columns is None or rows < 1 or columns < 1:
            problems.append("Rows and Columns must be positive integers")
        if is_float:
            pass  # Float Pixel Data has no BitsStored
        elif bits_allocated not in (8, 16):
            problems.append("BitsAllocated must be 8 or 16 (or 32/64 for float pixel data)")
        elif bits_stored is None or not 1 <= bits_stored <= bits_allocated:
            problems.append("BitsStored must be between 1 and BitsAllocated")
        if declared_frames is not None and declared_frames < 1:
            problems.append(f"it declares {declared_frames} frames (a zero-frame file has nothing to import)")
        if problems:
            raise DSAInputError(f"{path}: unusable image header: {'; '.join(problems)}.")

        header = _FileHeader(
            path=path,
            transfer_syntax=transfer_syntax,
            is_float=is_float,
            rows=rows,
            columns=columns,
            num_frames=declared_frames or 1,
            multi_frame=(declared_frames or 1) > 1,
            bits_allocated=bits_allocated,
            photometric=photometric,
            series_uid=_get(ds, "SeriesInstanceUID", _as_text),
            sop_uid=_get(ds, "SOPInstanceUID", _as_text),
            patient_material=self._patient_material(ds),
            instance_number=_get(ds, "InstanceNumber", _as_int),
            acquisition_time=_get(ds, "AcquisitionTime", _parse_time),
            content_time=_get(ds, "ContentTime", _parse_time),
        )
        if header.decoded_bytes > self.max_decoded_bytes:
            raise DSAInputError(
                f"{path}: declares {header.num_frames} frames of {rows} x {columns} pixels, "
                f"{header.decoded_bytes / 2**20:.0f} MiB once decoded, more than the limit of "
                f"{self.max_decoded_bytes / 2**20:.0f} MiB per series; the header is damaged, or raise the "
                "limit (--max-decoded-mib) if the series is really that large."
            )
        self._check_decoder(path, transfer_syntax)
        return header

    @staticmethod
    def _patient_material(ds: Dataset) -> str | None:
        patient_id = _get(ds, "PatientID", _as_text)
        if patient_id:
            return "id:" + patient_id
        name, birth = _get(ds, "PatientName", _as_text), _get(ds, "PatientBirthDate", _as_text)
        if name or birth:
            return f"name:{name or ''}|{birth or ''}"
        study = _get(ds, "StudyInstanceUID", _as_text)
        return "study:" + study if study else None

    @staticmethod
    def _check_decoder(path: Path, transfer_syntax: UID) -> None:
        name = _transfer_syntax_text(transfer_syntax)
        decoder = None
        # Not a transfer syntax at all, or one pydicom has no decoder for (get_decoder raises).
        if UID_dictionary.get(transfer_syntax, ("", ""))[1] == "Transfer Syntax":
            with contextlib.suppress(NotImplementedError):
                decoder = get_decoder(transfer_syntax)
        if decoder is None:
            raise DSAInputError(
                f"{path}: its pixel data uses {name}, which pydicom cannot decode; convert the file to an "
                "uncompressed or JPEG transfer syntax (e.g. with dcmtk's dcmdjpeg/dcmconv or gdcmconv)."
            )
        if not decoder.is_available:
            packages = _DECODER_PACKAGES.get(str(transfer_syntax), _J2K_PACKAGES)
            raise DSAInputError(
                f"{path}: its pixel data is compressed as {name} and no decoder for it is installed; "
                f"install {packages} (pip install ...) and run again."
            )

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append(reason)
        self.skipped_files.add(path)

    def _skip_or_fail(self, path: Path, from_folder: bool, problem: str) -> None:
        """A non-DICOM file is skipped inside a folder but is an error when named directly."""
        if not from_folder:
            raise DSAInputError(f"{path}: {problem}; give a DICOM XA/XRF file or a folder of them.")
        self._skip(path, f"{path}: skipped, {problem}")
        return None

    def scan(self) -> None:
        files = self._input_files()
        from_folder = self.root.is_dir()
        headers: list[_FileHeader] = []
        with _quiet_pydicom():
            for path in files:
                header = self._header(path, from_folder)
                if header is not None:
                    headers.append(header)
        self._group(headers)
        if not self.plans:
            shown = "; ".join(self.skipped[:5]) + ("; ..." if len(self.skipped) > 5 else "")
            raise DSAInputError(
                f"{self.root}: no XA/XRF image series to import"
                + (f" ({len(self.skipped)} file(s) skipped: {shown})." if self.skipped else " (no files found).")
            )

    def _group(self, headers: list[_FileHeader]) -> None:
        groups: dict[str, list[_FileHeader]] = {}
        seen_instances: dict[str, Path] = {}
        for header in headers:
            if header.sop_uid is not None:
                if header.sop_uid in seen_instances:
                    self._skip(
                        header.path, f"{header.path}: skipped, the same image instance as {seen_instances[header.sop_uid]}"
                    )
                    continue
                seen_instances[header.sop_uid] = header.path
            if header.multi_frame:
                key = "instance:" + (header.sop_uid or f"file:{header.path}")
            else:
                key = "series:" + (header.series_uid or f"file:{header.path}")
            groups.setdefault(key, []).append(header)

        for key, files in groups.items():
            files.sort(
                key=lambda h: (
                    h.instance_number is None, h.instance_number or 0,
                    h.acquisition_time is None, h.acquisition_time or 0.0,
                    h.content_time is None, h.content_time or 0.0,
                    str(h.path),
                )
            )
            first = files[0]
            for other in files[1:]:
                if (other.rows, other.columns) != (first.rows, first.columns):
                    raise DSAInputError(
                        f"{other.path}: its frames are {other.rows} x {other.columns} pixels but {first.path} "
                        f"of the same single-frame series has {first.rows} x {first.columns}; a series "
                        "needs one frame size (move the odd file out of the input)."
                    )
                if other.photometric != first.photometric or other.is_float != first.is_float:
                    raise DSAInputError(
                        f"{other.path}: its photometric interpretation or pixel type differs from {first.path} "
                        "of the same single-frame series; a series needs one pixel format."
                    )
            total = sum(f.decoded_bytes for f in files)
            if total > self.max_decoded_bytes:
                raise DSAInputError(
                    f"{first.path}: its single-frame series of {len(files)} files needs {total / 2**20:.0f} MiB "
                    f"once decoded, more than the limit of {self.max_decoded_bytes / 2**20:.0f} MiB per series; "
                    "raise the limit (--max-decoded-mib) if the series is really that large."
                )
            patient = first.patient_material or key
            uid = first.series_uid
            self.plans.append(
                SeriesPlan(
                    series_key="S-" + _digest(self.salt, key),
                    pseudo_patient_id="P-" + _digest(self.salt, patient),
                    files=files,
                    _uid_check=_UidCheck.of(self.salt, uid),
                )
            )
        self.plans.sort(key=lambda plan: str(plan.files[0].path))

    # ---- pixel pass -----------------------------------------------------------------------
    def iter_series(self) -> Iterator[DicomSeries]:
        for plan in self.plans:
            yield self.read(plan)

    def read(self, plan: SeriesPlan) -> DicomSeries:
        """Decode and window one series (module docstring, steps 1-7)."""
        with _quiet_pydicom():
            decoded = [_DecodedFile.load(header) for header in plan.files]
        first = decoded[0]
        window = first.window
        if first.header.is_float:
            values = [d.float_values for d in decoded]
            window = window or _percentile_window_float(values)
            frames = np.stack([_to_uint8(frame, window) for v in values for frame in v])  # bounded temporaries
        else:
            window = window or _percentile_window_tables(decoded)
            frames = np.concatenate([_to_uint8(d.table, window)[d.index] for d in decoded])
        if first.header.photometric == "MONOCHROME1":
            np.subtract(255, frames, out=frames)
        frame_sources = [(i, k) for i, d in enumerate(decoded) for k in range(d.header.num_frames)]
        return DicomSeries(
            frames=frames,
            frame_time_ms=first.frame_time_ms,
            pseudo_patient_id=plan.pseudo_patient_id,
            series_key=plan.series_key,
            source_files=plan.source_files,
            skipped=self.skipped,
            frame_sources=frame_sources,
            windowing=window.description,
            intensity_relationship=first.intensity_relationship,
            _uid_check=plan._uid_check,
        )


@dataclass
class _Window:
    """Maps modality values to [0, 1]; ``kind`` is "lut", "linear", "linear_exact", "sigmoid" or "range"."""

    kind: str
    description: str
    center: float = 0.0
    width: float = 1.0
    lut: np.ndarray | None = None
    lut_first: int = 0

    def unit(self, values: np.ndarray) -> np.ndarray:
        values = values.astype(np.float64, copy=False)
        c, w = self.center, self.width
        if self.kind == "lut":
            lut = self.lut.astype(np.float64)
            index = np.clip(np.round(values) - self.lut_first, 0, len(lut) - 1).astype(np.int64)
            low, high = lut.min(), lut.max()
            return (lut[index] - low) / (high - low) if high > low else np.zeros_like(values)
        if self.kind == "linear":  # PS3.3 C.11.2.1.2.1
            return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) if w > 1 else (values > c - 0.5) * 1.0
        if self.kind == "linear_exact":  # PS3.3 C.11.2.1.3.2
            return np.clip((values - c) / w + 0.5, 0.0, 1.0)
        if self.kind == "sigmoid":  # PS3.3 C.11.2.1.3.1
            return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - c) / w, -700, 700)))
        # "range": center..width hold the low and high percentile values
        low, high = c, w
        return np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else (values > low) * 1.0


def _to_uint8(values: np.ndarray, window: _Window) -> np.ndarray:
    return np.round(window.unit(values) * 255.0).astype(np.uint8)


def _percentile_window_tables(decoded: list[_DecodedFile]) -> _Window:
    """Exact nearest-rank percentiles of the modality values of every pixel of the series."""
    return _nearest_rank_window(
        np.concatenate([d.table for d in decoded]), np.concatenate([d.histogram for d in decoded])
    )


def _percentile_window_float(values: list[np.ndarray]) -> _Window:
    total = sum(v.size for v in values)
    stride = -(-total // _FLOAT_SAMPLE)  # ceil: at most _FLOAT_SAMPLE values
    sample = np.concatenate([v.reshape(-1)[::stride] for v in values]).astype(np.float64)
    return _nearest_rank_window(sample, np.ones(sample.size, dtype=np.int64))


def _nearest_rank_window(values: np.ndarray, counts: np.ndarray) -> _Window:
    """The q-th percentile is the smallest value whose cumulative count reaches ceil(q/100 * n)."""
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(counts[order])
    low, high = (
        float(values[np.searchsorted(cumulative, max(math.ceil(q / 100 * cumulative[-1]), 1))])
        for q in PERCENTILE_WINDOW
    )
    return _Window("range", f"percentile {PERCENTILE_WINDOW[0]}-{PERCENTILE_WINDOW[1]} of the series",
                   center=low, width=high)


@dataclass
class _DecodedFile:
    """One decoded file: integer data as lookup indices + tables, float data as modality values."""

    header: _FileHeader
    window: _Window | None
    frame_time_ms: float | None
    intensity_relationship: str | None
    # Integer data: ``table[index]`` is the modality value of a pixel, ``histogram`` counts indices.
    index: np.ndarray | None = None
    table: np.ndarray | None = None
    histogram: np.ndarray | None = None
    # Float data: the modality values themselves.
    float_values: np.ndarray | None = None

    @classmethod
    def load(cls, header: _FileHeader) -> _DecodedFile:
        path = header.path
        try:
            ds = _read_dataset(path, stop_before_pixels=False)
        except DSAInputError:
            raise
        except Exception as err:  # damaged element structure after the header
            raise DSAInputError(
                f"{path}: the file cannot be parsed ({type(err).__name__}); it is damaged or truncated."
            ) from None
        keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
        raw = _get(ds, keyword, bytes) if keyword else None
        if not raw:
            raise DSAInputError(
                f"{path}: holds no pixel data (an empty or zero-frame image, or a file truncated before its "
                "pixels); nothing to import."
            )
        if header.is_float != (keyword != "PixelData"):
            raise DSAInputError(f"{path}: its pixel data element does not match BitsAllocated/BitsStored.")
        if header.transfer_syntax.is_encapsulated:
            _check_fragments(path, raw, header.num_frames)
        elif len(raw) < header.decoded_bytes:
            raise DSAInputError(
                f"{path}: the pixel data holds {len(raw)} bytes but the header declares {header.num_frames} "
                f"frame(s) of {header.rows} x {header.columns} pixels ({header.decoded_bytes} bytes); the file "
                "is truncated or its header is wrong."
            )
        try:
            array, _ = get_decoder(header.transfer_syntax).as_array(ds, raw=True)
        except MemoryError:
            raise DSAInputError(f"{path}: not enough memory to decode the pixel data.") from None
        except Exception as err:  # decoder plugins raise many types on damaged data
            raise DSAInputError(
                f"{path}: the pixel data cannot be decoded ({type(err).__name__}); the compressed data is "
                "damaged or truncated, or the header does not match it."
            ) from None
        expected = (header.num_frames, header.rows, header.columns)
        if array.ndim == 2:
            array = array[None]
        if array.shape != expected:
            raise DSAInputError(
                f"{path}: decoded {'x'.join(map(str, array.shape))} pixels where the header declares "
                f"{'x'.join(map(str, expected))}; the file is damaged."
            )
        decoded = cls(
            header=header,
            window=_window_of(ds),
            frame_time_ms=_frame_time_ms(ds),
            intensity_relationship=_get(ds, "PixelIntensityRelationship", _as_text),
        )
        if header.is_float:
            decoded._set_float(path, ds, array)
        else:
            decoded._set_integer(path, ds, array)
        return decoded

    def _set_float(self, path: Path, ds: Dataset, array: np.ndarray) -> None:
        finite = np.isfinite(array)
        if not finite.all():
            raise DSAInputError(
                f"{path}: its float pixel data holds {int(finite.size - np.count_nonzero(finite))} NaN or "
                "infinite value(s); such frames can be neither windowed nor learnt from. Fix the export and "
                "run again."
            )
        if "ModalityLUTSequence" in ds:
            raise DSAInputError(f"{path}: has a Modality LUT on float pixel data, which DICOM does not define.")
        slope, intercept = _get(ds, "RescaleSlope", _as_float), _get(ds, "RescaleIntercept", _as_float)
        values = array.astype(np.float32 if array.dtype.itemsize <= 4 else np.float64)
        if slope is not None and intercept is not None:
            values = values * slope + intercept
        self.float_values = values

    def _set_integer(self, path: Path, ds: Dataset, array: np.ndarray) -> None:
        # One table entry per value the declared BitsStored allows or the data holds (pydicom has
        # applied PixelRepresentation); a value far outside BitsStored means a damaged file.
        bits = _get(ds, "BitsStored", _as_int) or 16
        signed = _get(ds, "PixelRepresentation", _as_int) == 1
        low = min(-(2 ** (bits - 1)) if signed else 0, int(array.min()))
        high = max(2 ** (bits - 1) - 1 if signed else 2**bits - 1, int(array.max()))
        if high - low >= 2**17:
            raise DSAInputError(f"{path}: its pixel values lie far outside the range BitsStored allows.")
        stored_values = np.arange(low, high + 1, dtype=np.int64)
        try:
            table = np.asarray(apply_modality_lut(stored_values, ds), dtype=np.float64)
        except Exception as err:  # malformed Modality LUT / rescale values
            raise DSAInputError(
                f"{path}: its Modality LUT or rescale slope/intercept cannot be applied ({type(err).__name__}); "
                "the header is damaged."
            ) from None
        if table.shape != stored_values.shape or not np.isfinite(table).all():
            raise DSAInputError(f"{path}: its Modality LUT or rescale slope/intercept gives invalid values.")
        if low == 0 and array.dtype.kind == "u":
            index = array
        else:
            index = (array.astype(np.int32) - low).astype(np.uint16 if high - low < 2**16 else np.uint32)
        self.index = index
        self.table = table
        self.histogram = np.bincount(index.reshape(-1), minlength=len(table))


def _check_fragments(path: Path, raw: bytes, num_frames: int) -> None:
    """Each frame of encapsulated data needs at least one fragment: checked before decoding."""
    try:
        stream = BytesIO(raw)
        parse_basic_offsets(stream)
        fragments, _ = parse_fragments(stream)
    except Exception as err:  # malformed item structure
        raise DSAInputError(
            f"{path}: the compressed pixel data is malformed ({type(err).__name__}); the file is damaged or "
            "truncated."
        ) from None
    if fragments < num_frames:
        raise DSAInputError(
            f"{path}: the header declares {num_frames} frames but the compressed pixel data holds only "
            f"{fragments} fragment(s); the file is truncated or its NumberOfFrames is wrong."
        )


def _window_of(ds: Dataset) -> _Window | None:
    """The file's first VOI LUT, else its first valid window centre/width, else None."""
    voi = _get(ds, "VOILUTSequence")
    if voi:
        try:
            item = voi[0]
            entries, first, _bits = (int(v) for v in item.LUTDescriptor)
            data = item.LUTData
            lut = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data, dtype=np.float64)
            if lut.size >= 1 and np.isfinite(lut).all() and entries in (lut.size, lut.size % 65536):
                return _Window("lut", "VOI LUT (first)", lut=lut.astype(np.float64), lut_first=first)
        except Exception:  # a malformed VOI LUT falls back to the window/percentiles
            pass
    center, width = _get(ds, "WindowCenter", _as_float), _get(ds, "WindowWidth", _as_float)
    if center is None or width is None:
        return None
    function = (_get(ds, "VOILUTFunction", _as_text) or "LINEAR").upper()
    kind = {"LINEAR_EXACT": "linear_exact", "SIGMOID": "sigmoid"}.get(function, "linear")
    if width < (1 if kind == "linear" else 1e-12):
        return None
    return _Window(kind, f"window centre/width (first), {kind.upper()}", center=center, width=width)


def scan_dicom_input(
    path: str | os.PathLike,
    salt: str | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> DicomScan:
    """Header pass over ``path`` (no pixel decoding): series plans and skip reasons.

    Raises :class:`DSAInputError` for a damaged file, a missing decoder, an oversized or
    inconsistent series, or when no XA/XRF series remains.
    """
    scan = DicomScan(Path(path), resolve_salt(salt), max_decoded_bytes)
    scan.scan()
    return scan


def read_dicom_series(
    path: str | os.PathLike,
    salt: str | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> list[DicomSeries]:
    """Every XA/XRF series at ``path`` (a file, or a folder searched recursively), decoded to 8 bit.

    See the module docstring for grouping, the pixel pipeline, frame times and pseudonyms.
    ``salt`` defaults to ``$PERFORATION_D2_SALT``, else the per-user salt file (see
    :func:`resolve_salt`). Files left out are listed in each series' ``skipped``.
    """
    scan = scan_dicom_input(path, salt, max_decoded_bytes)
    return list(scan.iter_series())
