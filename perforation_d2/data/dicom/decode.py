"""Decoding one series' pixels to ``uint8 (F, H, W)`` frames, in bounded memory.

Frames are decoded one at a time (pydicom's ``iter_array``) into a store of the file's own
stored dtype (for 8-bit data, the output array itself); statistics for the percentile window are
accumulated per chunk of at most ``CHUNK_PIXELS`` pixels (value counts for integer data, a strided
sample for float data), and the store is windowed to the output chunk by chunk. Nothing the size
of the series is ever allocated beyond the output and that store, so the peak is at most about
2.5 times the decoded size (native 16-bit data: the file's pixel bytes, the 16-bit store and the
8-bit output), plus a few chunk-sized temporaries. Before decoding, :func:`check_decoder` makes
sure a plugin exists for the transfer syntax, and the pixel element is checked against the header.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, UID_dictionary

from ...errors import DSAInputError
from .dataset import (
    as_float,
    as_int,
    as_text,
    frame_time_ms,
    get,
    read_dataset,
    shown_path,
    transfer_syntax_text,
)
from .windowing import Window, float_sample_stride, modality_table, percentile_window, to_uint8, window_of

if TYPE_CHECKING:  # scan imports this module
    from .scan import FileHeader

CHUNK_PIXELS = 1 << 20  # statistics and windowing run over at most this many pixels at a time
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

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


def check_decoder(path: Path, transfer_syntax: UID) -> None:
    """A DSAInputError naming what to install when no decoder plugin handles ``transfer_syntax``."""
    name = transfer_syntax_text(transfer_syntax)
    decoder = None
    # Not a transfer syntax at all, or one pydicom has no decoder for (get_decoder raises).
    if UID_dictionary.get(transfer_syntax, ("", ""))[1] == "Transfer Syntax":
        with contextlib.suppress(NotImplementedError):
            decoder = get_decoder(transfer_syntax)
    if decoder is None:
        raise DSAInputError(
            f"{shown_path(path)}: its pixel data uses {name}, which pydicom cannot decode; convert the file to an "
            "uncompressed or JPEG transfer syntax (e.g. with dcmtk's dcmdjpeg/dcmconv or gdcmconv)."
        )
    if not decoder.is_available:
        packages = _DECODER_PACKAGES.get(str(transfer_syntax), _J2K_PACKAGES)
        raise DSAInputError(
            f"{shown_path(path)}: its pixel data is compressed as {name} and no decoder for it is installed; "
            f"install {packages} (pip install ...) and run again."
        )


def _check_fragments(path: Path, raw: bytes, num_frames: int) -> None:
    """Each frame of encapsulated data needs at least one fragment: checked before decoding."""
    try:
        stream = BytesIO(raw)
        parse_basic_offsets(stream)
        fragments, _ = parse_fragments(stream)
    except Exception as err:  # malformed item structure
        raise DSAInputError(
            f"{shown_path(path)}: the compressed pixel data is malformed ({type(err).__name__}); the file is "
            "damaged or truncated."
        ) from None
    if fragments < num_frames:
        raise DSAInputError(
            f"{shown_path(path)}: the header declares {num_frames} frames but the compressed pixel data holds "
            f"only {fragments} fragment(s); the file is truncated or its NumberOfFrames is wrong."
        )


def _row_chunks(rows: np.ndarray) -> list[slice]:
    """Slices of a 2-D array (all frames' rows stacked) covering at most CHUNK_PIXELS pixels each."""
    step = max(1, CHUNK_PIXELS // max(rows.shape[1], 1))
    return [slice(start, start + step) for start in range(0, rows.shape[0], step)]


@dataclass
class DecodedFile:
    """One decoded file, before windowing (see the module docstring).

    ``store`` holds the stored values (integer data; ``table[v - low]`` is the modality value of
    ``v`` and ``counts`` the pixels per table entry) or the modality values (float data, with
    ``sample`` their strided sample). ``write`` windows it into the output and frees it.
    """

    header: FileHeader
    window: Window | None
    frame_time_ms: float | None
    intensity_relationship: str | None
    store: np.ndarray | None
    table: np.ndarray | None = None
    counts: np.ndarray | None = None
    low: int = 0
    sample: np.ndarray | None = None

    def write(self, out: np.ndarray, window: Window, invert: bool) -> None:
        """Window ``store`` into ``out`` (the file's frames of the series output), chunk by chunk."""
        source = self.store.reshape(-1, self.store.shape[-1])
        target = out.reshape(-1, out.shape[-1])
        if self.table is None:
            for rows in _row_chunks(source):
                target[rows] = to_uint8(source[rows], window, invert)
        else:
            lut = to_uint8(self.table, window, invert)
            direct = self.low == 0 and source.dtype.kind == "u"
            for rows in _row_chunks(source):
                target[rows] = lut[source[rows] if direct else source[rows].astype(np.int32) - self.low]
        self.store = None


def decode_file(header: FileHeader, out: np.ndarray, float_stride: int) -> DecodedFile:
    """Decode the file of ``header`` frame by frame; 8-bit stored values go straight into ``out``."""
    path = header.path
    try:
        ds = read_dataset(path, stop_before_pixels=False)
    except DSAInputError:
        raise
    except Exception as err:  # damaged element structure after the header
        raise DSAInputError(
            f"{shown_path(path)}: the file cannot be parsed ({type(err).__name__}); it is damaged or truncated."
        ) from None
    keyword = next((k for k in PIXEL_KEYWORDS if k in ds), None)
    raw = get(ds, keyword, bytes) if keyword else None
    if not raw:
        raise DSAInputError(
            f"{shown_path(path)}: holds no pixel data (an empty or zero-frame image, or a file truncated before "
            "its pixels); nothing to import."
        )
    if header.is_float != (keyword != "PixelData"):
        raise DSAInputError(f"{shown_path(path)}: its pixel data element does not match BitsAllocated/BitsStored.")
    if header.transfer_syntax.is_encapsulated:
        _check_fragments(path, raw, header.num_frames)
    elif len(raw) < header.decoded_bytes:
        raise DSAInputError(
            f"{shown_path(path)}: the pixel data holds {len(raw)} bytes but the header declares "
            f"{header.num_frames} frame(s) of {header.rows} x {header.columns} pixels ({header.decoded_bytes} "
            "bytes); the file is truncated or its header is wrong."
        )
    del raw
    decoded = DecodedFile(
        header=header, window=window_of(ds), frame_time_ms=frame_time_ms(ds),
        intensity_relationship=get(ds, "PixelIntensityRelationship", as_text), store=None,
    )
    non_finite = _decode_frames(ds, header, decoded, out, float_stride)
    if header.is_float:
        if non_finite:
            raise DSAInputError(
                f"{shown_path(path)}: its float pixel data holds {non_finite} NaN or infinite value(s); such "
                "frames can be neither windowed nor learnt from. Fix the export and run again."
            )
        if "ModalityLUTSequence" in ds:
            raise DSAInputError(f"{shown_path(path)}: has a Modality LUT on float pixel data, which DICOM does not define.")
    else:
        _integer_statistics(path, ds, decoded)
    return decoded


def _decode_frames(ds: Dataset, header: FileHeader, decoded: DecodedFile, out: np.ndarray, float_stride: int) -> int:
    """Fill ``decoded.store`` (and the float sample); returns the count of non-finite float values."""
    path, shape = header.path, (header.rows, header.columns)
    slope, intercept = get(ds, "RescaleSlope", as_float), get(ds, "RescaleIntercept", as_float)
    pixels, non_finite, sample = shape[0] * shape[1], 0, []
    count, frame = 0, None
    try:
        for count, (frame, _) in enumerate(get_decoder(header.transfer_syntax).iter_array(ds, raw=True), start=1):
            if count > header.num_frames or frame.shape != shape:
                break
            if header.is_float:
                non_finite += int(frame.size - np.count_nonzero(np.isfinite(frame)))
                values = frame.astype(np.float32 if frame.dtype.itemsize <= 4 else np.float64)
                if slope is not None and intercept is not None:
                    values = values * slope + intercept
                start = (-(count - 1) * pixels) % float_stride  # the file's flat index 0, s, 2s, ...
                sample.append(values.reshape(-1)[start::float_stride].copy())
            else:
                values = frame
                if frame.dtype.kind not in "ui" or frame.dtype.itemsize > 2:
                    raise DSAInputError(f"{shown_path(path)}: decodes to {frame.dtype} pixels, which are not imported.")
            if decoded.store is None:
                uint8 = values.dtype == np.uint8
                decoded.store = out if uint8 else np.empty((header.num_frames, *shape), dtype=values.dtype)
            decoded.store[count - 1] = values
    except DSAInputError:
        raise
    except MemoryError:
        raise DSAInputError(f"{shown_path(path)}: not enough memory to decode the pixel data.") from None
    except Exception as err:  # decoder plugins raise many types on damaged data
        raise DSAInputError(
            f"{shown_path(path)}: the pixel data cannot be decoded ({type(err).__name__}); the compressed data is "
            "damaged or truncated, or the header does not match it."
        ) from None
    if count != header.num_frames or frame.shape != shape:
        got = f"{count}x{'x'.join(map(str, frame.shape))}" if frame is not None else "no frames of"
        raise DSAInputError(
            f"{shown_path(path)}: decoded {got} pixels where the header declares {header.num_frames}x"
            f"{shape[0]}x{shape[1]}; the file is damaged."
        )
    if sample:
        decoded.sample = np.concatenate(sample)
    return non_finite


def _integer_statistics(path: Path, ds: Dataset, decoded: DecodedFile) -> None:
    """Value counts (per chunk, accumulated) and the Modality LUT table over the file's value range.

    The table has one entry per value the declared BitsStored allows or the data holds (pydicom
    has applied PixelRepresentation); a value far outside BitsStored means a damaged file.
    """
    store = decoded.store
    info = np.iinfo(store.dtype)
    full = np.zeros(int(info.max) - int(info.min) + 1, dtype=np.int64)
    rows = store.reshape(-1, store.shape[-1])
    for chunk in _row_chunks(rows):
        values = rows[chunk] if info.min == 0 else rows[chunk].astype(np.int32) - int(info.min)
        full += np.bincount(values.reshape(-1), minlength=full.size)
    present = np.flatnonzero(full)
    data_low, data_high = int(present[0]) + int(info.min), int(present[-1]) + int(info.min)
    bits = get(ds, "BitsStored", as_int) or 16
    signed = get(ds, "PixelRepresentation", as_int) == 1
    low = min(-(2 ** (bits - 1)) if signed else 0, data_low)
    high = max(2 ** (bits - 1) - 1 if signed else 2**bits - 1, data_high)
    if high - low >= 2**17:
        raise DSAInputError(f"{shown_path(path)}: its pixel values lie far outside the range BitsStored allows.")
    counts = np.zeros(high - low + 1, dtype=np.int64)
    counts[data_low - low : data_high - low + 1] = full[data_low - int(info.min) : data_high - int(info.min) + 1]
    decoded.table, decoded.counts, decoded.low = modality_table(path, ds, low, high), counts, low


def decode_series(headers: list[FileHeader], num_frames: int) -> tuple[np.ndarray, list[DecodedFile], Window]:
    """``(uint8 frames, decoded files, the series window)`` of the files ``headers`` (series order).

    The window is the first file's; when it has none, the percentile window over every file's
    counts (integer) or samples (float), applied once all files are decoded.
    """
    try:
        return _decode_series(headers, num_frames)
    except MemoryError:
        size = num_frames * headers[0].rows * headers[0].columns
        raise DSAInputError(
            f"{shown_path(headers[0].path)}: not enough memory to decode its series ({num_frames} frames, "
            f"{size / 2**20:.0f} MiB as 8-bit frames); free memory, or lower --max-decoded-mib to skip such series."
        ) from None


def _decode_series(headers: list[FileHeader], num_frames: int) -> tuple[np.ndarray, list[DecodedFile], Window]:
    first = headers[0]
    frames = np.empty((num_frames, first.rows, first.columns), dtype=np.uint8)
    invert = first.photometric == "MONOCHROME1"
    stride = float_sample_stride(num_frames * first.rows * first.columns)
    decoded: list[DecodedFile] = []
    offsets, offset, window = [], 0, None
    for header in headers:
        target = frames[offset : offset + header.num_frames]
        item = decode_file(header, target, stride)
        if not decoded:
            window = item.window
        if window is not None:
            item.write(target, window, invert)  # frees the store before the next file is decoded
        decoded.append(item)
        offsets.append(offset)
        offset += header.num_frames
    if window is None:
        if first.is_float:
            sample = np.concatenate([d.sample for d in decoded]).astype(np.float64)
            window = percentile_window(sample, np.ones(sample.size, dtype=np.int64))
        else:
            window = percentile_window(np.concatenate([d.table for d in decoded]),
                                       np.concatenate([d.counts for d in decoded]))
        for item, start in zip(decoded, offsets):
            item.write(frames[start : start + item.header.num_frames], window, invert)
    return frames, decoded, window
