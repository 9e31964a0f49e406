"""Regularizers of the marginal latent class distribution (MLCD): ME-MAX and a prior KL.

Both act on the student's *mean* prediction over the batch (all crops and all
processes), ``p_bar = mean_n softmax(student_logits_n / tau_s)`` [K]:

- ``"me-max"`` (MSN: Assran et al., "Masked Siamese Networks for Label-Efficient
  Learning", ECCV 2022): ``log K - H(p_bar)``, i.e. ``KL(p_bar || uniform)``;
  0 when the prototypes are used equally on average, log K when one wins always.
- ``"prior-kl"`` (PMSN: Assran et al., "The Hidden Uniform Cluster Prior in
  Self-Supervised Learning", ICLR 2023): the KL divergence between ``p_bar`` and
  a power-law prior ``pi_k = k^(-tau) / sum_j j^(-tau)``, k = 1..K (tau = 0.25).

The mean is taken across processes with
:func:`~protossl.core.distributed.all_reduce_mean_differentiable`, so the term
is a function of the global batch, as MSN's ``AllReduce`` of ``avg_probs``.
A method adds ``objective.mlcd_weight * term`` (MSN: ``memax_weight = 1``)
through :class:`~protossl.methods.regularizers.Regularizers`.

Example:
    >>> probs = torch.softmax(torch.randn(2, 8, 16), dim=-1)  # [crops, batch, K]
    >>> float(MeMax(num_prototypes=16)(probs)) >= 0.0
    True
    >>> loss = PriorKL(num_prototypes=16, tau=0.25)(probs)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from protossl.core.distributed import all_reduce_mean_differentiable
from protossl.objectives.registry import register_mlcd_regularizer

__all__ = [
    "MeMax",
    "PriorKL",
    "mean_probabilities",
    "me_max_loss",
    "power_law_prior",
    "prior_kl_loss",
]


def _check_num_prototypes(num_prototypes: int) -> None:
    if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int):
        raise ValueError(f"num_prototypes must be an integer (got {num_prototypes!r})")
    if num_prototypes < 2:
        raise ValueError(f"num_prototypes must be >= 2 (got {num_prototypes})")


def mean_probabilities(probs: Tensor, num_prototypes: int | None = None) -> Tensor:
    """``p_bar`` [K]: the mean of ``probs`` [..., K] over every leading dimension and process.

    Differentiable, also through the cross-process mean (each process holds an
    equal share of the global batch, so the mean of the means is the global mean).
    """
    if probs.dim() < 2 or probs.shape[-1] < 1:
        raise ValueError(f"probs must have shape [..., K] (got {tuple(probs.shape)})")
    if num_prototypes is not None and probs.shape[-1] != num_prototypes:
        raise ValueError(
            f"probs must have shape [..., {num_prototypes}] (got {tuple(probs.shape)})"
        )
    flat = probs.reshape(-1, probs.shape[-1])
    if flat.shape[0] == 0:
        raise ValueError("cannot average the probabilities of an empty batch")
    return all_reduce_mean_differentiable(flat.mean(dim=0))


def _safe_log(p: Tensor) -> Tensor:
    # A prototype no sample uses can have p_bar underflow to exactly 0. log(0) = -inf
    # would give 0 * -inf = NaN in the value and an infinite gradient; flooring at the
    # smallest normal number keeps both finite and changes nothing for p > tiny.
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def me_max_loss(mean_probs: Tensor) -> Tensor:
    """``log K - H(p_bar) = sum_k p_bar_k log p_bar_k + log K`` for ``p_bar`` [K].

    MSN's ``rloss = -sum log(p_bar ** -p_bar) + log K`` (src/losses.py); between 0
    (uniform mean prediction) and log K (one prototype takes all the mass).
    """
    if mean_probs.dim() != 1:
        raise ValueError(f"mean_probs must have shape [K] (got {tuple(mean_probs.shape)})")
    return (mean_probs * _safe_log(mean_probs)).sum() + math.log(mean_probs.shape[0])


def power_law_prior(
    num_prototypes: int,
    tau: float = 0.25,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """PMSN's prior ``pi_k = k^(-tau) / sum_j j^(-tau)`` for k = 1..K (tau = 0 is uniform).

    Example:
        >>> power_law_prior(4, tau=0.0)
        tensor([0.2500, 0.2500, 0.2500, 0.2500], dtype=torch.float64)
    """
    _check_num_prototypes(num_prototypes)
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number >= 0 (got {tau})")
    k = torch.arange(1, num_prototypes + 1, dtype=torch.float64, device=device)
    prior = k.pow(-float(tau))
    return (prior / prior.sum()).to(dtype)


def prior_kl_loss(mean_probs: Tensor, prior: Tensor, reverse: bool = False) -> Tensor:
    """``KL(p_bar || pi)`` (default) or ``KL(pi || p_bar)`` (``reverse=True``), both [K].

    ``KL(p_bar || pi) = sum_k p_bar_k (log p_bar_k - log pi_k)``; with a uniform
    prior it equals :func:`me_max_loss` exactly.
    """
    if mean_probs.dim() != 1 or prior.shape != mean_probs.shape:
        raise ValueError(
            "mean_probs and prior must both have shape [K] "
            f"(got {tuple(mean_probs.shape)} and {tuple(prior.shape)})"
        )
    prior = prior.to(mean_probs.dtype)
    log_ratio = _safe_log(mean_probs) - torch.log(prior)
    if reverse:
        return -(prior * log_ratio).sum()
    return (mean_probs * log_ratio).sum()


@register_mlcd_regularizer("me-max")
class MeMax(nn.Module):
    """MSN's mean-entropy maximization: ``log K - H(mean_n p_n)`` (see the module docstring).

    Args:
        num_prototypes: K, the size of the last dimension of the probabilities.

    Example:
        >>> reg = MeMax(num_prototypes=16)
        >>> loss = reg(torch.softmax(torch.randn(4, 32, 16), dim=-1))
    """

    def __init__(self, num_prototypes: int) -> None:
        super().__init__()
        _check_num_prototypes(num_prototypes)
        self.num_prototypes = int(num_prototypes)

    def forward(self, probs: Tensor) -> Tensor:
        """The term for student probabilities [..., K] (rows summing to 1)."""
        return me_max_loss(mean_probabilities(probs, self.num_prototypes))

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}"


@register_mlcd_regularizer("prior-kl")
class PriorKL(nn.Module):
    """PMSN's prior matching: a KL divergence between ``p_bar`` and a power-law prior.

    Direction. By default ``KL(p_bar || pi) = sum_k p_bar_k log(p_bar_k / pi_k)``.
    PMSN is presented as MSN with its hidden uniform prior made explicit: MSN's
    ME-MAX term is replaced by a KL divergence between the mean prediction and a
    chosen prior. Only this direction makes that literal, since ME-MAX *is*
    ``KL(p_bar || uniform) = log K - H(p_bar)``: with tau = 0 the prior is uniform
    and this term equals ME-MAX exactly (checked in tests/methods/test_msn.py), so "msn"
    and "pmsn" differ only in the prior. There is no official PMSN code
    (facebookresearch/msn issue #20); stable-pretraining's PMSN also writes
    ``KL(p_bar || pi)``. This direction is mode-seeking: p_bar is pulled to put its
    mass where pi does, and an unused prototype (p_bar_k = 0) costs nothing.
    ``reverse=True`` gives ``KL(pi || p_bar) = sum_k pi_k log(pi_k / p_bar_k)``,
    which is what lightly's ``PMSNLoss`` computes (``F.kl_div(p_bar.log(), pi)``,
    although its docstring says ``KL(mean_anchor_probs, target_dist)``). It is
    mass-covering: every prototype with pi_k > 0 must keep some mass, and an
    unused one costs ``pi_k log(pi_k / p_bar_k)`` -> infinity (floored here at the
    smallest normal float), a stronger push against collapse; with tau = 0 it is
    not ME-MAX.

    The prior is fixed to the prototype index (prototype 1 is the most frequent):
    the prototypes are free parameters, so the network can assign any cluster to
    any index and no sorting of p_bar is needed (as in lightly).

    Args:
        num_prototypes: K.
        tau: Power-law exponent (PMSN: 0.25; 0 gives a uniform prior).
        reverse: Use ``KL(pi || p_bar)`` instead of ``KL(p_bar || pi)``.

    Example:
        >>> reg = PriorKL(num_prototypes=16, tau=0.25)
        >>> loss = reg(torch.softmax(torch.randn(4, 32, 16), dim=-1))
    """

    prior: Tensor

    def __init__(self, num_prototypes: int, tau: float = 0.25, reverse: bool = False) -> None:
        super().__init__()
        _check_num_prototypes(num_prototypes)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise ValueError(f"tau must be a number (got {tau!r})")
        if not isinstance(reverse, bool):
            raise ValueError(f"reverse must be true or false (got {reverse!r})")
        self.num_prototypes = int(num_prototypes)
        self.tau = float(tau)
        self.reverse = reverse
        # Derived from (K, tau), so not saved in checkpoints (persistent=False); moved by .to().
        self.register_buffer(
            "prior", power_law_prior(self.num_prototypes, self.tau), persistent=False
        )

    def forward(self, probs: Tensor) -> Tensor:
        """The term for student probabilities [..., K] (rows summing to 1)."""
        mean_probs = mean_probabilities(probs, self.num_prototypes)
        return prior_kl_loss(mean_probs, self.prior, reverse=self.reverse)

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}, tau={self.tau}, reverse={self.reverse}"
