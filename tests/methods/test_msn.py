"""MSN / PMSN: ME-MAX, prior KL, sharpened targets and the full step vs the papers' formulas."""

from __future__ import annotations

import copy
import math
import os
import tempfile
from fractions import Fraction

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from reference import random_crops, reference_sinkhorn_balance

# Imported for their registrations ("msn", "me-max", "prior-kl", "sharpen"), so the
# tests work with or without the imports in the packages' __init__ files.
import protossl.methods.msn  # noqa: F401
import protossl.objectives.mlcd  # noqa: F401
import protossl.objectives.msn  # noqa: F401
from protossl.config import Config, load_config
from protossl.core.errors import UserError
from protossl.methods import build_method
from protossl.methods.msn import MSN, num_kept_patches
from protossl.models import ViTBackbone
from protossl.objectives import TARGET_BUILDERS, build_mlcd_regularizer, build_target_builder
from protossl.objectives.mlcd import MeMax, PriorKL, power_law_prior
from protossl.objectives.msn import SharpenedTargets, msn_cross_entropy

TINY = [
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "data.batch_size=8",
    "data.num_local_crops=2",
]


def tiny(preset: str = "msn", *extra: str) -> Config:
    return load_config(preset, overrides=[*TINY, *extra])


def build_msn(cfg: Config) -> MSN:
    torch.manual_seed(0)
    method = build_method(cfg)
    assert isinstance(method, MSN)
    return method


# ------------------------------------------------------ references (formulas)


def ref_mean(probs: torch.Tensor) -> list[float]:
    # p_bar_k = (1/N) sum_n p_nk over every crop and image, by plain loops.
    rows = probs.double().reshape(-1, probs.shape[-1]).tolist()
    return [sum(r[k] for r in rows) / len(rows) for k in range(probs.shape[-1])]


def ref_entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def ref_prior(k: int, tau: float) -> list[float]:
    weights = [j ** (-tau) for j in range(1, k + 1)]
    return [w / sum(weights) for w in weights]


def ref_kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def ref_sharpen(logits: torch.Tensor, teacher_temp: float, sharpen_temp: float) -> torch.Tensor:
    # MSN src/losses.py: p = softmax(s / temp); sharpen: p ** (1/T) / sum p ** (1/T).
    p = torch.softmax(logits.double() / teacher_temp, dim=1)
    sharp = p ** (1.0 / sharpen_temp)
    return sharp / sharp.sum(dim=1, keepdim=True)


def ref_msn_ce(anchor_scores: torch.Tensor, targets: torch.Tensor, temp: float) -> torch.Tensor:
    # MSN: probs = softmax(anchors / temp); targets repeated for every anchor view;
    # loss = mean over rows of sum(log(probs ** -targets)).
    views, batch, k = anchor_scores.shape
    probs = torch.softmax(anchor_scores.double().reshape(-1, k) / temp, dim=1)
    repeated = torch.cat([targets.double()] * views)
    return torch.mean(torch.sum(torch.log(probs ** (-repeated)), dim=1))


def ref_me_max(probs: torch.Tensor) -> torch.Tensor:
    # MSN: avg = mean(probs); rloss = -sum(log(avg ** -avg)) + log K.
    avg = probs.double().reshape(-1, probs.shape[-1]).mean(dim=0)
    return -torch.sum(torch.log(avg ** (-avg))) + math.log(float(len(avg)))


# ------------------------------------------------------------------ ME-MAX


@pytest.mark.parametrize("batch", [1, 5, 32])
@pytest.mark.parametrize("crops", [1, 2, 6])
@pytest.mark.parametrize("k", [2, 7, 64])
def test_me_max_is_log_k_minus_entropy_of_the_mean(batch: int, crops: int, k: int) -> None:
    gen = torch.Generator().manual_seed(batch * 1000 + crops * 100 + k)
    probs = torch.softmax(torch.randn(crops, batch, k, generator=gen) * 3, dim=-1)
    expected = math.log(k) - ref_entropy(ref_mean(probs))
    reg = MeMax(num_prototypes=k)
    assert float(reg(probs)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert float(reg(probs.double())) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # Only the mean counts: the same rows as one flat batch give the same value.
    assert float(reg(probs.reshape(-1, k))) == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("k", [2, 16, 1000])
def test_me_max_bounds(k: int) -> None:
    reg = MeMax(num_prototypes=k)
    uniform = torch.full((4, 8, k), 1.0 / k, dtype=torch.float64)
    assert float(reg(uniform)) == pytest.approx(0.0, abs=1e-12)
    one_winner = torch.zeros(4, 8, k, dtype=torch.float64)
    one_winner[..., 0] = 1.0  # every sample picks prototype 0: 0 * log 0 must count as 0
    assert float(reg(one_winner)) == pytest.approx(math.log(k), rel=1e-12)
    # Sharp but balanced predictions have a uniform mean: no penalty (ME-MAX's point).
    balanced = torch.eye(k, dtype=torch.float64)
    assert float(reg(balanced)) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- prior KL


def test_power_law_prior_values() -> None:
    for k, tau in [(5, 0.25), (64, 1.0), (3, 0.0)]:
        prior = power_law_prior(k, tau)
        torch.testing.assert_close(prior, torch.tensor(ref_prior(k, tau), dtype=torch.float64))
        assert float(prior.sum()) == pytest.approx(1.0)
        # pi_1 / pi_k = k^tau.
        assert float(prior[0] / prior[-1]) == pytest.approx(k**tau)
    with pytest.raises(ValueError, match="tau"):
        power_law_prior(4, -0.5)


@pytest.mark.parametrize("tau", [0.0, 0.25, 1.0, 2.0])
@pytest.mark.parametrize("k,batch,crops", [(3, 4, 1), (16, 9, 3), (100, 32, 2)])
def test_prior_kl_matches_both_directions(tau: float, k: int, batch: int, crops: int) -> None:
    gen = torch.Generator().manual_seed(k * 10 + batch)
    probs = torch.softmax(torch.randn(crops, batch, k, generator=gen) * 2, dim=-1)
    mean, prior = ref_mean(probs), ref_prior(k, tau)
    forward = PriorKL(num_prototypes=k, tau=tau)
    reverse = PriorKL(num_prototypes=k, tau=tau, reverse=True)
    assert float(forward(probs)) == pytest.approx(ref_kl(mean, prior), rel=1e-5, abs=1e-6)
    assert float(reverse(probs)) == pytest.approx(ref_kl(prior, mean), rel=1e-5, abs=1e-6)
    # The reverse direction is what lightly's PMSNLoss computes: F.kl_div(log p_bar, pi).
    p_bar = torch.tensor(mean, dtype=torch.float64)
    lightly = F.kl_div(p_bar.log(), torch.tensor(prior, dtype=torch.float64), reduction="sum")
    assert float(reverse(probs.double())) == pytest.approx(float(lightly), rel=1e-10)


def test_prior_kl_with_a_uniform_prior_is_me_max_and_reverse_is_not() -> None:
    gen = torch.Generator().manual_seed(0)
    # In float64: the identity needs rows that sum to 1 (float32 rows miss by ~1e-8).
    probs = torch.softmax(torch.randn(3, 16, 24, generator=gen, dtype=torch.float64) * 2, dim=-1)
    me_max = float(MeMax(24)(probs))
    assert float(PriorKL(24, tau=0.0)(probs)) == pytest.approx(me_max, rel=1e-12)
    assert float(PriorKL(24, tau=0.0, reverse=True)(probs)) != pytest.approx(me_max, rel=1e-3)
    # The prior's own distribution costs nothing, in both directions.
    prior = power_law_prior(24, 0.25).expand(5, 24)
    assert float(PriorKL(24, tau=0.25)(prior)) == pytest.approx(0.0, abs=1e-12)
    assert float(PriorKL(24, tau=0.25, reverse=True)(prior)) == pytest.approx(0.0, abs=1e-12)


def test_unused_prototypes_keep_the_terms_and_gradients_finite() -> None:
    probs = torch.zeros(6, 8, dtype=torch.float64)
    probs[:, :3] = 1.0 / 3  # prototypes 3..7 unused: p_bar_k = 0
    for reg in (MeMax(8), PriorKL(8), PriorKL(8, reverse=True)):
        x = probs.clone().requires_grad_(True)
        value = reg(x)
        value.backward()
        assert math.isfinite(float(value.detach()))
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    assert float(MeMax(8)(probs)) == pytest.approx(math.log(8) - math.log(3))


@pytest.mark.parametrize(
    "reg", [MeMax(6), PriorKL(6, tau=0.25), PriorKL(6, tau=1.0, reverse=True)], ids=str
)
def test_gradcheck_mlcd_regularizers(reg: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: reg(torch.softmax(x, dim=-1)), (logits,))
    assert torch.autograd.gradgradcheck(lambda x: reg(torch.softmax(x, dim=-1)), (logits,))


def test_mlcd_registry_and_option_errors() -> None:
    assert isinstance(build_mlcd_regularizer("me-max", num_prototypes=8), MeMax)
    reg = build_mlcd_regularizer("prior-kl", num_prototypes=8, tau=0.5, reverse=True)
    assert isinstance(reg, PriorKL) and reg.tau == 0.5 and reg.reverse
    with pytest.raises(UserError, match="prior-kl"):
        build_mlcd_regularizer("prior-kl", num_prototypes=8, tau=-1.0)
    with pytest.raises(UserError, match="reverse"):
        build_mlcd_regularizer("prior-kl", num_prototypes=8, reverse="yes")
    with pytest.raises(UserError, match="me-max"):
        build_mlcd_regularizer("me-max", num_prototypes=8, tau=0.25)  # no such option
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\]"):
        MeMax(8)(torch.rand(4, 9))


def _distributed_worker(rank: int, folder: str, probs: torch.Tensor) -> None:
    import torch.distributed as dist

    init = f"file://{os.path.join(folder, 'init')}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        half = probs.shape[0] // 2
        local = probs[rank * half : (rank + 1) * half].clone().requires_grad_(True)
        values = []
        for reg in (MeMax(probs.shape[-1]), PriorKL(probs.shape[-1], reverse=True)):
            value = reg(local)
            (grad,) = torch.autograd.grad(value, local)
            values.append((value.detach(), grad))
        torch.save(values, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_mean_is_global_across_processes() -> None:
    # Two gloo processes holding half a batch each give the one-process value, and
    # each its share of the gradient times the world size (identity backward; the
    # trainer's gradient all-reduce averages the ranks, see core/distributed.py).
    gen = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(8, 10, generator=gen, dtype=torch.float64), dim=-1)
    with tempfile.TemporaryDirectory() as folder:
        # fork: the children need no fresh interpreter (spawn costs ~10 s here).
        mp.start_processes(
            _distributed_worker, args=(folder, probs), nprocs=2, join=True, start_method="fork"
        )
        out = [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(2)]
    for i, reg in enumerate((MeMax(10), PriorKL(10, reverse=True))):
        full = probs.clone().requires_grad_(True)
        value = reg(full)
        (grad,) = torch.autograd.grad(value, full)
        for rank in range(2):
            got_value, got_grad = out[rank][i]
            assert float(got_value) == pytest.approx(float(value.detach()), rel=1e-12)
            torch.testing.assert_close(got_grad / 2, grad[rank * 4 : (rank + 1) * 4])


# ------------------------------------------------------------ sharpened targets


@pytest.mark.parametrize("teacher_temp", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("sharpen_temp", [0.1, 0.25, 1.0])
def test_sharpened_targets_match_reference(teacher_temp: float, sharpen_temp: float) -> None:
    gen = torch.Generator().manual_seed(int(teacher_temp * 100 + sharpen_temp * 10))
    # Cosine-like scores, as MSN's: in [-1, 1].
    logits = F.normalize(torch.randn(2, 6, 32, generator=gen), dim=-1)
    builder = SharpenedTargets(32, sharpen_temp=sharpen_temp)
    got = builder.targets(logits, teacher_temp)
    expected = ref_sharpen(logits.reshape(-1, 32), teacher_temp, sharpen_temp).view(2, 6, 32)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    assert got.dtype == torch.float32 and not got.requires_grad
    # With Sinkhorn-Knopp: sharpen first, then balance the sharpened targets (official order).
    with_sk = SharpenedTargets(32, sharpen_temp=sharpen_temp, use_sinkhorn=True).targets(
        logits, teacher_temp
    )
    expected_sk = reference_sinkhorn_balance(
        ref_sharpen(logits.reshape(-1, 32), teacher_temp, sharpen_temp), 3
    )
    torch.testing.assert_close(with_sk.double(), expected_sk.view(2, 6, 32), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(with_sk.sum(-1), torch.ones(2, 6))
    # The other order (Sinkhorn, then sharpen) is a different target.
    other = ref_sharpen(
        reference_sinkhorn_balance(
            torch.softmax(logits.reshape(-1, 32).double() / teacher_temp, 1), 3
        ).log(),
        1.0,
        sharpen_temp,
    )
    if sharpen_temp != 1.0:
        assert not torch.allclose(with_sk.reshape(-1, 32).double(), other, atol=1e-4)


@pytest.mark.parametrize("batch,k", [(8, 4), (16, 32), (40, 10)])
def test_sinkhorn_balances_the_prototypes(batch: int, k: int) -> None:
    gen = torch.Generator().manual_seed(batch + k)
    logits = F.normalize(torch.randn(1, batch, k, generator=gen), dim=-1)
    builder = SharpenedTargets(k, sharpen_temp=0.5, use_sinkhorn=True, iterations=500)
    targets = builder.targets(logits, teacher_temp=0.5)[0]
    # Converged: each row a distribution, each prototype B / K of the batch's mass.
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(batch))
    torch.testing.assert_close(targets.sum(dim=0), torch.full((k,), batch / k), atol=1e-4, rtol=0)
    plain = SharpenedTargets(k, sharpen_temp=0.5).targets(logits, teacher_temp=0.5)[0]
    assert float((plain.sum(0) - batch / k).abs().max()) > 1e-3  # sharpening alone does not


def test_sharpened_targets_do_not_underflow() -> None:
    # p ** 4 of probabilities near 1e-30 underflows in float32; log space does not.
    logits = torch.tensor([[0.0, -8.0, -8.0], [-8.0, -8.0, -8.0]])
    targets = SharpenedTargets(3, sharpen_temp=0.1).targets(logits, teacher_temp=0.1)
    assert bool(torch.isfinite(targets).all())
    torch.testing.assert_close(targets[1], torch.full((3,), 1 / 3))


def test_sharpen_builder_options_and_registry() -> None:
    builder = build_target_builder(
        "sharpen", num_prototypes=8, shared={"momentum": 0.9, "sharpen_temp": 0.3}
    )
    assert isinstance(builder, SharpenedTargets)
    assert builder.sharpen_temp == 0.3 and not builder.use_sinkhorn
    with pytest.raises(UserError, match="sharpen_temp"):
        build_target_builder("sharpen", num_prototypes=8, sharpen_temp=0.0)
    with pytest.raises(UserError, match="iterations"):
        build_target_builder("sharpen", num_prototypes=8, iterations=0)
    with pytest.raises(ValueError, match="teacher_temp"):
        builder.targets(torch.randn(2, 8), teacher_temp=0.0)


# ------------------------------------------------------------ cross-entropy


@pytest.mark.parametrize("views,batch", [(1, 1), (3, 5), (11, 4)])
@pytest.mark.parametrize("temp", [0.05, 0.1, 1.0])
def test_msn_cross_entropy_matches_reference(views: int, batch: int, temp: float) -> None:
    gen = torch.Generator().manual_seed(views * 10 + batch)
    scores = F.normalize(torch.randn(views, batch, 12, generator=gen), dim=-1)
    targets = ref_sharpen(torch.randn(batch, 12, generator=gen), 0.1, 0.25).float()
    expected = ref_msn_ce(scores, targets, temp)
    got = msn_cross_entropy(scores, targets, student_temp=temp)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(msn_cross_entropy(scores, targets[None], temp), got)
    with pytest.raises(ValueError, match="shape"):
        msn_cross_entropy(scores, targets[:, :5], temp)


# ------------------------------------------------------------ masking


RATIOS = ["0", "0.15", "0.3", "0.5", "0.7", "0.9", "0.99"]


@pytest.mark.parametrize("num_patches", [1, 4, 16, 20, 49, 196])
def test_kept_patch_count(num_patches: int) -> None:
    for ratio in RATIOS:
        # floor(N (1 - r)) in exact arithmetic (official deit.py), at least one patch.
        exact = math.floor(Fraction(num_patches) * (1 - Fraction(ratio)))
        assert num_kept_patches(num_patches, float(ratio)) == max(1, exact)


# 4 x 4 patches at 16 px: floor(16 * 0.85) = 13, floor(16 * 0.7) = 11, floor(16 * 0.3) = 4.
@pytest.mark.parametrize("ratio,expected", [(0.15, 13), (0.3, 11), (0.7, 4)])
@pytest.mark.parametrize("batch", [2, 8])  # >= 2: the preset's head has BatchNorm
def test_anchor_masking_keeps_exactly_the_requested_patches(
    ratio: float, expected: int, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    method = build_msn(tiny("msn", f"msn.mask_ratio={ratio}"))
    keep = method.draw_keep(batch, 16)
    assert keep.shape == (batch, expected) and keep.dtype == torch.long
    for row in keep.tolist():
        assert row == sorted(set(row)) and row[0] >= 0 and row[-1] < 16  # distinct, in range

    # In a step, only the anchor of the target's size drops patches: one masked call.
    seen: list[tuple[int, tuple[int, ...] | None, int]] = []
    backbone = method.student.backbone
    assert isinstance(backbone, ViTBackbone)
    original = backbone.forward_tokens

    def spy(
        images: torch.Tensor, mask: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cls, patches = original(images, mask=mask, keep=keep)
        seen.append(
            (images.shape[-1], None if keep is None else tuple(keep.shape), patches.shape[1])
        )
        return cls, patches

    monkeypatch.setattr(backbone, "forward_tokens", spy)
    out = method.training_step(random_crops(batch, num_local=2), teacher_temp=0.1)
    assert seen == [(16, (batch, expected), expected)]
    assert out.terms["kept_patch_fraction"] == pytest.approx(expected / 16)


def test_each_image_draws_its_own_subset() -> None:
    method = build_msn(tiny())
    torch.manual_seed(0)
    keep = method.draw_keep(64, 16)
    assert len({tuple(row) for row in keep.tolist()}) > 32
    # Every patch is dropped sometimes, kept mostly: roughly uniform per position.
    counts = torch.bincount(keep.flatten(), minlength=16).float() / 64
    assert bool((counts > 0.5).all() and (counts < 1.0).all())


# ------------------------------------------------------------ the full step


def reference_step(
    method: MSN, cfg: Config, crops: list[torch.Tensor], teacher_temp: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy, anchor probabilities and targets of one step, from MSN's formulas."""
    student, teacher = method.student, method.teacher
    backbone = student.backbone
    assert isinstance(backbone, ViTBackbone)
    batch = crops[0].shape[0]
    torch.manual_seed(seed)
    keep = method.draw_keep(batch, 16)  # the step's first (and only) random draw
    w = F.normalize(student.head.prototypes.weight, dim=1)  # shared by anchors and target
    with torch.no_grad():
        y_t = F.normalize(teacher.head.mlp(teacher.backbone(crops[0])), dim=1)
        targets = ref_sharpen(y_t @ w.t(), teacher_temp, cfg.msn.sharpen_temp)
        if cfg.msn.use_sinkhorn:
            targets = reference_sinkhorn_balance(targets, 3)
    features = [backbone.forward_tokens(crops[1], keep=keep)[0]]  # the masked anchor
    features += [backbone(c) for c in crops[2:]]  # focal anchors, unmasked
    y = F.normalize(student.head.mlp(torch.cat(features)), dim=1)  # one BatchNorm batch
    scores = (y @ w.t()).view(len(crops) - 1, batch, -1)
    ce = ref_msn_ce(scores, targets, cfg.objective.student_temp)
    probs = torch.softmax(scores.double() / cfg.objective.student_temp, dim=-1)
    return ce, probs, targets


@pytest.mark.parametrize(
    "preset,extra,tau,reverse",
    [
        ("msn", [], None, False),
        ("msn", ["msn.use_sinkhorn=false", "data.num_local_crops=0"], None, False),
        ("msn-kp", [], None, False),
        ("pmsn", [], 0.25, False),
        ("pmsn", ["objective.mlcd_options={reverse: true, tau: 1.0}"], 1.0, True),
    ],
)
def test_training_step_matches_an_independent_computation(
    preset: str, extra: list[str], tau: float | None, reverse: bool
) -> None:
    cfg = tiny(preset, *extra, "objective.mlcd_weight=0.5")
    method = build_msn(cfg)
    reference = copy.deepcopy(method)
    crops = random_crops(8, cfg.data.num_local_crops)
    torch.manual_seed(11)
    out = method.training_step(crops, teacher_temp=0.1)
    out.loss.backward()

    ce, probs, targets = reference_step(reference, cfg, crops, 0.1, seed=11)
    p_bar = ref_mean(probs.detach())
    avg = probs.reshape(-1, 32).mean(0)
    if tau is None:  # ME-MAX, as MSN's code writes it and as log K - H(p_bar)
        mlcd = ref_me_max(probs)
        expected = math.log(32) - ref_entropy(p_bar)
    else:  # prior KL: KL(p_bar || pi), or KL(pi || p_bar) when reversed
        prior = ref_prior(32, tau)
        pi = torch.tensor(prior, dtype=torch.float64)
        mlcd = (pi * (pi / avg).log()).sum() if reverse else (avg * (avg / pi).log()).sum()
        expected = ref_kl(prior, p_bar) if reverse else ref_kl(p_bar, prior)
    assert mlcd.item() == pytest.approx(expected, rel=1e-9)
    total = ce + 0.5 * mlcd
    if preset == "msn-kp":  # KoLeo-proto: -(1/K) sum_i log(min_j ||mu_i - mu_j|| + 1e-8)
        mu = F.normalize(reference.student.head.prototypes.weight.double(), dim=1)
        dist = torch.cdist(mu, mu) + torch.eye(32, dtype=torch.float64) * 10
        koleo = -torch.log(dist.min(dim=1).values + 1e-8).mean()
        assert out.terms["prototype_regularizer"] == pytest.approx(0.1 * koleo.item(), rel=1e-4)
        total = total + 0.1 * koleo

    assert out.terms["cross_entropy"] == pytest.approx(ce.item(), rel=1e-5)
    assert out.terms["mlcd_regularizer"] == pytest.approx(0.5 * mlcd.item(), rel=1e-4, abs=1e-6)
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert out.terms["target_prototypes"] == len(set(targets.argmax(1).tolist()))
    # Gradients agree parameter by parameter (None: unused, e.g. the ViT's mask token).
    total.backward()
    pairs = zip(method.student.parameters(), reference.student.parameters(), strict=True)
    for got, ref in pairs:
        if ref.grad is None:
            assert got.grad is None
        else:
            assert got.grad is not None
            torch.testing.assert_close(got.grad, ref.grad.to(got.dtype), rtol=1e-3, atol=1e-5)
    assert all(p.grad is None for p in method.teacher.parameters())


def test_targets_use_the_shared_student_prototypes_and_the_teacher_is_an_ema() -> None:
    method = build_msn(tiny())
    images = random_crops(8)[0]
    before = method.target_scores(images)
    with torch.no_grad():
        method.student.head.prototypes.weight.add_(torch.randn(32, 16))
    assert not torch.allclose(before, method.target_scores(images))  # student's prototypes
    student = {k: v.clone() for k, v in method.student.state_dict().items()}
    teacher = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    method.update_teacher(0.9)
    after = method.teacher.state_dict()
    key = "head.prototypes.weight"
    torch.testing.assert_close(after[key], student[key])  # copied, not averaged
    for name in ("head.mlp.0.weight", "backbone.net.cls_token"):
        torch.testing.assert_close(after[name], 0.9 * teacher[name] + 0.1 * student[name])
    torch.testing.assert_close(method.teacher_prototypes(), method.student_prototypes())
    method.eval()
    torch.testing.assert_close(method.teacher_logits(images), method.target_scores(images))
    assert method.teacher_features(images).shape == (8, 96)


def _train(method: MSN, steps: int, lr: float = 1e-3) -> list[float]:
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=lr)
    crops = random_crops(8)
    losses = []
    for _ in range(steps):
        torch.manual_seed(123)  # the same masks every step: a fixed batch
        out = method.training_step(crops, teacher_temp=0.1)
        assert all(math.isfinite(v) for v in out.terms.values())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.update_teacher(0.996)
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize("preset", ["msn", "msn-kp", "pmsn"])
def test_presets_train_and_the_loss_decreases_on_a_fixed_batch(preset: str) -> None:
    method = build_msn(tiny(preset))
    losses = _train(method, steps=6)
    assert losses[-1] < 0.9 * losses[0], losses


def test_centering_target_is_supported_and_updated() -> None:
    method = build_msn(tiny("msn", "objective.target=centering"))
    crops = random_crops(8)
    scores = method.target_scores(crops[0])
    method.training_step(crops, teacher_temp=0.1)
    center = method.target_builder.center  # type: ignore[union-attr]
    torch.testing.assert_close(center, 0.1 * scores.mean(0, keepdim=True))


def test_cnn_backbone_needs_mask_ratio_zero() -> None:
    with pytest.raises(UserError, match="ViT"):
        build_method(tiny("msn", "model.backbone=resnet_tiny"))
    method = build_msn(tiny("msn", "model.backbone=resnet_tiny", "msn.mask_ratio=0"))
    out = method.training_step(random_crops(8), teacher_temp=0.1)
    assert math.isfinite(float(out.loss.detach())) and out.terms["kept_patch_fraction"] == 1.0


def test_unsupported_settings_are_rejected() -> None:
    assert "probability-centering" in TARGET_BUILDERS  # registered: msn must refuse it
    with pytest.raises(UserError, match="objective.target"):
        build_method(tiny("msn", "objective.target=probability-centering"))
    with pytest.raises(UserError, match="objective.target"):
        build_method(tiny("msn", "objective.target=no-such-target"))
    with pytest.raises(UserError, match="prototype_layer"):
        build_method(tiny("msn", "model.prototype_layer=vmf"))
    with pytest.raises(UserError, match="mask_ratio"):
        tiny("msn", "msn.mask_ratio=1.0")
    method = build_msn(tiny())
    with pytest.raises(ValueError, match="anchor"):
        method.training_step(random_crops(8)[:1], teacher_temp=0.1)


def test_presets_describe_msn_and_pmsn() -> None:
    for name, prototype, mlcd in (
        ("msn", "none", "me-max"),
        ("msn-kp", "koleo", "me-max"),
        ("pmsn", "none", "prior-kl"),
    ):
        cfg = load_config(name)
        o = cfg.objective
        assert (cfg.method, cfg.model.backbone, o.target) == ("msn", "vit_tiny", "sharpen")
        assert (o.student_temp, o.teacher_temp, o.warmup_teacher_temp) == (0.1, 0.1, 0.1)
        assert (o.prototype_regularizer, o.mlcd_regularizer, o.mlcd_weight) == (
            prototype,
            mlcd,
            1.0,
        )
        assert (cfg.msn.mask_ratio, cfg.msn.sharpen_temp, cfg.msn.use_sinkhorn) == (
            0.15,
            0.25,
            True,
        )
        assert cfg.optim.freeze_last_layer_epochs == 0
    assert load_config("pmsn").objective.mlcd_options == {"tau": 0.25}
    assert load_config("msn-kp").objective.regularizer_weight == 0.1
