"""Reading a sweep file: its keys checked, the grid expanded, every run validated up front.

Every grid point's config is loaded and its memory checked before anything runs, so a
typo in the last combination fails in one line now rather than hours into the sweep.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from protossl.config import available_presets, load_config
from protossl.core.errors import UserError
from protossl.core.safe_yaml import load_yaml_file
from protossl.engine.memory import check_training_memory
from protossl.sweep.evals import parse_eval_section, resolve_evals
from protossl.sweep.results import ROW_KEYS
from protossl.sweep.tasks import SweepRun, format_value, short_key

SPEC_KEYS = ("preset", "set", "grid", "eval")


def axis_points(axis: str, values: list[Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """Each value of one grid axis as (name part, {key: value}).

    A plain axis sets its own key; a linked axis (every value a mapping) sets the
    mapping's keys together and is named by its ``name`` (default ``<axis>-<index>``).

    Example:
        >>> axis_points("model.num_prototypes", [256], "sweep.yaml")
        [('num_prototypes-256', {'model.num_prototypes': 256})]
        >>> axis_points("dataset", [{"name": "lt", "data.spec": "digits@lt=10"}], "s.yaml")
        [('lt', {'data.spec': 'digits@lt=10'})]
    """
    linked = [isinstance(v, dict) for v in values]
    if any(linked) and not all(linked):
        raise UserError(f"{where}: grid.{axis} mixes mappings and plain values; use one kind")
    if not all(linked):
        return [(f"{short_key(axis)}-{format_value(v)}", {axis: v}) for v in values]
    # The linked axis's name becomes a column of the results: it must not shadow one.
    if axis in ROW_KEYS:
        raise UserError(
            f"{where}: grid.{axis}: a linked axis is a column of results.csv; "
            f"name it something other than {', '.join(sorted(ROW_KEYS))} (e.g. dataset)"
        )
    points = []
    for i, value in enumerate(values):
        keys = {k: v for k, v in value.items() if k != "name"}
        if not keys:
            raise UserError(f"{where}: grid.{axis} value {i + 1} sets no key")
        name = value.get("name", f"{short_key(axis)}-{i}")
        if not isinstance(name, (str, int)) or not str(name):
            raise UserError(f"{where}: grid.{axis} value {i + 1}: 'name' must be a short string")
        points.append((str(name), keys))
    return points


def load_sweep(path: str | Path) -> list[SweepRun]:
    """Parse and check a sweep file; every run's config and evaluations are validated up front."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    spec = load_yaml_file(path, "sweep file") or {}
    if not isinstance(spec, dict):
        raise UserError(f"sweep file {path} must hold a mapping with 'grid'")
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise UserError(
            f"sweep file {path}: unknown keys {sorted(unknown)}; use {', '.join(SPEC_KEYS)}"
        )
    where = f"sweep file {path}"
    base_preset = str(spec.get("preset", "dino"))
    shared = spec.get("set") or {}
    grid = spec.get("grid") or {}
    if not isinstance(shared, dict) or not isinstance(grid, dict):
        raise UserError(f"{where}: 'set' and 'grid' must be mappings of keys")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid.{key} must be a non-empty list")
    evals = parse_eval_section(spec.get("eval"), where)
    runs: list[SweepRun] = []
    axes = [axis_points(axis, values, where) for axis, values in grid.items()]
    for combo in itertools.product(*axes):
        settings: dict[str, Any] = {}
        grid_values: dict[str, Any] = {}
        parts: list[str] = []
        for axis, (part, keys) in zip(grid, combo, strict=True):
            clash = set(keys) & set(settings)
            if clash:
                raise UserError(f"{where}: grid key(s) {sorted(clash)} set by two axes")
            settings.update(keys)
            if keys.keys() != {axis}:  # a linked axis: its name, then the keys it sets
                grid_values[axis] = part
            grid_values.update(keys)
            if keys.keys() != {"preset"}:  # the preset already starts the run name
                parts.append(part)
        preset = str(settings.pop("preset", base_preset))
        if preset not in available_presets():
            raise UserError(f"{where}: unknown preset {preset!r}")
        overrides = [f"{k}={format_value(v)}" for k, v in shared.items()]
        overrides += [f"{k}={format_value(v)}" for k, v in settings.items()]
        cfg = load_config(preset, overrides=overrides)  # fail before anything runs
        check_training_memory(cfg)  # one line now, not an out-of-memory child later
        name = "_".join([preset, *parts]).replace("/", "-").replace(" ", "")
        tasks = resolve_evals(evals, cfg.data.spec, where)
        runs.append(SweepRun(name, preset, tuple(overrides), grid_values, tasks, cfg.num_threads))
    if not runs:
        raise UserError(f"sweep file {path} has an empty grid")
    if len({r.name for r in runs}) != len(runs):
        raise UserError(f"sweep file {path}: two grid points give the same run name")
    return runs
