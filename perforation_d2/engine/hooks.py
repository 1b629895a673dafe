"""Training hooks: the final checkpoint after the last evaluation, and a best checkpoint that survives resume.

The operating point the evaluation hook chooses lives in :mod:`.operating_point`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detectron2.engine import hooks


class FinalCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's periodic checkpointer, but ``model_final`` is saved in ``after_train``.

    Registered after the evaluation hooks, so ``model_final.pth`` is written after the final
    evaluation and carries that evaluation's operating point, and only when every iteration
    succeeded (a failed last iteration leaves no ``model_final``).
    """

    def after_step(self) -> None:
        if self.trainer.iter + 1 < self.trainer.max_iter:
            super().after_step()

    def after_train(self) -> None:
        # TrainerBase.train sets iter = max_iter only after the last iteration completed.
        if self.trainer.iter >= self.trainer.max_iter:
            self.step(self.trainer.max_iter - 1)


class ResumableBestCheckpointer(hooks.BestCheckpointer):
    """Detectron2's BestCheckpointer whose best score survives ``--resume``.

    Detectron2's hook keeps the best score in memory only, so after a resume the first evaluation
    always replaced ``model_best.pth``, even with a worse model. Its state is saved with the
    trainer's (``TrainerBase.state_dict`` collects the hooks' states).
    """

    def state_dict(self) -> dict[str, Any]:
        if self.best_metric is None:
            return {}
        return {"best_metric": float(self.best_metric), "best_iter": int(self.best_iter)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_metric = state.get("best_metric")
        self.best_iter = state.get("best_iter")
