"""Reading DICOM X-ray angiography series into 8-bit frame stacks, with pseudonymous identifiers.

The reading half of ``prepare-dicom`` and of ``predict`` on DICOM input. ``read_dicom_series(path,
salt)`` returns one :class:`DicomSeries` per acquisition run at ``path`` (a Part 10 file, or a
folder searched recursively without following links to folders); ``scan_dicom_input`` runs only
the header pass (:mod:`.scan`: grouping, skips, every check that needs no decoding) and
``DicomScan.read(plan)`` decodes one series at a time in bounded memory (:mod:`.decode`).

Grouping: a multi-frame file is one series; single-frame files are grouped by SeriesInstanceUID
and ordered by InstanceNumber, then AcquisitionTime, then ContentTime, then path. Accepted: the XA
and XRF storage SOP classes (classic, enhanced, retired bi-plane; top-level attributes only) with
Modality XA or RF, one grey sample per pixel (MONOCHROME1/2), BitsAllocated 8 or 16 (or 32/64-bit
float), and a decoded size ``frames x rows x columns x bytes`` under ``max_decoded_bytes``
(default 2 GiB per series), checked from the header before anything is decoded.

Pixels (one mapping per series): pydicom decoding (PixelRepresentation applied), the Modality LUT
per file (:func:`pydicom.pixels.apply_modality_lut`, as a table over the stored values), then the
series window of :mod:`.windowing` (VOI LUT, window centre/width, or the 0.5-99.5 percentile
range) to 0-255, MONOCHROME1 inverted after windowing. PixelIntensityRelationship LOG is recorded
(``intensity_relationship``), not converted. Float data with NaN or infinity is rejected.

Frame time (``frame_time_ms``, first file): FrameTime; else the mean FrameTimeVector increment
after its first entry; else 1000 / CineRate; else 1000 / RecommendedDisplayFrameRate; else None.

Privacy: patients and series are salted HMAC pseudonyms (:mod:`.pseudonyms`); no other header
value leaves this package beyond pixels, image size and frame time. Messages name the paths the
user gave and quote no attribute values (a Modality or SOP class only when it is a standard term),
and pydicom's own warnings and log records are silenced while reading.
"""

from .pseudonyms import DEFAULT_SALT_FILE, SALT_ENV, SALT_FILE_ENV, resolve_salt, user_salt_file
from .scan import (
    DEFAULT_MAX_DECODED_BYTES,
    DicomScan,
    DicomSeriesPlan,
    SkippedFile,
    scan_dicom_input,
)
from .series import DicomSeries, read_dicom_series

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_SALT_FILE",
    "SALT_ENV",
    "SALT_FILE_ENV",
    "DicomScan",
    "DicomSeries",
    "DicomSeriesPlan",
    "SkippedFile",
    "read_dicom_series",
    "resolve_salt",
    "scan_dicom_input",
    "user_salt_file",
]
