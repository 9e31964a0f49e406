"""Copy a class-balanced CIFAR-10 subset into a folder that can travel to a lent GPU machine.

The device machine receives at most 64 MiB of working tree and never sees ``../shared``:
the full CIFAR-10 JPEG tree (about 57 MB of files, 236 MB on disk) does not fit beside the
repository, so :mod:`benchmarks.gpu.gpu_check` trains on the first ``--per-class`` training
images of every class and evaluates on the whole test split (10,000 images). The files are
copied byte for byte (same JPEGs, same ImageFolder layout), so ``folder:PATH`` reads them.

Usage (on this machine, once; ``.gpu_data/`` is git-ignored and named in the run's carry):
    python benchmarks/gpu/pack_cifar_subset.py --per-class 2000 --out .gpu_data/cifar10
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

DEFAULT_SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"


def pack(
    source: Path, out: Path, per_class: int, test_per_class: int | None = None
) -> tuple[int, int]:
    """Copy ``per_class`` training images per class and ``test_per_class`` test images per
    class (None: all of them); return both counts."""
    counts = []
    for split, limit in (("train", per_class), ("test", test_per_class)):
        copied = 0
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            target = out / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.glob("*.jpg"))[:limit]:
                shutil.copyfile(image, target / image.name)
                copied += 1
        counts.append(copied)
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path(".gpu_data/cifar10"))
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--test-per-class", type=int, default=None, help="default: all")
    args = parser.parse_args()
    if not (args.source / "train").is_dir():
        raise SystemExit(f"error: no CIFAR-10 train folder under {args.source}")
    train, test = pack(args.source, args.out, args.per_class, args.test_per_class)
    size = sum(f.stat().st_size for f in args.out.rglob("*.jpg")) / 2**20
    print(f"{args.out}: {train} train + {test} test images, {size:.1f} MiB")


if __name__ == "__main__":
    main()
