"""Collapse over training, read from finished runs: the evidence tables of docs/collapse.md.

Protocol: the runs of ``sweeps/digits_collapse.yaml`` (or any protossl run folders that
checkpoint every N epochs). For each run, two tables, both read from files the runs wrote
(nothing is typed):

- per epoch, from ``metrics.jsonl`` (the trainer's monitor: student prototypes, teacher
  argmax over the monitor's test images): cross-entropy against ln K, M at eps 0.025,
  prototypes used, nearest-neighbour distance q10 / median;
- per periodic checkpoint (``checkpoints/epoch_*.pt``, then ``last.pt``), from the student
  prototypes (``protossl.diagnostics.summarize_prototypes``): the uniqueness curve M(eps) at
  eps 0.05, 0.1, 0.2, 0.3, 0.5, the smallest nearest-neighbour distance and q10.

Usage:
    python benchmarks/collapse_trends.py sweeps_out/digits_collapse/dino_seed-0 \
        sweeps_out/digits_collapse/dino-kp_seed-0 [--write docs/collapse.md]
The tables go to stdout, and with ``--write`` between the ``collapse:trends`` markers
(``--marker cifar10``: the ``collapse:cifar10`` ones); ``--eps`` sets the uniqueness
curve's points (default 0.05,0.1,0.2,0.3,0.5).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protossl.diagnostics import summarize_prototypes  # noqa: E402
from protossl.diagnostics.checkpoints import read_prototype_heads  # noqa: E402

CURVE_EPS = (0.05, 0.1, 0.2, 0.3, 0.5)


def epoch_table(run: Path, rows: int = 7) -> list[str]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    picks = sorted({round(i * (len(records) - 1) / (rows - 1)) for i in range(rows)})
    lines = [
        "| step | CE / ln K | M (eps 0.025) | used | NN q10 | NN median |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i in picks:
        r = records[i]
        lines.append(
            f"| {r['step']:,} | {r['cross_entropy'] / math.log(r['K']):.3f} | {r['M']} | "
            f"{r['prototypes_used']} | {r['nn_distance_q10']:.3f} | "
            f"{r['nn_distance_median']:.3f} |"
        )
    return lines


def _epoch_of(path: Path) -> int:
    found = re.search(r"epoch_(\d+)", path.name)
    return int(found.group(1)) if found else 10**9


def checkpoint_table(run: Path, eps_grid: tuple[float, ...] = CURVE_EPS) -> list[str]:
    files = sorted((run / "checkpoints").glob("epoch_*.pt"), key=_epoch_of)
    files.append(run / "checkpoints" / "last.pt")
    header = " | ".join(f"M @ {e}" for e in eps_grid)
    lines = [
        f"| checkpoint | K | {header} | NN min | NN q10 |",
        "|---|---:|" + "---:|" * (len(eps_grid) + 2),
    ]
    for file in files:
        _, heads = read_prototype_heads(file)
        summary = summarize_prototypes(heads["student"], eps_grid=eps_grid)
        curve = dict((round(e, 4), m) for e, m in summary["uniqueness_curve"])
        q = summary["nn_distance_quantiles"]
        cells = " | ".join(str(curve[round(e, 4)]) for e in eps_grid)
        lines.append(f"| {file.name} | {summary['K']} | {cells} | {q['q0']:.3f} | {q['q10']:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--write", type=Path, help="Markdown file with the collapse markers")
    parser.add_argument("--marker", default="trends", help="marker name: collapse:NAME:start")
    parser.add_argument("--eps", default=",".join(str(e) for e in CURVE_EPS))
    args = parser.parse_args()
    eps_grid = tuple(float(e) for e in args.eps.split(","))
    blocks = []
    for run in args.runs:
        blocks += [f"**{run.name}**, per epoch (`metrics.jsonl`):", "", *epoch_table(run), ""]
        blocks += ["Student prototypes per checkpoint:", "", *checkpoint_table(run, eps_grid), ""]
    text = "\n".join(blocks)
    print(text)
    if args.write:
        start = f"<!-- collapse:{args.marker}:start -->"
        end = f"<!-- collapse:{args.marker}:end -->"
        doc = args.write.read_text()
        head, rest = doc.split(start, 1)
        _, tail = rest.split(end, 1)
        args.write.write_text(f"{head}{start}\n{text}\n{end}{tail}")


if __name__ == "__main__":
    main()
