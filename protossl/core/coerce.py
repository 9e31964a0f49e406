"""Convert a YAML or command-line value to a dataclass field's annotated type.

The config (:mod:`protossl.config`) reads every key of a preset, a ``--config`` file
and a ``--set`` through :func:`coerce`, so ``"true"``, ``1`` and ``yes`` all become a
``bool`` and a bad value is a one-line :class:`~protossl.core.errors.UserError` naming
the key.

Example:
    >>> coerce("[0.4, 1]", list[float], "data.global_scale")
    [0.4, 1.0]
    >>> coerce("null", int | None, "optim.max_steps") is None
    True
    >>> coerce("many", int, "data.batch_size")
    Traceback (most recent call last):
    ...
    protossl.core.errors.UserError: data.batch_size must be an integer (got 'many')
"""

from __future__ import annotations

import math
import typing
from typing import Any

from protossl.core.errors import UserError
from protossl.core.safe_yaml import load_yaml

__all__ = ["coerce"]


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise UserError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if origin is list:
        if isinstance(value, str):
            try:
                value = load_yaml(value, key)
            except UserError:
                raise UserError(f"{key} must be a list like [0.4, 1.0] (got {value!r})") from None
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list like [0.4, 1.0] (got {value!r})")
        return [coerce(v, args[0], key) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise UserError(f"{key} must be true or false (got {value!r})")
    if annotation is int:
        if isinstance(value, bool):
            raise UserError(f"{key} must be an integer (got {value!r})")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise UserError(f"{key} must be an integer (got {value!r})") from None
    if annotation is float:
        if isinstance(value, bool):
            raise UserError(f"{key} must be a number (got {value!r})")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key} must be a number (got {value!r})") from None
        if not math.isfinite(number):
            raise UserError(f"{key} must be a finite number (got {value!r})")
        return number
    if origin is dict:
        if isinstance(value, str):
            try:
                value = load_yaml(value, key)
            except UserError:
                value = None
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a mapping like {{name: value}} (got {value!r})")
        return dict(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise UserError(f"{key} must be a string (got {value!r})")
        return str(value)
    return value
