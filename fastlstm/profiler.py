"""`fastlstm profile`: time every backend against torch.nn.LSTM over sequence lengths.

For one shape (batch B, input I, hidden H, layers L, dtype, device) and each
sequence length T, every backend runs inference (forward under no_grad) and/or
training (forward + backward with a random output gradient). Before a backend
is timed at a shape, its output (and in training its input gradient) is
compared with a float64 torch.nn.LSTM holding the same weights; a backend that
disagrees is marked "failed" and gets no figures.

Timing is interleaved: each repetition runs every backend once, in an order
rotated from one repetition to the next, and the median is reported. On a
shared, noisy machine this keeps the ratios between backends fair even when
absolute times drift. Short calls are repeated inside one sample so a sample
lasts at least ~20 ms.

Peak memory is the growth of memory in use during one call, over what was in
use before it (the model, inputs and output gradient are not counted):
- CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`,
  minus `memory_allocated()` before the call (tensors from torch's allocator).
- CPU (Linux): one call per configuration, after a warm-up call, in a fresh
  subprocess; the process's peak resident set (VmHWM, reset through
  /proc/self/clear_refs) minus its resident set before the call. glibc is told
  to serve blocks of 64 kB and more with mmap and to trim freed memory, so
  freed memory returns to the OS and the peak follows live allocations. This
  counts everything the call touches, oneDNN scratch space included, at page
  granularity. Elsewhere the column is empty.

A grid (`--grid`) repeats the sweep for every batch x hidden x dtype, one
shape after another; `--results FILE` then writes one compact row per fastlstm
backend, shape and mode, paired with nn.LSTM timed interleaved in the same run
(see `result_rows`).

The ms-per-step column is the median time divided by T. For a linear-time
implementation it stays flat (it falls at short T, where the fixed cost per
call is shared by fewer steps); growth with T means super-linear cost.

Example:
    >>> rows = run_profile(batch=2, input_size=4, hidden_size=8, seq_lens=[4, 8],
    ...                    backends=["jit", "torch"], repeats=1, memory=False)
    >>> sorted({r["backend"] for r in rows})
    ['jit', 'torch']
"""
import argparse
import copy
import csv
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ._dispatch import available_backends
from .baselines import ScriptedCellLSTM, TutorialLSTM
from .modules import LSTM

# fastlstm's own backends that the profiler can time ("auto" only picks one of these).
FASTLSTM_BACKENDS = ("jit", "triton", "reference")
# What fastlstm is compared with. "flashrnn" (NX-AI's PyPI package) runs only on CUDA.
BASELINES = ("torch", "tutorial", "scripted", "flashrnn")
KNOWN_BACKENDS = FASTLSTM_BACKENDS + BASELINES
# Python loops with many small ops per step: capped by `slow_max_seq_len`.
SLOW_BACKENDS = ("tutorial", "reference")
# Baselines written for one layer, one direction.
ONE_LAYER_BACKENDS = ("tutorial", "scripted", "flashrnn")

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DTYPE_SHORT = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}

# (atol, rtol) against a float64 nn.LSTM. Looser than the unit tests' because
# errors accumulate over long sequences; a wrong gate order or a dropped term
# still misses by orders of magnitude.
TOLERANCES = {
    torch.float64: (1e-8, 1e-8),
    torch.float32: (1e-4, 1e-3),
    torch.bfloat16: (6e-2, 6e-2),
    torch.float16: (1e-2, 1e-2),
}

DEFAULT_SEQ_LENS = (16, 64, 256, 1024)
QUICK_SEQ_LENS = (16, 64, 256)
DEFAULT_REPEATS = 7
QUICK_REPEATS = 3
DEFAULT_SLOW_MAX_SEQ_LEN = 1024
QUICK_SLOW_MAX_SEQ_LEN = 64
DEFAULT_OUT = "profile-out"
DEFAULT_INPUT = 128
# `--grid` presets: the axes they set (a given --seq-lens wins over a preset's).
GRID_AXES = ("batch", "hidden", "dtype")
GRID_PRESETS = {
    "gpu": {"batch": [1, 16, 64, 256], "hidden": [256, 768, 1024], "dtype": ["bfloat16", "float32"],
            "seq_lens": [64, 256, 1024, 4096]},
}
_DTYPE_ALIASES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}
# A timing sample repeats short calls until it lasts about this long.
_MIN_SAMPLE_S = 0.02
_MAX_INNER = 50

FIELDS = (
    "backend", "mode", "seq_len", "batch", "input", "hidden", "layers", "dtype", "device",
    "device_name", "status", "note", "plan", "ms", "ms_min", "ms_max", "ms_per_step", "tokens_per_s",
    "speedup_vs_torch", "peak_mem_bytes", "max_abs_err", "repeats", "inner", "threads",
    "load_avg_1m", "torch_version", "triton_version", "git_commit", "timestamp",
)
# `--results`: one row per fastlstm backend x shape x mode; the first eight fields identify it.
RESULT_FIELDS = ("device", "dtype", "batch", "hidden", "input", "seq_len", "mode", "backend",
                 "baseline", "ms", "baseline_ms", "speedup", "plan", "torch", "triton", "commit")
_RESULT_KEY = RESULT_FIELDS[:8]


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------

def git_commit() -> Optional[str]:
    """The short commit of the checkout fastlstm runs from (with "-dirty" when it has
    uncommitted changes to tracked files), or None outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _package_version(name: str) -> Optional[str]:
    # Read from the installed metadata, so that Triton is never imported here.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    """A readable name for `device`: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def environment(device: torch.device) -> Dict[str, object]:
    """What a figure depends on: device, versions, threads, commit and time.

    Example:
        >>> environment(torch.device("cpu"))["torch_version"] == torch.__version__
        True
    """
    return {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "load_avg_1m": _load_average(),
        "torch_version": torch.__version__,
        "triton_version": _package_version("triton"),
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------
# Models, steps and checks (shared with bench/)
# ---------------------------------------------------------------------------

def _flashrnn_importable() -> bool:
    try:
        import flashrnn  # noqa: F401
    except Exception:  # any failure to import means "not available here"
        return False
    return True


def unavailable_reason(name: str, lstm: nn.LSTM, device: torch.device) -> Optional[str]:
    """Why backend `name` cannot be timed for `lstm` on `device`, or None when it can.

    Triton on the CPU runs only under the interpreter, which is orders of
    magnitude too slow to time, so it counts as unavailable there.
    """
    if name not in KNOWN_BACKENDS:
        return f"unknown backend {name!r}; expected one of {', '.join(KNOWN_BACKENDS)}"
    if name in ONE_LAYER_BACKENDS and (lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size):
        return "this baseline covers one layer, one direction only"
    if name == "triton":
        if device.type != "cuda":
            return "Triton runs on the CPU only under the interpreter, far too slow to time"
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return "TRITON_INTERPRET=1: the interpreter is far too slow to time"
        if "triton" not in available_backends(torch.empty(0, device=device)):
            return "Triton cannot run here (see fastlstm.available_backends)"
    if name == "flashrnn":
        if device.type != "cuda":
            return "FlashRNN needs a CUDA GPU"
        if not _flashrnn_importable():
            return "the 'flashrnn' package does not import"
    return None


class _FlashRNNLSTM(nn.Module):
    """NX-AI's FlashRNN ("lstm", fused CUDA kernel) on an nn.LSTM's weights.

    FlashRNN takes the input projection Wx (B, T, G, heads, D), the recurrent
    matrix R (G, heads, D, D_prev) and one bias (G, heads, D); its gate order
    (i, f, z, o) is torch's. One head of size H is an nn.LSTM of hidden H.
    """

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.lstm = lstm

    def forward(self, x: Tensor, hx=None):
        from flashrnn import flashrnn

        m = self.lstm
        T, B, _ = x.shape
        H = m.hidden_size
        wx = nn.functional.linear(x, m.weight_ih_l0).transpose(0, 1).reshape(B, T, 4, 1, H)
        r = m.weight_hh_l0.view(4, 1, H, H)
        b = (m.bias_ih_l0 + m.bias_hh_l0).view(4, 1, H)
        dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[x.dtype]
        states, last = flashrnn(wx, r, b, function="lstm", backend="cuda_fused", dtype=dtype)
        # states (S, B, T, heads, H) with S = (h, c); last (S, B, 1, heads, H)
        out = states[0, :, :, 0].transpose(0, 1)
        return out, (last[0, :, 0, 0].unsqueeze(0), last[1, :, 0, 0].unsqueeze(0))


def triton_plan(lstm: nn.LSTM, batch: int, mode: str) -> Optional[str]:
    """The Triton backend's launch plans (forward, and backward in training) for
    every layer of `lstm` at this batch size, or None off CUDA."""
    w = lstm.weight_hh_l0
    if w.device.type != "cuda":
        return None
    from .backends.triton import plans_for

    x = torch.empty(1, batch, 1, dtype=w.dtype, device=w.device)
    plans = plans_for(x, lstm.hidden_size, lstm.proj_size, training=mode == "train")
    return "; ".join(str(p) for p in plans if p is not None)


def build_model(name: str, lstm: nn.LSTM) -> nn.Module:
    """A module computing `lstm` with backend `name`, on `lstm`'s weights.

    fastlstm backends and "scripted" share `lstm`'s parameters; "tutorial"
    copies them into per-gate matrices; "torch" is `lstm` itself.

    Example:
        >>> ref = nn.LSTM(4, 8)
        >>> build_model("jit", ref).weight_hh_l0 is ref.weight_hh_l0
        True
    """
    if name == "torch":
        return lstm
    if name in FASTLSTM_BACKENDS:
        return LSTM.from_torch(lstm, backend=name)
    if name == "tutorial":
        return TutorialLSTM.from_lstm(lstm)
    if name == "scripted":
        return ScriptedCellLSTM.from_lstm(lstm)
    if name == "flashrnn":
        return _FlashRNNLSTM(lstm)
    raise ValueError(f"build_model: unknown backend {name!r}; expected one of {', '.join(KNOWN_BACKENDS)}")


def make_inputs(seq_len: int, batch: int, lstm: nn.LSTM, mode: str, seed: int = 0):
    """Input x (T, B, I) and, in training, an output gradient (T, B, H), in `lstm`'s
    dtype and device. In training x requires grad, as a layer's input does when
    anything below it trains (an embedding, another layer)."""
    w = lstm.weight_ih_l0
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(seq_len, batch, lstm.input_size, generator=g).to(w.device, w.dtype)
    grad_out = None
    if mode == "train":
        x.requires_grad_(True)
        out_size = lstm.proj_size or lstm.hidden_size
        d = 2 if lstm.bidirectional else 1
        grad_out = torch.randn(seq_len, batch, d * out_size, generator=g).to(w.device, w.dtype)
    return x, grad_out


def make_step(model: nn.Module, x: Tensor, mode: str, grad_out: Optional[Tensor] = None) -> Callable:
    """A function running one call of `model`: a forward under no_grad ("infer"), or
    forward + backward of `grad_out` ("train"). It waits for the GPU before it
    returns, so timing it times the work. Returns a dict of the results.

    Example:
        >>> ref = nn.LSTM(4, 8); x, g = make_inputs(5, 2, ref, "train")
        >>> sorted(make_step(ref, x, "train", g)())
        ['c_n', 'grad_input', 'h_n', 'out']
    """
    if mode not in ("infer", "train"):
        raise ValueError(f"make_step: mode must be 'infer' or 'train', got {mode!r}")
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    if mode == "infer":
        def step():
            with torch.no_grad():
                out, (h_n, c_n) = model(x)
            sync()
            return {"out": out, "h_n": _layered(h_n), "c_n": _layered(c_n)}
        return step

    if grad_out is None:
        raise ValueError("make_step: mode 'train' needs grad_out")
    params = list(model.parameters())

    def step():
        # Fresh gradients each call, so every call does the same work and allocations.
        x.grad = None
        for p in params:
            p.grad = None
        out, (h_n, c_n) = model(x)
        out.backward(grad_out)
        sync()
        return {"out": out.detach(), "h_n": _layered(h_n.detach()), "c_n": _layered(c_n.detach()),
                "grad_input": x.grad}
    return step


def _layered(state: Tensor) -> Tensor:
    # The one-layer baselines return states (B, H); nn.LSTM's are (L*D, B, H).
    return state.unsqueeze(0) if state.dim() == 2 else state


def reference_result(lstm: nn.LSTM, x: Tensor, mode: str, grad_out: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """What `make_step` should return, from a float64 copy of `lstm` on the same inputs."""
    ref = copy.deepcopy(lstm).double()
    x64 = x.detach().double().requires_grad_(mode == "train")
    g64 = grad_out.double() if grad_out is not None else None
    return {k: v.detach() for k, v in make_step(ref, x64, mode, g64)().items()}


def compare(got: Dict[str, Tensor], want: Dict[str, Tensor], dtype: torch.dtype):
    """(ok, max_abs_err, message): is every tensor in `want` matched by `got`,
    within TOLERANCES[dtype] (|got - want| <= atol + rtol |want|)?"""
    atol, rtol = TOLERANCES[dtype]
    worst, problems = 0.0, []
    for name, w in want.items():
        g = got.get(name)
        if g is None:
            problems.append(f"{name} is missing")
            continue
        if tuple(g.shape) != tuple(w.shape):
            problems.append(f"{name} has shape {tuple(g.shape)}, expected {tuple(w.shape)}")
            continue
        diff = (g.detach().double() - w).abs()
        err = float(diff.max()) if diff.numel() else 0.0
        if not torch.isfinite(g).all():
            err = float("inf")
        worst = max(worst, err)
        excess = diff - rtol * w.abs()
        if err == float("inf") or (excess.numel() and float(excess.max()) > atol):
            problems.append(f"{name}: max abs error {err:.3g} (atol {atol:g}, rtol {rtol:g})")
    return not problems, worst, "; ".join(problems)


def warm_up(step: Callable, max_calls: int = 3, budget_s: float = 0.5) -> float:
    """Run `step` up to `max_calls` times, stopping once `budget_s` is spent, and
    return the last call's seconds. TorchScript's profiling executor specialises
    and optimises over its first runs at a new shape, so one call is not enough.

    Example:
        >>> seconds = warm_up(lambda: None)
    """
    spent, last = 0.0, 0.0
    for _ in range(max_calls):
        t0 = time.perf_counter()
        step()
        last = time.perf_counter() - t0
        spent += last
        if spent > budget_s:
            break
    return last


def calls_per_sample(seconds_per_call: float) -> int:
    """How many calls one timing sample repeats so that it lasts about
    `_MIN_SAMPLE_S` (at most `_MAX_INNER`), from one warm call's seconds."""
    return max(1, min(_MAX_INNER, int(_MIN_SAMPLE_S / max(seconds_per_call, 1e-6)) + 1))


def timed_median(steps: Dict[str, Callable], repeats: int, inner: Dict[str, int],
                 on_sample: Optional[Callable[[str], None]] = None) -> Dict[str, List[float]]:
    """Interleaved timing: `repeats` rounds, each timing every step once in an order
    rotated round by round. Returns the seconds per call of each sample, by name."""
    names = list(steps)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            fn, n = steps[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
            if on_sample is not None:
                on_sample(name)
    return samples


def cuda_peak_memory(step: Callable, device: torch.device) -> int:
    """Peak growth of CUDA memory allocated by torch during one `step()`, in bytes."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    return int(torch.cuda.max_memory_allocated(device) - before)


# ---------------------------------------------------------------------------
# CPU memory: measured in a fresh subprocess (see the module docstring)
# ---------------------------------------------------------------------------

def _proc_status_bytes(key: str) -> Optional[int]:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None


def _cpu_peak_growth(step: Callable, libc) -> Optional[int]:
    import gc

    gc.collect()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    before = _proc_status_bytes("VmRSS:")
    step()
    peak = _proc_status_bytes("VmHWM:")
    if before is None or peak is None:
        return None
    return max(0, peak - before)


def _memory_child() -> None:
    """Subprocess entry: read a spec (JSON) on stdin, print one JSON line per configuration."""
    import ctypes

    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(spec["threads"])
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD, fixed (no dynamic growth)
        libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    except OSError:
        libc = None
    dtype, device = DTYPES[spec["dtype"]], torch.device("cpu")
    lstm = _make_lstm(spec["input"], spec["hidden"], spec["layers"], dtype, device, spec["seed"])
    for backend, mode, seq_len in spec["configs"]:
        peak = None
        try:
            model = build_model(backend, lstm)
            x, grad_out = make_inputs(seq_len, spec["batch"], lstm, mode, spec["seed"])
            step = make_step(model, x, mode, grad_out)
            step()  # warm-up: compilation, caches and packed weights are not per call
            peak = _cpu_peak_growth(step, libc)
            del step, x, grad_out, model
        except Exception:  # the parent already reports errors; memory is then unknown
            peak = None
        print(json.dumps({"backend": backend, "mode": mode, "seq_len": seq_len, "peak_mem_bytes": peak}), flush=True)


def _cpu_memory(configs, spec: dict, on_result: Callable[[], None]) -> Dict[tuple, Optional[int]]:
    if not configs or not sys.platform.startswith("linux"):
        return {}
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0"
    spec = dict(spec, configs=[list(c) for c in configs])
    proc = subprocess.Popen(
        [sys.executable, "-c", "from fastlstm.profiler import _memory_child; _memory_child()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    found = {}
    for line in proc.stdout:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        found[(r["backend"], r["mode"], r["seq_len"])] = r["peak_mem_bytes"]
        on_result()
    proc.wait()
    return found


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------

def _make_lstm(input_size: int, hidden_size: int, layers: int, dtype, device, seed: int) -> nn.LSTM:
    torch.manual_seed(seed)
    return nn.LSTM(input_size, hidden_size, num_layers=layers).to(device=device, dtype=dtype)


def resolve_device(device: str) -> torch.device:
    """"auto" is CUDA when a GPU is there, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_backends(device: torch.device) -> List[str]:
    """fastlstm's backends that run at speed on `device`, then the baselines.

    The "reference" backend (a plain loop, the tests' oracle) is left out; name
    it in `backends` to time it.
    """
    lstm = nn.LSTM(1, 1, device="meta")
    return [b for b in ("jit", "triton") + BASELINES if unavailable_reason(b, lstm, device) is None]


def _blank_row(backend, mode, seq_len, batch, input_size, hidden_size, layers, dtype, env) -> dict:
    row = {f: None for f in FIELDS}
    row.update(env)
    row.update(backend=backend, mode=mode, seq_len=seq_len, batch=batch, input=input_size,
               hidden=hidden_size, layers=layers, dtype=str(dtype).replace("torch.", ""), note="")
    return row


def run_profile(
    batch: int = 32,
    input_size: int = 128,
    hidden_size: int = 256,
    layers: int = 1,
    seq_lens: Sequence[int] = DEFAULT_SEQ_LENS,
    dtype: torch.dtype = torch.float32,
    device: str = "auto",
    modes: Sequence[str] = ("infer", "train"),
    backends: Optional[Sequence[str]] = None,
    repeats: int = DEFAULT_REPEATS,
    slow_max_seq_len: Optional[int] = DEFAULT_SLOW_MAX_SEQ_LEN,
    memory: bool = True,
    extra_models: Optional[Dict[str, Callable[[nn.LSTM], nn.Module]]] = None,
    seed: int = 0,
    progress: Optional[Callable[[str, int], None]] = None,
) -> List[dict]:
    """Time every backend at every (mode, seq_len); one row (a dict with FIELDS) each.

    `backends` defaults to `default_backends(device)`; "torch" is always added,
    as the reference for `speedup_vs_torch`. `extra_models` maps more names to
    factories building a module from the reference nn.LSTM (for your own LSTM).
    Rows have status "ok", "failed" (wrong answer: no figures), "error" or
    "skipped", with the reason in `note`. `progress(what, n)` is told each time
    n units of work finish (see `count_work`).

    Example:
        >>> rows = run_profile(batch=2, input_size=3, hidden_size=5, seq_lens=[4],
        ...                    modes=["infer"], backends=["torch"], repeats=1, memory=False)
        >>> rows[0]["status"], rows[0]["speedup_vs_torch"]
        ('ok', 1.0)
    """
    dev = resolve_device(device)
    names = list(backends) if backends is not None else default_backends(dev)
    if "torch" not in names:
        names.append("torch")
    factories: Dict[str, Callable[[nn.LSTM], nn.Module]] = {n: (lambda m, n=n: build_model(n, m)) for n in names}
    factories.update(extra_models or {})
    names = list(dict.fromkeys(names + list(factories)))
    tell = progress or (lambda what, n: None)
    env = environment(dev)
    lstm = _make_lstm(input_size, hidden_size, layers, dtype, dev, seed)
    rows: List[dict] = []
    memory_configs = []

    for mode in modes:
        for T in seq_lens:
            ref_error = None
            try:
                x, grad_out = make_inputs(T, batch, lstm, mode, seed)
                want = reference_result(lstm, x, mode, grad_out)
            except Exception as e:  # out of memory at a large shape: report it, go on with the others
                ref_error = f"float64 nn.LSTM reference: {type(e).__name__}: {e}"
            if ref_error is not None:
                x = grad_out = None
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                for name in names:
                    row = _blank_row(name, mode, T, batch, input_size, hidden_size, layers, dtype, env)
                    row.update(status="error", note=ref_error)
                    rows.append(row)
                    tell(f"{mode} T={T} {name}: error", repeats + 1)
                continue
            steps: Dict[str, Callable] = {}
            inner: Dict[str, int] = {}
            by_name: Dict[str, dict] = {}
            for name in names:
                row = _blank_row(name, mode, T, batch, input_size, hidden_size, layers, dtype, env)
                by_name[name] = row
                rows.append(row)
                reason = unavailable_reason(name, lstm, dev) if name not in (extra_models or {}) else None
                if reason is None and name in SLOW_BACKENDS and slow_max_seq_len and T > slow_max_seq_len:
                    reason = f"T > {slow_max_seq_len}: too slow (raise --slow-max-seq-len)"
                if reason is not None:
                    row.update(status="skipped", note=reason)
                    tell(f"{mode} T={T} {name}: skipped", repeats + 1)
                    continue
                try:
                    step = make_step(factories[name](lstm), x, mode, grad_out)
                    # The checked call is also the first warm-up (compilation, caches).
                    ok, err, msg = compare(step(), want, dtype)
                    row["max_abs_err"] = err
                    if not ok:
                        row.update(status="failed", note=f"wrong answer vs nn.LSTM: {msg}")
                        tell(f"{mode} T={T} {name}: failed", repeats + 1)
                        continue
                    warm = warm_up(step)
                except ImportError as e:
                    row.update(status="skipped", note=f"does not import: {e}")
                    tell(f"{mode} T={T} {name}: skipped", repeats + 1)
                    continue
                except Exception as e:  # report and go on: one broken backend must not stop a sweep
                    row.update(status="error", note=f"{type(e).__name__}: {e}")
                    tell(f"{mode} T={T} {name}: error", repeats + 1)
                    continue
                steps[name] = step
                inner[name] = calls_per_sample(warm)
                if name == "triton":
                    row["plan"] = triton_plan(lstm, batch, mode)
                tell(f"{mode} T={T} {name}: checked", 1)

            del want
            samples = timed_median(steps, repeats, inner, lambda n: tell(f"{mode} T={T}: timing", 1))
            for name, secs in samples.items():
                row = by_name[name]
                ms = statistics.median(secs) * 1e3
                row.update(status="ok", ms=ms, ms_min=min(secs) * 1e3, ms_max=max(secs) * 1e3,
                           ms_per_step=ms / T, tokens_per_s=batch * T / (ms / 1e3),
                           repeats=repeats, inner=inner[name])
                if dev.type == "cuda" and memory:
                    row["peak_mem_bytes"] = cuda_peak_memory(steps[name], dev)
                elif memory and name not in (extra_models or {}):
                    memory_configs.append((name, mode, T))
            torch_ms = by_name["torch"]["ms"]
            for row in by_name.values():
                if row["ms"] is not None and torch_ms:
                    row["speedup_vs_torch"] = torch_ms / row["ms"]
            del steps, x, grad_out

    if memory_configs:
        spec = dict(batch=batch, input=input_size, hidden=hidden_size, layers=layers,
                    dtype=str(dtype).replace("torch.", ""), seed=seed, threads=torch.get_num_threads())
        found = _cpu_memory(memory_configs, spec, lambda: tell("peak memory (subprocess)", 1))
        for row in rows:
            key = (row["backend"], row["mode"], row["seq_len"])
            if key in found:
                row["peak_mem_bytes"] = found[key]
    return rows


def count_work(n_modes: int, n_seq_lens: int, n_backends: int, repeats: int, memory_on_cpu: bool) -> int:
    """Units of work `run_profile` reports through `progress`, for a progress bar's total."""
    per_shape = n_backends * (repeats + 1)
    total = n_modes * n_seq_lens * per_shape
    if memory_on_cpu:
        total += n_modes * n_seq_lens * n_backends
    return total


# ---------------------------------------------------------------------------
# Output: JSON, CSV, PNG, table
# ---------------------------------------------------------------------------

def write_json(rows: List[dict], path: str) -> str:
    """Write `rows` as a JSON list of objects (missing figures are null)."""
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    return path


def write_csv(rows: List[dict], path: str) -> str:
    """Write `rows` as CSV with the columns FIELDS (missing figures are empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELDS), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in FIELDS})
    return path


def baseline_name(device: torch.device) -> str:
    """The library nn.LSTM runs on at `device`: "cudnn" on CUDA, "onednn" on the CPU
    ("aten" where that library is off or missing)."""
    if device.type == "cuda":
        on = torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
        return "cudnn" if on else "aten"
    return "onednn" if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else "aten"


def result_rows(rows: List[dict], baseline: str) -> List[dict]:
    """One row (RESULT_FIELDS) per fastlstm backend's profile row, paired with the
    "torch" row timed interleaved with it (same shape, mode and T). `ms`,
    `baseline_ms` and `speedup` (baseline_ms / ms) are None unless both passed.

    Example:
        >>> rows = run_profile(batch=2, input_size=3, hidden_size=5, seq_lens=[4], modes=["infer"],
        ...                    backends=["jit"], repeats=1, memory=False)
        >>> [(r["backend"], r["speedup"] > 0) for r in result_rows(rows, "onednn")]
        [('jit', True)]
    """
    def pair(r):
        return tuple(r[k] for k in ("device", "mode", "seq_len", "batch", "input", "hidden", "layers", "dtype"))

    base = {pair(r): r["ms"] for r in rows if r["backend"] == "torch" and r["status"] == "ok"}
    out = []
    for r in rows:
        if r["backend"] not in FASTLSTM_BACKENDS:
            continue
        ms = r["ms"] if r["status"] == "ok" else None
        base_ms = base.get(pair(r)) if ms else None
        out.append({"device": r["device_name"], "dtype": r["dtype"], "batch": r["batch"], "hidden": r["hidden"],
                    "input": r["input"], "seq_len": r["seq_len"], "mode": r["mode"], "backend": r["backend"],
                    "baseline": baseline, "ms": ms if base_ms else None, "baseline_ms": base_ms,
                    "speedup": base_ms / ms if base_ms else None, "plan": r.get("plan"),
                    "torch": r["torch_version"],
                    "triton": r["triton_version"], "commit": r["git_commit"]})
    return out


def write_results(rows: List[dict], path: str, baseline: str) -> int:
    """Write the passing `result_rows(rows, baseline)` to `path` (a JSON list); return
    how many. An existing file is updated: its rows for the device, shapes, modes
    and backends tried here are replaced (or dropped, where they no longer pass),
    the others kept, so a long grid can be run in pieces into one file."""
    tried = result_rows(rows, baseline)
    keys = {tuple(r[k] for k in _RESULT_KEY) for r in tried}
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            kept = [r for r in json.load(f) if tuple(r.get(k) for k in _RESULT_KEY) not in keys]
    passed = [r for r in tried if r["speedup"] is not None]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json(kept + passed, path)
    return len(passed)


def plot(rows: List[dict], path: str) -> str:
    """Save a PNG: tokens/s against T (log x) and speed-up over nn.LSTM, one line per
    backend (solid: train, dashed: infer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, (ax_tp, ax_su) = plt.subplots(1, 2, figsize=(12, 4.8))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colors = {b: f"C{i}" for i, b in enumerate(backends)}
    for backend in backends:
        for mode, style in (("train", "-"), ("infer", "--")):
            pts = sorted((r["seq_len"], r["tokens_per_s"], r["speedup_vs_torch"]) for r in ok
                         if r["backend"] == backend and r["mode"] == mode)
            if not pts:
                continue
            ts = [p[0] for p in pts]
            label = f"{backend} ({mode})"
            ax_tp.plot(ts, [p[1] for p in pts], style, marker="o", color=colors[backend], label=label)
            if all(p[2] is not None for p in pts):
                ax_su.plot(ts, [p[2] for p in pts], style, marker="o", color=colors[backend], label=label)
    seq_lens = sorted({r["seq_len"] for r in ok})
    for ax in (ax_tp, ax_su):
        ax.set_xscale("log", base=2)
        if seq_lens:
            ax.set_xticks(seq_lens, [str(t) for t in seq_lens])
            ax.minorticks_off()
        ax.set_xlabel("sequence length T")
        ax.grid(True, which="both", alpha=0.3)
    ax_tp.set_yscale("log")
    ax_tp.set_ylabel("tokens / s (B*T per call)")
    ax_tp.set_title("throughput")
    ax_su.axhline(1.0, color="black", linewidth=0.8)
    ax_su.set_ylabel("speed-up over torch.nn.LSTM")
    ax_su.set_title("speed-up over nn.LSTM (>1: faster)")
    if ok:
        r0 = ok[0]
        fig.suptitle(f"B={r0['batch']} I={r0['input']} H={r0['hidden']} L={r0['layers']} "
                     f"{r0['dtype']} on {r0['device_name']} ({r0['threads']} threads)")
        ax_tp.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def print_report(rows: List[dict], console=None) -> None:
    """Print the results table and the ms-per-step-against-T table (rich, or plain text)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _print_plain(rows)
        return
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    table = Table(title="fastlstm profile (median of interleaved runs)", show_lines=False)
    for col, just in (("mode", "left"), ("T", "right"), ("backend", "left"), ("ms", "right"),
                      ("ms/step", "right"), ("tokens/s", "right"), ("vs nn.LSTM", "right"),
                      ("peak mem", "right"), ("status", "left")):
        table.add_column(col, justify=just)
    last = None
    for r in rows:
        key = (r["mode"], r["seq_len"])
        if last is not None and key != last:
            table.add_section()
        last = key
        speed = _fmt(r["speedup_vs_torch"], ".2f")
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['note']}"
        style = {"ok": None, "skipped": "dim", "failed": "bold red", "error": "red"}[r["status"]]
        table.add_row(r["mode"], str(r["seq_len"]), r["backend"], _fmt(r["ms"], ".2f"),
                      _fmt(r["ms_per_step"], ".3f"), _fmt(r["tokens_per_s"], ",.0f"),
                      f"{speed}x" if speed else "", _fmt_bytes(r["peak_mem_bytes"]), status, style=style)
    console.print(table)
    console.print(_growth_table(rows, Table))
    for line in _plan_lines(rows):
        console.print(line, highlight=False)


def _plan_lines(rows: List[dict]) -> List[str]:
    """One line per backend and mode that recorded a launch plan, naming its rows' T."""
    plans: Dict[tuple, List[int]] = {}
    for r in rows:
        if r.get("plan"):
            plans.setdefault((r["backend"], r["mode"], r["plan"]), []).append(r["seq_len"])
    return [f"{backend} {mode} (T={', '.join(map(str, Ts))}) launch plan: {plan}"
            for (backend, mode, plan), Ts in plans.items()]


def _growth_table(rows: List[dict], Table):
    seq_lens = sorted({r["seq_len"] for r in rows})
    t = Table(title="ms per step against T (flat = linear time; it falls at short T, where "
                    "the fixed cost per call is shared by fewer steps)")
    t.add_column("backend")
    t.add_column("mode")
    for T in seq_lens:
        t.add_column(f"T={T}", justify="right")
    t.add_column("last/first", justify="right")
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            cells = {r["seq_len"]: r["ms_per_step"] for r in rows
                     if r["backend"] == backend and r["mode"] == mode and r["ms_per_step"] is not None}
            if not cells:
                continue
            firsts = [cells[T] for T in seq_lens if T in cells]
            ratio = f"{firsts[-1] / firsts[0]:.2f}" if len(firsts) > 1 else ""
            t.add_row(backend, mode, *[_fmt(cells.get(T), ".3f") for T in seq_lens], ratio)
    return t


def _print_plain(rows: List[dict]) -> None:
    print(f"{'mode':6} {'T':>6} {'backend':10} {'ms':>10} {'ms/step':>9} {'tokens/s':>12} "
          f"{'vs torch':>9} {'peak mem':>10}  status")
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['note']}"
        print(f"{r['mode']:6} {r['seq_len']:>6} {r['backend']:10} {_fmt(r['ms'], '.2f'):>10} "
              f"{_fmt(r['ms_per_step'], '.3f'):>9} {_fmt(r['tokens_per_s'], ',.0f'):>12} "
              f"{_fmt(r['speedup_vs_torch'], '.2f'):>9} {_fmt_bytes(r['peak_mem_bytes']):>10}  {status}")
    for line in _plan_lines(rows):
        print(line)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _positive_ints(text: str, sep: str = ",") -> List[int]:
    values = [int(v) for v in text.split(sep) if v.strip()]  # ValueError on a non-integer
    if not values or any(v <= 0 for v in values):
        raise ValueError(text)
    return values


def _int_list(text: str) -> List[int]:
    try:
        return _positive_ints(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seq-lens: expected a comma list of positive integers, got {text!r}")


def _grid(text: str) -> Dict[str, list]:
    """--grid: a comma list of preset names and AXIS=V1/V2/... items (AXIS in GRID_AXES),
    later items overriding earlier ones, e.g. "gpu" or "batch=1/16,hidden=256,dtype=bf16/fp32"."""
    grid: Dict[str, list] = {}
    for item in (v.strip() for v in text.split(",")):
        if item in GRID_PRESETS:
            grid.update(GRID_PRESETS[item])
            continue
        axis, _, values = item.partition("=")
        try:
            if axis not in GRID_AXES:
                raise ValueError(item)
            if axis == "dtype":
                grid[axis] = [_DTYPE_ALIASES.get(v, v) for v in values.split("/")]
                if any(v not in DTYPES for v in grid[axis]):
                    raise ValueError(item)
            else:
                grid[axis] = _positive_ints(values, "/")
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--grid: expected a comma list of presets ({', '.join(GRID_PRESETS)}) and AXIS=V1/V2/... "
                f"with AXIS one of {', '.join(GRID_AXES)}, got {text!r} (bad item {item!r})")
    return grid


def _name_list(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in KNOWN_BACKENDS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"--backends: expected a comma list of {', '.join(KNOWN_BACKENDS)}, got {text!r}")
    return names


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `fastlstm profile` on an argparse subparsers object.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> _ = add_parser(sub)
    """
    p = subparsers.add_parser(
        "profile",
        help="time fastlstm's backends against torch.nn.LSTM and baselines over sequence lengths",
        description=(
            "Sweep sequence lengths for fastlstm's backends and the baselines (torch.nn.LSTM, a "
            "tutorial-style loop, a scripted cell loop), interleaving them so ratios are fair on a "
            "noisy machine. Each backend is checked against nn.LSTM before it is timed. Writes "
            "profile.json, profile.csv and profile.png to --out; with --grid, the sweep repeats for "
            "every batch x hidden x dtype (one PNG per shape), and --results writes one compact row per "
            "fastlstm backend x shape x mode with its interleaved nn.LSTM baseline."
        ),
    )
    p.add_argument("--batch", type=int, default=32, help="batch size B (default 32)")
    p.add_argument("--input", type=int, default=None,
                   help=f"input size I (default {DEFAULT_INPUT}; with --grid: the hidden size)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size H (default 256)")
    p.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    p.add_argument("--seq-lens", type=_int_list, default=None,
                   help=f"comma list of T (default {','.join(map(str, DEFAULT_SEQ_LENS))}; "
                        f"--quick: {','.join(map(str, QUICK_SEQ_LENS))})")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--mode", choices=["infer", "train", "both"], default="both",
                   help="infer: forward under no_grad; train: forward + backward (default both)")
    p.add_argument("--backends", type=_name_list, default=None,
                   help="comma list of " + ", ".join(KNOWN_BACKENDS) +
                        " (default: fastlstm's fast backends for the device, and the baselines)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed runs per backend and shape (default {DEFAULT_REPEATS}; --quick: {QUICK_REPEATS})")
    p.add_argument("--slow-max-seq-len", type=int, default=None,
                   help=f"longest T for the slow loops ({', '.join(SLOW_BACKENDS)}); 0: no cap "
                        f"(default {DEFAULT_SLOW_MAX_SEQ_LEN}; --quick: {QUICK_SLOW_MAX_SEQ_LEN})")
    p.add_argument("--quick", action="store_true", help="a short run (well under a minute on 2 CPU cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    preset = ", ".join(f"{name}: batch {'/'.join(map(str, g['batch']))}, hidden {'/'.join(map(str, g['hidden']))}, "
                       f"dtype {'/'.join(g['dtype'])}, T {','.join(map(str, g['seq_lens']))}"
                       for name, g in GRID_PRESETS.items())
    p.add_argument("--grid", type=_grid, default=None, metavar="SPEC",
                   help="sweep batch x hidden x dtype, --seq-lens giving T: a comma list of presets and "
                        "AXIS=V1/V2/... (AXIS: batch, hidden, dtype; dtype also bf16, fp32, fp16, fp64), later "
                        "items winning, e.g. 'gpu' or 'batch=1/16,hidden=256/768,dtype=bf16/fp32'; axes left out "
                        f"come from --batch, --hidden, --dtype; the input size is the hidden size unless --input "
                        f"is given. Preset {preset} (its T only when --seq-lens is not given)")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="also write FILE, a JSON list with one row per fastlstm backend x shape x mode: "
                        + ", ".join(RESULT_FIELDS) + " (device: GPU/CPU name; baseline: nn.LSTM's library, "
                        "cudnn on CUDA, onednn on CPU, timed interleaved in the same run; speedup = "
                        "baseline_ms / ms). Rows that failed the answer check are left out (the command then "
                        "exits non-zero); rows of an existing FILE for other shapes or backends are kept")
    p.set_defaults(func=_run_cli)
    return p


def _run_cli(args) -> int:
    grid = args.grid or {}
    seq_lens = args.seq_lens or grid.get("seq_lens") or list(QUICK_SEQ_LENS if args.quick else DEFAULT_SEQ_LENS)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    slow_cap = args.slow_max_seq_len
    if slow_cap is None:
        slow_cap = QUICK_SLOW_MAX_SEQ_LEN if args.quick else DEFAULT_SLOW_MAX_SEQ_LEN
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    for flag, value in (("--batch", args.batch), ("--input", args.input), ("--hidden", args.hidden),
                        ("--layers", args.layers), ("--repeats", repeats)):
        if value is not None and value <= 0:
            raise SystemExit(f"fastlstm profile: {flag} must be a positive integer, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    backends = args.backends or default_backends(device)
    if "torch" not in backends:
        backends = backends + ["torch"]
    os.makedirs(args.out, exist_ok=True)
    # One shape per (dtype, batch, hidden); without --grid, just the one given.
    shapes = [(dtype, batch, hidden) for dtype in grid.get("dtype", [args.dtype])
              for batch in grid.get("batch", [args.batch]) for hidden in grid.get("hidden", [args.hidden])]

    load = _load_average()
    if device.type == "cpu" and torch.get_num_threads() > 1 and load is not None and load >= 1.0:
        # With another process running (1-min load of 1 or more), an OpenMP thread that loses its core stalls the
        # others at each barrier: times inflate many-fold, and unevenly.
        print(f"warning: the CPU is busy (load average {load:.2f}); with {torch.get_num_threads()} torch "
              f"threads on {os.cpu_count()} cores times may be inflated many-fold; try --threads 1")
    rows: List[dict] = []
    pngs: Optional[List[str]] = []  # None once matplotlib turns out to be missing
    for i, (dtype, batch, hidden) in enumerate(shapes, 1):
        input_size = args.input or (hidden if args.grid else DEFAULT_INPUT)
        kwargs = dict(batch=batch, input_size=input_size, hidden_size=hidden, layers=args.layers,
                      seq_lens=seq_lens, dtype=DTYPES[dtype], device=str(device), modes=modes,
                      backends=backends, repeats=repeats, slow_max_seq_len=slow_cap or None,
                      memory=not args.no_memory, seed=args.seed)
        print(f"fastlstm profile: B={batch} I={input_size} H={hidden} L={args.layers} {dtype} "
              f"on {device} ({device_name(device)}, {torch.get_num_threads()} threads); T in {seq_lens}; "
              f"{', '.join(modes)}; backends {', '.join(backends)}; {repeats} interleaved repeats"
              + (f" [shape {i} of {len(shapes)}]" if len(shapes) > 1 else ""))
        total = count_work(len(modes), len(seq_lens), len(backends), repeats,
                           memory_on_cpu=not args.no_memory and device.type == "cpu")
        shape_rows = _run_with_progress(kwargs, total)
        print_report(shape_rows)
        rows += shape_rows
        name = "profile.png" if len(shapes) == 1 else f"profile-{dtype}-B{batch}-H{hidden}.png"
        if pngs is not None:
            try:
                pngs.append(plot(shape_rows, os.path.join(args.out, name)))
            except ImportError:
                pngs = None

    paths = [write_json(rows, os.path.join(args.out, "profile.json")),
             write_csv(rows, os.path.join(args.out, "profile.csv"))]
    if pngs is not None:
        paths += pngs if len(pngs) <= 3 else [os.path.join(args.out, "profile-*.png")]
    else:
        print("matplotlib is not installed: no plot (pip install 'fastlstm[profile]')")
    bad = [r for r in rows if r["status"] in ("failed", "error")]
    written = None
    if args.results:
        written = write_results(rows, args.results, baseline_name(device))
        paths.append(f"{args.results} ({written} rows)")
    print("Peak memory: growth during one call over what was in use before it "
          + ("(torch.cuda.max_memory_allocated)." if device.type == "cuda" else
             "(peak resident set of a fresh subprocess, glibc returning freed memory; see fastlstm.profiler)."))
    print("Times are medians of interleaved runs; on a shared machine read the ratios, not the absolutes.")
    print("Wrote " + ", ".join(paths))
    if bad:
        print(f"{len(bad)} row(s) failed or raised (left out of --results): " + "; ".join(
            f"{r['backend']} {r['mode']} {r['dtype']} B={r['batch']} H={r['hidden']} T={r['seq_len']}: {r['note']}"
            for r in bad[:10]) + (" ..." if len(bad) > 10 else ""))
    if written == 0:
        print(f"--results: no fastlstm backend passed, so {args.results} got no rows")
    return 1 if bad or written == 0 else 0


def _run_with_progress(kwargs: dict, total: int) -> List[dict]:
    """`run_profile(**kwargs)` under a rich progress bar (plain when rich is missing)."""
    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        return run_profile(**kwargs)
    with Progress(TextColumn("{task.description:<34}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("profiling", total=total)
        rows = run_profile(**kwargs, progress=lambda what, n: bar.update(task, advance=n, description=what))
        bar.update(task, completed=total, description="done")
    return rows
