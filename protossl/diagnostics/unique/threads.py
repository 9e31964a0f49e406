"""Scoped single-threaded execution for the many-small-tiles passes.

Small tiles gain nothing from OpenMP, and on a busy machine every barrier can stall:
measured on the shared 2-core box under load 5, the neighbourhood pass of the 65,536
collapsed benchmark took 47 s with 2 threads and 1.3 s with one. Thread count never
changes a result (every decision is re-measured in float64), only the time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, leaving the caller's setting as it was.

    torch has no scoped thread setting, so this is the narrowest change available:
    nothing is touched when the caller already runs one thread (``OMP_NUM_THREADS=1``,
    ``num_threads: 1`` runs, nested use), and otherwise the caller's count is restored
    in ``finally``, so it survives errors and Ctrl-C inside the block too.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
