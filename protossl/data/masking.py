"""Block-wise masking of a ViT's patch grid for masked image modeling (iBOT).

From iBOT (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer",
ICLR 2022), whose official ``ImageFolderMask`` follows BEiT's block masking:
for each image a prediction ratio r is drawn, and random rectangles (area at
least ``(min(rows, cols) // 3) ** 2`` patches, aspect ratio log-uniform in
[0.3, 1/0.3], strictly smaller than the grid in both directions) are added
until ``floor(r * N)`` of the N patches are masked; a rectangle is accepted
only if it adds at least one new patch and does not overshoot the target.
iBOT masks only a fraction of the images (``--pred_ratio 0 0.3
--pred_ratio_var 0 0.2``: half of the images get r ~ U(0.1, 0.5), the others
r = 0), which is ``mask_probability`` here.

Two choices differ from the official loop, both for small grids (4x4 tokens at
16 px): the official loop gives up after 10 failed attempts at a new block and
may leave fewer masked patches than drawn; here the remainder is filled with
1x1 blocks (single patches) so that every masked image has exactly
``floor(r * N)`` masked patches. And the masked images are an exact fraction
``round(mask_probability * B)`` of the batch (as DINOv2's collate), chosen at
random, rather than a coin flip per image.

All randomness comes from torch's global generator (or the one passed in):
the ratios and the choice of masked images are torch draws, and the block
loop runs on a Python ``random.Random`` seeded by one torch draw, so
``torch.manual_seed`` reproduces the masks (and the trainer's per-epoch
seeding reproduces them on resume).

Example:
    >>> masking = BlockMasking(mask_ratio=(0.1, 0.5), mask_probability=0.5)
    >>> masks = masking(batch=8, grid=(4, 4))
    >>> masks.shape, masks.dtype
    (torch.Size([8, 4, 4]), torch.bool)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["BlockMasking", "block_mask"]

# Largest seed drawn from torch for the Python generator of the block loop.
_SEED_HIGH = 2**62


def block_mask(
    rows: int,
    cols: int,
    num_masked: int,
    rng: random.Random,
    min_aspect: float = 0.3,
    max_attempts: int = 10,
) -> np.ndarray:
    """A bool [rows, cols] mask with exactly ``num_masked`` True patches, in blocks.

    iBOT / BEiT block masking (see the module docstring): rectangles of area
    ``U(max(1, (min(rows, cols) // 3) ** 2), remaining)`` and aspect ratio
    log-uniform in ``[min_aspect, 1 / min_aspect]``, each strictly smaller than
    the grid, accepted when they add between 1 and ``remaining`` new patches.
    When ``max_attempts`` draws in a row add nothing, the remaining patches are
    masked one by one at random positions (1x1 blocks).

    Args:
        rows, cols: Token grid (>= 1 each).
        num_masked: Number of patches to mask, in [0, rows * cols].
        rng: Source of randomness.
        min_aspect: Smallest aspect ratio h / w of a block, in (0, 1].
        max_attempts: Draws per block before falling back to single patches.

    Example:
        >>> mask = block_mask(4, 4, 5, random.Random(0))
        >>> int(mask.sum())
        5
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"the grid must have rows, cols >= 1 (got {rows}x{cols})")
    if not 0 <= num_masked <= rows * cols:
        raise ValueError(f"num_masked must be in [0, {rows * cols}] (got {num_masked})")
    if not 0 < min_aspect <= 1:
        raise ValueError(f"min_aspect must be in (0, 1] (got {min_aspect})")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1 (got {max_attempts})")
    mask = np.zeros((rows, cols), dtype=bool)
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    min_area = max(1, (min(rows, cols) // 3) ** 2)
    count = 0
    while count < num_masked:
        remaining = num_masked - count
        added = 0
        for _ in range(max_attempts):
            area = rng.uniform(min_area, remaining)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (1 <= h < rows and 1 <= w < cols):
                continue
            top = rng.randint(0, rows - h)
            left = rng.randint(0, cols - w)
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= remaining:
                block[:] = True
                added = new
                break
        if added == 0:
            # No block fits (tiny grid, or few patches left): finish with 1x1 blocks.
            free = np.flatnonzero(~mask.reshape(-1))
            chosen = rng.sample(free.tolist(), remaining)
            mask.reshape(-1)[chosen] = True
            added = remaining
        count += added
    return mask


class BlockMasking:
    """iBOT's random block masks for a batch of images on a token grid.

    A fraction ``mask_probability`` of the images (exactly
    ``round(mask_probability * B)``, chosen at random) gets a ratio
    ``r ~ U(mask_ratio[0], mask_ratio[1])`` and a block mask with
    ``floor(r * N)`` masked patches; the other images get none.

    Args:
        mask_ratio: [low, high] range of the per-image ratio, 0 <= low <= high < 1
            (iBOT: [0.1, 0.5]).
        mask_probability: Fraction of the images that are masked, in [0, 1] (iBOT: 0.5).
        min_aspect: Smallest block aspect ratio (iBOT: 0.3, the largest is 1/0.3).
        max_attempts: Draws per block before single patches fill the rest (iBOT: 10).

    Example:
        >>> masking = BlockMasking(mask_ratio=(0.1, 0.5), mask_probability=1.0)
        >>> ratios = masking.draw_ratios(4)
        >>> masks = masking.masks_for_ratios(ratios, grid=(4, 4))
        >>> bool((masks.flatten(1).sum(1) == (ratios * 16).floor()).all())
        True
    """

    def __init__(
        self,
        mask_ratio: Sequence[float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        min_aspect: float = 0.3,
        max_attempts: int = 10,
    ) -> None:
        if len(mask_ratio) != 2 or not 0 <= mask_ratio[0] <= mask_ratio[1] < 1:
            raise ValueError(
                f"mask_ratio must be [low, high] with 0 <= low <= high < 1 (got {mask_ratio})"
            )
        if not 0 <= mask_probability <= 1:
            raise ValueError(f"mask_probability must be in [0, 1] (got {mask_probability})")
        if not 0 < min_aspect <= 1:
            raise ValueError(f"min_aspect must be in (0, 1] (got {min_aspect})")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (got {max_attempts})")
        self.mask_ratio = (float(mask_ratio[0]), float(mask_ratio[1]))
        self.mask_probability = float(mask_probability)
        self.min_aspect = float(min_aspect)
        self.max_attempts = int(max_attempts)

    def num_masked_images(self, batch: int) -> int:
        """How many of ``batch`` images are masked: ``round(mask_probability * batch)``."""
        # Half up (not Python's banker's rounding), so p = 0.5 masks 1 of 1 and 2 of 3.
        return int(math.floor(self.mask_probability * batch + 0.5))

    def draw_ratios(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-image ratios [B] (float64): U(low, high) for the masked images, 0 for the others."""
        if batch < 0:
            raise ValueError(f"batch must be >= 0 (got {batch})")
        low, high = self.mask_ratio
        ratios = low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)
        chosen = torch.randperm(batch, generator=generator)[: self.num_masked_images(batch)]
        keep = torch.zeros(batch, dtype=torch.bool)
        keep[chosen] = True
        return torch.where(keep, ratios, torch.zeros_like(ratios))

    def masks_for_ratios(
        self,
        ratios: torch.Tensor,
        grid: tuple[int, int],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Bool masks [B, rows, cols] with ``floor(ratio * rows * cols)`` patches each."""
        rows, cols = grid
        num_patches = rows * cols
        if ratios.dim() != 1 or bool(((ratios < 0) | (ratios >= 1)).any()):
            raise ValueError("ratios must be a 1-d tensor of values in [0, 1)")
        seed = int(torch.randint(0, _SEED_HIGH, (1,), generator=generator).item())
        rng = random.Random(seed)
        masks = np.zeros((ratios.shape[0], rows, cols), dtype=bool)
        for i, ratio in enumerate(ratios.tolist()):
            target = int(math.floor(ratio * num_patches))
            if target > 0:
                masks[i] = block_mask(rows, cols, target, rng, self.min_aspect, self.max_attempts)
        return torch.from_numpy(masks)

    def __call__(
        self,
        batch: int,
        grid: tuple[int, int],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Bool masks [B, rows, cols] for one view of a batch (True: masked patch)."""
        return self.masks_for_ratios(self.draw_ratios(batch, generator), grid, generator)

    def __repr__(self) -> str:
        return (
            f"BlockMasking(mask_ratio={list(self.mask_ratio)}, "
            f"mask_probability={self.mask_probability}, min_aspect={self.min_aspect})"
        )
