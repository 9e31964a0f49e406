# protossl: the two commands of the README, plus lint.
# Both create or reuse .venv. PyTorch comes from the wheels pinned below (the
# ones this project's machines carry); pip's own constraints may cap them.
VENV    ?= .venv
PYTHON  ?= python3
TORCH   ?= torch==2.14.1 torchvision==0.29.1
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.protossl-installed

.PHONY: venv demo test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/protossl demo --out demo_runs

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check protossl tests benchmarks
	$(VENV)/bin/mypy protossl

clean:
	rm -rf demo_runs .pytest_cache .ruff_cache .mypy_cache
