"""SwAV's config section ``swav:`` (Caron et al., NeurIPS 2020; official defaults).

Read by :class:`protossl.methods.swav.SwAV`: Sinkhorn-Knopp's epsilon and iterations,
the prototype freeze of the first iterations, and the feature queue.

Example:
    >>> SwAVConfig(queue_length=-1).validate()
    Traceback (most recent call last):
    ...
    protossl.core.errors.UserError: swav.queue_length must be >= 0 (got -1)
"""

from __future__ import annotations

from dataclasses import dataclass

from protossl.method_config.base import MethodSection, register_section, require

__all__ = ["SwAVConfig"]


@register_section("swav")
@dataclass
class SwAVConfig(MethodSection):
    """SwAV (Caron et al., NeurIPS 2020; official defaults)."""

    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_steps: int = 313  # official: the first 313 iterations
    queue_length: int = 0  # 0: no queue
    queue_start_epoch: int = 15

    def validate(self) -> None:
        """A positive epsilon, at least one iteration, and non-negative counts."""
        require(self.epsilon > 0, f"swav.epsilon must be > 0 (got {self.epsilon})")
        require(self.sinkhorn_iterations >= 1, "swav.sinkhorn_iterations must be >= 1")
        require(self.freeze_prototypes_steps >= 0, "swav.freeze_prototypes_steps must be >= 0")
        require(self.queue_length >= 0, f"swav.queue_length must be >= 0 (got {self.queue_length})")
        require(self.queue_start_epoch >= 0, "swav.queue_start_epoch must be >= 0")
