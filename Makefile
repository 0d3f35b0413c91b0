# `make profile` and `make test` set up .venv on first use, then run.
# Here the CPU build of torch is pinned because it installs from local disk in
# seconds; a bare `torch` requirement would pull a multi-GB CUDA build. On a
# GPU machine keep your own torch: `pip install -e '.[triton]'`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.fastlstm-installed

.PHONY: venv profile test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test,triton,profile,export]'
	touch $(STAMP)

profile: $(STAMP)
	$(VENV)/bin/fastlstm profile

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-only --benchmark-group-by=param:shape

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks
