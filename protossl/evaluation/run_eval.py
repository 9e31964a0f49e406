"""Evaluate a trained run or checkpoint on frozen features (``protossl eval``).

Example:
    >>> evaluate_run("runs/dino", "digits", None, ["knn"])["results"]  # doctest: +SKIP
    {'knn_top1@20': 0.95, 'knn_top5@20': 0.99}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protossl.config import config_from_dict
from protossl.diagnostics.checkpoints import resolve_checkpoint_path
from protossl.engine.checkpoint import load_checkpoint
from protossl.errors import UserError
from protossl.evaluation.knn_eval import evaluate_knn
from protossl.methods import build_method

PROTOCOLS = ("knn",)


def evaluate_run(
    run: str | Path,
    data: str,
    test_data: str | None,
    protocols: list[str],
) -> dict[str, Any]:
    """Run the requested protocols; a run directory also gets them in its summary.json."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise UserError(
            f"unknown protocol(s) {', '.join(unknown) or '(none given)'}; "
            f"available now: {', '.join(PROTOCOLS)}"
        )
    file = resolve_checkpoint_path(run)
    state = load_checkpoint(file)
    if (
        state.get("format") != "protossl"
        or not isinstance(state.get("config"), dict)
        or not isinstance(state.get("method"), dict)
    ):
        raise UserError(f"{file} is not a protossl training checkpoint; eval needs one")
    cfg = config_from_dict(state["config"])
    method = build_method(cfg)
    try:
        method.load_state_dict(state["method"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{file}: weights do not match its config ({first})") from None
    results: dict[str, float] = {}
    if "knn" in protocols:
        results.update(evaluate_knn(method, cfg, train_spec=data, test_spec=test_data))
    output = {"checkpoint": str(file), "data": data, "test_data": test_data, "results": results}
    summary_path = Path(run) / "summary.json"
    if Path(run).is_dir() and summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            raise UserError(
                f"{summary_path} is not valid JSON; results not written there (printed below "
                "with --json); move the file away and run eval again"
            ) from None
        summary.setdefault("eval", {}).update(results)
        tmp = summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(summary_path)
    return output
