"""Trainer hooks: a toy prototype strategy is one registration, no trainer edit.

The strategy re-seeds prototype 0 every 3 steps from a generator it keeps in its own
state, in a DINO run with KoLeo-proto's candidate cache on. Checked: the row is what the
strategy wrote, in student and teacher alike, its optimizer moments start from zero, its
center entry is a fresh builder's, the KoLeo cache is invalidated, the other rows are
untouched by the re-seed, and a run interrupted after epoch 1 and resumed ends
bit-identical to an uninterrupted one (model, optimizer and the hook's state, which
travels in the checkpoint). ``Trainer.reset_prototype_rows`` is also checked alone, for
both centerings, and for iBOT's separate patch prototypes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_overrides

from protossl.config import Config, load_config
from protossl.core.errors import UserError
from protossl.engine.hooks import PROTOTYPE_STRATEGIES, TrainerHook
from protossl.engine.trainer import Trainer
from protossl.methods import build_method
from protossl.objectives.koleo import KoLeoProto, nearest_neighbor_candidates
from protossl.runs.checkpoint import read_training_checkpoint

TINY = tiny_overrides(
    data__batch_size=64,
    model__num_prototypes=16,
    model__head_hidden_dim=32,
    model__bottleneck_dim=8,
    optim__epochs=3,
    optim__warmup_epochs=1,
    optim__freeze_last_layer_epochs=0,
    monitor__monitor_samples=32,
    objective__prototype_regularizer="koleo",
    objective__prototype_regularizer_options__refresh_every=2,
    model__prototype_strategy="test-reseed-row-0",
)
EVERY = 3


def fresh_center(builder: torch.nn.Module) -> torch.Tensor:
    """The center a freshly built target builder of the same kind and K holds."""
    return type(builder)(builder.num_prototypes).center


class ReseedRowZero(TrainerHook):
    """Every EVERY steps, prototype 0 <- a fresh draw of the hook's own generator."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.events: list[tuple[int, torch.Tensor]] = []

    def on_step_end(self, trainer: Trainer, step: int, epoch: int) -> None:
        if (step + 1) % EVERY:
            return
        dim = trainer.method.student_prototypes().shape[1]
        row = torch.randn(1, dim, generator=self.generator)
        before = trainer.method.student_prototypes()[1:].clone()
        trainer.reset_prototype_rows([0], row)
        assert torch.equal(trainer.method.student_prototypes()[1:], before)
        builder = trainer.method.target_builder
        assert torch.equal(builder.center[:, 0], fresh_center(builder)[:, 0])
        assert trainer.method.regularizers.prototype.candidates.shape[0] == 0  # invalidated
        self.events.append((step, row[0].clone()))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


@pytest.fixture
def strategy() -> Any:
    PROTOTYPE_STRATEGIES.add("test-reseed-row-0", ReseedRowZero)
    yield
    PROTOTYPE_STRATEGIES.remove("test-reseed-row-0")


def _restore_threads() -> Any:
    threads = torch.get_num_threads()
    return lambda: torch.set_num_threads(threads)


def test_a_strategy_resets_rows_and_their_optimizer_state(tmp_path: Path, strategy: Any) -> None:
    restore = _restore_threads()
    try:
        trainer = Trainer(load_config("dino", overrides=TINY), tmp_path / "run", progress=False)
        hook = trainer.hooks[0]
        assert isinstance(hook, ReseedRowZero)
        trainer.fit()
    finally:
        restore()
    steps = trainer.total_steps
    assert [s for s, _ in hook.events] == list(range(EVERY - 1, steps, EVERY))
    assert steps % EVERY == 0  # so the last step re-seeded: the row is exactly its draw
    row = hook.events[-1][1]
    assert torch.equal(trainer.method.student_prototypes()[0], row)
    assert torch.equal(trainer.method.teacher_prototypes()[0], row)
    weight = trainer.method.prototype_layers()["student"].get_parameter("weight")
    moments = [m for m in trainer.optimizer.state[weight].values() if m.shape == weight.shape]
    assert len(moments) == 2 and not any(m[0].any() for m in moments)  # AdamW's two


def test_resume_with_a_strategy_is_bit_identical(tmp_path: Path, strategy: Any) -> None:
    restore = _restore_threads()
    try:
        cfg = load_config("dino", overrides=TINY)
        straight = Trainer(cfg, tmp_path / "straight", progress=False)
        straight.fit()
        paused = Trainer(load_config("dino", overrides=TINY), tmp_path / "paused", progress=False)
        paused.fit(stop_after_epochs=1)
        resumed = Trainer(
            Trainer.config_of_run(tmp_path / "paused"),
            tmp_path / "paused",
            resume=True,
            progress=False,
        )
        resumed.fit()
    finally:
        restore()
    a = read_training_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = read_training_checkpoint(tmp_path / "paused" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == straight.total_steps
    assert a["method"].keys() == b["method"].keys()
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    assert "regularizers.prototype.candidates" in a["method"]  # the KoLeo cache is saved
    moments_a, moments_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert moments_a.keys() == moments_b.keys()
    for index, state in moments_a.items():
        for name, value in state.items():
            assert torch.equal(value, moments_b[index][name]), (index, name)
    assert torch.equal(a["hooks"][0]["generator"], b["hooks"][0]["generator"])


@pytest.mark.parametrize("preset", ["dino-kp", "dino-vmf-kp"])  # centering, probability-
def test_reset_rows_resets_moments_centers_and_the_koleo_cache(tmp_path: Path, preset: str) -> None:
    restore = _restore_threads()
    try:
        cfg = load_config(preset, overrides=[*TINY[:-1], "optim.max_steps=3"])
        trainer = Trainer(cfg, tmp_path / "run", progress=False)
        trainer.fit()
    finally:
        restore()
    method = trainer.method
    weight = method.prototype_layers()["student"].get_parameter("weight")
    builder, koleo = method.target_builder, method.regularizers.prototype
    assert isinstance(koleo, KoLeoProto) and koleo.candidates.shape[0] == weight.shape[0]
    moments = [m for m in trainer.optimizer.state[weight].values() if m.shape == weight.shape]
    before = {
        "student": method.student_prototypes().clone(),
        "teacher": method.teacher_prototypes().clone(),
        "center": builder.center.clone(),
        "moments": [m.clone() for m in moments],
    }
    rows, others = [1, 3], [i for i in range(weight.shape[0]) if i not in (1, 3)]
    fresh = fresh_center(builder)
    assert not torch.equal(before["center"][:, rows], fresh[:, rows])  # the reset is seen
    values = torch.randn(2, weight.shape[1])
    trainer.reset_prototype_rows(rows, values)
    for name, now in (
        ("student", method.student_prototypes()),
        ("teacher", method.teacher_prototypes()),
    ):
        assert torch.equal(now[rows], values) and torch.equal(now[others], before[name][others])
    assert len(moments) == 2  # AdamW's two, zero on the rows only
    for moment, old in zip(moments, before["moments"], strict=True):
        assert not moment[rows].any() and torch.equal(moment[others], old[others])
    assert torch.equal(builder.center[:, rows], fresh[:, rows])
    assert torch.equal(builder.center[:, others], before["center"][:, others])
    assert koleo.candidates.shape[0] == 0 and int(koleo.step) == 3  # invalidated, counting on
    koleo(method.student_prototypes())  # step 3 of refresh_every=2 would use the cache, but
    unit = torch.nn.functional.normalize(method.student_prototypes().detach(), dim=1)
    _, exact = nearest_neighbor_candidates(unit, koleo.num_candidates, koleo.block_size)
    assert torch.equal(koleo.candidates, exact)  # it searched exactly again


def test_ibot_patch_centers_follow_the_patch_prototypes(tmp_path: Path) -> None:
    tiny_vit = [*TINY[:-1], "model.backbone=vit_tiny", "data.image_size=16"]
    shared = build_method(load_config("ibot", overrides=tiny_vit))
    states = shared.prototype_state_modules()
    assert set(states) == {"student"}  # one head: both centers follow its rows
    assert shared.target_builder in states["student"]
    assert shared.patch_target_builder in states["student"]
    separate = [*tiny_vit, "model.shared_head=false", "model.patch_num_prototypes=8"]
    restore = _restore_threads()
    try:
        trainer = Trainer(load_config("ibot", overrides=separate), tmp_path / "run", progress=False)
        trainer.release_folder()
    finally:
        restore()
    method = trainer.method
    states = method.prototype_state_modules()
    assert states["student_patch"] == [method.patch_target_builder]
    assert method.patch_target_builder not in states["student"]
    with torch.no_grad():
        method.target_builder.center.fill_(1.0)
        method.patch_target_builder.center.fill_(1.0)
    dim = method.prototype_layers()["student_patch"].get_parameter("weight").shape[1]
    trainer.reset_prototype_rows(
        [2], torch.zeros(1, dim), layers=("student_patch", "teacher_patch")
    )
    assert method.patch_target_builder.center[0, 2] == 0
    assert int((method.patch_target_builder.center == 0).sum()) == 1
    assert bool((method.target_builder.center == 1).all())  # the class rows are not the patch rows


def test_joint_adds_no_hook_and_an_unknown_strategy_is_one_line(tmp_path: Path) -> None:
    cfg = load_config("dino", overrides=[*TINY[:-1], "optim.epochs=1"])
    assert cfg.model.prototype_strategy == "joint"
    with pytest.raises(UserError, match=r"unknown prototype strategy 'jont' \(did you mean"):
        Trainer(
            load_config("dino", overrides=[*TINY[:-1], "model.prototype_strategy=jont"]),
            tmp_path / "bad",
            progress=False,
        )
    assert not (tmp_path / "bad").exists()
