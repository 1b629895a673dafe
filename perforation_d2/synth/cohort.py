"""The synthetic DSA cohort, perforation_d2's embedded data (the ``synth`` command writes it).

Patients get a procedural head (branching, tapering arteries; cortical veins and sinuses; skull)
and 1-3 DSA runs of 1 to ~30 frames. Each run shows the arterial, capillary and venous phases
with contrast dark on a light grey background as DSA is displayed, Poisson-like quantum noise,
slow patient drift with the bone-edge residue it leaves after subtraction, and gain drift.

Positive runs hold a perforation: contrast extravasation that starts while the arteries fill,
grows, and persists after they wash out. Positive and negative runs alike hold look-alikes drawn
from the same shape, size and darkness distributions (vessel crossings, venous pools, transient
spots) that differ only in their time course. One frame cannot tell them apart; a few
consecutive frames can, which is what the temporal models of the paper (section 2.3) exploit.

Layout of ``DIR`` (SPEC section 1)::

    cohort.json                       COCO-video cohort (file names relative to DIR)
    frames/<video>/<frame:03d>.png    8-bit grey frames
    preview.png                       contact sheet: runs in rows, frames in columns, boxes drawn
    synth_truth.json                  what the generator did: phase of every frame, and where and
                                      when every perforation and look-alike shows

The folder is built under a temporary name beside ``DIR`` and renamed into place when complete
(:class:`~perforation_d2.io.transaction.OutputTransaction`), so an interrupted run leaves nothing
half-written, and ``--overwrite`` replaces only a folder this command wrote. Generation is
deterministic: the same seed and options give byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.cohort_writer import COHORT_FILE, CohortWriter
from ..errors import DSAInputError
from ..io.transaction import OutputTransaction
from .anatomy import Anatomy, bone_map, make_anatomy
from .blobs import perforation_site
from .hard import plan_hard_series
from .preview import PREVIEW_FILE, contact_sheet, preview_choice
from .series import (
    NoiseBank,
    RenderedSeries,
    Scanner,
    SeriesPlan,
    plan_series,
    render_series,
    sample_num_frames,
)

TRUTH_FILE = "synth_truth.json"
GENERATOR_VERSION = 1
LOOK_ALIKES = ("standard", "hard")
DEFAULT_OPTIONS: dict[str, Any] = {
    "positive_fraction": 0.45,  # fraction of patients with a perforation
    "num_cohorts": 1,  # > 1: patients spread over cohorts "synth_a", "synth_b", ... (sites)
    "max_frames": 30,
    "distractors": True,  # look-alikes (crossings, venous pools, transient spots)
    # "hard": look-alikes with a perforation's single-frame appearance, growing perforations,
    # 0.5-4 frames/s, varied exposure and polarity: only the time course tells them apart.
    "look_alikes": "standard",
    "preview": True,
}


@dataclass
class _Series:
    video_id: int
    patient_index: int
    plan: SeriesPlan


def _cohort_names(num_cohorts: int) -> list[str]:
    if num_cohorts == 1:
        return ["synth"]
    return [f"synth_{chr(ord('a') + c)}" for c in range(num_cohorts)]


def _scanner(seed: int, cohort_index: int, num_cohorts: int) -> Scanner:
    if num_cohorts == 1:
        return Scanner()
    # Sites differ in grey level, dose (noise) and how still patients are kept.
    rng = np.random.default_rng([seed, 3, cohort_index])
    offset = rng.uniform(-12.0, 12.0)
    dose = rng.uniform(0.7, 1.4)
    base = Scanner()
    return Scanner(
        background=(base.background[0] + offset, base.background[1] + offset),
        photons=(base.photons[0] * dose, base.photons[1] * dose),
        motion=base.motion * rng.uniform(0.5, 1.5),
    )


def _check_options(num_patients: int, seed: int, size: int, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise TypeError(f"generate_synthetic_cohort() got unknown options {unknown}; known: {sorted(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    problems = []
    if not isinstance(num_patients, int) or num_patients < 1:
        problems.append(f"the number of patients (--patients) must be a positive integer (got {num_patients!r})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(f"the seed (--seed) must be a non-negative integer (got {seed!r})")
    if not isinstance(size, int) or not 64 <= size <= 2048:
        problems.append(f"the frame size (--size) must be an integer from 64 to 2048 pixels (got {size!r})")
    if not 0.0 <= float(opts["positive_fraction"]) <= 1.0:
        problems.append(f"the positive fraction (--positive-fraction) must lie in [0, 1] (got {opts['positive_fraction']!r})")
    if not isinstance(opts["num_cohorts"], int) or not 1 <= opts["num_cohorts"] <= 26:
        problems.append(f"the number of cohorts (--cohorts) must be an integer from 1 to 26 (got {opts['num_cohorts']!r})")
    elif isinstance(num_patients, int) and opts["num_cohorts"] > max(num_patients, 1):
        problems.append(f"{opts['num_cohorts']} cohorts need at least as many patients (got {num_patients})")
    if not isinstance(opts["max_frames"], int) or opts["max_frames"] < 1:
        problems.append(f"the maximum series length (--max-frames) must be a positive integer (got {opts['max_frames']!r})")
    if opts["look_alikes"] not in LOOK_ALIKES:
        problems.append(f"the look-alikes (--look-alikes) must be one of {', '.join(LOOK_ALIKES)} (got {opts['look_alikes']!r})")
    if problems:
        raise DSAInputError("synthetic cohort: " + "; ".join(problems) + " (nothing was written).")
    return opts


def _plan_cohort(num_patients: int, seed: int, opts: dict[str, Any]) -> tuple[list[Anatomy], list[_Series], list[str]]:
    master = np.random.default_rng([seed, 0])
    num_positive = int(round(float(opts["positive_fraction"]) * num_patients))
    positive_patients = set(master.permutation(num_patients)[:num_positive].tolist())
    cohorts = _cohort_names(opts["num_cohorts"])
    scanners = [_scanner(seed, c, len(cohorts)) for c in range(len(cohorts))]
    anatomies: list[Anatomy] = []
    series: list[_Series] = []
    for p in range(num_patients):
        rng = np.random.default_rng([seed, 1, p])
        anatomy = make_anatomy(rng)
        anatomies.append(anatomy)
        count = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
        labels = [0] * count
        site = None
        if p in positive_patients:
            site = perforation_site(rng, anatomy)
            labels = [int(rng.random() < 0.6) for _ in range(count)]
            if not any(labels):
                labels[int(rng.integers(count))] = 1
        for k, label in enumerate(labels):
            name = f"SYN-{p + 1:04d}_S{k + 1:02d}"
            if opts["look_alikes"] == "hard":
                plan = plan_hard_series(rng, anatomy, name, sample_num_frames(rng, opts["max_frames"]),
                                        site if label else None, distractors=bool(opts["distractors"]))
            else:
                plan = plan_series(
                    rng, anatomy, name, sample_num_frames(rng, opts["max_frames"]),
                    site if label else None, scanners[p % len(scanners)], distractors=bool(opts["distractors"]),
                )
            series.append(_Series(video_id=len(series) + 1, patient_index=p, plan=plan))
    return anatomies, series, cohorts


def _truth_record(entry: _Series, rendered: RenderedSeries) -> dict[str, Any]:
    plan = entry.plan
    circ = plan.circulation
    events = []
    for ev, boxes in zip(plan.events, rendered.boxes):
        shown = [f for f, box in enumerate(boxes) if box is not None]
        events.append({
            "kind": ev.kind, "frames": shown, "boxes": [boxes[f] for f in shown],
            "peak_density": round(float(ev.density.max()), 4),
            "densities": [round(float(ev.density[f]), 4) for f in shown],
        })
    return {
        "video_id": entry.video_id, "name": plan.name, "label": plan.label,
        "times_s": [round(float(t), 3) for t in plan.times], "phases": plan.phases(),
        "circulation_s": {k: round(float(v), 3) for k, v in vars(circ).items()},
        "events": events,
    }


def generate_synthetic_cohort(
    out_dir: str | Path, num_patients: int, seed: int, size: int = 256, overwrite: bool = False, **options: Any
) -> Path:
    """Write a synthetic DSA cohort into ``out_dir`` and return the path of its ``cohort.json``.

    ``options``: ``positive_fraction`` (0.45), ``num_cohorts`` (1), ``max_frames`` (30),
    ``distractors`` (True), ``look_alikes`` ("standard") and ``preview`` (True); see
    :data:`DEFAULT_OPTIONS`. Raises :class:`DSAInputError` for bad values or an occupied
    ``out_dir`` (``overwrite`` replaces only a folder this function wrote), before any work.
    """
    opts = _check_options(num_patients, seed, size, options)
    out_dir = Path(out_dir)
    transaction = OutputTransaction(out_dir, "synth", overwrite, whole_folder=True)
    anatomies, series, cohorts = _plan_cohort(num_patients, seed, opts)
    preview_ids = set(preview_choice([entry.plan for entry in series])) if opts["preview"] else set()
    settings = {"seed": seed, "num_patients": num_patients, "size": size, **opts}
    info = {
        "description": "perforation_d2 synthetic DSA cohort", "generator": "perforation_d2 synth",
        "generator_version": GENERATOR_VERSION, "settings": settings,
    }
    with transaction:
        writer = CohortWriter(transaction, info=info)
        truth = []
        preview_entries: list[tuple[SeriesPlan, RenderedSeries]] = []
        instance_id = 0
        render_rng, noise, bone = None, None, None
        for entry in series:
            p = entry.patient_index
            if render_rng is None or entry is series[0] or series[entry.video_id - 2].patient_index != p:
                # Noise and bone are per patient, drawn from the patient's own render stream.
                render_rng = np.random.default_rng([seed, 2, p])
                noise = NoiseBank(render_rng, size)
                bone = bone_map(anatomies[p], size)
            rendered = render_series(render_rng, anatomies[p], bone, entry.plan, noise)
            plan = entry.plan
            video_id = writer.add_video(plan.name, size, size, f"SYN-{p + 1:04d}", cohorts[p % len(cohorts)],
                                        plan.frame_time_ms, label=plan.label)
            assert video_id == entry.video_id
            image_ids = [writer.add_frame(video_id, rendered.frames[f]) for f in range(plan.num_frames)]
            for ev, boxes in zip(plan.events, rendered.boxes):
                if ev.kind != "perforation":
                    continue
                instance_id += 1
                for f, box in enumerate(boxes):
                    if box is not None:
                        writer.add_box(image_ids[f], box, instance_id, area=round(box[2] * box[3], 2))
            truth.append(_truth_record(entry, rendered))
            if entry.video_id - 1 in preview_ids:
                preview_entries.append((plan, rendered))
        writer.write()
        transaction.write_json(TRUTH_FILE, {"settings": settings, "videos": truth})
        if preview_entries:
            contact_sheet(preview_entries, size).save(transaction.path(PREVIEW_FILE), format="PNG", compress_level=6)
    return out_dir / COHORT_FILE
