"""The benchmark sections, one module each, run by ``python -m perforation_d2 benchmark``.

A section is a function ``(args) -> list[BenchRow]``; :data:`SECTIONS` lists them in the order
they run. What they share (the row, the one timer, the inputs) is in :mod:`.common`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .common import BenchRow
from .data import benchmark_data
from .deployment import benchmark_deployment
from .evaluation import benchmark_evaluator
from .inference import benchmark_inference
from .node import benchmark_node
from .training import benchmark_training

# section name -> function; run in this order.
SECTIONS: dict[str, Callable[[argparse.Namespace], list[BenchRow]]] = {
    "data": benchmark_data,
    "training": benchmark_training,
    "inference": benchmark_inference,
    "evaluator": benchmark_evaluator,
    "deployment": benchmark_deployment,
    "node": benchmark_node,
}

__all__ = ["SECTIONS", "BenchRow"]
