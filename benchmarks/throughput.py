"""Images/second of a full DINO training step: protossl (standard and batched augmentation)
against lightly's DINO, on the same backbone, crops, batch and K.

Protocol:
- one process, ``torch.set_num_threads(--threads)`` (2: the CPU target of issue 6), data
  loading in the main process (``num_workers=0``, both libraries' default);
- data: the ``digits`` training split (1,438 8x8 images, RGB), crops as protossl's default
  data config: 2 global crops of 16 px (scale 0.4-1) and 4 local crops of 7 px (scale
  0.05-0.4), DINO's jitter/grayscale/blur/solarize probabilities, blur sigma 0.1-2.0 scaled
  by 16/224 in both libraries;
- backbone: protossl's ``vit_tiny`` (4 blocks, width 96, patch 4; the small ViT the iBOT
  presets use and the one meant for two CPU cores), the same module class in both;
- head: 3-layer MLP, hidden 512, bottleneck 128, K weight-normalized prototypes
  (protossl's ``dino`` preset defaults; lightly's ``DINOProjectionHead`` with those sizes);
- loss: DINO cross-entropy with teacher centering, student 0.1 / teacher 0.04
  (protossl's ``dino`` preset; lightly's ``DINOLoss``);
- optimizer: AdamW on the student in both; EMA teacher update every step (protossl's
  ``Method.update_teacher``; lightly's ``update_momentum`` on backbone and head);
- one step = take the next batch from the loader (the augmentation: PIL per image for
  protossl ``standard`` and lightly's ``DINOTransform``; uint8 decode in the loader, then
  ``BatchedMultiCrop`` on the batch for protossl ``batched``), forward (teacher on the
  2 global crops, student on all 6), loss, backward, optimizer step, EMA update.
  protossl's step is the trainer's own (``Trainer.train_step``: schedules, per-parameter
  gradient clipping at 3.0, loss all-reduce bookkeeping), after the prototype-freezing
  epoch; lightly's follows its DINO example (each view through the network separately,
  ``cancel_last_layer_gradients`` after the freezing epoch, no clipping);
- for each setting (batch, K): the three runners are built, each takes 2 warm-up steps,
  then ``--repeats`` rounds each time every runner ``--steps`` steps, in a rotating order
  (alternating, so load from other processes hits all of them alike); images/second of a
  runner is the median over rounds, and the ratio protossl / lightly is the median of the
  per-round ratios (min-max in brackets);
- ``aug %``: the share of the step spent getting the crops (loader + batched pipeline);
- a second table times the augmentation alone, milliseconds per image (2 + 4 crops) over
  the first 256 training images, median of 3 rounds: lightly's ``DINOTransform``;
  torchvision's transforms as protossl composed them before this pipeline was rebuilt
  (``GaussianBlur`` on the PIL image); protossl ``standard``; protossl ``batched``
  (uint8 conversion, collation and ``BatchedMultiCrop`` on the whole batch).

The tables are written between the markers of the thread count in ``docs/throughput.md``;
nothing there is typed.

Usage (lightly lives only in the benchmark's own environment):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-bench/bin/pip install lightly && .venv-bench/bin/pip install -e .
    .venv-bench/bin/python benchmarks/throughput.py [--batches 64 128] [--ks 1024 4096]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protossl.config import load_config  # noqa: E402
from protossl.data import load_dataset  # noqa: E402
from protossl.data.multicrop import blur_parameters, default_local_size  # noqa: E402
from protossl.engine.trainer import Trainer  # noqa: E402
from protossl.models import build_backbone  # noqa: E402

IMAGE_SIZE = 16
NUM_LOCAL = 4
HIDDEN, BOTTLENECK = 512, 128
LR, WEIGHT_DECAY, MOMENTUM = 5e-4, 0.04, 0.996
DOC = ROOT / "docs" / "throughput.md"


@dataclass
class Runner:
    """A way to train: ``next_batch`` (loader, augmentation) and ``step`` (the rest)."""

    name: str
    batches: Iterator[Any]
    crops: Any
    step: Any
    images_per_second: list[float] = field(default_factory=list)
    aug_share: list[float] = field(default_factory=list)

    def run(self, steps: int, batch: int) -> tuple[float, float]:
        spent_on_crops = 0.0
        started = time.perf_counter()
        for i in range(steps):
            t = time.perf_counter()
            crops = self.crops(next(self.batches))
            spent_on_crops += time.perf_counter() - t
            self.step(crops, i)
        seconds = time.perf_counter() - started
        return steps * batch / seconds, spent_on_crops / seconds


def protossl_runner(batch: int, k: int, augmentation: str, workdir: Path) -> Runner:
    cfg = load_config(
        "dino",
        overrides=[
            "model.backbone=vit_tiny",
            f"model.num_prototypes={k}",
            f"model.head_hidden_dim={HIDDEN}",
            f"model.bottleneck_dim={BOTTLENECK}",
            f"data.image_size={IMAGE_SIZE}",
            f"data.num_local_crops={NUM_LOCAL}",
            f"data.batch_size={batch}",
            f"data.augmentation={augmentation}",
            f"optim.lr={LR}",
            "runtime.device=cpu",
            "monitor.monitor_samples=16",
            "monitor.eval_knn=false",
        ],
    )
    torch.manual_seed(0)
    trainer = Trainer(cfg, workdir / f"protossl-{augmentation}-{batch}-{k}", progress=False)
    trainer.method.train()

    def batches() -> Iterator[Any]:
        for epoch in count():
            torch.manual_seed(epoch)
            yield from trainer._loader(epoch)

    def step(crops: list[torch.Tensor], i: int) -> None:
        # epoch 1: after DINO's prototype-freezing epoch, as lightly's runner.
        trainer.train_step(crops, i % trainer.total_steps, epoch=1)

    return Runner(f"protossl {augmentation}", batches(), trainer.augmentation.crops, step)


def lightly_runner(batch: int, k: int) -> Runner:
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.dino_transform import DINOTransform

    torch.manual_seed(0)
    _, sigma = blur_parameters(IMAGE_SIZE)
    transform = DINOTransform(
        global_crop_size=IMAGE_SIZE,
        global_crop_scale=(0.4, 1.0),
        local_crop_size=default_local_size(IMAGE_SIZE),
        local_crop_scale=(0.05, 0.4),
        n_local_views=NUM_LOCAL,
        sigmas=sigma,
    )
    images = load_dataset("digits", "train")

    class Views(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
            image, label = images[index]
            return transform(image), label

    loader = torch.utils.data.DataLoader(
        Views(),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(0),
    )

    class LightlyDINO(torch.nn.Module):
        # lightly's DINO example, with protossl's backbone module.
        def __init__(self) -> None:
            super().__init__()
            backbone = build_backbone("vit_tiny", IMAGE_SIZE)
            dim = backbone.embed_dim
            self.student_backbone = backbone
            self.student_head = DINOProjectionHead(dim, HIDDEN, BOTTLENECK, k, freeze_last_layer=1)
            self.teacher_backbone = copy.deepcopy(backbone)
            self.teacher_head = DINOProjectionHead(dim, HIDDEN, BOTTLENECK, k)
            deactivate_requires_grad(self.teacher_backbone)
            deactivate_requires_grad(self.teacher_head)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.student_head(self.student_backbone(x).flatten(start_dim=1))

        def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
            return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))

    model = LightlyDINO().train()
    criterion = DINOLoss(output_dim=k, warmup_teacher_temp=0.04, teacher_temp=0.04)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY
    )

    def batches() -> Iterator[Any]:
        while True:
            yield from loader

    def crops(batch_: Any) -> list[torch.Tensor]:
        views, _labels = batch_
        return list(views)

    def step(views: list[torch.Tensor], i: int) -> None:
        update_momentum(model.student_backbone, model.teacher_backbone, m=MOMENTUM)
        update_momentum(model.student_head, model.teacher_head, m=MOMENTUM)
        teacher_out = [model.forward_teacher(v) for v in views[:2]]
        student_out = [model.forward(v) for v in views]
        loss = criterion(teacher_out, student_out, teacher_temp=0.04)
        loss.backward()
        model.student_head.cancel_last_layer_gradients(current_epoch=1)
        optimizer.step()
        optimizer.zero_grad()

    return Runner("lightly", batches(), crops, step)


def measure(batch: int, k: int, steps: int, repeats: int, workdir: Path) -> dict[str, Any]:
    runners = [
        lightly_runner(batch, k),
        protossl_runner(batch, k, "standard", workdir),
        protossl_runner(batch, k, "batched", workdir),
    ]
    for runner in runners:
        runner.run(2, batch)  # warm-up: allocator, optimizer state, first-call costs
    for r in range(repeats):
        for j in range(len(runners)):
            runner = runners[(r + j) % len(runners)]
            speed, share = runner.run(steps, batch)
            runner.images_per_second.append(speed)
            runner.aug_share.append(share)
            print(
                f"  batch {batch} K {k} round {r}: {runner.name:18s} {speed:7.1f} img/s "
                f"(aug {100 * share:.0f}%)",
                file=sys.stderr,
                flush=True,
            )
    lightly = runners[0].images_per_second
    row: dict[str, Any] = {"batch": batch, "K": k}
    for runner in runners:
        row[runner.name] = (
            statistics.median(runner.images_per_second),
            statistics.median(runner.aug_share),
        )
        if runner.name != "lightly":
            ratios = [a / b for a, b in zip(runner.images_per_second, lightly, strict=True)]
            row[runner.name + " ratio"] = (statistics.median(ratios), min(ratios), max(ratios))
    return row


def torchvision_multicrop() -> Any:
    """protossl's former MultiCropTransform: torchvision's transforms, its tensor blur."""
    from torchvision import transforms as T

    kernel, sigma = blur_parameters(IMAGE_SIZE)
    local = default_local_size(IMAGE_SIZE)
    kernel = min(kernel, 2 * local - 1)
    bicubic = T.InterpolationMode.BICUBIC
    jitter = T.Compose(
        [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
    )
    normalize = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def view(size: int, scale: tuple[float, float], blur: float, solarize: float) -> Any:
        steps = [
            T.RandomResizedCrop(size, scale=scale, interpolation=bicubic),
            jitter,
            T.RandomApply([T.GaussianBlur(kernel, sigma=sigma)], p=blur),
        ]
        if solarize:
            steps.append(T.RandomSolarize(threshold=128, p=solarize))
        return T.Compose([*steps, normalize])

    g1 = view(IMAGE_SIZE, (0.4, 1.0), 1.0, 0.0)
    g2 = view(IMAGE_SIZE, (0.4, 1.0), 0.1, 0.2)
    lc = view(local, (0.05, 0.4), 0.5, 0.0)
    return lambda img: [g1(img), g2(img)] + [lc(img) for _ in range(NUM_LOCAL)]


def augmentation_table(rounds: int = 3, count: int = 256) -> str:
    from lightly.transforms.dino_transform import DINOTransform

    from protossl.data import BatchedMultiCrop, MultiCropTransform
    from protossl.data.batched_augment import collate_images, image_to_uint8

    images = [load_dataset("digits", "train")[i][0] for i in range(count)]
    _, sigma = blur_parameters(IMAGE_SIZE)
    lightly_transform = DINOTransform(
        global_crop_size=IMAGE_SIZE,
        local_crop_size=default_local_size(IMAGE_SIZE),
        n_local_views=NUM_LOCAL,
        sigmas=sigma,
    )
    former = torchvision_multicrop()
    standard = MultiCropTransform(IMAGE_SIZE, NUM_LOCAL)
    batched = BatchedMultiCrop(IMAGE_SIZE, NUM_LOCAL)

    def run_batched() -> None:
        batch = collate_images([(image_to_uint8(im), i, 0) for i, im in enumerate(images)])
        batched(batch[0], batch[2], batch[1])

    pipelines = {
        "lightly DINOTransform": lambda: [lightly_transform(im) for im in images],
        "torchvision (protossl before)": lambda: [former(im) for im in images],
        "protossl standard": lambda: [standard(im) for im in images],
        "protossl batched": run_batched,
    }
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, run in pipelines.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) / count * 1e3)
    reference = statistics.median(times["lightly DINOTransform"])
    lines = ["| augmentation | ms per image | speed vs lightly |", "|---|---:|---:|"]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.3f} | {reference / median:.1f}x |")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| batch | K | lightly img/s (aug %) | protossl standard img/s (aug %) | ratio "
        "| protossl batched img/s (aug %) | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [str(row["batch"]), f"{row['K']:,}"]
        for name in ("lightly", "protossl standard", "protossl batched"):
            speed, share = row[name]
            cells.append(f"{speed:.0f} ({100 * share:.0f}%)")
            if name != "lightly":
                median, low, high = row[name + " ratio"]
                cells.append(f"**{median:.2f}x** ({low:.2f}-{high:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_doc(block: str, threads: int) -> None:
    # One generated block per thread count, between its own markers.
    start, end = (
        f"<!-- throughput:threads={threads}:start -->",
        f"<!-- throughput:threads={threads}:end -->",
    )
    text = DOC.read_text() if DOC.exists() else "# Throughput\n"
    if start not in text or end not in text:
        text = text.rstrip() + f"\n\n### {threads} thread(s)\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{start}\n{block}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--ks", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per setting")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    import lightly
    import timm

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batches:
            for k in args.ks:
                rows.append(measure(batch, k, args.steps, args.repeats, Path(tmp)))
    augmentation = augmentation_table()
    minutes = (time.perf_counter() - t0) / 60
    load_after = os.getloadavg()
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    block = "\n".join(
        [
            f"Generated by `{command.strip()}` ({started}, {minutes:.1f} min): "
            f"{_cpu_model()}, {os.cpu_count()} logical CPUs, torch threads "
            f"{torch.get_num_threads()}, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; torch {torch.__version__}, "
            f"torchvision {__import__('torchvision').__version__}, timm {timm.__version__}, "
            f"lightly {lightly.__version__}. {args.repeats} rounds of {args.steps} steps per "
            f"runner and setting; 1-minute load average {load_before[0]:.2f} before, "
            f"{load_after[0]:.2f} after (above {args.threads} means other processes shared "
            "the cores).",
            "",
            table(rows),
            "",
            "Augmentation alone (same threads, 2 x 16 px + 4 x 7 px crops of digits):",
            "",
            augmentation,
        ]
    )
    print(block)
    if not args.no_write:
        write_doc(block, args.threads)
        print(f"written to {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
