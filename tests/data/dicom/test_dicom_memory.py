"""Decoding memory (issue 10.2): a series decodes in a small stated factor of its decoded size.

The 200-frame JPEG series is read by a worker *subprocess* under an address-space limit
(RLIMIT_AS) of its baseline plus three times the decoded size: the earlier pipeline (an int64
histogram copy of every pixel, about ten times the decoded size) fails there, the chunked one
fits; a series too large for the limit is the usual one-paragraph error, not a traceback. The chunked statistics and windowing must also give exactly the frames of the DICOM
definitions, computed here from pydicom's own decoding, whatever the chunk size.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers.dicom_factory import make_identity, write_xa
from memory_cap import cap_address_space

from perforation_d2.data.dicom import decode, read_dicom_series
from perforation_d2.data.dicom.memory_probe import write_jpeg_series

REPO = Path(__file__).resolve().parents[3]
CAP_FACTOR = 3  # the stated bound: peak growth <= 3 x the decoded size (plus a small margin)
MARGIN_MIB = 48


def nearest_rank_u8(values: np.ndarray) -> np.ndarray:
    """The documented robust window: nearest-rank 0.5th..99.5th percentile mapped to 0..255."""
    population = np.sort(values.reshape(-1).astype(np.float64))
    low = population[math.ceil(0.005 * population.size) - 1]
    high = population[math.ceil(0.995 * population.size) - 1]
    return np.round(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def worker(path: Path, too_large: Path, warmup: Path, decoded_bytes: int, results: Path) -> None:
    from perforation_d2.errors import DSAInputError

    read_dicom_series(warmup, salt="cap")  # load the decoder plugins before the baseline
    enforced = cap_address_space(CAP_FACTOR * decoded_bytes + MARGIN_MIB * 2**20)
    outcomes = []
    for target in (path, too_large):
        try:
            (series,) = read_dicom_series(target, salt="cap")
            outcomes.append(f"ok {series.frames.shape}")
        except DSAInputError as err:
            outcomes.append(f"error: {err}")
        except MemoryError as err:  # the test fails on this: a traceback for the user
            outcomes.append(f"crash: MemoryError: {err}")
    results.write_text(json.dumps({"enforced": enforced, "outcomes": outcomes}))


@pytest.mark.timeout(120)
def test_a_200_frame_jpeg_series_decodes_within_three_times_its_size(tmp_path):
    path = write_jpeg_series(tmp_path / "run.dcm", 200, 512)
    too_large = write_jpeg_series(tmp_path / "large.dcm", 1000, 512)  # 250 MiB: more than the cap allows
    warmup = write_jpeg_series(tmp_path / "warmup.dcm", 2, 32)
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, __file__, str(path), str(too_large), str(warmup), str(200 * 512 * 512), str(results)],
        capture_output=True, text=True, timeout=110, cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(results.read_text())
    assert report["enforced"], "RLIMIT_AS did not bound the worker's memory"
    fits, too_much = report["outcomes"]
    assert fits == "ok (200, 512, 512)", fits
    # Running out of memory is the usual one-paragraph error naming the file, not a traceback.
    assert too_much.startswith(f"error: {too_large}: not enough memory") and "\n" not in too_much, too_much


def test_jpeg_frames_equal_the_percentile_window_of_pydicoms_decoding(tmp_path):
    path = write_jpeg_series(tmp_path / "run.dcm", 20, 64, seed=3)
    (series,) = read_dicom_series(path, salt="s")
    reference = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(series.frames, nearest_rank_u8(reference))


@pytest.mark.parametrize("chunk_pixels", [1, 7, 100, 1 << 20])
def test_results_do_not_depend_on_the_chunk_size(tmp_path, monkeypatch, chunk_pixels):
    rng = np.random.default_rng(5)
    signed = rng.integers(-3000, 3000, size=(3, 9, 11)).astype(np.int16)
    floats = rng.normal(10, 3, size=(2, 9, 11)).astype(np.float32)
    write_xa(tmp_path / "signed.dcm", signed, bits_stored=13, rescale=(0.5, 7.0), photometric="MONOCHROME1")
    write_xa(tmp_path / "float.dcm", floats, identity=make_identity(1), rescale=(2.0, -1.0))
    monkeypatch.setattr(decode, "CHUNK_PIXELS", chunk_pixels)
    (a,) = read_dicom_series(tmp_path / "signed.dcm", salt="s")
    (b,) = read_dicom_series(tmp_path / "float.dcm", salt="s")
    np.testing.assert_array_equal(a.frames, 255 - nearest_rank_u8(signed * 0.5 + 7.0))
    np.testing.assert_array_equal(b.frames, nearest_rank_u8(floats.astype(np.float32) * 2.0 - 1.0))


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
