"""The optional regularizers of a method, built from ``cfg.objective`` by name.

Every method adds the same three optional terms, so they are built and applied
here once (no per-method or trainer branches):

- a prototype regularizer on the student's prototypes (``objective.prototype_regularizer``:
  KoLeo-proto "koleo", the naive "pairwise"), weighted inside the module;
- an MLCD regularizer on the student's probabilities (``objective.mlcd_regularizer``:
  ME-MAX "me-max", power-law prior "prior-kl"), times ``objective.mlcd_weight``;
- an embedding regularizer on the student's embeddings (``objective.embedding_regularizer``:
  DINOv2's "koleo").

Example:
    >>> from protossl.config import load_config
    >>> regs = Regularizers.from_config(load_config("dino-kp").objective, num_prototypes=1024)
    >>> loss, terms = regs(prototypes=torch.randn(1024, 128))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from protossl.config import ObjectiveConfig
from protossl.objectives import (
    build_embedding_regularizer,
    build_mlcd_regularizer,
    build_prototype_regularizer,
)

Input = Tensor | Callable[[], Tensor] | None


class Regularizers(nn.Module):
    """Holds the configured regularizers and sums the terms that apply.

    Each argument of :meth:`forward` may be None when a method has no such
    input; a configured regularizer whose input is missing raises a ``ValueError``
    at the first step instead of being skipped silently.
    """

    def __init__(
        self,
        prototype: nn.Module | None = None,
        mlcd: nn.Module | None = None,
        mlcd_weight: float = 1.0,
        embedding: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.prototype = prototype
        self.mlcd = mlcd
        self.mlcd_weight = float(mlcd_weight)
        self.embedding = embedding

    @classmethod
    def from_config(cls, objective: ObjectiveConfig, num_prototypes: int) -> Regularizers:
        """Build the regularizers named in ``objective`` ("none" leaves one out)."""
        prototype = mlcd = embedding = None
        if objective.prototype_regularizer != "none":
            prototype = build_prototype_regularizer(
                objective.prototype_regularizer,
                weight=objective.regularizer_weight,
                **objective.prototype_regularizer_options,
            )
        if objective.mlcd_regularizer != "none":
            mlcd = build_mlcd_regularizer(
                objective.mlcd_regularizer, num_prototypes=num_prototypes, **objective.mlcd_options
            )
        if objective.embedding_regularizer != "none":
            embedding = build_embedding_regularizer(
                objective.embedding_regularizer, weight=objective.embedding_regularizer_weight
            )
        return cls(prototype, mlcd, objective.mlcd_weight, embedding)

    def forward(
        self,
        prototypes: Input = None,
        student_probs: Input = None,
        embeddings: Input = None,
    ) -> tuple[Tensor | None, dict[str, float]]:
        """Sum of the configured terms (None if there is none) and their values.

        Each input may be a tensor or a function returning it, called only when a
        configured regularizer needs it (so an unused softmax is never computed).

        Args:
            prototypes: the student's prototype matrix [K, p].
            student_probs: student probabilities [..., K] (the MLCD's batch).
            embeddings: student embeddings [crops, B, d] (or [B, d]).
        """
        total: Tensor | None = None
        terms: dict[str, float] = {}
        parts = (
            ("prototype_regularizer", self.prototype, prototypes, 1.0),
            ("mlcd_regularizer", self.mlcd, student_probs, self.mlcd_weight),
            ("embedding_regularizer", self.embedding, embeddings, 1.0),
        )
        for name, module, value, weight in parts:
            if module is None:
                continue
            if value is None:
                raise ValueError(f"{name} is configured but the method gave it no input")
            if callable(value):
                value = value()
            # Nearest-neighbour distances of near-duplicates and entropies of small
            # probabilities need float32: never run these under autocast.
            with torch.autocast(device_type=value.device.type, enabled=False):
                term = weight * module(value if value.dtype == torch.float64 else value.float())
            terms[name] = float(term.detach())
            total = term if total is None else total + term
        return total, terms

    def add_to(self, loss: Tensor, terms: dict[str, float], **inputs: Input) -> Tensor:
        """``loss`` plus the configured terms; records them in ``terms``."""
        extra, extra_terms = self(**inputs)
        terms.update(extra_terms)
        return loss if extra is None else loss + extra


__all__ = ["Regularizers"]
