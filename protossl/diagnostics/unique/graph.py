"""Union-find and minimum spanning forests over prototype indices (numpy, vectorized).

Single linkage needs only these two: components at one eps come from union-find over
the links shorter than eps; components at every eps at once come from a minimum
spanning forest (Kruskal stopped at eps: M(eps) = K - #{forest edges shorter than eps}).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from protossl.diagnostics.unique import constants


class DisjointSet:
    """Union-find over 0..n-1 (numpy): path compression and union by rank, vectorized.

    A batch of edges is first reduced to edges between distinct current roots; the
    components of that small root graph are then each folded into their highest-rank
    root in one step, so Python never loops over edges.
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.rank = np.zeros(n, dtype=np.int64)

    def find(self, nodes: np.ndarray) -> np.ndarray:
        """Roots of ``nodes``; every queried node is re-pointed at its root."""
        roots = self.parent[nodes]
        while True:
            up = self.parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        self.parent[nodes] = roots
        return roots

    def roots(self) -> np.ndarray:
        """Root of every node 0..n-1."""
        return self.find(np.arange(self.parent.size))

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of ``a[e]`` and ``b[e]`` for every edge e."""
        if a.size == 0:
            return
        ra, rb = self.find(a), self.find(b)
        cross = ra != rb
        if not cross.any():
            return
        ra, rb = ra[cross], rb[cross]
        nodes, inverse = np.unique(np.concatenate([ra, rb]), return_inverse=True)
        m = ra.size
        graph = coo_matrix(
            (np.ones(m, dtype=np.int32), (inverse[:m], inverse[m:])), shape=(nodes.size,) * 2
        )
        _, comp = connected_components(graph, directed=False)
        self._merge_groups(nodes, comp)

    def _merge_groups(self, roots: np.ndarray, comp: np.ndarray) -> None:
        """Point each group of roots at its highest-rank member (ties: smallest index)."""
        ranks = self.rank[roots]
        order = np.lexsort((roots, -ranks, comp))
        comp_sorted = comp[order]
        lead = np.ones(order.size, dtype=bool)
        lead[1:] = comp_sorted[1:] != comp_sorted[:-1]
        leader = np.empty(int(comp.max()) + 1, dtype=np.int64)
        leader[comp_sorted[lead]] = roots[order][lead]
        top = self.rank[leader]
        # Union by rank for a k-way merge: the height grows only if the top rank is tied.
        at_top = (ranks == top[comp]).astype(np.float64)
        ties = np.bincount(comp, weights=at_top, minlength=leader.size)
        self.parent[roots] = leader[comp]
        self.rank[leader] += ties > 1


class SpanningForest:
    """Minimum spanning forest of the edges added so far, buffered and compacted.

    Compaction keeps at most K - 1 edges: by the cycle property the MSF of (old
    forest + new edges) is the MSF of all edges seen.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.buffered = 0

    def add(self, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        """Buffer edges (i, j) of length d; compact once the buffer grows too large."""
        if d.size == 0:
            return
        self.parts.append((i, j, d))
        self.buffered += d.size
        if self.buffered > max(4 * self.k, constants.COMPACT_MIN_EDGES):
            self._compact()

    def sorted_lengths(self) -> np.ndarray:
        """Lengths of the forest's edges, ascending."""
        self._compact()
        return np.sort(self.parts[0][2]) if self.parts else np.zeros(0)

    def _compact(self) -> None:
        """Replace the buffered edges by their minimum spanning forest."""
        if not self.parts:
            return
        i, j, d = (np.concatenate(x) for x in zip(*self.parts, strict=True))
        self.parts = [minimum_spanning_forest(self.k, i, j, d)]
        self.buffered = self.parts[0][2].size


def minimum_spanning_forest(
    k: int, i: np.ndarray, j: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges of a minimum spanning forest (each pair i < j must appear at most once)."""
    order = np.argsort(d, kind="stable")
    i, j, d = i[order], j[order], d[order]
    # scipy drops zero weights (exact duplicates have d = 0) and would round tiny ones;
    # the rank 1..E keeps the order exactly and lets us read back which edges were kept.
    rank = np.arange(1, d.size + 1, dtype=np.float64)
    tree = minimum_spanning_tree(coo_matrix((rank, (i, j)), shape=(k, k)).tocsr())
    kept = tree.tocoo().data.astype(np.int64) - 1
    return i[kept], j[kept], d[kept]
