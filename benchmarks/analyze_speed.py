"""Benchmark: what `protossl analyze` computes per head, fast path vs brute force (issue 4).

Protocol
--------
- Machine: the project's 2-core CPU box (no GPU), shared with other jobs; torch's
  default intra-op threads (printed). The 1-minute load average is checked before the
  run (above ``--max-load`` the script waits in 60 s steps, up to ``--max-wait``) and
  written next to every case.
- Data: the three cases of ``benchmarks/unique_count.py`` (same generator, same seed):
  float32 [K, 256]; "collapsed" = 1,000 tight groups (members within 0.5 eps = 0.0125
  of each other, M = 1,000 at eps = 0.025), "random" = Gaussian rows (M = K).
- Each case runs in a fresh subprocess: build the data, warm torch up, read the RSS;
  then ``summarize_prototypes(w, timings=...)`` (eps 0.025, the default eps grid, what
  ``protossl analyze`` prints per head) ``--repeats`` times (default 2); the first run
  also gives the peak RSS above the RSS before it (``resource.getrusage``). The table
  gives the parts of the fastest run (units, M and groups, nearest neighbours + the
  curve up to eps, the rest of the curve, norms) and the range of totals. The two
  public pieces are timed once on their own as well (``nearest_neighbor_distances``,
  ``uniqueness_curve``: each builds its own covers).
- Brute force: ``summarize_prototypes(w, method="brute")``, the previous code (one
  float64 pass over all pairs serves M, curve and nearest neighbours), timed once.
  At K = 262,144 it is ESTIMATED from one run on the first 65,536 rows, scaled by
  (262,144 / 65,536)^2 = 16 (its cost is K^2 p); its memory is not measured.
- Agreement: where both run on the same rows (the 65,536 cases) the fast and brute
  summaries must give the same M, curve and largest groups, and nearest-neighbour
  quantiles within 1e-7 (the brute force re-measures its argmin; ours is exact).

Run: ``python benchmarks/analyze_speed.py`` (about 5 minutes on an idle box); it
rewrites the analyze section of ``docs/unique_count.md``. ``--quick`` runs K / 8.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unique_count import _load, make_data, wait_for_quiet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPS = 0.025
SUBSET = 65_536
START = "<!-- analyze-speed:start -->"
END = "<!-- analyze-speed:end -->"

# (case name, data kind, K, target seconds for the whole summary, brute force mode)
CASES = [
    ("65,536 collapsed", "collapsed", 65_536, None, "measure"),
    ("65,536 random", "random", 65_536, 60.0, "measure"),
    ("262,144 collapsed", "collapsed", 262_144, 30.0, "estimate"),
]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(kind: str, k: int, mode: str, rows: int, repeats: int) -> dict:
    """One case in this fresh process (mode "fast" or "brute")."""
    import torch

    from protossl.diagnostics import (
        nearest_neighbor_distances,
        summarize_prototypes,
        uniqueness_curve,
    )

    w = make_data(kind, k)[:rows]
    torch.randn(512, 256) @ torch.randn(256, 512)  # load BLAS, spin up threads
    method = "auto" if mode == "fast" else "brute"
    rss_before = _rss_mib()
    runs = []
    summary: dict = {}
    for r in range(repeats if mode == "fast" else 1):
        parts: dict[str, float] = {}
        t = time.perf_counter()
        summary = summarize_prototypes(w, eps=EPS, method=method, timings=parts)
        parts["total"] = time.perf_counter() - t
        runs.append(parts)
        if r == 0:
            peak = _peak_mib() - rss_before
    out: dict = {"runs": runs, "peak_extra_mib": peak, "threads": torch.get_num_threads()}
    out["summary"] = summary
    if mode == "fast":
        t = time.perf_counter()
        nearest_neighbor_distances(w)
        out["nearest_alone"] = time.perf_counter() - t
        t = time.perf_counter()
        uniqueness_curve(w)
        out["curve_alone"] = time.perf_counter() - t
    return out


def run_case(kind: str, k: int, mode: str, rows: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(k), mode, str(rows), str(repeats)]
    load = _load()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{proc.stderr}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load"] = (load, _load())
    return res


def _agree(fast: dict, brute: dict) -> bool:
    same = all(fast[key] == brute[key] for key in ("M", "uniqueness_curve", "largest_groups"))
    qf, qb = fast["nn_distance_quantiles"], brute["nn_distance_quantiles"]
    return same and all(abs(qf[key] - qb[key]) <= 1e-7 for key in qf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "unique_count.md"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="K / 8: a smoke test")
    ap.add_argument("--max-load", type=float, default=1.0)
    ap.add_argument("--max-wait", type=float, default=300.0)
    ap.add_argument("--worker", nargs=5, metavar=("KIND", "K", "MODE", "ROWS", "REPEATS"))
    args = ap.parse_args()
    if args.worker:
        kind, k, mode, rows, repeats = args.worker
        print(json.dumps(worker(kind, int(k), mode, int(rows), int(repeats))))
        return

    load_start, waited = wait_for_quiet(args.max_load, args.max_wait)
    scale = 8 if args.quick else 1
    rows_out = []
    for name, kind, k, target, brute_mode in CASES:
        k //= scale
        fast = run_case(kind, k, "fast", k, args.repeats)
        sub = k if brute_mode == "measure" else SUBSET // scale
        brute = run_case(kind, k, "brute", sub, 1)
        factor = (k / sub) ** 2
        brute_total = brute["runs"][0]["total"] * factor
        best = min(fast["runs"], key=lambda r: r["total"])
        totals = [r["total"] for r in fast["runs"]]
        row = {
            "name": name if not args.quick else f"{name} / 8",
            "K": k,
            "M": fast["summary"]["M"],
            "parts": best,
            "totals": totals,
            "nearest_alone": fast["nearest_alone"],
            "curve_alone": fast["curve_alone"],
            "mem": fast["peak_extra_mib"],
            "brute": f"{brute_total:.1f}" if sub == k else f"~{brute_total:.0f} (estimate)",
            "speedup": brute_total / best["total"],
            "agree": ("yes" if _agree(fast["summary"], brute["summary"]) else "NO")
            if sub == k
            else "n/m",
            "target": f"<= {target:g} s" if target else "-",
            "met": "-" if not target else ("yes" if best["total"] <= target else "NO"),
            "load": f"{fast['load'][0]:.2f}/{brute['load'][1]:.2f}",
            "threads": fast["threads"],
            "note": ""
            if sub == k
            else (
                f"{name}: brute force estimated from {brute['runs'][0]['total']:.1f} s "
                f"measured on the first {sub:,} rows x {factor:.0f}"
            ),
        }
        rows_out.append(row)
        print(json.dumps({key: v for key, v in row.items() if key != "parts"}), file=sys.stderr)
    write_section(Path(args.out), rows_out, load_start, waited, args.repeats)


def write_section(
    path: Path, rows: list[dict], load_start: float, waited: float, repeats: int
) -> None:
    header = (
        "| case | K | M | units s | M + groups s | NN + curve <= eps s | curve > eps s "
        "| norms s | summary s (range) | brute force s | speed-up | same result "
        "| NN alone s | curve alone s | peak MiB | target | met | load before/after |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|---|:-:|---|\n"
    )
    lines = []
    for r in rows:
        p = r["parts"]
        rng = f"{min(r['totals']):.2f}-{max(r['totals']):.2f}"
        lines.append(
            f"| {r['name']} | {r['K']:,} | {r['M']:,} | {p['units']:.2f} | {p['M']:.2f} "
            f"| {p['nearest']:.2f} | {p['curve']:.2f} | {p['norms']:.2f} "
            f"| {p['total']:.2f} ({rng}) | {r['brute']} | {r['speedup']:.0f}x | {r['agree']} "
            f"| {r['nearest_alone']:.2f} | {r['curve_alone']:.2f} | {r['mem']:.0f} "
            f"| {r['target']} | {r['met']} | {r['load']} |"
        )
    notes = "\n".join(f"- {r['note']}" for r in rows if r["note"])
    section = SECTION.format(
        table=header + "\n".join(lines) + "\n",
        notes=notes,
        date=time.strftime("%Y-%m-%d %H:%M"),
        threads=rows[0]["threads"],
        repeats=repeats,
        load_start=load_start,
        waited=waited,
    )
    text = path.read_text() if path.exists() else ""
    block = f"{START}\n{section}{END}\n"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END) + "\n?", block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
    print(header + "\n".join(lines))
    print(f"wrote {path}", file=sys.stderr)


SECTION = """## Benchmark: the whole `protossl analyze` summary

`python benchmarks/analyze_speed.py` ({date}); protocol at the top of the script.
2-core CPU, torch threads: {threads}; d = 256, eps = 0.025, default eps grid, float32
input. Parts of the fastest of {repeats} runs of `summarize_prototypes` (seconds):
unit directions; M and the groups (greedy covers at eps, shared with the next part);
exact nearest-neighbour distances together with the curve for eps <= 0.025; the curve
above eps (linking the same covers); norm quantiles. "Brute force" is the previous
code (`method="brute"`, one float64 pass over all pairs). "NN alone" and "curve alone"
time `nearest_neighbor_distances` and `uniqueness_curve` called on their own (each
builds its own covers). Peak MiB: peak RSS above the RSS before the first run.

{table}
Notes:
{notes}
- 1-minute load {load_start:.2f} when the run started (waited {waited:.0f} s for it to
  drop below 1.0); the last column gives the load before each case's first
  subprocess and after its last. The run itself keeps up to two threads busy.
"""


if __name__ == "__main__":
    main()
