"""Helpers shared by the training tests (train_net, resume, DDP, determinism, overfit, NaN).

The tests train the quick temporal config (RetinaNet + temporal convolution, T=5) on tiny toy
cohorts of 64 px frames, with one intra-op thread: on a loaded 2-core machine, two OpenMP
threads per process spin against each other and run ten times slower.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
QUICK_TEMPORAL = str(REPO / "configs" / "quick" / "retinanet_tconv_T5.yaml")


def load_train_net():
    """The ``train_net`` script as the module ``train_net`` (it lives at the repository root).

    Registered in ``sys.modules`` so that ``train_net.main`` pickles by name for the workers that
    Detectron2's ``launch`` spawns (they import it from the repository root on ``sys.path``).
    """
    if "train_net" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["train_net"] = module
    return sys.modules["train_net"]


def tiny_opts(cohort_dir: Path, output_dir: Path, max_iter: int, *extra: str) -> list[str]:
    """Config overrides for a few iterations on ``cohort_dir`` (registered under its folder name).

    Frames are resized to 32 px (the toy cohort's 16 px boxes become 8 px, the smallest anchor).
    """
    name = Path(cohort_dir).name
    return [
        "DATASETS.DSA.COHORT_DIRS", f"['{cohort_dir}']",
        "DATASETS.TRAIN", f"('{name}',)",
        "DATASETS.TEST", f"('{name}',)",
        "INPUT.FRAME_SIZE", "32",
        "INPUT.DSA_AUG.ENABLED", "True",
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.LOG_PERIOD", "1",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "TEST.EVAL_PERIOD", "0",
        "SEED", "0",
        "OUTPUT_DIR", str(output_dir),
        *extra,
    ]


def train_args(argv: Sequence[str]) -> argparse.Namespace:
    """``train_net.py``'s parsed arguments for ``argv``."""
    from detectron2.engine import default_argument_parser

    return default_argument_parser().parse_args(list(argv))


def read_metrics(output_dir: Path) -> dict[int, dict]:
    """``metrics.json`` lines by iteration; later lines (a resumed run) override earlier ones."""
    records: dict[int, dict] = {}
    path = Path(output_dir) / "metrics.json"
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by SIGKILL
            record = json.loads(line)
            records.setdefault(record["iteration"], {}).update(record)
    return records


def subprocess_env() -> dict[str, str]:
    """Environment of a ``train_net.py`` subprocess: one thread, the repository importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def python() -> str:
    return sys.executable


@contextlib.contextmanager
def one_thread_and_restored_determinism() -> Iterator[None]:
    """Run with one intra-op thread; undo the global switches that ``setup`` (``seed_all``) sets,
    and remove the log handlers it adds (they would write to this test's captured streams and
    files after the test)."""
    loggers = [logging.getLogger(name) for name in ("detectron2", "fvcore")]
    handlers = [list(logger.handlers) for logger in loggers]
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    graph_optimize = torch._C._get_graph_executor_optimize()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        torch._C._set_graph_executor_optimize(graph_optimize)
        for logger, before in zip(loggers, handlers):
            for handler in [h for h in logger.handlers if h not in before]:
                logger.removeHandler(handler)
                handler.close()


def state_dicts_equal(a: dict, b: dict) -> list[str]:
    """Keys whose tensors differ (or are missing) between two model state dicts."""
    keys = set(a) | set(b)
    return sorted(k for k in keys if k not in a or k not in b or not torch.equal(a[k], b[k]))
