"""``protossl export``: timm (and torch) alone rebuild every backbone protossl offers.

Each backbone is exported from a checkpoint whose teacher differs from its student (and
whose BatchNorm statistics are not the defaults), then rebuilt in a separate interpreter
in which importing protossl fails: from ``backbone.json`` with ``timm.create_model`` and
``load_state_dict`` (the README's lines), and with the exported ``build_backbone.py``.
Both must give the teacher's features to 1e-6.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from protossl.config import load_config
from protossl.core.errors import UserError
from protossl.core.files import save_checkpoint_atomic
from protossl.core.run_layout import RunPaths
from protossl.export import export_run
from protossl.methods import build_method
from protossl.models.backbones import BACKBONES
from protossl.runs.checkpoint import training_state
from protossl.runs.folder import write_marker

BACKBONE_NAMES = sorted(BACKBONES.names())
IMAGE_SIZE = 16

# Run in a fresh interpreter where `import protossl` raises: what a user without protossl
# has. Prints, per export folder, the features of the saved inputs both ways.
REBUILD = r"""
import importlib.abc, json, sys
class NoProtossl(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "protossl" or name.startswith("protossl."):
            raise ImportError("protossl must not be needed")
sys.meta_path.insert(0, NoProtossl())
import torch, timm, safetensors.torch
from torch import nn
images = torch.load(sys.argv[1], weights_only=True)
out = {}
for folder in sys.argv[2:]:
    spec = json.load(open(folder + "/backbone.json"))
    sys.path.insert(0, folder)
    from build_backbone import load_backbone
    sys.path.pop(0); del sys.modules["build_backbone"]
    result = {"standalone": load_backbone(folder)(images)}
    if spec["timm"] is not None:  # the README's lines
        net = timm.create_model(spec["timm"]["model"], **spec["timm"]["kwargs"])
        if spec["timm"]["cifar_stem"]:
            net.conv1 = nn.Conv2d(3, spec["timm"]["cifar_stem"], 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        net.load_state_dict(safetensors.torch.load_file(folder + "/backbone.safetensors"))
        result["timm"] = net.eval()(images)
    out[folder] = {k: v.detach() for k, v in result.items()}
torch.save(out, sys.argv[1] + ".out")
assert not any(m.startswith("protossl") for m in sys.modules)
"""


def _fake_run(root: Path, backbone: str, seed: int) -> tuple[Path, torch.nn.Module]:
    """A run folder whose last checkpoint has a teacher unlike its student."""
    overrides = tiny_overrides(
        model__backbone=backbone, model__num_prototypes=16, data__image_size=IMAGE_SIZE
    )
    cfg = load_config("dino", overrides=overrides)
    torch.manual_seed(seed)
    method = build_method(cfg)
    with torch.no_grad():
        for param in method.teacher.parameters():
            param.add_(0.01 * torch.randn_like(param))
        for name, buffer in method.teacher.named_buffers():
            if name.endswith("running_mean") or name.endswith("running_var"):
                buffer.copy_(torch.rand_like(buffer) + 0.5)
    run = root / backbone
    paths = RunPaths(run)
    paths.checkpoints.mkdir(parents=True)
    write_marker(run)
    state = training_state(cfg.to_dict(), 1, 1, 0.0, method.state_dict(), {})
    save_checkpoint_atomic(state, paths.last_checkpoint)
    return run, method.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.save(images, root / "images.pt")
    folders, expected = [], {}
    for i, name in enumerate(BACKBONE_NAMES):
        run, method = _fake_run(root / "runs", name, seed=i)
        out = root / "out" / name
        export_run(run, out)
        folders.append(str(out))
        expected[str(out)] = method.teacher_features(images)
    subprocess.run(
        [sys.executable, "-c", REBUILD, str(root / "images.pt"), *folders],
        check=True,
        cwd=root,
    )
    rebuilt = torch.load(root / "images.pt.out", weights_only=True)
    return {
        Path(folder).name: {"protossl": expected[folder], **rebuilt[folder]} for folder in folders
    }


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_timm_alone_rebuilds_the_teachers_features(
    exported: dict[str, dict[str, torch.Tensor]], backbone: str
) -> None:
    features = exported[backbone]
    reference = features["protossl"]
    ways = ["standalone"] + (["timm"] if backbone != "cnn_tiny" else [])
    assert set(features) == {"protossl", *ways}
    for way in ways:
        assert features[way].shape == reference.shape
        assert (features[way] - reference).abs().max().item() <= 1e-6, way


def test_every_backbone_but_the_plain_cnn_is_a_timm_model() -> None:
    assert "cnn_tiny" in BACKBONE_NAMES and len(BACKBONE_NAMES) >= 5


def test_head_and_branch(tmp_path: Path) -> None:
    run, method = _fake_run(tmp_path / "runs", "cnn_tiny", seed=7)
    export_run(run, tmp_path / "teacher")
    export_run(run / "checkpoints" / "last.pt", tmp_path / "student", branch="student")
    teacher_head = load_file(str(tmp_path / "teacher" / "head.safetensors"))
    student_head = load_file(str(tmp_path / "student" / "head.safetensors"))
    for key, value in method.teacher.get_submodule("head").state_dict().items():
        assert torch.equal(teacher_head[key], value)
    for key, value in method.student.get_submodule("head").state_dict().items():
        assert torch.equal(student_head[key], value)
    assert not torch.equal(teacher_head["prototypes.weight"], student_head["prototypes.weight"])
    assert any(k.startswith("prototypes.") for k in teacher_head)
    student_backbone = load_file(str(tmp_path / "student" / "backbone.safetensors"))
    for key, value in method.student.get_submodule("backbone.net").state_dict().items():
        assert torch.equal(student_backbone[key], value)
    spec = json.loads((tmp_path / "teacher" / "backbone.json").read_text())
    assert spec["branch"] == "teacher" and spec["plain_cnn"] == {"widths": [64, 128]}
    assert spec["preprocessing"]["image_size"] == IMAGE_SIZE
    assert spec["head"]["num_prototypes"] == 16


def test_refuses_to_overwrite_and_unknown_inputs(tmp_path: Path) -> None:
    run, _ = _fake_run(tmp_path / "runs", "cnn_tiny", seed=1)
    export_run(run, tmp_path / "out")
    with pytest.raises(UserError, match="not empty; pass --force"):
        export_run(run, tmp_path / "out")
    export_run(run, tmp_path / "out", force=True)  # replaced, each file atomically
    with pytest.raises(UserError, match="is the input"):
        export_run(run, run, force=True)
    with pytest.raises(UserError, match="unknown --branch"):
        export_run(run, tmp_path / "other", branch="ema")
    with pytest.raises(UserError, match="without checkpoints/last.pt"):
        export_run(tmp_path, tmp_path / "other")


def test_cli_missing_checkpoint_is_one_line_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "protossl",
            "export",
            str(tmp_path / "nope.pt"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
