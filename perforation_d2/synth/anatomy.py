"""Procedural head anatomy for the synthetic DSA cohort: vessel trees, skull and their rasters.

Geometry lives in normalised image coordinates (x right, y down, the image spans [0, 1]^2) so that
a patient's anatomy is the same at every output size; :func:`rasterise_vessels` turns it into
pixel maps for one series. A patient keeps one anatomy across all their series (the same arteries,
veins and perforation site), each series seeing it through a small repositioning transform, as
repeated runs of one view do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Centreline step of the growth walk (normalised units), and the finer step at which centrelines
# are resampled for rasterisation (about 0.8 px at 256 px, below the thinnest vessel's blur, so
# splatted centrelines render as continuous tubes).
STEP = 0.006
RASTER_STEP = 0.003


@dataclass(frozen=True)
class Head:
    """The head outline: an ellipse in normalised coordinates."""

    cx: float
    cy: float
    ax: float
    ay: float

    def rho(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray | float:
        """Elliptic radius: 1 on the outline, < 1 inside."""
        return np.sqrt(((x - self.cx) / self.ax) ** 2 + ((y - self.cy) / self.ay) ** 2)


@dataclass
class VesselTree:
    """Centreline samples of a vessel tree (normalised coordinates).

    ``fill`` orders the samples by when contrast reaches them, in [0, 1]: arteries fill from the
    root outwards, veins from their distal tips towards the sinus.
    """

    xy: np.ndarray  # (N, 2)
    radius: np.ndarray  # (N,)
    fill: np.ndarray  # (N,)
    depth: np.ndarray  # (N,) branch generation, 0 at the root
    angle: np.ndarray  # (N,) local direction of the centreline (radians)


@dataclass
class Anatomy:
    head: Head
    arteries: VesselTree
    veins: VesselTree
    mirrored: bool  # facing left or right (lateral view of either side)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def _distance_to_skull(head: Head, x: float, y: float, angle: float) -> float:
    """Distance from (x, y) along ``angle`` to the head outline (0 outside the head)."""
    dx, dy = math.cos(angle) / head.ax, math.sin(angle) / head.ay
    px, py = (x - head.cx) / head.ax, (y - head.cy) / head.ay
    a, b, c = dx * dx + dy * dy, 2 * (px * dx + py * dy), px * px + py * py - 1.0
    disc = b * b - 4 * a * c
    if disc <= 0.0:
        return 0.0
    return max(0.0, (-b + math.sqrt(disc)) / (2 * a))


def _grow_tree(
    rng: np.random.Generator,
    head: Head,
    start: tuple[float, float],
    aim: float,
    sector: float,
    radius: float,
    max_depth: int,
    min_radius: float,
    reach: float,
    curviness: float,
    twig_rate: float = 0.0,
) -> tuple[list[tuple[float, float, float, float, int, float]], float]:
    """Grow one branching tree; returns samples (x, y, radius, path length, depth, angle).

    Each branch owns an angular sector of territory and aims at its middle; its heading follows a
    smooth random walk (AR(1) curvature) pulled towards the aim, is steered back inside near the
    skull, and tapers. At its end it bifurcates: each child takes half the sector, is thinner
    (Murray-like split of calibre) and covers a fraction ``reach`` of the way left to the skull, so
    the tree fans out over its whole territory as cerebral arteries do.
    """
    samples: list[tuple[float, float, float, float, int, float]] = []
    cx, cy, ax, ay = head.cx, head.cy, head.ax, head.ay
    first_len = 0.8 * reach * _distance_to_skull(head, start[0], start[1], aim)
    stack = [(start[0], start[1], aim, aim, sector, radius, first_len, 0, 0.0)]
    max_path = 0.0
    while stack:
        x, y, theta, aim, sector, radius, seg_len, depth, path = stack.pop()
        steps = max(3, int(seg_len / STEP))
        kicks = rng.normal(0.0, curviness, steps).tolist()
        end_radius = radius * 0.9
        twigs = set()
        if depth >= 1 and radius * 0.55 >= min_radius:
            twigs = {int(i) for i in rng.integers(steps // 4, steps, rng.poisson(twig_rate * seg_len / 0.1))}
        kappa = 0.0
        for i in range(steps):
            kappa = 0.75 * kappa + kicks[i]
            theta += kappa + 0.08 * _wrap(aim - theta)
            rho = math.hypot((x - cx) / ax, (y - cy) / ay)
            if rho > 0.82:
                # Steer away from the skull: drop the outward component of the heading.
                nx, ny = (x - cx) / ax**2, (y - cy) / ay**2
                norm = math.hypot(nx, ny)
                nx, ny = nx / norm, ny / norm
                hx, hy = math.cos(theta), math.sin(theta)
                outward = hx * nx + hy * ny
                if outward > 0.0:
                    target = math.atan2(hy - 1.3 * outward * ny, hx - 1.3 * outward * nx)
                    theta += min(1.0, (rho - 0.82) / 0.1) * _wrap(target - theta)
            if rho > 0.96:
                break
            x += STEP * math.cos(theta)
            y += STEP * math.sin(theta)
            path += STEP
            r = radius + (end_radius - radius) * i / steps
            samples.append((x, y, r, path, depth, theta))
            if i in twigs:
                twig_aim = theta + rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.4)
                twig_len = 0.6 * reach * _distance_to_skull(head, x, y, twig_aim)
                if twig_len > 4 * STEP:
                    stack.append((x, y, theta + 0.7 * _wrap(twig_aim - theta), twig_aim, 0.8, r * 0.55,
                                  twig_len, max(depth + 2, max_depth - 1), path))
        max_path = max(max_path, path)
        if depth >= max_depth or end_radius * 0.6 < min_radius:
            continue
        split = rng.uniform(0.4, 0.6)
        halves = ((aim - sector / 2, split * sector), (aim - sector / 2 + split * sector, (1 - split) * sector))
        for lo, width in halves:
            child_aim = lo + width / 2 + rng.normal(0.0, 0.1)
            child_len = reach * _distance_to_skull(head, x, y, child_aim) * rng.uniform(0.8, 1.2)
            if child_len < 4 * STEP:
                continue
            calibre = end_radius * (0.68 + 0.3 * width / max(sector, 1e-6))
            # Children leave at an angle between the parent heading and their own aim.
            heading = theta + 0.6 * _wrap(child_aim - theta)
            stack.append((x, y, heading, child_aim, width * 1.15, calibre, child_len, depth + 1, path))
    return samples, max_path


def _tree_from_samples(samples: list[tuple[float, float, float, float, int, float]]) -> VesselTree:
    arr = np.asarray(samples, dtype=np.float64).reshape(-1, 6)
    return VesselTree(
        xy=arr[:, :2].copy(), radius=arr[:, 2].copy(), fill=arr[:, 3].copy(),
        depth=arr[:, 4].astype(np.int64), angle=arr[:, 5].copy(),
    )


def _concat(trees: list[VesselTree]) -> VesselTree:
    return VesselTree(
        xy=np.concatenate([t.xy for t in trees]), radius=np.concatenate([t.radius for t in trees]),
        fill=np.concatenate([t.fill for t in trees]), depth=np.concatenate([t.depth for t in trees]),
        angle=np.concatenate([t.angle for t in trees]),
    )


def make_anatomy(rng: np.random.Generator) -> Anatomy:
    """One patient's head: an arterial tree entering from the skull base, cortical veins and sinuses."""
    head = Head(
        cx=0.5 + rng.uniform(-0.02, 0.02), cy=0.5 + rng.uniform(-0.02, 0.02),
        ax=rng.uniform(0.40, 0.45), ay=rng.uniform(0.42, 0.47),
    )
    # Arteries: the internal carotid enters at the skull base and climbs before branching.
    root = (head.cx + rng.uniform(-0.08, 0.08), head.cy + 0.93 * head.ay)
    art_samples, art_path = _grow_tree(
        rng, head, root, -math.pi / 2 + rng.uniform(-0.2, 0.2), sector=rng.uniform(2.4, 3.0),
        radius=rng.uniform(0.0085, 0.0105), max_depth=7, min_radius=0.0009, reach=rng.uniform(0.4, 0.5),
        curviness=0.014, twig_rate=0.6,
    )
    arteries = _tree_from_samples(art_samples)
    arteries.fill /= max(art_path, 1e-6)

    # Veins: the superior sagittal sinus along the vault draining backwards and down, cortical
    # veins growing from it inwards. Small veins fill first, the sinus last.
    a0, a1 = -math.pi + rng.uniform(0.35, 0.6), rng.uniform(0.2, 0.55)
    arc = np.linspace(a0, a1, max(8, int((a1 - a0) * 0.45 / STEP)))
    sinus_rho = rng.uniform(0.9, 0.94)
    sx, sy = head.cx + sinus_rho * head.ax * np.cos(arc), head.cy + sinus_rho * head.ay * np.sin(arc)
    along = np.linspace(0.0, 1.0, arc.size)
    sinus = VesselTree(
        xy=np.stack([sx, sy], axis=1), radius=rng.uniform(0.0065, 0.008) * (1.0 + 0.6 * along),
        fill=0.75 + 0.25 * along, depth=np.zeros(arc.size, dtype=np.int64), angle=arc + math.pi / 2,
    )
    cortical = []
    for anchor in np.sort(rng.uniform(0.05, 0.9, rng.integers(6, 10))):
        i = int(anchor * (arc.size - 1))
        inward = math.atan2(head.cy - sy[i], head.cx - sx[i]) + rng.uniform(-0.5, 0.5)
        vein_samples, vein_path = _grow_tree(
            rng, head, (float(sx[i]), float(sy[i])), inward, sector=1.2, radius=rng.uniform(0.0035, 0.005),
            max_depth=3, min_radius=0.0011, reach=rng.uniform(0.2, 0.3), curviness=0.02,
        )
        if not vein_samples:
            continue
        tree = _tree_from_samples(vein_samples)
        tree.fill = 0.75 * (1.0 - tree.fill / max(vein_path, 1e-6))
        tree.depth += 1
        cortical.append(tree)
    veins = _concat([sinus, *cortical])

    mirrored = bool(rng.random() < 0.5)
    if mirrored:
        for tree in (arteries, veins):
            tree.xy[:, 0] = 1.0 - tree.xy[:, 0]
            tree.angle = math.pi - tree.angle
        head = Head(1.0 - head.cx, head.cy, head.ax, head.ay)
    return Anatomy(head=head, arteries=arteries, veins=veins, mirrored=mirrored)


@dataclass(frozen=True)
class Placement:
    """How one series sees the patient: rotation about the head centre, scale and shift."""

    angle: float
    scale: float
    shift: tuple[float, float]
    centre: tuple[float, float]

    def apply(self, xy: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        rel = np.asarray(xy, dtype=np.float64) - self.centre
        out = np.empty_like(rel)
        out[..., 0] = self.scale * (c * rel[..., 0] - s * rel[..., 1]) + self.centre[0] + self.shift[0]
        out[..., 1] = self.scale * (s * rel[..., 0] + c * rel[..., 1]) + self.centre[1] + self.shift[1]
        return out


def random_placement(rng: np.random.Generator, head: Head) -> Placement:
    return Placement(
        angle=rng.uniform(-0.07, 0.07), scale=rng.uniform(0.96, 1.04),
        shift=(rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)), centre=(head.cx, head.cy),
    )


def _splat(size: int, x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Bilinear splat of weighted points (pixel coordinates, pixel centres at i + 0.5)."""
    x = x - 0.5
    y = y - 0.5
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    out = np.zeros(size * size, dtype=np.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        out += np.bincount(yi[ok] * size + xi[ok], weights=(weight * w)[ok], minlength=size * size)
    return out.reshape(size, size)


def rasterise_vessels(
    tree: VesselTree, placement: Placement, size: int, peak_density_root: float
) -> tuple[np.ndarray, np.ndarray]:
    """Projected contrast density of a fully opacified tree, and its per-pixel fill order.

    A cylinder of radius r projects to a path length 2 sqrt(r^2 - d^2) across its axis; we draw
    it as a Gaussian tube with the same integral (pi r^2 per unit length, peak ~ 2r), so density
    grows with calibre, thin vessels fade by partial volume instead of vanishing, and overlapping
    vessels add up as X-ray attenuation does. Radii are binned so each bin is one Gaussian blur.
    """
    # Resample the growth walk at half its step: add the midpoint of consecutive samples of a branch.
    gap = np.hypot(*(tree.xy[1:] - tree.xy[:-1]).T)
    same = gap < 1.5 * STEP
    xy = np.concatenate([tree.xy, 0.5 * (tree.xy[1:] + tree.xy[:-1])[same]])
    radius = np.concatenate([tree.radius, 0.5 * (tree.radius[1:] + tree.radius[:-1])[same]])
    order = np.concatenate([tree.fill, 0.5 * (tree.fill[1:] + tree.fill[:-1])[same]])
    xy = placement.apply(xy) * size
    radius_px = radius * placement.scale * size
    mu = peak_density_root / (2.0 * float(radius_px.max()))
    step_px = RASTER_STEP * placement.scale * size
    weight = mu * math.pi * radius_px**2 * step_px
    sigma = np.maximum(0.65 * radius_px, 0.55)
    edges = 0.55 * 1.6 ** np.arange(0, 10)
    bins = np.clip(np.searchsorted(edges, sigma) - 1, 0, edges.size - 2)
    density = np.zeros((size, size), dtype=np.float32)
    for b in np.unique(bins):
        sel = bins == b
        blur = math.sqrt(max(float(edges[b] * edges[b + 1]) - 0.17, 0.05))
        splat = _splat(size, xy[sel, 0], xy[sel, 1], weight[sel]).astype(np.float32)
        density += ndimage.gaussian_filter(splat, blur, mode="constant")
    # Fill order: a density-weighted average of the centrelines' order, smoothed wide enough to
    # reach the edges of the thickest vessels (junction smearing over a few pixels is harmless).
    wide = max(2.0, 0.65 * float(radius_px.max()) * 1.5)
    num = ndimage.gaussian_filter(_splat(size, xy[:, 0], xy[:, 1], weight * order).astype(np.float32), wide)
    den = ndimage.gaussian_filter(_splat(size, xy[:, 0], xy[:, 1], weight).astype(np.float32), wide)
    fill = np.where(den > 1e-9, num / np.maximum(den, 1e-12), 1.0).astype(np.float32)
    return density, fill


def bone_map(anatomy: Anatomy, size: int) -> np.ndarray:
    """Unsubtracted bone (skull vault, skull base, orbit) whose edges leave subtraction residue."""
    head = anatomy.head
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    x, y = np.meshgrid(coords, coords)
    rho = head.rho(x, y)
    bone = np.clip(1.0 - np.abs(rho - 1.01) / 0.05, 0.0, 1.0)  # skull vault
    base_y = head.cy + 0.75 * head.ay
    bone += 0.8 * np.exp(-(((x - head.cx) / (0.35 * head.ax)) ** 2) - ((y - base_y) / 0.05) ** 2)
    front = head.cx + (0.7 if anatomy.mirrored else -0.7) * head.ax  # the face side
    orbit_r = np.hypot(x - front, y - (head.cy + 0.15 * head.ay))
    bone += 0.6 * np.clip(1.0 - np.abs(orbit_r - 0.07) / 0.015, 0.0, 1.0)
    return ndimage.gaussian_filter(bone, max(0.8, size / 256.0)).astype(np.float32)


def warp_to_placement(image: np.ndarray, placement: Placement, fill_value: float = 0.0) -> np.ndarray:
    """Resample a raster drawn at the identity placement as ``placement`` sees it (bilinear)."""
    size = image.shape[0]
    c, s = math.cos(placement.angle), math.sin(placement.angle)
    inv = 1.0 / placement.scale
    # Output pixel centre (x, y) comes from input x_in = (c x + s y)/scale, y_in = (-s x + c y)/scale
    # after removing the centre and shift; written in (row, col) = (y, x) index order.
    matrix = np.array([[c * inv, -s * inv], [s * inv, c * inv]])
    centre = np.array([placement.centre[1], placement.centre[0]]) * size
    shift = np.array([placement.shift[1], placement.shift[0]]) * size
    offset = matrix @ (0.5 - centre - shift) + centre - 0.5
    return ndimage.affine_transform(
        image, matrix, offset=offset, order=1, mode="constant", cval=fill_value, prefilter=False
    )
