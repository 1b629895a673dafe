"""``python -m perforation_d2 <command>``: the command-line surface of SPEC section 5.

Each command lives in the module that owns its subject and exposes ``add_arguments(parser)``
and ``run(args) -> int``; modules are imported only when their command runs, so ``--help`` is
fast and one command's heavy dependencies never slow another. Bad input raises
:class:`~perforation_d2.errors.DSAInputError`, printed here as one paragraph (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import DSAInputError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("perforation_d2.data.synth", "generate the synthetic DSA cohort"),
    "prepare-dicom": ("perforation_d2.data.dicom_import", "convert DICOM XA/XRF series to a cohort"),
    "validate": ("perforation_d2.data.validate", "check a cohort JSON and list every problem"),
    "split": ("perforation_d2.data.splits", "patient-level K-fold and leave-one-cohort-out splits"),
    "predict": ("perforation_d2.predict", "run a trained model on DICOM series or a cohort"),
    "evaluate": ("perforation_d2.evaluation.evaluate_cmd", "series-level metrics of one predictions file"),
    "compare": ("perforation_d2.evaluation.compare", "compare models: AUC CIs, DeLong tests, ensemble"),
    "benchmark": ("perforation_d2.benchmark", "speed and memory ratios measured in one run"),
    "demo": ("perforation_d2.demo", "the main job end to end on the synthetic cohort"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perforation_d2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage / help and exits
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(
        prog=f"python -m perforation_d2 {name}", description=COMMANDS[name][1]
    )
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except DSAInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was left behind", file=sys.stderr)
        return 130
