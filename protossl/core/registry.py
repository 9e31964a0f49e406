"""One registry class for every "name -> implementation" table of protossl.

Methods, backbones, target builders, regularizers and evaluation protocols are chosen
by name in a config or on the command line. Each table is a :class:`Registry`, so they
all behave alike: a duplicate name is a programming error raised at import time (two
modules claiming one name would otherwise depend on import order), an unknown name is
a one-line :class:`~protossl.core.errors.UserError` with a did-you-mean and the list of
known names, and the CLI lists the names from the registry itself.

Example:
    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square")
    ... class Square: ...
    >>> SHAPES.lookup("square") is Square, SHAPES.names()
    (True, ['square'])
    >>> SHAPES.lookup("sqare")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    protossl.core.errors.UserError: unknown shape 'sqare' (did you mean 'square'?); known ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from protossl.core.errors import UserError

__all__ = ["Registry"]

T = TypeVar("T")
_MISSING = object()


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping from names to implementations, filled by :meth:`register`.

    Args:
        kind: What the entries are, singular ("method", "target builder"); used in
            messages.
        plural: The plural for messages (default: ``kind + "s"``).
    """

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}

    # Mapping protocol: ``name in registry``, ``registry[name]``, ``sorted(registry)``.
    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; the same entry again is a no-op.

        Raises:
            ValueError: ``name`` already names a different entry.
        """
        existing = self._entries.get(name, _MISSING)
        if existing is not _MISSING and existing is not entry:
            owner = getattr(existing, "__qualname__", repr(existing))
            raise ValueError(f"{self.kind} {name!r} is already registered to {owner}")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@REGISTRY.register("name")``."""

        def decorator(entry: T) -> T:
            return self.add(name, entry)

        return decorator

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests that register a toy entry clean up with this)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """The registered names, sorted (for help texts and messages)."""
        return sorted(self._entries)

    def unknown_message(self, name: str) -> str:
        """``unknown KIND 'name' (did you mean 'x'?); known KINDS: a, b``."""
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {self.kind} '{name}'{hint}; known {self.plural}: {', '.join(self.names())}"

    def lookup(self, name: str) -> T:
        """The entry registered as ``name``.

        Raises:
            UserError: no such name (one line, with a did-you-mean and the known names).
        """
        if name not in self._entries:
            raise UserError(self.unknown_message(name))
        return self._entries[name]
