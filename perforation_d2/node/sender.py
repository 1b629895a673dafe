"""Sending results to the destination: C-STORE of every outbox file, retried with back-off.

One thread sends the outbox in order, one association per attempt. A file leaves the outbox
only when the destination answered its C-STORE with success (0x0000) or a warning (0xB...),
which is the acknowledgement; anything else (no association, a refusal status, a dropped
connection) keeps it pending and waits ``initial_s``, doubling up to ``max_s``, before the next
attempt. Log lines name the result file, whose name is the series pseudonym.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
)

from ..data.dicom.dataset import quiet_pydicom
from ..errors import DSAInputError
from .store import Storage

log = logging.getLogger("perforation_d2.node")

RESULT_SOP_CLASSES = (ComprehensiveSRStorage, SecondaryCaptureImageStorage, GrayscaleSoftcopyPresentationStateStorage)


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@HOST:PORT``."""
        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae_title and host and port.isdigit() and 0 < int(port) < 65536 and len(ae_title) <= 16):
            raise DSAInputError(f"--destination {text!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104 "
                                "(an AE title of at most 16 characters).")
        return cls(ae_title, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Sender:
    """Sends pending results in a background thread (module docstring)."""

    def __init__(self, storage: Storage, destination: Destination, ae_title: str,
                 initial_s: float = 0.5, max_s: float = 60.0, timeout_s: float = 30.0):
        self.storage, self.destination = storage, destination
        self.initial_s, self.max_s = initial_s, max_s
        self.ae = AE(ae_title=ae_title)
        for sop_class in RESULT_SOP_CLASSES:
            self.ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for attribute in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(self.ae, attribute, timeout_s)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="perforation_d2-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def notify(self) -> None:
        """New results are in the outbox."""
        self._wake.set()

    def _run(self) -> None:
        delay = self.initial_s
        while not self._stop.is_set():
            self._wake.clear()
            pending = self.storage.pending()
            if not pending:
                self._wake.wait(timeout=5.0)  # also picks up files that appear without a notify
                continue
            if self._send(pending):
                delay = self.initial_s
                continue
            log.info("destination %s: %d result file(s) pending; next attempt in %.1f s",
                     self.destination, len(self.storage.pending()), delay)
            self._stop.wait(timeout=delay)
            delay = min(delay * 2, self.max_s)

    def _send(self, pending: list[Path]) -> bool:
        """Try every pending file in one association; True when all were acknowledged."""
        try:
            assoc = self.ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.ae_title)
        except Exception as err:  # socket errors while connecting
            log.warning("destination %s: cannot connect (%s)", self.destination, type(err).__name__)
            return False
        if not assoc.is_established:
            why = "refused the association" if assoc.is_rejected else "unreachable or not answering"
            log.warning("destination %s: %s", self.destination, why)
            return False
        all_sent = True
        try:
            for path in pending:
                if self._stop.is_set() or not assoc.is_established:
                    return False
                all_sent &= self._send_one(assoc, path)
        finally:
            if assoc.is_established:
                assoc.release()
        return all_sent

    def _send_one(self, assoc, path: Path) -> bool:
        try:
            with quiet_pydicom():
                dataset = pydicom.dcmread(path)
        except Exception as err:  # a result file we wrote cannot be read: keep it for a person to see
            log.error("%s: cannot be read (%s); left in the outbox", path.name, type(err).__name__)
            return False
        if not any(c.abstract_syntax == dataset.SOPClassUID for c in assoc.accepted_contexts):
            log.warning("%s: refused by %s (it does not accept this SOP class); kept for a retry",
                        path.name, self.destination)
            return False
        try:
            status = assoc.send_c_store(dataset)
        except Exception as err:  # no accepted presentation context, or the connection broke
            log.warning("%s: not sent to %s (%s)", path.name, self.destination, type(err).__name__)
            return False
        code = getattr(status, "Status", None)
        if code is not None and (code == 0x0000 or 0xB000 <= code <= 0xBFFF):
            self.storage.acknowledge(path)
            log.info("%s: acknowledged by %s", path.name, self.destination)
            return True
        reason = "no response" if code is None else f"status 0x{code:04X}"
        log.warning("%s: refused by %s (%s); kept for a retry", path.name, self.destination, reason)
        return False
