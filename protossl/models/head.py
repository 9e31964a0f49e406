"""DINO's projection head and the weight-normalized prototype layer.

The head is an MLP to a bottleneck of dimension p, L2-normalized, followed by
a prototype layer of K vectors w_k whose logits are <w_k/||w_k||, y>
(Caron et al. 2021, ``DINOHead`` with ``norm_last_layer=True``: weight norm
with the gain fixed to 1). The temperature is applied by the loss.
:class:`VMFPrototypeLayer` keeps the prototypes unnormalized and adds the
von Mises-Fisher log-normalizer to the logits (DINO-vMF, Govindarajan et al. 2023).

Example:
    >>> head = DINOHead(in_dim=96, num_prototypes=256, hidden_dim=128, bottleneck_dim=32)
    >>> head(torch.randn(4, 96)).shape
    torch.Size([4, 256])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from protossl.core.registry import Registry
from protossl.objectives.vmf import log_vmf_normalizer


class PrototypeLayer(nn.Module):
    """K prototypes; logits are cosine similarities between prototypes and inputs.

    Equivalent to ``weight_norm(Linear(p, K, bias=False))`` with ``weight_g`` fixed
    to 1, without the deprecated weight-norm hook: ``weight`` holds the K
    unnormalized directions (the tensor whose collapse protossl measures).
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        if num_prototypes < 1 or dim < 1:
            raise ValueError("PrototypeLayer needs dim >= 1 and num_prototypes >= 1")
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        # nn.Linear's default initialization, as DINO's last layer keeps it (its
        # truncated-normal init is applied to the MLP only). The norm sets how fast
        # Adam turns a prototype, so it matters for collapse.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @property
    def num_prototypes(self) -> int:
        return self.weight.shape[0]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.linear(y, F.normalize(self.weight, dim=-1))

    def adjust_logits(self, scores: torch.Tensor, temperature: float) -> torch.Tensor:
        """Scores ready for a loss that divides by ``temperature``.

        The identity for normalized prototypes. A vMF layer adds
        ``temperature * log C_p(kappa_k)`` so that after the division the logits are
        ``<w_k, y> / tau + log C_p(||w_k|| / tau)`` (DINO-vMF, Govindarajan et al., ICLR 2023).
        """
        del temperature
        return scores


class VMFPrototypeLayer(PrototypeLayer):
    """Unnormalized prototypes read as von Mises-Fisher components (DINO-vMF).

    From Govindarajan et al., "DINO as a von Mises-Fisher mixture model" (ICLR
    2023): prototype k is a vMF component with mean direction w_k / ||w_k|| and
    concentration kappa_k = ||w_k|| / tau, so its logit gets the vMF
    log-normalizer, ``l_k = <w_k, y> / tau + log C_p(kappa_k)``.
    :meth:`forward` returns the scores ``<w_k, y>``; :meth:`adjust_logits` adds
    ``tau * log C_p(||w_k|| / tau)`` with the temperature of the branch (the
    student's for the student, the teacher's for the teacher: the two define
    different mixtures from the same prototypes), so the loss's division by tau
    gives l_k exactly.

    ``weight`` holds w itself, without a constraint on its norm. It starts as
    DINO's weight-normalized last layer does (``weight_g`` filled with 1,
    ``norm_last_layer=False`` in DINO-vMF): nn.Linear's initialization for the
    directions and unit norms, i.e. kappa_k = 1 / tau at the start.

    Example:
        >>> layer = VMFPrototypeLayer(dim=32, num_prototypes=64)
        >>> scores = layer(torch.nn.functional.normalize(torch.randn(4, 32), dim=-1))
        >>> logits = layer.adjust_logits(scores, temperature=0.1) / 0.1
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__(dim, num_prototypes)
        with torch.no_grad():
            self.weight.copy_(F.normalize(self.weight, dim=-1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.linear(y, self.weight)

    def log_normalizer(self, temperature: float) -> torch.Tensor:
        """``log C_p(||w_k|| / temperature)`` for every prototype, [K], in float32 or wider."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (got {temperature})")
        weight: torch.Tensor = self.weight
        if weight.dtype in (torch.float16, torch.bfloat16):
            weight = weight.float()
        kappa = weight.norm(dim=-1) / temperature
        return log_vmf_normalizer(kappa, dim=self.weight.shape[1])

    def adjust_logits(self, scores: torch.Tensor, temperature: float) -> torch.Tensor:
        """``scores + temperature * log C_p(||w_k|| / temperature)``, differentiable in w.

        Under autocast the result is float32: log C_p is in the hundreds for
        p = 256, beyond what half precision can add to a score.
        """
        return scores + temperature * self.log_normalizer(temperature)


# Prototype layer classes by ``model.prototype_layer`` name.
PROTOTYPE_LAYERS: Registry[type[PrototypeLayer]] = Registry("prototype layer")
PROTOTYPE_LAYERS.add("normalized", PrototypeLayer)
PROTOTYPE_LAYERS.add("vmf", VMFPrototypeLayer)


class DINOHead(nn.Module):
    """MLP (``num_layers`` linear layers, GELU) -> L2-normalized bottleneck -> prototypes."""

    def __init__(
        self,
        in_dim: int,
        num_prototypes: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        prototype_layer: str = "normalized",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("DINOHead needs num_layers >= 1")
        if prototype_layer not in PROTOTYPE_LAYERS:
            raise ValueError(PROTOTYPE_LAYERS.unknown_message(prototype_layer))
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.prototypes: PrototypeLayer = PROTOTYPE_LAYERS[prototype_layer](
            bottleneck_dim, num_prototypes
        )
        self.mlp.apply(_init_linear)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The unit-norm bottleneck embedding y."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(self.embed(x))


def _init_linear(module: nn.Module) -> None:
    # DINO initializes head linears with a truncated normal (std 0.02) and zero bias.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
