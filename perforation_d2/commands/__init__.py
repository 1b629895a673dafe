"""The command-line commands, one module each; only :mod:`perforation_d2.cli` imports them.

A command module parses its arguments (``add_arguments(parser)`` + ``run(args)``, or ``main(argv)``)
and calls library code; library code never imports a command module.
"""

from __future__ import annotations

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("perforation_d2.commands.synth", "generate the synthetic DSA cohort"),
    "train": ("perforation_d2.commands.train", "train or evaluate a model (the arguments of train_net.py)"),
    "prepare-dicom": ("perforation_d2.commands.prepare_dicom", "convert DICOM XA/XRF series to a cohort"),
    "validate": ("perforation_d2.commands.validate", "check a cohort JSON and list every problem"),
    "split": ("perforation_d2.commands.split", "patient-level K-fold and leave-one-cohort-out splits"),
    "predict": ("perforation_d2.commands.predict", "run a trained model on DICOM series or a cohort"),
    "serve": ("perforation_d2.commands.serve", "a DICOM node: receive XA/XRF series, send back SR + capture"),
    "evaluate": ("perforation_d2.commands.evaluate", "series-level metrics of one predictions file"),
    "compare": ("perforation_d2.commands.compare", "compare models: AUC CIs, DeLong tests, ensemble"),
    "cross-validate": ("perforation_d2.commands.cross_validate", "K-fold x R-run experiments (local or Slurm) and their report"),
    "export": ("perforation_d2.commands.export", "ONNX graphs of a trained model, checked, with their record"),
    "benchmark": ("perforation_d2.commands.benchmark", "speed and memory ratios measured in one run"),
    "demo": ("perforation_d2.commands.demo", "the main job end to end on the synthetic cohort"),
}
