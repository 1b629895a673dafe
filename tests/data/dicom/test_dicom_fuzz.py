"""Hostile DICOM files (issue 6.5): every case ends quickly, with DSAInputError or a valid import.

Two drivers:

* a corpus of mutated copies of factory files and of the real XA fixtures (truncations at many
  offsets, byte flips in the header, wrong element lengths, absurd NumberOfFrames, Rows x Columns
  that would need terabytes, mismatched transfer syntaxes), read by a worker *subprocess* under an
  address-space limit (RLIMIT_AS) with a per-case alarm, reporting each outcome and its peak RSS;
* a hypothesis test mutating factory files in-process, with a deadline.

The worker imports only the DICOM reading package (not the package's Detectron2 registrations), so it
starts fast and its memory baseline is the reader's own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers.dicom_factory import make_identity, ramp_frames, write_xa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_cap import cap_address_space
from pydicom import config as pydicom_config
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

REPO = Path(__file__).resolve().parents[3]
REAL_XA = REPO.parent / "shared" / "fixtures" / "real_xa"
PER_CASE_SECONDS = 20  # a hang guard, far above any real case (milliseconds), not a speed check
ADDRESS_SPACE_MARGIN_MIB = 3 * 1024  # the 2 GiB decode cap plus room: anything beyond fails loudly
MAX_RSS_GROWTH_MIB = 400


def write_seeds(folder: Path) -> list[Path]:
    """Small valid files covering the reader's paths: native/implicit/RLE, 8-16 bit, LUTs, float."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = [
        write_xa(folder / "native12.dcm", ramp_frames(4, 32, 0, 4095, "uint16"), bits_stored=12, window=(2048, 4096),
                 frame_time_vector=[0, 40, 40, 40]),
        write_xa(folder / "rle16.dcm", ramp_frames(3, 32, 0, 60000, "uint16"), transfer_syntax=RLELossless,
                 identity=make_identity(1), frame_time=66.0),
        write_xa(folder / "implicit8.dcm", ramp_frames(1, 32)[0], transfer_syntax=ImplicitVRLittleEndian,
                 modality_lut=(np.arange(256, dtype=np.uint16) * 3, 0), identity=make_identity(2),
                 number_of_frames=None),
        write_xa(folder / "float32.dcm", ramp_frames(2, 16).astype(np.float32), identity=make_identity(3)),
        write_xa(folder / "mono1_voi.dcm", ramp_frames(3, 24), photometric="MONOCHROME1",
                 voi_lut=(np.arange(256, dtype=np.uint16)[::-1].copy(), 0, 8), identity=make_identity(4)),
        write_xa(folder / "signed.dcm", ramp_frames(2, 24, -2000, 2000, "int16"), rescale=(0.5, -3.0),
                 identity=make_identity(5)),
    ]
    return seeds


def _tag_offsets(data: bytes, group: int, element: int) -> list[int]:
    """Offsets of explicit-VR element headers for (group, element): the tag then two capitals."""
    needle = group.to_bytes(2, "little") + element.to_bytes(2, "little")
    offsets, start = [], 0
    while (found := data.find(needle, start)) != -1:
        vr = data[found + 4 : found + 6]
        if len(vr) == 2 and vr.isalpha() and vr.isupper():
            offsets.append(found)
        start = found + 1
    return offsets


def _with_length(data: bytes, offset: int, length: int) -> bytes:
    """Rewrite the length field of the explicit-VR element at ``offset``."""
    vr = data[offset + 4 : offset + 6]
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UT", b"UC", b"UR", b"SV", b"UV"):
        return data[: offset + 8] + (length & 0xFFFFFFFF).to_bytes(4, "little") + data[offset + 12 :]
    return data[: offset + 6] + (length & 0xFFFF).to_bytes(2, "little") + data[offset + 8 :]


_SEMANTIC = [
    {"NumberOfFrames": 0},
    {"NumberOfFrames": 2**31 - 1},
    {"NumberOfFrames": 1_000_000},
    {"Rows": 65535, "Columns": 65535},
    {"Rows": 65535, "Columns": 65535, "NumberOfFrames": 65535},
    {"Rows": 1},
    {"BitsAllocated": 32},
    {"BitsStored": 0},
    {"BitsStored": 17},
    {"SamplesPerPixel": 3},
    {"PixelData": b"\x00\x00"},
    {"PixelRepresentation": 1, "BitsStored": 2},
]


def _semantic_variants(seed: Path) -> list[tuple[str, bytes]]:
    variants = []
    for index, changes in enumerate(_SEMANTIC):
        ds = pydicom.dcmread(seed)
        if "PixelData" in changes and ("PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_encapsulated):
            continue  # pydicom refuses to write unencapsulated bytes under a compressed syntax
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        variants.append((f"semantic{index}", _save(ds)))
    # Claim a transfer syntax the data does not have (same length, so only the claim changes).
    data = seed.read_bytes()
    for claimed in (b"1.2.840.10008.1.2\x00", b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00",
                    b"1.2.840.10008.1.2.5\x00", b"9.9.999.99999.9.9.9\x00"):
        for actual in (b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.5\x00"):
            if actual in data[:400] and claimed != actual:
                variants.append((f"claims-{claimed[-4:-1].decode()}", data.replace(actual, claimed, 1)))
    return variants


def _save(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_corpus(folder: Path, seeds: list[Path], real: list[Path], seed: int = 0) -> list[Path]:
    """Mutated copies of ``seeds`` (many mutations each) and of ``real`` (a few each)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, bytes]] = []
    for path in seeds:
        data = path.read_bytes()
        name = path.stem
        offsets = sorted({1, 64, 128, 132, 140, 200, 300, *np.linspace(400, len(data) - 1, 14).astype(int).tolist()})
        cases += [(f"{name}-cut{cut}", data[:cut]) for cut in offsets if cut < len(data)]
        header = min(len(data), 1024)
        for flip in range(14):
            mutated = bytearray(data)
            for position in rng.integers(132, header, size=1 + flip % 3):
                mutated[position] ^= int(rng.integers(1, 256))
            cases.append((f"{name}-flip{flip}", bytes(mutated)))
        for group, element in ((0x0002, 0x0000), (0x0002, 0x0010), (0x0008, 0x0016), (0x0028, 0x0008),
                               (0x0028, 0x0010), (0x0028, 0x0100), (0x0028, 0x3000), (0x0028, 0x3010),
                               (0x7FE0, 0x0010), (0x7FE0, 0x0008)):
            for offset in _tag_offsets(data, group, element)[:1]:
                for length in (0, 1, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(data) * 2):
                    cases.append((f"{name}-len{group:04x}{element:04x}-{length}", _with_length(data, offset, length)))
        with pydicom_config.disable_value_validation():
            cases += [(f"{name}-{label}", blob) for label, blob in _semantic_variants(path)]
    for path in real:
        data = path.read_bytes()
        name = path.stem[:12]
        for cut in (1, 200, 1000, 3000, len(data) // 3, len(data) - 5000):
            cases.append((f"{name}-cut{cut}", data[:cut]))
        for flip in range(4):
            mutated = bytearray(data)
            for position in rng.integers(132, 2000, size=2):
                mutated[position] ^= int(rng.integers(1, 256))
            cases.append((f"{name}-flip{flip}", bytes(mutated)))
        for offset in _tag_offsets(data, 0x0028, 0x0008)[:1]:
            cases.append((f"{name}-frames-len", _with_length(data, offset, 0xFFFF)))
        with pydicom_config.disable_value_validation():
            for index, changes in enumerate(_SEMANTIC[:5]):
                ds = pydicom.dcmread(path)
                for keyword, value in changes.items():
                    setattr(ds, keyword, value)
                cases.append((f"{name}-semantic{index}", _save(ds)))
    paths = []
    for index, (label, blob) in enumerate(cases):
        target = folder / f"{index:04d}-{label}.dcm"
        target.write_bytes(blob)
        paths.append(target)
    return paths


# ---- the worker (run as a script) --------------------------------------------------------------
def _import_reader_alone():
    """Import perforation_d2.data.dicom without running the ``__init__`` of perforation_d2 and its data package."""
    import types

    for name, folder in (("perforation_d2", REPO / "perforation_d2"), ("perforation_d2.data", REPO / "perforation_d2" / "data")):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module
    import perforation_d2.data.dicom as reader
    from perforation_d2.errors import DSAInputError

    return reader, DSAInputError


def worker(corpus: Path, warmup: Path, results: Path) -> None:
    import resource
    import signal
    import time

    reader, input_error = _import_reader_alone()
    reader.read_dicom_series(warmup, salt="fuzz")  # load every decoder plugin before the baseline
    limit_enforced = cap_address_space(ADDRESS_SPACE_MARGIN_MIB * 2**20)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def hang(signum, frame):
        raise TimeoutError(f"no answer within {PER_CASE_SECONDS} s")

    signal.signal(signal.SIGALRM, hang)
    outcomes = []
    for case in sorted(corpus.iterdir()):
        started = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, PER_CASE_SECONDS)
        try:
            series = reader.read_dicom_series(case, salt="fuzz")
            assert all(s.frames.dtype == np.uint8 and s.frames.ndim == 3 for s in series)
            outcome = "ok"
        except input_error as err:
            outcome = "error" if "\n" not in str(err) else f"multi-line error: {err}"
        except BaseException as err:  # the test fails on any of these
            outcome = f"crash: {type(err).__name__}: {err}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        outcomes.append({
            "case": case.name, "outcome": outcome, "seconds": time.perf_counter() - started,
            "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024,
        })
    results.write_text(json.dumps({"limit_enforced": limit_enforced, "outcomes": outcomes}))


@pytest.mark.timeout(150)
def test_mutated_corpus_ends_in_error_or_import_with_bounded_memory(tmp_path):
    real = [REAL_XA / name for name in ("rubo_small_multiframe.dcm", "barre_XA-MONO2-8-12x-catheter.dcm")]
    real = [path for path in real if path.is_file()]  # the real files join when ../shared is present
    seeds = write_seeds(tmp_path / "seeds")
    corpus = build_corpus(tmp_path / "corpus", seeds, real)
    assert len(corpus) > 300
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "corpus"), str(seeds[1]), str(results)],
        capture_output=True, text=True, timeout=140, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "tests")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(results.read_text())
    assert report["limit_enforced"], "RLIMIT_AS did not bound the worker's memory"
    outcomes = report["outcomes"]
    assert len(outcomes) == len(corpus)
    bad = [f"{o['case']}: {o['outcome']}" for o in outcomes if o["outcome"] not in ("ok", "error")]
    assert not bad, "\n".join(bad)
    counts = {kind: sum(o["outcome"] == kind for o in outcomes) for kind in ("ok", "error")}
    assert counts["ok"] > 20 and counts["error"] > 150  # both paths really exercised
    peak = max(o["rss_growth_mib"] for o in outcomes)
    assert peak < MAX_RSS_GROWTH_MIB, f"peak RSS grew by {peak:.0f} MiB"
    slowest = max(outcomes, key=lambda o: o["seconds"])
    print(f"fuzz corpus: {len(outcomes)} cases, {counts}, slowest {slowest['seconds']:.2f} s ({slowest['case']}), "
          f"peak RSS growth {peak:.0f} MiB")


# ---- hypothesis: random mutations, in-process ----------------------------------------------------
@pytest.fixture(scope="module")
def reader_and_seeds(tmp_path_factory):
    """The reader (imported here, so that an example's time is its own) and the seed files' bytes."""
    from perforation_d2.data.dicom import read_dicom_series
    from perforation_d2.errors import DSAInputError

    seeds = write_seeds(tmp_path_factory.mktemp("seeds"))
    for seed in seeds:
        read_dicom_series(seed, salt="fuzz")  # the seeds are valid; loads every decoder plugin
    return read_dicom_series, DSAInputError, [seed.read_bytes() for seed in seeds]


@pytest.mark.timeout(90)
@settings(max_examples=120, deadline=10_000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1000),
    cut=st.one_of(st.none(), st.integers(0, 20_000)),
    edits=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 255)), max_size=8),
)
def test_random_mutations_end_in_error_or_import(reader_and_seeds, seed, cut, edits):
    read_dicom_series, DSAInputError, seeds = reader_and_seeds
    data = bytearray(seeds[seed % len(seeds)])
    for position, value in edits:
        if 128 <= position < len(data):  # leave the preamble alone: it carries no structure
            data[position] = value
    data = bytes(data[:cut] if cut is not None else data)
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "case.dcm"
        target.write_bytes(data)
        try:
            series = read_dicom_series(target, salt="fuzz")
        except DSAInputError as err:
            assert str(target) in str(err) and "\n" not in str(err)
        else:
            assert series and all(s.frames.dtype == np.uint8 and s.frames.ndim == 3 for s in series)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
