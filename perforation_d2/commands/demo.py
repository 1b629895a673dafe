"""``python -m perforation_d2 demo``: the main job end to end on the embedded synthetic cohort.

Steps, each the public command a user would run, in a subprocess, exactly as documented:

1. ``synth``: generate the synthetic cohort;
2. ``validate`` and ``split``: check it and split it at patient level (stratified K-fold);
3. ``cross-validate``: a quick single-frame RetinaNet and a quick temporal RetinaNet (temporal
   convolution, T=5) trained on every fold's training side, one run each; each series is
   predicted by the model that never saw its patient (``DSASeriesEvaluator`` with series
   optimisation at the end of each training), pooled, and scored per fold and overall; with the
   time-use diagnostic of the temporal models and the held-out AUC over training;
4. ``compare`` on the pooled out-of-fold predictions: AUC with patient-level bootstrap CIs,
   DeLong test, ensemble, Table-1-style table;
5. a report folder: ``report.md`` with the tables, ROC/PR plots and overlays of a few series.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..arguments import bounded_int, positive_int, seed
from ..config import config_path
from ..errors import DSAInputError
from ..io.atomic import atomic_write_text
from ..io.json_io import read_json
from ..io.transaction import FolderClaim

# Evaluations of each training on its held-out fold for the AUC-over-training plot. One evaluation
# of the quick temporal model on a demo fold (95 series at 128 px, one CPU thread) took 24 s against
# about 5 minutes per 500-iteration training, so three more per training add about 12% to the demo.
CURVE_POINTS = 4

# (short name, display name, packaged quick config)
MODELS: list[tuple[str, str, str]] = [
    ("single", "RetinaNet (single frame)", "quick/retinanet.yaml"),
    ("tconv", "RetinaNet + temporal conv (T=5)", "quick/retinanet_tconv_T5.yaml"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (data, models, report)")
    parser.add_argument("--patients", type=positive_int, default=150, help="synthetic patients (default 150)")
    parser.add_argument("--size", type=bounded_int(64, 2048, "a frame size in pixels (64 to 2048)"), default=128,
                        help="frame size in pixels (default 128)")
    parser.add_argument("--folds", type=bounded_int(2, 1000, "a number of folds (an integer >= 2)"), default=3,
                        help="patient-level folds; fold 0 is held out")
    parser.add_argument("--iters", type=bounded_int(0, 10**7, "a number of iterations"), default=500,
                        help="training iterations per model (default 500)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of every step (0 to 2**32-1)")
    # The bound of compare --bootstrap (the demo passes the value on to it).
    parser.add_argument("--bootstrap", type=bounded_int(0, 100_000, "a resample count"), default=1000,
                        help="bootstrap resamples for the CIs")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


class _Steps:
    """Runs and times the demo's steps, echoing each command."""

    def __init__(self, log_path: Path, after_step: Callable[[], None]):
        self.log_path = log_path
        self.after_step = after_step  # lists the step's files in the folder's marker
        self.timings: list[tuple[str, float]] = []

    def run(self, title: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        print(f"\n== {title}\n$ {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n== {title}\n$ {' '.join(argv)}\n")
            log.flush()
            proc = subprocess.run(argv, cwd=self.log_path.parent, env=env, stdout=log, stderr=subprocess.STDOUT)
        elapsed = time.perf_counter() - start
        self.timings.append((title, elapsed))
        print(f"   done in {elapsed:.0f} s", flush=True)
        self.after_step()
        self._check(title, proc.returncode, self.log_path)

    @staticmethod
    def _check(title: str, returncode: int, log_path: Path) -> None:
        if returncode != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
            raise DSAInputError(
                f"{log_path}: step '{title}' failed with exit status {returncode}; its last lines: " + " | ".join(tail)
            )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    # --overwrite removes only what an earlier demo run wrote (the folder's marker lists it).
    with FolderClaim(out, "demo", args.overwrite) as claim:
        return _run_steps(args, out, claim)


def _run_steps(args: argparse.Namespace, out: Path, claim: FolderClaim) -> int:
    py = sys.executable
    steps = _Steps(out / "demo.log", claim.record)
    env = dict(os.environ)
    # The demo's cohort is passed explicitly; don't also pick up whatever ./datasets holds.
    env["DETECTRON2_DATASETS"] = str(out / "data")
    started = time.perf_counter()

    cohort_dir = out / "data" / "synth"
    cohort_json = cohort_dir / "cohort.json"
    steps.run("generate the synthetic cohort",
              [py, "-m", "perforation_d2", "synth", "--out", str(cohort_dir), "--patients", str(args.patients),
               "--seed", str(args.seed), "--size", str(args.size)], env)
    steps.run("validate it", [py, "-m", "perforation_d2", "validate", str(cohort_json)], env)
    steps.run("split it at patient level",
              [py, "-m", "perforation_d2", "split", "--cohort", str(cohort_json), "--folds", str(args.folds),
               "--seed", str(args.seed), "--out", str(cohort_dir)], env)

    # Every (model, fold): each series is predicted by the model that never saw its patient.
    splits_json = cohort_dir / "splits.json"
    cv_dir = out / "cv"
    cv_cmd = [py, "-m", "perforation_d2", "cross-validate", "--cohort", str(cohort_json), "--splits", str(splits_json),
              "--runs", "1", "--jobs", "2", "--curve-points", str(CURVE_POINTS), "--out", str(cv_dir)]
    for short, _title, config in MODELS:
        cv_cmd += ["--config", f"{short}={config_path(config)}"]
    cv_cmd += ["INPUT.FRAME_SIZE", str(args.size)]
    if args.iters:
        cv_cmd += ["SOLVER.MAX_ITER", str(args.iters), "SOLVER.CHECKPOINT_PERIOD", str(args.iters)]
    # Two trainings side by side, one CPU thread each (cross-validate splits the cores between its
    # jobs): on a 2-core machine that beats one after another with two threads each.
    steps.run(f"cross-validate the {len(MODELS)} models ({args.folds} folds)", cv_cmd, env)

    # compare on the pooled out-of-fold predictions: every series of the cohort, held out once.
    predictions = {short: cv_dir / "report" / f"pooled_predictions_{short}_kfold_run0.json" for short, _, _ in MODELS}
    compare_dir = out / "compare"
    compare_cmd = [py, "-m", "perforation_d2", "compare", "--gt", str(cohort_json), "--out", str(compare_dir),
                   "--bootstrap", str(args.bootstrap), "--seed", str(args.seed)]
    for short, title, _config in MODELS:
        compare_cmd += ["--pred", str(predictions[short]), "--name", title]
    steps.run("compare the models on the pooled out-of-fold predictions", compare_cmd, env)

    from ..report.demo_report import write_report

    report = write_report(out, cohort_json, cv_dir, MODELS, predictions, compare_dir, steps.timings,
                          time.perf_counter() - started, args)
    from ..report.demo_report import temporal_verdict

    print(f"\nreport: {report}")
    print(temporal_verdict(read_json(compare_dir / "compare.json", "comparison report")))
    atomic_write_text(out / "DONE", "ok\n", overwrite=True)
    return 0
