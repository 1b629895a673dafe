"""One intra-op thread for a test module: ``from helpers.threads import one_thread`` (autouse).

Tiny convolutions gain nothing from threads, and on a shared 2-core CI machine several OpenMP
threads per process spin against each other and run many times slower.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
