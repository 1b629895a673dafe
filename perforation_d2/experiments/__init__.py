"""Cross-validation experiments: the paper's K-fold x R-run protocol as one idempotent command.

- :mod:`.plan`: the jobs of an experiment (config x split x run x training fraction), the split
  files they train on, and the experiment's fingerprint (a changed config is refused);
- :mod:`.jobs`: one job's state on disk and how it runs (a normal training, resumed when it was
  interrupted);
- :mod:`.executors`: where jobs run: local processes in parallel, or submitit (Slurm, or its
  local executor);
- :mod:`.report`: pooled out-of-fold metrics, Table 1 (mean +- std over runs), DeLong and ANOVA,
  Table 2 / Table 4 / the learning curve, rebuilt from whatever jobs have finished;
- :mod:`.diagnostics`: the time-use table (clip ablations, pooled) and the AUC over training.
"""

from .plan import ExperimentPlan, Job, build_plan

__all__ = ["ExperimentPlan", "Job", "build_plan"]
