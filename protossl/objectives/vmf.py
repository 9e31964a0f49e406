"""The log-normalizer of the von Mises-Fisher distribution, with a stable gradient.

DINO-vMF (Govindarajan et al., "DINO as a von Mises-Fisher mixture model",
ICLR 2023) adds ``log C_p(kappa_k)`` to the logit of every prototype, where

    C_p(kappa) = kappa^(p/2-1) / ((2 pi)^(p/2) I_(p/2-1)(kappa))

is the normalizer of the vMF density on the unit sphere of R^p and I is the
modified Bessel function of the first kind. For p = 256 and kappa in the tens
to thousands, I_(p/2-1)(kappa) under- or overflows every floating-point type,
so :func:`log_vmf_normalizer` never forms it. It is computed in float64, in
torch only (it runs on the GPU; no scipy at run time):

1. At an order N = nu + M >= 40 (M >= 0 an integer; nu = p/2 - 1), Debye's
   uniform asymptotic expansion (Abramowitz & Stegun 9.7.7; DLMF 10.41.3),
   with z = kappa / N, s = sqrt(1 + z^2), t = 1 / s,

       log I_N(N z) = N (s + log(z / (1 + s))) - log(2 pi N) / 2 - log(s) / 2
                      + log sum_k u_k(t) / N^k,

   is taken into ``N log kappa - log I_N(kappa)`` with the log z terms cancelled
   by hand, so kappa = 0 is a finite limit instead of inf - inf. Its
   derivative in kappa gives the ratio R_N = I_(N+1) / I_N. Eight terms at
   N >= 40 leave an error far below float64 rounding of the result.
2. When nu < 40 (a small bottleneck), the stable backward recurrence of the
   ratio, R_(n-1) = kappa / (2 n + kappa R_n) (from I_(n-1) - I_(n+1) =
   (2 n / kappa) I_n; it is the continued fraction of Gauss), walks down from
   N to nu, and ``log I`` follows from the ratios.

The gradient is d/dkappa log C_p(kappa) = -I_(p/2)(kappa) / I_(p/2-1)(kappa)
(Govindarajan et al., ICLR 2023, appendix); the backward of the custom autograd
function multiplies by that ratio, which step 1 or 2 already computed, instead of
differentiating the expansion through autograd.

Example:
    >>> kappa = torch.tensor([0.0, 10.0, 1000.0], requires_grad=True)
    >>> value = log_vmf_normalizer(kappa, dim=256)
    >>> value.sum().backward()  # kappa.grad = -I_128(kappa) / I_127(kappa)
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# Debye's expansion is used at orders >= this; lower orders are reached by the
# backward ratio recurrence (at most this many steps, for p = 2).
MIN_DEBYE_ORDER = 40.0
# Terms u_0 .. u_(DEBYE_TERMS - 1). At N >= 40 the first omitted term is below
# 1e-14 relative for every t in [0, 1] (checked against mpmath in the tests).
DEBYE_TERMS = 8


def _debye_polynomials(count: int) -> list[list[Fraction]]:
    """Coefficients (by power of t) of u_0 .. u_(count-1), exactly.

    DLMF 10.41.10: u_(k+1)(t) = t^2 (1 - t^2) u_k'(t) / 2
    + (1/8) int_0^t (1 - 5 s^2) u_k(s) ds, with u_0 = 1. Generated instead of
    typed in, so no coefficient can be mistyped.
    """
    polys: list[list[Fraction]] = [[Fraction(1)]]
    for _ in range(count - 1):
        u = polys[-1]
        nxt = [Fraction(0)] * (len(u) + 3)
        for power, coef in enumerate(u):
            if coef == 0:
                continue
            if power > 0:
                # t^2 (1 - t^2) * power * coef * t^(power - 1) / 2
                nxt[power + 1] += coef * power / 2
                nxt[power + 3] -= coef * power / 2
            # (1/8) int_0^t (1 - 5 s^2) coef s^power ds
            nxt[power + 1] += coef / (8 * (power + 1))
            nxt[power + 3] -= 5 * coef / (8 * (power + 3))
        while nxt and nxt[-1] == 0:
            nxt.pop()
        polys.append(nxt)
    return polys


_U = [[float(c) for c in poly] for poly in _debye_polynomials(DEBYE_TERMS)]
_DU = [[float(c * power) for power, c in enumerate(poly)][1:] for poly in _U]


def _horner(coefficients: list[float], t: Tensor) -> Tensor:
    out = torch.full_like(t, coefficients[-1]) if coefficients else torch.zeros_like(t)
    for coef in reversed(coefficients[:-1]):
        out = out * t + coef
    return out


def _check_dim(dim: Any) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1 (got {dim!r})")


def log_normalizer_and_ratio(kappa: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``log C_p(kappa)`` and ``I_(p/2)(kappa) / I_(p/2-1)(kappa)``, both in float64.

    No autograd; :func:`log_vmf_normalizer` is the differentiable entry point.
    Negative kappa gives NaN (the vMF concentration is a norm).

    Args:
        kappa: Concentrations, any shape and floating dtype.
        dim: The dimension p of the ambient space (the sphere is S^(p-1)).
    """
    _check_dim(dim)
    k = kappa.detach().to(torch.float64)
    nu = dim / 2.0 - 1.0
    steps = max(0, math.ceil(MIN_DEBYE_ORDER - nu))
    order = nu + steps
    z = k / order
    s = torch.hypot(z, torch.ones_like(z))  # sqrt(1 + z^2) without overflow
    t = 1.0 / s
    series = torch.zeros_like(t)
    dseries = torch.zeros_like(t)
    for power in range(DEBYE_TERMS):
        scale = order ** (-power)
        series = series + _horner(_U[power], t) * scale
        if _DU[power]:
            dseries = dseries + _horner(_DU[power], t) * scale
    # A_N = N log kappa - log I_N(kappa), with N log z cancelled analytically.
    value = (
        order * math.log(order)
        - order * s
        + order * torch.log1p(s)
        + 0.5 * math.log(2.0 * math.pi * order)
        + 0.5 * torch.log(s)
        - torch.log(series)
    )
    # R_N = d/dkappa log I_N - N / kappa; (s - 1) / z written as z / (1 + s)
    # and z t^2 as (z t) t so that neither kappa -> 0 nor kappa -> inf cancels.
    ratio = z / (1.0 + s) - (z * t) * t / order * (0.5 + t * dseries / series)
    for step in range(steps):
        n = order - step  # walk R_n -> R_(n-1) from n = N down to n = nu + 1
        denominator = 2.0 * n + k * ratio
        value = value - torch.log(denominator)
        ratio = k / denominator
    value = value - (dim / 2.0) * math.log(2.0 * math.pi)
    nan = torch.full_like(value, math.nan)
    return torch.where(k < 0, nan, value), torch.where(k < 0, nan, ratio)


class _LogVMFNormalizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, kappa: Tensor, dim: int) -> Tensor:
        value, ratio = log_normalizer_and_ratio(kappa, dim)
        ctx.save_for_backward(ratio)
        ctx.kappa_dtype = kappa.dtype
        # At least float32: log C_p is in the hundreds for p = 256, and half
        # precision would round it by whole units.
        return value.to(torch.promote_types(kappa.dtype, torch.float32))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return (-ratio * grad.to(torch.float64)).to(ctx.kappa_dtype), None


def log_vmf_normalizer(kappa: Tensor, dim: int) -> Tensor:
    """``log C_p(kappa)`` elementwise, differentiable in ``kappa``.

    ``C_p(kappa) = kappa^(p/2-1) / ((2 pi)^(p/2) I_(p/2-1)(kappa))``, the
    normalizer of the von Mises-Fisher density on S^(p-1) (Govindarajan et al.,
    ICLR 2023, DINO-vMF). Computed in float64 (see the module docstring) and
    returned in ``kappa``'s dtype, or float32 for half-precision input; finite
    for every kappa in [0, 1e300] (kappa = 0 gives the uniform density,
    ``log(Gamma(p/2) / (2 pi^(p/2)))``). The gradient is
    ``-I_(p/2)(kappa) / I_(p/2-1)(kappa)``.

    Args:
        kappa: Non-negative concentrations (negative entries give NaN).
        dim: The dimension p of the ambient space (bottleneck dimension).

    Example:
        >>> log_vmf_normalizer(torch.tensor([0.0, 25.0]), dim=128).shape
        torch.Size([2])
    """
    _check_dim(dim)
    out: Tensor = _LogVMFNormalizer.apply(kappa, dim)
    return out
