"""Options and parametrisation for the fastlstm benchmarks (pytest-benchmark).

    make bench                                                 # the default grid, grouped by shape
    pytest bench --benchmark-only                              # the same (grouped by `group`)
    pytest bench --benchmark-only --bench-grid=large           # T to 4096, GPU shapes, bf16
    pytest bench --benchmark-disable --bench-smoke -q          # CI: tiny shapes, seconds
    pytest bench --benchmark-only --benchmark-autosave         # saves a run under bench/results/

Axes: backend x shape, where a shape fixes sequence length T, batch B, input I,
hidden H, dtype, device and mode (infer: forward under no_grad; train: forward
+ backward). Its id, e.g. `T256-B32-I128-H256-f32-train` (CUDA shapes start
with `cuda-`), is the `shape` parameter and every benchmark's `group`, so the
default grouping (`--benchmark-group-by=group`) puts the backends of one shape,
and its GEMM floor, side by side. (`param:shape` fails on the floor benchmarks,
which have no `shape` parameter.)

- default: CPU, B=32 I=128 H=256 float32, T in 16, 64, 256, 1024, both modes,
  plus inference at B 1 and 8 (T 16, 64, 256) and at B=1 I=H=4 T=20000;
  fastlstm "jit" against torch.nn.LSTM ("torch") and the tutorial loop.
- large (`--bench-grid=large`, or FASTLSTM_BENCH_GRID=large; these cases are
  marked `large`): adds T=4096 and other B/H on the CPU, CUDA shapes (B in
  1, 16, 64; H in 256, 768, 1024; float32 and bfloat16; a T sweep to 4096 at
  the FlashRNN paper's B=16 H=768 bf16), and every backend.
- smoke (`--bench-smoke`, or FASTLSTM_BENCH_SMOKE=1): tiny shapes over every
  backend, so that the suite collects and runs in seconds; with timing on
  (`--benchmark-only`), one short round per benchmark.
test_bench_cell.py times an LSTMCell stepped over T=64 from Python (the `cell_shape`
parameter: the time-sequence predictor's float64 cells, B 3 and 97 with 1 or 51
inputs and 51 units, and float32 B 1, 8, 32 with I=H=256; smoke: tiny), fastlstm.LSTMCell ("jit"; "reference"
and "triton" in large and smoke runs) against torch.nn.LSTMCell ("torch").
test_bench_floor.py times the GEMMs of a layer alone on the float32 CPU shapes of
the same grid (the `floor_shape` parameter; no backend axis): see its docstring.
`--bench-backends=a,b` restricts the backends. Unavailable backends (Triton and
FlashRNN off CUDA, a backend that does not import) are skipped with a reason.
"""
import decimal
import os
from dataclasses import dataclass
from typing import Dict, List

import pytest
import torch

from fastlstm import profile
from fastlstm.profile import workloads

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

DEFAULT_BACKENDS = ("torch", "jit", "tutorial")
ALL_BACKENDS = ("torch", "jit", "triton", "tutorial", "scripted", "flashrnn", "reference")
# The cell loop (test_bench_cell.py): torch.nn.LSTMCell and fastlstm.LSTMCell's backends.
DEFAULT_CELL_BACKENDS = ("torch", "jit")
CELL_BACKENDS = ("torch", "jit", "reference", "triton")
_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64}
MODES = ("infer", "train")


@dataclass(frozen=True)
class Shape:
    """One benchmarked configuration; `id` names it (and is the `shape` parameter)."""

    T: int
    B: int
    I: int  # noqa: E741 (the input size, named as in the docs' shapes)
    H: int
    dtype: str = "f32"
    device: str = "cpu"
    mode: str = "infer"
    large: bool = False
    workload: str = "layer"  # or "cell": an LSTMCell stepped over T in Python (test_bench_cell.py)

    @property
    def id(self) -> str:
        prefix = ("" if self.workload == "layer" else f"{self.workload}-") + \
            ("" if self.device == "cpu" else f"{self.device}-")
        return f"{prefix}T{self.T}-B{self.B}-I{self.I}-H{self.H}-{self.dtype}-{self.mode}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def _default_grid() -> List[Shape]:
    shapes = [Shape(T, 32, 128, 256, mode=m) for m in MODES for T in (16, 64, 256, 1024)]
    # Small batches and a tiny hidden size (inference), where per-step costs decide.
    shapes += [Shape(T, B, 128, 256, mode="infer") for B in (1, 8) for T in (16, 64, 256)]
    return shapes + [Shape(20000, 1, 4, 4, mode="infer")]


def _large_grid() -> List[Shape]:
    cpu = [Shape(4096, 32, 128, 256, mode=m, large=True) for m in MODES]
    cpu += [Shape(256, B, H, H, mode=m, large=True) for m in MODES for B in (1, 64) for H in (256, 1024)]
    gpu = [Shape(1024, B, H, H, dt, "cuda", m, True)
           for m in MODES for dt in ("bf16", "f32") for B in (1, 16, 64) for H in (256, 768, 1024)]
    gpu += [Shape(T, 16, 768, 768, "bf16", "cuda", m, True) for m in MODES for T in (16, 64, 256, 4096)]
    return cpu + gpu


def _smoke_grid(large: bool) -> List[Shape]:
    shapes = [Shape(T, 2, 3, 5, mode=m) for m in MODES for T in (3, 8)]
    if large:
        # Sizes kept to multiples of 16, which GPU kernels tend to require.
        shapes += [Shape(8, 2, 16, 16, dt, "cuda", m) for m in MODES for dt in ("f32", "bf16")]
    return shapes


# Options of pytest-benchmark that this project's commands use. Without the plugin
# pytest would stop at them with "unrecognized arguments"; they are accepted
# then, so that pytest_configure can say what is missing.
_PLUGIN_FLAGS = ("--benchmark-only", "--benchmark-disable", "--benchmark-autosave")
_PLUGIN_VALUES = ("--benchmark-group-by", "--benchmark-json", "--benchmark-save", "--benchmark-storage",
                  "--benchmark-max-time", "--benchmark-min-rounds", "--benchmark-columns", "--benchmark-sort",
                  "--benchmark-compare")
_MISSING_PLUGIN = ("bench/ needs pytest-benchmark, which is not installed for this Python: "
                   "pip install 'fastlstm[test]' (or pip install pytest-benchmark)")


def _cell_grid(smoke: bool) -> List[Shape]:
    if smoke:
        return [Shape(3, 2, 3, 5, mode=m, workload="cell") for m in MODES]
    # pytorch/examples' time-sequence predictor (float64; batch 97 in training, 3 in
    # prediction; its two cells take 1 and 51 inputs), and float32 at B 1, 8, 32.
    shapes = [Shape(64, B, I, 51, "f64", mode=m, workload="cell") for m in MODES for B in (3, 97) for I in (1, 51)]
    return shapes + [Shape(64, B, 256, 256, mode=m, workload="cell") for m in MODES for B in (1, 8, 32)]


def pytest_addoption(parser, pluginmanager):
    if not pluginmanager.has_plugin("benchmark"):
        for flag in _PLUGIN_FLAGS:
            parser.addoption(flag, action="store_true", help="(needs pytest-benchmark)")
        for option in _PLUGIN_VALUES:
            parser.addoption(option, help="(needs pytest-benchmark)")
    group = parser.getgroup("fastlstm-bench", "fastlstm benchmarks")
    group.addoption("--bench-grid", choices=["default", "large"],
                    default=os.environ.get("FASTLSTM_BENCH_GRID", "default"),
                    help="default: the small CPU comparison; large: long T, GPU shapes, bf16")
    group.addoption("--bench-smoke", action="store_true",
                    default=os.environ.get("FASTLSTM_BENCH_SMOKE", "0") == "1",
                    help="tiny shapes so the whole suite runs in seconds (use with --benchmark-disable)")
    group.addoption("--bench-backends", default=None,
                    help="comma list of backends to run, from " + ", ".join(ALL_BACKENDS))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if not config.pluginmanager.has_plugin("benchmark"):
        raise pytest.UsageError(_MISSING_PLUGIN)
    # Saved runs (--benchmark-save / --benchmark-autosave) go to bench/results
    # unless a storage is named. tryfirst: before pytest-benchmark reads it.
    if getattr(config.option, "benchmark_storage", None) == "file://./.benchmarks":
        config.option.benchmark_storage = "file://" + RESULTS
    if config.getoption("--bench-smoke"):
        # Smoke runs check that everything runs and reports, not how fast: one short round each.
        config.option.benchmark_max_time = decimal.Decimal("0.001")
        config.option.benchmark_min_rounds = 1
        config.option.benchmark_warmup = False


def _selected(config) -> Dict[str, object]:
    large = config.getoption("--bench-grid") == "large"
    smoke = config.getoption("--bench-smoke")
    if smoke:
        shapes = _smoke_grid(large)
        backends = tuple(b for b in ALL_BACKENDS if b != "reference")
        cell_backends = CELL_BACKENDS
    else:
        shapes = _default_grid() + (_large_grid() if large else [])
        backends = tuple(b for b in ALL_BACKENDS if b != "reference") if large else DEFAULT_BACKENDS
        cell_backends = CELL_BACKENDS if large else DEFAULT_CELL_BACKENDS
    wanted = config.getoption("--bench-backends")
    if wanted:
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        bad = [n for n in names if n not in ALL_BACKENDS]
        if bad:
            raise pytest.UsageError(f"--bench-backends: unknown {', '.join(bad)}; expected {', '.join(ALL_BACKENDS)}")
        backends = tuple(names)
        cell_backends = tuple(n for n in names if n in CELL_BACKENDS)
    return {"shapes": {s.id: s for s in shapes}, "backends": backends,
            "cell_shapes": _cell_grid(smoke), "cell_backends": cell_backends}


def pytest_generate_tests(metafunc):
    if "floor_shape" in metafunc.fixturenames:
        # The GEMM floor (test_bench_floor.py): float32 CPU shapes, no backend axis.
        shapes = [s for s in _selected(metafunc.config)["shapes"].values() if s.device == "cpu" and s.dtype == "f32"]
        metafunc.parametrize("floor_shape", [
            pytest.param(s, id=s.id, marks=[pytest.mark.large] if s.large else []) for s in shapes
        ])
    if "cell_shape" in metafunc.fixturenames:
        # The cell loop (test_bench_cell.py): its own shapes and the backends with an LSTMCell.
        sel = _selected(metafunc.config)
        metafunc.parametrize("cell_shape", [pytest.param(s, id=s.id) for s in sel["cell_shapes"]])
        if "backend" in metafunc.fixturenames:  # the step floor has no backend axis
            metafunc.parametrize("backend", sel["cell_backends"])
    if "shape" not in metafunc.fixturenames:
        return
    sel = _selected(metafunc.config)
    metafunc.config._fastlstm_shapes = sel["shapes"]
    # The first parametrize is the outer loop: the backends of one shape run one
    # after another, so the shape's inputs and float64 reference are built once.
    metafunc.parametrize("shape", [
        pytest.param(s.id, id=s.id, marks=[pytest.mark.large] if s.large else [])
        for s in sel["shapes"].values()
    ])
    metafunc.parametrize("backend", sel["backends"])


@pytest.fixture
def shape_spec(request, shape) -> Shape:
    """The Shape behind the `shape` parameter (an id string)."""
    return request.config._fastlstm_shapes[shape]


@pytest.fixture(scope="session")
def bench_env():
    """environment() per device, computed once (it runs git)."""
    cache = {}

    def get(device: torch.device) -> dict:
        if str(device) not in cache:
            cache[str(device)] = profile.environment(device)
        return cache[str(device)]
    return get


@pytest.fixture(scope="session")
def shape_data():
    """Per shape: the nn.LSTM (nn.LSTMCell for a cell shape), inputs and float64 reference,
    kept for the latest shape only."""
    cache = {}

    def get(spec: Shape):
        if spec.id not in cache:
            cache.clear()
            lstm = workloads.make_reference_module(spec.workload, spec.I, spec.H, 1, spec.torch_dtype,
                                                   torch.device(spec.device), seed=0)
            x, grad_out = profile.make_inputs(spec.T, spec.B, lstm, spec.mode)
            want = profile.reference_result(lstm, x, spec.mode, grad_out)
            cache[spec.id] = (lstm, x, grad_out, want)
        return cache[spec.id]
    return get

