# `make profile` and `make test` set up .venv on first use, then run.
# Here the CPU build of torch is pinned because it installs from local disk in
# seconds; a bare `torch` requirement would pull a multi-GB CUDA build. On a
# GPU machine keep your own torch: `pip install -e '.[triton]'`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.fastlstm-installed
# pyproject.toml's requires-python (tests/test_setup.py keeps the two equal).
MIN_PYTHON := 3.11

# `make bench` runs $(PY) $(BENCH_ARGS); tests/test_bench_smoke.py runs the same line
# (read through `make -s bench-args`) in smoke mode. Group by `group`, which every
# benchmark sets (to its shape), so that backends of one shape sit side by side.
BENCH_ARGS := -m pytest bench --benchmark-only --benchmark-group-by=group

# `make gpu-check` runs on a GPU machine (no network) with its own python3 and
# torch: it installs this checkout without dependencies, then runs
# fastlstm/profile/gpu_check.py (results in bench/results/gpu-<date>-<commit>/).
# It never creates .venv. `make gpu-check-dry` rehearses the same stages on the
# CPU under Triton's interpreter, with tiny shapes, writing to $(GPU_CHECK_OUT)
# (empty: a new temporary folder); CI runs it through tests/test_gpu_check.py.
GPU_CHECK_ARGS ?=
GPU_CHECK_OUT ?=

.PHONY: venv profile test bench bench-args clean gpu-check gpu-check-dry

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < tuple(map(int, "$(MIN_PYTHON)".split("."))))' || \
		{ echo "fastlstm needs Python $(MIN_PYTHON) or newer (the pinned torch and numpy need it); $(PYTHON) is $$($(PYTHON) -V 2>&1): run make PYTHON=python3.11 (or newer)"; exit 1; }
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
	$(PY) $(BENCH_ARGS)

bench-args:
	@echo $(BENCH_ARGS)

gpu-check:
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PYTHON) -m fastlstm.profile.gpu_check $(GPU_CHECK_ARGS)

gpu-check-dry: $(STAMP)
	$(PY) -m fastlstm.profile.gpu_check --dry $(if $(GPU_CHECK_OUT),--out $(GPU_CHECK_OUT)) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks
