"""The trainer: EMA teacher, DINO schedules, monitoring, atomic checkpoints, exact resume.

It knows nothing about a particular method: it calls ``Method.training_step``,
``update_teacher`` and the collapse monitor. Schedules follow DINO
(Caron et al. 2021): cosine learning rate with linear warm-up (scaled by
batch/256), cosine weight decay, cosine teacher momentum to 1, and a linear
teacher-temperature warm-up; the prototype layer is frozen for the first
``freeze_last_layer_epochs`` epochs.

The loop is the trainer's; every other job is a small component of this package, one
per module: the schedules (:mod:`~protossl.engine.schedules`), prototype freezing
(:mod:`~protossl.engine.freezing`), checkpoints (:mod:`~protossl.engine.checkpointing`),
metrics.jsonl and TensorBoard (:mod:`~protossl.engine.metrics_log`), the live monitor
(:mod:`~protossl.engine.live_monitor`, a built-in hook) and summary.json
(:mod:`~protossl.engine.summary`). Hooks (:mod:`~protossl.engine.hooks`) run at fixed
points of the loop.

Resume is exact: every epoch starts from a seed derived from (seed, epoch)
for both the data order and the augmentations, and a checkpoint at an epoch
boundary holds everything else, so a run stopped after epoch e and resumed
reproduces the uninterrupted run bit for bit on CPU.

Example:
    >>> cfg = load_config("dino", overrides=["optim.epochs=2"])  # doctest: +SKIP
    >>> summary = Trainer(cfg, Path("runs/dino")).fit()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from protossl.config import Config, save_config
from protossl.core import distributed
from protossl.core.errors import UserError
from protossl.core.files import atomic_write_text
from protossl.core.run_layout import RunPaths
from protossl.data import EvalTransform, build_train_augmentation, load_dataset
from protossl.data.sampling import ShardedEpochSampler, epoch_seed
from protossl.engine.checkpointing import Checkpointer
from protossl.engine.freezing import GradientFreezer
from protossl.engine.hooks import TrainerHook, build_hooks
from protossl.engine.live_monitor import LiveMonitor
from protossl.engine.memory import check_memory_for_device
from protossl.engine.metrics_log import TIMING_KEYS, MetricsLog, epoch_record, format_record
from protossl.engine.monitor import CollapseMonitor, monitor_images
from protossl.engine.optimizers import build_optimizer
from protossl.engine.plateau import PlateauDetector
from protossl.engine.runtime import Runtime
from protossl.engine.schedules import Schedules
from protossl.engine.summary import run_summary
from protossl.methods import Method, StepContext, build_method
from protossl.runs.checkpoint import config_of_run
from protossl.runs.folder import FolderLock, check_owned, claim_run_folder
from protossl.runs.init_from import initialize_backbones

# Importable from here as before their modules existed.
__all__ = [
    "TIMING_KEYS",
    "Schedules",
    "Trainer",
    "TrainingDivergedError",
    "clip_gradients_per_parameter",
]


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""


def clip_gradients_per_parameter(module: torch.nn.Module, max_norm: float) -> None:
    """Clip each parameter's gradient to norm ``max_norm`` separately (DINO's clip_gradients)."""
    for param in module.parameters():
        if param.grad is not None:
            norm = param.grad.detach().norm(2)
            scale = max_norm / (norm + 1e-6)
            if scale < 1:
                param.grad.mul_(scale)


class Trainer:
    """Trains one method on one data set into one run directory."""

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        resume: bool = False,
        progress: bool | None = None,
    ) -> None:
        self.paths = RunPaths(Path(run_dir))
        self.resume = resume
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.checkpointer = Checkpointer(self.paths)
        # The checkpoint this run resumes from (None for a new run), as read.
        self.resumed_state: dict[str, Any] | None = self.checkpointer.open(resume)
        self.cfg = cfg
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        # Under torchrun: join the process group (gloo on CPU, nccl on GPU). A single
        # process never touches torch.distributed.
        distributed.init_from_environment()
        check_owned(self.paths.root)  # never a folder that is not protossl's
        if cfg.data.batch_size % distributed.world_size():
            raise UserError(
                f"data.batch_size ({cfg.data.batch_size}) is the global batch and must be "
                f"divisible by the {distributed.world_size()} processes"
            )

        self.hooks: list[TrainerHook] = build_hooks(cfg)  # the prototype strategy's, if any
        # Built-in hooks, after those: stateless, so not in the checkpoint's "hooks".
        self.components: list[TrainerHook] = [LiveMonitor(cfg)]
        self.runtime = Runtime(cfg.runtime)
        # Before anything large exists: an impossible K or width is one line, not an OOM.
        check_memory_for_device(cfg, distributed.world_size(), self.runtime.device)
        torch.manual_seed(cfg.seed)
        self.method: Method = build_method(cfg)
        if self.resumed_state is None and cfg.model.init_from:
            # A new run starts its backbones from pretrained weights (every rank reads the
            # same file); a resumed run has its own weights in its checkpoint.
            initialize_backbones(self.method, cfg.model.init_from, cfg.model.backbone)
        self.runtime.prepare(self.method)
        # data.augmentation: PIL per image in the loader, or whole batches on the device.
        self.augmentation = build_train_augmentation(cfg.data, self.runtime.device)
        self.train_set = load_dataset(cfg.data.spec, "train", transform=self.augmentation.transform)
        self.steps_per_epoch = len(self.train_set) // cfg.data.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"data set '{cfg.data.spec}' has {len(self.train_set)} training images, fewer "
                f"than one batch of {cfg.data.batch_size}; lower data.batch_size"
            )
        total = cfg.optim.epochs * self.steps_per_epoch
        if cfg.optim.max_steps is not None:
            total = min(total, cfg.optim.max_steps)
        self.total_steps = total
        self.num_epochs = math.ceil(total / self.steps_per_epoch)
        self.schedules = Schedules.from_config(cfg, self.total_steps, self.steps_per_epoch)
        self.optimizer = build_optimizer(cfg.optim.optimizer, self.method.student)
        self.freezer = GradientFreezer(self.method, cfg.optim.freeze_last_layer_epochs)
        self.monitor = CollapseMonitor(self._monitor_images(), eps=cfg.monitor.eps)
        self.plateau = PlateauDetector()  # warns once if the run sits at loss ln K
        self.metrics_log = MetricsLog(self.paths)
        self.start_epoch = 0
        self.elapsed_before = 0.0
        if self.resumed_state is not None:
            restored = self.checkpointer.restore(
                self.resumed_state, self.method, self.optimizer, self.hooks
            )
            self.start_epoch, self.elapsed_before = restored.start_epoch, restored.elapsed_seconds
        # Last, so that a configuration or data error creates no run folder: one writer per
        # run folder from here to the end of fit (rank 0 writes, the others only read).
        self._lock = claim_run_folder(self.paths.root) if distributed.is_main_process() else None

    # ------------------------------------------------------------------ set-up

    def _eval_transform(self) -> EvalTransform:
        return EvalTransform(self.cfg.data.image_size)

    def _monitor_images(self) -> torch.Tensor:
        return monitor_images(self.cfg)

    @staticmethod
    def config_of_run(run_dir: str | Path) -> Config:
        """The configuration saved in a run's last checkpoint."""
        return config_of_run(run_dir)

    # ---------------------------------------------------------------- training

    def _loader(self, epoch: int) -> DataLoader:
        # This rank's slice of every global batch; each image's augmentation is seeded
        # by (seed, epoch, index), so one process and W processes see the same crops.
        sampler = ShardedEpochSampler(
            len(self.train_set),
            global_batch=self.cfg.data.batch_size,
            seed=self.cfg.seed,
            epoch=epoch,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
        )
        return DataLoader(
            self.augmentation.dataset(self.train_set),
            batch_size=sampler.local_batch,
            sampler=sampler,
            drop_last=True,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.runtime.pin_memory,
            persistent_workers=False,
            collate_fn=self.augmentation.collate,
        )

    def batches(self, epoch: int) -> Iterator[list[torch.Tensor]]:
        """The crops of every batch of ``epoch`` (globals first), in training order.

        The same crops as :meth:`fit` sees; benchmarks feed them to a reference trainer.
        """
        torch.manual_seed(epoch_seed(self.cfg.seed, epoch))
        for batch in self._loader(epoch):
            yield self.augmentation.crops(batch)

    def train_step(self, crops: list[torch.Tensor], step: int, epoch: int) -> dict[str, float]:
        """One optimisation step at global ``step`` (schedules, clipping, freezing, EMA)."""
        self.schedules.set_hyperparameters(self.optimizer, step)
        context = StepContext(
            step=step,
            epoch=epoch,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            patch_teacher_temp=float(self.schedules.patch_teacher_temp[step]),
        )
        crops = self.runtime.to_device(crops)
        with self.runtime.autocast():
            out = self.method.training_step(
                crops, float(self.schedules.teacher_temp[step]), context=context
            )
        # Loss and terms averaged over processes (the global batch's values); every
        # rank sees the same numbers, so all stop together on a NaN.
        names = sorted(out.terms)
        values = torch.tensor(
            [float(out.loss.detach()), *(out.terms[n] for n in names)], dtype=torch.float64
        )
        values = distributed.all_reduce_mean(values)
        terms = dict(zip(names, values[1:].tolist(), strict=True))
        if not math.isfinite(float(values[0])):
            raise TrainingDivergedError(
                f"loss became {float(values[0])} at step {step} (epoch {epoch}); "
                f"the last good checkpoint is kept in {self.paths.checkpoints}; "
                "lower optim.lr or raise objective.teacher_temp, then --resume"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.runtime.backward(out.loss)
        self.runtime.unscale(self.optimizer)
        distributed.all_reduce_gradients(self.method.student.parameters())
        if self.cfg.optim.clip_grad > 0:
            clip_gradients_per_parameter(self.method.student, self.cfg.optim.clip_grad)
        self.freezer.apply(context)  # DINO's first epochs, the method's own rule (SwAV)
        self.runtime.step(self.optimizer)
        self.method.update_teacher(float(self.schedules.teacher_momentum[step]))
        return terms

    @torch.no_grad()
    def reset_prototype_rows(
        self,
        rows: list[int],
        values: torch.Tensor,
        layers: tuple[str, ...] = ("student", "teacher"),
    ) -> None:
        """Set prototype ``rows`` of the named layers to ``values`` [len(rows), p] and
        forget everything that depended on the old rows, in one place.

        What a prototype strategy calls to re-seed prototypes: student and teacher get
        the same rows; their optimizer state (AdamW's moments, SGD's momentum) is zeroed,
        so the new rows are not pushed with the old rows' moments; and every module that
        follows those rows (``Method.prototype_state_modules()``: per-prototype centers go
        back to a fresh builder's values, KoLeo-proto's candidate cache is invalidated)
        resets them. The other rows are untouched. Every rank must call it with the same
        arguments; the reset state is in the next checkpoint, so a resume is exact.
        """
        index = torch.as_tensor(rows, dtype=torch.long)
        named = self.method.prototype_layers()
        for name in layers:
            weight = named[name].get_parameter("weight")
            weight[index] = values.to(weight.device, weight.dtype)
            for moment in self.optimizer.state.get(weight, {}).values():
                if isinstance(moment, torch.Tensor) and moment.shape == weight.shape:
                    moment[index] = 0
        states = self.method.prototype_state_modules()  # keyed by the student layer
        for group in sorted({name.replace("teacher", "student") for name in layers}):
            for module in states.get(group, []):
                module.reset_rows(index)

    def fit(self, stop_after_epochs: int | None = None) -> dict[str, Any]:
        """Train to the end (or pause after ``stop_after_epochs`` epochs); returns the summary.

        The run folder's lock is held from construction to the end of ``fit`` (taken
        again if ``fit`` is called once more), then released for the next writer.
        """
        if self._lock is None and distributed.is_main_process():
            self._lock = FolderLock(self.paths.root)
        try:
            return self._fit(stop_after_epochs)
        finally:
            self.release_folder()

    def release_folder(self) -> None:
        """Drop the run folder's lock (``fit`` does it when it returns or fails)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _fit(self, stop_after_epochs: int | None) -> dict[str, Any]:
        main = distributed.is_main_process()
        if main:
            self.paths.checkpoints.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.paths.config)
            self.metrics_log.open(self.start_epoch, self.start_epoch * self.steps_per_epoch)
        started = time.perf_counter()
        bar = tqdm(
            total=self.total_steps,
            initial=min(self.start_epoch * self.steps_per_epoch, self.total_steps),
            disable=not (self.progress and main),
            desc=f"train {self.cfg.method}",
            unit="step",
            dynamic_ncols=True,
        )
        last_epoch = self.num_epochs
        if stop_after_epochs is not None:
            last_epoch = min(last_epoch, stop_after_epochs)
        record: dict[str, Any] = {}
        self.method.train()
        hooks = [*self.hooks, *self.components]
        for hook in hooks:
            hook.on_train_start(self)
        for epoch in range(self.start_epoch, last_epoch):
            epoch_started = time.perf_counter()
            torch.manual_seed(epoch_seed(self.cfg.seed, epoch))
            sums: dict[str, float] = {}
            count = 0
            for i, batch in enumerate(self._loader(epoch)):
                if epoch * self.steps_per_epoch + i >= self.total_steps:
                    break
                step = epoch * self.steps_per_epoch + i
                terms = self.train_step(self.augmentation.crops(batch), step, epoch)
                for hook in hooks:  # the strategy's, then the live monitor
                    hook.on_step_end(self, step, epoch)
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{terms['loss']:.3f}", M=record.get("M", "-"))
            seconds = time.perf_counter() - epoch_started
            record = epoch_record(
                epoch,
                step,
                sums,
                count,
                seconds,
                schedules=self.schedules,
                monitor=self.monitor,
                method=self.method,
                batch_size=self.cfg.data.batch_size,
            )
            for hook in hooks:
                hook.on_epoch_end(self, epoch, record)
            if main and (message := self.plateau.observe(record)) is not None:
                tqdm.write(f"warning: {message}", file=sys.stderr)  # one line, above the bar
            if main:
                self.metrics_log.append(record)
                if not self.progress:
                    print(format_record(self.cfg.method, record), file=sys.stderr, flush=True)
                elapsed = self.elapsed_before + time.perf_counter() - started
                self.checkpointer.save(self, epoch + 1, step + 1, elapsed)
        bar.close()
        self.metrics_log.close()
        self.elapsed_before += time.perf_counter() - started
        self.start_epoch = max(self.start_epoch, last_epoch)  # a later fit() continues here
        finished = last_epoch >= self.num_epochs
        summary: dict[str, Any] = {"finished": finished}
        if main:
            summary = run_summary(self, finished)
            atomic_write_text(self.paths.summary, json.dumps(summary, indent=2) + "\n")
        distributed.barrier()  # no rank leaves before the summary and checkpoint exist
        return summary
