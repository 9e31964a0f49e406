"""iBOT: block masking, the masked patch loss vs the paper's formula, full training steps."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import random_crops

import protossl.methods.ibot  # noqa: F401  (registers "ibot")
from protossl.config import Config, load_config
from protossl.core.errors import UserError
from protossl.data.masking import BlockMasking, block_mask
from protossl.engine.schedules import linear_warmup_schedule
from protossl.engine.trainer import Schedules
from protossl.methods import StepContext, build_method
from protossl.methods.ibot import IBOT
from protossl.objectives.ibot import MaskedPatchCrossEntropy, masked_patch_cross_entropy

TINY = [
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "data.batch_size=8",
    "data.num_local_crops=2",
]


def tiny(preset: str = "ibot", *extra: str) -> Config:
    return load_config(preset, overrides=[*TINY, *extra])


def build_ibot(cfg: Config) -> IBOT:
    torch.manual_seed(0)
    method = build_method(cfg)
    assert isinstance(method, IBOT)
    return method


# ------------------------------------------------------------------ masking


@pytest.mark.parametrize("grid", [(4, 4), (14, 14), (3, 7), (2, 2), (1, 5), (1, 1)])
def test_block_mask_has_exactly_the_requested_count(grid: tuple[int, int]) -> None:
    rows, cols = grid
    rng = random.Random(0)
    for num in range(rows * cols + 1):
        for _ in range(3):
            mask = block_mask(rows, cols, num, rng)
            assert mask.shape == grid and mask.dtype == bool
            assert int(mask.sum()) == num


def _adjacent_masked_pairs(mask: torch.Tensor) -> int:
    m = mask.long()
    return int((m[:, 1:] * m[:, :-1]).sum() + (m[1:, :] * m[:-1, :]).sum())


def test_block_masks_are_blocks_not_scattered_patches() -> None:
    # Rectangles make masked patches touch: far more masked 4-neighbour pairs than a
    # uniformly random mask with the same count (iBOT/BEiT block-wise masking).
    rng = random.Random(3)
    gen = torch.Generator().manual_seed(3)
    block_pairs = random_pairs = 0
    for _ in range(200):
        mask = torch.from_numpy(block_mask(14, 14, 40, rng))
        block_pairs += _adjacent_masked_pairs(mask)
        scattered = torch.zeros(196, dtype=torch.bool)
        scattered[torch.randperm(196, generator=gen)[:40]] = True
        random_pairs += _adjacent_masked_pairs(scattered.view(14, 14))
    assert block_pairs > 2.5 * random_pairs


def test_block_mask_rejects_bad_arguments() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError, match="num_masked"):
        block_mask(4, 4, 17, rng)
    with pytest.raises(ValueError, match="grid"):
        block_mask(0, 4, 0, rng)
    with pytest.raises(ValueError, match="min_aspect"):
        block_mask(4, 4, 3, rng, min_aspect=0.0)
    with pytest.raises(ValueError, match="mask_ratio"):
        BlockMasking(mask_ratio=(0.5, 0.1))
    with pytest.raises(ValueError, match="mask_ratio"):
        BlockMasking(mask_ratio=(0.1, 1.0))
    with pytest.raises(ValueError, match="mask_probability"):
        BlockMasking(mask_probability=1.5)


@pytest.mark.parametrize("batch", [1, 3, 8, 33])
@pytest.mark.parametrize("probability", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("grid", [(4, 4), (14, 14), (3, 5)])
def test_masks_follow_the_drawn_ratios_and_fraction(
    batch: int, probability: float, grid: tuple[int, int]
) -> None:
    torch.manual_seed(batch)
    masking = BlockMasking(mask_ratio=(0.1, 0.5), mask_probability=probability)
    ratios = masking.draw_ratios(batch)
    masks = masking.masks_for_ratios(ratios, grid)
    assert masks.shape == (batch, *grid) and masks.dtype == torch.bool
    # Exactly round-half-up(p * B) images get a ratio, drawn within the range.
    expected_images = math.floor(probability * batch + 0.5)
    assert int((ratios > 0).sum()) == expected_images
    drawn = ratios[ratios > 0]
    assert bool(((drawn >= 0.1) & (drawn <= 0.5)).all())
    # Each image has floor(ratio * N) masked patches: the block granularity is one patch.
    num_patches = grid[0] * grid[1]
    counts = masks.flatten(1).sum(1)
    expected = torch.floor(ratios * num_patches).long()
    assert torch.equal(counts, expected)


def test_ratios_are_uniform_over_the_range() -> None:
    torch.manual_seed(0)
    ratios = BlockMasking(mask_ratio=(0.1, 0.5), mask_probability=1.0).draw_ratios(20000)
    assert abs(float(ratios.mean()) - 0.3) < 0.005
    assert abs(float(ratios.var()) - 0.4**2 / 12) < 0.001  # variance of U(0.1, 0.5)


def test_masks_are_deterministic_under_the_global_seed() -> None:
    masking = BlockMasking()
    torch.manual_seed(7)
    first = masking(16, (4, 4))
    torch.manual_seed(7)
    again = masking(16, (4, 4))
    torch.manual_seed(8)
    other = masking(16, (4, 4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # An explicit generator leaves the global stream alone.
    state = torch.get_rng_state()
    a = masking(16, (4, 4), generator=torch.Generator().manual_seed(1))
    b = masking(16, (4, 4), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())


# ------------------------------------------------------- patch loss (reference)


def reference_patch_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor, temp: float
) -> torch.Tensor:
    # iBOT, L_MIM: for view v and image b, mean over masked patches n of
    # -sum_k q[v,b,n,k] log softmax(l[v,b,n] / temp)_k (0 without masked patches),
    # then the mean over images and over views. Loops, float64, from the formula.
    views, batch, tokens, _ = student_logits.shape
    total = torch.zeros((), dtype=torch.float64)
    for v in range(views):
        per_view = torch.zeros((), dtype=torch.float64)
        for b in range(batch):
            image_sum = torch.zeros((), dtype=torch.float64)
            count = 0
            for n in range(tokens):
                if bool(mask[v, b, n]):
                    logits = student_logits[v, b, n].double() / temp
                    log_p = logits - torch.logsumexp(logits, dim=0)
                    image_sum = image_sum - (teacher_probs[v, b, n].double() * log_p).sum()
                    count += 1
            per_view = per_view + (image_sum / count if count else image_sum * 0)
        total = total + per_view / batch
    return total / views


@pytest.mark.parametrize("batch", [1, 3, 6])
@pytest.mark.parametrize("tokens", [4, 16])
@pytest.mark.parametrize("mask_ratio", [0.0, 0.3, 0.8])
@pytest.mark.parametrize("temp", [0.05, 0.1, 0.5])
def test_patch_loss_matches_reference(batch: int, tokens: int, mask_ratio: float, temp: float):
    gen = torch.Generator().manual_seed(batch * 100 + tokens)
    views, k = 2, 24
    student = torch.randn(views, batch, tokens, k, generator=gen) * 3
    teacher = torch.softmax(torch.randn(views, batch, tokens, k, generator=gen) / 0.04, dim=-1)
    mask = torch.rand(views, batch, tokens, generator=gen) < mask_ratio
    mask[0, 0] = False  # an all-unmasked image contributes 0
    if batch > 1:
        mask[1, -1] = True  # and an all-masked one
    expected = reference_patch_loss(student, teacher, mask, temp)
    got = masked_patch_cross_entropy(student, teacher, mask, student_temp=temp)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    # The module and a spatial [rows, cols] mask give the same value.
    side = int(math.isqrt(tokens))
    spatial = mask.view(views, batch, side, side)
    module = MaskedPatchCrossEntropy(student_temp=temp)
    torch.testing.assert_close(module(student, teacher, spatial), got)


def test_patch_loss_without_masked_patches_is_zero_and_gradient_matches() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.softmax(torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64), -1)
    none = torch.zeros(2, 3, 4, dtype=torch.bool)
    assert float(masked_patch_cross_entropy(student, teacher, none).detach()) == 0.0
    mask = torch.rand(2, 3, 4, generator=gen) < 0.5
    assert torch.autograd.gradcheck(
        lambda s: masked_patch_cross_entropy(s, teacher, mask, 0.2), (student,)
    )


def test_patch_loss_rejects_bad_shapes() -> None:
    logits = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="same shape"):
        masked_patch_cross_entropy(logits, torch.rand(2, 3, 4, 6), torch.ones(2, 3, 4).bool())
    with pytest.raises(ValueError, match="mask"):
        masked_patch_cross_entropy(logits, torch.rand(2, 3, 4, 5), torch.ones(2, 3, 5).bool())
    with pytest.raises(ValueError, match="student_temp"):
        MaskedPatchCrossEntropy(student_temp=0.0)


# ------------------------------------------------------------- schedules


def test_trainer_schedules_warm_up_the_patch_temperature_with_the_class_one() -> None:
    # The trainer computes iBOT's patch teacher temperature once, with the class-token
    # ramp's function and length (both end points included, cut to the run's length).
    for warmup_epochs, steps_per_epoch, total in [(3, 4, 20), (1, 1, 5), (10, 3, 12), (0, 5, 9)]:
        cfg = tiny(
            "ibot",
            f"objective.warmup_teacher_temp_epochs={warmup_epochs}",
            "objective.warmup_teacher_temp=0.02",
            "objective.teacher_temp=0.05",
        )
        schedules = Schedules.from_config(cfg, total, steps_per_epoch)
        expected = linear_warmup_schedule(0.04, 0.07, warmup_epochs * steps_per_epoch, total)
        assert np.array_equal(schedules.patch_teacher_temp, expected)
        ramp = min(warmup_epochs * steps_per_epoch, total)
        for step in range(total):
            # Written out independently of linear_warmup_schedule.
            if step >= ramp:
                want = 0.07
            elif ramp == 1:
                want = 0.04
            else:
                want = 0.04 + 0.03 * step / (ramp - 1)
            assert float(schedules.patch_teacher_temp[step]) == pytest.approx(want, abs=1e-12)
        if ramp > 0:
            assert float(schedules.patch_teacher_temp[0]) == 0.04
        # Warmed up together: both reach their final value at the same step.
        still_warming = np.flatnonzero(schedules.teacher_temp != 0.05)
        assert np.array_equal(np.flatnonzero(schedules.patch_teacher_temp != 0.07), still_warming)


def test_patch_temperature_comes_from_the_context() -> None:
    method = build_ibot(tiny("ibot", "objective.warmup_teacher_temp_epochs=3"))
    assert method.patch_temperature(None) == 0.07
    # A context built outside the trainer, without a scheduled value: the final value.
    assert method.patch_temperature(StepContext(step=0, steps_per_epoch=2, total_steps=10)) == 0.07
    ctx = StepContext(step=0, steps_per_epoch=2, total_steps=10, patch_teacher_temp=0.04)
    assert method.patch_temperature(ctx) == 0.04
    out = method.training_step(random_crops(8), 0.04, StepContext(patch_teacher_temp=0.05))
    assert out.terms["patch_teacher_temp"] == 0.05


def test_trainer_step_context_carries_the_scheduled_temperatures(tmp_path: Path) -> None:
    # What replaced iBOT's own copy of the ramp: every step of a real run gets the
    # trainer's scheduled values through the context, and iBOT uses them.
    from protossl.engine.trainer import Trainer

    data = _tiny_folder(tmp_path / "images")
    cfg = tiny(
        "ibot",
        f"data.spec=folder:{data}",
        "data.num_local_crops=1",
        "optim.epochs=2",
        "objective.warmup_teacher_temp_epochs=1",
        "monitor.monitor_samples=8",
        "monitor.eval_knn=false",
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    method_step = trainer.method.training_step
    seen: list[tuple[float, StepContext, float]] = []

    def spy(crops: list[torch.Tensor], teacher_temp: float, context: StepContext | None = None):
        assert context is not None
        out = method_step(crops, teacher_temp, context)
        seen.append((teacher_temp, context, out.terms["patch_teacher_temp"]))
        return out

    trainer.method.training_step = spy  # type: ignore[method-assign]
    trainer.fit()
    assert len(seen) == trainer.total_steps == 2 * trainer.steps_per_epoch >= 4
    for step, (teacher_temp, context, used) in enumerate(seen):
        assert (context.step, context.epoch) == (step, step // trainer.steps_per_epoch)
        assert context.steps_per_epoch == trainer.steps_per_epoch
        assert context.total_steps == trainer.total_steps
        assert teacher_temp == float(trainer.schedules.teacher_temp[step])
        assert context.patch_teacher_temp == float(trainer.schedules.patch_teacher_temp[step])
        assert used == context.patch_teacher_temp
    # The warm-up is exercised: from ibot.warmup_patch_teacher_temp to ibot.patch_teacher_temp.
    assert seen[0][1].patch_teacher_temp == 0.04
    assert seen[trainer.steps_per_epoch - 1][1].patch_teacher_temp == 0.07
    assert len({context.patch_teacher_temp for _, context, _ in seen}) == trainer.steps_per_epoch


# ------------------------------------------------------------- the method


def reference_class_loss(student: torch.Tensor, targets: torch.Tensor, temp: float) -> torch.Tensor:
    # DINO: mean over (teacher crop t, student crop s != t) pairs of the batch-mean CE.
    total, pairs = torch.zeros((), dtype=torch.float64), 0
    for t in range(targets.shape[0]):
        for s in range(student.shape[0]):
            if s == t:
                continue
            log_p = F.log_softmax(student[s].double() / temp, dim=-1)
            total = total - (targets[t].double() * log_p).sum(-1).mean()
            pairs += 1
    return total / pairs


def test_training_step_loss_matches_an_independent_computation() -> None:
    cfg = tiny("ibot", "ibot.patch_loss_weight=0.5", "ibot.mask_probability=1.0")
    method = build_ibot(cfg)
    crops = random_crops(8)
    reference = copy.deepcopy(method)
    torch.manual_seed(11)
    out = method.training_step(crops, teacher_temp=0.04)  # no context: patch temp 0.07

    # Same masks: they are the step's first draw from the global RNG.
    torch.manual_seed(11)
    masks = reference.draw_masks(crops[:2])
    assert masks.shape == (2, 8, 4, 4)
    assert torch.equal(masks.flatten(2).sum(-1), masks.flatten(2).sum(-1).clamp(min=1))
    with torch.no_grad():
        teacher, student = reference.teacher, reference.student
        t_cls, t_patch = teacher.backbone.forward_tokens(torch.cat(crops[:2]))
        t_cls_probs = torch.softmax(teacher.head(t_cls).view(2, 8, -1) / 0.04, dim=-1)  # center 0
        t_patch_probs = torch.softmax(teacher.head(t_patch).view(2, 8, 16, -1) / 0.07, dim=-1)
        s_cls, s_patch = student.backbone.forward_tokens(
            torch.cat(crops[:2]), mask=masks.flatten(0, 1)
        )
        local = torch.stack([student.head(student.backbone(c)) for c in crops[2:]])
        s_cls_scores = torch.cat([student.head(s_cls).view(2, 8, -1), local])
        s_patch_scores = student.head(s_patch).view(2, 8, 16, -1)
    cls_loss = reference_class_loss(s_cls_scores, t_cls_probs, 0.1)
    patch_loss = reference_patch_loss(s_patch_scores, t_patch_probs, masks.flatten(2), 0.1)
    assert out.terms["cross_entropy"] == pytest.approx(float(cls_loss), rel=1e-5)
    assert out.terms["patch_cross_entropy"] == pytest.approx(float(patch_loss), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(cls_loss + 0.5 * patch_loss), rel=1e-5)
    assert out.terms["masked_fraction"] == pytest.approx(float(masks.float().mean()))


def test_masks_change_what_the_student_sees() -> None:
    method = build_ibot(tiny("ibot", "ibot.mask_probability=1.0"))
    crops = random_crops(8)
    masks = method.draw_masks(crops[:2]).flatten(0, 1)
    plain, _ = method.student.backbone.forward_tokens(torch.cat(crops[:2]))
    with torch.no_grad():
        method.student.backbone.mask_token.normal_()
    masked, _ = method.student.backbone.forward_tokens(torch.cat(crops[:2]), mask=masks)
    assert not torch.allclose(plain, masked)
    # The class token of the unmasked forward is the backbone's plain output (locals, teacher).
    torch.testing.assert_close(plain, method.student.backbone(torch.cat(crops[:2])))


def test_separate_centers_are_updated_from_teacher_logits() -> None:
    method = build_ibot(tiny("ibot", "model.shared_head=false", "model.patch_num_prototypes=48"))
    crops = random_crops(8)
    with torch.no_grad():
        t_cls, t_patch = method.teacher.backbone.forward_tokens(torch.cat(crops[:2]))
        cls_logits = method.teacher.head(t_cls)
        assert method.teacher.patch_head is not None
        patch_logits = method.teacher.patch_head(t_patch)
    method.training_step(crops, teacher_temp=0.04, context=StepContext(steps_per_epoch=4))
    m = 0.9  # center <- m * 0 + (1 - m) * mean over crops, images (and patches)
    torch.testing.assert_close(
        method.target_builder.center, (1 - m) * cls_logits.mean(0, keepdim=True)
    )
    torch.testing.assert_close(
        method.patch_target_builder.center,
        (1 - m) * patch_logits.reshape(-1, 48).mean(0, keepdim=True),
    )
    state = method.state_dict()
    assert state["target_builder.center"].shape == (1, 32)
    assert state["patch_target_builder.center"].shape == (1, 48)


def _train(method: IBOT, cfg: Config, steps: int, lr: float = 1e-3) -> list[float]:
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=lr)
    crops = random_crops(8)
    # The trainer's schedules for a 100-step run of 10 steps per epoch.
    patch_temps = Schedules.from_config(cfg, total_steps=100, steps_per_epoch=10).patch_teacher_temp
    losses = []
    for step in range(steps):
        torch.manual_seed(123)  # the same masks every step: a fixed batch
        ctx = StepContext(
            step=step,
            steps_per_epoch=10,
            total_steps=100,
            patch_teacher_temp=float(patch_temps[step]),
        )
        out = method.training_step(crops, teacher_temp=0.04, context=ctx)
        assert math.isfinite(float(out.loss.detach()))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.update_teacher(0.996)
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize("preset", ["ibot", "ibot-kp"])
def test_loss_decreases_on_a_fixed_batch(preset: str) -> None:
    cfg = tiny(preset)
    method = build_ibot(cfg)
    losses = _train(method, cfg, steps=6)
    assert losses[-1] < 0.8 * losses[0]
    out = method.training_step(random_crops(8), teacher_temp=0.04)
    assert out.terms["patch_cross_entropy"] > 0
    assert ("prototype_regularizer" in out.terms) == (preset == "ibot-kp")


@pytest.mark.parametrize("preset", ["ibot-vmf", "ibot-vmf-kp"])
def test_vmf_presets_train(preset: str) -> None:
    cfg = tiny(preset)
    method = build_ibot(cfg)
    assert type(method.student.head.prototypes).__name__ == "VMFPrototypeLayer"
    assert type(method.target_builder) is type(method.patch_target_builder)
    losses = _train(method, cfg, steps=6)
    assert losses[-1] < 0.8 * losses[0]


def test_teacher_is_untouched_by_the_student_step() -> None:
    method = build_ibot(tiny("ibot-kp"))
    before = copy.deepcopy(method.teacher.state_dict())
    student_before = copy.deepcopy(method.student.state_dict())
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=1e-2)
    out = method.training_step(random_crops(8), teacher_temp=0.04)
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.student.backbone.mask_token.grad is not None  # masked patches matter
    optimizer.step()
    after = method.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(
        not torch.equal(student_before[k], v) for k, v in method.student.state_dict().items()
    )
    # The EMA update then moves the teacher towards the student.
    method.update_teacher(0.9)
    key = "head.prototypes.weight"
    expected = 0.9 * before[key] + 0.1 * method.student.state_dict()[key]
    torch.testing.assert_close(method.teacher.state_dict()[key], expected)


def test_without_masked_images_the_patch_loss_is_zero() -> None:
    method = build_ibot(tiny("ibot", "ibot.mask_probability=0"))
    out = method.training_step(random_crops(8), teacher_temp=0.04)
    assert out.terms["patch_cross_entropy"] == 0.0
    assert out.terms["masked_fraction"] == 0.0
    assert float(out.loss.detach()) == pytest.approx(out.terms["cross_entropy"])


def test_heads_shared_or_separate() -> None:
    shared = build_ibot(tiny("ibot"))
    assert shared.student.patch_head is None
    assert len(list(shared.prototype_parameters())) == 1
    separate = build_ibot(tiny("ibot", "model.shared_head=false", "model.patch_num_prototypes=48"))
    assert separate.student.patch_head is not None
    assert separate.student.patch_head.prototypes.weight.shape == (48, 16)
    assert len(list(separate.prototype_parameters())) == 2
    assert separate.student_prototypes().shape == (32, 16)
    default_k = build_ibot(tiny("ibot", "model.shared_head=false"))
    assert default_k.patch_target_builder.num_prototypes == 32
    with pytest.raises(UserError, match="patch_num_prototypes"):
        build_ibot(tiny("ibot", "model.patch_num_prototypes=48"))
    build_ibot(tiny("ibot", "model.patch_num_prototypes=32"))  # equal K is fine when shared


def test_resnet_backbone_is_rejected_in_one_line() -> None:
    with pytest.raises(UserError) as err:
        build_method(tiny("ibot", "model.backbone=resnet_tiny"))
    message = str(err.value)
    assert "ViT" in message and "resnet_tiny" in message and "\n" not in message


def test_evaluation_outputs() -> None:
    method = build_ibot(tiny("ibot"))
    images = random_crops(8)[0]
    assert method.teacher_features(images).shape == (8, 96)
    assert method.teacher_logits(images).shape == (8, 32)
    assert torch.equal(method.teacher_prototypes(), method.student_prototypes())


def test_presets_describe_themselves() -> None:
    from protossl.config import preset_description

    assert preset_description("ibot").startswith("iBOT (Zhou et al. 2022)")
    for name in ["ibot", "ibot-kp", "ibot-vmf", "ibot-vmf-kp"]:
        cfg = load_config(name)
        assert cfg.method == "ibot" and cfg.model.backbone == "vit_tiny"
        assert cfg.ibot.mask_ratio == [0.1, 0.5] and cfg.ibot.mask_probability == 0.5
    assert load_config("ibot-kp").objective.prototype_regularizer == "koleo"
    assert load_config("ibot-vmf").objective.target == "probability-centering"
    assert load_config("ibot-vmf-kp").model.prototype_layer == "vmf"


def _tiny_folder(root: Path, per_class: int = 16) -> Path:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(16, 16, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_trainer_resume_is_bit_exact_with_masks(tmp_path: Path) -> None:
    # Masks come from the global RNG that the trainer seeds per epoch: a resumed run
    # draws the same masks and ends bit-identical to an uninterrupted one.
    from protossl.engine.trainer import Trainer

    data = _tiny_folder(tmp_path / "images")
    overrides = [
        f"data.spec=folder:{data}",
        "data.num_local_crops=1",
        "optim.epochs=2",
        "optim.warmup_epochs=1",
        "objective.warmup_teacher_temp_epochs=1",
        "monitor.monitor_samples=8",
        "monitor.eval_knn=false",
    ]
    full, split = tmp_path / "full", tmp_path / "split"
    Trainer(tiny("ibot", *overrides), full, progress=False).fit()
    Trainer(tiny("ibot", *overrides), split, progress=False).fit(stop_after_epochs=1)
    Trainer(tiny("ibot", *overrides), split, resume=True, progress=False).fit()
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] >= 4
    assert a["method"].keys() == b["method"].keys()
    for key in a["method"]:
        assert torch.equal(a["method"][key], b["method"][key]), key
