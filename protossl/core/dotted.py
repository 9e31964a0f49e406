"""Nested mappings as flat ``{"a.b.c": value}`` dictionaries (configs, summaries).

One rule for everyone: mappings are walked, keys joined with dots; what a leaf is kept
depends on the caller: a results table keeps scalars only (a CSV cell holds no list),
comparing two configurations keeps every leaf (a list-valued key must count).

Example:
    >>> flatten_dotted({"usage": {"entropy": 1.5, "hist": [1, 2], "top": {"k": 3}}})
    {'usage.entropy': 1.5, 'usage.hist': [1, 2], 'usage.top.k': 3}
    >>> flatten_dotted({"usage": {"entropy": 1.5, "hist": [1, 2]}}, scalars_only=True)
    {'usage.entropy': 1.5}
"""

from __future__ import annotations

from typing import Any

__all__ = ["flatten_dotted"]

_SCALARS = (int, float, str, bool)


def flatten_dotted(value: Any, prefix: str = "", *, scalars_only: bool = False) -> dict[str, Any]:
    """Every leaf of ``value`` under its dotted path (``prefix`` first, if given).

    Args:
        value: A mapping (or a leaf, kept under ``prefix``).
        prefix: The path of ``value`` itself.
        scalars_only: Keep only numbers, strings, booleans and None (drop lists, arrays).
    """
    out: dict[str, Any] = {}
    _walk(prefix, value, out, scalars_only)
    return out


def _walk(prefix: str, value: Any, out: dict[str, Any], scalars_only: bool) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(f"{prefix}.{key}" if prefix else str(key), item, out, scalars_only)
    elif not scalars_only or value is None or isinstance(value, _SCALARS):
        out[prefix] = value
