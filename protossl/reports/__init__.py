"""Plots and reports of runs.

* :mod:`~protossl.reports.curves` -- training curves of a few runs (``protossl demo``);
* :mod:`~protossl.reports.report` -- ``protossl report``: figures and one static
  ``index.html`` for a run or a sweep, built from :mod:`~protossl.reports.runs`
  (finding runs), :mod:`~protossl.reports.probe` (checkpoint, features, assignments),
  :mod:`~protossl.reports.embedding` (t-SNE), :mod:`~protossl.reports.figures` and
  :mod:`~protossl.reports.html`;
* :mod:`~protossl.reports.results_table` -- the headline table of a sweep (Markdown and
  report sections).

Example:
    >>> from protossl.reports import write_report
    >>> write_report(Path("sweeps/cifar10"), None)  # doctest: +SKIP
    PosixPath('sweeps/cifar10/report/index.html')
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_report"]


def __getattr__(name: str) -> Any:
    # Lazy: importing protossl.reports.curves must not pull in torch and scikit-learn.
    if name == "write_report":
        from protossl.reports.report import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
