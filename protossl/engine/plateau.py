"""Stuck-run detection: warn once when a run sits on DINO's uniform plateau.

DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
ICCV 2021) avoids collapse by balancing two opposite forces on the teacher's
targets: *centering* (subtracting a running mean of the teacher logits) pushes
them towards the uniform distribution, *sharpening* (a low teacher temperature)
pushes them towards one-hot. With centering but not enough sharpening (teacher
temperature too high, or an embedding that no longer tells images apart) the
targets become uniform over the K prototypes. The student then matches them
exactly by predicting the uniform distribution for every image, the
cross-entropy sits at ln K, and the gradient that would separate images is
almost zero: the run is stuck. Its two symptoms are a loss within about 1 % of
ln K and a projection head that maps every image to nearly the
same embedding (``embedding_mean_cosine`` of :class:`~protossl.engine.monitor.
CollapseMonitor` near 1).

:class:`PlateauDetector` reads the per-epoch records the trainer writes to
``metrics.jsonl`` and returns one warning line, once, when either symptom shows
after a warm-up (every run starts close to uniform).

Example:
    >>> import math
    >>> detector = PlateauDetector(warmup_steps=100)
    >>> healthy = {"step": 200, "loss": 1.2, "K": 1024, "embedding_mean_cosine": 0.4}
    >>> detector.observe(healthy) is None
    True
    >>> stuck = {"step": 300, "loss": math.log(1024), "K": 1024, "embedding_mean_cosine": 0.999}
    >>> detector.observe(stuck).startswith("step 300: the run is stuck on the uniform plateau")
    True
    >>> detector.observe(stuck) is None  # only once per run
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The plateau: the loss within this fraction of ln K, or embeddings this similar.
LOSS_TOLERANCE = 0.01
COSINE_THRESHOLD = 0.99

FIXES = (
    "likely causes: centering without enough sharpening (objective.teacher_temp too high), "
    "or a learning rate that collapsed the head early; fixes: lower optim.lr or raise "
    "optim.warmup_epochs, lower objective.teacher_temp, try model.use_bn_in_head=true, "
    "a smaller data.local_scale gap, objective.target=sinkhorn, or see docs/recipe.md"
)


def _number(record: Mapping[str, Any], key: str) -> float | None:
    """``record[key]`` as a finite float; None when missing, not a number, NaN or inf."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class PlateauDetector:
    """Warns once per run when training sits on the uniform plateau after a warm-up.

    Fed every epoch record (``step``, ``loss``, ``K``, ``embedding_mean_cosine``;
    ``cross_entropy`` is used instead of ``loss`` when present, since regularizers
    such as KoLeo-proto or iBOT's patch loss shift the total away from ln K). The
    run is on the plateau when ``|loss - ln K| <= loss_tolerance * ln K`` or when
    ``embedding_mean_cosine > cosine_threshold``. Missing or NaN values are ignored.

    The only state is ``warned``. It is not checkpointed: a resumed run that is
    still on the plateau warns once more, which is intended (the user changed
    nothing, or resumed to see whether it would leave the plateau).

    Args:
        warmup_steps: No warning for records with ``step`` below this (default 100).
        loss_tolerance: Relative distance to ln K that counts as the plateau (0.01).
        cosine_threshold: Mean embedding cosine above which the head has collapsed (0.99).
    """

    def __init__(
        self,
        warmup_steps: int = 100,
        loss_tolerance: float = LOSS_TOLERANCE,
        cosine_threshold: float = COSINE_THRESHOLD,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 (got {warmup_steps})")
        if not loss_tolerance >= 0:
            raise ValueError(f"loss_tolerance must be >= 0 (got {loss_tolerance})")
        self.warmup_steps = warmup_steps
        self.loss_tolerance = loss_tolerance
        self.cosine_threshold = cosine_threshold
        self.warned = False

    def observe(self, record: Mapping[str, Any]) -> str | None:
        """A one-line warning the first time ``record`` shows the plateau; else None."""
        if self.warned:
            return None
        step = _number(record, "step")
        if step is None or step < self.warmup_steps:
            return None
        seen: list[str] = []
        loss_key = "cross_entropy" if _number(record, "cross_entropy") is not None else "loss"
        loss = _number(record, loss_key)
        num_prototypes = _number(record, "K")
        if loss is not None and num_prototypes is not None and num_prototypes > 1:
            log_k = math.log(num_prototypes)
            if abs(loss - log_k) <= self.loss_tolerance * log_k:
                seen.append(
                    f"{loss_key.replace('_', '-')} {loss:.4f} is within "
                    f"{self.loss_tolerance * 100:g}% of ln K = {log_k:.4f} "
                    f"(K = {num_prototypes:.0f}{_entropy_note(record)})"
                )
        cosine = _number(record, "embedding_mean_cosine")
        if cosine is not None and cosine > self.cosine_threshold:
            seen.append(
                "the projection head maps every image to nearly the same embedding "
                f"(mean cosine {cosine:.3f})"
            )
        if not seen:
            return None
        self.warned = True
        return (
            f"step {step:.0f}: the run is stuck on the uniform plateau of DINO: "
            + " and ".join(seen)
            + "; "
            + FIXES
        )


def _entropy_note(record: Mapping[str, Any]) -> str:
    entropy = _number(record, "target_entropy")
    return "" if entropy is None else f", teacher target entropy {entropy:.4f} nats"
