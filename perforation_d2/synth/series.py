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
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage, special

from .anatomy import Anatomy, Placement, random_placement, rasterise_vessels, warp_to_placement

# Blob sizes and darkness, shared by perforations and every look-alike: radius as a fraction of
# the image side (a few pixels at 128 px), peak density in attenuation units (a large artery ~1.8).
BLOB_RADIUS = (0.024, 0.05)
BLOB_DENSITY = (0.35, 0.8)
# Frame intervals (ms): 1-3 frames per second, within the 0.5-4 fps of the paper's cohort.
FRAME_INTERVALS_MS = (1000.0 / 3.0, 500.0, 2000.0 / 3.0, 1000.0)
PHASES = ("pre", "arterial", "capillary", "venous", "late")


@dataclass(frozen=True)
class Circulation:
    """Contrast timing of one run (seconds after the first frame)."""

    t_art: float  # contrast reaches the root artery
    fill_art: float  # time to reach the most distal arteries
    dur_art: float  # arterial opacification (injection) duration
    t_cap: float
    width_cap: float
    t_ven: float  # first (distal) veins fill
    fill_ven: float  # time from distal veins to the sinus
    dur_ven: float

    def arterial(self, t: float | np.ndarray, order: np.ndarray) -> np.ndarray:
        """Opacity (0..1) of arteries whose fill order is ``order`` at time ``t``."""
        lag = t - (self.t_art + self.fill_art * order)
        return special.expit(lag / 0.12) * special.expit((self.dur_art - lag) / 0.35)

    def venous(self, t: float | np.ndarray, order: np.ndarray) -> np.ndarray:
        lag = t - (self.t_ven + self.fill_ven * order)
        return special.expit(lag / 0.3) * special.expit((self.dur_ven - lag) / 0.6)

    def capillary(self, t: float) -> float:
        return math.exp(-(((t - self.t_cap) / self.width_cap) ** 2))

    def phase(self, t: float) -> str:
        if t < self.t_art:
            return "pre"
        if t < self.t_art + self.fill_art + self.dur_art:
            return "arterial"
        if t < self.t_ven:
            return "capillary"
        if t < self.t_ven + self.fill_ven + self.dur_ven:
            return "venous"
        return "late"

    @property
    def end(self) -> float:
        """When the venous phase is over."""
        return self.t_ven + self.fill_ven + self.dur_ven


def random_circulation(rng: np.random.Generator) -> Circulation:
    t_art = rng.uniform(0.8, 2.0)
    fill_art = rng.uniform(0.5, 1.1)
    dur_art = rng.uniform(1.2, 2.2)
    t_ven = t_art + fill_art + dur_art + rng.uniform(0.6, 1.5)
    return Circulation(
        t_art=t_art, fill_art=fill_art, dur_art=dur_art,
        t_cap=t_art + fill_art + 0.8 * dur_art + rng.uniform(0.2, 0.7), width_cap=rng.uniform(1.0, 1.6),
        t_ven=t_ven, fill_ven=rng.uniform(0.8, 1.6), dur_ven=rng.uniform(1.5, 3.0),
    )


@dataclass(frozen=True)
class BlobShape:
    """An irregular, textured cloud: lobed outline, elongation and internal density texture."""

    lobes: tuple[tuple[int, float, float], ...]  # (harmonic, amplitude, phase) of the outline
    texture: tuple[tuple[float, float, float, float], ...]  # (kx, ky, phase, amplitude)
    aspect: float
    angle: float

    def outline(self, phi: np.ndarray) -> np.ndarray:
        out = np.ones_like(phi)
        for k, amp, ph in self.lobes:
            out += amp * np.cos(k * phi + ph)
        return out

    def _local(self, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return c * dx + s * dy, (-s * dx + c * dy) * self.aspect

    def profile(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Density (peak about 1) at offsets ``dx, dy`` in units of the blob radius."""
        u, v = self._local(dx, dy)
        q = np.hypot(u, v) / self.outline(np.arctan2(v, u))
        tex = np.ones_like(dx)
        for kx, ky, ph, amp in self.texture:
            tex += amp * np.cos(kx * dx + ky * dy + ph)
        return np.exp(-2.0 * q**4) * np.maximum(tex, 0.0)

    def extent(self) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) of the outline (profile ~ 0.14) in radius units."""
        phi = np.linspace(-math.pi, math.pi, 90, endpoint=False)
        rad = self.outline(phi)
        u, v = rad * np.cos(phi), rad * np.sin(phi) / self.aspect
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = c * u - s * v, s * u + c * v
        return float(dx.min()), float(dy.min()), float(dx.max()), float(dy.max())


def random_blob_shape(rng: np.random.Generator) -> BlobShape:
    lobes = tuple((int(k), float(rng.uniform(0.0, 0.14)), float(rng.uniform(0, 2 * math.pi))) for k in (2, 3, 4))
    texture = tuple(
        (float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.04, 0.1)))
        for _ in range(3)
    )
    return BlobShape(lobes=lobes, texture=texture, aspect=float(rng.uniform(1.0, 1.5)), angle=float(rng.uniform(0, math.pi)))


@dataclass
class BlobEvent:
    """A blob of one kind: its place (anatomy coordinates) and per-frame radius and density."""

    kind: str  # "perforation", "crossing", "venous_pool", "transient" or (hard option) "flicker"
    centre: tuple[float, float]
    shape: BlobShape
    radius: np.ndarray  # (num_frames,) fraction of the image side
    density: np.ndarray  # (num_frames,) peak density; 0 where absent
    visible: np.ndarray = field(init=False)  # (num_frames,) bool

    def __post_init__(self) -> None:
        peak = float(self.density.max()) if self.density.size else 0.0
        # A blob counts as shown (boxed, for a perforation) from a third of its peak darkness.
        self.visible = self.density >= max(0.3 * peak, 1e-6)


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


def _site_on(rng: np.random.Generator, xy: np.ndarray, angle: np.ndarray, candidates: np.ndarray, radius: float) -> tuple[int, tuple[float, float]]:
    """A sample of a vessel and a point beside it (the blob sits on or just off the vessel)."""
    i = int(rng.choice(candidates))
    side = rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 0.7) * radius
    normal = angle[i] + math.pi / 2
    return i, (float(xy[i, 0] + side * math.cos(normal)), float(xy[i, 1] + side * math.sin(normal)))


def _blob_size(rng: np.random.Generator) -> tuple[float, float]:
    return float(rng.uniform(*BLOB_RADIUS)), float(rng.uniform(*BLOB_DENSITY))


def _inner(anatomy: Anatomy, xy: np.ndarray, limit: float = 0.85) -> np.ndarray:
    return np.asarray(anatomy.head.rho(xy[:, 0], xy[:, 1]) < limit)


def perforation_site(rng: np.random.Generator, anatomy: Anatomy) -> int:
    """Index of the arterial sample where this patient's perforation occurs (a mid-size branch)."""
    art = anatomy.arteries
    ok = np.flatnonzero((art.depth >= 1) & (art.depth <= 5) & _inner(anatomy, art.xy, 0.82))
    if ok.size == 0:
        ok = np.arange(art.depth.size)
    return int(rng.choice(ok))


def _perforation(rng: np.random.Generator, anatomy: Anatomy, site: int, times: np.ndarray, circ: Circulation) -> BlobEvent:
    art = anatomy.arteries
    radius_max, density_max = _blob_size(rng)
    _, centre = _site_on(rng, art.xy, art.angle, np.array([site]), radius_max)
    arrival = circ.t_art + circ.fill_art * float(art.fill[site])
    # The wall tears while contrast passes: extravasation shows from the first frame after
    # contrast reaches the site when that frame is still in its arterial window.
    reached = np.flatnonzero(times >= arrival + 0.05)
    if reached.size and times[reached[0]] <= arrival + circ.dur_art:
        k = int(reached[0])
        earliest = arrival if k == 0 else max(arrival, float(times[k - 1]))
        onset = rng.uniform(earliest, float(times[k]) - 0.02)
    else:
        onset = arrival + rng.uniform(0.0, 0.5) * circ.dur_art
    grow_density, grow_radius = rng.uniform(0.8, 3.0), rng.uniform(1.0, 3.5)
    since = np.maximum(times - onset, 0.0)
    on = times >= onset
    density = np.where(on, density_max * (0.5 + 0.5 * (1 - np.exp(-since / grow_density))), 0.0)
    radius = radius_max * (0.55 + 0.45 * (1 - np.exp(-since / grow_radius)))
    return BlobEvent("perforation", centre, random_blob_shape(rng), radius, density)


def _crossing(rng: np.random.Generator, anatomy: Anatomy, times: np.ndarray, circ: Circulation, avoid: tuple[float, float] | None) -> BlobEvent | None:
    art = anatomy.arteries
    ok = (art.depth >= 1) & _inner(anatomy, art.xy)
    if avoid is not None:
        ok &= np.hypot(art.xy[:, 0] - avoid[0], art.xy[:, 1] - avoid[1]) > 3 * BLOB_RADIUS[1]
    ok = np.flatnonzero(ok)
    if ok.size == 0:
        return None
    radius, density = _blob_size(rng)
    i, centre = _site_on(rng, art.xy, art.angle, ok, radius)
    # The overlap is dark only while both crossing arteries hold contrast.
    first = np.asarray(circ.arterial(times, np.full(times.shape, art.fill[i])))
    lag = rng.uniform(0.3, 0.75) * circ.dur_art
    second = np.asarray(circ.arterial(times - lag, np.full(times.shape, art.fill[i])))
    curve = first * second
    if curve.max() < 0.5:
        return None
    return BlobEvent("crossing", centre, random_blob_shape(rng), np.full(times.shape, radius), density * curve / curve.max())


def _venous_pool(rng: np.random.Generator, anatomy: Anatomy, times: np.ndarray, circ: Circulation, avoid: tuple[float, float] | None) -> BlobEvent | None:
    veins = anatomy.veins
    ok = (veins.depth >= 1) & _inner(anatomy, veins.xy)
    if avoid is not None:
        ok &= np.hypot(veins.xy[:, 0] - avoid[0], veins.xy[:, 1] - avoid[1]) > 3 * BLOB_RADIUS[1]
    ok = np.flatnonzero(ok)
    if ok.size == 0:
        return None
    radius, density = _blob_size(rng)
    i, centre = _site_on(rng, veins.xy, veins.angle, ok, radius)
    start = circ.t_ven + circ.fill_ven * float(veins.fill[i]) + 0.3
    stop = start + circ.dur_ven - 0.3
    in_window = np.flatnonzero((times >= start) & (times <= stop))
    if in_window.size == 0:
        return None
    dt = float(times[1] - times[0]) if times.size > 1 else 1.0
    peak = float(times[rng.choice(in_window)]) + rng.uniform(-dt / 3, dt / 3)
    width = rng.uniform(0.8, 2.0) / 1.665  # FWHM 0.8-2 s
    # Only while its vein holds contrast: the pool never shows before the venous phase.
    vein = np.asarray(circ.venous(times, np.full(times.shape, veins.fill[i])))
    curve = np.exp(-(((times - peak) / width) ** 2)) * vein
    if curve.max() < 0.5:
        return None
    curve /= curve.max()
    return BlobEvent("venous_pool", centre, random_blob_shape(rng), radius * (0.8 + 0.2 * curve), density * curve)


def _transient(rng: np.random.Generator, anatomy: Anatomy, times: np.ndarray, circ: Circulation) -> BlobEvent:
    radius, density = _blob_size(rng)
    if rng.random() < 0.7:
        tree = anatomy.arteries if rng.random() < 0.5 else anatomy.veins
        ok = np.flatnonzero(_inner(anatomy, tree.xy))
        _, centre = _site_on(rng, tree.xy, tree.angle, ok, 2.0 * radius)
    else:
        head = anatomy.head
        r, a = 0.8 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        centre = (head.cx + r * head.ax * math.cos(a), head.cy + r * head.ay * math.sin(a))
    after = np.flatnonzero(times >= circ.t_art)
    first = int(rng.choice(after)) if after.size else int(rng.integers(times.size))
    curve = np.zeros(times.shape)
    curve[first] = 1.0
    if first + 1 < times.size and rng.random() < 0.5:
        curve[first + 1] = rng.uniform(0.6, 1.0)
    return BlobEvent("transient", centre, random_blob_shape(rng), np.full(times.shape, radius), density * curve)


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
        perforation = _perforation(rng, anatomy, perforation_at, times, circ)
        if not perforation.visible.any():
            # A run too short to reach the tear (a low max_frames): it starts later, once the
            # contrast has passed the site, and shows the extravasation from its first frame.
            arrival = circ.t_art + circ.fill_art * float(anatomy.arteries.fill[perforation_at])
            times = times + (arrival + circ.dur_art - float(times[0]))
            perforation = _perforation(rng, anatomy, perforation_at, times, circ)
        events.append(perforation)
        avoid = perforation.centre
    if distractors:
        count = int(rng.choice([0, 1, 2, 3], p=[0.08, 0.42, 0.33, 0.17]))
        for _ in range(count):
            kind = rng.choice(["crossing", "venous_pool", "transient"], p=[0.3, 0.3, 0.4])
            event = None
            if kind == "crossing":
                event = _crossing(rng, anatomy, times, circ, avoid)
            elif kind == "venous_pool":
                event = _venous_pool(rng, anatomy, times, circ, avoid)
            events.append(event if event is not None else _transient(rng, anatomy, times, circ))

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


def _add_blob(density: np.ndarray, shape: BlobShape, cx: float, cy: float, radius: float, peak: float) -> None:
    size = density.shape[0]
    reach = int(math.ceil(2.2 * radius)) + 1
    x0, x1 = max(0, int(cx) - reach), min(size, int(cx) + reach + 1)
    y0, y1 = max(0, int(cy) - reach), min(size, int(cy) + reach + 1)
    if x0 >= x1 or y0 >= y1:
        return
    xs = (np.arange(x0, x1) + 0.5 - cx) / radius
    ys = (np.arange(y0, y1) + 0.5 - cy) / radius
    dx, dy = np.meshgrid(xs, ys)
    density[y0:y1, x0:x1] += (peak * shape.profile(dx, dy)).astype(np.float32)


def blob_box(shape: BlobShape, cx: float, cy: float, radius: float, size: int) -> list[float] | None:
    """COCO ``[x, y, w, h]`` enclosing the blob with a margin, clipped to the image (None if outside)."""
    ex0, ey0, ex1, ey1 = shape.extent()
    margin = 0.15 * radius + 0.5
    x0 = max(0.0, cx + ex0 * radius - margin)
    y0 = max(0.0, cy + ey0 * radius - margin)
    x1 = min(float(size), cx + ex1 * radius + margin)
    y1 = min(float(size), cy + ey1 * radius + margin)
    x0, y0, x1, y1 = (round(v, 2) for v in (x0, y0, x1, y1))
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]


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
            _add_blob(density, ev.shape, cx, cy, r, float(ev.density[f]))
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
