"""Training parity: protossl's DINO trainer against a DINO built from lightly's modules.

Protocol:
- one process, both trainers side by side, step by step, on the *same crops*: every batch
  comes from protossl's own loader (``Trainer.batches``: the augmentation seeded per image)
  and is fed to protossl's ``Trainer.train_step`` and to the reference;
- the same backbone module and initial weights (a deep copy of protossl's student
  backbone), the head's initial weights copied into lightly's ``DINOProjectionHead``
  (MLP layers in order; the weight-normalized last layer's ``weight_v`` = protossl's
  prototype matrix, ``weight_g`` = 1 and frozen, DINO's ``norm_last_layer``);
- the reference is the official DINO training loop written again from its published code
  (facebookresearch/dino ``main_dino.py`` and ``utils.py``) around lightly's modules:
  lightly's ``DINOLoss`` (centering + multi-crop cross-entropy), ``update_momentum`` (EMA of
  parameters), ``cancel_last_layer_gradients`` (first epoch(s)); here: DINO's
  ``MultiCropWrapper`` (one backbone pass per crop resolution, one head pass), its parameter
  groups (no weight decay on biases and 1-d parameters), its ``cosine_scheduler`` for lr
  (scaled by batch/256, linear warm-up), weight decay (on the first group only) and teacher
  momentum, its teacher-temperature warm-up, and its per-parameter ``clip_gradients``;
- ``--dtype float64`` (default) for the parity check: first-step losses must agree to 1e-6
  relative and the trajectories must stay together for ``--steps`` steps; ``float32`` to
  see how far ordinary rounding moves two identical trainings apart;
- kNN top-1 (k = 20, T = 0.07, protossl's kNN on the teacher backbone's features of the
  digits test split against the train split) of both teachers at ``--knn-at`` steps;
- the run's configuration: protossl's ``dino`` preset with ``RECIPE`` and ``--set``
  overrides (default: the demo's data, backbone and K with DINO's other defaults and no
  BatchNorm head: the setting that sits on the plateau in ``docs/recipe.md``; add
  ``--set model.use_bn_in_head=true --set optim.lr=4e-3`` for the demo's recipe).

The table goes between markers in ``docs/parity.md``; nothing there is typed.

Usage (lightly is a benchmark-only dependency: ``pip install --no-deps lightly==1.6.0``,
about 3 MB, no other package; the modules used here need only torch):
    .venv/bin/python benchmarks/parity_lightly.py [--steps 100] [--dtype float64]
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protossl.config import Config, load_config
from protossl.data import EvalTransform, load_dataset
from protossl.engine.trainer import Trainer
from protossl.evaluation.features import extract_features
from protossl.evaluation.knn import knn_accuracy

RECIPE = (
    "model.backbone=cnn_tiny",
    "model.num_prototypes=256",
    "data.image_size=8",
    "data.local_size=4",
    "data.global_scale=[0.4,1.0]",
    "data.local_scale=[0.1,0.4]",
)
MARKER = "parity"


# --------------------------------------------------------------------------- the reference


def dino_cosine_scheduler(
    base: float, final: float, epochs: int, niter_per_ep: int, warmup_epochs: int = 0
) -> np.ndarray:
    """``utils.cosine_scheduler`` of the official DINO code, written again."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(0.0, base, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, schedule))


def _weighted_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))]


class MultiCropWrapper(nn.Module):
    """DINO's ``MultiCropWrapper``: one backbone pass per run of equal-resolution crops."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        sizes = torch.tensor([c.shape[-1] for c in crops])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
        start, outputs = 0, []
        for end in ends.tolist():
            outputs.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(outputs))


@dataclass
class LightlyDINO:
    """The reference trainer: official DINO's loop around lightly's DINO modules."""

    cfg: Config
    student: MultiCropWrapper
    teacher: MultiCropWrapper
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    schedules: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def mirror(cls, trainer: Trainer) -> LightlyDINO:
        """A reference with the protossl trainer's initial weights and hyper-parameters."""
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead

        cfg, m, o, op = trainer.cfg, trainer.cfg.model, trainer.cfg.objective, trainer.cfg.optim
        ours = trainer.method.student
        dtype = next(ours.parameters()).dtype

        def mirrored_net() -> MultiCropWrapper:
            backbone = copy.deepcopy(ours.get_submodule("backbone"))
            head = DINOProjectionHead(
                input_dim=backbone.embed_dim,
                hidden_dim=m.head_hidden_dim,
                bottleneck_dim=m.bottleneck_dim,
                output_dim=m.num_prototypes,
                batch_norm=m.use_bn_in_head,
                freeze_last_layer=op.freeze_last_layer_epochs,
                norm_last_layer=True,
            ).to(dtype)
            with torch.no_grad():
                ours_layers = _weighted_layers(ours.get_submodule("head.mlp"))
                theirs_layers = _weighted_layers(head.layers)
                if [type(x) for x in ours_layers] != [type(x) for x in theirs_layers]:
                    raise SystemExit("protossl's head and lightly's DINOProjectionHead differ")
                for mine, theirs in zip(ours_layers, theirs_layers, strict=True):
                    theirs.weight.copy_(mine.weight)
                    # lightly drops the bias of a Linear followed by BatchNorm (it cancels
                    # in the normalization); DINO keeps it: same outputs either way.
                    if theirs.bias is not None:
                        theirs.bias.copy_(mine.bias)
                head.last_layer.weight_v.copy_(ours.get_submodule("head.prototypes").weight)
                head.last_layer.weight_g.fill_(1.0)
            return MultiCropWrapper(backbone, head)

        # Two builds, not a deep copy: lightly's weight-normalized layer cannot be copied.
        student, teacher = mirrored_net(), mirrored_net()
        for param in teacher.parameters():
            param.requires_grad_(False)
        # DINO's get_params_groups: no weight decay on biases and norm parameters.
        regularized, plain = [], []
        for name, param in student.named_parameters():
            if param.requires_grad:
                (plain if name.endswith(".bias") or param.ndim == 1 else regularized).append(param)
        groups = [{"params": regularized}, {"params": plain, "weight_decay": 0.0}]
        if op.optimizer == "sgd":  # main_dino.py: SGD(params_groups, lr=0, momentum=0.9)
            optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=0, momentum=0.9)
        else:
            optimizer = torch.optim.AdamW(groups)
        epochs, niter = (
            math.ceil(trainer.total_steps / trainer.steps_per_epoch),
            (trainer.steps_per_epoch),
        )
        lr = op.lr * cfg.data.batch_size / 256.0  # main_dino.py's linear scaling rule
        warm = o.warmup_teacher_temp_epochs * niter
        teacher_temp = np.concatenate(
            (
                np.linspace(o.warmup_teacher_temp, o.teacher_temp, warm),
                np.ones(max(epochs * niter - warm, 0)) * o.teacher_temp,
            )
        )
        # protossl schedules over its total steps (--max-steps cuts the cosine short); the
        # reference does the same by describing the run as total_steps / niter epochs.
        schedules = {
            "lr": dino_cosine_scheduler(lr, op.min_lr, epochs, niter, op.warmup_epochs),
            "wd": dino_cosine_scheduler(op.weight_decay, op.weight_decay_end, epochs, niter),
            "momentum": dino_cosine_scheduler(op.momentum_teacher, 1.0, epochs, niter),
            "teacher_temp": teacher_temp,
        }
        loss = DINOLoss(
            output_dim=m.num_prototypes,
            teacher_temp=o.teacher_temp,
            student_temp=o.student_temp,
            center_momentum=o.center_momentum,
        ).to(dtype)
        return cls(cfg, student, teacher, loss, optimizer, niter, trainer.total_steps, schedules)

    def train_step(self, crops: list[torch.Tensor], step: int, epoch: int) -> float:
        from lightly.models.utils import update_momentum

        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.schedules["lr"][step])
            if i == 0:
                group["weight_decay"] = float(self.schedules["wd"][step])
        batch = crops[0].shape[0]
        with torch.no_grad():
            teacher_out = self.teacher(crops[:2]).chunk(2)
        student_out = self.student(crops).split(batch)
        loss = self.loss(
            list(teacher_out),
            list(student_out),
            teacher_temp=float(self.schedules["teacher_temp"][step]),
        )
        self.optimizer.zero_grad()
        loss.backward()
        clip = self.cfg.optim.clip_grad
        if clip > 0:  # utils.clip_gradients: each parameter on its own
            for param in self.student.parameters():
                if param.grad is not None:
                    coef = clip / (param.grad.data.norm(2) + 1e-6)
                    if coef < 1:
                        param.grad.data.mul_(coef)
        self.student.head.cancel_last_layer_gradients(epoch)
        self.optimizer.step()
        update_momentum(self.student, self.teacher, float(self.schedules["momentum"][step]))
        return float(loss.detach())


# --------------------------------------------------------------------------- measurement


def knn_top1(backbone: nn.Module, image_size: int, dtype: torch.dtype) -> float:
    """DINO's weighted kNN (k 20, T 0.07) of ``backbone`` on digits test against train."""
    transform = EvalTransform(image_size)
    train = load_dataset("digits", "train", transform=transform)
    test = load_dataset("digits", "test", transform=transform)
    was_training = backbone.training
    backbone.eval()

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        return backbone(images.to(dtype)).float()

    try:
        train_x, train_y = extract_features(features, train)
        test_x, test_y = extract_features(features, test)
    finally:
        backbone.train(was_training)
    return knn_accuracy(train_x, train_y, test_x, test_y, num_classes=10)["knn_top1@20"]


def run(
    steps: int,
    dtype: torch.dtype,
    overrides: list[str] | tuple[str, ...] = (),
    knn_at: list[int] | tuple[int, ...] = (),
) -> dict[str, Any]:
    """Train both side by side for ``steps`` steps on the same crops; losses and kNN."""
    torch.set_default_dtype(dtype)
    cfg = load_config("dino", overrides=[*RECIPE, *overrides, "monitor.eval_knn=false"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", progress=False)
    torch.set_default_dtype(torch.float32)
    steps = min(steps, trainer.total_steps)
    reference = LightlyDINO.mirror(trainer)
    trainer.method.train()
    reference.student.train()
    reference.teacher.train()
    ours_losses: list[float] = []
    theirs_losses: list[float] = []
    knn: list[tuple[int, float, float]] = []
    started = time.perf_counter()
    step = 0
    for epoch in range(math.ceil(steps / trainer.steps_per_epoch)):
        for crops in trainer.batches(epoch):
            if step >= steps:
                break
            crops = [c.to(dtype) for c in crops]
            ours_losses.append(trainer.train_step(crops, step, epoch)["loss"])
            theirs_losses.append(reference.train_step(crops, step, epoch))
            step += 1
            if step in knn_at:
                knn.append(
                    (
                        step,
                        knn_top1(trainer.method.teacher.get_submodule("backbone"), 8, dtype),
                        knn_top1(reference.teacher.backbone, 8, dtype),
                    )
                )
            if step % 25 == 0:
                print(
                    f"step {step}: protossl {ours_losses[-1]:.6f} lightly {theirs_losses[-1]:.6f}",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        "ours": ours_losses,
        "theirs": theirs_losses,
        "knn": knn,
        "seconds": time.perf_counter() - started,
        "cfg": cfg,
    }


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def format_table(result: dict[str, Any], dtype_name: str, shown: list[int]) -> str:
    ours, theirs = result["ours"], result["theirs"]
    lines = [
        f"Losses, {dtype_name} ({len(ours)} steps, {result['seconds']:.0f} s for both):",
        "",
        "| step | protossl | lightly reference | abs. difference | rel. difference |",
        "|---:|---:|---:|---:|---:|",
    ]
    for step in shown:
        if step <= len(ours):
            a, b = ours[step - 1], theirs[step - 1]
            lines.append(
                f"| {step} | {a:.9f} | {b:.9f} | {abs(a - b):.2e} | {relative(a, b):.2e} |"
            )
    worst = max(relative(a, b) for a, b in zip(ours, theirs, strict=True))
    lines += ["", f"Largest relative difference over all {len(ours)} steps: {worst:.2e}."]
    if result["knn"]:
        lines += [
            "",
            "| step | kNN top-1 protossl | kNN top-1 lightly reference |",
            "|---:|---:|---:|",
        ]
        lines += [f"| {s} | {a:.3f} | {b:.3f} |" for s, a, b in result["knn"]]
    return "\n".join(lines)


def write_docs(path: Path, key: str, table: str) -> None:
    start, end = f"<!-- {MARKER}:{key}:start -->", f"<!-- {MARKER}:{key}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--knn-at", type=int, nargs="*", default=[])
    parser.add_argument("--key", default=None, help="docs/parity.md block name")
    parser.add_argument("--docs", type=Path, default=Path("docs/parity.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    result = run(args.steps, dtype, args.overrides, args.knn_at)
    shown = sorted({1, 2, 5, 10, 25, 50, 100, 200, 500, 1000, 2000, args.steps})
    table = format_table(result, args.dtype, shown)
    settings = " ".join(f"--set {o}" for o in args.overrides) or "(the recipe as is)"
    header = (
        f"`benchmarks/parity_lightly.py --steps {args.steps} --dtype {args.dtype}` "
        f"{settings}; torch {torch.__version__}, {args.threads} threads, "
        f"{platform.machine()}.\n"
    )
    print(table)
    if args.key:
        write_docs(args.docs, args.key, header + "\n" + table)


if __name__ == "__main__":
    main()
