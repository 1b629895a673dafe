"""Where cross-validation jobs run: local child processes in parallel, or submitit.

- :class:`LocalExecutor`: up to ``jobs`` trainings at once on this machine, the CPU threads split
  between them and one GPU each when there are GPUs, with a progress bar over jobs.
- :class:`SubmititExecutor`: one submitit job per training, on Slurm (``cluster="slurm"``) or on
  submitit's local executor (``cluster="local"``, the same code path on one machine). Jobs are
  :class:`submitit.helpers.Checkpointable`: on preemption or timeout submitit requeues them and
  they resume from their last checkpoint. A job with several GPUs trains with Detectron2's DDP
  (``--num-gpus``) inside its allocation.

Both run :func:`perforation_d2.experiments.jobs.execute_job`; a failed job never stops the others.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import submitit

from ..errors import DSAInputError
from .jobs import LOG_FILE, execute_job, write_status
from .plan import ExperimentPlan, Job

Progress = Callable[[Job, int], None]


def check_configs(configs: dict[str, Path], overrides: Sequence[str]) -> dict[str, dict]:
    """Merge and build every config (with the overrides) before any job starts.

    Returns ``{name: {"dump": merged YAML, "series_optimization": bool, "num_frames": int,
    "max_iter": int, "log_period": int}}``;
    a config that does not merge or whose model does not build is one paragraph naming it.
    """
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ..config import add_perforation_config

    checked = {}
    for name, path in configs.items():
        cfg = get_cfg()
        add_perforation_config(cfg)
        try:
            cfg.merge_from_file(str(path))
            cfg.merge_from_list(list(overrides))
            probe = cfg.clone()
            probe.MODEL.DEVICE = "cpu"
            with torch.no_grad():
                build_model(probe)
        except Exception as err:  # any failure here is the config's: report it before training anything
            raise DSAInputError(f"{path}: config {name!r} does not build ({type(err).__name__}: {err}).") from None
        checked[name] = {
            "dump": cfg.dump(),
            "series_optimization": bool(cfg.TEST.DSA.SERIES_OPTIMIZATION),
            "num_frames": int(cfg.MODEL.TEMPORAL.NUM_FRAMES),
            "max_iter": int(cfg.SOLVER.MAX_ITER),
            "log_period": int(cfg.SOLVER.LOG_PERIOD),
        }
    return checked


def _visible_gpus() -> list[str]:
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


class LocalExecutor:
    """Jobs as child processes of this one, ``jobs`` at a time."""

    def __init__(self, jobs: int = 1, threads_per_job: int | None = None):
        self.jobs = max(1, jobs)
        self.threads = threads_per_job or max(1, (os.cpu_count() or 1) // self.jobs)
        self._gpus = _visible_gpus()
        self._free_gpus = list(self._gpus)
        self._lock = threading.Lock()

    def _run_one(self, plan: ExperimentPlan, job: Job) -> int:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        gpu = None
        if self._gpus:
            with self._lock:
                gpu = self._free_gpus.pop(0) if self._free_gpus else None
            env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
        job.output_dir.mkdir(parents=True, exist_ok=True)
        log_path = job.output_dir / LOG_FILE
        argv = [sys.executable, "-m", "perforation_d2.experiments.jobs", str(job.output_dir), "--",
                *plan.train_argv(job, resume=False)]
        try:
            with open(log_path, "a", encoding="utf-8") as log:
                returncode = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        finally:
            if gpu is not None:
                with self._lock:
                    self._free_gpus.append(gpu)
        if returncode < 0:
            # Killed by a signal before it could say so itself.
            write_status(job.output_dir, state="failed", detail=f"killed by signal {-returncode}", log=str(log_path))
        return returncode

    def run(self, plan: ExperimentPlan, jobs: Sequence[Job], progress: Progress | None = None) -> dict[str, int]:
        results: dict[str, int] = {}

        def work(job: Job) -> None:
            results[job.key] = self._run_one(plan, job)
            if progress:
                progress(job, results[job.key])

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            list(pool.map(work, jobs))
        return results


class TrainingJob(submitit.helpers.Checkpointable):
    """The callable submitit runs: one job. As a ``Checkpointable``, submitit requeues it with the
    same arguments on preemption or timeout; started again, :func:`execute_job` finds the job's
    last checkpoint and resumes from it."""

    def __init__(self, output_dir: Path, train_args: list[str]):
        self.output_dir = Path(output_dir)
        self.train_args = train_args

    def __call__(self) -> int:
        returncode = execute_job(self.output_dir, self.train_args, log=os.environ.get("SUBMITIT_STDOUT"))
        if returncode != 0:
            raise RuntimeError(f"training of {self.output_dir} exited with status {returncode}")
        return returncode


class SubmititExecutor:
    """Jobs through submitit: Slurm, or submitit's local executor (``cluster="local"``)."""

    @staticmethod
    def check_cluster(cluster: str) -> None:
        """One paragraph, before anything is written, when Slurm is not reachable from here."""
        if cluster != "slurm":
            return
        if shutil.which("sbatch") is None:
            raise DSAInputError(
                "--executor slurm: no Slurm here (the sbatch command is not on PATH); run on a Slurm login node, "
                "or use --executor local."
            )
        probe = subprocess.run(["sinfo", "--noheader", "--summarize"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            raise DSAInputError(f"--executor slurm: Slurm does not answer (sinfo: {probe.stderr.strip()[:300]}).")

    def __init__(self, folder: Path, cluster: str = "slurm", partition: str | None = None, gpus_per_job: int = 0,
                 timeout_min: int = 720, slurm_extra: Sequence[str] = (), cpus_per_job: int | None = None):
        self.gpus_per_job = gpus_per_job
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params: dict[str, object] = {"timeout_min": timeout_min, "nodes": 1, "tasks_per_node": 1}
        if gpus_per_job:
            params["gpus_per_node"] = gpus_per_job
        if cpus_per_job:
            params["cpus_per_task"] = cpus_per_job
        if cluster == "slurm":
            if partition:
                params["slurm_partition"] = partition
            extra = dict(item.split("=", 1) if "=" in item else (item, "") for item in slurm_extra)
            if extra:
                params["slurm_additional_parameters"] = extra
        self.executor.update_parameters(**params)

    def run(self, plan: ExperimentPlan, jobs: Sequence[Job], progress: Progress | None = None,
            wait: bool = True) -> dict[str, int]:
        ddp = ["--num-gpus", str(self.gpus_per_job)] if self.gpus_per_job > 1 else []
        submitted = []
        for job in jobs:
            job.output_dir.mkdir(parents=True, exist_ok=True)
            argv = plan.train_argv(job, resume=False)
            task = TrainingJob(job.output_dir, [*argv[:2], *ddp, *argv[2:]])
            submitted.append((job, self.executor.submit(task)))
        results: dict[str, int] = {}
        if not wait:
            return results
        for job, handle in submitted:
            try:
                handle.result()
                results[job.key] = 0
            except Exception as err:  # the job failed; the report says which cell is missing
                write_status(job.output_dir, state="failed", detail=str(err).strip().splitlines()[-1][:500]
                             if str(err).strip() else type(err).__name__, log=str(handle.paths.stderr))
                results[job.key] = 1
            if progress:
                progress(job, results[job.key])
        return results
