"""The contract between the trainer and a self-supervised method.

A method owns its student and teacher networks and its objective. The trainer
only calls the methods below, so adding a method (iBOT, MSN, SwAV, ...) is a new
file with ``@register_method("name")`` and no branch in the trainer.

Example:
    >>> from protossl.config import load_config
    >>> method = build_method(load_config("dino", overrides=["model.num_prototypes=64"]))
    >>> method.student_prototypes().shape
    torch.Size([64, 128])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from protossl.config import Config
from protossl.core.errors import UserError
from protossl.core.registry import Registry


@dataclass(frozen=True)
class StepContext:
    """Where a training step sits in the run, and its scheduled values (read-only).

    ``Trainer.train_step`` builds it from the global step and the trainer's
    ``Schedules``, which precompute every schedule once per run from the config.
    A method reads a scheduled value here instead of recomputing the schedule, so
    there is one implementation of each and a resumed run sees exactly the values
    an uninterrupted one would. Step-count rules (SwAV's frozen prototypes and
    queue start) use ``step`` and ``epoch``.

    Attributes:
        step: global optimisation step, from 0.
        epoch: epoch of ``step``.
        steps_per_epoch: optimisation steps in one epoch.
        total_steps: optimisation steps in the whole run.
        patch_teacher_temp: iBOT's patch-token teacher temperature at ``step``
            (Zhou et al., ICLR 2022: warmed up like DINO's class-token one); None
            outside the trainer, where iBOT uses the final ``ibot.patch_teacher_temp``.
            The class-token teacher temperature is ``training_step``'s own argument.
    """

    step: int = 0
    epoch: int = 0
    steps_per_epoch: int = 1
    total_steps: int = 1
    patch_teacher_temp: float | None = None


@runtime_checkable
class PrototypeRowState(Protocol):
    """State kept per prototype row (a center entry, a neighbour cache), reset with the row."""

    def reset_rows(self, index: torch.Tensor) -> None:
        """Forget what depends on prototype rows ``index`` (as freshly built)."""


@dataclass
class StepOutput:
    """What one training step produced: the loss to backpropagate and its parts."""

    loss: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class: a student trained by gradient descent and an EMA teacher."""

    student: nn.Module
    teacher: nn.Module
    # Target builders (objective.target) whose maths fits this method; None: any.
    supported_targets: tuple[str, ...] | None = None

    def training_step(
        self,
        crops: list[torch.Tensor],
        teacher_temp: float,
        context: StepContext | None = None,
    ) -> StepOutput:
        """Loss for one batch of multi-crop views (globals first), updating running targets."""
        raise NotImplementedError

    def frozen_parameters(self, context: StepContext) -> list[nn.Parameter]:
        """Parameters whose gradient is dropped at this step, beyond the trainer's
        ``optim.freeze_last_layer_epochs`` (e.g. SwAV's first iterations); default none."""
        return []

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, on parameters only.

        As in DINO, buffers (BatchNorm statistics) are not averaged: the teacher
        keeps its own running statistics from the global crops it sees.
        """
        for t_param, s_param in zip(
            self.teacher.parameters(), self.student.parameters(), strict=True
        ):
            t_param.mul_(momentum).add_(s_param.detach(), alpha=1 - momentum)

    # The accessors below assume the layout every bundled method uses: ``student`` and
    # ``teacher`` each have a ``backbone`` and a ``head`` whose ``prototypes`` layer holds
    # the prototype matrix. A method with another layout overrides them.

    def student_prototypes(self) -> torch.Tensor:
        """The student's prototype matrix [K, p] (unnormalized)."""
        return _prototype_weight(self.student)

    def teacher_prototypes(self) -> torch.Tensor:
        """The teacher's prototype matrix [K, p] (unnormalized)."""
        return _prototype_weight(self.teacher)

    def prototype_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters frozen during the first epochs (DINO's ``freeze_last_layer``)."""
        return _prototype_layer(self.student).parameters()

    def prototype_layers(self) -> dict[str, nn.Module]:
        """Every prototype layer by name (student and teacher; iBOT adds its patch heads).

        Prototype strategies change rows of all of them at once, so that student and
        teacher keep the same prototypes (``Trainer.reset_prototype_rows``).
        """
        return {
            "student": _prototype_layer(self.student),
            "teacher": _prototype_layer(self.teacher),
        }

    def prototype_state_modules(self) -> dict[str, list[PrototypeRowState]]:
        """Modules whose state follows prototype rows, by the student layer they follow.

        Each has ``reset_rows(index)`` (per-prototype centers of the target builders,
        KoLeo-proto's candidate cache, ...); ``Trainer.reset_prototype_rows`` calls it for
        the rows it re-seeds. By default every submodule with ``reset_rows`` follows
        ``"student"`` (the main prototypes, and their teacher copy), except one whose
        attribute name starts with ``patch_`` when :meth:`prototype_layers` has a
        separate ``"student_patch"`` layer (iBOT's ``patch_target_builder``). A method
        with another layout overrides this.
        """
        patch = "student_patch" in self.prototype_layers()
        found: dict[str, list[PrototypeRowState]] = {}
        for name, module in self.named_modules():
            if module is self or not isinstance(module, PrototypeRowState):
                continue
            layer = "student_patch" if patch and name.startswith("patch_") else "student"
            found.setdefault(layer, []).append(module)
        return found

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features of the teacher, used for kNN and other frozen evaluations."""
        backbone = self.teacher.get_submodule("backbone")
        return backbone(images)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher prototype scores for evaluation images (their argmax is the cluster)."""
        raise NotImplementedError


def _prototype_layer(net: nn.Module) -> nn.Module:
    """``net.head.prototypes`` (typed: ``nn.Module`` attributes are untyped)."""
    return net.get_submodule("head.prototypes")


def _prototype_weight(net: nn.Module) -> torch.Tensor:
    weight = _prototype_layer(net).weight
    assert isinstance(weight, torch.Tensor)  # a Parameter in both prototype layers
    return weight


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a method to the registry under ``name`` (unique)."""
    return METHODS.register(name)


def build_method(cfg: Config) -> Method:
    """Build the method named by ``cfg.method`` (seeded by the caller)."""
    cls = METHODS.lookup(cfg.method)
    supported = getattr(cls, "supported_targets", None)
    if supported is not None and cfg.objective.target not in supported:
        raise UserError(
            f"method '{cfg.method}' cannot use objective.target={cfg.objective.target!r}; "
            f"it supports: {', '.join(supported)}"
        )
    return cls(cfg)
