"""``protossl sweep``: a grid of training runs and their evaluations, resumable, in one table.

A sweep file names a base (preset and overrides), a grid of config keys and,
optionally, the evaluations to run on every finished run; every combination is
one run directory ``OUT/<name>``. Runs are separate ``protossl train`` processes
and evaluations separate ``protossl eval`` processes (one run after another, or
``--jobs N`` runs at a time, each pinned to one GPU with ``--gpus``), so a broken
run or evaluation cannot take the sweep down: it is recorded as failed with its
last error line, and the others go on. Finished runs are skipped; interrupted
ones continue with ``--resume``; an evaluation already in the run's
``summary.json`` is not run again. After each run, every summary is collected
into ``OUT/results.csv`` and ``OUT/results.json`` (evaluation results as
``eval.<metric>`` columns, e.g. ``eval.knn_top1@20``, ``eval.linear_top1``).

Sweep file (YAML)::

    preset: dino                 # default preset of every run
    set:                         # overrides shared by every run
      optim.epochs: 30
    grid:                        # every combination is a run
      preset: [dino, dino-kp]    # "preset" may vary too
      model.num_prototypes: [256, 1024, 4096]
      dataset:                   # a *linked* axis: each value sets several keys together
        - {name: balanced, data.spec: "folder:data/cifar10", optim.epochs: 30}
        - {name: lt100, data.spec: "folder:data/cifar10@lt=100", optim.epochs: 120}
      seed: [0, 1]
    eval:                        # after training, on every run (protossl eval)
      - {data: "{data_balanced}", protocols: [knn, linear, fewshot, cluster]}
      - {data: "{data_balanced}@lt=100", test_data: "{data_balanced}", protocols: [longtail]}

An ``eval`` entry takes ``data`` (required), ``test_data``, ``protocols``
(required; a list or ``"knn,linear"``), ``features`` (``backbone``) and ``device``
(``cpu``), as ``protossl eval`` does. In ``data`` and ``test_data``, ``{data}`` is
the run's own ``data.spec`` and ``{data_balanced}`` the same spec without its
``@lt=R`` suffix. Each protocol may appear in one entry only: results are stored
by metric name (``eval.<metric>``), so a second entry would overwrite the first.

A *linked* axis (every value a mapping) sets its keys together and names its part of
the run name with ``name`` (default ``<axis>-<index>``); the axis itself becomes a
column of the results, so it cannot be called ``data``, ``K``, ``M``, ``status``, ...

Modules: ``tasks`` (``SweepRun``, ``EvalTask``), ``spec`` (reading the file, the grid),
``evals`` (the ``eval`` section and its placeholders), ``plan`` (the state of a run and
the commands left to finish it), ``launch`` (child processes, stopping them),
``results`` (``results.csv`` / ``results.json``) and ``scheduler`` (``run_sweep``).

Example:
    $ protossl sweep sweeps/cifar10.yaml --out sweeps_out/cifar10 --jobs 2
"""

from protossl.sweep.evals import EVAL_KEYS, PLACEHOLDERS, resolve_evals
from protossl.sweep.plan import eval_command, has_work, pending_protocols, run_status, train_command
from protossl.sweep.results import SUMMARY_KEYS, collect
from protossl.sweep.scheduler import run_sweep
from protossl.sweep.spec import load_sweep
from protossl.sweep.tasks import EvalTask, SweepRun

__all__ = [
    "EVAL_KEYS",
    "PLACEHOLDERS",
    "SUMMARY_KEYS",
    "EvalTask",
    "SweepRun",
    "collect",
    "eval_command",
    "has_work",
    "load_sweep",
    "pending_protocols",
    "resolve_evals",
    "run_status",
    "run_sweep",
    "train_command",
]
