"""The jobs of a cross-validation experiment and the files that pin it down.

An experiment is (configs) x (splits) x (runs) x (training fractions). Every job is one normal
training (``python -m perforation_d2 train``) with its own ``OUTPUT_DIR`` under ``DIR/jobs/``,
training on one split's training side and predicting its held-out side. The split files the
jobs train on are written once under ``DIR/splits/``; ``DIR/experiment.json`` records the
cohort, each config's merged content and the overrides, so that running the same command again
continues the same experiment and a changed config or override is refused instead of mixing two
experiments in one table. The options that change what a job computes (the time-use diagnostic,
periodic evaluation for the training curve) are part of that record too.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..data.cohort import load_cohort, series_labels
from ..data.register import safe_name
from ..data.splits import leave_one_cohort_out, make_patient_folds, read_splits
from ..engine.time_use import ablation_predictions_path
from ..errors import DSAInputError
from ..io.atomic import atomic_write_json
from ..io.json_io import read_json

EXPERIMENT_FILE = "experiment.json"
# The name the jobs register the cohort under (their datasets: <name>_fold{k}_train / _val).
DATASET_NAME = "crossval"
KFOLD, LOCO = "kfold", "loco"
# The clip ablations of the time-use diagnostic a temporal job adds to its normal predictions
# (perforation_d2.data.clip_ablation.CLIP_ABLATIONS without "none": the normal predictions are those).
TIME_USE_ABLATIONS = ("centre", "reverse", "shuffle")


@dataclass(frozen=True)
class Job:
    """One training: a config on one split's training side, for one run (seed) and fraction."""

    config: str
    split_set: str  # "kfold", "loco", or "kfold_frac0.5" / "loco_frac0.5" for the learning curve
    split: str  # "fold0", "loco_siteA"
    run: int
    fraction: float
    val_video_ids: tuple[int, ...]  # the held-out series this job predicts
    config_file: Path
    splits_json: Path
    output_dir: Path
    time_use: bool = False  # also evaluate the final model under each clip ablation
    eval_period: int = 0  # evaluate on the held-out side every N iterations (training curve only)
    # Detectron2's metrics.json keeps only the latest value of a key between two log writes: a
    # log period longer than the evaluation period would lose evaluations, so it is lowered to it.
    log_period: int = 0

    @property
    def key(self) -> str:
        return f"{self.config}/{self.split_set}/{self.split}/run{self.run}"

    @property
    def train_set(self) -> str:
        return f"{DATASET_NAME}_{self.split}_train"

    @property
    def test_set(self) -> str:
        return f"{DATASET_NAME}_{self.split}_val"

    @property
    def predictions_file(self) -> Path:
        """The held-out predictions the training's final evaluation writes."""
        return self.output_dir / "inference" / self.test_set / "predictions.json"

    def ablation_predictions_file(self, ablation: str) -> Path:
        """The held-out predictions of the final model with every clip ablated (time-use diagnostic)."""
        return Path(ablation_predictions_path(self.output_dir / "inference" / self.test_set, ablation))

    @property
    def result_files(self) -> list[Path]:
        """What a finished job has written: its predictions, and those of each ablation when asked."""
        ablated = [self.ablation_predictions_file(mode) for mode in TIME_USE_ABLATIONS] if self.time_use else []
        return [self.predictions_file, *ablated]

    @property
    def metrics_file(self) -> Path:
        """Detectron2's ``metrics.json``: the periodic evaluations' ``dsa/AUC`` among the losses."""
        return self.output_dir / "metrics.json"


@dataclass
class ExperimentPlan:
    out: Path
    cohort_json: Path
    configs: dict[str, Path]
    runs: int
    fractions: list[float]
    loco: bool
    overrides: list[str]
    jobs: list[Job] = field(default_factory=list)
    time_use: bool = False
    curve_points: int = 0

    def dataset_opts(self, job: Job) -> list[str]:
        return [
            "DATASETS.DSA.COHORT_JSON", str(self.cohort_json),
            "DATASETS.DSA.SPLITS_JSON", str(job.splits_json),
            "DATASETS.DSA.COHORT_NAME", DATASET_NAME,
            "DATASETS.TRAIN", f"('{job.train_set}',)",
            "DATASETS.TEST", f"('{job.test_set}',)",
        ]

    def train_argv(self, job: Job, resume: bool) -> list[str]:
        """Arguments of ``train`` for ``job`` (``--resume`` continues its last checkpoint)."""
        argv = ["--config-file", str(job.config_file)]
        if resume:
            argv.append("--resume")
        # The user's overrides first, then what makes the job this job (they cannot be overridden).
        extra = ["TEST.DSA.TIME_USE_DIAGNOSTIC", "True"] if job.time_use else []
        if job.eval_period:
            extra += ["TEST.EVAL_PERIOD", str(job.eval_period)]
        if job.log_period:
            extra += ["SOLVER.LOG_PERIOD", str(job.log_period)]
        return argv + [*self.overrides, *self.dataset_opts(job), *extra, "SEED", str(job.run),
                       "OUTPUT_DIR", str(job.output_dir)]


def parse_config_arguments(values: Sequence[str]) -> dict[str, Path]:
    """``[NAME=]CFG`` arguments -> {name: config file}; the name defaults to the file's stem."""
    configs: dict[str, Path] = {}
    for value in values:
        name, _, path = value.rpartition("=") if "=" in value else ("", "", value)
        path_obj = Path(path).expanduser().resolve()
        name = name or path_obj.stem
        if not path_obj.is_file():
            raise DSAInputError(f"{path}: config file not found (--config {value}).")
        if name in configs or safe_name(name) != name:
            raise DSAInputError(
                f"--config {value}: model names must be unique and made of letters, digits, '_', '.', '-' "
                "(write --config NAME=CFG)."
            )
        configs[name] = path_obj
    if not configs:
        raise DSAInputError("cross-validate: give at least one --config [NAME=]CFG.")
    return configs


def subsample_training_patients(entry: dict, cohort: dict, fraction: float, seed: int) -> dict:
    """``entry`` with its training side cut to ``fraction`` of its patients, stratified.

    Patients are drawn separately among those with a positive series and the others (at least
    one of each), so the learning curve keeps the class balance; the held-out side is unchanged.
    """
    labels = series_labels(cohort)
    patient_of = {video["id"]: video["patient_id"] for video in cohort["videos"]}
    train = entry["train_video_ids"]
    patients: dict[str, list[int]] = {}
    for video_id in train:
        patients.setdefault(patient_of[video_id], []).append(video_id)
    positive = sorted(p for p, vids in patients.items() if any(labels[v] for v in vids))
    negative = sorted(p for p in patients if p not in set(positive))
    rng = np.random.default_rng(seed)
    kept: list[str] = []
    for group in (positive, negative):
        if group:
            count = min(len(group), max(1, round(fraction * len(group))))
            kept += [group[i] for i in sorted(rng.choice(len(group), size=count, replace=False))]
    keep = set(kept)
    return {**entry, "train_video_ids": sorted(v for v in train if patient_of[v] in keep),
            "train_patients": sorted(keep), "train_fraction": fraction}


def _single_class_problems(entries: list[dict], labels: dict[int, int], kind: str) -> list[str]:
    problems = []
    for entry in entries:
        name = f"fold {entry['fold']}" if kind == KFOLD else f"held-out cohort {entry['heldout']!r}"
        for side in ("train", "val"):
            classes = {labels[v] for v in entry[f"{side}_video_ids"]}
            if classes != {0, 1}:
                what = "no series" if not classes else f"only {'positive' if 1 in classes else 'negative'} series"
                problems.append(f"{name}: its {side} side has {what}")
    return problems


def _split_entries(cohort: dict, cohort_json: Path, args: argparse.Namespace) -> list[dict]:
    if args.splits:
        splits = read_splits(args.splits, cohort)
        chosen = splits.loco if args.loco else splits.folds
        if not chosen and not args.loco:
            raise DSAInputError(f"{args.splits}: the splits file holds no folds.")
        entries = [{("heldout" if split.kind == "loco" else "fold"): split.key,
                    "train_video_ids": list(split.train_video_ids), "val_video_ids": list(split.val_video_ids)}
                   for split in chosen]
        if entries:
            return entries
    if args.loco:
        entries = leave_one_cohort_out(cohort, source=str(cohort_json))
        if not entries:
            raise DSAInputError(f"{cohort_json}: --loco needs series from at least two cohorts (sites); "
                                "all series of this cohort share one 'cohort' value.")
        return entries
    if args.folds is None:
        raise DSAInputError("cross-validate: give --splits S.json, or --folds K (with --seed S) to make them, or --loco.")
    return make_patient_folds(cohort, args.folds, args.seed, source=str(cohort_json))


def _write_pinned(path: Path, obj: Any, what: str) -> None:
    """Write ``obj`` to ``path`` once; a later run must find the same content there."""
    if path.exists():
        if read_json(path, f"experiment {what} file") != obj:
            raise DSAInputError(
                f"{path}: this experiment's {what} differ from what this command would use now (another cohort, "
                "splits or seed?); use a new --out for a different experiment."
            )
        return
    atomic_write_json(path, obj)


def _check_fingerprint(out: Path, fingerprint: dict) -> None:
    path = out / EXPERIMENT_FILE
    if not path.exists():
        if out.exists() and any(entry.name != "splits" for entry in out.iterdir()):
            # Only a folder this command made (it holds experiment.json) is continued.
            raise DSAInputError(
                f"{out}: the folder is not empty and holds no experiment ({EXPERIMENT_FILE}); choose a new or "
                "empty --out (nothing was written)."
            )
        atomic_write_json(path, fingerprint)
        return
    stored = read_json(path, "experiment file")
    problems = []
    if stored.get("cohort") != fingerprint["cohort"]:
        problems.append(f"the cohort was {stored.get('cohort', {}).get('path')}")
    if stored.get("overrides") != fingerprint["overrides"]:
        problems.append(f"the overrides were {stored.get('overrides')} (now {fingerprint['overrides']})")
    # An experiment recorded before these options existed ran neither.
    if stored.get("time_use", False) != fingerprint["time_use"]:
        problems.append(f"the time-use diagnostic was {'on' if stored.get('time_use') else 'off (--no-time-use)'} "
                        f"(now {'on' if fingerprint['time_use'] else 'off'})")
    if stored.get("curve_points", 0) != fingerprint["curve_points"]:
        problems.append(f"--curve-points was {stored.get('curve_points', 0)} (now {fingerprint['curve_points']})")
    for name, digest in fingerprint["configs"].items():
        if name in stored.get("configs", {}) and stored["configs"][name]["sha256"] != digest["sha256"]:
            problems.append(f"config {name!r} had other content ({stored['configs'][name]['path']})")
    if problems:
        raise DSAInputError(
            f"{out}: this folder holds an experiment with other settings: {'; '.join(problems)}. Running the same "
            "command again continues it; for changed settings use a new --out."
        )
    merged = {**stored, "configs": {**stored.get("configs", {}), **fingerprint["configs"]},
              "time_use": fingerprint["time_use"], "curve_points": fingerprint["curve_points"],
              "runs": max(stored.get("runs", 0), fingerprint["runs"]),
              "fractions": sorted(set(stored.get("fractions", [])) | set(fingerprint["fractions"]))}
    if merged != stored:
        atomic_write_json(path, merged, overwrite=True)


def build_plan(args: argparse.Namespace, config_digests: dict[str, str],
               checked: dict[str, dict] | None = None) -> ExperimentPlan:
    """The experiment of ``args`` (validated: cohort, splits, classes, fractions); writes its pins.

    ``config_digests`` maps each model name to :func:`config_digest` of its config file;
    ``checked`` is :func:`~.executors.check_configs`' description of each merged config (its
    ``num_frames`` and ``max_iter`` decide the time-use diagnostic and the evaluation period).
    """
    out = Path(args.out).expanduser().resolve()
    cohort_json = Path(args.cohort).expanduser().resolve()
    cohort = load_cohort(cohort_json)
    configs = parse_config_arguments(args.config)
    fractions = sorted(set(args.train_fraction or [1.0]))
    for fraction in fractions:
        if not 0.0 < fraction <= 1.0:
            raise DSAInputError(f"--train-fraction must lie in (0, 1], got {fraction}.")
    if isinstance(args.runs, bool) or args.runs < 1:
        raise DSAInputError(f"--runs must be >= 1, got {args.runs}.")
    time_use = not getattr(args, "no_time_use", False)
    curve_points = int(getattr(args, "curve_points", 0) or 0)
    if curve_points < 0:
        raise DSAInputError(f"--curve-points must be >= 0, got {curve_points}.")
    checked = checked or {}
    entries = _split_entries(cohort, cohort_json, args)
    kind = LOCO if args.loco else KFOLD
    problems = _single_class_problems(entries, series_labels(cohort), kind)
    if problems:
        raise DSAInputError(
            f"{args.splits or cohort_json}: every split needs positive and negative series on both sides "
            f"(AUC and the operating point are undefined otherwise): {'; '.join(problems)}."
        )
    _check_fingerprint(out, {
        "cohort": {"path": str(cohort_json), "sha256": hashlib.sha256(cohort_json.read_bytes()).hexdigest()},
        "configs": {name: {"path": str(path), "sha256": config_digests[name]} for name, path in configs.items()},
        "overrides": list(args.opts), "runs": args.runs, "fractions": fractions, "split_kind": kind,
        "time_use": time_use, "curve_points": curve_points,
    })
    (out / "splits").mkdir(parents=True, exist_ok=True)
    plan = ExperimentPlan(out, cohort_json, configs, args.runs, fractions, args.loco, list(args.opts),
                          time_use=time_use, curve_points=curve_points)
    for fraction in fractions:
        split_set = kind if fraction == 1.0 else f"{kind}_frac{fraction:g}"
        if fraction == 1.0:
            chosen = entries
        else:
            chosen = [subsample_training_patients(entry, cohort, fraction, seed=index)
                      for index, entry in enumerate(entries)]
        splits_json = out / "splits" / f"{split_set}.json"
        _write_pinned(splits_json, {"folds": chosen, "loco": []} if kind == KFOLD else {"folds": [], "loco": chosen},
                      "splits")
        for name, config_file in configs.items():
            # Only the main split set (all training patients) gets the diagnostics; a single-frame
            # model has no clip to ablate.
            info = checked.get(name, {})
            job_time_use = time_use and fraction == 1.0 and info.get("num_frames", 1) > 1
            eval_period = max(1, info.get("max_iter", 0) // curve_points) if curve_points and fraction == 1.0 else 0
            log_period = eval_period if eval_period and info.get("log_period", 0) > eval_period else 0
            for entry in chosen:
                split = f"fold{entry['fold']}" if kind == KFOLD else f"loco_{safe_name(str(entry['heldout']))}"
                for run in range(args.runs):
                    plan.jobs.append(Job(name, split_set, split, run, fraction, tuple(entry["val_video_ids"]),
                                         config_file, splits_json,
                                         out / "jobs" / name / split_set / split / f"run{run}",
                                         time_use=job_time_use, eval_period=eval_period, log_period=log_period))
    return plan


def config_digest(config_file: Path) -> str:
    """Digest of a config as its author wrote it: the leaf YAML and every ``_BASE_`` it builds on.

    The package's own defaults are left out on purpose: a new key with a default that an upgrade
    adds does not make a running experiment "changed"; an edited YAML does.
    """
    digest = hashlib.sha256()
    pending, seen = [Path(config_file).resolve()], set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        text = path.read_bytes()
        digest.update(str(path.name).encode() + b"\0" + text + b"\0")
        base = (yaml.safe_load(text) or {}).get("_BASE_") if text.strip() else None
        if isinstance(base, str):
            pending.append((path.parent / base).resolve())
    return digest.hexdigest()
