"""``python -m perforation_d2 <command>``: detect vessel perforations in DSA series (train, predict, evaluate, ...).

Each command is one module of :mod:`perforation_d2.commands` exposing ``add_arguments(parser)``
and ``run(args) -> int`` (or ``main(argv) -> int`` when it parses its own arguments, as ``train``
does with Detectron2's parser); modules are imported only when their command runs, so ``--help``
is fast and one command's heavy dependencies never slow another. Bad input raises
:class:`~perforation_d2.errors.DSAInputError`, printed here as one paragraph (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .commands import COMMANDS
from .errors import DSAInputError


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
    if hasattr(module, "main"):
        return int(module.main(argv[1:]) or 0)
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
