"""One synthetic DSA series: circulation timing, perforation and look-alikes, and the frames.

A series is planned first (:func:`plan_series`: frame times, circulation, where and when every
blob shows) and then rendered (:func:`render_series`). Static structures are rasterised once per
series; each frame only modulates them by the contrast curves, shifts them by the patient's
drift and adds blobs, bone residue and noise, which keeps generation fast.

What separates a perforation from its look-alikes is *when* it shows, not how it looks: every
blob (perforation or not) is drawn by the same shape generator from the same size and darkness
ranges, but

* a perforation appears while contrast passes its artery, then grows and stays to the last frame;
* a vessel crossing darkens only while both overlapping arteries are filled and washes out with them;
* a venous pool swells and drains within the venous phase, on a vein;
* a transient spot lasts one or two frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage, special

from .anatomy import Anatomy, Placement, random_placement, rasterise_vessels, warp_to_placement
from .blobs import (
    BlobEvent,
    add_blob,
    blob_box,
    plan_crossing,
    plan_perforation,
    plan_transient,
    plan_venous_pool,
)
from .circulation import Circulation, random_circulation

# Frame intervals (ms): 1-3 frames per second, within the 0.5-4 fps of the paper's cohort.
FRAME_INTERVALS_MS = (1000.0 / 3.0, 500.0, 2000.0 / 3.0, 1000.0)


@dataclass
class SeriesPlan:
    name: str
    label: int
    times: np.ndarray  # (num_frames,) seconds
    frame_time_ms: float | None
    circulation: Circulation
    placement: Placement
    events: list[BlobEvent]
    motion: np.ndarray  # (num_frames, 2) global drift (dx, dy) as a fraction of the image side
    gain: np.ndarray  # (num_frames,)
    background: float
    photons: float  # noise: variance = intensity / photons (grey levels)
    mottle: float
    bone_residue: float
    iris: float | None  # radius of the circular field of view (fraction of the side), None = none
    # Displayed inverted (bright contrast on dark), as a MONOCHROME1 run read without its LUT.
    inverted: bool = False

    @property
    def num_frames(self) -> int:
        return int(self.times.size)

    def phases(self) -> list[str]:
        return [self.circulation.phase(float(t)) for t in self.times]


@dataclass(frozen=True)
class Scanner:
    """Acquisition traits shared by one cohort (site): grey level, noise and drift habits."""

    background: tuple[float, float] = (172.0, 198.0)
    photons: tuple[float, float] = (4.0, 9.0)
    motion: float = 0.006


def sample_num_frames(rng: np.random.Generator, max_frames: int) -> int:
    """Mostly 8-20 frames, some longer, a few very short and single-frame series."""
    u = rng.random()
    if u < 0.08:
        n = 1
    elif u < 0.15:
        n = int(rng.integers(2, 5))
    elif u < 0.88:
        n = int(rng.integers(8, 21))
    else:
        n = int(rng.integers(21, 31))
    return max(1, min(n, max_frames))


def _frame_times(rng: np.random.Generator, n: int, circ: Circulation, from_time: float | None) -> tuple[np.ndarray, float | None]:
    if n == 1:
        start = from_time if from_time is not None else circ.t_art
        return np.array([rng.uniform(start, max(start + 0.5, circ.end + 1.0))]), None
    if n < 5:
        dt = 1.0
        start = from_time if from_time is not None else circ.t_art - 0.5
        t0 = rng.uniform(start, max(start + 0.5, circ.end - (n - 1) * dt))
    else:
        # The run covers the arterial phase onwards: pick the rate that spans a typical 7-15 s.
        target = rng.uniform(7.0, 15.0)
        dt = min(FRAME_INTERVALS_MS, key=lambda ms: abs(n * ms / 1000.0 - target)) / 1000.0
        t0 = rng.uniform(0.0, 0.4)
    return t0 + dt * np.arange(n), round(dt * 1000.0, 3)


def plan_series(
    rng: np.random.Generator,
    anatomy: Anatomy,
    name: str,
    num_frames: int,
    perforation_at: int | None,
    scanner: Scanner,
    distractors: bool = True,
) -> SeriesPlan:
    """Timing, placement and every blob of one series (``perforation_at``: arterial sample or None)."""
    circ = random_circulation(rng)
    from_time = None
    if perforation_at is not None:
        # A short run of a perforated patient shows the extravasation (it starts after contrast arrives).
        from_time = circ.t_art + circ.fill_art * float(anatomy.arteries.fill[perforation_at]) + 0.6 * circ.dur_art
    times, frame_time_ms = _frame_times(rng, num_frames, circ, from_time)
    events: list[BlobEvent] = []
    avoid = None
    if perforation_at is not None:
        perforation = plan_perforation(rng, anatomy, perforation_at, times, circ)
        if not perforation.visible.any():
            # A run too short to reach the tear (a low max_frames): it starts later, once the
            # contrast has passed the site, and shows the extravasation from its first frame.
            arrival = circ.t_art + circ.fill_art * float(anatomy.arteries.fill[perforation_at])
            times = times + (arrival + circ.dur_art - float(times[0]))
            perforation = plan_perforation(rng, anatomy, perforation_at, times, circ)
        events.append(perforation)
        avoid = perforation.centre
    if distractors:
        count = int(rng.choice([0, 1, 2, 3], p=[0.08, 0.42, 0.33, 0.17]))
        for _ in range(count):
            kind = rng.choice(["crossing", "venous_pool", "transient"], p=[0.3, 0.3, 0.4])
            event = None
            if kind == "crossing":
                event = plan_crossing(rng, anatomy, times, circ, avoid)
            elif kind == "venous_pool":
                event = plan_venous_pool(rng, anatomy, times, circ, avoid)
            events.append(event if event is not None else plan_transient(rng, anatomy, times, circ))

    motion, gain = drift_and_gain(rng, times, scanner.motion, gain_drift=0.04, gain_jitter=0.005)
    return SeriesPlan(
        name=name, label=int(perforation_at is not None), times=times, frame_time_ms=frame_time_ms,
        circulation=circ, placement=random_placement(rng, anatomy.head), events=events,
        motion=motion, gain=gain, background=float(rng.uniform(*scanner.background)),
        photons=float(rng.uniform(*scanner.photons)), mottle=float(rng.uniform(1.0, 3.0)),
        bone_residue=float(rng.uniform(0.1, 0.3)), iris=float(rng.uniform(0.5, 0.6)) if rng.random() < 0.4 else None,
    )


def drift_and_gain(
    rng: np.random.Generator, times: np.ndarray, max_motion: float, gain_drift: float, gain_jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame patient drift ``(F, 2)`` (fraction of the side) and detector gain ``(F,)``.

    The drift accelerates along one direction (up to ``max_motion``) with a small tremor after
    the first (mask) frame; the gain drifts linearly by up to ``gain_drift`` with jitter.
    """
    span = max(float(times[-1] - times[0]), 1e-6)
    direction = rng.uniform(0, 2 * math.pi)
    amount = rng.uniform(0.0, max_motion) * ((times - times[0]) / span) ** 1.5
    motion = np.stack([amount * math.cos(direction), amount * math.sin(direction)], axis=1)
    motion += rng.normal(0.0, 0.0004, motion.shape) * (np.arange(times.size) > 0)[:, None]
    gain = 1.0 + rng.uniform(-gain_drift, gain_drift) * (times - times[0]) / span + rng.normal(0.0, gain_jitter, times.size)
    return motion, gain


def _shift_bilinear(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` moved by (dx, dy) pixels, edges repeated (cheaper than scipy's generic shift)."""
    size = image.shape[0]
    ix, iy = math.floor(dx), math.floor(dy)
    fx, fy = dx - ix, dy - iy
    pad = max(abs(ix), abs(iy)) + 2
    padded = np.pad(image, pad, mode="edge")

    def window(ox: int, oy: int) -> np.ndarray:
        return padded[pad - oy : pad - oy + size, pad - ox : pad - ox + size]

    return (
        (1 - fx) * (1 - fy) * window(ix, iy) + fx * (1 - fy) * window(ix + 1, iy)
        + (1 - fx) * fy * window(ix, iy + 1) + fx * fy * window(ix + 1, iy + 1)
    )


@dataclass
class RenderedSeries:
    frames: np.ndarray  # (num_frames, size, size) uint8
    # Per event, per frame: its box (COCO xywh) where visible, else None.
    boxes: list[list[list[float] | None]]


def _upsample(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float image to ``size`` x ``size``."""
    return np.array(Image.fromarray(image.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))


class NoiseBank:
    """Gaussian noise fields drawn once and cut into per-frame windows (random offset and flip).

    Drawing fresh normals for every frame dominates the cost of a frame; windows of a field four
    times the frame area, at random offsets and in eight orientations, are just as unstructured
    to a detector and keep generation fast.
    """

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.size = size
        self.white = rng.standard_normal((2 * size, 2 * size), dtype=np.float32)
        low = rng.standard_normal((2 * size // 8, 2 * size // 8), dtype=np.float32)
        self.smooth = _upsample(low, 2 * size)
        self.smooth /= max(float(self.smooth.std()), 1e-6)

    def window(self, rng: np.random.Generator, field_: np.ndarray) -> np.ndarray:
        oy, ox = rng.integers(0, self.size, 2)
        patch = field_[oy : oy + self.size, ox : ox + self.size]
        k = int(rng.integers(8))
        patch = np.rot90(patch, k % 4)
        return patch[:, ::-1] if k >= 4 else patch


def render_series(
    rng: np.random.Generator, anatomy: Anatomy, bone: np.ndarray, plan: SeriesPlan, noise: NoiseBank
) -> RenderedSeries:
    """Render every frame of ``plan`` (8-bit, contrast dark on grey) at the size of ``bone``.

    ``bone`` is the patient's unsubtracted bone map (:func:`~.synth_anatomy.bone_map`).
    """
    size = bone.shape[0]
    placement = plan.placement
    arteries, art_order = rasterise_vessels(anatomy.arteries, placement, size, peak_density_root=1.9)
    veins, vein_order = rasterise_vessels(anatomy.veins, placement, size, peak_density_root=1.25)
    art_idx = np.flatnonzero(arteries > 2e-3)
    vein_idx = np.flatnonzero(veins > 2e-3)
    art_vals, art_ord = arteries.ravel()[art_idx], art_order.ravel()[art_idx]
    vein_vals, vein_ord = veins.ravel()[vein_idx], vein_order.ravel()[vein_idx]
    # Parenchymal blush: the territory of the distal arteries, smoothed (computed at 1/4 size).
    distal = arteries * np.clip(art_order, 0.0, 1.0) ** 2
    small = distal.reshape(size // 4, 4, size // 4, 4).mean(axis=(1, 3)) if size % 4 == 0 else distal[::4, ::4]
    blush = _upsample(ndimage.gaussian_filter(small, 0.012 * size), size)
    blush *= rng.uniform(0.12, 0.22) / max(float(blush.max()), 1e-6)

    bone_gy, bone_gx = np.gradient(warp_to_placement(bone, placement))
    coords = np.arange(size, dtype=np.float32) + 0.5
    gx, gy = np.meshgrid(coords, coords)
    radial = np.hypot(gx - size / 2, gy - size / 2) / size
    field_ = plan.background * (1.0 - 0.25 * radial**2)
    if plan.iris is not None:
        field_ *= special.expit((plan.iris - radial) * size / 3.0)
    field_ = field_.astype(np.float32)

    circ = plan.circulation
    frames = np.empty((plan.num_frames, size, size), dtype=np.uint8)
    boxes: list[list[list[float] | None]] = [[None] * plan.num_frames for _ in plan.events]
    centres_px = [placement.apply(np.array(ev.centre)) * size for ev in plan.events]
    flat = np.empty(size * size, dtype=np.float32)
    for f, t in enumerate(plan.times):
        t = float(t)
        flat[:] = blush.ravel() * circ.capillary(t)
        flat[art_idx] += art_vals * circ.arterial(t, art_ord)
        flat[vein_idx] += vein_vals * circ.venous(t, vein_ord)
        density = flat.reshape(size, size)
        dx, dy = plan.motion[f] * size
        if abs(dx) > 0.02 or abs(dy) > 0.02:
            density = _shift_bilinear(density, dx, dy)
        else:
            density = density.copy()
        for e, ev in enumerate(plan.events):
            if ev.density[f] <= 0.0:
                continue
            cx, cy = centres_px[e][0] + dx, centres_px[e][1] + dy
            r = float(ev.radius[f]) * size
            add_blob(density, ev.shape, cx, cy, r, float(ev.density[f]))
            if ev.visible[f]:
                boxes[e][f] = blob_box(ev.shape, cx, cy, r, size)
        # Subtraction residue: bone edges misregistered by the drift since the mask frame.
        density -= plan.bone_residue * (bone_gx * dx + bone_gy * dy)
        intensity = plan.gain[f] * field_ * np.exp(-density)
        # Quantum noise: variance proportional to the signal, plus a low-frequency mottle.
        intensity += np.sqrt(np.maximum(intensity, 1.0) / plan.photons) * noise.window(rng, noise.white)
        intensity += plan.mottle * noise.window(rng, noise.smooth)
        np.clip(np.rint(intensity), 0, 255, out=intensity)
        frames[f] = 255.0 - intensity if plan.inverted else intensity
    return RenderedSeries(frames=frames, boxes=boxes)
