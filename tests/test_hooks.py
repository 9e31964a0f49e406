"""Trainer hooks: a toy prototype strategy is one registration, no trainer edit.

The strategy re-seeds prototype 0 every 3 steps from a generator it keeps in its own
state. Checked: the row is what the strategy wrote, in student and teacher alike, its
optimizer moments start from zero, the other rows are untouched by the re-seed, and a run
interrupted after epoch 1 and resumed ends bit-identical to an uninterrupted one
(the hook's state travels in the checkpoint).
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
    model__prototype_strategy="test-reseed-row-0",
)
EVERY = 3


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
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    assert torch.equal(a["hooks"][0]["generator"], b["hooks"][0]["generator"])


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
