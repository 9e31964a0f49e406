"""The trainer: EMA teacher, DINO schedules, monitoring, atomic checkpoints, exact resume.

It knows nothing about a particular method: it calls ``Method.training_step``,
``update_teacher`` and the collapse monitor. Schedules follow DINO
(Caron et al. 2021): cosine learning rate with linear warm-up (scaled by
batch/256), cosine weight decay, cosine teacher momentum to 1, and a linear
teacher-temperature warm-up; the prototype layer is frozen for the first
``freeze_last_layer_epochs`` epochs.

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
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import protossl
from protossl.config import Config, save_config
from protossl.core import distributed
from protossl.core.errors import UserError
from protossl.core.files import atomic_write_text
from protossl.core.run_layout import RunPaths
from protossl.data import EvalTransform, build_train_augmentation, load_dataset
from protossl.data.sampling import ShardedEpochSampler, epoch_seed
from protossl.diagnostics import summarize_prototypes
from protossl.engine.hooks import TrainerHook, build_hooks
from protossl.engine.memory import check_memory_for_device
from protossl.engine.monitor import CollapseMonitor, monitor_images
from protossl.engine.optimizers import build_optimizer
from protossl.engine.plateau import PlateauDetector
from protossl.engine.runtime import Runtime
from protossl.engine.schedules import cosine_schedule, linear_warmup_schedule
from protossl.evaluation.knn_eval import evaluate_knn
from protossl.methods import Method, StepContext, build_method
from protossl.runs.checkpoint import (
    config_of_run,
    read_training_checkpoint,
    save_training_checkpoint,
    training_state,
)
from protossl.runs.folder import FolderLock, check_owned, claim_run_folder

# Keys of metrics.jsonl that depend on the wall clock, not on the computation.
TIMING_KEYS = ("seconds", "images_per_second", "monitor_seconds")


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class Schedules:
    """Per-step values of every scheduled hyper-parameter.

    The one place each schedule is computed: methods get this step's values
    through :class:`~protossl.methods.StepContext` (``train_step``), not by
    recomputing them.
    """

    lr: np.ndarray
    weight_decay: np.ndarray
    teacher_momentum: np.ndarray
    teacher_temp: np.ndarray
    # iBOT's patch-token teacher temperature (Zhou et al., ICLR 2022): its own end
    # points, warmed up over the same epochs as ``teacher_temp`` (official iBOT's
    # teacher_temp2 schedule). Computed for every method, used by iBOT only.
    patch_teacher_temp: np.ndarray

    @classmethod
    def from_config(cls, cfg: Config, total_steps: int, steps_per_epoch: int) -> Schedules:
        op, ob, ib = cfg.optim, cfg.objective, cfg.ibot
        temp_warmup_steps = ob.warmup_teacher_temp_epochs * steps_per_epoch
        base_lr = op.lr * cfg.data.batch_size / 256.0  # DINO's linear scaling rule
        return cls(
            lr=cosine_schedule(
                base_lr, op.min_lr, total_steps, warmup_steps=op.warmup_epochs * steps_per_epoch
            ),
            weight_decay=cosine_schedule(op.weight_decay, op.weight_decay_end, total_steps),
            teacher_momentum=cosine_schedule(op.momentum_teacher, 1.0, total_steps),
            teacher_temp=linear_warmup_schedule(
                ob.warmup_teacher_temp, ob.teacher_temp, temp_warmup_steps, total_steps
            ),
            patch_teacher_temp=linear_warmup_schedule(
                ib.warmup_patch_teacher_temp, ib.patch_teacher_temp, temp_warmup_steps, total_steps
            ),
        )


def clip_gradients_per_parameter(module: torch.nn.Module, max_norm: float) -> None:
    """Clip each parameter's gradient to norm ``max_norm`` separately (DINO's clip_gradients)."""
    for param in module.parameters():
        if param.grad is not None:
            norm = param.grad.detach().norm(2)
            scale = max_norm / (norm + 1e-6)
            if scale < 1:
                param.grad.mul_(scale)


def _versions() -> dict[str, str]:
    import timm

    return {
        "protossl": protossl.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


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
        self._checkpoint: dict[str, Any] | None = None
        if resume:
            if not self.paths.last_checkpoint.is_file():
                raise UserError(
                    f"cannot resume: {self.paths.last_checkpoint} does not exist; "
                    "start a new run without --resume"
                )
            self._checkpoint = read_training_checkpoint(self.paths.last_checkpoint)
        elif self.paths.last_checkpoint.exists():
            raise UserError(
                f"{self.paths.root} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
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
        self.runtime = Runtime(cfg.runtime)
        # Before anything large exists: an impossible K or width is one line, not an OOM.
        check_memory_for_device(cfg, distributed.world_size(), self.runtime.device)
        torch.manual_seed(cfg.seed)
        self.method: Method = build_method(cfg)
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
        self.monitor = CollapseMonitor(self._monitor_images(), eps=cfg.monitor.eps)
        self.plateau = PlateauDetector()  # warns once if the run sits at loss ln K
        self.start_epoch = 0
        self.elapsed_before = 0.0
        if self._checkpoint is not None:
            self._restore(self._checkpoint)
        # Last, so that a configuration or data error creates no run folder: one writer per
        # run folder from here to the end of fit (rank 0 writes, the others only read).
        self._lock = claim_run_folder(self.paths.root) if distributed.is_main_process() else None

    # ------------------------------------------------------------------ set-up

    def _eval_transform(self) -> EvalTransform:
        return EvalTransform(self.cfg.data.image_size)

    def _monitor_images(self) -> torch.Tensor:
        return monitor_images(self.cfg)

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.start_epoch = int(state["epoch"])
            hook_states = state.get("hooks", [{} for _ in self.hooks])
            for hook, hook_state in zip(self.hooks, hook_states, strict=True):
                hook.load_state_dict(hook_state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"{self.paths.last_checkpoint} does not match this configuration ({first}); "
                "resume with the run's own config.yaml"
            ) from None
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))

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

    def _set_hyperparameters(self, step: int) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.schedules.lr[step])
            if i == 0:
                group["weight_decay"] = float(self.schedules.weight_decay[step])

    def batches(self, epoch: int) -> Iterator[list[torch.Tensor]]:
        """The crops of every batch of ``epoch`` (globals first), in training order.

        The same crops as :meth:`fit` sees; benchmarks feed them to a reference trainer.
        """
        torch.manual_seed(epoch_seed(self.cfg.seed, epoch))
        for batch in self._loader(epoch):
            yield self.augmentation.crops(batch)

    def train_step(self, crops: list[torch.Tensor], step: int, epoch: int) -> dict[str, float]:
        """One optimisation step at global ``step`` (schedules, clipping, freezing, EMA)."""
        self._set_hyperparameters(step)
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
        if epoch < self.cfg.optim.freeze_last_layer_epochs:
            # DINO freezes the prototypes during the first epoch(s) for stability.
            for param in self.method.prototype_parameters():
                param.grad = None
        for param in self.method.frozen_parameters(context):
            param.grad = None
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
        forget their optimizer state (AdamW's moments, SGD's momentum), in one place.

        What a prototype strategy calls to re-seed prototypes: student and teacher get
        the same rows, and the optimizer does not push the new rows with the old rows'
        moments. Every rank must call it with the same arguments.
        """
        index = torch.as_tensor(rows, dtype=torch.long)
        named = self.method.prototype_layers()
        for name in layers:
            weight = named[name].get_parameter("weight")
            weight[index] = values.to(weight.device, weight.dtype)
            for moment in self.optimizer.state.get(weight, {}).values():
                if isinstance(moment, torch.Tensor) and moment.shape == weight.shape:
                    moment[index] = 0

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
            self._truncate_metrics(self.start_epoch)
        writer = self._tensorboard() if main else None
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
        for hook in self.hooks:
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
                for hook in self.hooks:
                    hook.on_step_end(self, step, epoch)
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{terms['loss']:.3f}", M=record.get("M", "-"))
                every = self.cfg.monitor.every_steps
                if writer is not None and every > 0 and (step + 1) % every == 0:
                    for key, value in self.monitor.measure(self.method).items():
                        writer.add_scalar(f"monitor/{key}", value, step + 1)
            seconds = time.perf_counter() - epoch_started
            record = self._epoch_record(epoch, step, sums, count, seconds)
            for hook in self.hooks:
                hook.on_epoch_end(self, epoch, record)
            if main and (message := self.plateau.observe(record)) is not None:
                tqdm.write(f"warning: {message}", file=sys.stderr)  # one line, above the bar
            if main:
                self._append_metrics(record, writer)
                if not self.progress:
                    print(_format_record(self.cfg.method, record), file=sys.stderr, flush=True)
                elapsed = self.elapsed_before + time.perf_counter() - started
                self._save_checkpoint(epoch + 1, step + 1, elapsed)
        bar.close()
        if writer is not None:
            writer.close()
        self.elapsed_before += time.perf_counter() - started
        self.start_epoch = max(self.start_epoch, last_epoch)  # a later fit() continues here
        finished = last_epoch >= self.num_epochs
        summary: dict[str, Any] = {"finished": finished}
        if main:
            summary = self._summary(finished)
            atomic_write_text(self.paths.summary, json.dumps(summary, indent=2) + "\n")
        distributed.barrier()  # no rank leaves before the summary and checkpoint exist
        return summary

    # ------------------------------------------------------------- bookkeeping

    def _epoch_record(
        self, epoch: int, step: int, sums: dict[str, float], count: int, seconds: float
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"epoch": epoch, "step": step + 1}
        record.update({key: value / max(count, 1) for key, value in sums.items()})
        record["lr"] = float(self.schedules.lr[step])
        record["weight_decay"] = float(self.schedules.weight_decay[step])
        record["teacher_temp"] = float(self.schedules.teacher_temp[step])
        record["teacher_momentum"] = float(self.schedules.teacher_momentum[step])
        if not distributed.is_main_process():
            return record  # only the main process measures, logs and writes
        monitor_started = time.perf_counter()
        record.update(self.monitor.measure(self.method))
        # The monitor's own cost, so users can see that leaving it on is cheap.
        record["monitor_seconds"] = time.perf_counter() - monitor_started
        record["seconds"] = seconds
        record["images_per_second"] = count * self.cfg.data.batch_size / max(seconds, 1e-9)
        return record

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            return None
        # purge_step drops events of epochs that a resume recomputes.
        return SummaryWriter(
            log_dir=str(self.paths.tensorboard),
            purge_step=self.start_epoch * self.steps_per_epoch,
        )

    def _append_metrics(self, record: dict[str, Any], writer: Any) -> None:
        with self.paths.metrics.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, record["step"])
            writer.flush()

    def _truncate_metrics(self, epoch: int) -> None:
        # After a resume, epochs from the checkpoint onward are recomputed: drop them.
        if not self.paths.metrics.exists():
            return
        kept = []
        for line in self.paths.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: recomputed anyway
                continue
            if isinstance(record, dict) and record.get("epoch", epoch) < epoch:
                kept.append(line)
        atomic_write_text(self.paths.metrics, "".join(line + "\n" for line in kept))

    def _save_checkpoint(self, next_epoch: int, step: int, elapsed: float) -> None:
        state = training_state(
            self.cfg.to_dict(),
            next_epoch,
            step,
            elapsed,
            self.method.state_dict(),
            self.optimizer.state_dict(),
            [hook.state_dict() for hook in self.hooks],
        )
        save_training_checkpoint(self.paths, state, self.cfg.monitor.checkpoint_every_epochs)

    def _summary(self, finished: bool) -> dict[str, Any]:
        measured = self.monitor.measure(self.method)
        summary: dict[str, Any] = {
            "method": self.cfg.method,
            "finished": finished,
            "data": self.cfg.data.spec,
            "steps": min(self.num_epochs * self.steps_per_epoch, self.total_steps)
            if finished
            else None,
            "epochs": self.num_epochs,
            "K": measured["K"],
            "M": measured["M"],
            "M_over_K": measured["M_over_K"],
            "eps": self.cfg.monitor.eps,
            "usage": {
                key: measured[key]
                for key in (
                    "usage_entropy",
                    "usage_perplexity",
                    "prototypes_used",
                    "dead_prototypes",
                )
            },
            "prototypes": summarize_prototypes(
                self.method.student_prototypes().detach(), eps=self.cfg.monitor.eps
            ),
            "skipped_files": self.train_set.num_skipped,
            "images": self.train_set.listing_counts(),
            "wall_time_seconds": self.elapsed_before,
            "versions": _versions(),
        }
        if finished and self.cfg.monitor.eval_knn:
            summary["eval"] = evaluate_knn(self.method, self.cfg, progress=self.progress)
        return summary


def _format_record(method: str, record: dict[str, Any]) -> str:
    return (
        f"[{method}] epoch {record['epoch']} step {record['step']} loss {record['loss']:.4f} "
        f"M {record['M']}/{record['K']} used {record['prototypes_used']} "
        f"({record['images_per_second']:.0f} img/s)"
    )
