"""What a sweep file expands into: one ``SweepRun`` per grid point, each with its
``EvalTask`` list, and how grid values are written into ``--set`` overrides and run names.

Example:
    >>> format_value([1, True, "a"])
    '[1,true,a]'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvalTask:
    """One evaluation of one run: the arguments of ``protossl eval``, placeholders filled."""

    data: str
    test_data: str | None
    protocols: tuple[str, ...]
    features: str = "backbone"
    device: str = "cpu"

    @property
    def label(self) -> str:
        """The key of this evaluation in ``summary["eval"]["runs"]`` (as ``protossl eval``
        writes it: features, data, test data)."""
        return f"{self.features}|{self.data}|{self.test_data or self.data}"


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid, and the evaluations to run on it once trained."""

    name: str
    preset: str
    overrides: tuple[str, ...]
    grid_values: dict[str, Any] = field(default_factory=dict)
    evals: tuple[EvalTask, ...] = ()
    num_threads: int = 0


def format_value(value: Any) -> str:
    """A grid value as ``--set`` and run names write it (YAML booleans, ``[a,b]`` lists)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def short_key(key: str) -> str:
    """The last part of a dotted config key.

    Example:
        >>> short_key("model.num_prototypes")
        'num_prototypes'
    """
    # model.num_prototypes -> num_prototypes: run names stay readable
    return key.split(".")[-1]
