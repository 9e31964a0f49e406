"""``protossl report``: PNG figures and one self-contained ``index.html`` for a run or a sweep.

What the seed paper (Govindarajan et al., "On Partial Prototype Collapse in
the DINO Family of Self-Supervised Methods") shows in pictures, for one's own
runs: M against K per method with and without KoLeo-proto and the line M = K;
M, usage entropy and loss over training; the uniqueness curve (M over eps);
t-SNE maps of the prototype directions with duplicate groups coloured (baseline
and regularized side by side); t-SNE maps of test embeddings by label and by
assigned prototype; the prototype usage histogram; example images of the
largest clusters; and a table of every run's K, M, M/K, usage and evaluation
results.

Figure files (in the output folder, default ``RUN_OR_SWEEP/report``):

* ``m_vs_k.png``, ``training_curves.png``, ``uniqueness_curve.png``;
* ``prototypes_tsne_<run>.png``: one per group of twin runs (named after its first run);
* ``embeddings_tsne_<run>.png``, ``usage_<run>.png``, ``clusters_<run>.png``: per run
  with a checkpoint whose test data loads.

Example:
    >>> index = write_report(Path("sweeps/cifar10"), None)  # doctest: +SKIP
    >>> index  # doctest: +SKIP
    PosixPath('sweeps/cifar10/report/index.html')
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from protossl.core.errors import UserError
from protossl.core.files import atomic_write_text
from protossl.diagnostics import uniqueness_curve
from protossl.reports import figures as plots
from protossl.reports.embedding import subsample_indices, tsne_2d
from protossl.reports.html import Figure, Section, Table, render_page
from protossl.reports.probe import RunProbe, probe_run
from protossl.reports.runs import RunRecord, discover_runs, failed_rows, group_twins

__all__ = ["ReportIncomplete", "ReportOptions", "m_vs_k_points", "run_table", "write_report"]


@dataclass(frozen=True)
class ReportOptions:
    """How much the report measures (defaults keep a sweep's report to minutes on a CPU).

    Attributes:
        samples: test images per run in the embedding map and usage histogram.
        max_prototypes: prototypes per t-SNE map (a seeded subset beyond it).
        clusters: clusters (largest first) in the example-image grid.
        per_cluster: example images per cluster.
        device: where forward passes run (``cpu``, ``cuda``).
        cache: use the feature cache in ``RUN/cache``.
        seed: the subsets and the t-SNE optimizer.
    """

    samples: int = 1000
    max_prototypes: int = 2000
    clusters: int = 6
    per_cluster: int = 8
    device: str = "cpu"
    cache: bool = True
    seed: int = 0


@dataclass
class _RunResult:
    """What the per-run pass produced for the page."""

    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    proto_map: plots.ProtoMap | None = None
    curve: list[tuple[float, int]] = field(default_factory=list)
    unread: str | None = None  # why an input this run should show could not be read


class ReportIncomplete(UserError):
    """The page was written, but some run's checkpoint or test images could not be read.

    Raised after ``index.html`` is on disk (it shows everything else and notes what is
    missing), so the command still ends with one line and exit status 2.
    """


def m_vs_k_points(runs: Sequence[RunRecord]) -> list[plots.MKPoint]:
    """The runs that know K and M, as points of the M-against-K plot."""
    return [
        plots.MKPoint(r.label, r.family, r.regularized, r.K, r.M, r.data, r.prototypes_used)
        for r in runs
        if r.K is not None and r.M is not None
    ]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool | int | str):
        return str(value)
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _eval_results(run: RunRecord) -> dict[str, Any]:
    section = run.summary.get("eval") or {}
    if not isinstance(section, dict):
        return {}
    # "runs" holds every evaluation's full record; the flat keys are the latest values.
    return {k: v for k, v in section.items() if isinstance(v, int | float) or v is None}


def run_table(runs: Sequence[RunRecord]) -> Table:
    """One row per run: method, K, M, M/K, usage and every evaluation result."""
    eval_keys: list[str] = []
    for run in runs:
        eval_keys += [k for k in _eval_results(run) if k not in eval_keys]
    headers = ["run", "method", "status", "data", "steps", "K", "M", "M/K", "eps"]
    headers += ["used", "usage H", *eval_keys, "minutes"]
    rows = []
    for run in runs:
        usage = run.summary.get("usage") or {}
        results = _eval_results(run)
        k, m = run.K, run.M
        minutes = run.summary.get("wall_time_seconds")
        rows.append(
            [
                run.name,
                run.label,
                run.status,
                run.data,
                _fmt(run.summary.get("steps")),
                _fmt(k),
                _fmt(m),
                _fmt(m / k if k and m is not None else None, 3),
                f"{run.eps:g}",
                _fmt(usage.get("prototypes_used")),
                _fmt(usage.get("usage_entropy"), 3),
                *(_fmt(results.get(key)) for key in eval_keys),
                _fmt(minutes / 60 if isinstance(minutes, int | float) else None, 1),
            ]
        )
    return Table(headers, rows, text_columns=4)


def _colour_groups(runs: Sequence[RunRecord]) -> dict[str, str]:
    """Run name -> its twin group's index: a baseline and its twin share a colour."""
    return {r.name: str(i) for i, group in enumerate(group_twins(list(runs))) for r in group}


def _training_panels(runs: Sequence[RunRecord]) -> dict[str, list[plots.Curve]]:
    colour = _colour_groups(runs)
    panels: dict[str, list[plots.Curve]] = {}
    for key, _title in plots.TRAINING_PANELS:
        for run in runs:
            records = [r for r in run.metrics if isinstance(r.get(key), int | float)]
            if records:
                panels.setdefault(key, []).append(
                    plots.Curve(
                        run.name,
                        colour[run.name],
                        run.regularized,
                        [float(r["step"]) for r in records],
                        [float(r[key]) for r in records],
                        run.data,
                    )
                )
    return panels


def _proto_map(run: RunRecord, probe: RunProbe, options: ReportOptions) -> plots.ProtoMap:
    k = probe.directions.shape[0]
    shown = subsample_indices(k, options.max_prototypes, options.seed)
    coords = tsne_2d(probe.directions[shown], seed=options.seed, normalize=False)
    title = f"{run.name} ({run.label})\nK {k}, M {probe.unique.num_unique} at eps {run.eps:g}"
    largest = [size for size in probe.unique.group_sizes[:3] if size > 1]
    if largest:
        title += f"; largest groups {', '.join(map(str, largest))}"
    if shown.size < k:
        title += f"; {shown.size} shown"
    return plots.ProtoMap(
        title=title,
        coords=coords,
        groups=probe.unique.labels[shown],
        group_sizes=np.bincount(probe.unique.labels),
    )


def _test_figures(
    run: RunRecord, probe: RunProbe, out: Path, options: ReportOptions
) -> list[Figure]:
    test = probe.test
    assert test is not None  # checked by the caller
    k = test.usage.num_prototypes
    n = test.labels.size
    name = f"embeddings_tsne_{run.slug}.png"
    plots.plot_embedding_map(
        tsne_2d(test.features, seed=options.seed),
        test.labels,
        test.classes,
        test.assignments,
        k,
        out / name,
        title=f"{run.name} ({run.label}): teacher backbone features of {n} test images",
    )
    found = [Figure(name, f"{run.name}: t-SNE of test embeddings, by label and by prototype")]
    name = f"usage_{run.slug}.png"
    usage_title = (
        f"{run.label}: {test.usage.num_used} of {k} prototypes used, entropy "
        f"{test.usage.entropy:.2f} nats (max {math.log(k):.2f}), {n} test images"
    )
    plots.plot_usage(test.usage.counts, out / name, usage_title)
    found.append(Figure(name, f"{run.name}: prototype usage (test images per prototype)"))
    largest = np.argsort(-test.usage.counts, kind="stable")[: options.clusters]
    rows = []
    for cid in largest:
        count = int(test.usage.counts[cid])
        if count == 0:
            break
        members = np.flatnonzero(test.assignments == cid)[: options.per_cluster]
        images = [test.images[int(i)][0] for i in members]
        rows.append((f"prototype {int(cid)}: {count} images", images))
    name = f"clusters_{run.slug}.png"
    plots.plot_clusters(rows, out / name)
    found.append(Figure(name, f"{run.name}: test images of the largest clusters"))
    return found


def _run_pass(run: RunRecord, out: Path, options: ReportOptions) -> _RunResult:
    result = _RunResult(notes=list(run.notes), curve=run.uniqueness_curve)
    try:
        probe = probe_run(
            run, options.samples, device=options.device, cache=options.cache, seed=options.seed
        )
    except UserError as exc:
        result.notes.append(f"checkpoint not usable: {exc}")
        result.unread = f"checkpoint not usable: {exc}"
        return result
    if probe is None:
        result.notes.append("no checkpoints/last.pt: no maps, usage or example images")
        return result
    result.proto_map = _proto_map(run, probe, options)
    if not result.curve:
        result.curve = uniqueness_curve(torch.from_numpy(probe.directions))
    if probe.test is None:
        result.notes.append(probe.note or "no test images")
        result.unread = probe.note or "no test images"
    else:
        result.figures = _test_figures(run, probe, out, options)
    return result


def _common_eps(runs: Sequence[RunRecord]) -> float | None:
    values = {run.eps for run in runs}
    return values.pop() if len(values) == 1 else None


def write_report(
    path: Path,
    out: Path | None = None,
    options: ReportOptions | None = None,
    progress: bool | None = None,
    results_md: Path | None = None,
) -> Path:
    """Write the figures and ``index.html`` for a run or sweep folder; returns the page's path.

    Args:
        path: a run folder or a sweep folder.
        out: output folder (default ``path/report``); created if needed.
        options: what to measure (:class:`ReportOptions`).
        progress: show a progress bar over runs (default: when stderr is a terminal).
        results_md: also write the sweep's headline table (mean ± std over seeds) to this
            Markdown file (:func:`protossl.reports.results_table.results_markdown`).

    Raises:
        UserError: if ``path`` does not exist or holds no run, or ``results_md`` is asked
            for a folder without ``results.json``.
        ReportIncomplete: after the page is written, when a run's checkpoint or its test
            images could not be read (the page notes which).
    """
    from protossl.reports.results_table import results_markdown, results_sections

    options = options or ReportOptions()
    root = Path(path)
    runs = discover_runs(root)
    if results_md is not None:
        # Before the long per-run pass: a folder that is not a sweep fails at once.
        markdown = results_markdown(root)
        Path(results_md).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(results_md), markdown)
    out = Path(out) if out is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else progress
    results: dict[str, _RunResult] = {}
    for run in tqdm(runs, desc="report", unit="run", disable=not show, dynamic_ncols=True):
        results[run.name] = _run_pass(run, out, options)

    eps = _common_eps(runs)
    colour = _colour_groups(runs)
    overview: list[Figure] = []
    points = m_vs_k_points(runs)
    if points:
        plots.plot_m_vs_k(points, out / "m_vs_k.png", eps)
        overview.append(
            Figure(
                "m_vs_k.png",
                "unique prototypes M against K (top) and prototypes used, i.e. some test "
                "image's argmax (bottom), one column per training data set; dotted: M = K",
            )
        )
    panels = _training_panels(runs)
    if panels:
        plots.plot_training(panels, out / "training_curves.png")
        overview.append(
            Figure("training_curves.png", "loss, M and usage entropy over training (per epoch)")
        )
    curves = [
        plots.Curve(
            r.name,
            colour[r.name],
            r.regularized,
            [e for e, _ in results[r.name].curve],
            [m for _, m in results[r.name].curve],
        )
        for r in runs
        if results[r.name].curve
    ]
    if curves:
        plots.plot_uniqueness(curves, out / "uniqueness_curve.png", eps)
        overview.append(Figure("uniqueness_curve.png", "uniqueness curve: M against eps"))

    maps: list[Figure] = []
    for group in group_twins(runs):
        shown = [(r, results[r.name].proto_map) for r in group]
        present = [(r, m) for r, m in shown if m is not None]
        if not present:
            continue
        name = f"prototypes_tsne_{present[0][0].slug}.png"
        plots.plot_prototype_maps([m for _, m in present], out / name)
        labels = " vs ".join(r.label for r, _ in present)
        maps.append(Figure(name, f"t-SNE of prototype directions ({labels}); colours: duplicates"))

    sections = [*results_sections(root), _runs_section(root, runs)]
    sections.append(Section("Overview", figures=overview))
    if maps:
        sections.append(
            Section(
                "Prototype directions",
                paragraphs=[
                    "Each point is a prototype direction; prototypes closer than eps (chained) "
                    "form a duplicate group. The ten largest groups have their own colours, "
                    "smaller groups are dark grey, unique prototypes light grey."
                ],
                figures=maps,
            )
        )
    for run in runs:
        result = results[run.name]
        if result.figures or result.notes:
            sections.append(
                Section(f"{run.name} ({run.label})", figures=result.figures, notes=result.notes)
            )
    page = render_page(f"protossl report: {root.resolve().name}", sections, out)
    index = out / "index.html"
    atomic_write_text(index, page)
    unread = [f"{name} ({result.unread})" for name, result in results.items() if result.unread]
    if unread:
        raise ReportIncomplete(
            f"report written to {index}, but {len(unread)} run(s) could not be read: "
            + "; ".join(unread)
        )
    return index


def _runs_section(root: Path, runs: Sequence[RunRecord]) -> Section:
    notes = [
        f"{row['run']}: failed ({row.get('error') or 'no error recorded'})"
        for row in failed_rows(root)
    ]
    kind = "run" if len(runs) == 1 and runs[0].path == root else "sweep"
    text = (
        f"{len(runs)} run(s) from the {kind} folder {root}. M counts unique prototypes "
        "(directions closer than eps are linked, chained); usage counts prototypes that are "
        "some test image's teacher argmax (the run's own monitor images) and their entropy."
    )
    return Section("Runs", paragraphs=[text], tables=[run_table(runs)], notes=notes)
