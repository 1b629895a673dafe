"""Seeding and deterministic execution.

With ``cfg.SEED >= 0`` (the default, -1, draws a random seed, so nothing repeats),
:func:`seed_all` seeds Python, numpy and torch (every device) and asks torch for deterministic
algorithms. Everything else derives from those seeds: the training sampler's shuffling seed is
drawn from numpy (``comm.shared_random_seed``), the loader workers' seeds come from a generator
seeded with ``SEED`` (``Trainer`` passes it to ``build_detection_train_loader``), and in the main
process the augmentations draw from the seeded numpy RNG, so the sequence of batches, the
augmentations and the weight initialisation repeat exactly. Each DDP rank uses ``seed + rank``
(Detectron2's convention); DDP broadcasts rank 0's initial weights, so the ranks still start
from the same model.

On CPU this makes two runs with the same seed, the same configuration and the same number of
threads give bit-identical losses, weights and predictions (``tests/test_determinism.py``).

What is *not* deterministic on GPU, even with a fixed seed:

- operations implemented with ``atomicAdd`` accumulate floating-point sums in a
  scheduling-dependent order: the backward of ``ROIAlign`` / ``ROIPool`` (Faster and Cascade
  R-CNN heads, torchvision's CUDA kernel), ``index_add_`` / ``scatter_add_`` /
  ``index_put_(accumulate=True)``, the backward of ``grid_sample`` and of linear/bilinear
  ``F.interpolate``, ``torch.bincount`` / ``histc``; torch warns about these in deterministic
  mode instead of failing (``warn_only=True``) so training still runs;
- cuDNN picks convolution algorithms by timing when ``cudnn.benchmark`` is on, and several of its
  algorithms are themselves non-deterministic: :func:`seed_all` turns benchmarking off and
  ``cudnn.deterministic`` on, which costs speed;
- cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (set here when absent, effective only if CUDA
  has not been initialised yet) for reproducible matrix products;
- multi-GPU training: NCCL's all-reduce sums gradients in an order that depends on the topology
  and the algorithm it picks, so DDP runs on different machines or GPU counts differ in the last
  bits, and those differences grow over training;
- mixed precision (``SOLVER.AMP.ENABLED``) changes every number and its loss scaler reacts to
  overflow, so AMP and FP32 runs diverge.

Deterministic mode also turns off TorchScript's graph optimisation (see :func:`seed_all`), so
that a second training in the same process repeats the first exactly.

Results on CPU also depend on the number of intra-op threads (reductions are split per thread)
and on the CPU's instruction set (oneDNN kernels), so compare runs on the same machine.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def seed_all(seed: int, deterministic: bool = True) -> None:
    """Seed ``random``, numpy and torch; with ``deterministic``, ask torch for deterministic kernels.

    Deterministic mode uses ``warn_only=True``: an operation without a deterministic
    implementation (only on GPU, see the module doc) warns instead of stopping training.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (the global RNG Detectron2 and the mapper draw from)
    torch.manual_seed(seed)
    if not deterministic:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # TorchScript functions (Detectron2 scripts a few helpers) run unoptimised for their first
    # calls, then switch to an optimised autodiff graph whose gradients differ in the last bits:
    # a second training in the same process would not repeat the first. Keep them unoptimised.
    # (A function already optimised by an earlier caller stays so, which is why the RetinaNet
    # focal loss is fvcore's eager one: modeling/meta_arch.py.)
    torch._C._set_graph_executor_optimize(False)
    torch.backends.cudnn.deterministic = True
    if torch.backends.cudnn.benchmark:
        logger.info("cuDNN benchmarking turned off: it picks algorithms by timing (not reproducible)")
    torch.backends.cudnn.benchmark = False


class RNGStates:
    """The process's Python, numpy and torch RNG states as a checkpointable (plain values).

    Saved in every training checkpoint and restored by ``--resume``, so that the augmentations
    drawn after a resume are those an uninterrupted run would have drawn (with
    ``DATALOADER.NUM_WORKERS 0``; loader workers restart their own streams). Only rank 0 saves
    checkpoints, so in DDP every rank resumes with rank 0's states: training continues correctly
    but other ranks' augmentations differ from an uninterrupted run's.
    """

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002
        state = {
            "python": [version, list(internal), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))  # noqa: NPY002
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            cuda_states = state["cuda"][: torch.cuda.device_count()]
            torch.cuda.set_rng_state_all(cuda_states)
