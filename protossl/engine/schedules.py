"""Per-step hyper-parameter schedules used by DINO-family training.

Both functions reproduce the schedules of DINO (Caron et al., "Emerging
Properties in Self-Supervised Vision Transformers", ICCV 2021; official
``utils.cosine_scheduler`` and the teacher-temperature warm-up of
``main_dino.DINOLoss``), expressed in optimisation steps rather than
epochs x iterations-per-epoch so that ``--max-steps`` runs work unchanged.

A schedule is a plain ``numpy.ndarray`` with one value per step; the trainer
indexes it with the global step. Precomputing the whole array (as DINO does)
keeps the trainer free of schedule state, which makes resuming exact.
:class:`Schedules` holds every schedule of a run, built once from the config, and
sets the optimizer's learning rate and weight decay of a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protossl.config import Config

__all__ = ["Schedules", "cosine_schedule", "linear_warmup_schedule"]


def _check_steps(total_steps: int, warmup_steps: int) -> None:
    """Raise ValueError for step counts that cannot describe a schedule."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 (got {total_steps})")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0 (got {warmup_steps})")


def cosine_schedule(
    base_value: float,
    final_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warm-up followed by a cosine decay, one value per step (DINO).

    Follows DINO's ``utils.cosine_scheduler`` (Caron et al., 2021) exactly:
    the first ``warmup_steps`` values go linearly from ``start_warmup_value``
    to ``base_value`` (both included, ``numpy.linspace``); the remaining
    ``n = total_steps - warmup_steps`` values are
    ``final + 0.5 * (base - final) * (1 + cos(pi * i / n))`` for ``i = 0..n-1``.
    As in DINO, the last value is therefore one step short of ``final_value``
    (it would be reached at ``i = n``). DINO uses it for the learning rate
    (warm-up from 0), the weight decay (0.04 -> 0.4) and the teacher EMA
    momentum (0.996 -> 1).

    A ``warmup_steps`` larger than ``total_steps`` is clipped, so a very short
    debugging run (``--max-steps 5``) still gets a schedule of the right length.

    Args:
        base_value: Value at the end of warm-up and start of the cosine.
        final_value: Value the cosine decays towards.
        total_steps: Length of the schedule (>= 1).
        warmup_steps: Number of linear warm-up steps (>= 0).
        start_warmup_value: First value of the warm-up.

    Returns:
        A float64 array of shape ``[total_steps]``.

    Raises:
        ValueError: If ``total_steps < 1`` or ``warmup_steps < 0``.

    Example:
        >>> lr = cosine_schedule(5e-4, 1e-6, total_steps=1000, warmup_steps=100)
        >>> lr.shape, float(lr[0]), float(lr[99])
        ((1000,), 0.0, 0.0005)
    """
    _check_steps(total_steps, warmup_steps)
    warmup_steps = min(warmup_steps, total_steps)
    warmup = np.linspace(start_warmup_value, base_value, warmup_steps)
    n = total_steps - warmup_steps
    # n == 0 only when warm-up fills the whole schedule; arange(0) is then empty
    # and max(n, 1) merely avoids a 0/0 on an empty array.
    i = np.arange(n)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * i / max(n, 1)))
    return np.concatenate((warmup, cosine)).astype(np.float64)


def linear_warmup_schedule(
    start_value: float,
    end_value: float,
    warmup_steps: int,
    total_steps: int,
) -> np.ndarray:
    """Linear ramp from ``start_value`` to ``end_value``, then constant (DINO).

    This is DINO's teacher-temperature warm-up (Caron et al., 2021,
    ``--warmup_teacher_temp 0.04 --teacher_temp 0.07``, 30 epochs): a low
    teacher temperature at the start sharpens the targets and helps avoid the
    uniform collapse. The ramp includes both end points (``numpy.linspace``),
    as in the official code; ``warmup_steps`` beyond ``total_steps`` is clipped.

    Args:
        start_value: First value of the ramp.
        end_value: Last value of the ramp and value for all later steps.
        warmup_steps: Length of the ramp (>= 0).
        total_steps: Length of the schedule (>= 1).

    Returns:
        A float64 array of shape ``[total_steps]``.

    Raises:
        ValueError: If ``total_steps < 1`` or ``warmup_steps < 0``.

    Example:
        >>> t = linear_warmup_schedule(0.04, 0.07, warmup_steps=3, total_steps=5)
        >>> [round(float(v), 3) for v in t]
        [0.04, 0.055, 0.07, 0.07, 0.07]
    """
    _check_steps(total_steps, warmup_steps)
    warmup_steps = min(warmup_steps, total_steps)
    ramp = np.linspace(start_value, end_value, warmup_steps)
    constant = np.full(total_steps - warmup_steps, end_value, dtype=np.float64)
    return np.concatenate((ramp, constant)).astype(np.float64)


@dataclass(frozen=True)
class Schedules:
    """Per-step values of every scheduled hyper-parameter.

    The one place each schedule is computed: methods get this step's values
    through :class:`~protossl.methods.StepContext` (``Trainer.train_step``), not by
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
        """DINO's schedules for a run of ``total_steps`` steps (lr scaled by batch / 256)."""
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

    def set_hyperparameters(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Step ``step``'s learning rate on every group, its weight decay on the first
        (the others hold the parameters without weight decay)."""
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = float(self.lr[step])
            if i == 0:
                group["weight_decay"] = float(self.weight_decay[step])

    def values(self, step: int) -> dict[str, float]:
        """The values at ``step`` that an epoch's metrics record reports."""
        return {
            "lr": float(self.lr[step]),
            "weight_decay": float(self.weight_decay[step]),
            "teacher_temp": float(self.teacher_temp[step]),
            "teacher_momentum": float(self.teacher_momentum[step]),
        }
