"""iBOT's config section ``ibot:`` (Zhou et al., ICLR 2022; official defaults).

Read by :class:`protossl.methods.ibot.IBOT`, and by the trainer's ``Schedules``, which
warm up the patch teacher temperature for every method (used by iBOT only).

Example:
    >>> IBOTConfig(mask_ratio=[0.5, 0.1]).validate()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    protossl.core.errors.UserError: ibot.mask_ratio must be [low, high] with 0 <= low ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protossl.method_config.base import MethodSection, register_section, require

__all__ = ["IBOTConfig"]


@register_section("ibot")
@dataclass
class IBOTConfig(MethodSection):
    """iBOT's masked image modeling (Zhou et al., ICLR 2022; official defaults)."""

    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])  # per-image range
    mask_probability: float = 0.5  # fraction of images in a batch that are masked
    patch_teacher_temp: float = 0.07
    warmup_patch_teacher_temp: float = 0.04
    patch_loss_weight: float = 1.0  # lambda2 (class-token loss weight lambda1 = 1)

    def validate(self) -> None:
        """Mask ratios in [0, 1), a probability, positive temperatures and weight >= 0."""
        ratio = self.mask_ratio
        require(
            len(ratio) == 2 and 0 <= ratio[0] <= ratio[1] < 1,
            f"ibot.mask_ratio must be [low, high] with 0 <= low <= high < 1 (got {ratio})",
        )
        require(0 <= self.mask_probability <= 1, "ibot.mask_probability must be in [0, 1]")
        require(
            self.patch_teacher_temp > 0 and self.warmup_patch_teacher_temp > 0,
            "ibot.patch_teacher_temp and ibot.warmup_patch_teacher_temp must be > 0",
        )
        require(self.patch_loss_weight >= 0, "ibot.patch_loss_weight must be >= 0")
