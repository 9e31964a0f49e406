"""Tests of protossl.objectives against independent references written from the formulas.

The references use plain Python floats and explicit loops (crop pairs, batch
items, prototypes), so they share no code with the vectorized implementations.
KoLeo's reference is tests/reference.py's (the full similarity matrix, argmax and
autograd through the chosen pairs), so gradients are compared too.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from reference import reference_koleo, reference_nearest_neighbours
from torch import nn

import protossl.objectives.targets as targets_module
from protossl.core.errors import UserError
from protossl.objectives import (
    PROTOTYPE_REGULARIZERS,
    TARGET_BUILDERS,
    Centering,
    DINOCrossEntropy,
    KoLeoProto,
    TargetBuilder,
    build_prototype_regularizer,
    build_target_builder,
    koleo_loss,
    koleo_proto_loss,
    multicrop_cross_entropy,
    register_prototype_regularizer,
    register_target_builder,
)

# --------------------------------------------------------------------------- references


def ref_log_softmax(row: list[float], temp: float) -> list[float]:
    scaled = [v / temp for v in row]
    top = max(scaled)
    lse = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - lse for v in scaled]


def ref_softmax(row: list[float], temp: float) -> list[float]:
    return [math.exp(v) for v in ref_log_softmax(row, temp)]


def ref_multicrop_ce(student: torch.Tensor, teacher: torch.Tensor, student_temp: float) -> float:
    s_logits, t_probs = student.tolist(), teacher.tolist()
    num_s, num_t, batch = len(s_logits), len(t_probs), len(s_logits[0])
    total, pairs = 0.0, 0
    for t in range(num_t):
        for s in range(num_s):
            if s == t:
                continue
            pair = 0.0
            for b in range(batch):
                log_p = ref_log_softmax(s_logits[s][b], student_temp)
                pair += sum(-q * lp for q, lp in zip(t_probs[t][b], log_p, strict=True))
            total += pair / batch
            pairs += 1
    return total / pairs


def random_probs(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape, generator=gen, dtype=torch.float64) * 3, dim=-1)


# --------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("num_local", [0, 1, 4])
@pytest.mark.parametrize("student_temp", [0.1, 0.2])
@pytest.mark.parametrize("k", [1, 5, 32])
def test_multicrop_cross_entropy_matches_reference(batch, num_local, student_temp, k):
    gen = torch.Generator().manual_seed(batch * 100 + num_local * 10 + k)
    student = torch.randn(2 + num_local, batch, k, generator=gen, dtype=torch.float64)
    teacher = random_probs(gen, 2, batch, k)
    got = multicrop_cross_entropy(student, teacher, student_temp=student_temp)
    assert got.shape == ()
    assert got.item() == pytest.approx(ref_multicrop_ce(student, teacher, student_temp), rel=1e-10)
    module = DINOCrossEntropy(student_temp=student_temp)
    assert module(student, teacher).item() == pytest.approx(got.item(), rel=1e-12)


@pytest.mark.parametrize("num_teacher,num_student", [(1, 3), (2, 2), (3, 5)])
def test_cross_entropy_other_teacher_counts(num_teacher, num_student):
    gen = torch.Generator().manual_seed(7)
    student = torch.randn(num_student, 4, 6, generator=gen, dtype=torch.float64)
    teacher = random_probs(gen, num_teacher, 4, 6)
    got = multicrop_cross_entropy(student, teacher, student_temp=0.1)
    assert got.item() == pytest.approx(ref_multicrop_ce(student, teacher, 0.1), rel=1e-10)


def test_cross_entropy_uniform_student_is_log_k():
    k = 64
    teacher = torch.softmax(torch.randn(2, 4, k), dim=-1)
    loss = multicrop_cross_entropy(torch.zeros(6, 4, k), teacher)
    assert loss.item() == pytest.approx(math.log(k), rel=1e-6)


def test_cross_entropy_gradient_flows_to_student_only():
    student = torch.randn(4, 3, 8, requires_grad=True)
    teacher = torch.softmax(torch.randn(2, 3, 8), dim=-1)
    multicrop_cross_entropy(student, teacher).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_cross_entropy_half_precision_is_computed_in_float32():
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(4, 3, 8, generator=gen)
    teacher = torch.softmax(torch.randn(2, 3, 8, generator=gen), dim=-1)
    full = multicrop_cross_entropy(student, teacher)
    half = multicrop_cross_entropy(student.bfloat16(), teacher.bfloat16())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=2e-2)


@pytest.mark.parametrize(
    "student_shape,teacher_shape",
    [
        ((4, 3, 8), (5, 3, 8)),  # more teacher than student crops
        ((4, 3, 8), (2, 2, 8)),  # batch mismatch
        ((4, 3, 8), (2, 3, 7)),  # K mismatch
        ((3, 8), (2, 3, 8)),  # wrong rank
        ((1, 3, 8), (1, 3, 8)),  # no pair of different views
        ((4, 3, 8), (0, 3, 8)),  # no teacher crop
    ],
)
def test_cross_entropy_rejects_bad_shapes(student_shape, teacher_shape):
    with pytest.raises(ValueError):
        multicrop_cross_entropy(torch.randn(*student_shape), torch.rand(*teacher_shape))


@pytest.mark.parametrize("temp", [0.0, -0.1, float("nan")])
def test_cross_entropy_rejects_bad_temperature(temp):
    with pytest.raises(ValueError):
        DINOCrossEntropy(student_temp=temp)
    with pytest.raises(ValueError):
        multicrop_cross_entropy(torch.randn(3, 2, 4), torch.rand(2, 2, 4), student_temp=temp)


# --------------------------------------------------------------------------- centering


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("teacher_temp", [0.04, 0.07])
@pytest.mark.parametrize("k", [1, 4, 16])
def test_centering_targets_match_reference(batch, teacher_temp, k):
    gen = torch.Generator().manual_seed(batch + k)
    centering = Centering(num_prototypes=k).double()
    centering.center.copy_(torch.randn(1, k, generator=gen, dtype=torch.float64))
    logits = torch.randn(2, batch, k, generator=gen, dtype=torch.float64)
    probs = centering.targets(logits, teacher_temp=teacher_temp)
    assert probs.shape == logits.shape
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, batch, dtype=torch.float64))
    center = centering.center[0].tolist()
    for t in range(2):
        for b in range(batch):
            row = [v - c for v, c in zip(logits[t, b].tolist(), center, strict=True)]
            expected = ref_softmax(row, teacher_temp)
            for kk in range(k):
                assert probs[t, b, kk].item() == pytest.approx(expected[kk], rel=1e-9, abs=1e-300)


def test_centering_targets_have_no_side_effects_and_no_grad():
    centering = Centering(num_prototypes=8)
    logits = torch.randn(2, 4, 8, requires_grad=True)
    before = centering.center.clone()
    probs = centering.targets(logits, teacher_temp=0.04)
    assert not probs.requires_grad
    torch.testing.assert_close(centering.center, before)
    torch.testing.assert_close(centering(logits, 0.04), probs)  # calling == targets


def test_centering_accepts_flat_logits():
    centering = Centering(num_prototypes=5)
    logits = torch.randn(6, 5)
    probs = centering.targets(logits, teacher_temp=0.07)
    assert probs.shape == (6, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    centering.update(logits)
    torch.testing.assert_close(centering.center, 0.1 * logits.mean(0, keepdim=True))


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_centering_ema_matches_hand_computation(momentum):
    gen = torch.Generator().manual_seed(11)
    k, steps = 6, 5
    centering = Centering(num_prototypes=k, momentum=momentum).double()
    expected = [0.0] * k
    for _ in range(steps):
        logits = torch.randn(2, 3, k, generator=gen, dtype=torch.float64)
        rows = logits.reshape(-1, k).tolist()
        for kk in range(k):
            batch_mean = sum(row[kk] for row in rows) / len(rows)
            expected[kk] = momentum * expected[kk] + (1 - momentum) * batch_mean
        centering.update(logits)
    assert centering.center.shape == (1, k)
    for kk in range(k):
        assert centering.center[0, kk].item() == pytest.approx(expected[kk], rel=1e-12)


def test_centering_update_goes_through_all_reduce_mean(monkeypatch):
    calls = []

    def fake_all_reduce_mean(tensor):
        calls.append(tensor.clone())
        return tensor + 1.0  # as if the other processes had larger logits

    monkeypatch.setattr(targets_module, "all_reduce_mean", fake_all_reduce_mean)
    centering = Centering(num_prototypes=3, momentum=0.5)
    logits = torch.zeros(2, 4, 3)
    centering.update(logits)
    assert len(calls) == 1
    torch.testing.assert_close(centering.center, torch.full((1, 3), 0.5))


def test_centering_state_dict_round_trip(tmp_path):
    centering = Centering(num_prototypes=7)
    for _ in range(3):
        centering.update(torch.randn(2, 5, 7))
    path = tmp_path / "centering.pt"
    torch.save(centering.state_dict(), path)
    restored = Centering(num_prototypes=7)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert "center" in centering.state_dict()
    torch.testing.assert_close(restored.center, centering.center)
    assert restored.center.abs().sum() > 0


@pytest.mark.parametrize("kwargs", [{"momentum": 1.0}, {"momentum": -0.1}, {"num_prototypes": 0}])
def test_centering_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Centering(**{"num_prototypes": 4, **kwargs})


def test_centering_rejects_bad_temperature_and_shape():
    centering = Centering(num_prototypes=4)
    with pytest.raises(ValueError):
        centering.targets(torch.randn(2, 3, 4), teacher_temp=0.0)
    with pytest.raises(ValueError):
        centering.targets(torch.randn(2, 3, 5), teacher_temp=0.04)
    with pytest.raises(ValueError):
        centering.update(torch.randn(2, 3, 5))


def test_target_builder_is_abstract():
    with pytest.raises(TypeError):
        TargetBuilder()


# --------------------------------------------------------------------------- KoLeo


@pytest.mark.parametrize("n", [2, 3, 7, 16])
@pytest.mark.parametrize("d", [2, 3, 8])
@pytest.mark.parametrize("eps", [1e-8, 0.1])
def test_koleo_matches_reference(n, d, eps):
    gen = torch.Generator().manual_seed(n * 10 + d)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3
    expected = reference_koleo(x, eps).item()
    assert koleo_loss(x, eps=eps).item() == pytest.approx(expected, rel=1e-10)
    assert koleo_proto_loss(x, eps=eps).item() == pytest.approx(expected, rel=1e-10)


def test_koleo_proto_module_applies_weight():
    prototypes = torch.randn(10, 4, dtype=torch.float64)
    module = KoLeoProto(weight=0.3)
    assert module.weight == 0.3
    expected = 0.3 * reference_koleo(prototypes, 1e-8).item()
    assert module(prototypes).item() == pytest.approx(expected, rel=1e-10)


def test_koleo_gradcheck():
    # Well-separated rows: the nearest-neighbour choice is stable under the
    # finite-difference perturbations, so the loss is smooth there.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(koleo_loss, (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda p: KoLeoProto(weight=0.5)(p), (x,), eps=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_koleo_duplicated_prototypes_finite(dtype):
    base = torch.randn(4, 8, dtype=dtype)
    prototypes = torch.cat([base, base[:2], base[:1]]).requires_grad_(True)  # exact duplicates
    loss = koleo_proto_loss(prototypes)
    loss.backward()
    assert torch.isfinite(loss)
    assert prototypes.grad is not None and torch.isfinite(prototypes.grad).all()
    # All identical rows: every distance is zero.
    same = torch.ones(5, 3, dtype=dtype, requires_grad=True)
    loss = KoLeoProto(weight=0.1)(same)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()


def test_koleo_proto_pushes_close_prototypes_apart():
    gen = torch.Generator().manual_seed(5)
    prototypes = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    prototypes[1] = prototypes[0] + 1e-2 * torch.randn(6, generator=gen, dtype=torch.float64)

    def direction_distance(p: torch.Tensor) -> float:
        mu = nn.functional.normalize(p, dim=1)
        return (mu[0] - mu[1]).norm().item()

    before = direction_distance(prototypes)
    weights = prototypes.clone().requires_grad_(True)
    koleo_proto_loss(weights).backward()
    with torch.no_grad():
        stepped = weights - 1e-4 * weights.grad
    assert direction_distance(stepped) > before


def test_koleo_half_precision_input():
    x = torch.randn(16, 8)
    got = koleo_loss(x.bfloat16())
    assert got.dtype == torch.float32 and torch.isfinite(got)


def test_koleo_rejects_bad_arguments():
    with pytest.raises(ValueError):
        koleo_loss(torch.randn(1, 4))
    with pytest.raises(ValueError):
        koleo_loss(torch.randn(4))
    with pytest.raises(ValueError):
        koleo_proto_loss(torch.randn(2, 3, 4))
    with pytest.raises(ValueError):
        KoLeoProto(weight=-0.1)
    with pytest.raises(ValueError):
        KoLeoProto(eps=-1.0)


# --------------------------------------------------------------------------- registry


def test_registry_builds_known_names():
    centering = build_target_builder("centering", num_prototypes=12, momentum=0.8)
    assert isinstance(centering, Centering)
    assert centering.center.shape == (1, 12) and centering.momentum == 0.8
    regularizer = build_prototype_regularizer("koleo", weight=0.2)
    assert isinstance(regularizer, KoLeoProto) and regularizer.weight == 0.2


def test_registry_unknown_name_is_user_error():
    with pytest.raises(UserError) as info:
        build_target_builder("sinkhorn-typo", num_prototypes=4)
    message = str(info.value)
    assert "\n" not in message and "centering" in message
    with pytest.raises(UserError, match="koleo"):
        build_prototype_regularizer("kolleo")


def test_registry_bad_option_is_user_error():
    with pytest.raises(UserError, match="momentum"):
        build_target_builder("centering", num_prototypes=4, momentum=2.0)
    with pytest.raises(UserError):
        build_prototype_regularizer("koleo", wieght=0.1)


def test_register_decorators():
    @register_target_builder("test-identity")
    class Identity(TargetBuilder):
        def __init__(self, num_prototypes: int) -> None:
            super().__init__()
            self.num_prototypes = num_prototypes

        def targets(self, teacher_logits, teacher_temp):
            return torch.softmax(teacher_logits / teacher_temp, dim=-1)

    @register_prototype_regularizer("test-zero")
    class Zero(nn.Module):
        def forward(self, prototypes):
            return prototypes.sum() * 0

    try:
        assert isinstance(build_target_builder("test-identity", num_prototypes=3), Identity)
        assert isinstance(build_prototype_regularizer("test-zero"), Zero)
        with pytest.raises(ValueError):
            register_target_builder("test-identity")(Centering)
    finally:
        TARGET_BUILDERS.remove("test-identity")
        PROTOTYPE_REGULARIZERS.remove("test-zero")


# --------------------------------------------------------------------------- docs


@pytest.mark.parametrize("module_name", ["cross_entropy", "targets", "koleo", "registry"])
def test_docstring_examples_run(module_name):
    import importlib

    module = importlib.import_module(f"protossl.objectives.{module_name}")
    torch.manual_seed(0)
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn})
    assert result.failed == 0


# --------------------------------------------------------------------------- KoLeo at large K
# The blocked search and the candidate mode against an independent naive reference
# (tests/reference.py): the full N x N similarity matrix, argmax, and autograd through
# the chosen pairs.

from protossl.objectives.koleo import (  # noqa: E402
    _candidate_similarities,
    koleo_from_neighbors,
    nearest_among_candidates,
    nearest_neighbor_candidates,
    nearest_neighbor_indices,
)


def value_and_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weight = x.clone().requires_grad_(True)
    out = fn(weight)
    value = out[0] if isinstance(out, tuple) else out
    (grad,) = torch.autograd.grad(value, weight)
    return value.detach(), grad


@pytest.mark.parametrize(
    "k,d,block",
    [
        (4096, 256, 1000),  # block does not divide K
        (4096, 32, 4096),  # one block
        (4096, 8, 1024),
        (3001, 16, 512),  # neither does here; last blocks are 441 rows
        (120, 3, 7),  # many tiny tiles, low d: close competitors
        (50, 4, 64),  # block larger than K
        (9, 5, 1),  # 1 x 1 tiles
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_equals_naive(k, d, block, dtype):
    gen = torch.Generator().manual_seed(k + d + block)
    x = torch.randn(k, d, generator=gen, dtype=dtype) * 2
    unit = nn.functional.normalize(x, dim=1)
    expected_value, expected_grad = value_and_grad(reference_koleo, x)
    assert torch.equal(
        nearest_neighbor_indices(unit, block_size=block), reference_nearest_neighbours(unit)
    )
    value, grad = value_and_grad(lambda w: koleo_loss(w, block_size=block), x)
    torch.testing.assert_close(value, expected_value, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        grad, expected_grad, rtol=1e-5, atol=1e-6 * expected_grad.abs().max()
    )
    module_value, module_grad = value_and_grad(KoLeoProto(weight=1.0, block_size=block), x)
    torch.testing.assert_close(module_value, expected_value, rtol=1e-6, atol=0)
    torch.testing.assert_close(module_grad, grad, rtol=0, atol=0)


@pytest.mark.parametrize("block", [1, 3, 5, 64])
def test_blocked_search_ties_go_to_lowest_index_like_argmax(block):
    # Integer-valued rows: every inner product is exact whatever the summation
    # order, so duplicated rows give true ties, spread over several blocks; the
    # first of the tied rows wins, as argmax on the full matrix picks it.
    gen = torch.Generator().manual_seed(block)
    base = torch.randint(-3, 4, (4, 6), generator=gen).double()
    rows = torch.cat([base, base, base[:2], base[:1]])  # rows 0, 4, 8, 10 are equal
    got = nearest_neighbor_indices(rows, block_size=block)
    assert torch.equal(got, reference_nearest_neighbours(rows))
    assert got[0].item() == 4 and got[4].item() == 0 and got[10].item() == 0


@pytest.mark.parametrize("block", [2, 3, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_duplicated_prototypes_finite(block, dtype):
    torch.manual_seed(0)
    base = torch.randn(5, 8, dtype=dtype)
    for prototypes in (torch.cat([base, base[:3], base[:1] * 2.0]), torch.ones(6, 4, dtype=dtype)):
        for fn in (
            lambda w: koleo_proto_loss(w, block_size=block),
            KoLeoProto(weight=0.1, block_size=block),
            KoLeoProto(weight=0.1, block_size=block, refresh_every=2, num_candidates=2),
        ):
            for _ in range(3):  # refresh and in-between calls of the candidate mode
                value, grad = value_and_grad(fn, prototypes)
                assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_blocked_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    for block in (1, 2, 3, 7):
        assert torch.autograd.gradcheck(
            lambda p, b=block: koleo_loss(p, block_size=b), (x,), eps=1e-6, atol=1e-6
        )
    neighbors = reference_nearest_neighbours(nn.functional.normalize(x.detach(), dim=1))
    assert torch.autograd.gradcheck(lambda p: koleo_from_neighbors(p, neighbors, 0.1), (x,))
    # Between refreshes, through the candidate path (the module is in eval-free training mode).
    module = KoLeoProto(weight=0.5, block_size=3, refresh_every=1000, num_candidates=3).double()
    module(x.detach())  # refresh
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-6)


def test_koleo_from_neighbors_handles_tiny_and_zero_rows():
    torch.manual_seed(0)
    # The floors (norm 1e-12, squared distance 1e-24) cut the gradient exactly as
    # autograd through F.normalize and clamp does.
    x = torch.randn(6, 3, dtype=torch.float64)
    x[1] = 0.0
    x[2] = 1e-14
    x[3] = x[4]
    neighbors = torch.tensor([3, 0, 5, 4, 3, 0])

    def reference(w):
        return reference_koleo(w, 1e-8, neighbours=neighbors)

    expected_value, expected_grad = value_and_grad(reference, x)
    value, grad = value_and_grad(lambda w: koleo_from_neighbors(w, neighbors), x)
    torch.testing.assert_close(value, expected_value)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("k,c,block", [(300, 16, 64), (257, 5, 100), (12, 11, 5), (5, 16, 2)])
def test_candidates_are_the_exact_top_c(k, c, block):
    gen = torch.Generator().manual_seed(k)
    unit = nn.functional.normalize(torch.randn(k, 6, generator=gen, dtype=torch.float64), dim=1)
    neighbors, candidates = nearest_neighbor_candidates(unit, c, block_size=block)
    c = min(c, k - 1)
    assert candidates.shape == (k, c) and candidates.dtype == torch.long
    sims = unit @ unit.T
    sims.fill_diagonal_(float("-inf"))
    expected = sims.topk(c, dim=1).indices.sort(dim=1).values
    assert torch.equal(candidates, expected)
    assert torch.equal(neighbors, reference_nearest_neighbours(unit))
    assert torch.equal(nearest_among_candidates(unit, candidates), neighbors)
    for sparse in (True, False):
        torch.testing.assert_close(
            _candidate_similarities(unit, candidates, sparse), sims.gather(1, candidates)
        )


def drifting(k: int, d: int, steps: int, step_size: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(k, d, generator=gen, dtype=torch.float64)
    for _ in range(steps):
        yield x
        x = x + step_size * torch.randn(k, d, generator=gen, dtype=torch.float64)


def test_candidate_mode_refresh_every_1_is_exact():
    module = KoLeoProto(weight=0.3, block_size=50, refresh_every=1)
    for x in drifting(200, 8, 4, 0.5):
        value, grad = value_and_grad(module, x)
        expected_value, expected_grad = value_and_grad(reference_koleo, x)
        torch.testing.assert_close(value, 0.3 * expected_value)
        torch.testing.assert_close(grad, 0.3 * expected_grad)
    assert module.step is None and module.state_dict() == {}  # stateless, as before


def test_candidate_mode_refresh_steps_are_exact_and_candidates_never_overshoot():
    refresh_every = 3
    module = KoLeoProto(weight=1.0, block_size=64, refresh_every=refresh_every, num_candidates=2)
    # Big moves (relative 0.3 per step in d = 4): candidates go stale between refreshes.
    stale_seen = 0
    for t, x in enumerate(drifting(300, 4, 9, 0.3)):
        value, grad = value_and_grad(module, x)
        expected_value, expected_grad = value_and_grad(reference_koleo, x)
        assert module.step.item() == t + 1
        if t % refresh_every == 0:
            torch.testing.assert_close(value, expected_value)
            torch.testing.assert_close(grad, expected_grad)
            _, candidates = nearest_neighbor_candidates(nn.functional.normalize(x, dim=1), 2)
            assert torch.equal(module.candidates, candidates)
        else:
            # A candidate is a real other prototype, at least as far as the nearest one.
            assert value.item() <= expected_value.item() + 1e-12
            stale_seen += int(value.item() < expected_value.item() - 1e-9)
    assert stale_seen > 0  # the test did exercise stale candidates


def test_candidate_mode_between_refreshes_small_moves_is_exact():
    module = KoLeoProto(weight=1.0, block_size=128, refresh_every=10, num_candidates=8)
    for x in drifting(500, 16, 10, 1e-4):
        value, grad = value_and_grad(module, x)
        expected_value, expected_grad = value_and_grad(reference_koleo, x)
        torch.testing.assert_close(value, expected_value)
        torch.testing.assert_close(grad, expected_grad)


def test_candidate_mode_counts_training_calls_only():
    torch.manual_seed(0)
    module = KoLeoProto(refresh_every=4, num_candidates=3)
    x = torch.randn(20, 5)
    module(x)
    module(x)
    assert module.step.item() == 2 and module.candidates.shape == (20, 3)
    cached = module.candidates.clone()
    module.eval()
    expected = 0.1 * reference_koleo(x)
    torch.testing.assert_close(module(x), expected)  # eval: exact, no state change
    assert module.step.item() == 2 and torch.equal(module.candidates, cached)
    module.train()
    # Another K, or a cache on another device, is refreshed whatever the step.
    y = torch.randn(30, 5)
    torch.testing.assert_close(module(y), 0.1 * reference_koleo(y))
    assert module.step.item() == 3 and module.candidates.shape == (30, 3)


def test_candidate_state_survives_checkpoint_round_trip(tmp_path):
    def make():
        return KoLeoProto(weight=0.2, block_size=32, refresh_every=5, num_candidates=4)

    trajectory = list(drifting(100, 6, 12, 0.2, seed=3))
    original = make()
    for x in trajectory[:7]:
        original(x)
    state = original.state_dict()
    assert set(state) == {"step", "candidates"} and state["candidates"].shape == (100, 4)
    path = tmp_path / "koleo.pt"
    torch.save({"regularizer": state}, path)
    resumed = make()
    resumed.load_state_dict(torch.load(path, weights_only=True)["regularizer"])
    assert resumed.step.item() == 7 and torch.equal(resumed.candidates, original.candidates)
    for x in trajectory[7:]:  # the resumed run continues exactly like the original one
        a, ga = value_and_grad(original, x)
        b, gb = value_and_grad(resumed, x)
        assert torch.equal(a, b) and torch.equal(ga, gb)
    # Inside a model, under a prefix, with strict loading.
    holder, other = nn.Module(), nn.Module()
    holder.reg, other.reg = original, make()
    other.load_state_dict(holder.state_dict())
    assert torch.equal(other.reg.candidates, original.candidates)


def test_switching_refresh_every_across_a_resume():
    torch.manual_seed(0)
    exact, cached = KoLeoProto(), KoLeoProto(refresh_every=3, num_candidates=2)
    x = torch.randn(10, 4)
    cached(x)
    cached(x)
    # A checkpoint from an exact-mode run starts a fresh cache (refresh at the next call).
    cached.load_state_dict(exact.state_dict())
    assert cached.step.item() == 0 and cached.candidates.shape == (0, 2)
    cached.load_state_dict({}, strict=False)
    # A cache in a checkpoint is ignored by an exact-mode module.
    cached(x)
    exact.load_state_dict(cached.state_dict())
    assert exact.state_dict() == {}


@pytest.mark.parametrize(
    "candidates",
    [
        torch.tensor([[1], [2], [9]]),  # out of range
        torch.tensor([[0], [2], [0]]),  # a row's own index
        torch.tensor([[2, 1], [0, 2], [0, 1]]),  # not sorted
        torch.tensor([[1.0], [2.0], [0.0]]),  # not int64
        torch.tensor([1, 2, 0]),  # not 2-D
    ],
)
def test_corrupt_candidate_cache_is_refused(candidates):
    module = KoLeoProto(refresh_every=3, num_candidates=2)
    with pytest.raises(RuntimeError, match="candidates"):
        module.load_state_dict({"step": torch.tensor(4), "candidates": candidates})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"block_size": 0},
        {"block_size": 2.5},
        {"refresh_every": 0},
        {"refresh_every": True},
        {"num_candidates": 0},
    ],
)
def test_large_k_options_are_validated(kwargs):
    with pytest.raises(ValueError):
        KoLeoProto(**kwargs)
    with pytest.raises(UserError):
        build_prototype_regularizer("koleo", weight=0.1, **kwargs)


def test_large_k_options_through_registry_and_functions():
    module = build_prototype_regularizer("koleo", weight=0.1, refresh_every=10, block_size=512)
    assert module.refresh_every == 10 and module.block_size == 512 and module.num_candidates == 16
    assert "refresh_every=10" in repr(module)
    with pytest.raises(ValueError):
        koleo_loss(torch.randn(4, 3), block_size=0)
    with pytest.raises(ValueError):
        nearest_among_candidates(torch.randn(4, 3), torch.zeros(3, 1, dtype=torch.long))
    half = KoLeoProto(refresh_every=2, num_candidates=2)(torch.randn(8, 4).bfloat16())
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_blocked_search_memory_is_one_tile(monkeypatch):
    # The largest float tensor the search allocates is one block x block tile.
    import protossl.objectives.koleo as koleo_module

    sizes = []
    real_empty = torch.empty

    def recording_empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        if out.is_floating_point():
            sizes.append(out.numel())
        return out

    monkeypatch.setattr(koleo_module.torch, "empty", recording_empty)
    unit = nn.functional.normalize(torch.randn(1000, 8), dim=1)
    nearest_neighbor_candidates(unit, 4, block_size=100)
    assert sizes and max(sizes) == 100 * 100
