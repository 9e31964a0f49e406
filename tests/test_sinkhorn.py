"""Sinkhorn-Knopp against a reference written from SwAV's algorithm, and its marginals."""

from __future__ import annotations

import pytest
import torch

from protossl.objectives.sinkhorn import sinkhorn_knopp


def reference_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    # Written from SwAV's Algorithm (Caron et al. 2020), in float64, no shift.
    q = torch.exp(scores.double() / epsilon).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


@pytest.mark.parametrize("batch", [2, 7, 32])
@pytest.mark.parametrize("k", [3, 16, 100])
@pytest.mark.parametrize("epsilon", [0.05, 0.5])
@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_matches_reference(batch: int, k: int, epsilon: float, iterations: int) -> None:
    torch.manual_seed(batch * 1000 + k)
    scores = torch.randn(batch, k, dtype=torch.float64) * 0.3
    got = sinkhorn_knopp(scores, epsilon, iterations)
    torch.testing.assert_close(got, reference_sinkhorn(scores, epsilon, iterations))


@pytest.mark.parametrize("batch,k", [(8, 4), (64, 32), (5, 50)])
def test_marginals_after_last_iteration(batch: int, k: int) -> None:
    torch.manual_seed(0)
    codes = sinkhorn_knopp(torch.randn(batch, k), epsilon=0.05, iterations=3)
    # The last step normalizes samples: each row sums to exactly 1.
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(batch))
    # Many iterations: prototypes also get equal mass B / K.
    many = sinkhorn_knopp(torch.randn(batch, k, dtype=torch.float64), 0.5, 500)
    torch.testing.assert_close(
        many.sum(dim=0), torch.full((k,), batch / k, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_no_overflow_with_large_scores_float32() -> None:
    scores = torch.tensor([[40.0, 0.0, -40.0], [-40.0, 40.0, 0.0]])
    codes = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert torch.isfinite(codes).all()
    assert codes.dtype == torch.float32
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(2))


@pytest.mark.parametrize("kwargs", [{"epsilon": 0.0}, {"epsilon": -1.0}, {"iterations": 0}])
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        sinkhorn_knopp(torch.randn(4, 3), **kwargs)  # type: ignore[arg-type]
