"""The sweep file's ``eval`` section: its entries checked once, then filled in per run.

``{data}`` stands for the run's own ``data.spec`` and ``{data_balanced}`` for the same
spec without its ``@lt=R`` suffix, so one entry serves every dataset of the grid.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from protossl.core.errors import UserError
from protossl.sweep.tasks import EvalTask

EVAL_KEYS = ("data", "test_data", "protocols", "features", "device")
PLACEHOLDERS = ("{data}", "{data_balanced}")


def parse_eval_section(section: Any, where: str) -> list[dict[str, Any]]:
    """Check the ``eval`` section's shape, keys and protocols; placeholders stay unfilled.

    Example:
        >>> entries = parse_eval_section([{"data": "{data}", "protocols": "knn"}], "s.yaml")
        >>> entries[0]["protocols"], entries[0]["features"], entries[0]["test_data"]
        (('knn',), 'backbone', None)
    """
    # Lazy: protossl.evaluation takes seconds to import; parsing a sweep file needs it,
    # importing protossl.sweep does not.
    from protossl.evaluation.features import FEATURE_KINDS
    from protossl.evaluation.run_eval import parse_protocols

    if section is None:
        return []
    if not isinstance(section, list):
        raise UserError(
            f"{where}: 'eval' must be a list of entries like {{data: ..., protocols: [knn]}}"
        )
    entries: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(section, start=1):
        at = f"{where}: eval entry {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{at} must be a mapping with data and protocols")
        unknown = sorted(set(entry) - set(EVAL_KEYS))
        if unknown:
            raise UserError(f"{at}: unknown keys {unknown}; use {', '.join(EVAL_KEYS)}")
        for key in ("data", "protocols"):
            if entry.get(key) in (None, "", []):
                raise UserError(f"{at}: '{key}' is required")
        for key in ("data", "test_data", "features", "device"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise UserError(f"{at}: '{key}' must be a string")
        protocols = entry["protocols"]
        if not isinstance(protocols, (str, list)):
            raise UserError(f"{at}: 'protocols' must be a list or a comma-separated string")
        try:
            chosen = parse_protocols(
                [str(p) for p in protocols] if isinstance(protocols, list) else protocols
            )
        except UserError as exc:
            raise UserError(f"{at}: {exc}") from None
        for protocol in chosen:
            # Results are stored by metric name: a second entry would overwrite the first.
            if protocol in seen:
                raise UserError(
                    f"{at}: protocol '{protocol}' is already in entry {seen[protocol]}; "
                    "each protocol may appear once (results are stored by metric name)"
                )
            seen[protocol] = i
        features = entry.get("features") or "backbone"
        if features not in FEATURE_KINDS:
            raise UserError(f"{at}: unknown features '{features}'; use {', '.join(FEATURE_KINDS)}")
        entries.append(
            {
                "data": entry["data"],
                "test_data": entry.get("test_data"),
                "protocols": tuple(chosen),
                "features": features,
                "device": entry.get("device") or "cpu",
            }
        )
    return entries


def _fill(text: str, data: str, data_balanced: str, at: str) -> str:
    """Replace the placeholders, then check no other ``{...}`` is left and the spec parses."""
    from protossl.data import parse_data_spec

    filled = text.replace("{data_balanced}", data_balanced).replace("{data}", data)
    left = re.search(r"\{[^{}]*\}", filled)
    if left:
        raise UserError(
            f"{at}: unknown placeholder {left.group(0)} in '{text}'; "
            f"use {' or '.join(PLACEHOLDERS)}"
        )
    try:
        return str(parse_data_spec(filled))
    except UserError as exc:
        raise UserError(f"{at}: {exc}") from None


def resolve_evals(
    entries: list[dict[str, Any]], data_spec: str, where: str
) -> tuple[EvalTask, ...]:
    """The eval entries for a run trained on ``data_spec``, placeholders filled.

    Example:
        >>> entry = {"data": "{data_balanced}", "test_data": None, "protocols": ("knn",),
        ...          "features": "backbone", "device": "cpu"}
        >>> resolve_evals([entry], "digits@lt=10", "sweep.yaml")[0].data
        'digits'
    """
    from protossl.data import parse_data_spec

    balanced = str(dataclasses.replace(parse_data_spec(data_spec), lt_ratio=None))
    tasks = []
    for i, entry in enumerate(entries, start=1):
        at = f"{where}: eval entry {i}"
        test = entry["test_data"]
        tasks.append(
            EvalTask(
                data=_fill(entry["data"], data_spec, balanced, at),
                test_data=_fill(test, data_spec, balanced, at) if test else None,
                protocols=entry["protocols"],
                features=entry["features"],
                device=entry["device"],
            )
        )
    return tuple(tasks)
