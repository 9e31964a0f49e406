"""Seeded 2-D maps of prototypes and embeddings (t-SNE, van der Maaten & Hinton 2008).

The seed paper (Govindarajan et al., "On Partial Prototype Collapse in
the DINO Family of Self-Supervised Methods") shows collapse as t-SNE plots where
duplicate prototypes pile up and KoLeo-proto's spread out. Inputs are L2-normalized
first, so Euclidean distances rank pairs like cosine similarity does (the geometry
the prototypes act in). Everything is seeded: the same input gives the same map.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 8))
    >>> tsne_2d(x, seed=0).shape
    (40, 2)
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_PERPLEXITY", "subsample_indices", "tsne_2d", "unit_rows"]

MAX_PERPLEXITY = 30.0  # scikit-learn's default; smaller sets get (n - 1) / 3


def subsample_indices(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """All of ``range(n)`` when ``n <= limit``, else ``limit`` distinct indices, sorted.

    The draw depends only on (n, limit, seed), so a report is reproducible.

    Example:
        >>> subsample_indices(5, 10).tolist()
        [0, 1, 2, 3, 4]
        >>> len(subsample_indices(5000, 2000, seed=1))
        2000
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1 (got {limit})")
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(n, size=limit, replace=False)
    return np.sort(chosen).astype(np.int64)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float64.

    Example:
        >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
        [[0.6, 0.8], [0.0, 0.0]]
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def tsne_2d(x: np.ndarray, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """A 2-D t-SNE map of the rows of ``x`` (seeded; PCA initialization).

    Perplexity is ``min(30, (n - 1) / 3)`` so that tiny sets (a K = 16 head) work;
    with fewer than 4 rows the map is the first two principal coordinates.

    Args:
        x: [n, d] rows (prototypes or features).
        seed: random state of the optimizer.
        normalize: L2-normalize the rows first (cosine geometry).

    Returns:
        float64 array [n, 2].
    """
    data = unit_rows(x) if normalize else np.asarray(x, dtype=np.float64)
    n = data.shape[0]
    if n < 4:
        return _principal_coordinates(data)
    from sklearn.manifold import TSNE

    perplexity = min(MAX_PERPLEXITY, (n - 1) / 3.0)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
    )
    return np.asarray(tsne.fit_transform(data.astype(np.float32)), dtype=np.float64)


def _principal_coordinates(data: np.ndarray) -> np.ndarray:
    out = np.zeros((data.shape[0], 2))
    if data.shape[0] < 2:
        return out
    centred = data - data.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(2, s.size)
    out[:, :k] = u[:, :k] * s[:k]
    return out
