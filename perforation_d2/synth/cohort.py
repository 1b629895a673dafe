"""``python -m perforation_d2 synth``: the synthetic DSA cohort, perforation_d2's embedded data.

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

The folder is built under a temporary name beside ``DIR`` and renamed into place when complete,
so an interrupted run leaves nothing half-written. Generation is deterministic: the same seed and
options give byte-identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import DSAInputError
from .anatomy import Anatomy, bone_map, make_anatomy
from .series import (
    NoiseBank,
    RenderedSeries,
    Scanner,
    SeriesPlan,
    perforation_site,
    plan_series,
    render_series,
    sample_num_frames,
)

COHORT_FILE = "cohort.json"
TRUTH_FILE = "synth_truth.json"
PREVIEW_FILE = "preview.png"
GENERATOR_VERSION = 1
DEFAULT_OPTIONS: dict[str, Any] = {
    "positive_fraction": 0.45,  # fraction of patients with a perforation
    "num_cohorts": 1,  # > 1: patients spread over cohorts "synth_a", "synth_b", ... (sites)
    "max_frames": 30,
    "distractors": True,  # look-alikes (crossings, venous pools, transient spots)
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


def _check_options(num_patients: int, size: int, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise TypeError(f"generate_synthetic_cohort() got unknown options {unknown}; known: {sorted(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    problems = []
    if not isinstance(num_patients, int) or num_patients < 1:
        problems.append(f"the number of patients (--patients) must be a positive integer (got {num_patients!r})")
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
    if problems:
        raise DSAInputError("synthetic cohort: " + "; ".join(problems) + " (nothing was written).")
    return opts


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DSAInputError(f"{out_dir}: the output path exists and is not a folder; choose another --out (nothing was written).")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise DSAInputError(
            f"{out_dir}: the output folder exists and is not empty; pass --overwrite to replace the "
            "synthetic cohort there, or choose another --out (nothing was written)."
        )
    if not (out_dir / COHORT_FILE).is_file() or not (out_dir / TRUTH_FILE).is_file():
        raise DSAInputError(
            f"{out_dir}: the folder holds files that are not a synthetic cohort (no {COHORT_FILE} and "
            f"{TRUTH_FILE}); --overwrite only replaces a folder this command wrote, so nothing was touched."
        )


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished cohort into place; an old cohort there is removed only afterwards."""
    old = None
    if out_dir.exists():
        if any(out_dir.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
        else:
            out_dir.rmdir()
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
            plan = plan_series(
                rng, anatomy, name, sample_num_frames(rng, opts["max_frames"]),
                site if label else None, scanners[p % len(scanners)], distractors=bool(opts["distractors"]),
            )
            series.append(_Series(video_id=len(series) + 1, patient_index=p, plan=plan))
    return anatomies, series, cohorts


def _preview_choice(series: list[_Series], rows: int = 8) -> list[int]:
    """Up to ``rows`` runs for the contact sheet: half positive, half negative, long ones first."""
    long_first = sorted(range(len(series)), key=lambda i: (series[i].plan.num_frames < 8, i))
    pos = [i for i in long_first if series[i].plan.label == 1][: rows // 2]
    neg = [i for i in long_first if series[i].plan.label == 0][: rows - len(pos)]
    return sorted(pos + neg)


_KIND_COLOUR = {"crossing": (255, 200, 0), "venous_pool": (0, 200, 255), "transient": (255, 0, 255)}
_KIND_MARK = {"crossing": "X", "venous_pool": "V", "transient": "T"}


def _contact_sheet(entries: list[tuple[_Series, RenderedSeries]], size: int, columns: int = 10) -> Image.Image:
    tile = min(size, 160)
    label_w, head_h, gap = 150, 14, 2
    scale = tile / size
    sheet = Image.new(
        "RGB", (label_w + columns * (tile + gap), head_h + max(1, len(entries)) * (tile + head_h + gap)), (24, 24, 24)
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text(
        (4, 2), "red: perforation (GT box)   look-alikes: X crossing, V venous pool, T transient (not annotated)",
        fill=(230, 230, 230), font=font,
    )
    for row, (entry, rendered) in enumerate(entries):
        plan = entry.plan
        y = head_h + row * (tile + head_h + gap)
        pos = plan.label == 1
        draw.text((4, y + head_h + 4), "POSITIVE" if pos else "NEGATIVE", fill=(255, 70, 70) if pos else (90, 220, 90), font=font)
        draw.text((4, y + head_h + 20), plan.name, fill=(230, 230, 230), font=font)
        fps = "single frame" if plan.frame_time_ms is None else f"{1000.0 / plan.frame_time_ms:.1f} fps"
        draw.text((4, y + head_h + 36), f"{plan.num_frames} frames, {fps}", fill=(200, 200, 200), font=font)
        kinds = sorted({ev.kind for ev in plan.events if ev.kind != "perforation" and ev.visible.any()})
        if kinds:
            draw.text((4, y + head_h + 52), " ".join(_KIND_MARK[k] for k in kinds), fill=(255, 220, 120), font=font)
        phases = plan.phases()
        shown = np.unique(np.linspace(0, plan.num_frames - 1, min(plan.num_frames, columns)).round().astype(int))
        for col, f in enumerate(shown.tolist()):
            x = label_w + col * (tile + gap)
            draw.text((x + 2, y + 1), f"#{f} {phases[f]}", fill=(200, 200, 200), font=font)
            frame = Image.fromarray(rendered.frames[f]).convert("RGB")
            if tile != size:
                frame = frame.resize((tile, tile), Image.BILINEAR)
            sheet.paste(frame, (x, y + head_h))
            for ev, boxes in zip(plan.events, rendered.boxes):
                box = boxes[f]
                if box is None:
                    continue
                bx, by, bw, bh = (v * scale for v in box)
                rect = [x + bx, y + head_h + by, x + bx + bw, y + head_h + by + bh]
                if ev.kind == "perforation":
                    draw.rectangle(rect, outline=(255, 40, 40), width=2 if tile >= 128 else 1)
                else:
                    draw.rectangle(rect, outline=_KIND_COLOUR[ev.kind], width=1)
                    draw.text((rect[2] + 1, rect[1] - 2), _KIND_MARK[ev.kind], fill=_KIND_COLOUR[ev.kind], font=font)
    return sheet


def _video_record(entry: _Series, size: int, cohort: str) -> dict[str, Any]:
    plan = entry.plan
    return {
        "id": entry.video_id, "name": plan.name, "width": size, "height": size,
        "patient_id": f"SYN-{entry.patient_index + 1:04d}", "cohort": cohort, "num_frames": plan.num_frames,
        "frame_time_ms": plan.frame_time_ms, "label": plan.label,
    }


def _truth_record(entry: _Series, rendered: RenderedSeries) -> dict[str, Any]:
    plan = entry.plan
    circ = plan.circulation
    events = []
    for ev, boxes in zip(plan.events, rendered.boxes):
        shown = [f for f, box in enumerate(boxes) if box is not None]
        events.append({
            "kind": ev.kind, "frames": shown, "boxes": [boxes[f] for f in shown],
            "peak_density": round(float(ev.density.max()), 4),
        })
    return {
        "video_id": entry.video_id, "name": plan.name, "label": plan.label,
        "times_s": [round(float(t), 3) for t in plan.times], "phases": plan.phases(),
        "circulation_s": {k: round(float(v), 3) for k, v in vars(circ).items()},
        "events": events,
    }


def _write_png(path: Path, frame: np.ndarray) -> None:
    # Low compression: the noise that makes frames realistic barely compresses, and speed matters.
    Image.fromarray(frame).save(path, format="PNG", compress_level=1)


def generate_synthetic_cohort(
    out_dir: str | Path, num_patients: int, seed: int, size: int = 256, overwrite: bool = False, **options: Any
) -> Path:
    """Write a synthetic DSA cohort into ``out_dir`` and return the path of its ``cohort.json``.

    ``options``: ``positive_fraction`` (0.45), ``num_cohorts`` (1), ``max_frames`` (30),
    ``distractors`` (True) and ``preview`` (True); see :data:`DEFAULT_OPTIONS`.
    Raises :class:`DSAInputError` for bad values or an occupied ``out_dir`` (without ``overwrite``).
    """
    opts = _check_options(num_patients, size, options)
    out_dir = Path(out_dir)
    _check_destination(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    anatomies, series, cohorts = _plan_cohort(num_patients, seed, opts)
    preview_ids = set(_preview_choice(series)) if opts["preview"] else set()

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    try:
        videos, images, annotations, truth = [], [], [], []
        preview_entries: list[tuple[_Series, RenderedSeries]] = []
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
            folder = tmp / "frames" / plan.name
            folder.mkdir(parents=True)
            first_image_id = len(images) + 1
            for f in range(plan.num_frames):
                rel = f"frames/{plan.name}/{f:03d}.png"
                _write_png(tmp / rel, rendered.frames[f])
                images.append({
                    "id": first_image_id + f, "file_name": rel, "video_id": entry.video_id, "frame_id": f,
                    "width": size, "height": size,
                })
            for ev, boxes in zip(plan.events, rendered.boxes):
                if ev.kind != "perforation":
                    continue
                instance_id += 1
                for f, box in enumerate(boxes):
                    if box is None:
                        continue
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": first_image_id + f, "video_id": entry.video_id,
                        "category_id": 1, "bbox": box, "area": round(box[2] * box[3], 2), "iscrowd": 0,
                        "instance_id": instance_id,
                    })
            videos.append(_video_record(entry, size, cohorts[p % len(cohorts)]))
            truth.append(_truth_record(entry, rendered))
            if entry.video_id - 1 in preview_ids:
                preview_entries.append((entry, rendered))
        settings = {"seed": seed, "num_patients": num_patients, "size": size, **opts}
        cohort = {
            "info": {
                "description": "perforation_d2 synthetic DSA cohort", "generator": "perforation_d2 synth",
                "generator_version": GENERATOR_VERSION, "settings": settings,
            },
            "videos": videos, "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "perforation"}],
        }
        (tmp / COHORT_FILE).write_text(json.dumps(cohort, indent=1) + "\n", encoding="utf-8")
        (tmp / TRUTH_FILE).write_text(
            json.dumps({"settings": settings, "videos": truth}, indent=1) + "\n", encoding="utf-8"
        )
        if preview_entries:
            _contact_sheet(preview_entries, size).save(tmp / PREVIEW_FILE, format="PNG", compress_level=6)
        _check_destination(out_dir, overwrite)  # still free (or still ours) after the work?
        _install(tmp, out_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return out_dir / COHORT_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must be empty or absent)")
    parser.add_argument("--patients", required=True, type=int, help="number of patients (1-3 series each)")
    parser.add_argument("--seed", required=True, type=int, help="random seed (same seed, same bytes)")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (default 256)")
    parser.add_argument(
        "--positive-fraction", type=float, default=DEFAULT_OPTIONS["positive_fraction"],
        help="fraction of patients with a perforation (default %(default)s)",
    )
    parser.add_argument(
        "--cohorts", type=int, default=1,
        help="spread patients over this many cohorts (sites) named synth_a, synth_b, ... (default: one, 'synth')",
    )
    parser.add_argument("--max-frames", type=int, default=DEFAULT_OPTIONS["max_frames"], help="longest series (default %(default)s)")
    parser.add_argument("--no-distractors", action="store_true", help="leave out the perforation look-alikes")
    parser.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    parser.add_argument("--overwrite", action="store_true", help="replace a synthetic cohort already in --out")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    cohort_json = generate_synthetic_cohort(
        args.out, args.patients, args.seed, size=args.size, overwrite=args.overwrite,
        positive_fraction=args.positive_fraction, num_cohorts=args.cohorts, max_frames=args.max_frames,
        distractors=not args.no_distractors, preview=not args.no_preview,
    )
    cohort = json.loads(cohort_json.read_text(encoding="utf-8"))
    videos = cohort["videos"]
    positives = sum(v["label"] for v in videos)
    print(
        f"wrote {cohort_json}: {args.patients} patients, {len(videos)} series ({positives} positive), "
        f"{len(cohort['images'])} frames of {args.size} px, {len(cohort['annotations'])} boxes "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if not args.no_preview:
        print(f"preview: {cohort_json.parent / PREVIEW_FILE}")
    return 0
