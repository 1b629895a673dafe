"""The address-space cap of the DICOM tests' worker subprocesses (imported by their scripts)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import numpy as np


def cap_address_space(extra_bytes: int) -> bool:
    """Limit this process (RLIMIT_AS) to its mapped size now plus ``extra_bytes``; returns whether
    the limit is enforced (an allocation beyond it fails), so a test can insist that it is."""
    mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        np.ones(limit, dtype=np.uint8)
    except MemoryError:
        return True
    return False
