"""User-facing errors.

A :class:`UserError` is a problem the user can fix (a bad flag value, a missing
file, an empty data set, a loss that became NaN). The command line prints its
message as one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "one_line"]


def one_line(text: str) -> str:
    """``text`` with control characters written as escapes, so it prints as one line.

    Messages quote what the user gave (a ``--set`` value, a file name, a YAML key), and
    that can hold a newline or a terminal escape sequence.

    Example:
        >>> one_line("got 'a\\nb'")
        "got 'a\\\\nb'"
    """
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


class UserError(Exception):
    """A problem with the user's input, reported as one line with exit status 2.

    Example:
        >>> raise UserError("model.num_prototypes must be >= 2 (got 1)")  # doctest: +SKIP
    """

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)
