"""Write synthetic DICOM XA/XRF files with pydicom for the tests, and check outputs for identity leaks.

Every file carries identifying attributes with known, distinctive values (:func:`make_identity`), so
a test can import it and then prove that none of those values reached any output
(:func:`assert_no_identity_leak`). The helpers write real Part 10 files (preamble, file meta,
explicit or implicit VR, native or RLE-compressed pixel data), the same bytes a scanner would send.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

XA_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.12.1")  # X-Ray Angiographic Image Storage
XRF_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.12.2")  # X-Ray Radiofluoroscopic Image Storage
CT_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage

# Root for the UIDs the factory invents (pydicom's own example root, never a real scanner's).
_UID_ROOT = "1.2.826.0.1.3680043.8.498."

# Attributes whose values count as identity; the values are chosen to be distinctive so that a
# chance match in compressed PNG bytes is practically impossible.
IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDateTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def make_identity(index: int = 0, patient: int | None = None) -> dict[str, str]:
    """Known identifying values for series ``index`` of patient ``patient`` (default: ``index``)."""
    patient = index if patient is None else patient
    return {
        "PatientName": f"Quibblewick{patient}^Zenobia^Marigold",
        "PatientID": f"PID-83641-Q{patient}X",
        "PatientBirthDate": f"1958071{patient % 10}",
        "OtherPatientIDs": f"OPID-55120-Z{patient}Z",
        "AccessionNumber": f"ACC92746{index:02d}K",
        "InstitutionName": "Saint Ermengild Memorial Infirmary",
        "ReferringPhysicianName": "Vorstenbosch^Ermintrude",
        "StudyDate": "20190823",
        "SeriesDate": "20190824",
        "AcquisitionDateTime": "20190825134159.000000",
        "StudyInstanceUID": f"{_UID_ROOT}7{patient}.31415",
        "SeriesInstanceUID": f"{_UID_ROOT}7{patient}.92653.{index}",
    }


def sop_instance_uid(series_uid: str, number: int) -> str:
    return f"{series_uid}.{number + 1}"


def write_xa(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    identity: Mapping[str, str] | None = None,
    sop_uid: str | None = None,
    instance_number: int | None = 1,
    modality: str = "XA",
    sop_class: str = XA_SOP_CLASS,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    modality_lut: tuple[np.ndarray, int] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[np.ndarray, int, int] | None = None,
    frame_time: float | None = None,
    frame_time_vector: Sequence[float] | None = None,
    cine_rate: float | None = None,
    display_frame_rate: float | None = None,
    intensity_relationship: str | None = None,
    acquisition_time: str | None = None,
    content_time: str | None = None,
    number_of_frames: int | str | None = "auto",
    transfer_syntax: str = ExplicitVRLittleEndian,
    multi_frame_attributes: bool = True,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write ``pixels`` ((F, H, W) or (H, W); integer stored values, or float32/float64) as a DICOM file.

    Integer arrays become (7FE0,0010) Pixel Data with BitsAllocated 8 (uint8/int8) or 16, BitsStored
    ``bits_stored`` (default: the allocation) and PixelRepresentation from the dtype's sign;
    float arrays become (7FE0,0008) Float Pixel Data. ``number_of_frames`` "auto" writes F for
    3-D arrays and omits the attribute for 2-D ones; an int writes that (possibly wrong) value.
    ``modality_lut`` is (LUT data, first mapped value), ``voi_lut`` is (LUT data, first mapped,
    bits per entry). ``transfer_syntax`` may be RLE Lossless (pydicom compresses it). ``extra``
    sets further attributes by keyword last, after compression (e.g. a wrong NumberOfFrames).
    """
    path = Path(path)
    identity = dict(make_identity() if identity is None else identity)
    arr = np.asarray(pixels)
    sop_uid = sop_uid or sop_instance_uid(identity["SeriesInstanceUID"], instance_number or 0)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if transfer_syntax == RLELossless else transfer_syntax
    meta.ImplementationClassUID = _UID_ROOT + "1"

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    for keyword, value in identity.items():
        setattr(ds, keyword, value)
    ds.StudyTime = "101112"
    ds.PatientSex = "O"
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    if acquisition_time is not None:
        ds.AcquisitionTime = acquisition_time
    if content_time is not None:
        ds.ContentTime = content_time
    if intensity_relationship is not None:
        ds.PixelIntensityRelationship = intensity_relationship
    if frame_time is not None:
        ds.FrameTime = frame_time
    if frame_time_vector is not None:
        ds.FrameTimeVector = list(frame_time_vector)
    if cine_rate is not None:
        ds.CineRate = cine_rate
    if display_frame_rate is not None:
        ds.RecommendedDisplayFrameRate = display_frame_rate

    frames = arr[None] if arr.ndim == 2 else arr
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    if number_of_frames == "auto":
        if arr.ndim == 3:
            ds.NumberOfFrames = int(frames.shape[0])
    elif number_of_frames is not None:
        ds.NumberOfFrames = number_of_frames
    if multi_frame_attributes and "NumberOfFrames" in ds and frame_time is not None:
        ds.FrameIncrementPointer = 0x00181063

    if np.issubdtype(frames.dtype, np.floating):
        ds.BitsAllocated = frames.dtype.itemsize * 8
        data = frames.astype(f"<f{frames.dtype.itemsize}").tobytes()
        if frames.dtype.itemsize == 4:
            ds.FloatPixelData = data
        else:
            ds.DoubleFloatPixelData = data
    else:
        allocated = 8 if frames.dtype.itemsize == 1 else 16
        ds.BitsAllocated = allocated
        ds.BitsStored = bits_stored or allocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if np.issubdtype(frames.dtype, np.signedinteger) else 0
        dtype = f"<{'i' if ds.PixelRepresentation else 'u'}{allocated // 8}"
        ds.PixelData = frames.astype(dtype).tobytes()

    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if modality_lut is not None:
        lut, first = modality_lut
        item = Dataset()
        item.LUTDescriptor = [len(lut) % 65536, first, 16 if lut.max() > 255 else 8]
        item.ModalityLUTType = "US"
        item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUTData: US, not the ambiguous OW
        ds.ModalityLUTSequence = DicomSequence([item])
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        lut, first, bits = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(lut) % 65536, first, bits]
        item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUTData: US, not the ambiguous OW
        ds.VOILUTSequence = DicomSequence([item])

    if transfer_syntax == RLELossless:
        ds.compress(RLELossless)
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, implicit_vr=transfer_syntax == ImplicitVRLittleEndian)
    return path


def ramp_frames(frames: int = 3, size: int = 32, low: int = 0, high: int = 255, dtype: str = "uint8") -> np.ndarray:
    """(frames, size, size) diagonal ramps from ``low`` to ``high``, shifted a little per frame."""
    y, x = np.mgrid[0:size, 0:size]
    base = (x + y) / (2 * (size - 1))
    stack = [np.clip(base + 0.05 * f, 0, 1) for f in range(frames)]
    return np.round(low + np.stack(stack) * (high - low)).astype(dtype)


def write_single_frame_series(
    folder: str | os.PathLike,
    frames: np.ndarray,
    *,
    identity: Mapping[str, str] | None = None,
    order: Sequence[int] | None = None,
    **kwargs,
) -> list[Path]:
    """Write each frame of ``frames`` (F, H, W) as a single-frame file of one series.

    File ``IM{k}.dcm`` holds frame ``order[k]`` with InstanceNumber ``order[k] + 1``, so a shuffled
    ``order`` checks that the reader sorts by InstanceNumber rather than by file name.
    """
    folder = Path(folder)
    identity = dict(make_identity() if identity is None else identity)
    order = list(range(len(frames))) if order is None else list(order)
    paths = []
    for k, index in enumerate(order):
        paths.append(
            write_xa(
                folder / f"IM{k:04d}.dcm",
                frames[index],
                identity=identity,
                instance_number=index + 1,
                number_of_frames=None,
                **kwargs,
            )
        )
    return paths


def identity_variants(values: Iterable[str]) -> list[str]:
    """Each identifying value plus the spellings it may take in an output.

    Person names also appear without carets (each component alone when it is long enough to be
    distinctive); dates also as ISO, dotted and slashed, day-first and month-first forms; date-times
    also as their date and time parts.
    """
    variants: set[str] = set()
    for value in values:
        value = str(value).strip()
        if not value:
            continue
        variants.add(value)
        if "^" in value:
            parts = [p for p in value.split("^") if p]
            variants.add(" ".join(parts))
            variants.update(p for p in parts if len(p) >= 6)
        match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(\d{6})?(\.\d+)?", value)
        if match:
            year, month, day, time, _fraction = match.groups()
            variants.update(
                {
                    year + month + day,
                    f"{year}-{month}-{day}",
                    f"{year}.{month}.{day}",
                    f"{year}/{month}/{day}",
                    f"{day}.{month}.{year}",
                    f"{day}/{month}/{year}",
                    f"{month}/{day}/{year}",
                    f"{day}-{month}-{year}",
                }
            )
            if time:
                variants.update({time, f"{time[:2]}:{time[2:4]}:{time[4:]}"})
    return sorted(variants)


def _collect_blobs(paths_or_texts: Iterable[str | bytes | os.PathLike]) -> list[tuple[str, bytes]]:
    blobs = []
    for item in paths_or_texts:
        if isinstance(item, bytes):
            blobs.append(("<bytes>", item))
        elif isinstance(item, os.PathLike):
            root = Path(item)
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for file in files:
                blobs.append((str(file), file.read_bytes()))
                # The file's own path relative to the scanned folder is output too.
                blobs.append((f"name of {file}", str(file.relative_to(root) if file != root else file.name).encode()))
        else:
            blobs.append(("<text>", item.encode("utf-8", "surrogateescape")))
    return blobs


def assert_no_identity_leak(
    paths_or_texts: Iterable[str | bytes | os.PathLike], identity_values: Iterable[str]
) -> int:
    """Fail when any identifying value (in any :func:`identity_variants` spelling, any case) occurs.

    ``paths_or_texts``: ``Path`` objects (files, or folders scanned recursively, every byte of every
    file plus each file's relative name), ``str`` (captured stdout/stderr/log text) or ``bytes``.
    Returns the number of bytes scanned, so a caller can check that the scan covered something.
    """
    needles = [v.lower().encode("utf-8") for v in identity_variants(identity_values)]
    leaks = []
    scanned = 0
    for where, blob in _collect_blobs(paths_or_texts):
        haystack = blob.lower()
        scanned += len(blob)
        leaks += [f"{needle.decode()!r} in {where}" for needle in needles if needle in haystack]
    assert not leaks, "identifying values leaked: " + "; ".join(leaks)
    return scanned
