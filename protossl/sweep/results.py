"""The sweep's results table: one row per run, written as ``results.csv`` and ``results.json``.

Both files are replaced atomically after every finished run, so a reader (or a killed
sweep) never sees half a table.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from protossl.core.dotted import flatten_dotted
from protossl.core.files import atomic_write_text
from protossl.sweep.plan import has_work, read_summary, run_status
from protossl.sweep.tasks import SweepRun, format_value

# Summary entries copied into each row of the results (nested ones flattened with dots).
SUMMARY_KEYS = ("data", "K", "M", "M_over_K", "usage", "eval", "wall_time_seconds", "steps")
# Every column a row has besides its grid values: a linked grid axis may not take one
# of these names (spec.py checks), or its value would overwrite the column.
ROW_KEYS = frozenset({"run", "preset", "status", "error", *SUMMARY_KEYS})


def collect(
    runs: list[SweepRun],
    out: Path,
    errors: dict[str, str],
    eval_errors: dict[str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """One row per run (grid values, status, summary numbers); written as CSV and JSON.

    Status: ``done`` (trained and every evaluation in its summary), ``partial`` (a
    checkpoint, or trained with evaluations still to run), ``new`` or ``failed``. A run
    whose training failed has no numbers; one whose evaluation failed keeps its training
    numbers and any evaluation that worked, with status ``failed``.
    """
    eval_errors = eval_errors or {}
    rows: list[dict[str, Any]] = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "preset": run.preset}
        row.update({k: format_value(v) for k, v in run.grid_values.items() if k != "preset"})
        failed = run.name in errors or bool(eval_errors.get(run.name))
        status = run_status(out / run.name)
        if status == "done" and has_work(run, out / run.name):
            status = "partial"  # trained, but an evaluation is still to come
        row["status"] = "failed" if failed else status
        messages = ([errors[run.name]] if run.name in errors else []) + eval_errors.get(
            run.name, []
        )
        row["error"] = "; ".join(messages)
        summary = read_summary(out / run.name)
        if summary and run.name not in errors:
            flat: dict[str, Any] = {}
            for key in SUMMARY_KEYS:
                value = summary.get(key)
                if key == "eval" and isinstance(value, dict):
                    # eval.runs holds each evaluation's record again (see protossl eval);
                    # the flat eval.<metric> entries are the table's columns.
                    value = {k: v for k, v in value.items() if k != "runs"}
                if key in summary:  # a CSV cell holds scalars only
                    flat.update(flatten_dotted(value, key, scalars_only=True))
            row.update(flat)
        rows.append(row)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "results.csv", _csv_text(rows, columns))
    return rows


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The rows as CSV text; built in memory so the file is written in one atomic step."""
    lines: list[str] = []

    class _Sink:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

    writer = csv.DictWriter(_Sink(), fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return "".join(lines)
