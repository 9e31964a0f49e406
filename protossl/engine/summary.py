"""A run's ``summary.json``: what it ended with, in one dict.

One job: the summary the trainer writes when ``fit`` returns (and ``protossl train``
prints): the collapse monitor's K, M and usage at the end, the prototype statistics, the
images read, the wall time, the versions, and a kNN evaluation when a finished run asks
for one (``monitor.eval_knn``).
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import torch

import protossl
from protossl.diagnostics import summarize_prototypes
from protossl.evaluation.knn_eval import evaluate_knn

if TYPE_CHECKING:  # the trainer imports this module
    from protossl.engine.trainer import Trainer

__all__ = ["run_summary", "versions"]

USAGE_KEYS = ("usage_entropy", "usage_perplexity", "prototypes_used", "dead_prototypes")


def versions() -> dict[str, str]:
    """The versions of protossl, torch, timm and Python that ran."""
    import timm

    return {
        "protossl": protossl.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def run_summary(trainer: Trainer, finished: bool) -> dict[str, Any]:
    """The summary of ``trainer``'s run now (``finished``: it trained to the end)."""
    cfg, method = trainer.cfg, trainer.method
    measured = trainer.monitor.measure(method)
    summary: dict[str, Any] = {
        "method": cfg.method,
        "finished": finished,
        "data": cfg.data.spec,
        "steps": min(trainer.num_epochs * trainer.steps_per_epoch, trainer.total_steps)
        if finished
        else None,
        "epochs": trainer.num_epochs,
        "K": measured["K"],
        "M": measured["M"],
        "M_over_K": measured["M_over_K"],
        "eps": cfg.monitor.eps,
        "usage": {key: measured[key] for key in USAGE_KEYS},
        "prototypes": summarize_prototypes(
            method.student_prototypes().detach(), eps=cfg.monitor.eps
        ),
        "skipped_files": trainer.train_set.num_skipped,
        "images": trainer.train_set.listing_counts(),
        "wall_time_seconds": trainer.elapsed_before,
        "versions": versions(),
    }
    if finished and cfg.monitor.eval_knn:
        summary["eval"] = evaluate_knn(method, cfg, progress=trainer.progress)
    return summary
