"""The names of a run folder's files, in one place.

A protossl run folder::

    RUN/
      run.json            marker: protossl version, creation time, run id
      .lock               the writer's OS lock (its pid inside)
      config.yaml         the fully resolved configuration
      metrics.jsonl       one JSON object per epoch
      summary.json        final numbers (and eval results)
      checkpoints/last.pt the training checkpoint, replaced atomically
      checkpoints/epoch_NNNN.pt  periodic copies (monitor.checkpoint_every_epochs)
      tensorboard/  cache/  report/  train.log  eval.log

Everything that names one of these goes through :class:`RunPaths`, so a new file is added
here once. The checkpoint's own format (keys, version, migrations) is owned by
:mod:`protossl.runs.checkpoint`.

Example:
    >>> RunPaths(Path("runs/dino")).last_checkpoint.as_posix()
    'runs/dino/checkpoints/last.pt'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHECKPOINT_FORMAT", "LOCK_NAME", "MARKER_NAME", "RUN_STATE_FILES", "RunPaths"]

# The value of a protossl training checkpoint's "format" key (how readers recognise one).
CHECKPOINT_FORMAT = "protossl"
MARKER_NAME = "run.json"
LOCK_NAME = ".lock"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT_NAME = "last.pt"
TRAIN_LOG_NAME = "train.log"
EVAL_LOG_NAME = "eval.log"
# A run's own state: never an output of another command (``protossl.runs.outputs``).
RUN_STATE_FILES = frozenset(
    {
        CONFIG_NAME,
        METRICS_NAME,
        SUMMARY_NAME,
        MARKER_NAME,
        LOCK_NAME,
        TRAIN_LOG_NAME,
        EVAL_LOG_NAME,
    }
)


@dataclass(frozen=True)
class RunPaths:
    """Where a run keeps its files."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER_NAME

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT_NAME

    def epoch_checkpoint(self, epoch: int) -> Path:
        """The periodic copy written after ``epoch`` epochs."""
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_NAME

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_NAME

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def train_log(self) -> Path:
        return self.root / TRAIN_LOG_NAME

    @property
    def eval_log(self) -> Path:
        return self.root / EVAL_LOG_NAME
