"""``python -m perforation_d2 cross-validate``: K folds x R runs x models, locally or through submitit.

Idempotent: running the same command again skips finished jobs, resumes interrupted ones from
their last checkpoint and reruns failed ones; ``--status`` only prints the table of jobs. The
report (``DIR/report/``) is rebuilt from whatever jobs have finished. Temporal models also run the
time-use diagnostic (``--no-time-use`` skips it); ``--curve-points N`` evaluates every job N times
over training for the AUC-over-training plot.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from ..arguments import bounded_int, finite_float, positive_int, seed
from ..experiments.executors import LocalExecutor, SubmititExecutor, check_configs
from ..experiments.jobs import DONE, FAILED, RUNNING, job_state
from ..experiments.plan import build_plan, config_digest, parse_config_arguments
from ..experiments.report import build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort", required=True, help="cohort JSON")
    parser.add_argument("--splits", help="splits JSON (from the split command); else --folds/--seed make them")
    parser.add_argument("--folds", type=bounded_int(2, 1000, "a fold count"), help="K patient-level folds")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the folds made with --folds (default 0)")
    parser.add_argument("--config", action="append", required=True, metavar="[NAME=]CFG",
                        help="a model config (repeatable); NAME defaults to the file's stem")
    parser.add_argument("--runs", type=bounded_int(1, 1000, "a run count"), default=1,
                        help="runs per (model, split); run r trains with SEED r (default 1)")
    parser.add_argument("--out", required=True, help="experiment folder (jobs/, splits/, report/)")
    parser.add_argument("--loco", action="store_true", help="leave-one-cohort-out instead of K folds")
    parser.add_argument("--train-fraction", type=finite_float(0.0, 1.0, exclusive_minimum=True, what="a fraction"),
                        action="append", metavar="F",
                        help="subsample each split's training patients to F, stratified (repeatable; learning curve)")
    parser.add_argument("--ensemble", action="append", metavar="NAME",
                        help="a model of the median ensemble (repeatable; default: every temporal model)")
    parser.add_argument("--no-time-use", action="store_true",
                        help="skip the time-use diagnostic (by default every temporal model's final model is also "
                             "evaluated with clips ablated: centre frame repeated, reversed, shuffled)")
    parser.add_argument("--curve-points", type=bounded_int(0, 10_000, "a number of evaluations"), default=0,
                        metavar="N", help="evaluate each job on its held-out fold N times over training "
                                          "(TEST.EVAL_PERIOD = MAX_ITER // N) for the AUC-over-training plot only "
                                          "(default 0: once, at the end)")
    parser.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                        help="local processes (default), Slurm through submitit, or submitit's local executor")
    parser.add_argument("--jobs", type=positive_int, default=1, help="local executor: trainings at once")
    parser.add_argument("--partition", help="slurm: partition")
    parser.add_argument("--gpus-per-job", type=bounded_int(0, 64, "a GPU count"), default=0,
                        help="slurm: GPUs per job (more than one: DDP inside the allocation)")
    parser.add_argument("--timeout-min", type=positive_int, default=720, help="slurm: time limit per job in minutes")
    parser.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                        help="slurm: extra sbatch parameters (repeatable), e.g. account=proj")
    parser.add_argument("--no-wait", action="store_true", help="submitit: submit and return (rerun to collect)")
    parser.add_argument("--status", action="store_true", help="print the table of jobs and exit")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="Detectron2 config overrides for every job")


def _print_status(plan) -> list:
    rows = [(job, job_state(job)) for job in plan.jobs]
    counts = Counter(state.state for _, state in rows)
    width = max(len(job.key) for job, _ in rows)
    print(f"{'job':<{width}}  state")
    for job, state in rows:
        extra = f"  log: {state.log}" if state.state == FAILED and state.log else ""
        detail = f"  ({state.detail})" if state.detail and state.state != DONE else ""
        print(f"{job.key:<{width}}  {state.state}{detail}{extra}")
    print(", ".join(f"{count} {name}" for name, count in sorted(counts.items())))
    return rows


def _executor(args: argparse.Namespace) -> LocalExecutor | SubmititExecutor:
    if args.executor == "local":
        return LocalExecutor(args.jobs)
    return SubmititExecutor(Path(args.out) / "submitit", "slurm" if args.executor == "slurm" else "local",
                            args.partition, args.gpus_per_job, args.timeout_min, args.slurm_extra)


def run(args: argparse.Namespace) -> int:
    configs = parse_config_arguments(args.config)
    checked = check_configs(configs, args.opts)
    if not args.status:
        # Before anything is written: an unreachable Slurm is one paragraph, not a half-made experiment.
        SubmititExecutor.check_cluster("slurm" if args.executor == "slurm" else "local")
    plan = build_plan(args, {name: config_digest(path) for name, path in configs.items()}, checked)
    rows = _print_status(plan)
    if args.status:
        return 0
    executor = _executor(args)
    todo = [job for job, state in rows if state.state not in (DONE, RUNNING)]
    if todo:
        run_kwargs = {} if isinstance(executor, LocalExecutor) else {"wait": not args.no_wait}
        with tqdm(total=len(todo), desc="jobs", unit="job") as bar:
            results = executor.run(plan, todo, progress=lambda job, rc: bar.update(1), **run_kwargs)
        failed = [key for key, rc in results.items() if rc != 0]
        if failed:
            print(f"{len(failed)} job(s) failed: {', '.join(failed)}; rerun the same command to retry them "
                  "(--status shows their logs).")
    results = build_report(plan, checked, args.ensemble)
    report = Path(args.out).resolve() / "report" / "report.md"
    print(f"report: {report} ({len(results['missing'])} cell(s) still missing)")
    return 0
