"""User-facing errors.

A :class:`UserError` is a problem the user can fix (a bad flag value, a missing
file, an empty data set, a loss that became NaN). The command line prints its
message as one line and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line with exit status 2.

    Example:
        >>> raise UserError("model.num_prototypes must be >= 2 (got 1)")  # doctest: +SKIP
    """
