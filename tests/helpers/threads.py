"""Threads in tests: one intra-op thread for a test module (``from helpers.threads import one_thread``,
autouse), and the loading threads of ``data.prefetch`` still alive (``prefetch_threads``).

Tiny convolutions gain nothing from threads, and on a shared 2-core CI machine several OpenMP
threads per process spin against each other and run many times slower.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from perforation_d2.data.prefetch import THREAD_NAME


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def prefetch_threads() -> list[threading.Thread]:
    """The ``data.prefetch`` loading threads alive now (none may outlive its ``with`` block)."""
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]
