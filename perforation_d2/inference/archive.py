"""Predicting every series of an input, on one process or sharded over Detectron2 ``launch`` workers.

The launching process checks everything first (:func:`plan_run`: outputs, model, threshold, the
series of the input, the ``--resume`` progress) and each worker then runs :func:`predict_series`:
every worker finds the same series in the same order, rank 0 opens the output transaction and
says which series are still to do, and worker ``r`` of ``W`` predicts the pending series at
positions ``r, r + W, ...`` (in discovery order). Each finished series is packed with the files
drawn for it (:mod:`.progress`); rank 0 gathers the records (``comm.gather``) and writes the
outputs from the packs in discovery order, so the output folder and its manifest are byte for
byte those of one process. With ``--resume`` the packs go to ``DIR/progress/`` as each series
finishes, so a killed run loses only the series it was predicting.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.prefetch import Prefetch
from ..engine.operating_point import Threshold
from ..errors import DSAInputError
from ..evaluation.predictions import predict_one_series
from ..io.json_io import json_bytes
from ..io.ownership import check_relative_name
from ..io.transaction import OutputTransaction
from .progress import (
    Progress,
    check_fingerprint,
    pack_name,
    pack_series,
    read_run_file,
    run_fingerprint,
    unpack_files,
)
from .result import MANIFEST_FILE, PredictionSet, SeriesRecord, series_record
from .sources import FoundSeries, SeriesSource

PACKS_DIR = "series"  # in the staging folder: the packs of a run without --resume


@dataclass
class RunPlan:
    """What the launching process checked, handed to every worker (picklable)."""

    outputs: OutputTransaction  # checked, not entered (rank 0 enters it)
    threshold: Threshold
    series: list[tuple[int, str, int]]  # (video_id, name, num_frames) of each series found, in order
    progress: Progress | None = None  # --resume


@dataclass
class RunOutcome:
    """Rank 0's view of the finished run."""

    results: PredictionSet
    skipped: list[str]  # every input file left out, as one process lists them
    predicted: int  # series predicted by this run
    resumed: int  # series taken from the progress of an earlier run
    files: list[Path] = field(default_factory=list)


class SeriesFiles:
    """A worker's scratch folder for the files of the series it predicts: the ``path`` /
    ``write_bytes`` / ``write_json`` of an :class:`OutputTransaction`; :meth:`take` returns the
    names written since the last call (one series' files)."""

    def __init__(self) -> None:
        self.root: Path | None = None  # set when the run's staging folder is known
        self._names: list[str] = []

    def path(self, name: str) -> Path:
        if self.root is None:
            raise RuntimeError("SeriesFiles used before the run started")
        path = self.root / check_relative_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if name not in self._names:
            self._names.append(name)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        path.write_bytes(data)
        return path

    def write_json(self, name: str, obj: Any, indent: int | None = 1) -> Path:
        return self.write_bytes(name, json_bytes(obj, name, indent))

    def take(self) -> list[str]:
        names, self._names = self._names, []
        return names


def plan_run(out: str, overwrite: bool, resume: bool, names: Sequence[str]) -> tuple[OutputTransaction, dict | None]:
    """Check the output folder before any work: the transaction for ``names``, and the recorded
    fingerprint of the progress there (None: none)."""
    recorded = read_run_file(out)
    if recorded is not None and not resume and not overwrite:
        raise DSAInputError(
            f"{out}: holds the progress of an unfinished predict --resume run ({recorded.get('num_series')} series "
            "in its input); pass --resume to continue it, or --overwrite to discard it and start over "
            "(nothing was written)."
        )
    if resume and recorded is None and not overwrite and (Path(out) / MANIFEST_FILE).is_file():
        raise DSAInputError(
            f"{out}: holds the complete outputs of an earlier predict run and no progress of an unfinished one, "
            "so there is nothing to resume; pass --overwrite to predict again, or choose another --out "
            "(nothing was written)."
        )
    # The outputs of the run being resumed (if any were published before a kill) are its own: replace them.
    return OutputTransaction(out, "predict", overwrite or (resume and recorded is not None), names=names), recorded


def resume_progress(out: str, recorded: dict | None, overwrite: bool, cfg: Any, weights: str, threshold: Threshold,
                    found: FoundSeries, settings: Mapping[str, Any]) -> Progress:
    """The progress of this run; progress recorded for another run is refused (discarded with ``overwrite``)."""
    fingerprint = run_fingerprint(cfg, weights, threshold, found, settings)
    if recorded is not None and not overwrite:
        check_fingerprint(out, recorded, fingerprint)
    return Progress(Path(out), fingerprint)


def _check_same_series(found: FoundSeries, plan: RunPlan) -> None:
    mine = [(s.video_id, s.name, s.num_frames) for s in found.sources]
    if mine != [tuple(s) for s in plan.series]:
        raise DSAInputError(
            f"the input changed while predict was starting: this worker found {len(mine)} series, the launching "
            f"process {len(plan.series)} (or other ones); run again once the input folder is complete "
            "(nothing was written)."
        )


def _predict_shard(shard: Sequence[SeriesSource], found: FoundSeries, predictor: Callable[[np.ndarray], Any],
                   plan: RunPlan, files: SeriesFiles, on_series: Callable | None, packs: Path, show: bool
                   ) -> tuple[list[SeriesRecord], dict[int, list[str]]]:
    """Predict ``shard`` and pack each series; returns the records and the decoding skips per series.

    The next series is decoded (and prepared for the model, by a predictor with ``prepare``) in a
    background thread while one is predicted (:class:`~perforation_d2.data.prefetch.Prefetch`): the
    same outputs, and a decoding error or skip belongs to its series, as when loading in turn.
    """
    prepare = getattr(predictor, "prepare", None)  # SeriesPredictor's CPU half of preprocessing

    def load(source: SeriesSource) -> tuple[tuple[np.ndarray, float | None] | None, list[str], Any]:
        seen = len(found.skipped)  # only loads add skips, and they run one after the other
        loaded = source.load()
        prepared = None
        if prepare is not None and loaded is not None and len(loaded[0]) == source.num_frames:
            prepared = prepare(loaded[0])
        return loaded, found.skipped[seen:], prepared

    records, skips = [], {}
    with (tqdm(total=sum(s.num_frames for s in shard), unit="frame", desc="predict", file=sys.stderr,
               disable=None if show else True) as bar,
          Prefetch(shard, load) as series):
        for source, (loaded, new_skips, prepared) in series:
            if loaded is None:  # a series of a folder that could not be decoded (listed among the skips)
                skips[source.video_id] = new_skips
            else:
                frames, frame_time_ms = loaded
                if len(frames) != source.num_frames:
                    raise DSAInputError(f"series {source.name} has {len(frames)} frames, expected {source.num_frames}.")
                # The frame time picks each clip's frames when the model's clips span a fixed duration.
                timed = functools.partial(predictor, frame_time_ms=frame_time_ms, series=f"series {source.name}")
                result = predict_one_series(timed, frames if prepared is None else prepared, source.image_ids,
                                            plan.threshold.series_optimization)
                record = series_record(source, frames, frame_time_ms, result, plan.threshold, files)
                if on_series is not None:
                    on_series(source, frames, result)  # writes its files into `files` too
                record.files = files.take()
                data = pack_series(record, files.root, plan.progress.digest if plan.progress else "")
                if plan.progress is not None:
                    plan.progress.store(record, data, files.root)
                else:
                    (packs / f"{record.video_id}.zip").write_bytes(data)
                for name in record.files:  # the pack holds them now
                    (files.root / name).unlink()
                records.append(record)
            bar.update(source.num_frames)
    return records, skips


def predict_series(plan: RunPlan, found: FoundSeries, predictor: Callable[[np.ndarray], Any], files: SeriesFiles,
                   on_series: Callable | None = None) -> RunOutcome | None:
    """This worker's share of the run (all of it on one process); rank 0 writes the outputs and returns
    the outcome, the other ranks return None. Every worker must call it."""
    from detectron2.utils import comm

    rank, world = comm.get_rank(), comm.get_world_size()
    if world > 1:
        _check_same_series(found, plan)
    header_skips = list(found.skipped)
    with contextlib.ExitStack() as stack:
        shared = None
        if rank == 0:
            outputs = stack.enter_context(plan.outputs)
            done = plan.progress.begin([s.video_id for s in found.sources]) if plan.progress else {}
            (outputs.root / PACKS_DIR).mkdir()
            shared = (str(outputs.root), sorted(done))
        staging, done_ids = comm.all_gather(shared)[0]
        files.root = Path(staging) / f"worker-{rank}"
        files.root.mkdir(parents=True, exist_ok=True)
        done_ids = set(done_ids)
        pending = [s for s in found.sources if s.video_id not in done_ids]
        packs = Path(staging) / PACKS_DIR
        mine = _predict_shard(pending[rank::world], found, predictor, plan, files, on_series, packs, rank == 0)
        gathered = comm.gather(mine, dst=0)
        if rank != 0:
            return None
        new = {r.video_id: r for records, _ in gathered for r in records}
        skips = {v: s for _, worker_skips in gathered for v, s in worker_skips.items()}
        results = PredictionSet(plan.threshold, outputs)
        for source in found.sources:  # discovery order: the order one process writes in
            video_id = source.video_id
            record = new.get(video_id) or done.get(video_id)
            if record is None:
                header_skips.extend(skips.get(video_id, []))
                continue
            pack = packs / f"{video_id}.zip" if plan.progress is None else plan.progress.out / pack_name(video_id)
            unpack_files(pack, record, outputs)
            results.add_record(record)
        if not results.series_scores:
            raise DSAInputError("no series of the input could be read; nothing was written. Skipped: "
                                + "; ".join(header_skips[:5]) + ("; ..." if len(header_skips) > 5 else ""))
        results.write()
        written = outputs.commit()
    return RunOutcome(results, header_skips, len(new), len(done), written)
