"""Helpers for the DICOM results and node tests: external DICOM tools, free ports, waiting.

The tools are independent DICOM software from Debian: DCMTK (``dcmtk``: echoscu, storescu,
storescp, dsrdump) and dicom3tools (``dicom3tools``: dciodvfy). Without them a test is skipped
with the package to install, except in CI (``CI=true``), where it fails with that message.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

TOOL_PACKAGES = {"echoscu": "dcmtk", "storescu": "dcmtk", "storescp": "dcmtk", "dsrdump": "dcmtk",
                 "dciodvfy": "dicom3tools"}


def require_tool(program: str) -> str:
    """The path of ``program``; skip (fail in CI) naming the Debian package when it is missing."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} not found: install the Debian package {TOOL_PACKAGES[program]} (apt-get install -y {TOOL_PACKAGES[program]})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_tool(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    require_tool(args[0])
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_process(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM ``process`` (when running), SIGKILL it after ``timeout`` s, and reap it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class StoreSCP:
    """DCMTK ``storescp`` receiving into ``folder`` on ``port`` as AE ``ae_title`` (start/stop);
    ``options`` are more storescp options (``--refuse``: refuse every association)."""

    def __init__(self, folder: Path, port: int, ae_title: str = "PACS", *options: str):
        self.folder, self.port, self.ae_title, self.options = Path(folder), port, ae_title, options
        self.process: subprocess.Popen | None = None

    def start(self) -> StoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [require_tool("storescp"), "--aetitle", self.ae_title, "--output-directory", str(self.folder),
             "--acse-timeout", "10", "--dimse-timeout", "10", *self.options, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self.process = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file()) if self.folder.exists() else []
