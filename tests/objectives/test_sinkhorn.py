"""Sinkhorn-Knopp (SwAV) and the "sinkhorn" target builder (DINOv2) vs references, marginals."""

from __future__ import annotations

import pytest
import torch
from reference import reference_sinkhorn

from protossl.core.errors import UserError
from protossl.objectives import build_target_builder
from protossl.objectives.sinkhorn import SinkhornKnoppTargets, sinkhorn_knopp


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


# ------------------------------------------------- the "sinkhorn" target builder


def reference_dinov2_targets(
    logits: torch.Tensor, teacher_temp: float, iterations: int
) -> torch.Tensor:
    # DINOv2's sinkhorn_knopp_teacher, written from its formula: Q = exp(l / tau)^T over
    # all teacher crops at once (K x T*B), total mass 1, then rows to 1/K and columns
    # to 1/(T*B), iterations times; columns scaled back to sum to 1. That is SwAV's
    # Sinkhorn-Knopp (tests/reference.py) on the T*B rows of every crop together.
    flat = logits.reshape(-1, logits.shape[-1])
    return reference_sinkhorn(flat, teacher_temp, iterations).reshape(logits.shape)


@pytest.mark.parametrize("crops", [1, 2, 4])
@pytest.mark.parametrize("batch", [3, 16])
@pytest.mark.parametrize("k", [8, 64])
@pytest.mark.parametrize("teacher_temp", [0.04, 0.07, 1.0])
@pytest.mark.parametrize("iterations", [1, 3])
def test_target_builder_matches_dinov2_reference(
    crops: int, batch: int, k: int, teacher_temp: float, iterations: int
) -> None:
    torch.manual_seed(crops * 100 + batch + k)
    # Cosine scores in [-1, 1], as a normalized prototype layer gives them.
    logits = torch.nn.functional.normalize(
        torch.randn(crops, batch, k, dtype=torch.float64), dim=-1
    )
    builder = build_target_builder("sinkhorn", num_prototypes=k, iterations=iterations)
    got = builder.targets(logits, teacher_temp)
    assert got.shape == logits.shape and not got.requires_grad
    torch.testing.assert_close(got, reference_dinov2_targets(logits, teacher_temp, iterations))
    # Also for [N, K] input.
    torch.testing.assert_close(
        builder(logits[0], teacher_temp),
        reference_dinov2_targets(logits[0], teacher_temp, iterations),
    )


def test_target_builder_balances_all_teacher_crops_together() -> None:
    torch.manual_seed(0)
    crops, batch, k = 2, 12, 6
    logits = torch.randn(crops, batch, k, dtype=torch.float64) * 0.2
    builder = SinkhornKnoppTargets(num_prototypes=k, iterations=400)
    targets = builder.targets(logits, teacher_temp=0.5)
    torch.testing.assert_close(targets.sum(-1), torch.ones(crops, batch, dtype=torch.float64))
    # Converged: each prototype holds (T * B) / K of the mass over the T crops together...
    torch.testing.assert_close(
        targets.sum(dim=(0, 1)), torch.full((k,), crops * batch / k, dtype=torch.float64)
    )
    # ...which differs from balancing each crop on its own (what DINOv2 does not do).
    per_crop = torch.stack([sinkhorn_knopp(logits[t], 0.5, 400) for t in range(crops)])
    assert not torch.allclose(targets, per_crop, atol=1e-4)


def test_target_builder_has_no_running_state_and_default_iterations() -> None:
    builder = build_target_builder("sinkhorn", num_prototypes=8, shared={"momentum": 0.9})
    assert isinstance(builder, SinkhornKnoppTargets)
    assert builder.iterations == 3
    assert len(builder.state_dict()) == 0
    logits = torch.randn(2, 4, 8)
    before = builder.targets(logits, 0.04)
    builder.update(logits * 5)  # nothing to advance
    torch.testing.assert_close(builder.targets(logits, 0.04), before)
    torch.testing.assert_close(
        before.double(), reference_dinov2_targets(logits, 0.04, 3), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    "kwargs", [{"iterations": 0}, {"iterations": 2.5}, {"num_prototypes": 0}, {"bogus": 1}]
)
def test_target_builder_bad_options(kwargs: dict[str, float]) -> None:
    options = {"num_prototypes": 8, **kwargs}
    with pytest.raises(UserError):
        build_target_builder("sinkhorn", **options)  # type: ignore[arg-type]
    builder = SinkhornKnoppTargets(num_prototypes=8)
    with pytest.raises(ValueError):
        builder.targets(torch.randn(2, 4, 8), teacher_temp=0.0)
    with pytest.raises(ValueError):
        builder.targets(torch.randn(2, 4, 7), teacher_temp=0.04)
