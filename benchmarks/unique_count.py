"""Benchmark: exact unique-prototype count M, greedy leaders vs the brute force (issue 4).

Protocol
--------
- Machine: the project's 2-core CPU box (no GPU), shared with other jobs. torch uses
  its default intra-op threads (2 here; printed in the report). The 1-minute load
  average is checked before the run: above ``--max-load`` (1.0) the script waits in
  60 s steps, up to ``--max-wait`` (600 s), then runs anyway; the load before and after
  every case is written into the report.
- Data, float32 [K, d], d = 256, built chunk by chunk (so building it leaves no
  transient memory peak above its own 64 MiB per 65,536 rows):
  * collapsed: 1,000 random unit centres; every row is a centre plus a tangent
    offset of random direction and length uniform in [0, 0.25 eps) (eps = 0.025), each
    centre used at least once. Members of a group lie within 0.5 eps of each other
    (radial projection from outside the ball is 1-Lipschitz), centres are ~1.41
    apart, so M = 1,000 exactly.
  * random: i.i.d. Gaussian rows (uniform directions): M = K (two of 65,536 random
    directions in 256-d are never within 0.025).
- Each (case, method) runs in a fresh subprocess: build the data, warm torch up on a
  small matmul, read the current RSS (/proc/self/statm), run once and read
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: peak extra memory = peak RSS - RSS
  before the call. Then ``--repeats`` (3) timed runs; the table gives the median
  (min-max beside it). The untimed first run also serves as the warm-up.
- Methods: ``count_unique_prototypes(w, eps=0.025, method="leaders")`` (what "auto"
  picks at these sizes) and ``method="brute"`` (float64 tiles over all pairs). The
  brute force at K = 262,144 would take minutes per run: it is ESTIMATED from a
  measured run on the first 65,536 rows of the same data, scaled by (262,144 /
  65,536)^2 = 16 (its cost is K^2 d matmul work); its memory is not measured.
- Both methods must report the same M (and the same canonical labels: the leaders'
  labels are compared with the brute force's in the same subprocess where both run
  on the same rows -- checked for the 65,536 cases).

Run: ``python benchmarks/unique_count.py`` (about 7 minutes on an idle box); it
writes ``docs/unique_count.md``. ``--quick`` runs K / 8 sizes for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

EPS = 0.025
DIM = 256
GROUPS = 1000
CHUNK = 8192
ROOT = Path(__file__).resolve().parents[1]
# docs/unique_count.md from this heading on is maintained by hand and by
# benchmarks/analyze_speed.py; this script keeps it.
KEEP_FROM = "## Everything `protossl analyze` prints"

# (case name, data kind, K, target seconds for the leaders, brute force mode)
CASES = [
    ("65,536 collapsed", "collapsed", 65_536, 2.0, "measure"),
    ("65,536 random", "random", 65_536, 25.0, "measure"),
    ("262,144 collapsed", "collapsed", 262_144, 10.0, "estimate"),
]
MEMORY_TARGET_MIB = {"65,536 collapsed": 1024.0}


def make_data(kind: str, k: int, seed: int = 0):  # noqa: ANN201 (torch imported lazily)
    """Float32 [k, DIM] prototypes, built chunk by chunk; see the protocol."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(k, DIM, dtype=torch.float32)
    if kind == "random":
        for s in range(0, k, CHUNK):
            out[s : s + CHUNK] = torch.randn(min(CHUNK, k - s), DIM, generator=gen)
        return out
    centers = torch.randn(GROUPS, DIM, generator=gen, dtype=torch.float64)
    centers /= centers.norm(dim=1, keepdim=True)
    assign = torch.randint(GROUPS, (k,), generator=gen)
    assign[torch.randperm(k, generator=gen)[:GROUPS]] = torch.arange(GROUPS)
    for s in range(0, k, CHUNK):
        c = centers[assign[s : s + CHUNK]]
        g = torch.randn(c.shape, generator=gen, dtype=torch.float64)
        g -= (g * c).sum(dim=1, keepdim=True) * c  # tangent at the centre
        g /= g.norm(dim=1, keepdim=True)
        length = 0.25 * EPS * torch.rand(c.shape[0], 1, generator=gen, dtype=torch.float64)
        out[s : s + CHUNK] = (c + length * g).float()
    return out


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(kind: str, k: int, method: str, rows: int, repeats: int, compare: bool) -> dict:
    """One case in this (fresh) process: memory on the first run, then timed repeats."""
    import numpy as np
    import torch

    from protossl.diagnostics import count_unique_prototypes

    w = make_data(kind, k)[:rows]
    torch.randn(512, DIM) @ torch.randn(DIM, 512)  # load BLAS, spin up threads
    rss_before, peak_before = _rss_mib(), _peak_mib()
    result = count_unique_prototypes(w, eps=EPS, method=method)
    peak_after = _peak_mib()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        again = count_unique_prototypes(w, eps=EPS, method=method)
        times.append(time.perf_counter() - t)
        assert again.num_unique == result.num_unique
    out = {
        "M": result.num_unique,
        "times": times,
        "peak_extra_mib": peak_after - rss_before,
        "peak_slack_mib": peak_before - rss_before,  # an upper bound if nothing exceeded it
        "threads": torch.get_num_threads(),
    }
    if compare:  # the other method on the same rows: identical canonical labels?
        other = "brute" if method == "leaders" else "leaders"
        ref = count_unique_prototypes(w, eps=EPS, method=other)
        out["labels_equal"] = bool(np.array_equal(ref.labels, result.labels))
    return out


def run_case(kind: str, k: int, method: str, rows: int, repeats: int, compare: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(k), method, str(rows), str(repeats)]
    if compare:
        cmd.append("--compare")
    load = _load()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{proc.stderr}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load"] = (load, _load())
    return res


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_for_quiet(max_load: float, max_wait: float) -> tuple[float, float]:
    start, waited = _load(), 0.0
    while _load() > max_load and waited < max_wait:
        print(f"load {_load():.2f} > {max_load}: waiting 60 s", file=sys.stderr, flush=True)
        time.sleep(60)
        waited += 60
    return start, waited


def _fmt_time(res: dict) -> str:
    t = res["times"]
    return f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "unique_count.md"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="K / 8: a smoke test")
    ap.add_argument("--max-load", type=float, default=1.0)
    ap.add_argument("--max-wait", type=float, default=600.0)
    ap.add_argument("--worker", nargs=5, metavar=("KIND", "K", "METHOD", "ROWS", "REPEATS"))
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args()
    if args.worker:
        kind, k, method, rows, repeats = args.worker
        res = worker(kind, int(k), method, int(rows), int(repeats), args.compare)
        print(json.dumps(res))
        return

    load_start, waited = wait_for_quiet(args.max_load, args.max_wait)
    scale = 8 if args.quick else 1
    rows_out = []
    for name, kind, k, target, brute_mode in CASES:
        k //= scale
        fast = run_case(kind, k, "leaders", k, args.repeats, compare=False)
        if brute_mode == "measure":
            brute = run_case(kind, k, "brute", k, args.repeats, compare=True)
            brute_s, brute_note = _fmt_time(brute), ""
            brute_med = statistics.median(brute["times"])
            brute_mem = f"{brute['peak_extra_mib']:.0f}"
            labels = "yes" if brute["labels_equal"] else "NO"
            brute_m = str(brute["M"])
        else:
            sub = k // 4
            brute = run_case(kind, k, "brute", sub, args.repeats, compare=False)
            factor = (k / sub) ** 2
            brute_med = statistics.median(brute["times"]) * factor
            brute_s = f"~{brute_med:.0f} (estimate)"
            brute_note = (
                f"brute force estimated: {statistics.median(brute['times']):.2f} s measured "
                f"on the first {sub:,} rows x {factor:.0f}"
            )
            brute_mem, labels, brute_m = "n/m", "n/m", f"({brute['M']} on the subset)"
        med = statistics.median(fast["times"])
        mem_target = MEMORY_TARGET_MIB.get(name)
        met = med <= target and (mem_target is None or fast["peak_extra_mib"] <= mem_target)
        rows_out.append(
            {
                "name": name if not args.quick else f"{name} / 8",
                "K": k,
                "M": fast["M"],
                "fast": _fmt_time(fast),
                "fast_mem": f"{fast['peak_extra_mib']:.0f}",
                "brute": brute_s,
                "brute_mem": brute_mem,
                "brute_M": brute_m,
                "labels": labels,
                "speedup": f"{brute_med / med:.0f}x",
                "target": f"<= {target:g} s" + (f", <= {mem_target:.0f} MiB" if mem_target else ""),
                "met": "yes" if met else "NO",
                "load": f"{fast['load'][0]:.2f}/{brute['load'][1]:.2f}",
                "note": brute_note,
                "threads": fast["threads"],
            }
        )
        print(json.dumps(rows_out[-1]), file=sys.stderr, flush=True)
    write_report(Path(args.out), rows_out, load_start, waited, args.repeats)


def write_report(
    path: Path, rows: list[dict], load_start: float, waited: float, repeats: int
) -> None:
    header = (
        "| case | K | M (leaders) | M (brute) | same labels | leaders s | brute s | speed-up "
        "| leaders peak MiB | brute peak MiB | target (leaders) | met | load before/after |\n"
        "|---|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---|:-:|---|\n"
    )
    lines = [
        f"| {r['name']} | {r['K']:,} | {r['M']:,} | {r['brute_M']} | {r['labels']} | {r['fast']} "
        f"| {r['brute']} | {r['speedup']} | {r['fast_mem']} | {r['brute_mem']} | {r['target']} "
        f"| {r['met']} | {r['load']} |"
        for r in rows
    ]
    notes = [f"- {r['note']}" for r in rows if r["note"]]
    table = header + "\n".join(lines) + "\n"
    text = TEMPLATE.format(
        table=table,
        notes="\n".join(notes) or "-",
        threads=rows[0]["threads"],
        repeats=repeats,
        load_start=load_start,
        waited=waited,
        date=time.strftime("%Y-%m-%d %H:%M"),
    )
    # Keep the sections written by benchmarks/analyze_speed.py (algorithm and table).
    if path.exists():
        previous = path.read_text()
        keep = previous.find(KEEP_FROM)
        if keep >= 0:
            text = text.rstrip("\n") + "\n\n" + previous[keep:]
    path.write_text(text)
    print(table)
    print(f"wrote {path}", file=sys.stderr)


TEMPLATE = """# Counting unique prototypes exactly and fast

`count_unique_prototypes(weights, eps=0.025, block_size=2048, method="auto")` counts
M, the connected components of the graph that links two normalized prototypes when
their Euclidean distance is below eps (design.md). Both methods return identical M
and identical canonical labels (components numbered by their smallest member).

## Algorithm (`method="leaders"`, what `"auto"` picks for K >= 2048 and eps <= 0.3)

1. **Greedy covers.** Rows are visited in chunks of `block_size`. A row joins the
   nearest existing leader proposed by a float32 screen (full rows, or projections,
   see 3) if the exact float64 distance is < eps; the rest of the chunk is resolved
   greedily in index order (the first unassigned row becomes a leader and claims the
   unassigned rows within eps).
   Every member is exactly linked to its leader, so each cover lies in one component.
2. **Links between covers.** If members a in A and b in B are linked, then
   d(L_A, L_B) <= r_a + eps + r_b < 3 eps. The leader pairs screened closer than
   3 eps come for free: a new leader's row of the screen against older leaders is
   that list. They are filtered by the exact bound d(L_A, L_B) < max r_A + max r_B +
   eps, and only their member pairs (pruned again by the triangle inequality) are
   measured, closest leader pairs first, skipping covers already merged (union-find).
3. **Two-level screen.** For p >= 128 (and K >= 4096) each tile is first screened
   on projections onto the top 32 principal directions (from a 16k-row sample):
   `[y_i, |y_i|^2, 1] . [-2 y_j, 1, |y_j|^2] = |y_i - y_j|^2`, a lower bound of the
   full squared distance, in one 34-column matmul. The nearest leader in projection
   is the join candidate (checked exactly); only new leaders with some leader within
   3 eps in projection get the full 256-column screen for their leader pairs.
   Without collapse that is nearly no row, so the K^2 / 2 part costs 34 instead of
   256 columns.
4. **Exactness.** The screens are float32 matmuls with margins that bound their
   rounding error (full: 2(2(p + 5) 2^-24 + 2e-9) on d^2; projected: 8(q + 5) 2^-24),
   so they can only propose too many candidates. Every link that enters the result
   is decided by the direct float64 distance `||mu_i - mu_j|| < eps`, the formula the
   brute force itself uses for every pair near eps (elsewhere its Gram-matrix
   distances agree with it to ~1e-14, far inside its 1e-10 re-measuring band). If
   the device's float32 matmul is reduced precision (TF32, bf16; probed at run time)
   the screens run in float64. Zero rows and rows too small to normalize are
   compared with every row by the brute force's own rule.
5. **Cost.** Collapsed heads (L leaders ~ M << K): about K L p screening work.
   Without collapse every row is a leader: the K^2 / 2 screen on 34-column
   projections, float32 matmul tiles of `block_size` x `4 block_size` (both cores).
   Memory: the float64 unit rows, a float32 copy, the projections and the leaders
   (O(K p)), plus O(block_size^2) reused tile buffers: never K x K.

`"auto"` hands over to the brute force if the leader graph turns out too dense to pay
off (more than 8M leader pairs within 3 eps, or more member pairs to check than
K^2 / 128). `uniqueness_curve`, `nearest_neighbor_distances` and
`summarize_prototypes` (what `protossl analyze` prints) reuse the same covers; see
"Everything `protossl analyze` prints" below.

## Benchmark

`python benchmarks/unique_count.py` ({date}); protocol at the top of the script.
2-core CPU, torch threads: {threads}; d = 256, eps = 0.025, float32 input; seconds
are the median of {repeats} timed runs (min-max); peak memory is the peak RSS above
the RSS before the call, in a fresh subprocess per case (`resource.getrusage`).
Collapsed = 1,000 groups, members within 0.5 eps of each other (M = 1,000 exactly);
random = Gaussian directions (M = K).

{table}
Notes:
{notes}
- The machine is shared with other jobs: 1-minute load {load_start:.2f} when the run
  started (waited {waited:.0f} s for it to drop below 1.0); the last column gives the
  load before each case's first subprocess and after its last. The benchmark itself
  runs two busy threads, so a load of about 2 during a case is its own; a load
  clearly above 2 means other jobs shared the cores. Under such contention torch's
  OpenMP threads stall and timings get several times slower (seen while developing:
  a 65,536-random run took 10 s instead of 1.8 s next to another 2-thread job).
- Memory at K = 262,144 is dominated by the float64 unit rows (512 MiB) and their
  float32 copy (256 MiB); there is no memory target at that size.
- n/m: not measured.
"""


if __name__ == "__main__":
    main()
