"""Argument types shared by the commands, so every command checks a value the same way.

Each is an ``argparse`` ``type=`` callable: a bad value makes argparse print the usage line and
one sentence naming the option's problem (exit status 2) before any work starts, never a
traceback from deep inside the work.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit integers


def bounded_int(minimum: int, maximum: int, what: str = "an integer") -> Callable[[str], int]:
    """An integer in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between {minimum} and {maximum}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def finite_float(minimum: float | None = None, maximum: float | None = None, *, exclusive_minimum: bool = False,
                 what: str = "a number") -> Callable[[str], float]:
    """A finite float (no inf / nan) within the given bounds."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if exclusive_minimum else '>='} {minimum:g}, got {value:g}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {value:g}")
        return value

    parse.__name__ = what
    return parse


seed = bounded_int(0, SEED_MAX, "a seed (an integer from 0 to 2**32-1)")
positive_int = bounded_int(1, 2**31 - 1, "a positive integer")
