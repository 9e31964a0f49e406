"""MSN's config section ``msn:`` (Assran et al., ECCV 2022; PMSN: Assran et al., ICLR 2023).

Read by :class:`protossl.methods.msn.MSN`; PMSN is MSN with
``objective.mlcd_regularizer=prior-kl``, so it has no section of its own.

Example:
    >>> MSNConfig(sharpen_temp=0.0).validate()
    Traceback (most recent call last):
    ...
    protossl.core.errors.UserError: msn.sharpen_temp must be > 0 (got 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass

from protossl.method_config.base import MethodSection, register_section, require

__all__ = ["MSNConfig"]


@register_section("msn")
@dataclass
class MSNConfig(MethodSection):
    """MSN / PMSN (Assran et al., ECCV 2022; PMSN: Assran et al., ICLR 2023)."""

    mask_ratio: float = 0.15  # fraction of the anchor's patches dropped (ViT-S)
    sharpen_temp: float = 0.25  # target sharpening T
    use_sinkhorn: bool = True

    def validate(self) -> None:
        """A mask ratio in [0, 1) and a positive sharpening temperature."""
        require(
            0 <= self.mask_ratio < 1, f"msn.mask_ratio must be in [0, 1) (got {self.mask_ratio})"
        )
        require(self.sharpen_temp > 0, f"msn.sharpen_temp must be > 0 (got {self.sharpen_temp})")
