"""The contrast's passage through one synthetic series: arterial, capillary and venous phases.

Every blob's time course (perforations and look-alikes) and every vessel's filling is read off
this one :class:`Circulation`, so what tells a perforation apart is when it shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

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
