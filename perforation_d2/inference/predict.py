"""``python -m perforation_d2 predict``: a trained model on DICOM series or a cohort, with a decision.

::

    python -m perforation_d2 predict --config-file CFG --weights W --input PATH --out DIR
        [--threshold X | --operating-point youden|spec95] [--device cpu|cuda] [--overwrite]
        [--salt SALT] [--batch-size N] [KEY VALUE ...]

``PATH`` is a multi-frame DICOM file, a folder of DICOM files (one or more series, see
:mod:`perforation_d2.data.dicom.reader`) or a cohort JSON (SPEC section 1). Every series is
predicted whole with the cached series inference (:mod:`perforation_d2.modeling.series_inference`:
the backbone runs once per frame), then series-level optimisation (SPEC section 3) keeps one
trajectory per series. Outputs in ``DIR``:

``predictions.json``
    COCO results, the top detection of every frame *before* series optimisation, in
    original-frame pixels: the file ``evaluate --pred`` reads (it applies SO itself).
``predictions_so.json``
    COCO results *after* series optimisation: the surviving trajectory of each series, each box
    with the trajectory's mean score.
``series_scores.json``
    ``{video_id: {...}}`` (video ids as strings, like ``metrics.json``'s ``series_scores``), each
    with ``name``, ``patient_id``, ``num_frames``, ``frame_time_ms``, ``image_ids`` (the
    ``image_id`` of each frame, in order), ``score`` (max score after SO, 0 without detection),
    ``perforation`` (``"yes"`` when ``score >= threshold``), ``threshold``, ``operating_point``
    (``youden``, ``spec95`` or ``manual``), ``frame_of_max`` (0-based frame of the trajectory's
    highest raw score, None without detection), ``box`` (``[x, y, w, h]`` there), ``gif`` and
    ``key_frame`` (paths relative to ``DIR``). Frames are always numbered by 0-based ``frame_id``,
    as in the cohort JSON: in this file, on the key frame's caption and in the console summary.
``overlays/<video_id>_<name>.gif`` / ``..._key.png``
    Every frame with the surviving box and score drawn (one GIF frame per series frame), and the
    key frame (``frame_of_max``; the middle frame without detection) at full resolution.
``manifest.json``
    Written last: every output file with its SHA-256. A folder without it holds no complete run.

For a cohort JSON the video and image ids are the cohort's; for DICOM input the series are numbered
1, 2, ... in the reader's order, frames get consecutive image ids, ``name`` is the pseudonymised
series key and ``patient_id`` the salted patient hash (``--salt``, else ``$PERFORATION_D2_SALT``,
else the per-user salt file of :func:`perforation_d2.data.dicom.reader.resolve_salt`, the one
``prepare-dicom`` uses, so names agree across runs and with your imports). No DICOM attribute
value or salt reaches any output or message.

The decision threshold is the operating point stored with the model, chosen on validation data
during training: the ``"operating_point"`` entry inside the checkpoint, else ``operating_point.json``
beside the weights. ``--operating-point`` picks which one is required (default
``TEST.DSA.OPERATING_POINT`` of the config, i.e. ``youden``); ``--threshold`` overrides both.

Weights load only through :class:`~perforation_d2.engine.SafeDetectionCheckpointer`
(``weights_only``), and must match the config exactly. All outputs are written into a hidden staging
folder inside ``DIR`` and moved into place at the end under an exclusive lock (``DIR/.predict.lock``,
removed on release),
manifest last; so two runs into one ``DIR`` never mix files (without ``--overwrite`` the second one
stops with a clear error, with it the last run's set replaces the first one's as a whole), and an
interrupted run leaves only its staging folder, which the next completed run removes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.register import safe_name
from ..errors import DSAInputError
from ..io.atomic import atomic_write_json, check_outputs_free, exclusive_lock

PREDICTIONS_FILE = "predictions.json"
PREDICTIONS_SO_FILE = "predictions_so.json"
SERIES_SCORES_FILE = "series_scores.json"
OVERLAY_DIR = "overlays"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".predict.lock"
_STAGING_PREFIX = ".predict-"
_STAGING_SUFFIX = ".part"


# ---- inputs ----------------------------------------------------------------------------------
@dataclass
class SeriesSource:
    """One series to predict; ``load()`` returns its frames ``(F, H, W)`` uint8 and frame time."""

    video_id: int
    name: str
    patient_id: str
    num_frames: int
    image_ids: list[int]
    load: Callable[[], tuple[np.ndarray, float | None]]


def _cohort_sources(json_file: Path) -> list[SeriesSource]:
    from ..data.cohort import default_image_root, frames_by_video, load_cohort
    from ..data.register import cohort_dataset_dicts
    from ..modeling.series_inference import load_series_frames

    cohort = load_cohort(json_file)
    frames = frames_by_video(cohort)
    first_record = {}  # video id -> its first frame's dataset dict (it lists the series' files)
    for record in cohort_dataset_dicts(cohort, default_image_root(json_file)):
        first_record.setdefault(record["video_id"], record)

    def loader(video: dict) -> Callable[[], tuple[np.ndarray, float | None]]:
        def load() -> tuple[np.ndarray, float | None]:
            return load_series_frames(first_record[video["id"]]), video.get("frame_time_ms")

        return load

    return [
        SeriesSource(
            video_id=video["id"], name=video["name"], patient_id=video["patient_id"],
            num_frames=len(frames[video["id"]]), image_ids=[image["id"] for image in frames[video["id"]]],
            load=loader(video),
        )
        for video in cohort["videos"]
        if frames[video["id"]]
    ]


def _dicom_sources(path: Path, salt: str | None) -> list[SeriesSource]:
    from ..data.dicom.reader import scan_dicom_input

    scan = scan_dicom_input(path, salt)
    if scan.skipped:
        print(f"{len(scan.skipped)} input file(s) skipped: " + "; ".join(scan.skipped[:5])
              + ("; ..." if len(scan.skipped) > 5 else ""), file=sys.stderr)
    sources = []
    next_image_id = 1
    for index, plan in enumerate(scan.plans):

        def load(plan=plan) -> tuple[np.ndarray, float | None]:
            series = scan.read(plan)
            return series.frames, series.frame_time_ms

        sources.append(SeriesSource(
            video_id=index + 1, name=plan.series_key, patient_id=plan.pseudo_patient_id,
            num_frames=plan.num_frames,
            image_ids=list(range(next_image_id, next_image_id + plan.num_frames)), load=load,
        ))
        next_image_id += plan.num_frames
    return sources


def find_series(path: str | os.PathLike, salt: str | None = None) -> list[SeriesSource]:
    """The series at ``path``: a cohort JSON, a DICOM file or a folder of DICOM files."""
    path = Path(path)
    if not path.exists():
        raise DSAInputError(
            f"{path}: no such file or folder; --input takes a DICOM file, a folder of DICOM files "
            "or a cohort JSON."
        )
    if path.is_file() and path.suffix.lower() == ".json":
        sources = _cohort_sources(path)
    else:
        sources = _dicom_sources(path, salt)
    if not sources:
        raise DSAInputError(f"{path}: no series with frames to predict.")
    return sources


# ---- model, weights and operating point ------------------------------------------------------
def load_model(config_file: str, weights: str, device: str, opts: Sequence[str] = ()) -> tuple[Any, Any, dict]:
    """``(cfg, model, checkpoint extras)``: the model of ``config_file`` with ``weights``, in eval mode.

    The weights load through the safe checkpointer and must match the model exactly: a missing,
    unexpected or differently shaped parameter is a :class:`DSAInputError` (a checkpoint of
    another architecture or clip length would otherwise run half-random).
    """
    from detectron2.modeling import build_model

    from ..engine.checkpoint import SafeDetectionCheckpointer
    from ..engine.trainer import build_config

    cfg = build_config(argparse.Namespace(config_file=config_file, opts=list(opts)))
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    if not os.path.isfile(weights):
        raise DSAInputError(f"{weights}: weights file not found (--weights).")
    model = build_model(cfg)
    model.eval()
    class _RecordingCheckpointer(SafeDetectionCheckpointer):
        def _load_model(self, checkpoint: dict) -> Any:
            self.incompatible = super()._load_model(checkpoint)
            return self.incompatible

    checkpointer = _RecordingCheckpointer(model)
    extras = checkpointer.load(weights, checkpointables=[])
    incompatible = checkpointer.incompatible
    problems = []
    if incompatible.incorrect_shapes:
        shown = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in incompatible.incorrect_shapes[:3])
        problems.append(f"{len(incompatible.incorrect_shapes)} parameter(s) of another shape ({shown})")
    if incompatible.missing_keys:
        problems.append(f"{len(incompatible.missing_keys)} parameter(s) missing ({', '.join(incompatible.missing_keys[:3])})")
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} unexpected parameter(s) ({', '.join(incompatible.unexpected_keys[:3])})"
        )
    if problems:
        raise DSAInputError(
            f"{weights}: the weights do not match the model of {config_file}: " + "; ".join(problems)
            + ". Use the config (and KEY VALUE overrides) the model was trained with."
        )
    return cfg, model, extras


@dataclass
class Threshold:
    value: float
    method: str  # "youden", "spec95" or "manual"
    source: str
    # Whether the scores the threshold was chosen on went through series optimisation: the
    # decision is only meaningful on scores computed the same way.
    series_optimization: bool = True


def _stored_point(point: Any, method: str) -> tuple[float, bool] | None:
    """``(threshold, series_optimization)`` of a stored operating point of ``method``, if any."""
    if isinstance(point, dict) and point.get("method") == method:
        value = point.get("threshold")
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value), bool(point.get("series_optimization", True))
    return None


def choose_threshold(weights: str, extras: dict, method: str, manual: float | None,
                     series_optimization: bool = True) -> Threshold:
    """The decision threshold: ``manual`` when given (scores computed with ``series_optimization``),
    else the stored ``method`` operating point (with the SO setting it was chosen under)."""
    from ..engine.hooks import OPERATING_POINT_FILE, OPERATING_POINTS

    if manual is not None:
        if not math.isfinite(manual):
            raise DSAInputError(f"--threshold {manual}: must be a finite number.")
        return Threshold(float(manual), "manual", "--threshold", series_optimization)
    if method not in OPERATING_POINTS:
        raise DSAInputError(f"--operating-point {method!r}: valid choices are {', '.join(OPERATING_POINTS)}.")
    stored_point = _stored_point(extras.get("operating_point"), method)
    if stored_point is not None:
        return Threshold(stored_point[0], method, f"{weights} (checkpoint)", stored_point[1])
    side_file = Path(weights).resolve().parent / OPERATING_POINT_FILE
    if side_file.is_file():
        try:
            stored = json.loads(side_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DSAInputError(f"{side_file}: not a readable operating point file ({err}).") from None
        stored_point = _stored_point(stored, method)
        if stored_point is not None:
            return Threshold(stored_point[0], method, str(side_file), stored_point[1])
    raise DSAInputError(
        f"{weights}: no {method} operating point is stored with these weights (neither in the checkpoint "
        f"nor in {side_file}); it is chosen on validation data during training (TEST.DSA.OPERATING_POINT "
        "with an evaluation set). Pass --threshold X to decide at a threshold of your choice."
    )


# ---- one series ------------------------------------------------------------------------------
@dataclass
class SeriesResult:
    raw: list[dict]  # COCO results before SO
    optimized: list[dict]  # COCO results after SO
    boxes_xyxy: list[list[float] | None]  # per frame, after SO
    scores: list[float | None]  # per frame, after SO
    score: float
    frame_of_max: int | None


def predict_one_series(predictor, frames: np.ndarray, image_ids: Sequence[int],
                       series_optimization: bool = True) -> SeriesResult:
    """Top-1 per frame, SO (unless ``series_optimization`` is False), and the series score of one series."""
    from ..evaluation.evaluator import top_detection_to_coco
    from ..evaluation.series_optimization import Detection, optimize_series

    instances = predictor(frames)
    raw_per_frame = [top_detection_to_coco(inst, image_id) for inst, image_id in zip(instances, image_ids)]
    detections = [Detection(tuple(r[0]["bbox"]), r[0]["score"]) if r else None for r in raw_per_frame]
    optimized = optimize_series(detections) if series_optimization else list(detections)
    kept = [t for t, d in enumerate(optimized) if d is not None]
    frame_of_max = max(kept, key=lambda t: (detections[t].score, -t)) if kept else None
    coco_so, boxes, scores = [], [], []
    for t, detection in enumerate(optimized):
        if detection is None:
            boxes.append(None)
            scores.append(None)
            continue
        x, y, w, h = detection.bbox
        boxes.append([x, y, x + w, y + h])
        scores.append(detection.score)
        coco_so.append({**raw_per_frame[t][0], "score": detection.score})
    return SeriesResult(
        raw=[r[0] for r in raw_per_frame if r], optimized=coco_so, boxes_xyxy=boxes, scores=scores,
        score=max((d.score for d in optimized if d is not None), default=0.0), frame_of_max=frame_of_max,
    )


# ---- all-or-nothing output set ---------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StagedOutputs:
    """A set of output files written into a hidden staging folder, then moved into ``out_dir``.

    ``names`` are paths relative to ``out_dir``. :meth:`commit` takes ``out_dir``'s lock, checks
    again that nothing would be clobbered (unless ``overwrite``), removes the previous run's
    manifest and files, moves the new files in and writes ``manifest.json`` last.
    """

    def __init__(self, out_dir: Path, names: Sequence[str], overwrite: bool):
        self.out_dir = out_dir
        self.names = list(names)
        self.overwrite = overwrite
        self.staging = out_dir / f"{_STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{_STAGING_SUFFIX}"

    def final_paths(self) -> list[Path]:
        return [self.out_dir / name for name in [*self.names, MANIFEST_FILE]]

    def __enter__(self) -> StagedOutputs:
        self.staging.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def path(self, name: str) -> Path:
        return self.staging / name

    def _remove_stale_staging(self) -> None:
        for entry in self.out_dir.glob(f"{_STAGING_PREFIX}*{_STAGING_SUFFIX}"):
            match = re.fullmatch(rf"{re.escape(_STAGING_PREFIX)}(\d+)-[0-9a-f]+{re.escape(_STAGING_SUFFIX)}", entry.name)
            if entry != self.staging and match and not _pid_alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)

    def _previous_files(self) -> list[Path]:
        manifest = self.out_dir / MANIFEST_FILE
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError, AttributeError):
            return []
        root = self.out_dir.resolve()
        previous = []
        for name in listed:
            path = (self.out_dir / name).resolve()
            if path.parent != root and root not in path.parents:
                continue  # never touch anything outside out_dir
            previous.append(path)
        return previous

    def commit(self) -> None:
        missing = [name for name in self.names if not self.path(name).is_file()]
        if missing:
            raise RuntimeError(f"outputs not written: {missing}")
        hashes = {name: _sha256(self.path(name)) for name in self.names}
        with exclusive_lock(self.out_dir / LOCK_FILE, blocking=True):
            self._remove_stale_staging()
            if not self.overwrite:
                existing = [str(p) for p in self.final_paths() if p.exists()]
                if existing:
                    raise DSAInputError(
                        f"{existing[0]}: appeared while this run was predicting (another predict run into "
                        f"{self.out_dir}?); nothing of this run was written. Pass --overwrite to replace it."
                    )
            previous = self._previous_files()
            (self.out_dir / MANIFEST_FILE).unlink(missing_ok=True)
            new = {(self.out_dir / name).resolve() for name in self.names}
            for path in previous:
                if path not in new:
                    path.unlink(missing_ok=True)
            for name in self.names:
                target = self.out_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path(name), target)
            atomic_write_json(
                self.out_dir / MANIFEST_FILE,
                {"command": "perforation_d2 predict", "files": hashes},
                overwrite=True,
            )


def overlay_names(source: SeriesSource) -> tuple[str, str]:
    # The video id prefix keeps the name unique, visible and non-empty whatever the series name.
    stem = f"{OVERLAY_DIR}/{source.video_id:04d}_{safe_name(source.name)[:80]}"
    return f"{stem}.gif", f"{stem}_key.png"


# ---- the command -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", required=True, metavar="CFG", help="the config the model was trained with")
    parser.add_argument("--weights", required=True, metavar="W", help="trained weights (.pth)")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="a multi-frame DICOM file, a folder of DICOM files, or a cohort JSON")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    decision = parser.add_mutually_exclusive_group()
    decision.add_argument("--threshold", type=float, default=None, metavar="X",
                          help="decide 'perforation' at series score >= X instead of the stored operating point")
    decision.add_argument("--operating-point", choices=("youden", "spec95"), default=None,
                          help="which stored operating point decides (default: the config's TEST.DSA.OPERATING_POINT)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N",
                        help="centre frames per temporal/head batch (memory: N + T - 1 frames of features)")
    parser.add_argument("--salt", default=None,
                        help="pseudonymisation salt for DICOM series and patient ids (default: $PERFORATION_D2_SALT, "
                             "else the per-user salt file $PERFORATION_D2_SALT_FILE, default "
                             "~/.config/perforation_d2/salt)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, as for train_net.py")


def _device(requested: str | None) -> str:
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise DSAInputError("--device cuda: no CUDA GPU is available to PyTorch here; use --device cpu.")
    return requested


def run(args: argparse.Namespace) -> int:
    from ..modeling.series_inference import SeriesPredictor
    from ..report.overlays import save_key_frame_png, save_series_gif

    if args.batch_size < 1:
        raise DSAInputError(f"--batch-size {args.batch_size}: must be at least 1.")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DSAInputError(f"{out_dir}: exists and is not a folder (--out).")
    device = _device(args.device)
    sources = find_series(args.input, args.salt)
    names = [PREDICTIONS_FILE, PREDICTIONS_SO_FILE, SERIES_SCORES_FILE]
    for source in sources:
        names.extend(overlay_names(source))
    staged = StagedOutputs(out_dir, names, args.overwrite)
    check_outputs_free(staged.final_paths(), args.overwrite)
    cfg, model, extras = load_model(args.config_file, args.weights, device, args.opts)
    threshold = choose_threshold(
        args.weights, extras, args.operating_point or cfg.TEST.DSA.OPERATING_POINT, args.threshold,
        cfg.TEST.DSA.SERIES_OPTIMIZATION,
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    predictor = SeriesPredictor(model, frame_size=cfg.INPUT.FRAME_SIZE, batch_size=args.batch_size,
                                allow_tf32=cfg.TEST.DSA.ALLOW_TF32)
    raw, optimized, series_scores = [], [], {}
    summary = []
    with staged, tqdm(total=sum(s.num_frames for s in sources), unit="frame", desc="predict",
                      file=sys.stderr, disable=None) as progress:
        for source in sources:
            frames, frame_time_ms = source.load()
            if len(frames) != source.num_frames:
                raise DSAInputError(f"{args.input}: series {source.name} has {len(frames)} frames, "
                                    f"expected {source.num_frames}.")
            result = predict_one_series(predictor, frames, source.image_ids, threshold.series_optimization)
            gif_name, key_name = overlay_names(source)
            save_series_gif(staged.path(gif_name), frames, result.boxes_xyxy, result.scores, frame_time_ms)
            key = result.frame_of_max if result.frame_of_max is not None else len(frames) // 2
            decision = "yes" if result.score >= threshold.value else "no"
            caption = (f"frame_id {key} of {len(frames)} frames  perforation: {decision} "
                       f"(score {result.score:.3f}, threshold {threshold.value:.3f})")
            save_key_frame_png(staged.path(key_name), frames[key], result.boxes_xyxy[key], result.scores[key], caption)
            raw.extend(result.raw)
            optimized.extend(result.optimized)
            box = None
            if result.frame_of_max is not None:
                x0, y0, x1, y1 = result.boxes_xyxy[result.frame_of_max]
                box = [x0, y0, x1 - x0, y1 - y0]
            series_scores[str(source.video_id)] = {
                "name": source.name, "patient_id": source.patient_id, "num_frames": len(frames),
                "frame_time_ms": frame_time_ms, "image_ids": source.image_ids,
                "score": result.score, "perforation": decision, "threshold": threshold.value,
                "operating_point": threshold.method, "frame_of_max": result.frame_of_max, "box": box,
                "gif": gif_name, "key_frame": key_name,
            }
            summary.append(f"{source.name}: perforation {decision} (score {result.score:.3f}"
                           + (f", frame_id {result.frame_of_max})" if result.frame_of_max is not None else ")"))
            progress.update(source.num_frames)
        atomic_write_json(staged.path(PREDICTIONS_FILE), raw)
        atomic_write_json(staged.path(PREDICTIONS_SO_FILE), optimized)
        atomic_write_json(staged.path(SERIES_SCORES_FILE), series_scores)
        staged.commit()
    print(f"threshold {threshold.value:.4f} ({threshold.method}, from {threshold.source})")
    for line in summary:
        print(line)
    print(f"wrote {len(names) + 1} files to {out_dir}")
    return 0
