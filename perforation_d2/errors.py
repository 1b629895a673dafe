"""User-facing errors.

Every problem caused by the user's input (a file, a config, a command-line value) is raised as a
:class:`DSAInputError` whose message is one self-contained paragraph naming the file and the
problem. The command-line entry point prints that paragraph and exits with status 2 instead of a
traceback; library users can catch it like any ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable


class DSAInputError(ValueError):
    """Bad input (file, config or argument), explained in one paragraph."""


def format_problems(path: str, problems: Iterable[str], what: str = "problem", limit: int = 50) -> str:
    """One paragraph listing ``problems`` found in ``path`` (at most ``limit`` of them, then a count)."""
    problems = list(problems)
    shown = problems[:limit]
    more = len(problems) - len(shown)
    plural = what if len(problems) == 1 else what + "s"
    text = f"{path}: {len(problems)} {plural}: " + "; ".join(shown)
    if more > 0:
        text += f"; and {more} more"
    return text + "."
