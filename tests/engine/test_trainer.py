"""Trainer: exact resume, NaN handling, frozen prototypes, EMA teacher, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from protossl.config import Config, load_config
from protossl.engine.freezing import GradientFreezer
from protossl.engine.trainer import TIMING_KEYS, Trainer, TrainingDivergedError
from protossl.methods import StepContext, build_method

TINY = [
    # A long-tailed subsample of digits (354 training images) keeps every test cheap;
    # batch 64 gives the same 5 steps per epoch as batch 256 on all 1438 images.
    "data.spec=digits@lt=100",
    "data.batch_size=64",
    "data.num_local_crops=1",
    "model.backbone=vit_tiny",
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "optim.epochs=3",
    "optim.warmup_epochs=1",
    "optim.freeze_last_layer_epochs=1",
    "monitor.monitor_samples=64",
    "monitor.eval_knn=false",
]


def tiny_config(preset: str = "dino-kp", *extra: str) -> Config:
    return load_config(preset, overrides=[*TINY, *extra])


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _max_steps(cfg: Config, steps: int) -> Config:
    cfg.optim.max_steps = steps
    return cfg


@pytest.mark.parametrize("preset", ["dino", "dino-kp"])
def test_resume_is_bit_exact(tmp_path: Path, preset: str) -> None:
    # 354 training images (digits@lt=100): 5 steps of 64 per epoch, 3 epochs in all.
    full, split = tmp_path / "full", tmp_path / "split"
    Trainer(tiny_config(preset), full, progress=False).fit()
    Trainer(tiny_config(preset), split, progress=False).fit(stop_after_epochs=1)
    assert _state(split)["epoch"] == 1
    Trainer(tiny_config(preset), split, resume=True, progress=False).fit()

    a, b = _state(full), _state(split)
    assert a["step"] == b["step"] == 15
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    for (ka, va), (kb, vb) in zip(
        a["optimizer"]["state"].items(), b["optimizer"]["state"].items(), strict=True
    ):
        assert ka == kb
        for name in va:
            assert torch.equal(va[name], vb[name]), (ka, name)
    assert _metrics(full) == _metrics(split)
    assert len(_metrics(full)) == 3


def test_resume_requires_checkpoint_and_new_run_refuses_overwrite(tmp_path: Path) -> None:
    from protossl.core.errors import UserError

    with pytest.raises(UserError, match="--resume"):
        Trainer(tiny_config(), tmp_path / "none", resume=True, progress=False)
    run = tmp_path / "run"
    Trainer(_max_steps(tiny_config(), 1), run, progress=False).fit()
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        Trainer(tiny_config(), run, progress=False)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(), run, progress=False)
    trainer.fit(stop_after_epochs=1)
    good = (run / "checkpoints" / "last.pt").read_bytes()

    resumed = Trainer(tiny_config(), run, resume=True, progress=False)
    with torch.no_grad():  # poison the student: the next loss is NaN
        for param in resumed.method.student.head.parameters():
            param.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"at step 5 \(epoch 1\)"):
        resumed.fit()
    assert (run / "checkpoints" / "last.pt").read_bytes() == good


def test_prototypes_frozen_during_first_epoch_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = tiny_config("dino-kp")
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    initial = trainer.method.student_prototypes().detach().clone()
    trainer.fit(stop_after_epochs=1)
    assert torch.equal(trainer.method.student_prototypes().detach(), initial)
    trainer.fit(stop_after_epochs=2)  # continues in-process from epoch 1
    assert not torch.equal(trainer.method.student_prototypes().detach(), initial)


def test_one_freezer_combines_the_epoch_rule_and_the_method_rule() -> None:
    # DINO's first epochs (optim.freeze_last_layer_epochs) and SwAV's first steps
    # (Method.frozen_parameters) are asked of one GradientFreezer per step.
    fast = ("model.backbone=cnn_tiny", "data.image_size=8")
    dino = build_method(tiny_config("dino", *fast))
    prototypes = list(dino.prototype_parameters())
    freezer = GradientFreezer(dino, freeze_last_layer_epochs=1)
    assert freezer.frozen(StepContext(step=3, epoch=0)) == prototypes
    assert freezer.frozen(StepContext(step=5, epoch=1)) == []
    swav = build_method(tiny_config("swav", *fast, "swav.freeze_prototypes_steps=5"))
    freezer = GradientFreezer(swav, freeze_last_layer_epochs=0)
    assert freezer.frozen(StepContext(step=4)) == list(swav.prototype_parameters())
    assert freezer.frozen(StepContext(step=5)) == []
    both = GradientFreezer(swav, freeze_last_layer_epochs=1).frozen(StepContext(step=0))
    assert len(both) == 2 * len(list(swav.prototype_parameters()))
    for param in swav.parameters():
        param.grad = torch.ones_like(param)
    GradientFreezer(swav, freeze_last_layer_epochs=0).apply(StepContext(step=0))
    frozen = {id(p) for p in swav.prototype_parameters()}
    assert all((p.grad is None) == (id(p) in frozen) for p in swav.parameters())


def test_update_teacher_is_ema_of_parameters() -> None:
    torch.manual_seed(0)
    method = build_method(tiny_config("dino"))
    with torch.no_grad():
        for param in method.student.parameters():
            param.add_(torch.randn_like(param))
    teacher = [p.detach().clone() for p in method.teacher.parameters()]
    student = [p.detach().clone() for p in method.student.parameters()]
    method.update_teacher(0.9)
    for new, t, s in zip(method.teacher.parameters(), teacher, student, strict=True):
        torch.testing.assert_close(new, 0.9 * t + 0.1 * s)


def test_metrics_record_both_faces_of_collapse(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config("dino", "optim.epochs=1")
    summary = Trainer(cfg, run, progress=False).fit()
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["K"] == 32 and 1 <= row["M"] <= 32
    assert row["prototypes_used"] + row["dead_prototypes"] == 32
    assert 0.0 <= row["usage_entropy"] <= torch.log(torch.tensor(32.0)).item() + 1e-6
    assert row["step"] == 5 and row["epoch"] == 0
    # lr at the last step of epoch 0 equals the cosine schedule's value there.
    assert row["lr"] == pytest.approx(trainer_lr(cfg, 4))
    assert summary["K"] == 32 and summary["M"] == row["M"] and summary["finished"]


def trainer_lr(cfg: Config, step: int) -> float:
    from protossl.engine.schedules import cosine_schedule

    base = cfg.optim.lr * cfg.data.batch_size / 256
    return float(cosine_schedule(base, cfg.optim.min_lr, 5, warmup_steps=5)[step])


def test_truncated_metrics_line_does_not_break_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config("dino"), run, progress=False).fit(stop_after_epochs=1)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 1, "ste')  # a write cut short by a kill
    Trainer(tiny_config("dino"), run, resume=True, progress=False).fit(stop_after_epochs=2)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1]


def test_head_sees_all_crops_in_one_pass() -> None:
    # DINO's MultiCropWrapper: backbone per resolution, then ONE head pass, so a
    # BatchNorm head normalizes global and local crops together.
    torch.manual_seed(0)
    method = build_method(tiny_config("dino", "model.use_bn_in_head=true"))
    net = method.student
    crops = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.randn(4, 3, 7, 7)]
    out = net(crops)
    feats = torch.cat([net.backbone(torch.cat(crops[:2])), net.backbone(crops[2])])
    expected = net.head(feats).view(3, 4, -1)
    torch.testing.assert_close(out, expected)


def test_gradient_clipping_is_per_parameter() -> None:
    from protossl.engine.trainer import clip_gradients_per_parameter

    module = torch.nn.Linear(3, 2)
    module.weight.grad = torch.full((2, 3), 10.0)  # norm sqrt(600) > 3
    module.bias.grad = torch.tensor([0.3, 0.4])  # norm 0.5 < 3: untouched
    clip_gradients_per_parameter(module, 3.0)
    assert module.weight.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    torch.testing.assert_close(module.bias.grad, torch.tensor([0.3, 0.4]))


def test_step_monitor_leaves_training_unchanged(tmp_path: Path) -> None:
    # The live monitor runs in eval mode without gradients: measuring every step must
    # not change a single parameter, and its cost is recorded per epoch.
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    Trainer(tiny_config("dino", "optim.epochs=1"), plain, progress=False).fit()
    Trainer(
        tiny_config("dino", "optim.epochs=1", "monitor.every_steps=1"), watched, progress=False
    ).fit()
    a, b = _state(plain)["method"], _state(watched)["method"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    (row,) = [json.loads(line) for line in (watched / "metrics.jsonl").read_text().splitlines()]
    assert row["monitor_seconds"] > 0
