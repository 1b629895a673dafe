"""The hard synthetic option (``synth --look-alikes hard``): only the time course tells a perforation apart.

In the standard cohort a look-alike shares the perforations' size and darkness *ranges* but not
their time course, and the perforation's own appearance (a mid-size blob from its first frame)
differs from frame to frame little. Here every frame of a look-alike is, by construction, drawn
from exactly the distribution of a perforation's frame at the same moment of the run:

* a **perforation** starts small and faint (a radius of a few pixels) and grows smoothly, in size
  and darkness, towards a radius of up to an eighth of the frame side (a quarter of the frame
  across), staying to the last frame;
* a **flicker** look-alike sits where a perforation could (a site drawn like the patient's
  perforation site) and has a perforation's shape generator, but at each frame it shows the
  size and darkness of one of three independent perforation courses of the same run, switching
  between them from frame to frame (a Markov chain independent of the courses): at any one frame
  it is indistinguishable from a perforation; over a few frames it jumps instead of growing.

Positive and negative series have the same number of blobs (a positive series trades one
look-alike for its perforation), the same run timing (every run starts 0.2-1.5 s before a
perforation would begin, the same in negative runs), frame intervals of 0.25-2 s (0.5-4 frames/s),
and per-series exposure, noise and display polarity (MONOCHROME1-like inverted runs, bright
contrast on dark). A single-frame detector therefore has nothing to go on: its expected series
AUC is 0.5. ``tests/synth/test_hard_synth.py`` checks the per-frame statistics on the truth file.
"""

from __future__ import annotations

import numpy as np

from .anatomy import Anatomy, random_placement
from .blobs import BlobEvent, perforation_site, random_blob_shape, site_on
from .circulation import random_circulation
from .series import SeriesPlan, drift_and_gain

# 0.5 to 4 frames per second, as in the paper's cohort (section 3).
FRAME_INTERVALS_MS = (250.0, 1000.0 / 3.0, 500.0, 2000.0 / 3.0, 1000.0, 1500.0, 2000.0)
# Radius (fraction of the side) and peak density of a perforation at onset and fully grown.
RADIUS_START = (0.008, 0.018)
RADIUS_END = (0.045, 0.125)
DENSITY_START = (0.12, 0.25)
DENSITY_END = (0.45, 0.9)
GROWTH_TIME_S = (1.0, 6.0)  # time constant of the growth
LEAD_IN_S = (0.2, 1.5)  # from the run's first frame to a perforation's onset
COURSES_PER_FLICKER = 3
SWITCH_PROBABILITY = (0.35, 0.8)  # per frame, of a flicker moving to another course
BLOBS_PER_SERIES = ((1, 2, 3), (0.3, 0.4, 0.3))
INVERTED_FRACTION = 0.25
BACKGROUND = (115.0, 215.0)
PHOTONS = (2.5, 12.0)


def growth_course(rng: np.random.Generator, times: np.ndarray, onset: float) -> tuple[np.ndarray, np.ndarray]:
    """Radius and density of one perforation at ``times``: 0 before ``onset``, then smooth growth."""
    r0, r1 = rng.uniform(*RADIUS_START), rng.uniform(*RADIUS_END)
    d0, d1 = rng.uniform(*DENSITY_START), rng.uniform(*DENSITY_END)
    tau_r, tau_d = rng.uniform(*GROWTH_TIME_S), rng.uniform(*GROWTH_TIME_S)
    since = np.maximum(times - onset, 0.0)
    on = times >= onset
    radius = np.where(on, r0 + (r1 - r0) * (1.0 - np.exp(-since / tau_r)), r0)
    density = np.where(on, d0 + (d1 - d0) * (1.0 - np.exp(-since / tau_d)), 0.0)
    return radius, density


def _course_onset(rng: np.random.Generator, t0: float) -> float:
    return t0 + rng.uniform(*LEAD_IN_S)


def _frame_times(rng: np.random.Generator, num_frames: int, t0: float) -> tuple[np.ndarray, float | None]:
    if num_frames == 1:
        # A single frame shows the extravasation (or a look-alike) at some point of its growth.
        return np.array([t0 + rng.uniform(LEAD_IN_S[1], LEAD_IN_S[1] + 8.0)]), None
    dt = float(rng.choice(FRAME_INTERVALS_MS)) / 1000.0
    return t0 + dt * np.arange(num_frames), round(dt * 1000.0, 3)


def _shown(event: BlobEvent) -> BlobEvent:
    # Boxed from the first frame it shows: a faint, small perforation is still a perforation.
    event.visible = event.density > 0.0
    return event


def plan_growing_perforation(rng: np.random.Generator, anatomy: Anatomy, site: int, times: np.ndarray, onset: float) -> BlobEvent:
    radius, density = growth_course(rng, times, onset)
    art = anatomy.arteries
    _, centre = site_on(rng, art.xy, art.angle, np.array([site]), float(radius.max()))
    return _shown(BlobEvent("perforation", centre, random_blob_shape(rng), radius, density))


def _flicker(rng: np.random.Generator, anatomy: Anatomy, times: np.ndarray, t0: float) -> BlobEvent:
    courses = [growth_course(rng, times, _course_onset(rng, t0)) for _ in range(COURSES_PER_FLICKER)]
    switch = rng.uniform(*SWITCH_PROBABILITY)
    current = int(rng.integers(COURSES_PER_FLICKER))
    chosen = np.empty(times.size, dtype=int)
    for f in range(times.size):
        if f > 0 and rng.random() < switch:
            current = int((current + rng.integers(1, COURSES_PER_FLICKER)) % COURSES_PER_FLICKER)
        chosen[f] = current
    frames = np.arange(times.size)
    radius = np.stack([c[0] for c in courses])[chosen, frames]
    density = np.stack([c[1] for c in courses])[chosen, frames]
    site = perforation_site(rng, anatomy)
    art = anatomy.arteries
    # Offset from the vessel as a perforation's: by one course's grown radius, not the mixture's.
    _, centre = site_on(rng, art.xy, art.angle, np.array([site]), float(courses[0][0].max()))
    return _shown(BlobEvent("flicker", centre, random_blob_shape(rng), radius, density))


def plan_hard_series(
    rng: np.random.Generator,
    anatomy: Anatomy,
    name: str,
    num_frames: int,
    perforation_at: int | None,
    distractors: bool = True,
) -> SeriesPlan:
    """One series of the hard option (``perforation_at``: the patient's arterial site, or None)."""
    circ = random_circulation(rng)
    # Runs are timed around when a perforation at this site would begin, in negative runs too
    # (a site drawn like a perforation's), so that timing says nothing about the label.
    site = perforation_at if perforation_at is not None else perforation_site(rng, anatomy)
    arrival = circ.t_art + circ.fill_art * float(anatomy.arteries.fill[site])
    onset = arrival + rng.uniform(0.0, 0.5) * circ.dur_art
    t0 = onset - rng.uniform(*LEAD_IN_S)
    times, frame_time_ms = _frame_times(rng, num_frames, t0)
    blobs = int(rng.choice(BLOBS_PER_SERIES[0], p=BLOBS_PER_SERIES[1]))
    events: list[BlobEvent] = []
    if perforation_at is not None:
        events.append(plan_growing_perforation(rng, anatomy, perforation_at, times, onset))
    if distractors:
        events += [_flicker(rng, anatomy, times, t0) for _ in range(blobs - len(events))]

    motion, gain = drift_and_gain(rng, times, 0.006, gain_drift=0.06, gain_jitter=0.01)
    return SeriesPlan(
        name=name, label=int(perforation_at is not None), times=times, frame_time_ms=frame_time_ms,
        circulation=circ, placement=random_placement(rng, anatomy.head), events=events,
        motion=motion, gain=gain, background=float(rng.uniform(*BACKGROUND)),
        photons=float(rng.uniform(*PHOTONS)), mottle=float(rng.uniform(1.0, 4.0)),
        bone_residue=float(rng.uniform(0.1, 0.3)), iris=float(rng.uniform(0.5, 0.6)) if rng.random() < 0.4 else None,
        inverted=bool(rng.random() < INVERTED_FRACTION),
    )
