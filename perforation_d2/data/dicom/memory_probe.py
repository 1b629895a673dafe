"""Peak memory of DICOM decoding relative to the decoded size, measured in a fresh process.

:func:`write_jpeg_series` writes a multi-frame JPEG-baseline XA file (the issue's case: a small
file whose decoded pixels are large); :func:`measure_decode_memory` reads a file with
:func:`~perforation_d2.data.dicom.read_dicom_series` in a subprocess and reports the growth of
its peak resident memory (VmHWM) over the resident size after imports and a warm-up read. Used by the
benchmark and by the memory-cap test; ``python -m perforation_d2.data.dicom.memory_probe FILE``
prints the measurement as JSON.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DecodeMemory:
    """One measurement: ``ratio`` = (peak RSS - baseline RSS) / decoded bytes (the stored
    samples' size, as ``--max-decoded-mib`` counts it)."""

    decoded_bytes: int
    peak_rss_bytes: int
    baseline_rss_bytes: int

    @property
    def ratio(self) -> float:
        return (self.peak_rss_bytes - self.baseline_rss_bytes) / self.decoded_bytes


def write_jpeg_series(path: str | os.PathLike, num_frames: int, size: int = 512, seed: int = 0) -> Path:
    """A JPEG-baseline (8-bit) XA file of ``num_frames`` smooth ``size`` x ``size`` frames with
    no window in the header (so the percentile window, the costliest path, is used)."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    encoded = []
    for k in range(min(num_frames, 16)):  # a few distinct frames, cycled: decoding cost is the same
        frame = 40 + 150 * (0.5 * x + 0.5 * y) + 30 * np.sin(6 * x + k) + rng.normal(0, 2, (size, size))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.PatientID = generate_uid(), "XA", "memory-probe"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = num_frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([encoded[k % len(encoded)] for k in range(num_frames)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _measure_here(path: Path) -> DecodeMemory:
    """Decode ``path`` in this process, from the resident size after imports and a warm-up read
    (the import peak of torch/Detectron2 would otherwise hide everything below it)."""
    from ...benchmarks.common import peak_rss_bytes, reset_peak_rss
    from . import read_dicom_series, scan_dicom_input

    with tempfile.TemporaryDirectory() as folder:
        read_dicom_series(write_jpeg_series(Path(folder) / "warmup.dcm", 2, 32), salt="probe")
    baseline = reset_peak_rss()
    if baseline is None:
        raise RuntimeError("this system cannot reset the peak-RSS mark (/proc/self/clear_refs)")
    scan = scan_dicom_input(path, salt="probe")
    (plan,) = scan.plans
    scan.read(plan)
    # The decoded size as --max-decoded-mib counts it: frames x rows x columns x bytes per sample.
    return DecodeMemory(sum(header.decoded_bytes for header in plan.files), peak_rss_bytes(), baseline)


def measure_decode_memory(num_frames: int = 2000, size: int = 512, folder: str | os.PathLike | None = None,
                          path: str | os.PathLike | None = None) -> DecodeMemory:
    """Write a ``num_frames`` x ``size`` x ``size`` JPEG series (or use ``path``) and measure its
    decoding in a fresh Python process."""
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        target = Path(path) if path is not None else write_jpeg_series(Path(scratch) / "series.dcm", num_frames, size)
        proc = subprocess.run(
            [sys.executable, "-m", "perforation_d2.data.dicom.memory_probe", str(target)],
            capture_output=True, text=True, check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"the memory probe failed: {proc.stderr[-2000:]}")
    return DecodeMemory(**json.loads(proc.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    result = _measure_here(Path(sys.argv[1]))
    print(json.dumps({"decoded_bytes": result.decoded_bytes, "peak_rss_bytes": result.peak_rss_bytes,
                      "baseline_rss_bytes": result.baseline_rss_bytes}))
