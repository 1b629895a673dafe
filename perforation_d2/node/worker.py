"""The node's inference worker: one thread, one bounded queue, one model loaded at start.

A complete series is read from storage with the project's DICOM reader (each multi-frame
instance, and each group of single-frame instances, is one run), predicted with the cached series
inference and the series decision of ``predict``, and its DICOM results (SR, Secondary Capture,
optionally GSPS) are written to a staging folder that enters the outbox as a whole. A series that
cannot be decoded or predicted is logged with its pseudonym and the reason, marked failed in the
index, and the worker goes on with the next one; its instances stay in storage.
"""

from __future__ import annotations

import functools
import logging
import queue
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.dicom import scan_dicom_input
from ..dicom_results import Algorithm, SeriesFinding, SourceImages, build_dicom_results, write_dicom_results
from ..engine.operating_point import Threshold
from ..errors import DSAInputError
from .store import DONE, FAILED, Storage

log = logging.getLogger("perforation_d2.node")


@dataclass
class TrainedModel:
    """Everything loaded once at start: the series predictor, its threshold and its identification."""

    predictor: Callable
    threshold: Threshold
    algorithm: Algorithm

    @classmethod
    def load(cls, config_file: str, weights: str, device: str, operating_point: str | None,
             threshold: float | None, batch_size: int = 4, opts: Sequence[str] = ()) -> TrainedModel:
        from ..inference.model import choose_threshold, load_model
        from ..modeling.series_inference import SeriesPredictor

        cfg, model, extras = load_model(config_file, weights, device, opts)
        decision = choose_threshold(weights, extras, operating_point or cfg.TEST.DSA.OPERATING_POINT, threshold,
                                    cfg.TEST.DSA.SERIES_OPTIMIZATION)
        predictor = SeriesPredictor.from_config(model, cfg, batch_size)
        return cls(predictor, decision, Algorithm.of_model(cfg, weights))


class Worker:
    """Runs queued series one at a time in a background thread (module docstring)."""

    def __init__(self, storage: Storage, model: TrainedModel, salt: str, gsps: bool,
                 on_results: Callable[[], None], queue_size: int = 8):
        self.storage, self.model, self.salt, self.gsps = storage, model, salt, gsps
        self.on_results = on_results
        self.queue: queue.Queue[str] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="perforation_d2-worker", daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def offer(self, series: str) -> bool:
        """Queue a complete series; False when the queue is full (offer it again later)."""
        try:
            self.queue.put_nowait(series)
            return True
        except queue.Full:
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                series = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.process(series)
            except Exception as err:  # never let one series stop the node (nor rerun it at every start)
                reason = f"failed unexpectedly ({type(err).__name__})"  # the message may quote a value: not shown
                log.error("series %s: %s", series, reason)
                with self.storage.lock:
                    state = self.storage.read_state(series)
                    if state is not None:
                        state.status, state.reason = FAILED, reason
                        self.storage.write_state(state)

    def process(self, series: str) -> None:
        """Predict one stored series and publish its results to the outbox."""
        with self.storage.lock:
            state = self.storage.read_state(series)
        if state is None:
            return
        generation, instances = state.generation + 1, state.instances
        staging = self.storage.staging_dir(series, generation)
        try:
            lines = self._predict(series, staging)
        except DSAInputError as err:
            shutil.rmtree(staging, ignore_errors=True)
            with self.storage.lock:
                state = self.storage.read_state(series)
                state.status, state.reason = FAILED, str(err)
                self.storage.write_state(state)
            log.error("series %s: not processed: %s", series, err)
            return
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        results = sum(1 for _ in staging.glob("*.dcm"))
        with self.storage.lock:
            self.storage.publish(staging, series, generation)
            state = self.storage.read_state(series)
            state.generation, state.results = generation, results
            if state.instances == instances:  # else more arrived meanwhile: it runs again
                state.status, state.reason = DONE, ""
            self.storage.write_state(state)
        for line in lines:
            log.info("%s", line)
        self.on_results()

    def _predict(self, series: str, staging: Path) -> list[str]:
        from ..evaluation.predictions import predict_one_series

        scan = scan_dicom_input(self.storage.instances_dir(series), self.salt)
        for reason in scan.skipped:
            log.warning("series %s: instance left out: %s", series, reason)
        threshold = self.model.threshold
        lines = []
        for plan in scan.plans:
            dicom_series = scan.read(plan)
            frames = dicom_series.frames
            # The frame time picks each clip's frames when the model's clips span a fixed duration.
            timed = functools.partial(self.model.predictor, frame_time_ms=dicom_series.frame_time_ms,
                                      series=f"series {series} run {plan.series_key}")
            result = predict_one_series(timed, frames, list(range(1, len(frames) + 1)), threshold.series_optimization)
            finding = SeriesFinding.of(result, threshold)
            sources = SourceImages.read(dicom_series.source_files, dicom_series.frame_sources)
            results = build_dicom_results(finding, sources, frames, self.model.algorithm, self.gsps)
            write_dicom_results(staging, plan.series_key, results)
            where = f", frame {finding.key_frame + 1}/{len(frames)}" if finding.key_box is not None else ""
            lines.append(f"series {series} run {plan.series_key}: perforation {'yes' if finding.present else 'no'} "
                         f"(score {finding.score:.3f}, threshold {finding.threshold:.3f}{where})")
        return lines
