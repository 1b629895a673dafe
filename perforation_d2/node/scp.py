"""The DICOM listener: C-ECHO, C-STORE of XA/XRF images, and the completeness of each series.

Calling AE titles outside ``--allow`` are refused at association (A-ASSOCIATE-RJ, "calling AE
title not recognised"); only the XA and XRF storage SOP classes (and Verification) are offered,
so any other class is refused per presentation context ("abstract syntax not supported"), and an
instance whose content does not match is answered 0xA900. Each accepted instance is written to
the storage folder before its C-STORE succeeds.

A series is complete when every association that delivered to it was *released* and no instance
arrived for ``quiet_s`` seconds: a release alone does not prove the sender is done with the series.
A series whose association was aborted is not run until a later association delivers to it
and is released. :class:`SeriesTracker` holds this state; the node polls it for complete series.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from ..data.dicom.dataset import as_text, get, quiet_pydicom
from ..data.dicom.scan import ACCEPTED_MODALITIES, ACCEPTED_SOP_CLASSES
from .store import ABORTED, RECEIVING, SeriesState, Storage, instance_pseudonym, series_pseudonym

log = logging.getLogger("perforation_d2.node")

# What the DICOM reader decodes with the packages the project installs.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless, JPEGBaseline8Bit,
    JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
]
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATA_SET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass
class _Series:
    last_received: float
    open_associations: set[int] = field(default_factory=set)
    aborted: bool = False
    dirty: bool = True  # holds instances not yet run


class SeriesTracker:
    """Which series are complete (module docstring); thread-safe."""

    def __init__(self, quiet_s: float):
        self.quiet_s = quiet_s
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._touched: dict[int, set[str]] = {}  # association -> series it delivered to

    def received(self, series: str, association: int) -> None:
        with self._lock:
            entry = self._series.setdefault(series, _Series(time.monotonic()))
            entry.last_received = time.monotonic()
            entry.open_associations.add(association)
            entry.aborted = False
            entry.dirty = True
            self._touched.setdefault(association, set()).add(series)

    def resume(self, series: str) -> None:
        """A series found unfinished in storage at start: complete once the quiet period passed."""
        with self._lock:
            self._series.setdefault(series, _Series(time.monotonic()))

    def closed(self, association: int, released: bool) -> list[str]:
        """An association ended (released, or not); returns the series it delivered to."""
        with self._lock:
            touched = sorted(self._touched.pop(association, ()))
            for series in touched:
                entry = self._series[series]
                entry.open_associations.discard(association)
                if not released:
                    entry.aborted = True
        return touched

    def take_complete(self) -> list[str]:
        """The series that became complete since the last call (each returned once per batch of instances)."""
        now = time.monotonic()
        with self._lock:
            ready = [key for key, entry in self._series.items()
                     if entry.dirty and not entry.aborted and not entry.open_associations
                     and now - entry.last_received >= self.quiet_s]
            for key in ready:
                self._series[key].dirty = False
        return ready

    def put_back(self, series: str) -> None:
        """A complete series the worker could not take yet (queue full): offer it again later."""
        with self._lock:
            self._series[series].dirty = True


class StoreSCP:
    """The pynetdicom application entity of the node (module docstring)."""

    def __init__(self, ae_title: str, allow: list[str], storage: Storage, tracker: SeriesTracker, salt: str):
        self.storage, self.tracker, self.salt = storage, tracker, salt
        self.ae = AE(ae_title=ae_title)
        self.ae.require_calling_aet = list(allow)
        self.ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self.ae.maximum_pdu_size = 0  # no limit on what we accept
        self._released: set[int] = set()
        self.server = None

    def start(self, bind: str, port: int) -> int:
        """Start listening in background threads; returns the port (a free one when ``port`` is 0)."""
        handlers = [
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self.server = self.ae.start_server((bind, port), block=False, evt_handlers=handlers)
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # ---- handlers ----------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            with quiet_pydicom():  # pydicom's warnings may quote values: none reaches the console
                dataset = event.dataset
                series_uid, sop_uid = get(dataset, "SeriesInstanceUID", as_text), get(dataset, "SOPInstanceUID", as_text)
                modality, sop_class = get(dataset, "Modality", as_text), get(dataset, "SOPClassUID", as_text)
                encoded = event.encoded_dataset(include_meta=True)
        except Exception as err:  # an undecodable data set: nothing to store
            log.warning("C-STORE from %s refused: the data set cannot be parsed (%s)", calling, type(err).__name__)
            return STATUS_CANNOT_UNDERSTAND
        if not series_uid or not sop_uid:
            log.warning("C-STORE from %s refused: no SeriesInstanceUID or SOPInstanceUID", calling)
            return STATUS_DATA_SET_MISMATCH
        series = series_pseudonym(self.salt, series_uid)
        if modality not in ACCEPTED_MODALITIES or sop_class != event.context.abstract_syntax:
            log.warning("C-STORE of series %s from %s refused: not an XA/RF image of its SOP class", series, calling)
            return STATUS_DATA_SET_MISMATCH
        try:
            self.storage.store_instance(series, instance_pseudonym(self.salt, sop_uid), encoded)
        except OSError as err:
            log.error("series %s: an instance could not be stored (%s); refused", series, err.strerror)
            return STATUS_OUT_OF_RESOURCES
        with self.storage.lock:
            state = self.storage.read_state(series) or SeriesState(series)
            if state.status != RECEIVING:
                state.status, state.reason = RECEIVING, ""
            state.released = False
            state.instances = self.storage.count_instances(series)
            self.storage.write_state(state)
        self.tracker.received(series, id(event.assoc))
        return STATUS_SUCCESS

    def _on_released(self, event) -> None:
        self._released.add(id(event.assoc))

    def _on_close(self, event) -> None:
        association = id(event.assoc)
        released = association in self._released
        self._released.discard(association)
        for series in self.tracker.closed(association, released):
            if not released:
                log.warning("series %s: its association was aborted; it will run only once it is sent again", series)
            with self.storage.lock:
                state = self.storage.read_state(series)
                if state is None or state.status != RECEIVING:
                    continue
                # Recorded so that a restart knows whether the series may be complete.
                state.released = released
                if not released:
                    state.status, state.reason = ABORTED, "association aborted"
                self.storage.write_state(state)

    def _on_rejected(self, event) -> None:
        log.warning("association from %s rejected (calling AE title not allowed)", event.assoc.requestor.ae_title)
