"""What several commands share: the program name and argument types.

Example:
    >>> positive_int("3")
    3
"""

from __future__ import annotations

import argparse
import math

PROG = "protossl"
# The layouts `analyze` and `dedupe` accept (protossl.diagnostics.checkpoints.FORMAT_CHOICES,
# written out so that parsing a command line imports neither torch nor the readers; a test
# keeps the two equal).
CHECKPOINT_FORMATS = ["auto", "protossl", "dino", "ibot", "dinov2", "msn", "swav", "esvit"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return value
