"""The header pass over a DICOM input: accepted files, series grouping, and skipped files.

``scan_dicom_input(path, salt)`` reads only headers (no pixel decoding) and returns a
:class:`DicomScan`: one :class:`DicomSeriesPlan` per series, and a :class:`SkippedFile` for
every file left out. In a folder, one odd file never stops the rest: a file that is not an
XA/XRF greyscale image, is damaged, needs a missing decoder, has an unsupported pixel layout, is
too large, or does not fit its series is skipped with its reason; a file given directly is an
error instead. ``DicomScan.read(plan)`` decodes one series (``read_or_skip`` turns a folder's
undecodable series into skips too); ``strict_problems()`` words every skip as one failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ...errors import DSAInputError, format_problems
from .dataset import as_int, as_text, get, parse_time, quiet_pydicom, read_dataset, shown_path, sop_class_text
from .decode import check_decoder
from .pseudonyms import UidCheck, digest, resolve_salt
from .skips import SkippedFile, reason_of

if TYPE_CHECKING:  # series imports this module
    from .series import DicomSeries

DEFAULT_MAX_DECODED_BYTES = 2 * 1024**3

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


@dataclass
class FileHeader:
    """What the header pass learns about one accepted file (values stay inside this package)."""

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
class DicomSeriesPlan:
    """A series found by the header pass, before decoding: enough to validate annotations."""

    series_key: str
    pseudo_patient_id: str
    files: list[FileHeader]
    _uid_check: UidCheck = field(repr=False)

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


class DicomScan:
    """The header pass over an input: accepted files grouped into series, and skipped files.

    ``plans`` lists the series in order of their first file's path; ``read(plan)`` decodes one
    (so a caller can process a large input one series at a time); ``skips`` lists every file left
    out (``skipped`` the same as printable messages).
    """

    def __init__(self, root: Path, salt: str, max_decoded_bytes: int) -> None:
        self.root = root
        self.salt = salt
        self.max_decoded_bytes = max_decoded_bytes
        self.from_folder = root.is_dir()
        self.plans: list[DicomSeriesPlan] = []
        self.skips: list[SkippedFile] = []
        self._index: dict[Path, int] = {}

    @property
    def skipped(self) -> list[str]:
        """Every skip as a printable "path: skipped, reason" line."""
        return [skip.message for skip in self.skips]

    @property
    def skipped_files(self) -> set[Path]:
        return {skip.path for skip in self.skips}

    @property
    def folder(self) -> Path:
        """The folder that relative keys (boxes file, skip records) are relative to."""
        return self.root if self.from_folder else self.root.parent

    def skip_records(self) -> list[dict[str, object]]:
        return [skip.record(self.salt, self.folder) for skip in self.skips]

    def strict_problems(self) -> str | None:
        """Every skip as one paragraph (for ``--strict``), or None when nothing was skipped."""
        if not self.skips:
            return None
        return format_problems(shown_path(self.root), [s.message for s in self.skips], what="skipped file")

    def _skip(self, path: Path, reason: str, related: Path | None = None) -> None:
        self.skips.append(SkippedFile(path, reason, self._index.get(path, 0), related))

    # ---- header pass ----------------------------------------------------------------------
    def _input_files(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        if not self.root.is_dir():
            raise DSAInputError(
                f"{shown_path(self.root)}: no such file or folder (give a DICOM file or a folder of them)."
            )
        files = []
        for folder, subfolders, names in os.walk(self.root):
            subfolders.sort()
            files += [Path(folder) / name for name in sorted(names)]
        return [f for f in files if f.is_file()]

    def scan(self) -> None:
        files = self._input_files()
        self._index = {path: index for index, path in enumerate(files)}
        headers: list[FileHeader] = []
        with quiet_pydicom():
            for path in files:
                try:
                    header = self._header(path)
                except OSError as err:  # vanished or unreadable between the listing and the read
                    error = DSAInputError(f"{shown_path(path)}: cannot be read ({err.strerror or type(err).__name__}).")
                    if not self.from_folder:
                        raise error from None
                    self._skip(path, reason_of(error, path))
                    continue
                except DSAInputError as err:
                    if not self.from_folder:
                        raise
                    self._skip(path, reason_of(err, path))
                    continue
                if header is not None:
                    headers.append(header)
        self._group(headers)
        if not self.plans:
            raise self.nothing_to_import()

    def nothing_to_import(self) -> DSAInputError:
        """The error for an input where no series is left, with the first skip reasons."""
        shown = "; ".join(self.skipped[:5]) + ("; ..." if len(self.skips) > 5 else "")
        return DSAInputError(
            f"{shown_path(self.root)}: no XA/XRF image series to import"
            + (f" ({len(self.skips)} file(s) skipped: {shown})." if self.skips else " (no files found).")
        )

    def _header(self, path: Path) -> FileHeader | None:
        """Parse one file's header; None (with a skip reason) when it is not an XA/XRF image."""
        if path.stat().st_size == 0:
            return self._not_dicom(path, "is an empty file, not a DICOM file")
        try:
            ds = read_dataset(path, stop_before_pixels=True)
        except DSAInputError:
            raise
        except InvalidDicomError:
            return self._not_dicom(path, "is not a DICOM file (no 'DICM' marker after the 128-byte preamble)")
        except Exception as err:  # pydicom raises many types on damaged headers
            raise DSAInputError(
                f"{shown_path(path)}: the DICOM header cannot be parsed ({type(err).__name__}); the file is "
                "damaged or truncated. Re-export it from the archive, or move it out of the input."
            ) from None

        sop_class = get(ds, "SOPClassUID", as_text) or get(ds.file_meta, "MediaStorageSOPClassUID", as_text)
        modality = get(ds, "Modality", as_text)
        if sop_class is None:
            return self._skip(path, "the header has no SOP Class UID (a damaged or non-image file)")
        if sop_class not in ACCEPTED_SOP_CLASSES:
            return self._skip(path, f"{sop_class_text(sop_class)} is not an XA/XRF image")
        if modality is not None and modality.upper() not in ACCEPTED_MODALITIES:
            shown = modality if modality.upper() in _STANDARD_MODALITIES else "a non-standard value"
            return self._skip(path, f"Modality is {shown}, not XA or RF")

        transfer_syntax = UID(get(ds.file_meta, "TransferSyntaxUID", as_text) or "1.2.840.10008.1.2")
        samples = get(ds, "SamplesPerPixel", as_int)
        photometric = (get(ds, "PhotometricInterpretation", as_text) or "").upper()
        if samples not in (None, 1) or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            return self._skip(path, "not a greyscale image (only MONOCHROME1/2 are imported)")

        rows, columns = get(ds, "Rows", as_int), get(ds, "Columns", as_int)
        bits_allocated = get(ds, "BitsAllocated", as_int)
        bits_stored = get(ds, "BitsStored", as_int)
        declared_frames = get(ds, "NumberOfFrames", as_int)
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
            raise DSAInputError(f"{shown_path(path)}: unusable image header: {'; '.join(problems)}.")

        header = FileHeader(
            path=path, transfer_syntax=transfer_syntax, is_float=is_float, rows=rows, columns=columns,
            num_frames=declared_frames or 1, multi_frame=(declared_frames or 1) > 1,
            bits_allocated=bits_allocated, photometric=photometric,
            series_uid=get(ds, "SeriesInstanceUID", as_text), sop_uid=get(ds, "SOPInstanceUID", as_text),
            patient_material=self._patient_material(ds), instance_number=get(ds, "InstanceNumber", as_int),
            acquisition_time=get(ds, "AcquisitionTime", parse_time), content_time=get(ds, "ContentTime", parse_time),
        )
        if header.decoded_bytes > self.max_decoded_bytes:
            raise DSAInputError(
                f"{shown_path(path)}: declares {header.num_frames} frames of {rows} x {columns} pixels, "
                f"{header.decoded_bytes / 2**20:.0f} MiB once decoded, more than the limit of "
                f"{self.max_decoded_bytes / 2**20:.0f} MiB per series; the header is damaged, or raise the "
                "limit (--max-decoded-mib) if the series is really that large."
            )
        check_decoder(path, transfer_syntax)
        return header

    def _not_dicom(self, path: Path, problem: str) -> None:
        """A non-DICOM file is skipped inside a folder but is an error when named directly."""
        if not self.from_folder:
            raise DSAInputError(f"{shown_path(path)}: {problem}; give a DICOM XA/XRF file or a folder of them.")
        self._skip(path, problem)

    @staticmethod
    def _patient_material(ds: Dataset) -> str | None:
        patient_id = get(ds, "PatientID", as_text)
        if patient_id:
            return "id:" + patient_id
        name, birth = get(ds, "PatientName", as_text), get(ds, "PatientBirthDate", as_text)
        if name or birth:
            return f"name:{name or ''}|{birth or ''}"
        study = get(ds, "StudyInstanceUID", as_text)
        return "study:" + study if study else None

    def _group(self, headers: list[FileHeader]) -> None:
        groups: dict[str, list[FileHeader]] = {}
        seen_instances: dict[str, Path] = {}
        for header in headers:
            if header.sop_uid is not None:
                if header.sop_uid in seen_instances:
                    self._skip(header.path, "the same image instance as {related}", seen_instances[header.sop_uid])
                    continue
                seen_instances[header.sop_uid] = header.path
            if header.multi_frame:
                key = "instance:" + (header.sop_uid or f"file:{header.path}")
            else:
                key = "series:" + (header.series_uid or f"file:{header.path}")
            groups.setdefault(key, []).append(header)
        for key, files in groups.items():
            files.sort(key=lambda h: (
                h.instance_number is None, h.instance_number or 0,
                h.acquisition_time is None, h.acquisition_time or 0.0,
                h.content_time is None, h.content_time or 0.0,
                str(h.path),
            ))
            try:
                files = self._consistent(files)
                self._check_series_size(files)
            except DSAInputError as err:
                if not self.from_folder:
                    raise
                for header in files:
                    self._skip(header.path, reason_of(err, files[0].path))
                continue
            self.plans.append(DicomSeriesPlan(
                series_key="S-" + digest(self.salt, key),
                pseudo_patient_id="P-" + digest(self.salt, files[0].patient_material or key),
                files=files,
                _uid_check=UidCheck.of(self.salt, files[0].series_uid),
            ))
        self.plans.sort(key=lambda plan: str(plan.files[0].path))

    def _consistent(self, files: list[FileHeader]) -> list[FileHeader]:
        """The files of a single-frame series that share the first file's frame size and pixel
        format; an odd one is an error for a file input and skipped in a folder."""
        first, kept = files[0], [files[0]]
        for other in files[1:]:
            if (other.rows, other.columns) != (first.rows, first.columns):
                problem = (f"its frames are {other.rows} x {other.columns} pixels but {{related}} "
                           f"of the same single-frame series has {first.rows} x {first.columns}; a series "
                           "needs one frame size (move the odd file out of the input).")
            elif other.photometric != first.photometric or other.is_float != first.is_float:
                problem = ("its photometric interpretation or pixel type differs from {related} "
                           "of the same single-frame series; a series needs one pixel format.")
            else:
                kept.append(other)
                continue
            if not self.from_folder:
                raise DSAInputError(f"{shown_path(other.path)}: {problem.replace('{related}', shown_path(first.path))}")
            self._skip(other.path, problem, first.path)
        return kept

    def _check_series_size(self, files: list[FileHeader]) -> None:
        total = sum(f.decoded_bytes for f in files)
        if total > self.max_decoded_bytes:
            raise DSAInputError(
                f"{shown_path(files[0].path)}: its single-frame series of {len(files)} files needs "
                f"{total / 2**20:.0f} MiB once decoded, more than the limit of "
                f"{self.max_decoded_bytes / 2**20:.0f} MiB per series; raise the limit (--max-decoded-mib) if "
                "the series is really that large."
            )

    # ---- pixel pass -----------------------------------------------------------------------
    def iter_series(self) -> Iterator[DicomSeries]:
        for plan in self.plans:
            yield self.read(plan)

    def read(self, plan: DicomSeriesPlan) -> DicomSeries:
        """Decode and window one series to a :class:`~perforation_d2.data.dicom.series.DicomSeries`."""
        from .series import read_series  # series imports this module's types

        return read_series(plan, self.skipped)

    def read_or_skip(self, plan: DicomSeriesPlan) -> DicomSeries | None:
        """``read(plan)``, or None after recording every file of the series as skipped when it
        cannot be decoded and the input is a folder (for a file input the error is raised)."""
        try:
            return self.read(plan)
        except DSAInputError as err:
            if not self.from_folder:
                raise
            failing = next((h.path for h in plan.files if str(err).startswith(shown_path(h.path) + ": ")), None)
            for header in plan.files:
                if failing is None:
                    self._skip(header.path, "its series cannot be decoded")
                elif header.path == failing:
                    self._skip(header.path, reason_of(err, failing))
                else:
                    self._skip(header.path, "another file of its series, {related}, cannot be decoded", failing)
            return None


def scan_dicom_input(
    path: str | os.PathLike,
    salt: str | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> DicomScan:
    """Header pass over ``path`` (no pixel decoding): series plans and skipped files.

    Raises :class:`DSAInputError` when no XA/XRF series remains, and, for a single file input,
    for a damaged file, a missing decoder, or an oversized or unsupported image.
    """
    scan = DicomScan(Path(path), resolve_salt(salt), max_decoded_bytes)
    scan.scan()
    return scan

