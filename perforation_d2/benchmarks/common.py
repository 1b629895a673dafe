"""What every benchmark section shares: the table row, the one timer, the machine line, the inputs.

These machines are noisy, so a figure is a ratio of timings taken in the same process: the works
being compared run one after the other in interleaved rounds (A, B, A, B, ...) and the figure is
the median over the rounds of the per-round ratio, so a burst of load from the neighbours hits
both sides of the same round. :func:`time_interleaved` is that timer for every section; on a
CUDA device it synchronises before and after each work so the clock sees the kernels.

Memory: :func:`reset_peak_rss` and :func:`peak_rss_bytes` (Linux's resettable peak RSS).
The inputs: :func:`synthetic_series` (DSA-like grey frames) and :func:`write_bench_cohort` (a
valid cohort of such frames written as PNG files).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.cohort_writer import COHORT_FILE, CohortWriter

__all__ = [
    "BenchRow",
    "RoundTimes",
    "machine_description",
    "markdown_table",
    "peak_rss_bytes",
    "reset_peak_rss",
    "synthetic_series",
    "time_interleaved",
    "without_grad",
    "write_bench_cohort",
]


@dataclass
class BenchRow:
    """One line of the benchmark table."""

    section: str
    measure: str
    value: float  # a ratio (or a plain figure when ``unit`` says so)
    unit: str = "x"
    target: str = ""  # e.g. "<= 3x"; empty when the line is informative only
    met: bool | None = None
    note: str = ""  # what was compared with what, sizes, workers...

    def cells(self) -> list[str]:
        met = "" if self.met is None else ("yes" if self.met else "NO")
        value = f"{self.value:.3g}" if abs(self.value) < 1000 else f"{self.value:.0f}"
        return [self.section, self.measure, f"{value} {self.unit}".strip(), self.target, met, self.note]


HEADER = ["section", "measure", "value", "target", "met", "how"]


def markdown_table(rows: list[BenchRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> str:
    """One line naming the machine the figures were measured on (OS, cores, torch, GPU)."""
    import torch

    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


@dataclass
class RoundTimes:
    """Seconds of each work in each round of :func:`time_interleaved`."""

    times: dict[Hashable, list[float]]

    def seconds(self, name: Hashable) -> float:
        """Median seconds of one work over the rounds."""
        return statistics.median(self.times[name])

    def ratio(self, numerator: Hashable, denominator: Hashable) -> float:
        """Median over the rounds of time(numerator) / time(denominator) in the same round."""
        return statistics.median(a / b for a, b in zip(self.times[numerator], self.times[denominator], strict=True))


def without_grad(work: Callable[[], object]) -> Callable[[], object]:
    """``work`` run under ``torch.no_grad()`` (inference works; the timer itself leaves autograd alone)."""

    def run() -> object:
        import torch

        with torch.no_grad():
            return work()

    return run


def _no_sync() -> None:
    """CPU work is done when it returns."""


def time_interleaved(
    works: Mapping[Hashable, Callable[[], object]], rounds: int, device: str = "cpu"
) -> RoundTimes:
    """Run every work once per round, in the given order, for ``rounds`` rounds; time each run.

    Warm-ups are the caller's business (a work's first call often costs more: caches, lazy
    initialisation), as is ``torch.no_grad``. On ``device`` ``cuda...`` the clock is read only
    after ``torch.cuda.synchronize()``, so queued kernels are charged to the work that queued them.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, not {rounds}")
    sync = _no_sync
    if device.startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize
    times: dict[Hashable, list[float]] = {name: [] for name in works}
    for _ in range(rounds):
        for name, work in works.items():
            sync()
            start = time.perf_counter()
            work()
            sync()
            times[name].append(time.perf_counter() - start)
    return RoundTimes(times)


def _proc_status_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024


def reset_peak_rss() -> int | None:
    """Return freed heap to the system and reset Linux's peak-RSS mark (``VmHWM``).

    Returns the resident bytes now, from which :func:`peak_rss_bytes` then counts, or None where
    the kernel (or libc) does not allow the reset: callers leave the figure out rather than guess.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_bytes("VmRSS")
    except (OSError, AttributeError):
        return None


def peak_rss_bytes() -> int:
    """The process's peak resident bytes since start or since the last :func:`reset_peak_rss`."""
    return _proc_status_bytes("VmHWM")


def synthetic_series(num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    """A DSA-like grey series, uint8 ``(num_frames, size, size)``.

    A smooth background, a dark vessel that drifts and fills then washes out over the series, and
    noise: enough texture that PNG coding and the detector cost what they cost on real frames.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi, 3)
    background = 150 + 25 * np.sin(3 * xx + phase[0]) * np.cos(2 * yy + phase[1])
    frames = []
    for frame_id in range(num_frames):
        t = frame_id / max(1, num_frames - 1)
        vessels = 70 * np.exp(-(((np.sin(7 * xx + phase[2] + 2 * t) * 0.2 + 0.5) - yy) ** 2) / 0.0008)
        frames.append(background - (0.3 + 0.7 * np.sin(np.pi * t)) * vessels + rng.normal(0, 6, (size, size)))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def write_bench_cohort(root: Path, num_series: int, num_frames: int, size: int, seed: int = 0) -> Path:
    """A valid cohort of :func:`synthetic_series` frames (one box per frame) in the folder ``root``
    (scratch: written in place); returns its cohort.json."""
    writer = CohortWriter(root)
    box = size // 8
    for series in range(1, num_series + 1):
        video_id = writer.add_video(f"bench{series}", size, size, f"B{series:03d}", "bench", 250.0)
        for pixels in synthetic_series(num_frames, size, seed=seed * 1000 + series):
            image_id = writer.add_frame(video_id, pixels)
            writer.add_box(image_id, [size // 3, size // 3, box, box], instance_id=video_id, area=float(box * box))
    writer.write()
    return Path(root) / COHORT_FILE
