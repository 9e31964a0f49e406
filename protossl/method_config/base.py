"""The section registry: a method's own config section, registered by its YAML key.

A section is a dataclass of one method's settings (``ibot:`` for iBOT, Zhou et al.,
ICLR 2022) with its own :meth:`MethodSection.validate`. :class:`protossl.config.Config`
adds one field per registered section after its run-level fields, so a section name
is also a top-level YAML key, a ``--set`` prefix and an attribute (``cfg.ibot``).

Example:
    >>> from dataclasses import dataclass
    >>> @register_section("toy")
    ... @dataclass
    ... class ToyConfig(MethodSection):
    ...     depth: int = 2
    ...     def validate(self) -> None:
    ...         require(self.depth >= 1, f"toy.depth must be >= 1 (got {self.depth})")
    >>> SECTIONS["toy"] is ToyConfig
    True
    >>> register_section("toy")(dataclass(type("Other", (MethodSection,), {})))
    Traceback (most recent call last):
    ...
    ValueError: config section 'toy' is already registered to ToyConfig
    >>> ToyConfig(depth=0).validate()
    Traceback (most recent call last):
    ...
    protossl.core.errors.UserError: toy.depth must be >= 1 (got 0)
    >>> SECTIONS.remove("toy")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import TypeVar

from protossl.core.errors import UserError
from protossl.core.registry import Registry

__all__ = ["SECTIONS", "MethodSection", "add_section_fields", "register_section", "require"]


class MethodSection:
    """Base of a method's config section (a dataclass); its checks go in :meth:`validate`."""

    def validate(self) -> None:
        """Raise :class:`UserError` naming the key (``section.key``) for a bad value."""


S = TypeVar("S", bound=type[MethodSection])
T = TypeVar("T")

# Section name (the YAML key) -> section dataclass. The order of registration is the
# order of the sections in a saved config.yaml.
SECTIONS: Registry[type[MethodSection]] = Registry("config section")


def register_section(name: str) -> Callable[[S], S]:
    """Class decorator adding a section dataclass under ``name`` (a duplicate: ValueError)."""

    def decorator(cls: S) -> S:
        SECTIONS.add(name, cls)
        return cls

    return decorator


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition``."""
    if not condition:
        raise UserError(message)


def add_section_fields(cls: type[T]) -> type[T]:
    """Give a config class one field per registered section, after its own fields.

    Applied under ``@dataclass`` (so the fields are dataclass fields); sections
    registered later are not added, which is why :mod:`protossl.method_config` imports
    every section module.
    """
    for name, section in SECTIONS.items():
        cls.__annotations__[name] = section
        setattr(cls, name, field(default_factory=section))
    return cls
