"""``python -m perforation_d2 serve`` end to end, on loopback, against DCMTK as modality and PACS.

One node (a subprocess, with a random quick model) serves the whole module, in order: refusals,
two series in one association sent to a destination that is down at first, a series held back
while its association stays open, an aborted association, an undecodable series, a SIGKILL and
restart with results pending (and a series caught mid-association, which then waits like an
aborted one), and last the identity check over everything the module produced. DCMTK's echoscu /
storescu play the modality, storescp the PACS; dsrdump and dciodvfy check what arrives.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from helpers.dicom_factory import (
    CT_SOP_CLASS,
    XRF_SOP_CLASS,
    assert_no_identity_leak,
    make_identity,
    ramp_frames,
    write_single_frame_series,
    write_xa,
)
from helpers.dicom_network import StoreSCP, free_port, require_tool, run_tool, stop_process, wait_for
from helpers.quick_model import REPO, write_quick_model
from pydicom.sr.codedict import codes

from perforation_d2.cli import main

SALT = "node-test-salt"
NODE_AE, MODALITY_AE, PACS_AE = "PERFNODE", "MODALITY", "PACS"
QUIET_S = 0.5
IDENTITY_IN_RESULTS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName")
NEVER_ELSEWHERE = (*IDENTITY_IN_RESULTS, "OperatorsName", "OtherPatientIDs", "ReferringPhysicianName",
                   "StudyInstanceUID", "SeriesInstanceUID")
SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"

# One node serves the whole module, and its tests are one scenario in steps (refusals, two series,
# a destination that comes up late, a kill and restart, then the identity scan of everything sent):
# they keep their order even in CI's shuffled run, which still shuffles this module among the others.
pytestmark = [pytest.mark.timeout(120), pytest.mark.random_order(disabled=True)]


def identity(index: int) -> dict[str, str]:
    return {**make_identity(index), "OperatorsName": f"Thistlewood{index}^Operator", "StudyID": f"ST{index}"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inputs")
    ids = {name: identity(i) for i, name in enumerate(("multi", "single", "xrf", "aborted", "broken", "ct", "held", "midway"))}
    files = {
        "multi": [write_xa(root / "pair" / "multi.dcm", ramp_frames(5, 48), identity=ids["multi"], frame_time=100.0)],
        "single": write_single_frame_series(root / "pair" / "single", ramp_frames(3, 40), identity=ids["single"]),
        "xrf": [write_xa(root / "xrf.dcm", ramp_frames(4, 40), identity=ids["xrf"], modality="RF",
                         sop_class=XRF_SOP_CLASS)],
        "aborted": [write_xa(root / "aborted.dcm", ramp_frames(3, 32), identity=ids["aborted"])],
        "held": [write_xa(root / "held.dcm", ramp_frames(3, 32), identity=ids["held"])],
        "midway": [write_xa(root / "midway.dcm", ramp_frames(3, 32), identity=ids["midway"])],
        # The header declares 6 frames, the pixel data holds 3: stored, then fails to decode.
        "broken": [write_xa(root / "broken.dcm", ramp_frames(3, 32), identity=ids["broken"],
                            extra={"NumberOfFrames": 6})],
        "ct": [write_xa(root / "ct.dcm", ramp_frames(1, 32)[0], identity=ids["ct"], modality="CT",
                        sop_class=CT_SOP_CLASS, number_of_frames=None)],
    }
    return {"root": root, "ids": ids, "files": files}


class NodeProcess:
    """The node as a subprocess, its console captured in ``console.txt`` across restarts."""

    def __init__(self, root: Path, config: Path, weights: Path):
        self.root, self.config, self.weights = root, config, weights
        self.storage = root / "storage"
        self.console = root / "console.txt"
        self.destination_port = free_port()
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self) -> None:
        starts = self.console_text().count("listening as")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
               "PERFORATION_D2_SALT_FILE": str(self.root / "unused-salt")}
        with open(self.console, "ab") as console:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "perforation_d2", "serve", "--ae-title", NODE_AE, "--port", "0",
                 "--config-file", str(self.config), "--weights", str(self.weights), "--device", "cpu",
                 "--destination", f"{PACS_AE}@127.0.0.1:{self.destination_port}", "--storage", str(self.storage),
                 "--allow", MODALITY_AE, "--quiet-s", str(QUIET_S), "--retry-max-s", "1", "--salt", SALT],
                stdout=console, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        line = wait_for(lambda: self._listening_line(starts), 60, "the node to listen")
        self.port = int(re.search(r" on 127\.0\.0\.1:(\d+) ", line).group(1))

    def _listening_line(self, starts: int) -> str | None:
        assert self.process.poll() is None, f"the node exited:\n{self.console_text()[-3000:]}"
        lines = [line for line in self.console_text().splitlines() if "listening as" in line]
        return lines[starts] if len(lines) > starts else None

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.process, timeout=30)

    def states(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.storage / "series").glob("*/state.json"))]

    def result_sets(self, where: str) -> list[Path]:
        return sorted(p for p in (self.storage / where).iterdir() if p.is_dir() and not p.name.startswith("."))

    def store(self, *files: Path, calling: str = MODALITY_AE) -> subprocess.CompletedProcess:
        return run_tool("storescu", "-aet", calling, "-aec", NODE_AE, "127.0.0.1", str(self.port), *map(str, files))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    for tool in ("echoscu", "storescu", "storescp", "dsrdump", "dciodvfy"):
        require_tool(tool)
    config, weights = write_quick_model(tmp_path_factory.mktemp("model"))
    process = NodeProcess(tmp_path_factory.mktemp("node"), config, weights)
    process.start()
    yield process
    process.stop()


def received_results(folder: Path) -> dict[str, dict[str, pydicom.Dataset]]:
    """``{PatientID: {"SR": dataset, "SC": dataset}}`` of the files a receiver got."""
    by_patient: dict[str, dict[str, pydicom.Dataset]] = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        kind = {SR_CLASS: "SR", SC_CLASS: "SC"}[ds.SOPClassUID]
        assert kind not in by_patient.setdefault(ds.PatientID, {}), f"two {kind} for one series"
        by_patient[ds.PatientID][kind] = ds
        by_patient[ds.PatientID][kind + "_path"] = path
    return by_patient


def test_echo_and_refusals(node, inputs):
    before = node.states()  # the node is shared by the module's tests, which may run in any order
    assert run_tool("echoscu", "-aet", MODALITY_AE, "-aec", NODE_AE, "127.0.0.1", str(node.port)).returncode == 0
    stranger = run_tool("echoscu", "-aet", "STRANGER", "-aec", NODE_AE, "127.0.0.1", str(node.port))
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stderr + stranger.stdout
    stranger_store = node.store(inputs["files"]["multi"][0], calling="STRANGER")
    assert stranger_store.returncode != 0
    ct = node.store(inputs["files"]["ct"][0])
    # The CT Image Storage presentation context is refused, so storescu has nothing to send it over.
    assert "no presentation context" in (ct.stdout + ct.stderr).lower()
    assert node.states() == before, "a refused instance was stored"


def test_two_series_in_one_association_reach_a_destination_that_comes_up_later(node, inputs, tmp_path_factory):
    files = inputs["files"]
    sent = node.store(*files["multi"], *files["single"])  # one storescu call: one association
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: len(node.result_sets("outbox")) == 2, 60, "two result sets in the outbox")
    wait_for(lambda: "unreachable or not answering" in node.console_text(), 20, "a failed attempt to reach the destination")
    # Then a destination that refuses every association: the results stay pending.
    refusing = StoreSCP(node.root / "refused", node.destination_port, PACS_AE, "--refuse").start()
    try:
        wait_for(lambda: "refused the association" in node.console_text(), 20, "a refused attempt")
    finally:
        refusing.stop()
    assert len(node.result_sets("outbox")) == 2 and not refusing.files()
    receiver = StoreSCP(node.root / "received" / "pair", node.destination_port, PACS_AE).start()
    try:
        wait_for(lambda: len(receiver.files()) == 4, 30, "one SR and one SC per series at the destination")
        wait_for(lambda: not node.result_sets("outbox"), 10, "the outbox to empty")
    finally:
        receiver.stop()
    results = received_results(receiver.folder)
    assert set(results) == {inputs["ids"]["multi"]["PatientID"], inputs["ids"]["single"]["PatientID"]}

    # The same series predicted from disk: the SR gives its box, key frame and score.
    out = tmp_path_factory.mktemp("predict") / "out"
    assert main(["predict", "--config-file", str(node.config), "--weights", str(node.weights), "--device", "cpu",
                 "--input", str(inputs["root"] / "pair"), "--out", str(out), "--salt", SALT]) == 0
    (node.root / "predict_out").symlink_to(out, target_is_directory=True)  # for the identity check
    by_frames = {entry["num_frames"]: entry for entry in json.loads((out / "series_scores.json").read_text()).values()}
    for name, num_frames in (("multi", 5), ("single", 3)):
        entry = by_frames[num_frames]
        result = results[inputs["ids"][name]["PatientID"]]
        sr = hd.sr.srread(result["SR_path"])
        groups = sr.content.get_planar_roi_measurement_groups()
        assert entry["frame_of_max"] is not None, "vacuous: the quick model kept no detection"
        key = groups[0]
        x, y, w, h = entry["box"]
        np.testing.assert_allclose(key.roi.value, [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], atol=1e-4)
        reference = key.roi.ContentSequence[0].ReferencedSOPSequence[0]
        source_of_key = pydicom.dcmread(files[name][0] if name == "multi" else files[name][entry["frame_of_max"]])
        assert reference.ReferencedSOPInstanceUID == source_of_key.SOPInstanceUID
        if name == "multi":
            assert int(reference.ReferencedFrameNumber) == entry["frame_of_max"] + 1
        scores = {m.name.meaning: m.value for m in key.get_measurements()}
        assert scores["Perforation detection score"] == pytest.approx(entry["score"], abs=1e-9)
        assert scores["Threshold Value"] == pytest.approx(entry["threshold"], abs=1e-12)
        expected = codes.SCT.Present if entry["perforation"] == "yes" else codes.SCT.Absent
        assert key.get_qualitative_evaluations()[0].value == expected
        assert result["SC"].BurnedInAnnotation == "YES"
        assert run_tool("dsrdump", str(result["SR_path"])).returncode == 0
        for kind in ("SR", "SC"):
            report = run_tool("dciodvfy", str(result[kind + "_path"]))
            errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
            assert not errors, (kind, errors)


def open_association(node):
    """An association from the modality's AE title, kept open (DCMTK's storescu always releases
    at once), so that a test can hold it, release it or abort it."""
    from pynetdicom import AE
    from pynetdicom.sop_class import XRayAngiographicImageStorage

    client = AE(ae_title=MODALITY_AE)
    client.add_requested_context(XRayAngiographicImageStorage)
    assoc = client.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    return assoc


def test_a_series_runs_only_once_its_association_is_released(node, inputs):
    before = node.result_sets("outbox") + node.result_sets("sent")
    assoc = open_association(node)
    assert assoc.send_c_store(pydicom.dcmread(inputs["files"]["held"][0])).Status == 0x0000
    time.sleep(QUIET_S * 4)  # quiet, but the association is still open: the series may not be complete
    assert node.result_sets("outbox") + node.result_sets("sent") == before
    assoc.release()
    wait_for(lambda: len(node.result_sets("outbox") + node.result_sets("sent")) == len(before) + 1, 30,
             "the held series' results once its association was released")


def test_aborted_association_gives_no_result(node, inputs):
    before = node.result_sets("outbox") + node.result_sets("sent")
    assoc = open_association(node)
    assert assoc.send_c_store(pydicom.dcmread(inputs["files"]["aborted"][0])).Status == 0x0000
    assoc.abort()
    wait_for(lambda: [s for s in node.states() if s["status"] == "aborted"], 10, "the series marked aborted")
    time.sleep(QUIET_S * 4)
    assert node.result_sets("outbox") + node.result_sets("sent") == before
    assert "its association was aborted" in node.console_text()


def test_undecodable_series_is_logged_and_the_node_keeps_serving(node, inputs):
    assert node.store(*inputs["files"]["broken"]).returncode == 0
    failed = wait_for(lambda: [s for s in node.states() if s["status"] == "failed"], 30, "the series marked failed")
    assert "truncated" in failed[0]["reason"]
    assert f"series {failed[0]['series']}: not processed" in node.console_text()
    assert list((node.storage / "series" / failed[0]["series"] / "instances").glob("*.dcm")), "received data lost"
    assert run_tool("echoscu", "-aet", MODALITY_AE, "-aec", NODE_AE, "127.0.0.1", str(node.port)).returncode == 0


def test_sigkill_and_restart_resend_what_was_pending_and_nothing_acknowledged(node, inputs):
    acknowledged = node.result_sets("sent")
    pending = node.result_sets("outbox")  # results of earlier tests still waiting (the destination is down)
    assert node.store(*inputs["files"]["xrf"]).returncode == 0
    wait_for(lambda: len(node.result_sets("outbox")) == len(pending) + 1, 60, "the XRF series' results in the outbox")
    expected = {pydicom.dcmread(p).PatientID for folder in node.result_sets("outbox") for p in folder.iterdir()}
    assert inputs["ids"]["xrf"]["PatientID"] in expected
    # A series still being received when the node dies may be incomplete: after the restart it waits.
    states_before = {s["series"] for s in node.states()}
    midway = open_association(node)
    assert midway.send_c_store(pydicom.dcmread(inputs["files"]["midway"][0])).Status == 0x0000
    node.kill()
    midway.abort()
    node.start()
    (caught,) = [s for s in node.states() if s["series"] not in states_before]
    assert caught["status"] == "aborted" and "stopped" in caught["reason"]
    receiver = StoreSCP(node.root / "received" / "after_restart", node.destination_port, PACS_AE).start()
    try:
        wait_for(lambda: len(receiver.files()) == 2 * len(expected), 30, "the pending results after the restart")
        wait_for(lambda: not node.result_sets("outbox"), 10, "the outbox to empty")
        time.sleep(2.5)  # more than one retry period: anything resent would arrive now
    finally:
        receiver.stop()
    results = received_results(receiver.folder)  # fails on a second SR or SC for one series
    assert set(results) == expected, "an acknowledged result was sent again, or a pending one was lost"
    assert all(set(r) == {"SR", "SC", "SR_path", "SC_path"} for r in results.values())
    assert len(node.result_sets("sent")) == len(acknowledged) + len(expected)


def test_identity_only_in_the_results_sent_back(node, inputs):
    received = node.root / "received"
    if not received.exists() or not (node.root / "predict_out").exists():
        # The module runs in order (random_order disabled) on one node; missing outputs mean an
        # earlier test did not deliver, or this test was selected alone: either way, not a pass.
        pytest.fail("checks the outputs of the earlier tests of this module (received results, predict_out); "
                    "they are missing: run the whole module")
    results = [pydicom.dcmread(p) for p in sorted(received.rglob("*")) if p.is_file()]
    assert len(results) >= 6  # two series, then the held and the XRF series after the restart
    ids_by_patient = {ids["PatientID"]: ids for ids in inputs["ids"].values()}
    for ds in results:
        ids = ids_by_patient[ds.PatientID]
        keywords = IDENTITY_IN_RESULTS + (("OperatorsName",) if ds.SOPClassUID == SC_CLASS else ())
        for keyword in keywords:
            assert str(ds[keyword].value) == ids[keyword], keyword
    # Everything else: the index, staging leftovers and log in storage, the console, predict's outputs.
    results_and_images = {p for p in node.storage.rglob("*.dcm")
                          if p.relative_to(node.storage).parts[0] in ("outbox", "sent")
                          or p.parent.name == "instances"}
    others = [p for p in node.storage.rglob("*") if p.is_file() and p not in results_and_images]
    assert any(p.name == "node.log" for p in others) and any(p.name == "state.json" for p in others)
    values = [ids[k] for ids in inputs["ids"].values() for k in NEVER_ELSEWHERE]
    scanned = assert_no_identity_leak([*others, node.console, (node.root / "predict_out").resolve()], values)
    assert scanned > 1000
    # Series names in the storage folder are pseudonyms, never the UIDs.
    assert all(p.name.startswith("S-") for p in (node.storage / "series").iterdir())


@pytest.mark.parametrize("option, value, message", [
    ("--destination", "PACS-at-host", "expected AE@HOST:PORT"),
    ("--destination", "PACS@127.0.0.1:70000", "expected AE@HOST:PORT"),
    ("--storage", "a-file", "exists and is not a folder"),
])
def test_bad_options_are_one_paragraph_before_any_work(tmp_path, capsys, option, value, message):
    (tmp_path / "a-file").write_text("not a folder")
    args = {"--destination": "PACS@127.0.0.1:11112", "--storage": str(tmp_path / "storage"), option: value}
    if option == "--storage":
        args["--storage"] = str(tmp_path / value)
    code = main(["serve", "--ae-title", NODE_AE, "--port", "0", "--config-file", "missing.yaml",
                 "--weights", "missing.pth", *[x for pair in args.items() for x in pair]])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
