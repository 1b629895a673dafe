"""The DICOM node behind ``python -m perforation_d2 serve``: listener, worker and sender together.

Start-up loads the model once, then resumes what a previous run left: result sets still in the
outbox are sent, series whose association was released but which never ran are run once their
quiet period has passed, series caught mid-association are treated as aborted (they may be
incomplete; the sender's retry completes them), and series whose results exist are not run
again. Then it listens.
Log records (console and ``STORAGE/node.log``) name series by pseudonym only; pynetdicom's own
records are kept at WARNING, where they carry no data set content.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..data.dicom.pseudonyms import resolve_salt
from .scp import SeriesTracker, StoreSCP
from .sender import Destination, Sender
from .store import ABORTED, DONE, LOG_FILE, RECEIVING, Storage
from .worker import TrainedModel, Worker

log = logging.getLogger("perforation_d2.node")


@dataclass
class NodeSettings:
    ae_title: str
    port: int
    bind: str
    destination: Destination
    storage: Path
    allow: list[str] = field(default_factory=list)
    quiet_s: float = 10.0
    gsps: bool = False
    salt: str | None = None
    queue_size: int = 8
    retry_initial_s: float = 0.5
    retry_max_s: float = 60.0


def configure_logging(storage: Path, verbose: bool = False) -> None:
    """Node records to the console and to ``storage/node.log``; pynetdicom's at WARNING only."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    node_log = logging.getLogger("perforation_d2.node")
    node_log.setLevel(logging.DEBUG if verbose else logging.INFO)
    node_log.propagate = False
    for handler in (logging.StreamHandler(), logging.FileHandler(storage / LOG_FILE, encoding="utf-8")):
        handler.setFormatter(formatter)
        node_log.addHandler(handler)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


class Node:
    """Listener + worker + sender over one storage folder (module docstring)."""

    def __init__(self, settings: NodeSettings, model: TrainedModel):
        self.settings = settings
        self.salt = resolve_salt(settings.salt)
        self.storage = Storage(settings.storage)
        self.tracker = SeriesTracker(settings.quiet_s)
        self.sender = Sender(self.storage, settings.destination, settings.ae_title,
                             settings.retry_initial_s, settings.retry_max_s)
        self.worker = Worker(self.storage, model, self.salt, settings.gsps, self.sender.notify, settings.queue_size)
        self.scp = StoreSCP(settings.ae_title, settings.allow, self.storage, self.tracker, self.salt)
        self._stop = threading.Event()
        self.port: int | None = None

    def _resume(self) -> None:
        self.storage.remove_stale_staging()
        for state in self.storage.all_states():
            if state.status == RECEIVING and self.storage.has_results(state.series, state.generation + 1):
                # Killed after publishing the results, before recording it: they are out already.
                state.generation += 1
                state.status = DONE
                self.storage.write_state(state)
            elif state.status == RECEIVING and state.released:
                self.tracker.resume(state.series)
            elif state.status == RECEIVING:
                # Killed while its association was open: it may be incomplete, like an aborted one.
                state.status, state.reason = ABORTED, "the node stopped while it was being received"
                self.storage.write_state(state)
                log.warning("series %s: was being received when the node stopped; it will run once it is sent again",
                            state.series)
            elif state.status == ABORTED:
                log.info("series %s: left aborted by the previous run; waiting for it to be sent again", state.series)
        pending = self.storage.pending()
        if pending:
            log.info("%d result file(s) from the previous run pending for %s", len(pending), self.settings.destination)

    def start(self) -> int:
        """Resume, start the threads and listen; returns the port listened on."""
        self._resume()
        self.sender.start()
        self.worker.start()
        self.port = self.scp.start(self.settings.bind, self.settings.port)
        self._scheduler = threading.Thread(target=self._schedule, name="perforation_d2-scheduler", daemon=True)
        self._scheduler.start()
        allowed = ", ".join(self.settings.allow) if self.settings.allow else "any calling AE title"
        log.info("listening as %s on %s:%d (accepting %s); results go to %s", self.settings.ae_title,
                 self.settings.bind, self.port, allowed, self.settings.destination)
        return self.port

    def _schedule(self) -> None:
        while not self._stop.wait(timeout=0.1):
            for series in self.tracker.take_complete():
                if not self.worker.offer(series):
                    log.debug("series %s: the inference queue is full; it waits", series)
                    self.tracker.put_back(series)

    def stop(self) -> None:
        self._stop.set()
        self.scp.stop()
        self.worker.stop()
        self.sender.stop()

    def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM, then stop cleanly."""
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        self.start()
        stop.wait()
        log.info("stopping")
        self.stop()
