"""Blobs of a synthetic series: perforations and their look-alikes, planned and drawn.

Every blob (perforation or not) is drawn by the same shape generator from the same size and
darkness ranges; what differs is its time course (see :mod:`.series`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .anatomy import Anatomy, VesselTree
from .circulation import Circulation

# Blob sizes and darkness, shared by perforations and every look-alike: radius as a fraction of
# the image side (a few pixels at 128 px), peak density in attenuation units (a large artery ~1.8).
BLOB_RADIUS = (0.024, 0.05)


BLOB_DENSITY = (0.35, 0.8)


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


def site_on(rng: np.random.Generator, xy: np.ndarray, angle: np.ndarray, candidates: np.ndarray, radius: float) -> tuple[int, tuple[float, float]]:
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


def plan_perforation(rng: np.random.Generator, anatomy: Anatomy, site: int, times: np.ndarray, circ: Circulation) -> BlobEvent:
    art = anatomy.arteries
    radius_max, density_max = _blob_size(rng)
    _, centre = site_on(rng, art.xy, art.angle, np.array([site]), radius_max)
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


def _vessel_site(rng: np.random.Generator, anatomy: Anatomy, tree: VesselTree,
                avoid: tuple[float, float] | None) -> tuple[int, tuple[float, float], float, float] | None:
    """A look-alike's place on a branch (not the trunk) of ``tree``, away from ``avoid``, and its
    size and darkness: ``(sample index, centre, radius, density)``, or None when there is none."""
    ok = (tree.depth >= 1) & _inner(anatomy, tree.xy)
    if avoid is not None:
        ok &= np.hypot(tree.xy[:, 0] - avoid[0], tree.xy[:, 1] - avoid[1]) > 3 * BLOB_RADIUS[1]
    ok = np.flatnonzero(ok)
    if ok.size == 0:
        return None
    radius, density = _blob_size(rng)
    i, centre = site_on(rng, tree.xy, tree.angle, ok, radius)
    return i, centre, radius, density


def plan_crossing(rng: np.random.Generator, anatomy: Anatomy, times: np.ndarray, circ: Circulation, avoid: tuple[float, float] | None) -> BlobEvent | None:
    art = anatomy.arteries
    site = _vessel_site(rng, anatomy, art, avoid)
    if site is None:
        return None
    i, centre, radius, density = site
    # The overlap is dark only while both crossing arteries hold contrast.
    first = np.asarray(circ.arterial(times, np.full(times.shape, art.fill[i])))
    lag = rng.uniform(0.3, 0.75) * circ.dur_art
    second = np.asarray(circ.arterial(times - lag, np.full(times.shape, art.fill[i])))
    curve = first * second
    if curve.max() < 0.5:
        return None
    return BlobEvent("crossing", centre, random_blob_shape(rng), np.full(times.shape, radius), density * curve / curve.max())


def plan_venous_pool(rng: np.random.Generator, anatomy: Anatomy, times: np.ndarray, circ: Circulation, avoid: tuple[float, float] | None) -> BlobEvent | None:
    veins = anatomy.veins
    site = _vessel_site(rng, anatomy, veins, avoid)
    if site is None:
        return None
    i, centre, radius, density = site
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


def plan_transient(rng: np.random.Generator, anatomy: Anatomy, times: np.ndarray, circ: Circulation) -> BlobEvent:
    radius, density = _blob_size(rng)
    if rng.random() < 0.7:
        tree = anatomy.arteries if rng.random() < 0.5 else anatomy.veins
        ok = np.flatnonzero(_inner(anatomy, tree.xy))
        _, centre = site_on(rng, tree.xy, tree.angle, ok, 2.0 * radius)
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


def add_blob(density: np.ndarray, shape: BlobShape, cx: float, cy: float, radius: float, peak: float) -> None:
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
