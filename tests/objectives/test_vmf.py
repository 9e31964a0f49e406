"""DINO-vMF: the vMF log-normalizer, the vMF prototype layer, probability centering.

References are written here from the formulas, sharing no code with protossl:
the log-normalizer and the Bessel ratio come from mpmath's arbitrary-precision
``besseli`` (scipy's exponentially scaled ``ive`` in float64 when mpmath is
missing); the targets and the center update are plain-Python loops over rows.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from reference import random_crops
from torch import nn

import protossl.objectives.probability_centering as pc_module
from protossl.config import load_config
from protossl.methods.base import build_method
from protossl.models.head import PROTOTYPE_LAYERS, DINOHead, PrototypeLayer, VMFPrototypeLayer
from protossl.objectives.probability_centering import ProbabilityCentering
from protossl.objectives.registry import TARGET_BUILDERS, build_target_builder
from protossl.objectives.vmf import _debye_polynomials, log_vmf_normalizer

# --------------------------------------------------------------------------- references

try:
    import mpmath

    mpmath.mp.dps = 40

    def ref_log_bessel_i(nu: float, kappa: float) -> float:
        return float(mpmath.log(mpmath.besseli(mpmath.mpf(nu), mpmath.mpf(kappa))))

except ImportError:  # pragma: no cover - mpmath ships with the dev environment
    from scipy.special import ive

    def ref_log_bessel_i(nu: float, kappa: float) -> float:
        # ive = I * exp(-kappa); fine where it does not underflow (moderate orders).
        return math.log(float(ive(nu, kappa))) + kappa


def ref_log_normalizer(p: int, kappa: float) -> float:
    """log C_p(kappa) = (p/2-1) log kappa - (p/2) log(2 pi) - log I_(p/2-1)(kappa)."""
    nu = p / 2 - 1
    return nu * math.log(kappa) - p / 2 * math.log(2 * math.pi) - ref_log_bessel_i(nu, kappa)


def ref_bessel_ratio(p: int, kappa: float) -> float:
    """I_(p/2)(kappa) / I_(p/2-1)(kappa)."""
    nu = p / 2 - 1
    return math.exp(ref_log_bessel_i(nu + 1, kappa) - ref_log_bessel_i(nu, kappa))


def ref_uniform_log_density(p: int) -> float:
    """log C_p(0): one over the area 2 pi^(p/2) / Gamma(p/2) of the sphere S^(p-1)."""
    return math.lgamma(p / 2) - math.log(2) - p / 2 * math.log(math.pi)


def ref_softmax_rows(rows: list[list[float]], temp: float) -> list[list[float]]:
    out = []
    for row in rows:
        top = max(v / temp for v in row)
        exps = [math.exp(v / temp - top) for v in row]
        total = sum(exps)
        out.append([e / total for e in exps])
    return out


def ref_probability_centering(logits: torch.Tensor, center: list[float], temp: float) -> list:
    """Divide each teacher probability by the center, then renormalize (row by row)."""
    k = logits.shape[-1]
    rows = logits.reshape(-1, k).tolist()
    out = []
    for probs in ref_softmax_rows(rows, temp):
        divided = [q / c for q, c in zip(probs, center, strict=True)]
        total = sum(divided)
        out.append([v / total for v in divided])
    return out


def ref_center_update(center: list[float], logits: torch.Tensor, temp: float, m: float) -> list:
    k = logits.shape[-1]
    probs = ref_softmax_rows(logits.reshape(-1, k).tolist(), temp)
    mean = [sum(row[j] for row in probs) / len(probs) for j in range(k)]
    return [m * c + (1 - m) * b for c, b in zip(center, mean, strict=True)]


KAPPA_GRID = [10 ** (-2 + 6 * i / 24) for i in range(25)]  # 1e-2 .. 1e4

# --------------------------------------------------------------------------- log-normalizer


@pytest.mark.parametrize("p", [64, 128, 256, 384])
def test_log_normalizer_matches_high_precision_reference(p: int) -> None:
    kappa = torch.tensor(KAPPA_GRID, dtype=torch.float64)
    got = log_vmf_normalizer(kappa, dim=p)
    assert got.dtype == torch.float64
    for value, k in zip(got.tolist(), KAPPA_GRID, strict=True):
        ref = ref_log_normalizer(p, k)
        assert abs(value - ref) <= 1e-6 * abs(ref), (p, k, value, ref)


@pytest.mark.parametrize("p", [2, 3, 5, 16, 17, 33])
def test_log_normalizer_small_dimensions(p: int) -> None:
    # Below order 40 the backward ratio recurrence carries Debye's expansion down.
    kappa = [0.05, 0.7, 3.0, 12.0, 80.0, 900.0]
    got = log_vmf_normalizer(torch.tensor(kappa, dtype=torch.float64), dim=p).tolist()
    for value, k in zip(got, kappa, strict=True):
        ref = ref_log_normalizer(p, k)
        assert abs(value - ref) <= 1e-9 * max(abs(ref), 1.0), (p, k, value, ref)


@pytest.mark.parametrize("p", [2, 3, 16, 64, 256, 384])
def test_log_normalizer_at_zero_is_the_uniform_density(p: int) -> None:
    kappa = torch.tensor([0.0, 1e-30, 1e-8], dtype=torch.float64)
    got = log_vmf_normalizer(kappa, dim=p)
    assert got.tolist() == pytest.approx([ref_uniform_log_density(p)] * 3, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("p", [3, 16, 64, 256])
def test_log_normalizer_gradcheck(p: int) -> None:
    gen = torch.Generator().manual_seed(p)
    kappa = torch.cat(
        [
            torch.tensor([1e-3, 0.5, 1e3], dtype=torch.float64),
            torch.rand(6, generator=gen, dtype=torch.float64) * 200 + 0.1,
        ]
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda k: log_vmf_normalizer(k, dim=p), (kappa,))


@pytest.mark.parametrize("p", [16, 64, 128, 256, 384])
def test_derivative_is_minus_bessel_ratio(p: int) -> None:
    kappa = torch.tensor(KAPPA_GRID, dtype=torch.float64, requires_grad=True)
    log_vmf_normalizer(kappa, dim=p).sum().backward()
    assert kappa.grad is not None
    for grad, k in zip(kappa.grad.tolist(), KAPPA_GRID, strict=True):
        ref = ref_bessel_ratio(p, k)
        assert -grad == pytest.approx(ref, rel=1e-9), (p, k)


@pytest.mark.parametrize("p", [16, 64, 256, 384])
def test_float32_from_zero_to_1e5(p: int) -> None:
    values = [0.0, 1e-12, 1e-2, 1.0, 25.0, 1e3, 1e4, 1e5]
    kappa = torch.tensor(values, dtype=torch.float32, requires_grad=True)
    out = log_vmf_normalizer(kappa, dim=p)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert kappa.grad is not None and kappa.grad.dtype == torch.float32
    assert torch.isfinite(kappa.grad).all()
    # Gradients lie in [-1, 0]: the Bessel ratio is in [0, 1).
    assert ((kappa.grad <= 0) & (kappa.grad >= -1)).all()
    exact = log_vmf_normalizer(torch.tensor(values, dtype=torch.float64), dim=p)
    assert torch.allclose(out.double(), exact, rtol=1e-6, atol=1e-5)


def test_half_precision_input_returns_float32() -> None:
    kappa = torch.tensor([1.0, 30.0], dtype=torch.bfloat16, requires_grad=True)
    out = log_vmf_normalizer(kappa, dim=128)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert kappa.grad is not None and kappa.grad.dtype == torch.bfloat16


def test_negative_kappa_is_nan_and_bad_dim_raises() -> None:
    out = log_vmf_normalizer(torch.tensor([-1.0, 1.0]), dim=8)
    assert math.isnan(out[0].item()) and math.isfinite(out[1].item())
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="dim"):
            log_vmf_normalizer(torch.tensor([1.0]), dim=bad)  # type: ignore[arg-type]


def test_debye_polynomials_match_abramowitz_stegun() -> None:
    # A&S 9.3.9, typed in here: u1 = (3t - 5t^3)/24, u2 = (81t^2 - 462t^4 + 385t^6)/1152,
    # u3 = (30375t^3 - 369603t^5 + 765765t^7 - 425425t^9)/414720.
    polys = _debye_polynomials(4)
    expected = {
        1: {1: 3 / 24, 3: -5 / 24},
        2: {2: 81 / 1152, 4: -462 / 1152, 6: 385 / 1152},
        3: {3: 30375 / 414720, 5: -369603 / 414720, 7: 765765 / 414720, 9: -425425 / 414720},
    }
    for k, terms in expected.items():
        got = {i: float(c) for i, c in enumerate(polys[k]) if c != 0}
        assert got == pytest.approx(terms, rel=1e-15)


# --------------------------------------------------------------------------- prototype layer


def test_normalized_layer_is_unchanged() -> None:
    torch.manual_seed(3)
    layer = PrototypeLayer(8, 5)
    torch.manual_seed(3)
    ref = torch.empty(5, 8)
    nn.init.kaiming_uniform_(ref, a=math.sqrt(5))
    assert torch.equal(layer.weight.detach(), ref)
    y = F.normalize(torch.randn(4, 8), dim=-1)
    assert torch.equal(layer(y), F.linear(y, F.normalize(ref, dim=-1)))
    scores = layer(y)
    assert layer.adjust_logits(scores, 0.1) is scores
    assert PROTOTYPE_LAYERS["normalized"] is PrototypeLayer


def test_vmf_layer_registered_and_initialized_with_unit_norms() -> None:
    assert PROTOTYPE_LAYERS["vmf"] is VMFPrototypeLayer
    torch.manual_seed(4)
    plain = PrototypeLayer(16, 12)
    torch.manual_seed(4)
    vmf = VMFPrototypeLayer(16, 12)
    # DINO's weight-normed last layer with weight_g = 1: same directions, unit norms.
    assert torch.allclose(vmf.weight.norm(dim=-1), torch.ones(12), atol=1e-6)
    assert torch.allclose(vmf.weight, F.normalize(plain.weight, dim=-1))
    head = DINOHead(
        in_dim=10, num_prototypes=12, hidden_dim=8, bottleneck_dim=16, prototype_layer="vmf"
    )
    assert isinstance(head.prototypes, VMFPrototypeLayer)


@pytest.mark.parametrize("temperature", [0.04, 0.07, 0.1, 0.5])
@pytest.mark.parametrize("p,k", [(8, 5), (64, 7)])
def test_vmf_logits_match_the_formula(temperature: float, p: int, k: int) -> None:
    gen = torch.Generator().manual_seed(p * k)
    layer = VMFPrototypeLayer(p, k).double()
    with torch.no_grad():
        # Free norms: spread them over two orders of magnitude.
        scales = torch.logspace(-1, 1, k, dtype=torch.float64)
        layer.weight.mul_(scales[:, None])
    y = F.normalize(torch.randn(6, p, generator=gen, dtype=torch.float64), dim=-1)
    scores = layer(y)
    logits = layer.adjust_logits(scores, temperature) / temperature
    w, ys = layer.weight.detach().tolist(), y.tolist()
    for b in range(6):
        for j in range(k):
            dot = sum(a * c for a, c in zip(w[j], ys[b], strict=True))
            norm = math.sqrt(sum(a * a for a in w[j]))
            ref = dot / temperature + ref_log_normalizer(p, norm / temperature)
            assert scores[b, j].item() == pytest.approx(dot, rel=1e-12, abs=1e-12)
            assert logits[b, j].item() == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_vmf_logits_gradcheck_in_the_prototypes() -> None:
    # The logits' gradient in w (through <w, y> and through kappa = ||w|| / tau)
    # against finite differences of the layer itself.
    torch.manual_seed(5)
    layer = VMFPrototypeLayer(12, 4).double()
    y = F.normalize(torch.randn(3, 12, dtype=torch.float64), dim=-1)
    scales = torch.tensor([[0.5], [1.0], [2.0], [4.0]], dtype=torch.float64)
    weight = (layer.weight.detach() * scales).requires_grad_()

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, y: torch.Tensor) -> torch.Tensor:
            return self.layer.adjust_logits(self.layer(y), 0.1) / 0.1

    module = Logits()

    def logits(w: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.func.functional_call(module, {"layer.weight": w}, (y,))
        return out

    assert torch.autograd.gradcheck(logits, (weight,))


def test_vmf_layer_rejects_bad_temperature() -> None:
    layer = VMFPrototypeLayer(8, 4)
    with pytest.raises(ValueError, match="temperature"):
        layer.adjust_logits(torch.zeros(2, 4), 0.0)


# --------------------------------------------------------------------------- probability centering


def random_center(k: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    raw = [rng.uniform(0.05, 1.0) for _ in range(k)]
    return [v / sum(raw) for v in raw]


@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 4, 8), (3, 7, 8), (5, 8)])
@pytest.mark.parametrize("temp", [0.04, 0.07, 0.5, 1.0])
def test_targets_match_reference(shape: tuple[int, ...], temp: float) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.3
    builder = ProbabilityCentering(num_prototypes=8, momentum=0.9).double()
    center = random_center(8, seed=len(shape))
    builder.center.copy_(torch.tensor([center], dtype=torch.float64))
    before = {k: v.clone() for k, v in builder.state_dict().items()}
    probs = builder.targets(logits, teacher_temp=temp)
    assert probs.shape == logits.shape
    ref = ref_probability_centering(logits, center, temp)
    assert torch.allclose(probs.reshape(-1, 8), torch.tensor(ref, dtype=torch.float64), atol=1e-12)
    # Distributions, and targets() is pure.
    assert (probs >= 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(shape[:-1], dtype=torch.float64))
    assert all(torch.equal(before[k], v) for k, v in builder.state_dict().items())


def test_uniform_center_gives_plain_softmax() -> None:
    logits = torch.randn(2, 3, 16)
    probs = ProbabilityCentering(16).targets(logits, teacher_temp=0.07)
    assert torch.allclose(probs, torch.softmax(logits / 0.07, dim=-1), atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("crops,batch,temp", [(1, 3, 0.04), (2, 4, 0.07), (3, 2, 1.0)])
def test_center_update_matches_reference(
    momentum: float, crops: int, batch: int, temp: float
) -> None:
    gen = torch.Generator().manual_seed(crops * 10 + batch)
    builder = ProbabilityCentering(num_prototypes=6, momentum=momentum).double()
    center = builder.center[0].tolist()
    for _ in range(3):
        logits = torch.randn(crops, batch, 6, generator=gen, dtype=torch.float64) * 0.2
        builder.update(logits, teacher_temp=temp)
        center = ref_center_update(center, logits, temp, momentum)
        assert torch.allclose(
            builder.center[0], torch.tensor(center, dtype=torch.float64), atol=1e-14
        )
        # The center stays a distribution over prototypes.
        assert builder.center.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_update_without_temperature_uses_the_configured_one() -> None:
    logits = torch.randn(2, 4, 10, dtype=torch.float64)
    a = ProbabilityCentering(10, momentum=0.8, teacher_temp=0.07).double()
    b = ProbabilityCentering(10, momentum=0.8).double()
    a.update(logits)
    b.update(logits, teacher_temp=0.07)
    assert torch.equal(a.center, b.center)
    ref = ref_center_update([0.1] * 10, logits, 0.07, 0.8)
    assert torch.allclose(a.center[0], torch.tensor(ref, dtype=torch.float64), atol=1e-14)


def test_center_is_averaged_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two simulated ranks: the other one's batch-mean probabilities are fixed.
    other = torch.full((1, 4), 0.25)
    other[0, 0] = 0.7
    other[0, 1:] = 0.1
    calls = []

    def fake_all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
        calls.append(tensor.clone())
        return (tensor + other) / 2

    monkeypatch.setattr(pc_module, "all_reduce_mean", fake_all_reduce_mean)
    builder = ProbabilityCentering(4, momentum=0.5)
    logits = torch.randn(2, 3, 4)
    builder.update(logits, teacher_temp=0.1)
    local = torch.softmax(logits / 0.1, dim=-1).reshape(-1, 4).mean(0, keepdim=True)
    assert len(calls) == 1 and torch.allclose(calls[0], local)
    expected = 0.5 * torch.full((1, 4), 0.25) + 0.5 * (local + other) / 2
    assert torch.allclose(builder.center, expected)


def test_dead_prototype_center_keeps_targets_finite() -> None:
    builder = ProbabilityCentering(4)
    builder.center.copy_(torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    probs = builder.targets(torch.randn(3, 4), teacher_temp=0.04)
    assert torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(-1), torch.ones(3))


def test_half_precision_logits_give_float32_targets() -> None:
    logits = torch.randn(2, 3, 8).to(torch.bfloat16)
    builder = ProbabilityCentering(8)
    probs = builder.targets(logits, teacher_temp=0.04)
    assert probs.dtype == torch.float32
    builder.update(logits, teacher_temp=0.04)
    assert builder.center.dtype == torch.float32


def test_registry_state_and_validation() -> None:
    assert TARGET_BUILDERS["probability-centering"] is ProbabilityCentering
    builder = build_target_builder(
        "probability-centering", num_prototypes=8, shared={"momentum": 0.5}
    )
    assert isinstance(builder, ProbabilityCentering) and builder.momentum == 0.5
    assert "center" in builder.state_dict()
    for kwargs in (
        {"num_prototypes": 0},
        {"num_prototypes": 4, "momentum": 1.0},
        {"num_prototypes": 4, "teacher_temp": 0.0},
    ):
        with pytest.raises(ValueError):
            ProbabilityCentering(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        ProbabilityCentering(8).targets(torch.randn(2, 7), teacher_temp=0.1)
    with pytest.raises(ValueError, match="teacher_temp"):
        ProbabilityCentering(8).targets(torch.randn(2, 8), teacher_temp=0.0)


# --------------------------------------------------------------------------- end to end

TINY = [
    "model.backbone=vit_tiny",
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "data.num_local_crops=2",
]


@pytest.mark.parametrize("preset", ["dino-vmf", "dino-vmf-kp"])
def test_dino_vmf_trains(preset: str) -> None:
    torch.manual_seed(0)
    cfg = load_config(preset, overrides=TINY)
    method = build_method(cfg)
    assert isinstance(method.student.head.prototypes, VMFPrototypeLayer)
    assert isinstance(method.target_builder, ProbabilityCentering)
    norms_before = method.student_prototypes().detach().norm(dim=-1).clone()
    assert torch.allclose(norms_before, torch.ones(32), atol=1e-6)
    params = [p for p in method.student.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    crops = random_crops(batch=6, seed=1)
    losses = []
    for _ in range(6):
        out = method.training_step(crops, teacher_temp=cfg.objective.teacher_temp)
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        method.update_teacher(0.9)
        losses.append(out.loss.item())
        assert math.isfinite(out.loss.item())
        assert all(math.isfinite(v) for v in out.terms.values())
    assert losses[-1] < losses[0]
    norms_after = method.student_prototypes().detach().norm(dim=-1)
    # Free norms: the cross-entropy moves the concentrations away from 1/tau.
    assert (norms_after - norms_before).abs().max() > 1e-3
    # The center moved off uniform and is still a distribution.
    center = method.target_builder.center
    assert not torch.allclose(center, torch.full_like(center, 1 / 32))
    assert center.sum().item() == pytest.approx(1.0, abs=1e-5)
    if preset == "dino-vmf-kp":
        assert "prototype_regularizer" in out.terms
