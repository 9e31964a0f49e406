# protossl: the two commands of the README, plus lint.
# Both create or reuse .venv. PyTorch comes from the wheels pinned below (the
# ones this project's machines carry); pip's own constraints may cap them.
VENV    ?= .venv
PYTHON  ?= python3
TORCH   ?= torch==2.14.1 torchvision==0.29.1
LIGHTLY ?= lightly==1.6.0
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.protossl-installed

.PHONY: venv demo test lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	# lightly: the independent reference of tests/methods/test_parity.py and benchmarks/parity_lightly.py;
	# --no-deps because its DINO modules need only torch (its own deps would pull a new torch).
	$(PY) -m pip install -q --no-deps $(LIGHTLY)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/protossl demo --out demo_runs

# Two pytest workers with one torch thread each (pytest-xdist): the suite's wall time on a
# 2-core machine is about 60 % of one worker's.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check protossl tests benchmarks
	$(VENV)/bin/mypy protossl

clean:
	rm -rf demo_runs .pytest_cache .ruff_cache .mypy_cache
