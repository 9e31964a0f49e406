"""Prototype/embedding regularizers, their composition, and how configs reach them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from protossl.config import load_config
from protossl.core.errors import UserError
from protossl.methods import StepContext, build_method
from protossl.methods.regularizers import Regularizers
from protossl.objectives.embedding import KoLeoEmbedding
from protossl.objectives.koleo import KoLeoProto
from protossl.objectives.pairwise import PairwiseDistanceRegularizer, pairwise_distance_loss

TINY = [
    "model.backbone=vit_tiny",
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "data.num_local_crops=2",
]


def crops(batch: int = 6) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 16, 16, generator=gen) for _ in range(2)] + [
        torch.randn(batch, 3, 8, 8, generator=gen) for _ in range(2)
    ]


# ---------------------------------------------------------------- naive pairwise


def reference_pairwise(prototypes: torch.Tensor) -> torch.Tensor:
    # Literally -(1/K^2) sum_{i,j} ||mu_i - mu_j||^2 over all ordered pairs.
    unit = prototypes / prototypes.norm(dim=1, keepdim=True)
    diff = unit[:, None, :] - unit[None, :, :]
    return -(diff**2).sum() / prototypes.shape[0] ** 2


@pytest.mark.parametrize("k,d", [(2, 3), (17, 8), (64, 16)])
def test_pairwise_equals_its_definition(k: int, d: int) -> None:
    torch.manual_seed(k)
    w = torch.randn(k, d, dtype=torch.float64)
    torch.testing.assert_close(
        pairwise_distance_loss(w).double(),
        reference_pairwise(w).float().double(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_pairwise_gradient_matches_definition() -> None:
    torch.manual_seed(0)
    w1 = torch.randn(12, 5, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    pairwise_distance_loss(w1).backward()
    reference_pairwise(w2).backward()
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-4, atol=1e-6)


def test_pairwise_cannot_see_antipodal_collapse() -> None:
    # Two groups of K/2 identical prototypes pointing in opposite directions: only 2
    # distinct directions, yet the naive regularizer is at its minimum (-2) and its
    # gradient vanishes, while KoLeo-proto is huge and pushes them apart.
    torch.manual_seed(0)
    direction = F.normalize(torch.randn(1, 8), dim=1)
    w = torch.cat([direction.repeat(16, 1), -direction.repeat(16, 1)]).requires_grad_(True)
    loss = pairwise_distance_loss(w)
    loss.backward()
    assert loss.item() == pytest.approx(-2.0, abs=1e-6)
    assert w.grad is not None and w.grad.abs().max().item() < 1e-6
    assert KoLeoProto(weight=1.0)(w.detach()).item() > 10.0


def test_pairwise_weight_and_bad_weight() -> None:
    w = torch.randn(8, 4)
    assert PairwiseDistanceRegularizer(0.3)(w).item() == pytest.approx(
        0.3 * pairwise_distance_loss(w).item()
    )
    with pytest.raises(ValueError):
        PairwiseDistanceRegularizer(-1.0)


# ---------------------------------------------------------------- KoLeo on embeddings


def reference_koleo(x: torch.Tensor, eps: float) -> torch.Tensor:
    unit = x / x.norm(dim=1, keepdim=True)
    dist = torch.cdist(unit, unit) + torch.diag(torch.full((x.shape[0],), float("inf")))
    return -torch.log(dist.min(dim=1).values + eps).mean()


@pytest.mark.parametrize("num_crops,batch,dim", [(1, 2, 3), (2, 8, 16), (3, 33, 7)])
@pytest.mark.parametrize("weight", [0.1, 1.0])
def test_koleo_embedding_sums_over_crops(
    num_crops: int, batch: int, dim: int, weight: float
) -> None:
    torch.manual_seed(batch)
    x = torch.randn(num_crops, batch, dim, dtype=torch.float64)
    expected = weight * sum(reference_koleo(crop, 1e-8) for crop in x)
    got = KoLeoEmbedding(weight=weight)(x)
    torch.testing.assert_close(got, expected)
    if num_crops == 1:
        torch.testing.assert_close(KoLeoEmbedding(weight=weight)(x[0]), expected)


def test_koleo_embedding_bad_arguments() -> None:
    with pytest.raises(ValueError):
        KoLeoEmbedding(weight=-0.1)
    with pytest.raises(ValueError):
        KoLeoEmbedding()(torch.randn(2, 3, 4, 5))


# ---------------------------------------------------------------- composition


def test_regularizers_sum_the_configured_terms() -> None:
    torch.manual_seed(0)
    cfg = load_config(
        "dino-kp",
        overrides=[
            "objective.embedding_regularizer=koleo",
            "objective.embedding_regularizer_weight=0.5",
        ],
    )
    regs = Regularizers.from_config(cfg.objective, num_prototypes=32)
    prototypes, embeddings = torch.randn(32, 8), torch.randn(2, 6, 8)
    total, terms = regs(prototypes=prototypes, embeddings=embeddings)
    expected_p = 0.1 * reference_koleo(prototypes, 1e-8)
    expected_e = 0.5 * (reference_koleo(embeddings[0], 1e-8) + reference_koleo(embeddings[1], 1e-8))
    assert total is not None
    torch.testing.assert_close(total, expected_p + expected_e, rtol=1e-5, atol=1e-6)
    assert terms["prototype_regularizer"] == pytest.approx(expected_p.item(), rel=1e-5)
    assert terms["embedding_regularizer"] == pytest.approx(expected_e.item(), rel=1e-5)


def test_regularizers_missing_input_is_an_error_and_lazy_inputs_are_skipped() -> None:
    regs = Regularizers.from_config(load_config("dino-kp").objective, num_prototypes=32)
    with pytest.raises(ValueError, match="prototype_regularizer"):
        regs()
    called = []
    total, terms = regs(
        prototypes=torch.randn(32, 4), student_probs=lambda: called.append(1) or torch.ones(1)
    )
    assert called == [] and set(terms) == {"prototype_regularizer"}
    none_total, none_terms = Regularizers.from_config(
        load_config("dino").objective, num_prototypes=32
    )()
    assert none_total is None and none_terms == {}


def test_unknown_regularizer_names_are_user_errors() -> None:
    for key in ("prototype_regularizer", "mlcd_regularizer", "embedding_regularizer"):
        cfg = load_config("dino", overrides=[f"objective.{key}=nope"])
        with pytest.raises(UserError, match="nope"):
            Regularizers.from_config(cfg.objective, num_prototypes=8)


# ---------------------------------------------------------------- config plumbing


def test_koleo_proto_options_reach_the_module() -> None:
    cfg = load_config(
        "dino-kp",
        overrides=[
            *TINY,
            "objective.prototype_regularizer_options.refresh_every=5",
            "objective.prototype_regularizer_options.num_candidates=4",
        ],
    )
    method = build_method(cfg)
    module = method.regularizers.prototype
    assert isinstance(module, KoLeoProto)
    assert module.refresh_every == 5 and module.num_candidates == 4
    # The options also survive a round trip through the saved config.
    from protossl.config import config_from_dict

    again = config_from_dict(cfg.to_dict())
    assert again.objective.prototype_regularizer_options == {
        "refresh_every": 5,
        "num_candidates": 4,
    }


def test_bad_regularizer_option_is_a_user_error() -> None:
    cfg = load_config(
        "dino-kp", overrides=[*TINY, "objective.prototype_regularizer_options.nope=1"]
    )
    with pytest.raises(UserError, match="nope"):
        build_method(cfg)


def test_option_mapping_must_be_a_mapping() -> None:
    with pytest.raises(UserError, match="mapping"):
        load_config("dino", overrides=["objective.target_options=3"])


def test_unsupported_target_is_rejected_by_build_method(monkeypatch: pytest.MonkeyPatch) -> None:
    from protossl.methods.dino import DINO

    monkeypatch.setattr(DINO, "supported_targets", ("centering",))
    cfg = load_config("dino", overrides=[*TINY, "objective.target=sinkhorn"])
    with pytest.raises(UserError, match="cannot use objective.target='sinkhorn'"):
        build_method(cfg)


def test_embedding_regularizer_in_dino_uses_backbone_features_of_global_crops() -> None:
    torch.manual_seed(0)
    cfg = load_config(
        "dino",
        overrides=[
            *TINY,
            "objective.embedding_regularizer=koleo",
            "objective.embedding_regularizer_weight=1.0",
        ],
    )
    method = build_method(cfg)
    views = crops()
    out = method.training_step(views, 0.04, StepContext())
    with torch.no_grad():
        features = torch.stack([method.student.backbone(v) for v in views[:2]])
    expected = reference_koleo(features[0], 1e-8) + reference_koleo(features[1], 1e-8)
    assert out.terms["embedding_regularizer"] == pytest.approx(expected.item(), rel=1e-4)
    assert out.terms["loss"] == pytest.approx(
        out.terms["cross_entropy"] + out.terms["embedding_regularizer"], rel=1e-5
    )


def test_pairwise_preset_style_override_trains_in_dino() -> None:
    torch.manual_seed(0)
    cfg = load_config("dino", overrides=[*TINY, "objective.prototype_regularizer=pairwise"])
    method = build_method(cfg)
    out = method.training_step(crops(), 0.04)
    expected = 0.1 * pairwise_distance_loss(method.student_prototypes().detach())
    assert out.terms["prototype_regularizer"] == pytest.approx(expected.item(), rel=1e-5)
    assert math.isfinite(out.terms["loss"])
