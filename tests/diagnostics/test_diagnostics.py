"""Tests for protossl.diagnostics: unique prototypes M, uniqueness curve, usage.

Every blocked / union-find result is compared with an independent brute force: the
full K x K distance matrix (direct ||a - b||, float64) and a breadth-first search.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from reference import brute_force_distances, brute_force_labels, brute_force_m

from protossl.diagnostics import (
    DEFAULT_EPS,
    DEFAULT_EPS_GRID,
    UniqueResult,
    count_unique_prototypes,
    distance_quantiles,
    nearest_neighbor_distances,
    normalize_prototypes,
    prototype_usage,
    summarize_prototypes,
    uniqueness_curve,
    usage_from_logits,
)
from protossl.diagnostics.unique import constants as constants_mod
from protossl.diagnostics.unique import cover as cover_mod
from protossl.diagnostics.unique import curve as curve_mod
from protossl.diagnostics.unique import distances as distances_mod
from protossl.diagnostics.unique import inputs as inputs_mod
from protossl.diagnostics.unique import leaders as leaders_mod
from protossl.diagnostics.unique import nearest as nearest_mod

# --- independent reference (brute force: tests/reference.py) ------------------------------


def relabel_canonical(labels: np.ndarray) -> np.ndarray:
    mapping: dict[int, int] = {}
    return np.array([mapping.setdefault(int(x), len(mapping)) for x in labels], dtype=np.int64)


# --- planted structures ---------------------------------------------------------------


def _orthonormal_pair(gen: torch.Generator, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, _ = torch.linalg.qr(torch.randn(p, 2, generator=gen, dtype=torch.float64))
    return q[:, 0], q[:, 1]


def _on_circle(a: torch.Tensor, b: torch.Tensor, chord: float) -> torch.Tensor:
    """The unit vector at the given chord distance from a, towards b."""
    theta = 2.0 * math.asin(chord / 2.0)
    return math.cos(theta) * a + math.sin(theta) * b


def planted_chain(gen: torch.Generator, p: int, eps: float, length: int) -> torch.Tensor:
    """Points 0.6 eps apart along a great circle: one group, ends far apart."""
    a, b = _orthonormal_pair(gen, p)
    step = 2.0 * math.asin(0.6 * eps / 2.0)
    return torch.stack([math.cos(i * step) * a + math.sin(i * step) * b for i in range(length)])


def planted_prototypes(seed: int, eps: float, p: int = 16) -> torch.Tensor:
    """Random prototypes + duplicate groups + chains + near-threshold pairs, shuffled."""
    gen = torch.Generator().manual_seed(seed)
    parts = [torch.randn(40, p, generator=gen, dtype=torch.float64)]
    for size in (2, 3, 7):  # duplicate groups: jitter far below eps
        center = torch.randn(1, p, generator=gen, dtype=torch.float64)
        parts.append(center + 1e-3 * eps * torch.randn(size, p, generator=gen, dtype=torch.float64))
    for length in (3, 6):
        parts.append(planted_chain(gen, p, eps, length))
    for factor in (1 - 1e-3, 1 + 1e-3, 1 - 1e-3, 1 + 1e-3):
        a, b = _orthonormal_pair(gen, p)
        parts.append(torch.stack([a, _on_circle(a, b, factor * eps)]))
    w = torch.cat(parts)
    scales = torch.rand(w.shape[0], 1, generator=gen, dtype=torch.float64) * 5 + 0.1
    perm = torch.randperm(w.shape[0], generator=gen)
    return (w * scales)[perm]


def dense_low_dim(seed: int, k: int = 300, p: int = 3) -> torch.Tensor:
    """Many prototypes on S^2: random near pairs and long chains at moderate eps."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, p, generator=gen, dtype=torch.float64)


# --- count_unique_prototypes ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.01, DEFAULT_EPS, 0.1])
def test_matches_bruteforce_on_planted_structures(seed: int, eps: float) -> None:
    w = planted_prototypes(seed, eps)
    result = count_unique_prototypes(w, eps=eps, block_size=16)
    expected = brute_force_labels(w, eps)
    assert result.num_unique == int(expected.max()) + 1
    np.testing.assert_array_equal(result.labels, expected)
    # 40 random + 3 dup groups + 2 chains + 2 linked pairs + 4 unlinked singletons.
    assert result.num_unique == 40 + 3 + 2 + 2 + 4


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("eps", [0.05, 0.12, 0.25])
def test_matches_bruteforce_on_dense_random_graphs(seed: int, eps: float) -> None:
    w = dense_low_dim(seed)
    result = count_unique_prototypes(w, eps=eps, block_size=37)
    expected = brute_force_labels(w, eps)
    np.testing.assert_array_equal(result.labels, expected)
    assert 1 < result.num_unique < w.shape[0]  # the case really has non-trivial groups


def test_chain_is_one_group_although_its_ends_are_far() -> None:
    eps = 0.025
    chain = planted_chain(torch.Generator().manual_seed(0), 32, eps, length=8)
    assert (chain[0] - chain[-1]).norm() > 4 * eps
    assert count_unique_prototypes(chain, eps=eps).num_unique == 1
    # Removing a middle link splits it in two.
    broken = torch.cat([chain[:3], chain[4:]])
    assert count_unique_prototypes(broken, eps=eps).num_unique == 2


@pytest.mark.parametrize("eps", [0.001, 0.025, 0.3])
def test_threshold_is_strict_and_exact(eps: float) -> None:
    a, b = _orthonormal_pair(torch.Generator().manual_seed(1), 64)
    below = torch.stack([a, _on_circle(a, b, eps * (1 - 1e-3))])
    above = torch.stack([a, _on_circle(a, b, eps * (1 + 1e-3))])
    assert count_unique_prototypes(below, eps=eps).num_unique == 1
    assert count_unique_prototypes(above, eps=eps).num_unique == 2
    # A pair at a distance d is linked for eps just above d and not at eps = d.
    units = normalize_prototypes(below)  # the library's own float64 directions
    d = float(torch.linalg.vector_norm(units[0] - units[1]))
    assert count_unique_prototypes(below, eps=d).num_unique == 2
    assert count_unique_prototypes(below, eps=d * (1 + 1e-9)).num_unique == 1


def test_exact_duplicates_and_full_collapse() -> None:
    row = torch.randn(1, 8)
    result = count_unique_prototypes(row.repeat(50, 1) * torch.arange(1, 51.0)[:, None])
    assert result.num_unique == 1
    assert result.group_sizes == [50]
    assert result.labels.tolist() == [0] * 50
    assert [m for _, m in uniqueness_curve(row.repeat(50, 1))] == [1] * len(DEFAULT_EPS_GRID)


def test_order_independence() -> None:
    eps = 0.12
    w = torch.cat([dense_low_dim(5), planted_prototypes(5, eps, p=3)])
    base = count_unique_prototypes(w, eps=eps, block_size=50)
    perm = torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(9))
    permuted = count_unique_prototypes(w[perm], eps=eps, block_size=50)
    assert permuted.num_unique == base.num_unique
    # Row r of the permuted matrix is row perm[r] of the original: same grouping.
    np.testing.assert_array_equal(permuted.labels, relabel_canonical(base.labels[perm.numpy()]))
    assert permuted.group_sizes == base.group_sizes


@pytest.mark.parametrize("block_size", [1, 7, 64, 10_000])
def test_block_size_does_not_change_the_result(block_size: int) -> None:
    eps = 0.12
    w = dense_low_dim(6, k=200)
    reference = count_unique_prototypes(w, eps=eps, block_size=200)
    result = count_unique_prototypes(w, eps=eps, block_size=block_size)
    np.testing.assert_array_equal(result.labels, reference.labels)
    assert result.num_unique == reference.num_unique < 200


def test_scale_invariance() -> None:
    eps = DEFAULT_EPS
    w = planted_prototypes(7, eps)
    gen = torch.Generator().manual_seed(8)
    scales = torch.exp(
        torch.empty(w.shape[0], 1, dtype=torch.float64).uniform_(-4, 4, generator=gen)
    )
    base = count_unique_prototypes(w, eps=eps)
    scaled = count_unique_prototypes(w * scales, eps=eps)
    np.testing.assert_array_equal(scaled.labels, base.labels)
    assert scaled.num_unique == base.num_unique < w.shape[0]


def test_float32_and_float16_inputs_give_float64_decisions() -> None:
    w = dense_low_dim(10, k=120).to(torch.float32)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        wd = w.to(dtype)
        result = count_unique_prototypes(wd, eps=0.1, block_size=16)
        np.testing.assert_array_equal(result.labels, brute_force_labels(wd.to(torch.float64), 0.1))


def test_unique_result_fields() -> None:
    w = torch.cat([torch.eye(4), torch.eye(4)[:2] * 2.0])  # rows 4, 5 duplicate rows 0, 1
    result = count_unique_prototypes(w)
    assert isinstance(result, UniqueResult)
    assert result.num_prototypes == 6 and result.num_unique == 4
    assert result.labels.dtype == np.int64
    assert result.labels.tolist() == [0, 1, 2, 3, 0, 1]
    assert result.group_sizes == [2, 2, 1, 1]
    assert result.fraction == pytest.approx(4 / 6)
    assert result.eps == DEFAULT_EPS
    with pytest.raises(ValueError):
        result.labels[0] = 3  # frozen result, read-only array


def test_zero_rows_stay_finite() -> None:
    w = torch.cat([torch.zeros(2, 4), torch.eye(4)])
    result = count_unique_prototypes(w)
    assert result.labels.tolist() == [0, 0, 1, 2, 3, 4]  # zero rows coincide with each other
    assert torch.isfinite(nearest_neighbor_distances(w)).all()


@pytest.mark.parametrize(
    ("weights", "kwargs"),
    [
        (torch.randn(5), {}),
        (torch.randn(2, 3, 4), {}),
        (torch.randn(0, 4), {}),
        (torch.randn(4, 0), {}),
        (torch.randn(4, 3), {"eps": 0.0}),
        (torch.randn(4, 3), {"eps": -0.1}),
        (torch.randn(4, 3), {"eps": float("nan")}),
        (torch.randn(4, 3), {"block_size": 0}),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), {}),
    ],
)
def test_count_rejects_bad_input(weights: torch.Tensor, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        count_unique_prototypes(weights, **kwargs)


def test_normalize_prototypes() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]], dtype=torch.float16)
    out = normalize_prototypes(w)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]]))
    assert normalize_prototypes(w.double()).dtype == torch.float64
    with pytest.raises(ValueError):
        normalize_prototypes(torch.randn(3))


# --- uniqueness curve ---------------------------------------------------------------------


def _curve_checks(w: torch.Tensor, eps_values: list[float]) -> None:
    curve = uniqueness_curve(w, eps_values, block_size=23)
    assert [e for e, _ in curve] == sorted(eps_values)
    for eps, m in curve:
        assert m == count_unique_prototypes(w, eps=eps).num_unique
        assert m == int(brute_force_labels(w, eps).max()) + 1
    ms = [m for _, m in curve]
    assert all(x >= y for x, y in zip(ms, ms[1:], strict=False))
    assert ms[0] > ms[-1]  # the grid really spans a change


def test_uniqueness_curve_on_dense_graph() -> None:
    _curve_checks(dense_low_dim(11, k=250), [0.3, 0.01, 0.05, 0.1, 0.2, 0.025])


def test_uniqueness_curve_at_near_threshold_planted_pairs() -> None:
    eps = DEFAULT_EPS
    w = planted_prototypes(12, eps)
    _curve_checks(w, list(DEFAULT_EPS_GRID))
    # Exactly at the planted distances eps(1 +- 1e-3) the curve agrees with the count.
    grid = [eps * (1 - 2e-3), eps, eps * (1 + 2e-3)]
    curve = uniqueness_curve(w, grid)
    assert [m for _, m in curve] == [count_unique_prototypes(w, e).num_unique for e in grid]
    assert curve[0][1] > curve[1][1] > curve[2][1]


def test_uniqueness_curve_compaction_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force the spanning-forest compaction after every tile; the result must not change.
    w = dense_low_dim(13, k=200)
    eps_values = [0.05, 0.1, 0.2, 0.4]
    expected = uniqueness_curve(w, eps_values, block_size=16)
    monkeypatch.setattr(constants_mod, "COMPACT_MIN_EDGES", 0)
    assert uniqueness_curve(w, eps_values, block_size=16) == expected
    assert [m for _, m in expected] == [int(brute_force_labels(w, e).max()) + 1 for e in eps_values]


def test_uniqueness_curve_rejects_bad_eps() -> None:
    with pytest.raises(ValueError):
        uniqueness_curve(torch.randn(4, 3), [])
    with pytest.raises(ValueError):
        uniqueness_curve(torch.randn(4, 3), [0.1, 0.0])


# --- nearest neighbours and quantiles -----------------------------------------------------


@pytest.mark.parametrize("block_size", [16, 2048])
def test_nearest_neighbor_distances_match_bruteforce(block_size: int) -> None:
    w = torch.cat([dense_low_dim(14, k=90, p=6), planted_prototypes(14, 0.05, p=6)])
    d = brute_force_distances(w)
    d.fill_diagonal_(math.inf)
    expected = d.min(dim=1).values
    got = nearest_neighbor_distances(w, block_size=block_size)
    assert got.shape == (w.shape[0],) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=0)


def test_nearest_neighbor_distances_edge_cases() -> None:
    assert nearest_neighbor_distances(torch.randn(1, 4)).tolist() == [math.inf]
    twins = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(
        nearest_neighbor_distances(twins),
        torch.tensor([0.0, 0.0, math.sqrt(2.0)], dtype=torch.float64),
    )


def test_distance_quantiles() -> None:
    values = torch.tensor([4.0, 0.0, 2.0, 1.0, 3.0])
    q = distance_quantiles(values)
    assert list(q) == ["q0", "q10", "q25", "q50", "q75", "q90", "q100"]
    assert q["q0"] == 0.0 and q["q50"] == 2.0 and q["q100"] == 4.0
    assert q["q10"] == pytest.approx(0.4) and q["q25"] == pytest.approx(1.0)
    assert distance_quantiles(values, (0.025,)) == {"q2.5": pytest.approx(0.1)}
    for bad in (torch.zeros(0), torch.tensor([1.0, float("nan")])):
        with pytest.raises(ValueError):
            distance_quantiles(bad)
    with pytest.raises(ValueError):
        distance_quantiles(values, (1.5,))


def test_summarize_prototypes_is_consistent_and_json_ready() -> None:
    gen = torch.Generator().manual_seed(15)
    base = torch.randn(30, 8, generator=gen)
    w = torch.cat([base, base[:5] * 3.0, base[:1] * 0.5])  # group of 3 and four of 2
    summary = summarize_prototypes(w, top_groups=3)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["K"] == 36 and summary["M"] == 30
    assert summary["M_over_K"] == pytest.approx(30 / 36)
    assert summary["eps"] == DEFAULT_EPS
    assert summary["largest_groups"] == [3, 2, 2]
    assert summary["uniqueness_curve"] == [[e, m] for e, m in uniqueness_curve(w)]
    assert summary["nn_distance_quantiles"] == distance_quantiles(nearest_neighbor_distances(w))
    assert summary["nn_distance_quantiles"]["q0"] == pytest.approx(0.0, abs=1e-6)
    norms = w.double().norm(dim=1)
    assert summary["norm_quantiles"]["q100"] == pytest.approx(float(norms.max()))
    assert summary["norm_quantiles"]["q50"] == pytest.approx(float(np.quantile(norms.numpy(), 0.5)))
    single = summarize_prototypes(torch.randn(1, 4))
    assert single["M"] == 1 and single["nn_distance_quantiles"] == {}
    json.dumps(single, allow_nan=False)


# --- usage ----------------------------------------------------------------------------------


def test_prototype_usage_matches_hand_computation() -> None:
    stats = prototype_usage(torch.tensor([0, 0, 1, 1, 1, 3]), num_prototypes=5)
    assert stats.counts.tolist() == [2, 3, 0, 1, 0]
    assert stats.counts.dtype == np.int64
    expected = -(1 / 3 * math.log(1 / 3) + 1 / 2 * math.log(1 / 2) + 1 / 6 * math.log(1 / 6))
    assert stats.entropy == pytest.approx(expected)
    assert stats.perplexity == pytest.approx(math.exp(expected))
    assert (stats.num_used, stats.num_dead, stats.num_prototypes) == (3, 2, 5)


def test_prototype_usage_extremes() -> None:
    uniform = prototype_usage(torch.arange(8).repeat(3), num_prototypes=8)
    assert uniform.entropy == pytest.approx(math.log(8))
    assert uniform.perplexity == pytest.approx(8.0)
    assert uniform.num_dead == 0
    one_hot = prototype_usage(torch.full((10,), 4), num_prototypes=6)
    assert one_hot.entropy == 0.0 and one_hot.perplexity == 1.0
    assert (one_hot.num_used, one_hot.num_dead) == (1, 5)


def test_usage_from_logits() -> None:
    logits = torch.tensor(
        [
            [[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 0.0]],
            [[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]],
        ]
    )
    stats = usage_from_logits(logits)
    assert stats.counts.tolist() == [1, 2, 0, 1]
    assert stats.num_prototypes == 4 and stats.num_dead == 1


@pytest.mark.parametrize(
    ("assignments", "k"),
    [
        (torch.tensor([0, 5]), 5),
        (torch.tensor([-1, 2]), 5),
        (torch.tensor([0, 1]), 0),
        (torch.tensor([0.0, 1.0]), 3),
        (torch.zeros(0, dtype=torch.long), 3),
    ],
)
def test_prototype_usage_rejects_bad_input(assignments: torch.Tensor, k: int) -> None:
    with pytest.raises(ValueError):
        prototype_usage(assignments, num_prototypes=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    w = torch.cat([dense_low_dim(16, k=500), planted_prototypes(16, 0.1, p=3)])
    cpu = count_unique_prototypes(w.float(), eps=0.1, block_size=64)
    gpu = count_unique_prototypes(w.float().cuda(), eps=0.1, block_size=64)
    np.testing.assert_array_equal(gpu.labels, cpu.labels)
    assert uniqueness_curve(w.cuda(), block_size=64) == uniqueness_curve(w, block_size=64)
    torch.testing.assert_close(
        nearest_neighbor_distances(w.cuda()), nearest_neighbor_distances(w), atol=1e-7, rtol=0
    )


# --- exact fast counting: greedy leaders (issue 4) ------------------------------------------


def _orthonormal(gen: torch.Generator, p: int, n: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(p, n, generator=gen, dtype=torch.float64))
    return q.T  # [n, p], orthonormal rows


def hard_mixture(seed: int, eps: float, p: int = 16) -> torch.Tensor:
    """Random + tight and fat groups + chains + near-threshold pairs, across covers.

    Fat groups (offsets up to 1.5 eps) need several leaders whose covers are linked
    only through members; chains (0.6 eps steps) span many covers; near-threshold
    pairs (eps * (1 +- 1e-6)) sit both alone and between a cover member and a point
    more than eps from that member's leader. Shuffled and rescaled row by row.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    parts = [randn(60, p)]
    for size in (3, 5, 10):  # tight duplicates, one cover each
        parts.append(unit(randn(1, p)) + 0.1 * eps * unit(randn(size, p)))
    for size in (25, 40):  # fat: a random geometric graph at scale eps
        radius = 1.5 * eps * torch.rand(size, 1, generator=gen, dtype=torch.float64)
        parts.append(unit(randn(1, p)) + radius * unit(randn(size, p)))
    for length in (5, 12, 25):
        parts.append(planted_chain(gen, p, eps, length))
    for factor in (1 - 1e-6, 1 + 1e-6, 1 - 1e-6, 1 + 1e-6):
        a, b, c = _orthonormal(gen, p, 3)
        parts.append(torch.stack([a, _on_circle(a, b, factor * eps)]))
        # a - m at 0.5 eps, m - x at factor * eps orthogonally: |a - x| ~ 1.12 eps.
        m = _on_circle(a, b, 0.5 * eps)
        parts.append(torch.stack([a, m, _on_circle(m, c, factor * eps)]))
    base = unit(randn(4, p))
    parts.append(torch.cat([base, base * 3.0]))  # exact duplicates (distance 0)
    w = torch.cat(parts)
    scales = torch.rand(w.shape[0], 1, generator=gen, dtype=torch.float64) * 5 + 0.1
    return (w * scales)[torch.randperm(w.shape[0], generator=gen)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [0.01, DEFAULT_EPS, 0.1])
def test_leaders_match_bruteforce_on_hard_mixtures(seed: int, eps: float) -> None:
    w = hard_mixture(seed, eps)
    expected = brute_force_labels(w, eps)
    for block_size in (16, 97):  # many chunks: covers and chains cross chunk boundaries
        result = count_unique_prototypes(w, eps=eps, block_size=block_size, method="leaders")
        assert result.num_unique == int(expected.max()) + 1
        np.testing.assert_array_equal(result.labels, expected)
    brute = count_unique_prototypes(w, eps=eps, method="brute")
    np.testing.assert_array_equal(brute.labels, expected)
    assert result.group_sizes == brute.group_sizes


def test_hard_mixture_really_needs_member_links() -> None:
    # The fixture exercises what the leaders must get right: covers linked only
    # through members, and near-threshold decisions on both sides of eps.
    eps = DEFAULT_EPS
    w = hard_mixture(0, eps)
    covers = cover_mod.CoverBuilder(
        inputs_mod.unit_directions(w, 16), np.arange(w.shape[0]), eps, 16, False
    ).build()
    num_covers = covers.leader.size
    m = count_unique_prototypes(w, eps=eps, block_size=16, method="leaders").num_unique
    assert m < num_covers < w.shape[0]
    d = brute_force_distances(w)
    near = ((d - eps).abs() < 2e-6 * eps) & (d > 0)
    assert int((near & (d < eps)).sum()) >= 8 and int((near & (d >= eps)).sum()) >= 8


def test_leaders_match_bruteforce_on_dense_low_dim_graphs() -> None:
    # On S^2 nearly everything is within 3 eps of something: the worst case for pruning.
    for seed, eps in [(3, 0.05), (4, 0.12), (5, 0.25)]:
        w = dense_low_dim(seed)
        result = count_unique_prototypes(w, eps=eps, block_size=37, method="leaders")
        np.testing.assert_array_equal(result.labels, brute_force_labels(w, eps))


def test_leaders_are_permutation_invariant() -> None:
    eps = DEFAULT_EPS
    w = hard_mixture(10, eps)
    base = count_unique_prototypes(w, eps=eps, block_size=16, method="leaders")
    for k in range(3):
        perm = torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(100 + k))
        permuted = count_unique_prototypes(w[perm], eps=eps, block_size=16, method="leaders")
        assert permuted.num_unique == base.num_unique
        np.testing.assert_array_equal(permuted.labels, relabel_canonical(base.labels[perm.numpy()]))


def collapsed_and_random(seed: int, k: int, p: int, groups: int, eps: float) -> torch.Tensor:
    """Half tight groups (offsets < 0.25 eps), half random directions, shuffled."""
    gen = torch.Generator().manual_seed(seed)
    centers = _unit_rows(torch.randn(groups, p, generator=gen))
    n = k // 2
    assign = torch.randint(groups, (n,), generator=gen)
    offsets = _unit_rows(torch.randn(n, p, generator=gen))
    offsets *= 0.25 * eps * torch.rand(n, 1, generator=gen)
    w = torch.cat([centers[assign] + offsets, torch.randn(k - n, p, generator=gen)])
    return w[torch.randperm(k, generator=gen)]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("eps", [DEFAULT_EPS, 0.1])
def test_auto_uses_leaders_and_matches_bruteforce(
    eps: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = collapsed_and_random(20, k=5000, p=32, groups=50, eps=eps)
    brute = count_unique_prototypes(w, eps=eps, method="brute")
    calls: list[int] = []
    original = leaders_mod.leader_components

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(leaders_mod, "leader_components", spy)
    auto = count_unique_prototypes(w, eps=eps)
    assert calls, "auto should pick the leaders at K = 5000"
    np.testing.assert_array_equal(auto.labels, brute.labels)
    # 2500 random singletons plus the (at most 50) planted groups.
    assert 2500 < auto.num_unique == brute.num_unique <= 2550


@pytest.mark.parametrize("project", [False, True])
@pytest.mark.parametrize("eps", [0.001, DEFAULT_EPS, 0.1])
def test_leaders_link_covers_at_the_three_eps_limit(
    eps: float, project: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leaders A and B almost 3 eps apart on a great circle, each with one member just
    # inside eps, the two members just inside eps of each other: the screen at 3 eps
    # (float32, p = 256) must still propose the pair (A, B), or the chain is missed.
    # With the projection screen on, its principal plane is the circle's: the
    # projected distances are the full ones, so its margin is what is tested.
    if project:
        monkeypatch.setattr(constants_mod, "PROJECT_MIN_ROWS", 1)
    a, b = _orthonormal_pair(torch.Generator().manual_seed(23), 256)
    step = 2.0 * math.asin(eps * (1 - 1e-7) / 2.0)
    ring = [math.cos(i * step) * a + math.sin(i * step) * b for i in range(4)]
    w = torch.stack([ring[0], ring[3], ring[1], ring[2]])  # leaders come first
    units = inputs_mod.unit_directions(w, 1)
    builder = cover_mod.CoverBuilder(units, np.arange(4), eps, 1, False)
    assert builder.q == (32 if project else 0)
    covers = builder.build()
    assert covers.leader.tolist() == [0, 1] and covers.cover_of.tolist() == [0, 1, 0, 1]
    assert float((units[0] - units[1]).norm()) > 3 * eps * (1 - 1e-2)
    result = count_unique_prototypes(w, eps=eps, block_size=1, method="leaders")
    assert result.num_unique == 1
    shrunk = count_unique_prototypes(w, eps=eps * (1 - 2e-7), block_size=1, method="leaders")
    assert shrunk.num_unique == 4


def test_leaders_float32_input_and_lazy_greedy_path() -> None:
    # One chunk holding a tight group of 1,500: too many screened pairs to verify all
    # at once, so the greedy leader claims them lazily.
    gen = torch.Generator().manual_seed(21)
    center = torch.randn(1, 24, generator=gen)
    group = center + 1e-4 * torch.randn(1500, 24, generator=gen)
    w = torch.cat([group, torch.randn(500, 24, generator=gen)])[torch.randperm(2000, generator=gen)]
    result = count_unique_prototypes(w, method="leaders")
    brute = count_unique_prototypes(w, method="brute")
    np.testing.assert_array_equal(result.labels, brute.labels)
    assert result.num_unique == 501 and result.group_sizes[0] == 1500


def test_leaders_small_pair_budget_and_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = 0.1
    w = hard_mixture(30, eps)
    expected = brute_force_labels(w, eps)
    # Tiny batches: member pairs in slices, one big cover pair at a time.
    monkeypatch.setattr(constants_mod, "PAIR_BUDGET", 8)
    monkeypatch.setattr(constants_mod, "PAIR_CHUNK", 5)
    result = count_unique_prototypes(w, eps=eps, block_size=16, method="leaders")
    np.testing.assert_array_equal(result.labels, expected)
    # "auto" hands a too-dense leader graph to the brute force; the answer is the same.
    monkeypatch.setattr(constants_mod, "AUTO_MIN_K", 1)
    monkeypatch.setattr(constants_mod, "DENSE_LEADER_PAIRS", 0)
    with pytest.raises(cover_mod.TooDense):
        leaders_mod.leader_components(inputs_mod.unit_directions(w, 16), eps, 16, give_up=True)
    np.testing.assert_array_equal(
        count_unique_prototypes(w, eps=eps, block_size=16).labels, expected
    )


@pytest.mark.parametrize("eps", [0.5, 1.0, 1.0 + 1e-7, 1.3, 2.5])
def test_leaders_zero_and_tiny_rows(eps: float) -> None:
    # Zero rows stay zero and tiny rows (norm < 1e-12) stay short after F.normalize:
    # neither is a unit vector, so both go through the exact all-rows path.
    gen = torch.Generator().manual_seed(22)
    w = torch.cat(
        [
            torch.zeros(3, 5, dtype=torch.float64),
            torch.randn(40, 5, generator=gen, dtype=torch.float64),
        ]
    )
    w = torch.cat([w, 1e-14 * torch.randn(3, 5, generator=gen, dtype=torch.float64)])
    w = w[torch.randperm(w.shape[0], generator=gen)]
    result = count_unique_prototypes(w, eps=eps, block_size=8, method="leaders")
    brute = count_unique_prototypes(w, eps=eps, block_size=8, method="brute")
    np.testing.assert_array_equal(result.labels, brute.labels)


def test_leaders_screen_falls_back_to_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    # A reduced-precision float32 matmul (TF32/bf16) switches the screen to float64.
    assert distances_mod.screen_dtype(torch.zeros(1, 8, dtype=torch.float64)) == torch.float32
    eps = DEFAULT_EPS
    w = hard_mixture(40, eps)
    monkeypatch.setattr(cover_mod, "screen_dtype", lambda units: torch.float64)
    result = count_unique_prototypes(w, eps=eps, block_size=16, method="leaders")
    np.testing.assert_array_equal(result.labels, brute_force_labels(w, eps))


def test_count_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="method"):
        count_unique_prototypes(torch.randn(4, 3), method="faiss")


@pytest.mark.parametrize("force", [False, True])
def test_leaders_projection_screen_is_conservative(
    force: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # p >= 128 uses the projection screen by default; forcing it at p = 16 (q = 4
    # principal directions: a weak screen with many false candidates) must not matter.
    p = 16 if force else 256
    monkeypatch.setattr(constants_mod, "PROJECT_MIN_ROWS", 1)
    if force:
        monkeypatch.setattr(constants_mod, "PROJECT_MIN_P", 1)
    built: list[int] = []
    original = cover_mod.CoverBuilder._init_projection

    def spy(self, *args):  # type: ignore[no-untyped-def]
        built.append(self.q)
        return original(self, *args)

    monkeypatch.setattr(cover_mod.CoverBuilder, "_init_projection", spy)
    for seed, eps in [(50, 0.01), (52, 0.1)]:
        w = hard_mixture(seed, eps, p=p)
        result = count_unique_prototypes(w, eps=eps, block_size=16, method="leaders")
        np.testing.assert_array_equal(result.labels, brute_force_labels(w, eps))
    assert built == [4 if force else 32] * 2


# --- exact fast nearest neighbours and uniqueness curve (issue 4: analyze) ---------------


def brute_nearest(weights: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Direct float64 nearest-neighbour distances, a chunk of rows at a time."""
    w = weights.to(torch.float64)
    u = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = []
    for s in range(0, u.shape[0], chunk):
        d = (u[s : s + chunk, None, :] - u[None, :, :]).norm(dim=-1)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = math.inf
        out.append(d.min(dim=1).values)
    return torch.cat(out)


def odd_rows_mixture(seed: int, eps: float) -> torch.Tensor:
    """hard_mixture plus zero rows, tiny rows (norm < 1e-12) and exact duplicates."""
    gen = torch.Generator().manual_seed(seed)
    w = hard_mixture(seed, eps)
    p = w.shape[1]
    tiny = 1e-14 * torch.randn(3, p, generator=gen, dtype=torch.float64)
    w = torch.cat([w, torch.zeros(3, p, dtype=torch.float64), tiny, w[:5] * 2.0])
    return w[torch.randperm(w.shape[0], generator=gen)]


def _curve_grid(eps: float) -> list[float]:
    # Both sides of the planted near-threshold pairs, below and above the covers' eps.
    return [0.001, 0.5 * eps, eps * (1 - 2e-6), eps, eps * (1 + 2e-6), 2 * eps, 0.1, 0.3, 0.5]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("block_size", [16, 2048])
def test_nearest_neighbors_exact_on_mixtures(
    seed: int, dtype: torch.dtype, block_size: int
) -> None:
    w = hard_mixture(seed, DEFAULT_EPS).to(dtype)
    got = nearest_neighbor_distances(w, block_size=block_size)
    assert got.dtype == torch.float64 and got.shape == (w.shape[0],)
    torch.testing.assert_close(got, brute_nearest(w), atol=1e-12, rtol=0)


def test_nearest_neighbor_mixture_has_covered_and_lonely_rows() -> None:
    # The fixture exercises both searches: neighbourhoods (float64) and lonely (float32).
    units = inputs_mod.unit_directions(hard_mixture(0, DEFAULT_EPS), 16)
    covers = cover_mod.prepare(units, DEFAULT_EPS, 16, give_up=True).covers
    assert covers is not None
    size = np.bincount(covers.cover_of)
    assert (size[covers.cover_of] == 1).sum() > 50 and (size >= 2).sum() > 5
    assert covers.pair_a.size > 0  # neighbouring covers too


@pytest.mark.parametrize("seed", range(3))
def test_nearest_neighbors_with_zero_tiny_and_duplicate_rows(seed: int) -> None:
    w = odd_rows_mixture(seed, DEFAULT_EPS)
    for block_size in (8, 2048):
        got = nearest_neighbor_distances(w, block_size=block_size)
        torch.testing.assert_close(got, brute_nearest(w), atol=1e-12, rtol=0)
    only_zero_and_one = torch.cat([torch.zeros(1, 4), torch.eye(4)[:1] * 3.0])
    torch.testing.assert_close(
        nearest_neighbor_distances(only_zero_and_one), torch.ones(2, dtype=torch.float64)
    )


def test_nearest_neighbors_dense_fallback_and_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    w = hard_mixture(5, DEFAULT_EPS)
    expected = brute_nearest(w)
    # Covers given up (too dense): every row goes through the symmetric float32 pass.
    with monkeypatch.context() as m:

        def give_up(self):  # type: ignore[no-untyped-def]
            raise cover_mod.TooDense

        m.setattr(cover_mod.CoverBuilder, "build", give_up)
        units = inputs_mod.unit_directions(w, 16)
        assert cover_mod.prepare(units, DEFAULT_EPS, 16, give_up=True).covers is None
        got = nearest_neighbor_distances(w, block_size=16)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    # Projection screen forced on for the covers (q = 4 at p = 16).
    monkeypatch.setattr(constants_mod, "PROJECT_MIN_ROWS", 1)
    monkeypatch.setattr(constants_mod, "PROJECT_MIN_P", 1)
    got = nearest_neighbor_distances(w, block_size=16)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_nearest_neighbors_large_cover_spans_several_tiles() -> None:
    # One tight group of 1,300 (a cover wider than a tile: several row and column
    # tiles in the neighbourhood pass) next to 300 random rows; float32 input.
    gen = torch.Generator().manual_seed(63)
    center = torch.randn(1, 24, generator=gen)
    group = center + 1e-3 * torch.randn(1300, 24, generator=gen)
    w = torch.cat([group, torch.randn(300, 24, generator=gen)])
    w = w[torch.randperm(w.shape[0], generator=gen)]
    got = nearest_neighbor_distances(w, block_size=64)
    torch.testing.assert_close(got, brute_nearest(w), atol=1e-12, rtol=0)
    curve = uniqueness_curve(w, [1e-4, 3e-4, 1e-3, 0.01], block_size=64)
    assert curve == uniqueness_curve(w, [1e-4, 3e-4, 1e-3, 0.01], method="brute")
    assert curve[0][1] > curve[-1][1] == 301


def test_nearest_neighbors_near_ties_are_exact() -> None:
    # Neighbours at distances differing by 1e-9: far below the float32 screen's
    # resolution; the direct float64 re-measure must still return the smaller one.
    a, b, c = _orthonormal(torch.Generator().manual_seed(60), 64, 3)
    rows = [a, _on_circle(a, b, 0.5), _on_circle(a, c, 0.5 + 1e-9)]
    w = torch.stack(rows + [_on_circle(b, c, 0.9)])
    torch.testing.assert_close(nearest_neighbor_distances(w), brute_nearest(w), atol=1e-15, rtol=0)
    assert float(nearest_neighbor_distances(w)[0]) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps", [0.01, DEFAULT_EPS, 0.1])
def test_uniqueness_curve_exact_on_hard_mixtures(seed: int, eps: float) -> None:
    w = hard_mixture(seed, eps)
    grid = _curve_grid(eps)
    expected = [brute_force_m(w, e) for e in sorted(set(grid))]
    for block_size in (16, 2048):
        assert [m for _, m in uniqueness_curve(w, grid, block_size=block_size)] == expected
    # The summary builds its covers at its own eps; every part of its curve is exact too.
    summary = summarize_prototypes(w, eps=eps, eps_grid=grid, block_size=16)
    assert [m for _, m in summary["uniqueness_curve"]] == expected
    assert summary["M"] == brute_force_m(w, eps)
    assert len(set(expected)) >= 4  # chains and planted pairs really cross the grid


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_uniqueness_curve_with_zero_tiny_and_duplicate_rows(seed: int, dtype: torch.dtype) -> None:
    w = odd_rows_mixture(seed, DEFAULT_EPS).to(dtype)
    w64 = w.to(torch.float64)
    grid = _curve_grid(DEFAULT_EPS) + [1.0, 1.0 + 1e-7, 1.5]
    expected = [brute_force_m(w64, e) for e in sorted(set(grid))]
    assert [m for _, m in uniqueness_curve(w, grid, block_size=16)] == expected
    summary = summarize_prototypes(w, eps_grid=grid, block_size=16)
    assert [m for _, m in summary["uniqueness_curve"]] == expected


def test_uniqueness_curve_on_dense_low_dim_graph_and_fallbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = dense_low_dim(61, k=250)
    grid = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5]
    expected = [brute_force_m(w, e) for e in grid]
    assert [m for _, m in uniqueness_curve(w, grid, block_size=23)] == expected
    assert expected[0] > expected[-1]
    # Leader graphs "too dense": the curve above the covers' eps falls back per eps.
    monkeypatch.setattr(constants_mod, "DENSE_LEADER_PAIRS", 0)
    monkeypatch.setattr(constants_mod, "AUTO_MIN_K", 1)
    assert [m for _, m in uniqueness_curve(w, grid, block_size=23)] == expected


def test_long_curve_links_the_same_covers() -> None:
    # Above the covers' eps the curve comes from linking the covers (no new leaders).
    eps = DEFAULT_EPS
    w = hard_mixture(3, eps)
    units = inputs_mod.unit_directions(w, 16)
    prepared = cover_mod.prepare(units, eps, 16, give_up=True)
    nearest, short = nearest_mod.nearest_and_short_curve(
        units, 16, prepared, np.array([0.001, 0.01, eps])
    )
    assert short == {e: brute_force_m(w, e) for e in (0.001, 0.01, eps)}
    longer = np.array([2 * eps, 0.1, 0.5])
    linked = curve_mod.long_curve(units, prepared, nearest, longer, 16)
    assert linked == {e: brute_force_m(w, e) for e in longer.tolist()}


def test_curve_and_summary_at_larger_k_match_the_brute_force() -> None:
    # K >= 2048: the leaders count M and the per-eps fallback; compared with the brute
    # force pass (itself checked against the reference above).
    w = collapsed_and_random(62, k=2600, p=32, groups=40, eps=DEFAULT_EPS)
    w = torch.cat([w, w[:7] * 2.0, torch.zeros(2, 32)])
    grid = list(DEFAULT_EPS_GRID)
    auto = summarize_prototypes(w, eps_grid=grid)
    brute = summarize_prototypes(w, eps_grid=grid, method="brute")
    for key in ("K", "M", "uniqueness_curve", "largest_groups", "norm_quantiles"):
        assert auto[key] == brute[key], key
    for key, value in auto["nn_distance_quantiles"].items():
        assert value == pytest.approx(brute["nn_distance_quantiles"][key], abs=1e-7)
    assert uniqueness_curve(w, grid) == uniqueness_curve(w, grid, method="brute")
    torch.testing.assert_close(
        nearest_neighbor_distances(w),
        nearest_neighbor_distances(w, method="brute"),
        atol=1e-7,
        rtol=0,
    )


def test_summary_auto_matches_reference_and_reports_timings() -> None:
    w = odd_rows_mixture(7, DEFAULT_EPS)
    timings: dict[str, float] = {}
    summary = summarize_prototypes(w, timings=timings, block_size=16)
    assert set(timings) == {"units", "M", "nearest", "curve", "norms"}
    assert all(t >= 0 for t in timings.values())
    nn = brute_nearest(w)
    assert summary["nn_distance_quantiles"] == pytest.approx(distance_quantiles(nn), abs=1e-12)
    labels = brute_force_labels(w, DEFAULT_EPS)
    sizes = sorted(np.bincount(labels).tolist(), reverse=True)
    assert summary["M"] == len(sizes) and summary["largest_groups"] == sizes[:10]
    assert summary == summarize_prototypes(w, block_size=2048)  # block size changes nothing


def test_analyze_functions_reject_unknown_method() -> None:
    w = torch.randn(4, 3)
    with pytest.raises(ValueError, match="method"):
        uniqueness_curve(w, method="leaders")
    with pytest.raises(ValueError, match="method"):
        nearest_neighbor_distances(w, method="faiss")
    with pytest.raises(ValueError, match="method"):
        summarize_prototypes(w, method="fast")
