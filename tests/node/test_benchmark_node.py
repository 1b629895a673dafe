"""The node's benchmark row runs end to end (in process, loopback) and gives a positive ratio."""

from __future__ import annotations

import argparse

import torch

from perforation_d2.benchmarks.node import benchmark_node


def test_node_benchmark_row():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (row,) = benchmark_node(argparse.Namespace(quick=True))
    finally:
        torch.set_num_threads(threads)
    assert row.section == "node" and row.value > 0 and " s vs " in row.note
