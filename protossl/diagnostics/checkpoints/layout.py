r"""The registry of checkpoint layouts, and the layout kind most repositories need.

:data:`LAYOUTS` maps a format name (``protossl analyze --format NAME``) to a
:class:`Layout`. Registration order is the order of ``FORMATS``; ``--format auto``
tries the layouts by :attr:`Layout.detect_rank` instead, lowest first, because some
layouts contain others (an iBOT or EsViT file also holds DINO's keys, so those are
tried before DINO).

:class:`PatternLayout` covers layouts whose prototype layers are linear layers at fixed
paths ``<branch>.<module>``, where ``<branch>`` is ``student`` / ``teacher`` (or
nothing, for a bare state dict) and wrapper segments are ignored
(:func:`~protossl.diagnostics.checkpoints.common.canonical`).

Example:
    >>> import torch
    >>> from pathlib import Path
    >>> ckpt = Checkpoint.of(Path("x.pt"), {"student": {"head.proj.weight": torch.ones(3, 2)}})
    >>> toy = PatternLayout((HeadPattern(r"head\.proj", "head"),), frozenset({"head"}), "?", 45)
    >>> toy.detect(ckpt), sorted(toy.read(ckpt) or {})
    (True, ['student/head'])
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from protossl.core.registry import Registry
from protossl.diagnostics.checkpoints.common import Checkpoint, Layer, canonical, layer_matrix

__all__ = ["LAYOUTS", "HeadPattern", "Layout", "PatternLayout", "detection_order", "head_name"]


class Layout(ABC):
    """How one repository's checkpoints store their prototype layers.

    Attributes:
        expected: The keys it needs, for the message of a forced ``--format`` that
            does not match, e.g. ``"a top-level 'prototypes' tensor"``.
        detect_rank: Place in ``--format auto`` detection (lowest first).
    """

    expected: str
    detect_rank: int

    @abstractmethod
    def detect(self, ckpt: Checkpoint) -> bool:
        """Whether ``--format auto`` should take the file as this layout."""

    @abstractmethod
    def read(self, ckpt: Checkpoint) -> dict[str, torch.Tensor] | None:
        """Heads by name, each [K, p]; None if the file does not have this layout."""


LAYOUTS: Registry[Layout] = Registry("checkpoint format")
"""Every layout :func:`~protossl.diagnostics.checkpoints.read_prototype_heads` reads."""


def detection_order() -> list[str]:
    """The registered format names in the order ``--format auto`` tries them."""
    ranked = sorted(enumerate(LAYOUTS.items()), key=lambda e: (e[1][1].detect_rank, e[0]))
    return [name for _, (name, _) in ranked]


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class HeadPattern:
    """A prototype layer ``<branch>.<module>`` of one layout and the label of its head."""

    module: str  # regex for the layer path after the branch, e.g. r"head\.last_layer"
    label: str  # head label; "{0}" is replaced by the first regex group


@dataclass(frozen=True)
class _Match:
    branch: str  # canonical branch path ('' for none), e.g. "student"
    label: str  # e.g. "dino_head"
    layer: Layer


_BRANCH_ORDER = {"teacher": 0, "student": 1, "target_encoder": 2, "encoder": 3}


def head_name(branch: str, label: str) -> str:
    """'student/dino_head' for branch 'student' and label 'dino_head' ('dino_head' alone)."""
    return f"{branch.replace('.', '/')}/{label}" if branch else label


def _signature_labels(matches: list[_Match]) -> set[str]:
    # SwAV's MultiPrototypes heads 'prototypes<i>' count as 'prototypes'.
    return {"prototypes" if m.label.startswith("prototypes") else m.label for m in matches}


@dataclass(frozen=True)
class PatternLayout(Layout):
    """A layout whose prototype layers sit at fixed paths, given by regexes.

    Args:
        patterns: The prototype layers; a layer takes the first pattern it matches.
        signature: Labels of which at least one must be found (auto and forced).
        expected: See :class:`Layout`.
        detect_rank: See :class:`Layout`.
        forced_signature: What a forced ``--format`` needs, if not ``signature``.
    """

    patterns: tuple[HeadPattern, ...]
    signature: frozenset[str]
    expected: str
    detect_rank: int
    forced_signature: frozenset[str] | None = None

    def _matches(self, ckpt: Checkpoint) -> list[_Match]:
        matches: list[_Match] = []
        for layer in ckpt.layers:
            name = canonical(layer.name)
            for pattern in self.patterns:
                found = re.fullmatch(rf"(?:(?P<branch>.+)\.)?(?:{pattern.module})", name)
                if found is not None:
                    label = pattern.label.format(*found.groups()[1:])
                    matches.append(_Match(found.group("branch") or "", label, layer))
                    break
        return matches

    def detect(self, ckpt: Checkpoint) -> bool:
        return bool(_signature_labels(self._matches(ckpt)) & self.signature)

    def read(self, ckpt: Checkpoint) -> dict[str, torch.Tensor] | None:
        matches = self._matches(ckpt)
        needed = self.signature if self.forced_signature is None else self.forced_signature
        if not _signature_labels(matches) & needed:
            return None
        matches.sort(key=lambda m: (_BRANCH_ORDER.get(m.branch, 9), m.branch, m.label))
        heads: dict[str, torch.Tensor] = {}
        for m in matches:
            weights = layer_matrix(m.layer, ckpt.flat, ckpt.file)
            if self.is_copy(heads, m.branch, m.label, weights):
                continue
            name = head_name(m.branch, m.label)
            if name in heads:  # two layers that differ only by wrappers: keep both, unambiguously
                name = m.layer.name
            heads[name] = weights
        return heads

    def is_copy(
        self, heads: dict[str, torch.Tensor], branch: str, label: str, weights: torch.Tensor
    ) -> bool:
        """Whether head ``label`` of ``branch`` repeats a head already read (then skipped).

        Args:
            heads: The heads read so far, by head name (``head_name(branch, label)``).
            branch: The canonical branch path, e.g. ``"student"``.
            label: The head label the layer matched, e.g. ``"patch_head"``.
            weights: Its prototype matrix.
        """
        return False
