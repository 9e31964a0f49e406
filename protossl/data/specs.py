"""Data specs: the string a user passes as ``--data``, parsed into a :class:`DataSpec`.

A spec names a source and an optional long-tail suffix:

* ``digits`` -- scikit-learn's bundled 8x8 handwritten digits (:mod:`protossl.data.digits`);
* ``folder:PATH`` -- an ImageFolder tree (:mod:`protossl.data.folder_walk`);
* ``@lt=R`` -- subsample the train split to an imbalance ratio R
  (:func:`protossl.data.splits.long_tail_counts`).

Parsing only checks the text; whether a folder exists is found out when it is loaded
(:func:`protossl.data.sources.load_dataset`), so a spec can be parsed on a machine without
the data (e.g. when a sweep is planned or a results table is labelled).

Example:
    >>> parse_data_spec("folder:/data/cifar10@lt=100")
    DataSpec(kind='folder', path='/data/cifar10', lt_ratio=100.0)
    >>> str(parse_data_spec(" Digits@lt=10 "))
    'digits@lt=10'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from protossl.core.errors import UserError

Split = Literal["train", "test"]

KNOWN_SPECS = ("digits", "folder:PATH")
# Kinds the design names but this package does not load yet; they get a pointed message.
NOT_YET_SUPPORTED = ("synthetic", "cifar10", "cifar100", "stl10")


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: which source (``kind``), where (``path``), and an optional
    long-tail imbalance ratio (``lt_ratio``, from an ``@lt=R`` suffix).

    Example:
        >>> parse_data_spec("folder:/data/cifar10@lt=100")
        DataSpec(kind='folder', path='/data/cifar10', lt_ratio=100.0)
    """

    kind: str
    path: str | None = None
    lt_ratio: float | None = None

    def __str__(self) -> str:
        text = self.kind if self.path is None else f"{self.kind}:{self.path}"
        if self.lt_ratio is not None:
            text += f"@lt={self.lt_ratio:g}"
        return text


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``digits``, ``folder:PATH`` and an optional ``@lt=R`` suffix into a :class:`DataSpec`.

    Raises:
        UserError: for an empty or unknown spec, a missing path, or a bad imbalance ratio.

    Example:
        >>> parse_data_spec("digits@lt=10")
        DataSpec(kind='digits', path=None, lt_ratio=10.0)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty data spec; use one of: {', '.join(KNOWN_SPECS)}")
    text = spec.strip()
    lt_ratio = None
    # Only a trailing "@lt=" is an option, so paths that contain "@" elsewhere still work.
    match = re.fullmatch(r"(.*)@lt=([^@/]*)", text)
    if match:
        text, lt_ratio = match.group(1), _parse_lt_ratio(match.group(2), spec)
    option = re.search(r"@([A-Za-z_]+)=[^@/]*$", text)
    if option:
        raise UserError(
            f"unknown option '@{option.group(1)}=' in data spec '{spec}'; "
            "the only option is @lt=R (e.g. folder:PATH@lt=100)"
        )
    kind, has_path, path = text.partition(":")
    return _check_kind(kind.strip().lower(), path.strip() if has_path else None, lt_ratio, spec)


def _parse_lt_ratio(value: str, spec: str) -> float:
    try:
        ratio = float(value)
    except ValueError:
        ratio = math.nan
    # nan and inf fail isfinite: one message for every value that is not a usable ratio.
    if not math.isfinite(ratio) or ratio < 1.0:
        raise UserError(
            f"bad long-tail ratio '@lt={value}' in data spec '{spec}'; "
            "use a number >= 1, e.g. @lt=100 (largest class / smallest class)"
        )
    return ratio


def _check_kind(kind: str, path: str | None, lt_ratio: float | None, spec: str) -> DataSpec:
    known = ", ".join(KNOWN_SPECS)
    if kind == "digits":
        if path:
            raise UserError(f"data spec '{spec}': digits takes no path; use --data digits")
        return DataSpec("digits", None, lt_ratio)
    if kind == "folder":
        if not path:
            raise UserError(f"data spec '{spec}' has no path; use folder:PATH")
        return DataSpec("folder", path, lt_ratio)
    if kind in NOT_YET_SUPPORTED:
        raise UserError(
            f"data spec '{spec}': '{kind}' is not yet supported; use one of: {known} "
            "(an ImageFolder copy of the data works with folder:PATH)"
        )
    raise UserError(f"unknown data spec '{spec}'; use one of: {known}")
