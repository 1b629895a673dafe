"""Benchmark row of issue 13: the DICOM node's turnaround, as a ratio to predicting the series from disk.

One in-process node (:class:`~perforation_d2.node.server.Node`, quiet period 0) with a random
quick temporal model on CPU, a pynetdicom storage SCP as its destination, and a pynetdicom
client as the modality. Per round the client sends one multi-frame XA run (JPEG baseline) and
releases; the node's time is from the last C-STORE response to the destination's receipt of the
SR (its acknowledgement), the baseline the same series read from disk and predicted
(decode + model + series decision), both medians over the rounds. The difference is what the node
adds: storage, the scheduler's 0.1 s poll, SR / capture building and the two transfers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from detectron2.config import get_cfg

from ..config import CONFIG_DIR, add_perforation_config
from .common import BenchRow
from .inference import _model, series_sizes

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def _weights(root: Path, frame_size: int) -> tuple[Path, Path]:
    from ..engine.checkpoint import SafeDetectionCheckpointer

    config = root / "quick_tconv_T5.yaml"
    config.write_text(f'_BASE_: "{CONFIG_DIR / "quick" / "retinanet_tconv_T5.yaml"}"\n'
                      f"INPUT:\n  FRAME_SIZE: {frame_size}\nMODEL:\n  DEVICE: cpu\n")
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.merge_from_file(str(config))
    SafeDetectionCheckpointer(_model(cfg), save_dir=str(root)).save("model")
    return config, root / "model.pth"


class _Destination:
    """A pynetdicom storage SCP noting when each SR arrives."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

        self.sr_received = threading.Event()
        self.received_at = 0.0
        ae = AE(ae_title="BENCHPACS")
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event) -> int:
        if event.context.abstract_syntax == SR_CLASS:
            self.received_at = time.perf_counter()
            self.sr_received.set()
        return 0x0000


def _send(port: int, path: Path) -> float:
    """C-STORE ``path`` to the node and release; the time of the last C-STORE response."""
    from pydicom.uid import JPEGBaseline8Bit
    from pynetdicom import AE
    from pynetdicom.sop_class import XRayAngiographicImageStorage

    client = AE(ae_title="BENCHMOD")
    client.add_requested_context(XRayAngiographicImageStorage, [JPEGBaseline8Bit])
    assoc = client.associate("127.0.0.1", port, ae_title="BENCHNODE")
    if not assoc.is_established:
        raise RuntimeError("the node refused the benchmark's association")
    status = assoc.send_c_store(pydicom.dcmread(path))
    stored = time.perf_counter()
    assoc.release()
    if getattr(status, "Status", None) != 0x0000:
        raise RuntimeError("the node did not store the benchmark's series")
    return stored


def benchmark_node(args: argparse.Namespace) -> list[BenchRow]:
    from ..data.dicom import scan_dicom_input
    from ..data.dicom.memory_probe import write_jpeg_series
    from ..evaluation.predictions import predict_one_series
    from ..node.sender import Destination
    from ..node.server import Node, NodeSettings
    from ..node.worker import TrainedModel

    frame_size, num_frames, source_size, rounds = series_sizes(args)
    with tempfile.TemporaryDirectory(prefix="perforation_d2-bench-node-") as tmp:
        root = Path(tmp)
        config, weights = _weights(root, frame_size)
        series = write_jpeg_series(root / "input" / "run.dcm", num_frames, source_size)
        ds = pydicom.dcmread(series)
        ds.StudyInstanceUID = pydicom.uid.generate_uid()  # a result is filed with its study
        ds.save_as(series, enforce_file_format=True)
        model = TrainedModel.load(str(config), str(weights), "cpu", None, 0.5)

        def predict_from_disk() -> None:
            scan = scan_dicom_input(series.parent, "bench-salt")
            frames = scan.read(scan.plans[0]).frames
            predict_one_series(model.predictor, frames, list(range(1, len(frames) + 1)))

        destination = _Destination()
        node = Node(NodeSettings(ae_title="BENCHNODE", port=0, bind="127.0.0.1",
                                 destination=Destination("BENCHPACS", "127.0.0.1", destination.port),
                                 storage=root / "storage", quiet_s=0.0, salt="bench-salt"), model)
        port = node.start()
        try:
            predict_from_disk()  # warm-up of both paths
            node_times, disk_times = [], []
            for _ in range(rounds + 1):
                destination.sr_received.clear()
                stored = _send(port, series)
                if not destination.sr_received.wait(timeout=300):
                    raise RuntimeError("the node's SR did not arrive within 5 minutes")
                node_times.append(destination.received_at - stored)
                start = time.perf_counter()
                predict_from_disk()
                disk_times.append(time.perf_counter() - start)
        finally:
            node.stop()
            destination.server.shutdown()
    node_s, disk_s = statistics.median(node_times[1:]), statistics.median(disk_times[1:])  # round 0: warm-up
    return [BenchRow(
        "node", "last instance received -> SR acknowledged / predict of the series from disk", node_s / disk_s,
        note=f"{node_s:.2f} s vs {disk_s:.2f} s; quick tconv T5 at {frame_size} px, {num_frames} frames of "
             f"{source_size} px, CPU, quiet period 0, loopback; median of {rounds} round(s)",
    )]
