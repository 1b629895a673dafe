"""A training killed with SIGKILL between checkpoints resumes exactly where it left off.

``train_net.py`` runs in a subprocess, is killed after its first checkpoint while working on the
following iterations, and is restarted with ``--resume`` (in this process, through
``train_net.main``, to spare a second interpreter start-up). The resumed run starts at the
iteration after the checkpoint, and from there its losses, learning rates, final weights and
optimizer state are bit-identical to those of an uninterrupted run: the checkpoint carries the
optimizer, LR scheduler, RNG states and RetinaNet's loss normaliser, and the sampler skips the
samples already trained on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import torch
from helpers.cohorts import make_toy_cohort
from helpers.training import (
    QUICK_TEMPORAL,
    REPO,
    load_train_net,
    one_thread_and_restored_determinism,
    python,
    read_metrics,
    state_dicts_equal,
    subprocess_env,
    tiny_opts,
    train_args,
)

MAX_ITER = 6
CHECKPOINT_PERIOD = 2  # checkpoints after iterations 1 and 3, then model_final
KEYS = ("total_loss", "loss_cls", "loss_box_reg", "lr")


def _opts(cohort_dir, out):
    return tiny_opts(cohort_dir, out, MAX_ITER, "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD),
                     "DATASETS.TEST", "()")


def _start(cohort_dir, out):
    cmd = [python(), str(REPO / "train_net.py"), "--config-file", QUICK_TEMPORAL, *_opts(cohort_dir, out)]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_between_checkpoints(process, out) -> int:
    """SIGKILL ``process`` once it trains past its first checkpoint; return that checkpoint's iteration."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be killed:\n" + process.stdout.read()
        last = out / "last_checkpoint"
        if last.exists():
            checkpoint_iter = int(last.read_text().removeprefix("model_").removesuffix(".pth"))
            if any(i > checkpoint_iter for i in read_metrics(out)):
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return checkpoint_iter
        time.sleep(0.02)
    process.kill()
    raise AssertionError("no checkpoint within 300 s")


def test_sigkill_then_resume_continues_exactly(tmp_path):
    cohort_dir = make_toy_cohort(tmp_path / "kill", num_patients=2, frames=3).parent
    killed_out = tmp_path / "killed"
    process = _start(cohort_dir, killed_out)
    checkpoint_iter = _kill_between_checkpoints(process, killed_out)
    assert process.returncode == -signal.SIGKILL
    assert (checkpoint_iter + 1) % CHECKPOINT_PERIOD == 0 and checkpoint_iter < MAX_ITER - 1
    assert not (killed_out / "model_final.pth").exists()
    trained_past = max(read_metrics(killed_out))
    assert trained_past > checkpoint_iter  # work after the checkpoint was lost

    train_net = load_train_net()
    reference_out = tmp_path / "reference"
    with one_thread_and_restored_determinism():
        train_net.main(train_args(["--config-file", QUICK_TEMPORAL, "--resume", *_opts(cohort_dir, killed_out)]))
        starts = [line for line in (killed_out / "log.txt").read_text().splitlines() if "Starting training" in line]
        assert starts[-1].endswith(f"Starting training from iteration {checkpoint_iter + 1}")
        # The uninterrupted reference run.
        train_net.main(train_args(["--config-file", QUICK_TEMPORAL, *_opts(cohort_dir, reference_out)]))

    reference, after_resume = read_metrics(reference_out), read_metrics(killed_out)
    for iteration in range(checkpoint_iter + 1, MAX_ITER):
        assert {k: after_resume[iteration][k] for k in KEYS} == {k: reference[iteration][k] for k in KEYS}, iteration

    final = torch.load(killed_out / "model_final.pth", weights_only=True)
    expected = torch.load(reference_out / "model_final.pth", weights_only=True)
    assert state_dicts_equal(final["model"], expected["model"]) == []
    assert final["trainer"]["hooks"] == expected["trainer"]["hooks"]  # LR scheduler state
    momentum = final["trainer"]["_trainer"]["optimizer"]["state"]
    expected_momentum = expected["trainer"]["_trainer"]["optimizer"]["state"]
    assert all(torch.equal(momentum[i]["momentum_buffer"], expected_momentum[i]["momentum_buffer"])
               for i in expected_momentum)
