"""SwAV: swapped prediction vs a reference from the paper, codes, prototypes, queue, runs."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference import random_crops, reference_sinkhorn

import protossl.methods.swav  # noqa: F401  (registers "swav")
import protossl.objectives.sinkhorn  # noqa: F401  (registers the "sinkhorn" target)
from protossl.config import Config, load_config
from protossl.core.errors import UserError
from protossl.methods import StepContext, build_method
from protossl.methods.swav import SwAV
from protossl.objectives import multicrop_cross_entropy
from protossl.objectives.sinkhorn import SinkhornKnoppTargets

TINY = [
    "model.backbone=vit_tiny",
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "data.num_local_crops=2",
    "swav.freeze_prototypes_steps=0",
]


def tiny(preset: str = "swav", *extra: str) -> Config:
    return load_config(preset, overrides=[*TINY, *extra])


def build_swav(cfg: Config) -> SwAV:
    method = build_method(cfg)
    assert isinstance(method, SwAV)
    return method


# ------------------------------------------------------------- references (paper)


def reference_swapped_prediction(
    scores: torch.Tensor, codes: torch.Tensor, temperature: float
) -> torch.Tensor:
    # Official main_swav.py: for each global crop i, sum over every other crop v of
    # -mean_b sum_k q_i log softmax(s_v / T), divided by (V - 1); then mean over i.
    num_views = scores.shape[0]
    loss = scores.new_zeros((), dtype=torch.float64)
    for i in range(codes.shape[0]):
        subloss = scores.new_zeros((), dtype=torch.float64)
        for v in range(num_views):
            if v == i:
                continue
            p = torch.softmax(scores[v].double() / temperature, dim=1)
            subloss = subloss - torch.mean(torch.sum(codes[i].double() * torch.log(p), dim=1))
        loss = loss + subloss / (num_views - 1)
    return loss / codes.shape[0]


# ------------------------------------------------------------ swapped prediction


@pytest.mark.parametrize("batch", [1, 5, 16])
@pytest.mark.parametrize("num_views", [2, 3, 8])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_swapped_prediction_formula(batch: int, num_views: int, temperature: float) -> None:
    # The loss SwAV computes (DINO's pair-averaged multi-crop cross-entropy with the
    # codes of the 2 global crops) equals the official per-crop averaging.
    torch.manual_seed(batch * 100 + num_views)
    scores = F.normalize(torch.randn(num_views, batch, 24, dtype=torch.float64), dim=-1)
    codes = torch.stack([reference_sinkhorn(scores[i], 0.05, 3) for i in range(2)])
    got = multicrop_cross_entropy(scores, codes, student_temp=temperature)
    torch.testing.assert_close(got, reference_swapped_prediction(scores, codes, temperature))


@pytest.mark.parametrize(
    "batch,num_local,temperature,epsilon",
    [(3, 0, 0.1, 0.05), (6, 2, 0.1, 0.05), (8, 3, 0.2, 0.1), (5, 1, 0.05, 0.03)],
)
def test_training_step_matches_reference(
    batch: int, num_local: int, temperature: float, epsilon: float
) -> None:
    torch.manual_seed(0)
    cfg = tiny(
        "swav",
        f"data.num_local_crops={num_local}",
        f"objective.student_temp={temperature}",
        f"swav.epsilon={epsilon}",
    )
    method = build_swav(cfg)
    with torch.no_grad():  # unnormalized prototypes: the step must renormalize them first
        method.student.head.prototypes.weight.mul_(3.0)
    crops = random_crops(batch, num_local)
    out = method.training_step(crops, teacher_temp=0.04)  # teacher_temp: unused
    out.loss.backward()
    # (None: parameters the step does not use, e.g. the ViT's mask token.)
    got_grads = [None if p.grad is None else p.grad.clone() for p in method.student.parameters()]
    method.zero_grad()

    # Reference: bottleneck y, cosine scores with unit prototypes, codes of the 2
    # global crops without gradient, swapped prediction over every other crop.
    net = method.student
    w = net.head.prototypes.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(w.shape[0]))
    feats = [net.backbone(c) for c in crops]
    y = torch.stack([F.normalize(net.head.mlp(f), dim=-1) for f in feats])
    scores = y @ (w / w.norm(dim=1, keepdim=True)).t()
    codes = torch.stack([reference_sinkhorn(scores[i].detach(), epsilon, 3) for i in range(2)])
    ref = reference_swapped_prediction(scores, codes, temperature)
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-6)
    assert out.terms["swapped_prediction"] == pytest.approx(ref.item(), rel=1e-5)
    ref.backward()
    for got, param in zip(got_grads, method.student.parameters(), strict=True):
        if got is None:
            assert param.grad is None
        else:
            assert param.grad is not None
            torch.testing.assert_close(got, param.grad, rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------- codes


@pytest.mark.parametrize("batch,k", [(4, 32), (16, 8), (7, 50)])
def test_codes_have_no_gradient_and_sinkhorn_marginals(batch: int, k: int) -> None:
    torch.manual_seed(k)
    method = build_method(tiny("swav", f"model.num_prototypes={k}", f"data.batch_size={batch}"))
    assert isinstance(method, SwAV)
    scores = F.normalize(torch.randn(2, batch, k), dim=-1).requires_grad_(True)
    embeddings = torch.randn(2, batch, 16, requires_grad=True)
    codes = method.compute_codes(scores, embeddings, epoch=0)
    assert not codes.requires_grad and codes.grad_fn is None
    assert codes.shape == (2, batch, k)
    for i in range(2):
        torch.testing.assert_close(
            codes[i].double(), reference_sinkhorn(scores[i].detach(), 0.05, 3), rtol=1e-5, atol=1e-7
        )
    torch.testing.assert_close(codes.sum(-1), torch.ones(2, batch))  # each code a distribution

    # Converged Sinkhorn-Knopp: every prototype gets B / K of each crop's mass.
    many = build_method(
        tiny(
            "swav",
            f"model.num_prototypes={k}",
            "swav.sinkhorn_iterations=300",
            "swav.epsilon=0.5",
        )
    )
    assert isinstance(many, SwAV)
    balanced = many.compute_codes(scores, embeddings, epoch=0)
    torch.testing.assert_close(
        balanced.sum(dim=1), torch.full((2, k), batch / k), atol=1e-4, rtol=0
    )


# ----------------------------------------------------------------- prototypes


def test_prototypes_are_unit_norm_after_each_step() -> None:
    torch.manual_seed(0)
    method = build_swav(tiny())
    w = method.student_prototypes()
    with torch.no_grad():
        w.mul_(torch.rand(w.shape[0], 1) * 5 + 0.1)
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=0.05)
    for step in range(3):
        out = method.training_step(random_crops(seed=step), 0.04, StepContext(step=step))
        torch.testing.assert_close(w.norm(dim=1), torch.ones(w.shape[0]))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert not torch.allclose(w.norm(dim=1), torch.ones(w.shape[0]))  # the step moved them


def test_prototypes_frozen_for_the_first_steps_then_trained() -> None:
    torch.manual_seed(0)
    method = build_swav(tiny("swav", "swav.freeze_prototypes_steps=3"))
    w = method.student_prototypes()
    initial = F.normalize(w.detach(), dim=1).clone()
    backbone_before = [p.detach().clone() for p in method.student.backbone.parameters()]
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=1e-2)
    for step in range(5):
        context = StepContext(step=step, steps_per_epoch=5, total_steps=5)
        out = method.training_step(random_crops(seed=step), 0.04, context)
        optimizer.zero_grad()
        out.loss.backward()
        frozen = method.frozen_parameters(context)
        assert [id(p) for p in frozen] == ([id(w)] if step < 3 else [])
        for param in frozen:
            param.grad = None
        optimizer.step()
        if step < 3:
            torch.testing.assert_close(w.detach(), initial, rtol=0, atol=1e-7)
    assert not torch.allclose(F.normalize(w.detach(), dim=1), initial, atol=1e-4)
    # The rest of the network trained all along.
    changed = [
        not torch.equal(a, b)
        for a, b in zip(backbone_before, method.student.backbone.parameters(), strict=True)
    ]
    assert any(changed)


# ---------------------------------------------------------------------- queue


def test_queue_fills_rolls_is_used_when_full_and_survives_state_dict() -> None:
    torch.manual_seed(0)
    batch = 4
    cfg = tiny(
        "swav",
        f"data.batch_size={batch}",
        "swav.queue_length=10",  # cut to a multiple of the batch: 8
        "swav.queue_start_epoch=1",
    )
    method = build_swav(cfg)
    assert method.queue.shape == (2, 8, 16)
    assert "queue" in method.state_dict() and "queue_size" in method.state_dict()

    def embeddings_of(crops: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return method.student.forward_all(crops)[1][:2]

    # Before queue_start_epoch the queue stays empty.
    method.training_step(random_crops(batch, seed=10), 0.04, StepContext(step=0, epoch=0))
    assert int(method.queue_size) == 0 and torch.count_nonzero(method.queue) == 0

    history = []
    for step in range(3):
        crops = random_crops(batch, seed=20 + step)
        history.append(embeddings_of(crops))
        queue_before = method.queue.clone()
        size_before = int(method.queue_size)
        scores = method.student.forward_all(crops)[0][:2].detach()
        w = F.normalize(method.student_prototypes().detach(), dim=1)
        codes = method.compute_codes(scores, history[-1], epoch=1)
        if size_before < 8:
            # Not full yet: codes from the batch alone.
            expected = [reference_sinkhorn(scores[i], 0.05, 3) for i in range(2)]
        else:
            # Full: the queue's scores go in front of the batch's; keep the batch's codes.
            expected = [
                reference_sinkhorn(torch.cat([queue_before[i] @ w.t(), scores[i]]), 0.05, 3)[
                    -batch:
                ]
                for i in range(2)
            ]
        torch.testing.assert_close(codes.double(), torch.stack(expected), rtol=1e-5, atol=1e-7)
        assert int(method.queue_size) == min(8, (step + 1) * batch)
        # Newest first, then the older entries, the oldest falling off.
        torch.testing.assert_close(method.queue[:, :batch], history[-1])
        if step >= 1:
            torch.testing.assert_close(method.queue[:, batch:], history[-2])
    assert not torch.allclose(history[0], method.queue[:, batch:])  # step 0's batch rolled out

    # Saved and restored with the rest of the state (weights_only round trip).
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = build_swav(cfg)
    assert int(restored.queue_size) == 0
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.queue, method.queue)
    assert int(restored.queue_size) == 8


def test_queue_length_below_batch_is_a_user_error() -> None:
    with pytest.raises(UserError, match="queue_length"):
        build_method(tiny("swav", "data.batch_size=16", "swav.queue_length=10"))


# ------------------------------------------------------------- teacher alias


def test_no_teacher_copy_and_teacher_api_uses_the_student() -> None:
    torch.manual_seed(0)
    method = build_swav(tiny())
    assert method.teacher is method.student
    keys = list(method.state_dict())
    assert not any(k.startswith("teacher.") for k in keys)
    assert sum(p.numel() for p in method.parameters()) == sum(
        p.numel() for p in method.student.parameters()
    )
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.update_teacher(0.5)  # a no-op
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
    images = torch.randn(3, 3, 16, 16)
    method.eval()
    torch.testing.assert_close(method.teacher_logits(images), method.student([images])[0])
    assert method.teacher_prototypes() is method.student_prototypes()
    assert method.teacher_features(images).shape == (3, method.student.backbone.embed_dim)


# ---------------------------------------------------------------- full runs


@pytest.mark.parametrize("preset", ["swav", "swav-kp"])
def test_few_adamw_steps_lower_the_loss(preset: str) -> None:
    torch.manual_seed(0)
    method = build_swav(tiny(preset))
    crops = random_crops(8)
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=1e-3)
    losses = []
    for step in range(6):
        out = method.training_step(crops, 0.04, StepContext(step=step))
        assert math.isfinite(out.terms["loss"])
        if preset == "swav-kp":
            assert "prototype_regularizer" in out.terms
        losses.append(out.terms["loss"])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]


def test_swav_rejects_other_targets() -> None:
    with pytest.raises(UserError, match="objective.target"):
        build_method(tiny("swav", "objective.target=centering"))
    with pytest.raises(UserError, match="target_options"):
        build_method(tiny("swav", "objective.target_options={iterations: 5}"))


def test_presets_describe_swav() -> None:
    for name, koleo in (("swav", "none"), ("swav-kp", "koleo")):
        cfg = load_config(name)
        assert (cfg.method, cfg.objective.target, cfg.objective.student_temp) == (
            "swav",
            "sinkhorn",
            0.1,
        )
        assert cfg.objective.prototype_regularizer == koleo
        assert cfg.optim.freeze_last_layer_epochs == 0
    assert load_config("swav-kp").objective.regularizer_weight == 0.1


def test_dino_with_sinkhorn_target_trains_a_step() -> None:
    torch.manual_seed(0)
    cfg = tiny("dino", "objective.target=sinkhorn", "objective.target_options={iterations: 4}")
    method = build_method(cfg)
    builder = method.target_builder
    assert isinstance(builder, SinkhornKnoppTargets) and builder.iterations == 4
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in method.student.parameters()]
    out = method.training_step(random_crops(), teacher_temp=0.04)
    assert math.isfinite(out.terms["loss"])
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    after = list(method.student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


# ------------------------------------------------------------------ trainer


def test_trainer_resume_with_queue_is_exact(tmp_path: Path) -> None:
    from protossl.engine.trainer import Trainer

    # digits@lt=100 keeps 354 training images: 5 steps of 64 per epoch. The queue (2
    # batches) fills during epoch 0, is used from its third step on, and the resumed
    # epoch 1 must start from the queue saved in the checkpoint.
    extra = [
        "data.spec=digits@lt=100",
        "data.batch_size=64",
        "data.num_local_crops=1",
        "optim.epochs=2",
        "optim.warmup_epochs=1",
        "swav.freeze_prototypes_steps=3",
        "swav.queue_length=128",
        "swav.queue_start_epoch=0",
        "monitor.monitor_samples=32",
        "monitor.eval_knn=false",
    ]
    full, split = tmp_path / "full", tmp_path / "split"
    Trainer(tiny("swav", *extra), full, progress=False).fit()
    Trainer(tiny("swav", *extra), split, progress=False).fit(stop_after_epochs=1)
    Trainer(tiny("swav", *extra), split, resume=True, progress=False).fit()
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["method"]
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=True)["method"]
    assert int(a["queue_size"]) == 128
    assert set(a) == set(b)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
