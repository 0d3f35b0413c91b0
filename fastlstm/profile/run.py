"""The sweep: every backend at every (mode, T), checked, then timed interleaved."""
import statistics
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .check import compare
from .env import environment
from .memory import _cpu_memory, cuda_peak_memory
from .models import SLOW_BACKENDS, _make_lstm, build_model, default_backends, resolve_device, triton_plan, \
    unavailable_reason
from .timing import calls_per_sample, timed_median, warm_up
from .workloads import make_inputs, make_step, reference_result

DEFAULT_SEQ_LENS = (16, 64, 256, 1024)
QUICK_SEQ_LENS = (16, 64, 256)
DEFAULT_REPEATS = 7
QUICK_REPEATS = 3
DEFAULT_SLOW_MAX_SEQ_LEN = 1024
QUICK_SLOW_MAX_SEQ_LEN = 64


FIELDS = (
    "backend", "mode", "seq_len", "batch", "input", "hidden", "layers", "dtype", "device",
    "device_name", "status", "note", "plan", "ms", "ms_min", "ms_max", "ms_per_step", "tokens_per_s",
    "speedup_vs_torch", "peak_mem_bytes", "max_abs_err", "repeats", "inner", "threads",
    "load_avg_1m", "torch_version", "triton_version", "git_commit", "timestamp",
)


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
