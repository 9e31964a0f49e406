"""Exact tiled nearest-neighbour and top-k search over the rows of two matrices.

Scores between ``queries`` [M, d] and ``keys`` [N, d] (inner products unless ``score``
says otherwise) are computed ``block_rows x block_cols`` tiles at a time, and each row
keeps only a running best (or best k) across its tiles, so the M x N matrix is never
stored: peak extra memory is one tile plus O(M k). At M = N = 65,536 the full float32
matrix would be 16 GiB; a 4096 x 4096 tile is 64 MiB.

Users: the KoLeo regularizer (``protossl.objectives.koleo``: nearest other prototype and
its candidate cache) and the weighted kNN classifier (``protossl.evaluation.knn``). The
exact diagnostics (``protossl.diagnostics.unique``) keep their own passes: they visit
each pair once for several accumulators and keep every key within a rounding slack, not
a fixed k (see ``brute_force._NearestNeighbors`` and ``nearest._NearestSearch``).

Tie order, which the callers' results depend on:

- :func:`tiled_best` (and :class:`BestFold`) uses ``torch.max`` / ``torch.min`` per tile,
  which return the first extremal index, and a later tile replaces the running best only
  when strictly better: ties go to the lowest key index, as ``argmax`` over the full
  matrix.
- :func:`tiled_topk` (and :class:`TopKFold`) uses ``torch.topk``, whose order among equal
  scores is the implementation's. With ``block_cols=None`` every row block is one tile
  as wide as ``keys``, so the result is exactly ``torch.topk`` of those rows of the full
  matrix, tie order included. Narrower column tiles return the same values but, among
  equal scores, possibly other indices.

The selection is discrete and runs without gradient; a caller that needs gradients
recomputes the chosen scores differentiably (KoLeo does).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from typing import SupportsIndex

import torch
from torch import Tensor

__all__ = [
    "BestFold",
    "Score",
    "TopKFold",
    "iter_tiled_topk",
    "score_tiles",
    "tiled_best",
    "tiled_topk",
]

# score(query_rows [r, d], key_rows [c, d]) -> [r, c] scores (a fresh, writable tensor).
Score = Callable[[Tensor, Tensor], Tensor]


def _check_positive_int(name: str, value: object) -> None:
    # Any integer type (a NumPy integer too, as range() takes), but not a float or a bool.
    if isinstance(value, bool) or not isinstance(value, SupportsIndex) or operator.index(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1 (got {value!r})")


def _check_inputs(
    queries: Tensor, keys: Tensor, block_rows: int, block_cols: int | None, exclude_self: bool
) -> None:
    if queries.dim() != 2 or keys.dim() != 2:
        raise ValueError(
            "queries and keys must be 2-D [rows, dim] "
            f"(got {tuple(queries.shape)} and {tuple(keys.shape)})"
        )
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(
            f"queries and keys must have the same dim (got {queries.shape[1]} and {keys.shape[1]})"
        )
    if queries.shape[0] and not keys.shape[0]:
        raise ValueError("keys is empty: there is nothing to search")
    if exclude_self and queries.shape[0] != keys.shape[0]:
        raise ValueError(
            "exclude_self needs queries and keys to be the same rows "
            f"(got {queries.shape[0]} and {keys.shape[0]} rows)"
        )
    _check_positive_int("block_rows", block_rows)
    if block_cols is not None:
        _check_positive_int("block_cols", block_cols)


def score_tiles(
    queries: Tensor,
    keys: Tensor,
    *,
    block_rows: int,
    block_cols: int | None = None,
    exclude_self: bool = False,
    largest: bool = True,
    score: Score | None = None,
) -> Iterator[tuple[int, Iterator[tuple[int, Tensor]]]]:
    """Row blocks ``(r0, tiles)``; ``tiles`` yields ``(c0, tile)`` over all keys.

    ``tile`` is ``score(queries[r0:r1], keys[c0:c1])``, or without ``score`` the inner
    products written by ``torch.mm(out=...)`` into one buffer allocated once and reused
    (a fresh tile per step would be freed and page-faulted back each time, which on CPU
    costs as much as the product). So a tile is valid only until the next one: reduce
    it before advancing, and consume each row block's tiles before the next row block.
    With ``exclude_self`` (queries and keys the same rows), the entries ``i == j`` hold
    the worst score (``-inf`` if ``largest`` else ``+inf``). No argument checks (the
    functions below make them); call it under ``torch.no_grad()``, as ``mm(out=...)``
    does not support autograd.

    Example:
        >>> x = torch.arange(6.0).view(3, 2)
        >>> for r0, tiles in score_tiles(x, x, block_rows=2, block_cols=2, exclude_self=True):
        ...     print(r0, [(c0, tile.tolist()) for c0, tile in tiles])
        0 [(0, [[-inf, 3.0], [3.0, -inf]]), (2, [[5.0], [23.0]])]
        2 [(0, [[5.0, 23.0]]), (2, [[-inf]])]
    """
    m, n = queries.shape[0], keys.shape[0]
    cols = n if block_cols is None else block_cols
    worst = -math.inf if largest else math.inf
    buffer = None
    if score is None:
        size = min(block_rows, m) * min(cols, n)
        buffer = torch.empty(size, dtype=queries.dtype, device=queries.device)

    def tiles(r0: int, r1: int) -> Iterator[tuple[int, Tensor]]:
        rows = queries[r0:r1]
        for c0 in range(0, n, cols):
            c1 = min(c0 + cols, n)
            if buffer is None:
                assert score is not None
                tile = score(rows, keys[c0:c1])
            else:
                view = buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                tile = torch.mm(rows, keys[c0:c1].T, out=view)
            if exclude_self and c0 < r1 and r0 < c1:
                # Query r0 + a is key c0 + b where b - a = r0 - c0.
                tile.diagonal(offset=r0 - c0).fill_(worst)
            yield c0, tile

    for r0 in range(0, m, block_rows):
        yield r0, tiles(r0, min(r0 + block_rows, m))


class BestFold:
    """Running best score and its index per row, folded in tile by tile (ties: lowest).

    ``torch.max`` / ``torch.min`` give the first extremal index within a tile, and a later
    tile wins only when strictly better, so a tie goes to the lowest key index. Tiles
    must come in increasing ``c0``.
    """

    def __init__(self, largest: bool = True) -> None:
        self.largest = largest
        self.values: Tensor | None = None  # [rows]
        self.indices: Tensor | None = None  # [rows], int64

    def update(self, tile: Tensor, c0: int) -> None:
        """Fold one tile whose column 0 is key ``c0``."""
        val, idx = tile.max(dim=1) if self.largest else tile.min(dim=1)
        idx += c0
        if self.values is None or self.indices is None:
            self.values, self.indices = val, idx
            return
        better = val > self.values if self.largest else val < self.values
        self.values = torch.where(better, val, self.values)
        self.indices = torch.where(better, idx, self.indices)

    def result(self) -> tuple[Tensor, Tensor]:
        """``(values [rows], indices [rows])``."""
        if self.values is None or self.indices is None:
            raise RuntimeError("no tile was folded in")
        return self.values, self.indices


class TopKFold:
    """Running best ``k`` scores and their indices per row, folded in tile by tile.

    Each tile's own top-k is appended to the running one, which is cut back to k by
    another ``topk`` once it holds more; so at most ``2 k`` entries per row are kept.
    """

    def __init__(self, k: int, largest: bool = True) -> None:
        self.k, self.largest = k, largest
        self.values: Tensor | None = None  # [rows, <= k]
        self.indices: Tensor | None = None
        self._sorted = True

    def update(self, tile: Tensor, c0: int) -> None:
        """Fold one tile whose column 0 is key ``c0``."""
        tv, ti = tile.topk(min(self.k, tile.shape[1]), dim=1, largest=self.largest, sorted=True)
        ti += c0
        if self.values is not None and self.indices is not None:
            tv, ti = torch.cat([self.values, tv], dim=1), torch.cat([self.indices, ti], dim=1)
            self._sorted = tv.shape[1] > self.k
            if self._sorted:
                tv, keep = tv.topk(self.k, dim=1, largest=self.largest, sorted=True)
                ti = ti.gather(1, keep)
        self.values, self.indices = tv, ti

    def result(self) -> tuple[Tensor, Tensor]:
        """``(values, indices)``, each [rows, min(k, keys seen)], best first."""
        if self.values is None or self.indices is None:
            raise RuntimeError("no tile was folded in")
        if not self._sorted:  # appended tiles never cut back: order them once
            # Stable, so equal scores stay in tile order (lower key blocks first).
            self.values, order = self.values.sort(dim=1, descending=self.largest, stable=True)
            self.indices = self.indices.gather(1, order)
            self._sorted = True
        return self.values, self.indices


def iter_tiled_topk(
    queries: Tensor,
    keys: Tensor,
    k: int,
    *,
    block_rows: int,
    block_cols: int | None = None,
    exclude_self: bool = False,
    largest: bool = True,
    score: Score | None = None,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """:func:`tiled_topk` one row block at a time: ``(r0, values, indices)``.

    For callers that reduce each block at once (kNN votes), so that not even the
    [M, k] result is stored.
    """
    _check_inputs(queries, keys, block_rows, block_cols, exclude_self)
    _check_positive_int("k", k)
    k = min(k, keys.shape[0])
    for r0, tiles in score_tiles(
        queries,
        keys,
        block_rows=block_rows,
        block_cols=block_cols,
        exclude_self=exclude_self,
        largest=largest,
        score=score,
    ):
        # no_grad around the work only: held across a yield, it would leak to the caller.
        with torch.no_grad():
            fold = TopKFold(k, largest)
            for c0, tile in tiles:
                fold.update(tile, c0)
            values, indices = fold.result()
        yield r0, values, indices


def tiled_topk(
    queries: Tensor,
    keys: Tensor,
    k: int,
    *,
    block_rows: int,
    block_cols: int | None = None,
    exclude_self: bool = False,
    largest: bool = True,
    score: Score | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` keys of every query by score, in tiles (bounded memory).

    Args:
        queries: [M, d].
        keys: [N, d], same dtype and device (N >= 1 unless M = 0).
        k: Keys per query, reduced to N if larger.
        block_rows: Queries per tile.
        block_cols: Keys per tile; None (default): all N, so each row block is one
            ``torch.topk`` and the tie order is exactly the untiled one.
        exclude_self: Queries and keys are the same rows: row i never scores against
            itself (its self entry gets the worst score, so it comes last; ask for
            k <= N - 1 never to see it).
        largest: Highest scores first (similarities); False for distances.
        score: ``score(query_rows, key_rows) -> [r, c]``; default inner products, into
            a reused buffer.

    Returns:
        ``(values, indices)``, both [M, min(k, N)], best first, without gradient.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> values, indices = tiled_topk(x, x, 2, block_rows=2, exclude_self=True)
        >>> indices.tolist()
        [[1, 2], [0, 2], [1, 0]]
    """
    blocks = list(
        iter_tiled_topk(
            queries,
            keys,
            k,
            block_rows=block_rows,
            block_cols=block_cols,
            exclude_self=exclude_self,
            largest=largest,
            score=score,
        )
    )
    if not blocks:  # no queries
        width = min(k, keys.shape[0])
        empty = torch.empty(0, width, dtype=queries.dtype, device=queries.device)
        return empty, empty.long()
    return torch.cat([b[1] for b in blocks]), torch.cat([b[2] for b in blocks])


def tiled_best(
    queries: Tensor,
    keys: Tensor,
    *,
    block_rows: int,
    block_cols: int | None = None,
    exclude_self: bool = False,
    largest: bool = True,
    score: Score | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact best key of every query (ties to the lowest index), in tiles.

    The arguments are :func:`tiled_topk`'s. Unlike ``tiled_topk(..., 1)`` the tie
    order is specified (``argmax`` over the full matrix), whatever the tiles.

    Returns:
        ``(values [M], indices [M])``, without gradient.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> tiled_best(x, x, block_rows=2, block_cols=3, exclude_self=True)[1].tolist()
        [1, 0, 0, 0]
    """
    _check_inputs(queries, keys, block_rows, block_cols, exclude_self)
    values: list[Tensor] = []
    indices: list[Tensor] = []
    with torch.no_grad():
        for _, tiles in score_tiles(
            queries,
            keys,
            block_rows=block_rows,
            block_cols=block_cols,
            exclude_self=exclude_self,
            largest=largest,
            score=score,
        ):
            fold = BestFold(largest)
            for c0, tile in tiles:
                fold.update(tile, c0)
            val, idx = fold.result()
            values.append(val)
            indices.append(idx)
    if not values:  # no queries
        empty = torch.empty(0, dtype=queries.dtype, device=queries.device)
        return empty, empty.long()
    return torch.cat(values), torch.cat(indices)
