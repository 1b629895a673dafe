"""``python -m perforation_d2 synth``: write the synthetic DSA cohort (see :mod:`perforation_d2.synth`).

Every argument is checked by argparse before any work starts; the generator itself lives in
:mod:`perforation_d2.synth.cohort`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..arguments import bounded_int, finite_float, seed
from ..experiments.diagnostics import oracle_statistics
from ..io.json_io import read_json
from ..synth.cohort import DEFAULT_OPTIONS, LOOK_ALIKES, TRUTH_FILE, generate_synthetic_cohort
from ..synth.preview import PREVIEW_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must be empty or absent)")
    parser.add_argument("--patients", required=True, type=bounded_int(1, 100_000, "a number of patients (1-100000)"),
                        help="number of patients (1-3 series each)")
    parser.add_argument("--seed", required=True, type=seed, help="random seed (same seed, same bytes)")
    parser.add_argument("--size", type=bounded_int(64, 2048, "a frame side in pixels (64-2048)"), default=256,
                        help="frame side in pixels (default 256)")
    parser.add_argument(
        "--positive-fraction", type=finite_float(0.0, 1.0, what="a fraction in [0, 1]"),
        default=DEFAULT_OPTIONS["positive_fraction"],
        help="fraction of patients with a perforation (default %(default)s)",
    )
    parser.add_argument(
        "--cohorts", type=bounded_int(1, 26, "a number of cohorts (1-26)"), default=1,
        help="spread patients over this many cohorts (sites) named synth_a, synth_b, ... (default: one, 'synth')",
    )
    parser.add_argument("--max-frames", type=bounded_int(1, 1000, "a series length (1-1000)"),
                        default=DEFAULT_OPTIONS["max_frames"], help="longest series (default %(default)s)")
    parser.add_argument("--no-distractors", action="store_true", help="leave out the perforation look-alikes")
    parser.add_argument(
        "--look-alikes", choices=LOOK_ALIKES, default=DEFAULT_OPTIONS["look_alikes"],
        help="'hard': look-alikes drawn from the perforations' own per-frame size, shape and darkness, so that "
             "only the time course tells them apart (a single-frame model sits near chance); perforations grow "
             "from a few pixels; 0.5-4 frames/s; varied exposure, noise and polarity (default %(default)s)",
    )
    parser.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    parser.add_argument("--overwrite", action="store_true", help="replace a synthetic cohort already in --out")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    cohort_json = generate_synthetic_cohort(
        args.out, args.patients, args.seed, size=args.size, overwrite=args.overwrite,
        positive_fraction=args.positive_fraction, num_cohorts=args.cohorts, max_frames=args.max_frames,
        distractors=not args.no_distractors, preview=not args.no_preview, look_alikes=args.look_alikes,
    )
    cohort = read_json(cohort_json, "cohort file")
    videos = cohort["videos"]
    positives = sum(v["label"] for v in videos)
    print(
        f"wrote {cohort_json}: {args.patients} patients, {len(videos)} series ({positives} positive), "
        f"{len(cohort['images'])} frames of {args.size} px, {len(cohort['annotations'])} boxes "
        f"in {time.perf_counter() - start:.1f} s"
    )
    oracle = oracle_statistics(read_json(cohort_json.parent / TRUTH_FILE, "synthetic truth file"))
    if oracle["AUC"] is not None:
        # What the true time courses allow: the yardstick for a temporal model on this cohort.
        print(f"time-course oracle (perforation_d2/synth/oracle.py): AUC {oracle['AUC']:.3f}, "
              f"sensitivity at 95% specificity {oracle['sens_at_95spec']:.3f} over all {oracle['series']} series")
    if not args.no_preview:
        print(f"preview: {cohort_json.parent / PREVIEW_FILE}")
    return 0
