"""Name -> class registries for target builders and prototype regularizers.

Configs name a target builder ("centering") and a prototype regularizer
("koleo"); the trainer builds them through :func:`build_target_builder` and
:func:`build_prototype_regularizer`. A new module adds itself with a decorator
and an import in ``protossl/objectives/__init__.py``; the trainer is not edited:

Example:
    >>> @register_target_builder("my-centering")  # doctest: +SKIP
    ... class MyCentering(TargetBuilder): ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from protossl.core.errors import UserError
from protossl.core.registry import Registry
from protossl.objectives.koleo import KoLeoProto
from protossl.objectives.targets import Centering, TargetBuilder

T = TypeVar("T", bound=type)

TARGET_BUILDERS: Registry[type] = Registry("target builder")
TARGET_BUILDERS.add("centering", Centering)
PROTOTYPE_REGULARIZERS: Registry[type] = Registry("prototype regularizer")
PROTOTYPE_REGULARIZERS.add("koleo", KoLeoProto)
# Regularizers of the student's marginal latent class distribution: a module
# mapping student probabilities [N, K] to a scalar (ME-MAX, prior KL).
MLCD_REGULARIZERS: Registry[type] = Registry("MLCD regularizer")
# Regularizers of a batch of student embeddings [N, p] (KoLeo, DINOv2).
EMBEDDING_REGULARIZERS: Registry[type] = Registry("embedding regularizer")


def _register(registry: Registry[type], name: str) -> Callable[[T], T]:
    def decorator(cls: T) -> T:
        registry.add(name, cls)
        return cls

    return decorator


def register_target_builder(name: str) -> Callable[[T], T]:
    """Class decorator: make a :class:`TargetBuilder` subclass buildable by ``name``."""
    return _register(TARGET_BUILDERS, name)


def register_prototype_regularizer(name: str) -> Callable[[T], T]:
    """Class decorator: make a prototype regularizer module buildable by ``name``."""
    return _register(PROTOTYPE_REGULARIZERS, name)


def register_mlcd_regularizer(name: str) -> Callable[[T], T]:
    """Class decorator: make an MLCD regularizer (student probabilities -> scalar) buildable."""
    return _register(MLCD_REGULARIZERS, name)


def register_embedding_regularizer(name: str) -> Callable[[T], T]:
    """Class decorator: make an embedding regularizer (embeddings [N, p] -> scalar) buildable."""
    return _register(EMBEDDING_REGULARIZERS, name)


def _build(registry: Registry[type], name: str, **kwargs: Any) -> Any:
    cls = registry.lookup(name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        # A bad option in a config is the user's to fix: one line, no traceback.
        raise UserError(f"{registry.kind} {name!r}: {err}") from err


def build_target_builder(
    name: str,
    num_prototypes: int,
    shared: dict[str, Any] | None = None,
    **kwargs: Any,
) -> TargetBuilder:
    """Build the target builder registered as ``name`` (e.g. "centering").

    Args:
        name: Registered name.
        num_prototypes: K.
        shared: Settings from the config's common keys (e.g. ``momentum`` from
            ``objective.center_momentum``), passed only to builders whose
            ``__init__`` takes a parameter of that name.
        **kwargs: Builder options (``objective.target_options``); these override
            ``shared`` and an unknown one is an error.

    Raises:
        UserError: unknown name, or an option the builder rejects.
    """
    cls = TARGET_BUILDERS.get(name)
    if cls is not None and shared:
        accepted = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in shared.items() if k in accepted} | kwargs
    return _build(TARGET_BUILDERS, name, num_prototypes=num_prototypes, **kwargs)


def build_prototype_regularizer(name: str, **kwargs: Any) -> nn.Module:
    """Build the prototype regularizer registered as ``name`` (e.g. "koleo").

    Raises:
        UserError: unknown name, or an option the regularizer rejects.
    """
    return _build(PROTOTYPE_REGULARIZERS, name, **kwargs)


def build_mlcd_regularizer(name: str, num_prototypes: int, **kwargs: Any) -> nn.Module:
    """Build the MLCD regularizer registered as ``name`` (e.g. "me-max", "prior-kl").

    Raises:
        UserError: unknown name, or an option the regularizer rejects.
    """
    return _build(MLCD_REGULARIZERS, name, num_prototypes=num_prototypes, **kwargs)


def build_embedding_regularizer(name: str, **kwargs: Any) -> nn.Module:
    """Build the embedding regularizer registered as ``name`` (e.g. "koleo").

    Raises:
        UserError: unknown name, or an option the regularizer rejects.
    """
    return _build(EMBEDDING_REGULARIZERS, name, **kwargs)
