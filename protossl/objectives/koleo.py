"""The Kozachenko-Leonenko (KoLeo) entropy estimator, on embeddings or on prototypes.

KoLeo (Sablayrolles et al., "Spreading vectors for similarity search", 2019;
used on embeddings in DINOv2) rewards every vector for being far from its
nearest neighbour. Applied to the prototypes themselves (KoLeo-proto,
Govindarajan et al., "On Partial Prototype Collapse in the DINO Family of
Self-Supervised Methods") it keeps prototypes from collapsing onto each other.

Large K. The nearest neighbour of every row is found by an exact *blocked*
search: ``block_size x block_size`` tiles of the similarity matrix with a running
max/argmax (the shared :mod:`protossl.core.neighbours`), so the N x N matrix
(16 GiB at K = 65,536) is never stored. The choice is discrete and made without
gradient; the loss then recomputes only the N chosen distances differentiably.
:class:`KoLeoProto` can also reuse, between exact refreshes every ``refresh_every``
steps, the top ``num_candidates`` neighbours found by the last refresh (see its
docstring and docs/koleo_large_k.md for how exact that stays). The differentiable
path and that candidate cache are KoLeo's own and stay here.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from protossl.core.neighbours import BestFold, TopKFold, score_tiles, tiled_best

# Floor on squared distances before the square root. d sqrt(u)/du is infinite at
# u = 0, and for exactly duplicated rows the chain rule then multiplies 0 * inf
# = NaN. Clamping makes the gradient of such a pair exactly zero while keeping
# 1 / sqrt(floor) far from float32 overflow; real distances between distinct
# unit vectors in float32 are never this small, so the value is unaffected.
_MIN_SQUARED_DISTANCE = 1e-24
# F.normalize's floor on row norms.
_NORM_EPS = 1e-12
# Tile edge of the blocked search: a 4096 x 4096 float32 tile is 64 MiB.
DEFAULT_BLOCK_SIZE = 4096
# Rows per chunk when candidate similarities are computed without sparse kernels.
_CANDIDATE_CHUNK = 128


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 (got {value!r})")


def _neighbors_and_candidates(
    x: Tensor, block_size: int, num_candidates: int
) -> tuple[Tensor, Tensor]:
    """Exact nearest other row and the top ``num_candidates`` other rows, from one pass.

    Both are folded from the same ``block_size x block_size`` tiles of
    :func:`protossl.core.neighbours.score_tiles` (one matmul per tile into a reused
    buffer, the diagonal masked): the nearest by :class:`~protossl.core.neighbours.BestFold`
    (ties to the lowest index, as ``argmax`` on the full matrix and as
    :func:`nearest_neighbor_indices`), the candidates by
    :class:`~protossl.core.neighbours.TopKFold`. The nearest is not read off the top-C:
    ``topk`` orders equal scores as it likes, and with more than C tied maxima the lowest
    index need not even be among them. Peak extra memory is one tile plus O(N * C).
    """
    n = x.shape[0]
    neighbors = torch.empty(n, dtype=torch.long, device=x.device)
    candidates = torch.empty(n, num_candidates, dtype=torch.long, device=x.device)
    blocks = score_tiles(x, x, block_rows=block_size, block_cols=block_size, exclude_self=True)
    for r0, tiles in blocks:
        best, top = BestFold(), TopKFold(num_candidates)
        for c0, tile in tiles:
            best.update(tile, c0)
            top.update(tile, c0)
        nearest = best.result()[1]
        neighbors[r0 : r0 + nearest.numel()] = nearest
        # Sorted by index: CSR layout, and argmax among candidates then breaks
        # ties towards the lowest index like the exact search.
        candidates[r0 : r0 + nearest.numel()] = top.result()[1].sort(dim=1).values
    return neighbors, candidates


def nearest_neighbor_indices(x: Tensor, block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    """Index of the nearest other row for each row of ``x`` (rows assumed unit-norm).

    For unit vectors the nearest neighbour in Euclidean distance is the one with
    the largest inner product; a row never picks itself. The search is exact and
    blocked (``block_size x block_size`` tiles, running argmax), so memory stays
    O(block_size^2) whatever the number of rows; ties go to the lowest index. The
    choice is discrete, so it is made without gradient.

    Example:
        >>> x = torch.nn.functional.normalize(torch.randn(100, 8), dim=1)
        >>> nearest_neighbor_indices(x, block_size=32).shape
        torch.Size([100])
    """
    _check_positive_int("block_size", block_size)
    x = x.detach()
    return tiled_best(x, x, block_rows=block_size, block_cols=block_size, exclude_self=True)[1]


def nearest_neighbor_candidates(
    x: Tensor, num_candidates: int, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[Tensor, Tensor]:
    """Exact nearest other row and the ``num_candidates`` most similar other rows.

    Returns ``(neighbors [N], candidates [N, C])`` from one blocked pass;
    ``C = min(num_candidates, N - 1)``, each candidate row sorted by index and
    containing the nearest neighbour. Rows assumed unit-norm; no gradient.
    """
    _check_positive_int("num_candidates", num_candidates)
    _check_positive_int("block_size", block_size)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 rows (got {x.shape[0]})")
    with torch.no_grad():
        return _neighbors_and_candidates(
            x.detach(), block_size, min(num_candidates, x.shape[0] - 1)
        )


def _candidate_similarities(x: Tensor, candidates: Tensor, sparse: bool) -> Tensor:
    """[N, C] inner products ``<x_i, x_candidates[i, c]>`` (no gradient)."""
    n, c = candidates.shape
    if sparse:  # one sampled dense-dense product: about 3 ms at N = 8192, C = 16, d = 256
        crow = torch.arange(0, n * c + 1, c, dtype=candidates.dtype, device=x.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            pattern = torch.sparse_csr_tensor(
                crow,
                candidates.reshape(-1),
                torch.zeros(n * c, dtype=x.dtype, device=x.device),
                size=(n, n),
                check_invariants=False,
            )
        return torch.sparse.sampled_addmm(pattern, x, x.T, beta=0.0).values().view(n, c)
    # Chunks of rows keep the gathered [chunk, C, d] block in cache.
    sims = torch.empty(n, c, dtype=x.dtype, device=x.device)
    for s in range(0, n, _CANDIDATE_CHUNK):
        rows = candidates[s : s + _CANDIDATE_CHUNK]
        gathered = x.index_select(0, rows.reshape(-1)).view(rows.shape[0], c, -1)
        sims[s : s + rows.shape[0]] = (gathered * x[s : s + rows.shape[0], None]).sum(-1)
    return sims


def nearest_among_candidates(x: Tensor, candidates: Tensor) -> Tensor:
    """For each row ``i``, the most similar row among ``candidates[i]`` (exactly).

    O(N C d) work instead of O(N^2 d). ``candidates`` is [N, C] of row indices,
    each row sorted, without ``i`` itself (as returned by
    :func:`nearest_neighbor_candidates`); ties go to the lowest index. On CPU and
    CUDA the C similarities per row come from one sampled sparse-dense product.
    """
    if candidates.dim() != 2 or candidates.shape[0] != x.shape[0]:
        raise ValueError(
            f"candidates must have shape [{x.shape[0]}, C] (got {tuple(candidates.shape)})"
        )
    with torch.no_grad():
        sparse = x.device.type in ("cpu", "cuda")
        sims = _candidate_similarities(x.detach(), candidates, sparse)
        return candidates.gather(1, sims.argmax(dim=1, keepdim=True)).squeeze(1)


class _KoLeoFromNeighbors(torch.autograd.Function):
    """``-(1/N) sum_i log(||y_i - y_nb(i)|| + eps)`` with ``y = F.normalize(x)``.

    Autograd would give the same gradient; the hand-written backward makes the
    fewest passes over [N, d], without autograd's broadcast reductions through
    ``F.normalize`` (which dominate at large N on CPU): about 3-5x faster at
    N = 8,192, d = 256.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, neighbors: Tensor, eps: float) -> Tensor:
        raw_norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        norms = raw_norms.clamp_min(_NORM_EPS)
        y = x / norms  # exactly F.normalize(x, dim=1, eps=1e-12)
        diff = y - y.index_select(0, neighbors)
        squared = torch.linalg.vecdot(diff, diff, dim=1)
        distances = squared.clamp(min=_MIN_SQUARED_DISTANCE).sqrt()
        ctx.save_for_backward(y, raw_norms, norms, diff, squared, distances, neighbors)
        ctx.eps = eps
        return -torch.log(distances + eps).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        y, raw_norms, norms, diff, squared, distances, neighbors = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        n = y.shape[0]
        grad_dist = -grad / (n * (distances + ctx.eps))
        # clamp passes the gradient where squared >= floor; d sqrt(u) = du / (2 sqrt(u)).
        grad_sq = torch.where(squared >= _MIN_SQUARED_DISTANCE, grad_dist * 0.5 / distances, 0.0)
        grad_diff = diff * (2.0 * grad_sq).unsqueeze(1)
        grad_y = grad_diff.index_add(0, neighbors, grad_diff, alpha=-1)
        # y = x / max(||x||, 1e-12): the norm's path is cut where the floor is active.
        radial = torch.linalg.vecdot(grad_y, y, dim=1).unsqueeze(1) * (raw_norms >= _NORM_EPS)
        return torch.addcmul(grad_y, y, radial, value=-1.0).div_(norms), None, None


def koleo_from_neighbors(x: Tensor, neighbors: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo value for given nearest-neighbour indices, differentiable in ``x``.

    ``x`` is [N, d] (normalized here), ``neighbors`` [N] the index of each row's
    nearest other row (from :func:`nearest_neighbor_indices` or
    :func:`nearest_among_candidates`). Only the N chosen pairs enter the graph.
    """
    return _KoLeoFromNeighbors.apply(x, neighbors, float(eps))


def _prepare(x: Tensor, eps: float, block_size: int) -> Tensor:
    if x.dim() != 2:
        raise ValueError(f"x must have shape [N, d] (got {tuple(x.shape)})")
    if x.shape[0] < 2:
        raise ValueError(f"KoLeo needs at least 2 rows (got {x.shape[0]})")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0 (got {eps})")
    _check_positive_int("block_size", block_size)
    # Distances of nearly collapsed vectors are tiny; half precision cannot hold them.
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def koleo_loss(x: Tensor, eps: float = 1e-8, block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    """KoLeo estimator ``-(1/N) sum_i log(min_{j != i} ||x_i - x_j|| + eps)`` on L2-normalized rows.

    From Sablayrolles et al., "Spreading vectors for similarity search" (2019),
    as used in DINOv2. The nearest neighbour is chosen without gradient by an
    exact blocked search (no N x N matrix is stored), then the distance to it is
    recomputed differentiably. The loss and its gradient stay finite when rows
    are exact duplicates.

    Args:
        x: Vectors as rows, shape [N, d] with N >= 2; normalized here.
        eps: Added to each distance inside the log (default 1e-8).
        block_size: Tile edge of the nearest-neighbour search (default 4096; a
            float32 tile takes 4 * block_size^2 bytes). Does not change the result.

    Returns:
        Scalar loss tensor (float32 for half-precision input).

    Example:
        >>> x = torch.randn(32, 8, requires_grad=True)
        >>> loss = koleo_loss(x, eps=1e-8)
        >>> loss.backward()
    """
    x = _prepare(x, eps, block_size)
    with torch.no_grad():
        unit = F.normalize(x.detach(), p=2, dim=1, eps=_NORM_EPS)
    return koleo_from_neighbors(x, nearest_neighbor_indices(unit, block_size), eps)


def koleo_proto_loss(
    prototypes: Tensor, eps: float = 1e-8, block_size: int = DEFAULT_BLOCK_SIZE
) -> Tensor:
    """KoLeo-proto: the KoLeo estimator on the K prototype vectors.

    From Govindarajan et al., "On Partial Prototype Collapse in the DINO Family of
    Self-Supervised Methods": ``L_KP = -(1/K) sum_i log(min_{j != i}
    ||mu_i - mu_j|| + eps)`` with ``mu_i = w_i / ||w_i||``.

    Args:
        prototypes: Prototype layer weight, shape [K, d] with K >= 2 (one row per
            prototype, as in ``nn.Linear(d, K).weight``).
        eps: Added to each distance inside the log (default 1e-8).
        block_size: Tile edge of the exact nearest-neighbour search (default 4096).

    Example:
        >>> prototypes = torch.randn(64, 16, requires_grad=True)
        >>> loss = koleo_proto_loss(prototypes)
        >>> loss.backward()
    """
    if prototypes.dim() != 2:
        raise ValueError(f"prototypes must have shape [K, d] (got {tuple(prototypes.shape)})")
    return koleo_loss(prototypes, eps=eps, block_size=block_size)


def _candidates_problem(candidates: Any) -> str | None:
    """Why a loaded candidate cache is unusable (None when it is fine)."""
    if not isinstance(candidates, Tensor) or candidates.dtype != torch.long:
        return "must be an int64 tensor"
    if candidates.dim() != 2:
        return f"must have shape [K, C] (got {tuple(candidates.shape)})"
    k, c = candidates.shape
    if k == 0:
        return None
    if c < 1 or c > k - 1:
        return f"needs 1 <= C <= K - 1 (got shape {tuple(candidates.shape)})"
    rows = torch.arange(k, device=candidates.device).unsqueeze(1)
    if candidates.min() < 0 or candidates.max() >= k or (candidates == rows).any():
        return "holds indices outside [0, K) or a row's own index"
    if c > 1 and not bool((candidates[:, 1:] > candidates[:, :-1]).all()):
        return "rows must be strictly increasing"
    return None


class KoLeoProto(nn.Module):
    """Weighted KoLeo-proto regularizer, ``weight * L_KP`` on the student prototypes.

    From Govindarajan et al., "On Partial Prototype Collapse in the DINO Family of
    Self-Supervised Methods": spreading the prototypes uniformly on the sphere
    prevents partial prototype collapse. Apply it to the student's prototype
    weights only (the teacher follows by EMA).

    With ``refresh_every = 1`` (the default) every call runs the exact blocked
    search and the module has no state. With ``refresh_every = R > 1`` the module
    keeps two buffers, saved in its ``state_dict`` so that a resumed run continues
    exactly as an uninterrupted one:

    - ``step``: the number of calls made in training mode. Each training-mode
      forward increments it (a documented side effect, like BatchNorm's running
      statistics; nothing outside the module sets it). With gradient
      accumulation it counts forward calls, not optimizer steps.
    - ``candidates`` [K, C]: for each prototype, the C most similar other
      prototypes at the last refresh.

    A training-mode call with ``step % R == 0`` (or with no usable cache: first
    call, another K, another device) runs the exact search and refreshes the
    candidates, so its value equals the exact one; the other calls take the
    nearest among each prototype's C candidates, exactly, in O(K C d). That is
    exact as long as no prototype's true nearest neighbour left its candidate
    list since the refresh (measured in docs/koleo_large_k.md). Eval-mode calls
    always run the exact search and change nothing.

    Args:
        weight: Multiplier lambda of the loss, >= 0 (default 0.1).
        eps: Added to each distance inside the log (default 1e-8).
        block_size: Tile edge of the exact search (default 4096: a 64 MiB float32
            tile); does not change the result.
        refresh_every: Exact search every this many training calls (default 1:
            always exact).
        num_candidates: Candidates kept per prototype when ``refresh_every > 1``
            (default 16).

    Example:
        >>> regularizer = KoLeoProto(weight=0.1)
        >>> prototypes = nn.Linear(16, 64, bias=False).weight
        >>> loss = regularizer(prototypes)
    """

    step: Tensor | None
    candidates: Tensor | None

    def __init__(
        self,
        weight: float = 0.1,
        eps: float = 1e-8,
        block_size: int = DEFAULT_BLOCK_SIZE,
        refresh_every: int = 1,
        num_candidates: int = 16,
    ) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0 (got {weight})")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0 (got {eps})")
        _check_positive_int("block_size", block_size)
        _check_positive_int("refresh_every", refresh_every)
        _check_positive_int("num_candidates", num_candidates)
        self.weight = float(weight)
        self.eps = float(eps)
        self.block_size = block_size
        self.refresh_every = refresh_every
        self.num_candidates = num_candidates
        if refresh_every > 1:
            self.register_buffer("step", torch.zeros((), dtype=torch.long))
            self.register_buffer("candidates", torch.empty(0, num_candidates, dtype=torch.long))
        else:  # exact every call: no state, so the state_dict is unchanged
            self.register_buffer("step", None)
            self.register_buffer("candidates", None)

    def forward(self, prototypes: Tensor) -> Tensor:
        """``weight * L_KP`` for prototypes of shape [K, d]; see the class docstring."""
        if prototypes.dim() != 2:
            raise ValueError(f"prototypes must have shape [K, d] (got {tuple(prototypes.shape)})")
        x = _prepare(prototypes, self.eps, self.block_size)
        with torch.no_grad():
            unit = F.normalize(x.detach(), p=2, dim=1, eps=_NORM_EPS)
            neighbors = self._neighbors(unit)
        return self.weight * koleo_from_neighbors(x, neighbors, self.eps)

    def _neighbors(self, unit: Tensor) -> Tensor:
        if self.step is None or self.candidates is None or not self.training:
            return nearest_neighbor_indices(unit, self.block_size)
        k = unit.shape[0]
        usable = (
            self.candidates.shape == (k, min(self.num_candidates, k - 1))
            and self.candidates.device == unit.device
        )
        if not usable or int(self.step) % self.refresh_every == 0:
            neighbors, self.candidates = nearest_neighbor_candidates(
                unit, self.num_candidates, self.block_size
            )
        else:
            neighbors = nearest_among_candidates(unit, self.candidates)
        self.step.add_(1)
        return neighbors

    @torch.no_grad()
    def reset_rows(self, index: Tensor) -> None:
        """Invalidate the candidate cache: prototypes ``index`` were re-seeded, so their
        neighbours (and their place in other rows' candidate lists) are stale.

        The next training call then runs the exact search and refreshes the cache;
        ``step`` keeps counting. A no-op when the module keeps no cache.
        """
        if self.candidates is not None:
            self.candidates = self.candidates.new_empty(0, self.num_candidates)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        keys = (prefix + "step", prefix + "candidates")
        if self.step is not None and self.candidates is not None:
            saved = state_dict.get(keys[1])
            if saved is not None:
                problem = _candidates_problem(saved)
                if problem is not None:
                    error_msgs.append(f"{keys[1]} {problem}")
                    return
                # The cache's shape follows K: take the saved one before copying.
                self.candidates = torch.empty_like(saved, device=self.candidates.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # The cache is optional state, so a run may switch refresh_every across a
        # resume: a checkpoint without it starts a fresh cache, and a cache in a
        # checkpoint is ignored by an exact-every-step module.
        if self.step is not None and self.candidates is not None:
            if not any(key in state_dict for key in keys):
                for key in keys:
                    if key in missing_keys:
                        missing_keys.remove(key)
                self.step.zero_()
                self.candidates = self.candidates.new_empty(0, self.num_candidates)
        else:
            for key in keys:
                if key in unexpected_keys:
                    unexpected_keys.remove(key)

    def extra_repr(self) -> str:
        text = f"weight={self.weight}, eps={self.eps}, block_size={self.block_size}"
        if self.refresh_every > 1:
            text += f", refresh_every={self.refresh_every}, num_candidates={self.num_candidates}"
        return text
