"""The tiled search of protossl.core.neighbours against a brute-force reference.

The reference scores the full matrix at once (``queries @ keys.T``, the self entries set
to the worst score) and calls ``torch.topk`` / ``argmax`` on it. Small-integer inputs
make every inner product exact in any summation order, so tile scores and full-matrix
scores are bit-equal and the comparison can be exact; they also make many ties.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from protossl.core.neighbours import (
    BestFold,
    TopKFold,
    iter_tiled_topk,
    score_tiles,
    tiled_best,
    tiled_topk,
)

DTYPES = (torch.float32, torch.float64)
# (M, N): square ones also run with exclude_self.
SHAPES = ((1, 1), (1, 6), (5, 7), (9, 4), (17, 17), (40, 23))
BLOCKS = (1, 5, 16, 64)
COL_BLOCKS = (None, 1, 3, 8, 100)


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)


def full_scores(
    queries: Tensor, keys: Tensor, exclude_self: bool, largest: bool, score=None
) -> Tensor:
    full = queries @ keys.T if score is None else score(queries, keys)
    if exclude_self:
        full.fill_diagonal_(-math.inf if largest else math.inf)
    return full


def reference_topk(
    queries: Tensor, keys: Tensor, k: int, exclude_self: bool, largest: bool, score=None
) -> tuple[Tensor, Tensor, Tensor]:
    full = full_scores(queries, keys, exclude_self, largest, score)
    values, indices = full.topk(min(k, keys.shape[0]), dim=1, largest=largest)
    return full, values, indices


def integer_rows(rows: int, dim: int, dtype: torch.dtype, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (rows, dim), generator=g).to(dtype)


def ks_for(n: int) -> list[int]:
    return sorted({1, 2, 3, max(1, n - 1), n, n + 4})


def check_topk(full: Tensor, ref_values: Tensor, values: Tensor, indices: Tensor) -> None:
    """Values equal the reference's; each index holds its value; no index twice."""
    assert values.dtype == full.dtype and indices.dtype == torch.long
    assert values.shape == indices.shape == ref_values.shape
    assert torch.equal(values, ref_values)
    assert torch.equal(full.gather(1, indices), values)
    if indices.shape[1] > 1:
        ordered = indices.sort(dim=1).values
        assert bool((ordered[:, 1:] > ordered[:, :-1]).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("largest", [True, False])
def test_topk_matches_the_full_matrix_exactly(
    dtype: torch.dtype, exclude_self: bool, largest: bool
) -> None:
    for case, (m, n) in enumerate(SHAPES):
        if exclude_self and m != n:
            continue
        queries = integer_rows(m, 5, dtype, case)
        keys = queries if exclude_self else integer_rows(n, 5, dtype, 100 + case)
        for k in ks_for(n):
            full, ref_values, ref_indices = reference_topk(queries, keys, k, exclude_self, largest)
            for block_rows, block_cols in itertools.product(BLOCKS, COL_BLOCKS):
                values, indices = tiled_topk(
                    queries,
                    keys,
                    k,
                    block_rows=block_rows,
                    block_cols=block_cols,
                    exclude_self=exclude_self,
                    largest=largest,
                )
                check_topk(full, ref_values, values, indices)
                if exclude_self and k < n:
                    assert not bool((indices == torch.arange(m)[:, None]).any())
                if block_cols is None or block_cols >= n:
                    # One tile per row block: torch.topk's own tie order (kNN relies on it).
                    assert torch.equal(indices, ref_indices)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_topk_on_random_floats(dtype: torch.dtype, exclude_self: bool) -> None:
    """Gaussian rows (no exact ties): the same neighbours in the same order."""
    g = torch.Generator().manual_seed(7)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for m, n, d in ((50, 50, 16), (64, 64, 8), (31, 90, 32)):
        if exclude_self and m != n:
            continue
        queries = torch.randn(m, d, generator=g, dtype=dtype)
        keys = queries if exclude_self else torch.randn(n, d, generator=g, dtype=dtype)
        for k, block_rows, block_cols in ((1, 7, 9), (5, 16, None), (12, 64, 13), (n, 5, 6)):
            full, ref_values, ref_indices = reference_topk(queries, keys, k, exclude_self, True)
            values, indices = tiled_topk(
                queries,
                keys,
                k,
                block_rows=block_rows,
                block_cols=block_cols,
                exclude_self=exclude_self,
            )
            torch.testing.assert_close(values, ref_values, atol=tol, rtol=0)
            torch.testing.assert_close(full.gather(1, indices), values, atol=tol, rtol=0)
            # Neighbours separated by more than the rounding come in the same order.
            ranked = full.sort(dim=1, descending=True).values
            inf = torch.full_like(ranked[:, :1], math.inf)
            gaps = torch.cat([inf, ranked[:, :-1] - ranked[:, 1:], inf], 1)
            width = values.shape[1]
            clear = (gaps[:, :width] > 10 * tol) & (gaps[:, 1 : width + 1] > 10 * tol)
            assert bool(clear.float().mean() > 0.9)
            assert torch.equal(indices[clear], ref_indices[clear])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("largest", [True, False])
def test_best_is_argmax_of_the_full_matrix_with_lowest_index_ties(
    dtype: torch.dtype, exclude_self: bool, largest: bool
) -> None:
    for case, (m, n) in enumerate(SHAPES):
        if exclude_self and m != n:
            continue
        # dim 2 in {-1, 0, 1}: nearly every row has tied best keys.
        queries = integer_rows(m, 2, dtype, case).clamp(-1, 1)
        keys = queries if exclude_self else integer_rows(n, 2, dtype, 50 + case).clamp(-1, 1)
        full = full_scores(queries, keys, exclude_self, largest)
        ref = full.max(dim=1) if largest else full.min(dim=1)
        # torch.max's first-index rule, spelled out.
        first = torch.stack(
            [(row == v).nonzero()[0, 0] for row, v in zip(full, ref.values, strict=True)]
        )
        assert torch.equal(ref.indices, first)
        for block_rows, block_cols in itertools.product(BLOCKS, COL_BLOCKS):
            values, indices = tiled_best(
                queries,
                keys,
                block_rows=block_rows,
                block_cols=block_cols,
                exclude_self=exclude_self,
                largest=largest,
            )
            assert torch.equal(values, ref.values)
            assert torch.equal(indices, first)


def test_custom_score_distances() -> None:
    """A distance ``score`` with largest=False: the nearest keys in Euclidean distance."""
    for dtype in DTYPES:
        queries = integer_rows(23, 4, dtype, 1)
        keys = integer_rows(30, 4, dtype, 2)
        for k, block_rows, block_cols in ((1, 4, 7), (4, 23, None), (9, 5, 3)):
            full, ref_values, _ = reference_topk(
                queries, keys, k, False, False, score=squared_distances
            )
            values, indices = tiled_topk(
                queries,
                keys,
                k,
                block_rows=block_rows,
                block_cols=block_cols,
                largest=False,
                score=squared_distances,
            )
            check_topk(full, ref_values, values, indices)
            best_values, best_indices = tiled_best(
                queries, keys, block_rows=block_rows, block_cols=block_cols, largest=False,
                score=squared_distances,
            )  # fmt: skip
            assert torch.equal(best_values, full.min(dim=1).values)
            assert torch.equal(best_indices, full.argmin(dim=1))
        # exclude_self also masks a custom score.
        x = integer_rows(12, 3, dtype, 3)
        full, ref_values, _ = reference_topk(x, x, 3, True, False, score=squared_distances)
        values, indices = tiled_topk(
            x, x, 3, block_rows=5, block_cols=4, exclude_self=True, largest=False,
            score=squared_distances,
        )  # fmt: skip
        check_topk(full, ref_values, values, indices)


def test_iter_yields_row_blocks_in_order() -> None:
    queries, keys = integer_rows(22, 3, torch.float32, 4), integer_rows(13, 3, torch.float32, 5)
    blocks = list(iter_tiled_topk(queries, keys, 4, block_rows=6, block_cols=5))
    assert [b[0] for b in blocks] == [0, 6, 12, 18]
    assert [b[1].shape for b in blocks] == [torch.Size([6, 4])] * 3 + [torch.Size([4, 4])]
    values, indices = tiled_topk(queries, keys, 4, block_rows=6, block_cols=5)
    # Kept blocks do not alias the reused tile buffer.
    assert torch.equal(torch.cat([b[1] for b in blocks]), values)
    assert torch.equal(torch.cat([b[2] for b in blocks]), indices)


def test_score_tiles_cover_the_matrix_once() -> None:
    x = integer_rows(11, 3, torch.float64, 6)
    seen = torch.zeros(11, 11, dtype=torch.long)
    for r0, tiles in score_tiles(x, x, block_rows=4, block_cols=3, exclude_self=True):
        for c0, tile in tiles:
            expected = x[r0 : r0 + 4] @ x[c0 : c0 + 3].T
            for a, b in itertools.product(range(tile.shape[0]), range(tile.shape[1])):
                if r0 + a == c0 + b:
                    assert tile[a, b] == -math.inf
                else:
                    assert tile[a, b] == expected[a, b]
            seen[r0 : r0 + tile.shape[0], c0 : c0 + tile.shape[1]] += 1
    assert bool((seen == 1).all())


def test_folds_directly() -> None:
    tiles = [torch.tensor([[1.0, 3.0], [2.0, 2.0]]), torch.tensor([[3.0, 0.0], [5.0, 2.0]])]
    best, top = BestFold(), TopKFold(3)
    for c0, tile in zip((0, 2), tiles, strict=True):
        best.update(tile, c0)
        top.update(tile, c0)
    assert best.result()[1].tolist() == [1, 2]  # row 0: 3.0 at 1 and at 2 -> the lower
    values, indices = top.result()
    assert values.tolist() == [[3.0, 3.0, 1.0], [5.0, 2.0, 2.0]]
    assert torch.equal(torch.cat(tiles, 1).gather(1, indices), values)
    # Appended without a cut (2 + 1 <= 3 entries): sorted once, stable.
    few = TopKFold(3)
    few.update(torch.tensor([[1.0, 2.0]]), 0)
    few.update(torch.tensor([[2.0]]), 2)
    assert few.result()[0].tolist() == [[2.0, 2.0, 1.0]]
    assert few.result()[1].tolist() == [[1, 2, 0]]
    with pytest.raises(RuntimeError):
        BestFold().result()
    with pytest.raises(RuntimeError):
        TopKFold(1).result()


def test_no_gradient_and_no_grad_mode_leak() -> None:
    x = torch.randn(10, 4, requires_grad=True)
    values, indices = tiled_topk(x, x, 3, block_rows=4, exclude_self=True)
    assert not values.requires_grad and not indices.requires_grad
    assert not tiled_best(x, x, block_rows=3)[0].requires_grad
    blocks = iter_tiled_topk(x, x, 2, block_rows=4)
    next(blocks)
    assert torch.is_grad_enabled()  # the generator does not hold no_grad across a yield
    blocks.close()


def test_empty_queries_and_k_above_n() -> None:
    keys = torch.randn(5, 3)
    values, indices = tiled_topk(torch.empty(0, 3), keys, 9, block_rows=4)
    assert values.shape == indices.shape == (0, 5) and indices.dtype == torch.long
    values, indices = tiled_best(torch.empty(0, 3), keys, block_rows=4)
    assert values.shape == indices.shape == (0,)
    values, indices = tiled_topk(keys, keys, 9, block_rows=2, block_cols=2, exclude_self=True)
    assert values.shape == (5, 5)
    assert torch.equal(indices[:, -1], torch.arange(5))  # the masked self entry comes last
    assert bool(torch.isinf(values[:, -1]).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_rows": 0}, "block_rows"),
        ({"block_rows": True}, "block_rows"),
        ({"block_rows": 2, "block_cols": 0}, "block_cols"),
        ({"block_rows": 2, "k": 0}, "k must"),
        ({"block_rows": 2, "k": 1.5}, "k must"),
        ({"block_rows": 2, "keys": torch.randn(4, 2)}, "same dim"),
        ({"block_rows": 2, "keys": torch.randn(3)}, "2-D"),
        ({"block_rows": 2, "keys": torch.randn(0, 3)}, "empty"),
        ({"block_rows": 2, "keys": torch.randn(5, 3), "exclude_self": True}, "same rows"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    args = {"queries": torch.randn(4, 3), "keys": torch.randn(4, 3), "k": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        tiled_topk(**args)
    if "k" not in kwargs:
        args.pop("k")
        with pytest.raises(ValueError, match=match):
            tiled_best(**args)
