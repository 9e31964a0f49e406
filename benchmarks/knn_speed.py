"""kNN speed and memory: protossl's chunked search vs straightforward references.

Workload (issue 5): 50,000 train and 10,000 test features of dimension 384,
DINO's weighted kNN for k in (10, 20, 100, 200) from one top-200 search, 10
classes. Compared, on the same features and the same number of threads:

* ``protossl``: :func:`protossl.evaluation.knn.knn_accuracy` (chunked search,
  one reused similarity block of at most 256 MiB, votes per chunk);
* ``torch full``: one ``test @ train.T`` matrix (10,000 x 50,000 floats =
  1.9 GiB) and one ``topk`` over it, then the same votes;
* ``faiss IndexFlatIP``: exact inner-product search over normalised features
  (only if ``faiss`` is importable), then the same votes.

Each variant runs in its own child process (so peak resident memory, read
from ``getrusage`` after the run, is the variant's own), three times; the
median wall time is reported. All variants must give identical accuracies.
Results go to ``docs/knn_speed.md``.

Usage:
    python benchmarks/knn_speed.py [--train 50000] [--test 10000] [--dim 384] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07
NUM_CLASSES = 10
VARIANTS = ("protossl", "torch_full", "faiss_flat_ip")


def _features(n_train: int, n_test: int, dim: int) -> tuple:
    """Clustered features (10 classes, noisy) so accuracies are neither 0 nor 1."""
    import torch

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(NUM_CLASSES, dim, generator=g)
    y_train = torch.randint(0, NUM_CLASSES, (n_train,), generator=g)
    y_test = torch.randint(0, NUM_CLASSES, (n_test,), generator=g)
    x_train = centers[y_train] + 8.0 * torch.randn(n_train, dim, generator=g)
    x_test = centers[y_test] + 8.0 * torch.randn(n_test, dim, generator=g)
    return x_train, y_train, x_test, y_test


def _accuracy_from_neighbours(sims, idx, y_train, y_test) -> dict[str, float]:
    """The same weighted votes as protossl (independent code), for the references."""
    import torch

    out: dict[str, float] = {}
    for k in KS:
        weights = (sims[:, :k] / TEMPERATURE).exp()
        scores = torch.zeros(sims.shape[0], NUM_CLASSES).scatter_add_(
            1, y_train[idx[:, :k]], weights
        )
        top_scores, top_classes = scores.topk(5, dim=1)
        hits = (top_classes == y_test[:, None]) & (top_scores > 0)
        out[f"knn_top1@{k}"] = int(hits[:, 0].sum()) / len(y_test)
        out[f"knn_top5@{k}"] = int(hits.any(1).sum()) / len(y_test)
    return out


def _run_variant(variant: str, n_train: int, n_test: int, dim: int) -> dict:
    """Child process body: one timed run of one variant."""
    import torch
    import torch.nn.functional as F

    x_train, y_train, x_test, y_test = _features(n_train, n_test, dim)
    # Imports happen before the clock starts (importing protossl pulls in its
    # dependencies; faiss is imported before its timer too).
    from protossl.evaluation.knn import knn_accuracy

    if variant == "faiss_flat_ip":
        import faiss
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant == "protossl":
        acc = knn_accuracy(x_train, y_train, x_test, y_test, NUM_CLASSES, ks=KS)
    elif variant == "torch_full":
        train_n, test_n = F.normalize(x_train, dim=1), F.normalize(x_test, dim=1)
        sims, idx = (test_n @ train_n.T).topk(max(KS), dim=1)
        acc = _accuracy_from_neighbours(sims, idx, y_train, y_test)
    else:
        faiss.omp_set_num_threads(torch.get_num_threads())
        train_n = F.normalize(x_train, dim=1).numpy()
        test_n = F.normalize(x_test, dim=1).numpy()
        index = faiss.IndexFlatIP(dim)
        index.add(train_n)
        d, i = index.search(test_n, max(KS))
        acc = _accuracy_from_neighbours(torch.from_numpy(d), torch.from_numpy(i), y_train, y_test)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "peak_rss_mib": peak_kib / 1024,
        "extra_peak_mib": (peak_kib - base_rss) / 1024,
        "accuracy": acc,
    }


def _spawn(variant: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--train",
        str(args.train),
        "--test",
        str(args.test),
        "--dim",
        str(args.dim),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _available(variant: str) -> bool:
    if variant != "faiss_flat_ip":
        return True
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _table(results: dict[str, list[dict]], args: argparse.Namespace, load: tuple) -> str:
    lines = [
        "# kNN speed: protossl vs straightforward references",
        "",
        "Generated by `python benchmarks/knn_speed.py` (do not edit by hand).",
        "",
        f"Workload: {args.train:,} train x {args.test:,} test features, dimension {args.dim}, "
        f"{NUM_CLASSES} classes, DINO weighted kNN (T = {TEMPERATURE}) for k in {KS} from one "
        f"top-{max(KS)} search, top-1 and top-5. {args.threads} thread(s) per variant; median "
        f"of {args.runs} runs, each in a fresh process, variants interleaved. Peak memory: the "
        "process's peak resident set "
        "(`ru_maxrss`) and its growth during the kNN call (the inputs themselves, "
        f"{(args.train + args.test) * args.dim * 4 / 2**20:.0f} MiB, are allocated before).",
        "",
        f"Load average after the run: {os.getloadavg()[0]:.2f} (1 min).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared "
        f"with other jobs; load average before the run {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f} (1 / 5 / 15 min), so absolute times are noisy.",
        "",
        "| variant | median s | runs (s) | peak RSS MiB | growth during kNN MiB | top-1 @20 |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for variant, runs in results.items():
        times = [r["seconds"] for r in runs]
        lines.append(
            f"| {variant} | {statistics.median(times):.2f} | "
            f"{', '.join(f'{t:.2f}' for t in times)} | "
            f"{max(r['peak_rss_mib'] for r in runs):.0f} | "
            f"{max(r['extra_peak_mib'] for r in runs):.0f} | "
            f"{runs[0]['accuracy']['knn_top1@20']:.4f} |"
        )
    lines += [
        "",
        "protossl's memory bound: one similarity block of `chunk x N` float32 with "
        "`chunk = 256 MiB / (4 N)` (allocated once and reused), plus `chunk x 200` neighbours, "
        "5 ranked classes per test point and k, and the L2-normalised copies of the features "
        f"(the growth column above: 256 MiB block + "
        f"{(args.train + args.test) * args.dim * 4 / 2**20:.0f} MiB copies + small buffers). For "
        "100k x 100k features of dimension 384 that is about 290 MiB plus the 293 MiB of "
        "normalised copies, against 37 GiB for the full similarity matrix of the reference.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent.parent / "docs" / "knn_speed.md")
    )
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(_run_variant(args.child, args.train, args.test, args.dim)))
        return
    load = os.getloadavg()
    variants = [v for v in VARIANTS if _available(v)]
    for skipped in sorted(set(VARIANTS) - set(variants)):
        print(f"{skipped}: not importable, skipped", file=sys.stderr)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    # Round-robin, not one variant after the other: on a shared machine the load drifts,
    # and interleaving spreads the drift over all variants alike.
    for _ in range(args.runs):
        for variant in variants:
            results[variant].append(_spawn(variant, args))
    for variant, runs in results.items():
        print(variant, [round(r["seconds"], 2) for r in runs], file=sys.stderr)
    accuracies = {v: runs[0]["accuracy"] for v, runs in results.items()}
    reference = accuracies["protossl"]
    for variant, acc in accuracies.items():
        for key, value in acc.items():
            # Ties between equal similarities may order differently: allow 1 point in 10,000.
            if abs(value - reference[key]) > 1.5 / args.test:
                raise SystemExit(
                    f"{variant} disagrees with protossl on {key}: {value} vs {reference[key]}"
                )
    text = _table(results, args, load)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
