"""``model.init_from``: a run starts from a released ViT or a protossl run's teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from protossl.config import load_config
from protossl.core.errors import UserError
from protossl.core.files import save_checkpoint_atomic
from protossl.core.run_layout import RunPaths
from protossl.engine.trainer import Trainer
from protossl.methods import build_method
from protossl.models.backbones import build_backbone
from protossl.runs.checkpoint import read_training_checkpoint, training_state
from protossl.runs.folder import write_marker


def released_dino_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A DINO training checkpoint (teacher/student, module. prefixes) of a 16 px vit_tiny."""
    torch.manual_seed(5)
    teacher = build_backbone("vit_tiny", 16).net.state_dict()
    student = build_backbone("vit_tiny", 16).net.state_dict()
    state = {
        "teacher": {f"backbone.{k}": v for k, v in teacher.items()},
        "student": {f"module.backbone.{k}": v for k, v in student.items()},
        "epoch": 100,
    }
    torch.save(state, tmp_path / "dino_checkpoint.pth")
    return tmp_path / "dino_checkpoint.pth", teacher


def assert_backbones_equal(trainer: Trainer, expected: dict[str, torch.Tensor]) -> None:
    for network in (trainer.method.student, trainer.method.teacher):
        own = network.get_submodule("backbone.net").state_dict()
        assert own.keys() == expected.keys()
        for key, tensor in own.items():
            assert torch.equal(tensor, expected[key]), key


def test_starts_from_a_released_vit(tmp_path: Path) -> None:
    file, teacher = released_dino_file(tmp_path)
    overrides = tiny_overrides(
        model__backbone="vit_tiny", data__image_size=16, model__num_prototypes=16
    ) + [f"model.init_from={file}"]
    trainer = Trainer(load_config("dino", overrides=overrides), tmp_path / "run")
    try:
        assert_backbones_equal(trainer, teacher)  # the file's teacher, in both networks
    finally:
        trainer.release_folder()


def test_a_backbone_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    file, _ = released_dino_file(tmp_path)
    overrides = tiny_overrides(model__num_prototypes=16) + [f"model.init_from={file}"]
    with pytest.raises(UserError, match="holds a ViT with patch 4, width 96, depth 4") as info:
        Trainer(load_config("dino", overrides=overrides), tmp_path / "run")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing written
    missing = tiny_overrides() + [f"model.init_from={tmp_path / 'nope.pth'}"]
    with pytest.raises(UserError, match="nope.pth"):
        Trainer(load_config("dino", overrides=missing), tmp_path / "run2")


def test_starts_from_a_protossl_run_and_resume_does_not_reread(tmp_path: Path) -> None:
    source_cfg = load_config("dino", overrides=tiny_overrides(model__num_prototypes=8))
    torch.manual_seed(3)
    source = build_method(source_cfg)
    with torch.no_grad():
        for param in source.teacher.parameters():
            param.add_(0.1)
    paths = RunPaths(tmp_path / "source")
    paths.checkpoints.mkdir(parents=True)
    write_marker(paths.root)
    state = training_state(source_cfg.to_dict(), 1, 1, 0.0, source.state_dict(), {})
    save_checkpoint_atomic(state, paths.last_checkpoint)
    expected = source.teacher.get_submodule("backbone.net").state_dict()

    overrides = tiny_overrides(model__num_prototypes=16, optim__epochs=2, data__batch_size=64)
    cfg = load_config("dino", overrides=[*overrides, f"model.init_from={paths.root}"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert_backbones_equal(trainer, expected)
    trainer.fit(stop_after_epochs=1)
    paths.last_checkpoint.unlink()  # a resume continues from its own checkpoint
    resumed = Trainer(Trainer.config_of_run(tmp_path / "run"), tmp_path / "run", resume=True)
    resumed.fit()
    finished = read_training_checkpoint(RunPaths(tmp_path / "run").last_checkpoint)
    assert finished["epoch"] == 2  # trained to the end without the deleted source
