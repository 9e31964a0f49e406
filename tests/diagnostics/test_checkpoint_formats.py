"""Reading the prototype layers of official DINO-family checkpoints (``protossl analyze``).

Every layout is rebuilt in miniature from torch modules named and nested as the
official training scripts name and nest theirs (DINO's ``MultiCropWrapper(backbone,
DINOHead)`` under DistributedDataParallel, iBOT's ``last_layer2``, DINOv2's
``ModuleDict`` of ``dino_head`` / ``ibot_head``, MSN's top-level ``prototypes``,
SwAV's ``MultiPrototypes``, EsViT's ``head_dense``), so the state-dict keys are
produced by torch itself, not typed by hand. Prototype matrices are tiny (K 12-40,
p 8) with planted duplicates, so M is known; it is checked against the brute-force
count of tests/reference.py. Weight-normalized layers are checked against the layer's
own forward pass.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference import brute_force_m
from torch import nn

from protossl.cli import build_parser, main
from protossl.core.errors import UserError
from protossl.diagnostics import count_unique_prototypes
from protossl.diagnostics.checkpoints import FORMAT_CHOICES, FORMATS, read_prototype_heads

P = 8  # bottleneck dimension of every synthetic head
EPS = 0.025

# ------------------------------------------------------------------ planted prototypes


def planted(k: int, groups: int, seed: int) -> torch.Tensor:
    """[k, P] prototypes in ``groups`` duplicate groups (rescaled, perturbed by ~1e-4).

    Row norms vary (0.5 to 3) so that the weight-norm magnitudes matter.
    """
    gen = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(groups, P, generator=gen, dtype=torch.float64), dim=1)
    member = torch.cat([torch.arange(groups), torch.randint(groups, (k - groups,), generator=gen)])
    rows = base[member] + 1e-4 * torch.randn(k, P, generator=gen, dtype=torch.float64)
    norms = 0.5 + 2.5 * torch.rand(k, 1, generator=gen, dtype=torch.float64)
    w = (F.normalize(rows, dim=1) * norms)[torch.randperm(k, generator=gen)]
    return w.float()


# ------------------------------------------------------------------ official modules, in miniature


def prototype_layer(w: torch.Tensor, style: str, seed: int = 0) -> nn.Module:
    """nn.Linear(P, K, bias=False) whose effective weight is ``w``.

    style 'weight_norm': torch.nn.utils.weight_norm (weight_g / weight_v), as every
    official head; 'parametrized': torch.nn.utils.parametrizations.weight_norm
    (parametrizations.weight.original0 / original1); 'plain': a merged weight.
    The stored v is w rescaled per row (so v != w and g carries the norms).
    """
    k, p = w.shape
    lin = nn.Linear(p, k, bias=False)
    gen = torch.Generator().manual_seed(seed)
    v = w * (0.2 + 5.0 * torch.rand(k, 1, generator=gen))
    g = w.norm(dim=1, keepdim=True)
    if style == "plain":
        lin.weight.data = w.clone()
        return lin
    if style == "weight_norm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated in favour of parametrizations
            layer = nn.utils.weight_norm(lin)
        layer.weight_g.data, layer.weight_v.data = g.clone(), v.clone()
        return layer
    layer = nn.utils.parametrizations.weight_norm(lin)
    layer.parametrizations.weight.original0.data = g.clone()
    layer.parametrizations.weight.original1.data = v.clone()
    return layer


@torch.no_grad()
def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as its own forward pass applies it: layer(I)^T."""
    return layer(torch.eye(layer.in_features)).T.contiguous()


class DINOHead(nn.Module):
    """dino/vision_transformer.py DINOHead: mlp, then last_layer (weight-normalized)."""

    def __init__(self, w: torch.Tensor, style: str = "weight_norm", seed: int = 0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, P))
        self.last_layer = prototype_layer(w, style, seed)


class IBOTHead(DINOHead):
    """ibot models/head.py iBOTHead: last_layer2 for patches, or last_layer itself if shared."""

    def __init__(self, w: torch.Tensor, w_patch: torch.Tensor | None, seed: int = 0) -> None:
        super().__init__(w, seed=seed)
        if w_patch is None:  # shared_head=True
            self.last_layer2 = self.last_layer
        else:
            self.last_layer2 = prototype_layer(w_patch, "weight_norm", seed + 1)


class MultiCropWrapper(nn.Module):
    """dino utils.MultiCropWrapper(backbone, head)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6))
        self.head = head


class DDP(nn.Module):
    """Stand-in for DistributedDataParallel: the wrapped model is its 'module'."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model


class EsViTModel(nn.Module):
    """esvit main_esvit.py: student.head = DINOHead(...); student.head_dense = DINOHead(...)."""

    def __init__(self, w: torch.Tensor, w_dense: torch.Tensor | None, seed: int = 0) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 6)])
        self.head = DINOHead(w, seed=seed)
        if w_dense is not None:
            self.head_dense = DINOHead(w_dense, seed=seed + 1)


class SSLMetaArch(nn.Module):
    """dinov2/train/ssl_meta_arch.py: student / teacher ModuleDicts of backbone and heads."""

    def __init__(self, heads: dict[str, dict[str, torch.Tensor]], style: str) -> None:
        super().__init__()
        for branch, branch_heads in heads.items():
            modules = {"backbone": nn.Linear(3, 6)}
            for name, w in branch_heads.items():
                modules[name] = DINOHead(w, style)
            setattr(self, branch, nn.ModuleDict(modules))


class SwAVResNet(nn.Module):
    """swav src/resnet50.py: projection_head, then prototypes (Linear or MultiPrototypes)."""

    def __init__(self, ws: list[torch.Tensor], multi: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.projection_head = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, P))
        if multi:
            self.prototypes = nn.Module()  # MultiPrototypes: add_module("prototypes" + str(i))
            for i, w in enumerate(ws):
                self.prototypes.add_module(f"prototypes{i}", prototype_layer(w, "plain"))
        else:
            self.prototypes = prototype_layer(ws[0], "plain")


def msn_encoder() -> nn.Module:
    """msn src/msn_train.py init_model: encoder.fc = Sequential(OrderedDict(fc1 ... fc3))."""
    encoder = nn.Module()
    encoder.patch_embed = nn.Linear(3, 6)
    encoder.fc = nn.Sequential(
        OrderedDict(fc1=nn.Linear(6, 12), gelu1=nn.GELU(), fc2=nn.Linear(12, 12),
                    gelu2=nn.GELU(), fc3=nn.Linear(12, P))
    )  # fmt: skip
    return encoder


def training_args() -> argparse.Namespace:
    """The argparse Namespace that main_dino / main_ibot / main_esvit save as 'args'."""
    return argparse.Namespace(arch="vit_small", out_dim=40, norm_last_layer=False,
                              global_crops_scale=(0.4, 1.0), output_dir=".")  # fmt: skip


def optimizer_state(model: nn.Module) -> dict:
    """An AdamW state with moments shaped like the parameters (the model is not changed)."""
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=0.0)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return opt.state_dict()


# ------------------------------------------------------------------ layouts


@dataclass
class Layout:
    """A synthetic checkpoint and what reading it must give."""

    state: dict
    fmt: str
    expected: dict[str, torch.Tensor]  # head name -> effective prototype matrix
    planted_m: dict[str, int]  # head name -> number of planted groups


def dino_full(style: str = "weight_norm") -> Layout:
    """main_dino.py checkpoint.pth: student under DDP ('module.'), teacher bare, args, ..."""
    ws, wt = planted(40, 13, seed=1), planted(40, 9, seed=2)
    student = DDP(MultiCropWrapper(DINOHead(ws, style, seed=1)))
    teacher = MultiCropWrapper(DINOHead(wt, style, seed=2))
    state = {
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "optimizer": optimizer_state(student),
        "epoch": 3,
        "args": training_args(),
        "dino_loss": {"center": torch.zeros(1, 40)},
    }
    return Layout(
        state,
        "dino",
        {
            "student/head": effective_weight(student.module.head.last_layer),
            "teacher/head": effective_weight(teacher.head.last_layer),
        },
        {"student/head": 13, "teacher/head": 9},
    )


def dino_resnet_teacher_ddp() -> Layout:
    """ResNet DINO: batch norms put the teacher under DDP too ('teacher' -> 'module.')."""
    w = planted(24, 7, seed=3)
    teacher = DDP(MultiCropWrapper(DINOHead(w, seed=3)))
    state = {"teacher": teacher.state_dict(), "epoch": 1}
    head = effective_weight(teacher.module.head.last_layer)
    return Layout(state, "dino", {"teacher/head": head}, {"teacher/head": 7})


def ibot_full(shared: bool) -> Layout:
    """main_ibot.py checkpoint.pth; iBOTHead with or without a shared patch head."""
    w_cls, w_patch = planted(32, 11, seed=4), planted(20, 6, seed=5)
    student = DDP(MultiCropWrapper(IBOTHead(w_cls, None if shared else w_patch, seed=4)))
    teacher = MultiCropWrapper(IBOTHead(w_cls, None if shared else w_patch, seed=6))
    state = {
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "epoch": 2,
        "args": training_args(),
        "ibot_loss": {"center": torch.zeros(1, 32), "center2": torch.zeros(1, 1, 20)},
    }
    assert "module.head.last_layer2.weight_v" in state["student"]  # saved even when shared
    expected = {
        "student/head": effective_weight(student.module.head.last_layer),
        "teacher/head": effective_weight(teacher.head.last_layer),
    }
    m = {"student/head": 11, "teacher/head": 11}
    if not shared:
        expected["student/patch_head"] = effective_weight(student.module.head.last_layer2)
        expected["teacher/patch_head"] = effective_weight(teacher.head.last_layer2)
        m.update({"student/patch_head": 6, "teacher/patch_head": 6})
    return Layout(state, "ibot", expected, m)


def dinov2_full(style: str = "weight_norm") -> Layout:
    """fvcore checkpointer: {'model': SSLMetaArch.state_dict(), 'optimizer', 'iteration'}."""
    heads = {
        "student": {"dino_head": planted(36, 12, seed=7), "ibot_head": planted(28, 5, seed=8)},
        "teacher": {"dino_head": planted(36, 10, seed=9), "ibot_head": planted(28, 4, seed=10)},
    }
    arch = SSLMetaArch(heads, style)
    state = {"model": arch.state_dict(), "optimizer": optimizer_state(arch), "iteration": 99}
    expected = {
        f"{b}/{h}": effective_weight(getattr(arch, b)[h].last_layer)
        for b in heads
        for h in heads[b]
    }
    m = {"student/dino_head": 12, "student/ibot_head": 5, "teacher/dino_head": 10,
         "teacher/ibot_head": 4}  # fmt: skip
    return Layout(state, "dinov2", expected, m)


def dinov2_teacher_checkpoint() -> Layout:
    """train.py do_test: torch.save({'teacher': model.teacher.state_dict()}); shared iBOT head."""
    arch = SSLMetaArch({"teacher": {"dino_head": planted(30, 8, seed=11)}}, "weight_norm")
    state = {"teacher": arch.teacher.state_dict()}
    head = effective_weight(arch.teacher["dino_head"].last_layer)
    return Layout(state, "dinov2", {"teacher/dino_head": head}, {"teacher/dino_head": 8})


def msn_full() -> Layout:
    """msn_train.py save_checkpoint: encoder / target_encoder (DDP) and top-level prototypes."""
    protos = planted(30, 10, seed=12)
    encoder, target = DDP(msn_encoder()), DDP(msn_encoder())
    state = {
        "encoder": encoder.state_dict(),
        "opt": optimizer_state(encoder),
        "prototypes": protos.clone(),
        "target_encoder": target.state_dict(),
        "epoch": 5,
        "loss": 3.25,
        "batch_size": 64,
        "world_size": 8,
        "lr": 0.001,
        "temperature": 0.1,
    }
    return Layout(state, "msn", {"prototypes": protos}, {"prototypes": 10})


def swav_single() -> Layout:
    """main_swav.py checkpoint.pth.tar: {'epoch', 'state_dict': DDP model, 'optimizer'}."""
    w = planted(30, 9, seed=13)
    model = DDP(SwAVResNet([w], multi=False))
    state = {"epoch": 4, "state_dict": model.state_dict(), "optimizer": optimizer_state(model)}
    return Layout(state, "swav", {"prototypes": w}, {"prototypes": 9})


def swav_multi_published() -> Layout:
    """Published weights: the bare DDP state dict; MultiPrototypes with three heads."""
    ws = [planted(20, 7, seed=14), planted(30, 9, seed=15), planted(12, 12, seed=16)]
    state = dict(DDP(SwAVResNet(ws, multi=True)).state_dict())
    expected = {f"prototypes{i}": w for i, w in enumerate(ws)}
    return Layout(state, "swav", expected, {"prototypes0": 7, "prototypes1": 9, "prototypes2": 12})


def esvit_full() -> Layout:
    """main_esvit.py checkpoint.pth with use_dense_prediction: head and head_dense."""
    w, w_dense = planted(24, 8, seed=17), planted(24, 6, seed=18)
    student, teacher = DDP(EsViTModel(w, w_dense, seed=17)), EsViTModel(w, w_dense, seed=19)
    state = {
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "epoch": 1,
        "args": training_args(),
    }
    expected = {
        "student/head": effective_weight(student.module.head.last_layer),
        "student/head_dense": effective_weight(student.module.head_dense.last_layer),
        "teacher/head": effective_weight(teacher.head.last_layer),
        "teacher/head_dense": effective_weight(teacher.head_dense.last_layer),
    }
    m = {"student/head": 8, "student/head_dense": 6, "teacher/head": 8, "teacher/head_dense": 6}
    return Layout(state, "esvit", expected, m)


def protossl_run() -> Layout:
    ws, wt = planted(16, 5, seed=20), planted(16, 16, seed=21)
    state = {
        "format": "protossl",
        "version": 1,
        "method": {"student.head.prototypes.weight": ws, "teacher.head.prototypes.weight": wt},
    }
    return Layout(state, "protossl", {"student": ws, "teacher": wt}, {"student": 5, "teacher": 16})


LAYOUTS: dict[str, Callable[[], Layout]] = {
    "dino": dino_full,
    "dino_parametrized": lambda: dino_full("parametrized"),
    "dino_merged_weight": lambda: dino_full("plain"),
    "dino_resnet_teacher_ddp": dino_resnet_teacher_ddp,
    "ibot": lambda: ibot_full(shared=False),
    "ibot_shared_head": lambda: ibot_full(shared=True),
    "dinov2": dinov2_full,
    "dinov2_parametrized": lambda: dinov2_full("parametrized"),
    "dinov2_teacher_checkpoint": dinov2_teacher_checkpoint,
    "msn": msn_full,
    "swav": swav_single,
    "swav_multi_published": swav_multi_published,
    "esvit": esvit_full,
    "protossl": protossl_run,
}


def save(state: dict, tmp_path: Path, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("protossl: error:")
    return lines[0]


# ------------------------------------------------------------------ every layout


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_layout_is_detected_and_read_exactly(case: str, tmp_path: Path) -> None:
    layout = LAYOUTS[case]()
    fmt, heads = read_prototype_heads(save(layout.state, tmp_path))
    assert fmt == layout.fmt
    assert set(heads) == set(layout.expected)
    for name, expected in layout.expected.items():
        w = heads[name]
        assert w.shape == expected.shape and w.dtype == torch.float32
        # Effective prototypes g * v / ||v||: the layer's forward pass, norms included.
        torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-6)
        m = brute_force_m(expected, EPS)
        assert m == layout.planted_m[name]
        assert count_unique_prototypes(w, EPS).num_unique == m
    # The planted duplicates are real: some head of every layout has M < K.
    assert any(layout.planted_m[n] < w.shape[0] for n, w in layout.expected.items())


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_forced_format_reads_the_same_heads(case: str, tmp_path: Path) -> None:
    layout = LAYOUTS[case]()
    path = save(layout.state, tmp_path)
    fmt, heads = read_prototype_heads(path, format=layout.fmt)
    assert fmt == layout.fmt and set(heads) == set(layout.expected)
    _, auto = read_prototype_heads(path)
    for name in heads:
        assert torch.equal(heads[name], auto[name])


WRONG_FORMAT = {"swav": "dino", "msn": "ibot", "protossl": "dinov2"}


@pytest.mark.parametrize("case", ["dino", "ibot", "dinov2", "msn", "swav", "esvit", "protossl"])
def test_forced_wrong_format_is_one_line_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = LAYOUTS[case]()
    path = save(layout.state, tmp_path)
    wrong = WRONG_FORMAT.get(layout.fmt, "swav")
    with pytest.raises(UserError, match=f"does not have the {wrong} layout"):
        read_prototype_heads(path, format=wrong)
    line = one_line_error(*run_cli(["analyze", str(path), "--format", wrong], capsys))
    assert f"looks like '{layout.fmt}'" in line and "--format auto" in line


# ------------------------------------------------------------------ prefixes and wrappers


def _teacher_state() -> tuple[dict, torch.Tensor]:
    w = planted(20, 6, seed=30)
    teacher = MultiCropWrapper(DINOHead(w, seed=30))
    return teacher.state_dict(), effective_weight(teacher.head.last_layer)


@pytest.mark.parametrize(
    ("wrap", "name"),
    [
        (lambda sd: sd, "head"),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "head"),
        (lambda sd: {"state_dict": sd}, "head"),
        (lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, "head"),
        (lambda sd: {"model": sd, "iteration": 3}, "head"),
        (lambda sd: {"teacher": sd}, "teacher/head"),
        (lambda sd: {"teacher": {f"module.{k}": v for k, v in sd.items()}}, "teacher/head"),
        (lambda sd: {"student": {f"module.{k}": v for k, v in sd.items()}}, "student/head"),
        (lambda sd: {"model": {f"teacher.{k}": v for k, v in sd.items()}}, "teacher/head"),
        (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, "head"),
    ],
    ids=["bare", "module", "state_dict", "state_dict_module", "model", "teacher",
         "teacher_module", "student_module", "model_teacher_prefix", "compiled"],
)  # fmt: skip
def test_module_prefix_and_wrappers(wrap: Callable, name: str, tmp_path: Path) -> None:
    state, expected = _teacher_state()
    fmt, heads = read_prototype_heads(save(wrap(state), tmp_path))
    assert fmt == "dino"
    assert list(heads) == [name]
    torch.testing.assert_close(heads[name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_msn_prototypes_inside_a_wrapper(wrapper: str, tmp_path: Path) -> None:
    layout = msn_full()
    fmt, heads = read_prototype_heads(save({wrapper: layout.state}, tmp_path))
    assert fmt == "msn" and list(heads) == ["prototypes"]
    assert torch.equal(heads["prototypes"], layout.expected["prototypes"])


# ------------------------------------------------------------------ weight-norm details


def test_weight_norm_reconstruction_keeps_vmf_norms(tmp_path: Path) -> None:
    """g * v / ||v|| exactly: norms are g (not 1, not ||v||); a zero row of v stays zero."""
    w = planted(12, 12, seed=32)
    layer = prototype_layer(w, "weight_norm", seed=32)
    g = torch.linspace(0.5, 40.0, 12).reshape(12, 1)
    layer.weight_g.data = g.clone()
    layer.weight_v.data[3] = 0.0
    state = {"teacher": {"head.last_layer.weight_g": layer.weight_g.data,
                         "head.last_layer.weight_v": layer.weight_v.data}}  # fmt: skip
    _, heads = read_prototype_heads(save(state, tmp_path))
    got = heads["teacher/head"]
    assert torch.isfinite(got).all() and torch.equal(got[3], torch.zeros(P))
    rows = [i for i in range(12) if i != 3]
    torch.testing.assert_close(got[rows].norm(dim=1), g[rows, 0], rtol=1e-6, atol=0)
    ref = effective_weight(layer)[rows]  # torch's own forward (its row 3 is NaN)
    torch.testing.assert_close(got[rows], ref, rtol=1e-5, atol=1e-6)
    v = layer.weight_v.data[rows]
    torch.testing.assert_close(got[rows], g[rows] * v / v.norm(dim=1, keepdim=True))


def test_mismatched_weight_g_is_a_user_error(tmp_path: Path) -> None:
    state = {"head.last_layer.weight_g": torch.ones(5, 1),
             "head.last_layer.weight_v": torch.randn(12, P)}  # fmt: skip
    with pytest.raises(UserError, match="weight_g has shape"):
        read_prototype_heads(save(state, tmp_path))


# ------------------------------------------------------------------ --key and unknown layouts


def test_key_reads_exactly_that_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = dino_full()
    path = save(layout.state, tmp_path)
    v_name = "student.module.head.last_layer.weight_v"
    fmt, heads = read_prototype_heads(path, key=v_name)
    assert fmt == "key" and list(heads) == [v_name]
    assert torch.equal(heads[v_name], layout.state["student"]["module.head.last_layer.weight_v"])
    # A weight-normalized layer by its name: reconstructed, norms included.
    _, heads = read_prototype_heads(path, key="teacher.head.last_layer")
    torch.testing.assert_close(heads["teacher.head.last_layer"], layout.expected["teacher/head"])
    # The same name without the DDP prefix resolves, since it is unambiguous.
    _, heads = read_prototype_heads(path, key="student.head.last_layer")
    torch.testing.assert_close(heads["student.module.head.last_layer"],
                               layout.expected["student/head"])  # fmt: skip
    code, out, err = run_cli(["analyze", str(path), "--key", v_name, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["format"] == "key" and result["key"] == v_name
    expected_m = brute_force_m(layout.expected["student/head"], EPS)
    assert result["heads"][v_name]["M"] == expected_m == 13


def test_missing_or_bad_key_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(dino_full().state, tmp_path)
    with pytest.raises(UserError, match="close matches: .*teacher.head.last_layer"):
        read_prototype_heads(path, key="teacher.head.last_layr")
    with pytest.raises(UserError, match="2-D"):
        read_prototype_heads(path, key="student.module.backbone.1.weight")  # LayerNorm, 1-D
    with pytest.raises(UserError, match="drop --format"):
        read_prototype_heads(path, format="dino", key="teacher.head.last_layer")
    line = one_line_error(*run_cli(["analyze", str(path), "--key", "nope.weight"], capsys))
    assert "no tensor 'nope.weight'" in line


def _unknown_layout() -> dict:
    gen = torch.Generator().manual_seed(33)
    net = {f"blocks.{i}.mlp.weight": torch.randn(6, 6, generator=gen) for i in range(12)}
    net["proj.head.weight"] = planted(20, 7, seed=34)
    net["cluster_centers"] = torch.randn(30, P, generator=gen)
    net["norm.weight"] = torch.ones(6)
    opt = {"state": {0: {"exp_avg": torch.zeros(999, P)}}, "param_groups": [{"lr": 0.1}]}
    return {"net_weights": net, "optimizer": opt, "step": 10}


def test_unknown_layout_lists_candidates_and_key_picks_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(_unknown_layout(), tmp_path)
    with pytest.raises(UserError) as info:
        read_prototype_heads(path)
    message = str(info.value)
    assert "unknown checkpoint layout" in message and "--key NAME" in message
    listed = message.split("prototype layers: ")[1].split("; pick one")[0].split(", ")
    names = [item.split(" [")[0] for item in listed]
    assert names[0] == "net_weights.proj.head.weight"  # name looks like a head: first
    assert "net_weights.cluster_centers" in names  # then the largest 2-D tensors
    assert len(names) == 10  # capped, though 14 2-D tensors qualify
    assert not any("exp_avg" in n or "norm.weight" in n for n in names)
    line = one_line_error(*run_cli(["analyze", str(path)], capsys))
    assert "net_weights.proj.head.weight [20x8]" in line
    # A listed name works as --key.
    code, out, err = run_cli(["analyze", str(path), "--key", names[0], "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["heads"][names[0]]["M"] == 7


def test_unknown_layout_lists_weight_normalized_layers_by_layer_name(tmp_path: Path) -> None:
    w = planted(16, 4, seed=35)
    layer = prototype_layer(w, "weight_norm")
    state = {"my_net": {f"cls.proto_layer.{k}": v for k, v in layer.state_dict().items()}}
    path = save(state, tmp_path)
    with pytest.raises(UserError, match=r"my_net\.cls\.proto_layer \[16x8, weight-normalized\]"):
        read_prototype_heads(path)
    _, heads = read_prototype_heads(path, key="my_net.cls.proto_layer")
    torch.testing.assert_close(heads["my_net.cls.proto_layer"], effective_weight(layer))


# ------------------------------------------------------------------ command line


def test_cli_json_reports_format_and_heads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = dinov2_full()
    path = save(layout.state, tmp_path)
    code, out, err = run_cli(["analyze", str(path), "--json"], capsys)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert result["format"] == "dinov2"
    assert set(result["heads"]) == set(layout.expected)
    for name, expected in layout.expected.items():
        head = result["heads"][name]
        assert head["K"] == expected.shape[0]
        assert head["M"] == brute_force_m(expected, EPS) == layout.planted_m[name]
        norms = expected.double().norm(dim=1)  # unnormalized heads: norm distribution
        assert head["norm_quantiles"]["q0"] == pytest.approx(float(norms.min()), rel=1e-5)
        assert head["norm_quantiles"]["q100"] == pytest.approx(float(norms.max()), rel=1e-5)


def test_cli_table_says_which_format_it_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(swav_multi_published().state, tmp_path)
    code, out, err = run_cli(["analyze", str(path)], capsys)
    assert code == 0 and out == ""
    assert "format swav (auto-detected)" in err
    assert "prototypes1: K 30  M 9" in err and "prototype norms" in err
    code, out, err = run_cli(["analyze", str(path), "--format", "swav"], capsys)
    assert code == 0 and "format swav (as requested)" in err


def test_cli_format_choices_are_the_library_formats() -> None:
    parser = build_parser()
    for fmt in FORMAT_CHOICES:
        assert parser.parse_args(["analyze", "x.pt", "--format", fmt]).format == fmt
    assert set(FORMATS) == {"protossl", "dino", "ibot", "dinov2", "msn", "swav", "esvit"}
    with pytest.raises(SystemExit):
        parser.parse_args(["analyze", "x.pt", "--format", "moco"])


def test_protossl_checkpoints_read_as_before(tmp_path: Path) -> None:
    layout = protossl_run()
    fmt, heads = read_prototype_heads(save(layout.state, tmp_path))
    assert fmt == "protossl" and list(heads) == ["student", "teacher"]
    with pytest.raises(UserError, match="does not have the protossl layout"):
        read_prototype_heads(save(dino_full().state, tmp_path, "dino.pth"), format="protossl")


def test_protossl_separate_patch_head_is_its_own_head(tmp_path: Path) -> None:
    # iBOT with model.shared_head=false: the patch head must not replace the class head.
    layout = protossl_run()
    state = dict(layout.state)
    method = dict(state["method"])
    patch = torch.randn(48, 8)
    method["student.patch_head.prototypes.weight"] = patch
    state["method"] = method
    fmt, heads = read_prototype_heads(save(state, tmp_path))
    assert fmt == "protossl"
    assert sorted(heads) == ["student", "student/patch_head", "teacher"]
    assert torch.equal(heads["student"], method["student.head.prototypes.weight"].float())
    assert torch.equal(heads["student/patch_head"], patch)


# ------------------------------------------------------------------ safety


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_saved_args_load_but_code_never_runs(tmp_path: Path) -> None:
    state = dino_full().state
    marker = tmp_path / "marker"
    state["args"] = argparse.Namespace(arch="vit_small", hook=_Payload(marker))
    path = save(state, tmp_path)
    with pytest.raises(UserError, match="refused to load"):
        read_prototype_heads(path)
    assert not marker.exists()
    # The Namespace allowance is scoped to the reader: a plain weights_only load still
    # refuses a Namespace afterwards.
    plain = save({"args": training_args()}, tmp_path, "args.pth")
    with pytest.raises(Exception, match="Namespace"):
        torch.load(plain, weights_only=True)
