"""The sweep: every backend at every (mode, T) of one shape and workload, checked,
then timed interleaved; rows are handed on group by group as they are measured."""
import contextlib
import statistics
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..device import gpu
from .check import compare
from .env import LoadMonitor, environment
from .memory import CpuMemoryProbe, cuda_peak_memory
from .models import SLOW_BACKENDS, cudnn_algo_for, default_backends, resolve_device, triton_plan
from .timing import calls_per_sample, timed_median, warm_up
from .workloads import backends_for, build_workload_model, make_inputs, make_reference_module, make_step, \
    reference_result, workload_unavailable_reason

# run_profile's own defaults: the thorough sweep (`fastlstm profile --full` at one batch).
DEFAULT_SEQ_LENS = (16, 64, 256, 1024)
DEFAULT_REPEATS = 7
DEFAULT_SLOW_MAX_SEQ_LEN = 1024

FIELDS = (
    "workload", "backend", "mode", "seq_len", "batch", "input", "hidden", "layers", "bidirectional", "packed",
    "dtype", "device", "device_name", "status", "note", "plan", "cudnn_algo", "ms", "ms_min", "ms_max", "ms_per_step",
    "tokens_per_s", "speedup_vs_torch", "peak_mem_bytes", "max_abs_err", "repeats", "inner", "threads",
    "load_avg_1m", "load_avg_1m_max", "torch_version", "triton_version", "git_commit", "timestamp",
)

# progress(what, work, rows): `work` units were done (see `count_work`), `rows` rows finished.
Progress = Callable[[str, float, int], None]


def _blank_row(workload, backend, mode, seq_len, batch, input_size, hidden_size, layers, dtype, env,
               bidirectional=False, packed=False) -> dict:
    row = {f: None for f in FIELDS}
    row.update(env)
    row.update(workload=workload, backend=backend, mode=mode, seq_len=seq_len, batch=batch, input=input_size,
               hidden=hidden_size, layers=layers, bidirectional=bidirectional, packed=packed,
               dtype=str(dtype).replace("torch.", ""), note="")
    return row


def work_weight(seq_len: int, batch: int) -> float:
    """Relative cost of one timing sample at (T, B), for the estimate of time left:
    a sample lasts at least ~20 ms, and longer once a call's T*B work exceeds it."""
    return max(1.0, seq_len * batch / 2048)


def count_work(modes: Sequence[str], seq_lens: Sequence[int], batch: int, n_backends: int, repeats: int,
               memory_on_cpu: bool) -> float:
    """The work units `run_profile` reports through `progress` for one shape (a progress
    bar's total): per mode, T and backend, one check and `repeats` samples (and one
    memory measurement on the CPU), each weighted by `work_weight`.

    Example:
        >>> count_work(["infer"], [16], 32, n_backends=2, repeats=3, memory_on_cpu=False)
        8.0
    """
    per_backend = repeats + 1 + (1 if memory_on_cpu else 0)
    return float(sum(len(modes) * n_backends * per_backend * work_weight(T, batch) for T in seq_lens))


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
    extra_models: Optional[Dict[str, Callable[[nn.Module], nn.Module]]] = None,
    seed: int = 0,
    progress: Optional[Progress] = None,
    workload: str = "layer",
    on_rows: Optional[Callable[[List[dict]], None]] = None,
    load: Optional[LoadMonitor] = None,
    bidirectional: bool = False,
    packed: bool = False,
) -> List[dict]:
    """Time every backend at every (mode, seq_len); one row (a dict with FIELDS) each.

    `workload` is "layer" (one nn.LSTM call on the sequence) or "cell" (an
    LSTMCell stepped over it in Python; see `workloads`). `backends` defaults to
    `default_backends(device)`, keeping those the workload has; "torch" is
    always added, as the reference for `speedup_vs_torch`. `extra_models` maps
    more names to factories building a module from the reference nn.LSTM (or
    nn.LSTMCell) (for your own LSTM). Rows have status "ok", "failed" (wrong
    answer: no figures), "error" or "skipped", with the reason in `note`.

    After each (mode, T) group is measured, its rows go to `on_rows` (to write
    them at once), and `progress(what, work, rows)` hears of the work done (see
    `count_work`) as it goes. `load` (a started LoadMonitor) gives each row the
    load average at its start and the highest during it; without one, this
    call runs its own. `bidirectional` and `packed` (layer workload) make the
    nn.LSTM bidirectional and its input a PackedSequence (see `workloads`).
    On CUDA each layer row records in `cudnn_algo` the algorithm cuDNN runs for
    nn.LSTM at its shape (`models.cudnn_algo`), and Triton's rows their launch
    plans in `plan`.

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
    extra = dict(extra_models or {})
    names = backends_for(workload, list(dict.fromkeys(names))) + [n for n in extra if n not in names]
    tell = progress or (lambda what, work, rows: None)
    env = environment(dev)
    ref = make_reference_module(workload, input_size, hidden_size, layers, dtype, dev, seed, bidirectional)
    rows: List[dict] = []
    on_gpu = gpu(dev) is not None
    with contextlib.ExitStack() as stack:
        if load is None:
            load = stack.enter_context(LoadMonitor())
        probe = None
        if memory and not on_gpu:
            probe = stack.enter_context(CpuMemoryProbe(dict(
                workload=workload, batch=batch, input=input_size, hidden=hidden_size, layers=layers,
                dtype=str(dtype).replace("torch.", ""), seed=seed, threads=torch.get_num_threads(),
                bidirectional=bidirectional, packed=packed)))
        for mode in modes:
            for T in seq_lens:
                group = _measure_group(workload, names, extra, ref, mode, T, batch, dtype, dev, env, repeats,
                                       slow_max_seq_len, memory, probe, seed, load, tell, packed)
                rows += group
                if on_rows is not None:
                    on_rows(group)
                tell(f"{workload} {mode} T={T} B={batch}: done", 0, len(group))
    return rows


def _measure_group(workload, names, extra, ref, mode, T, batch, dtype, dev, env, repeats, slow_max_seq_len,
                   memory, probe, seed, load, tell, packed=False) -> List[dict]:
    """The rows of one (mode, T): every backend checked, then timed interleaved."""
    what = f"{workload} {mode} T={T} B={batch}"
    w = work_weight(T, batch)
    load_start = load.new_window()
    layers = getattr(ref, "num_layers", 1)
    bidirectional = bool(getattr(ref, "bidirectional", False))
    torch_name = "nn.LSTMCell" if workload == "cell" else "nn.LSTM"
    algo = cudnn_algo_for(ref, batch, T, mode, packed) if workload == "layer" else None

    def new_row(name):
        row = _blank_row(workload, name, mode, T, batch, ref.input_size, ref.hidden_size, layers, dtype, env,
                         bidirectional, packed)
        row["load_avg_1m"] = load_start
        row["cudnn_algo"] = algo
        return row

    per_backend = (repeats + 1 + (1 if probe is not None else 0)) * w
    ref_error = None
    try:
        x, grad_out = make_inputs(T, batch, ref, mode, seed, packed)
        want = reference_result(ref, x, mode, grad_out)
    except Exception as e:  # out of memory at a large shape: report it, go on with the others
        ref_error = f"float64 {torch_name} reference: {type(e).__name__}: {e}"
    if ref_error is not None:
        if gpu(dev) is not None:
            gpu(dev).empty_cache()
        group = []
        for name in names:
            row = new_row(name)
            row.update(status="error", note=ref_error)
            group.append(row)
            tell(f"{what} {name}: error", per_backend, 0)
        return _close_group(group, load)

    steps: Dict[str, Callable] = {}
    inner: Dict[str, int] = {}
    by_name: Dict[str, dict] = {}
    for name in names:
        row = by_name[name] = new_row(name)
        reason = workload_unavailable_reason(workload, name, ref, dev, packed) if name not in extra else None
        if reason is None and name in SLOW_BACKENDS and slow_max_seq_len and T > slow_max_seq_len:
            reason = f"T > {slow_max_seq_len}: too slow (raise --slow-max-seq-len)"
        if reason is not None:
            row.update(status="skipped", note=reason)
            tell(f"{what} {name}: skipped", per_backend, 0)
            continue
        try:
            model = extra[name](ref) if name in extra else build_workload_model(workload, name, ref)
            step = make_step(model, x, mode, grad_out)
            # The checked call is also the first warm-up (compilation, caches).
            ok, err, msg = compare(step(), want, dtype, dev, None if name in extra else name, workload)
            row["max_abs_err"] = err
            if not ok:
                row.update(status="failed", note=f"wrong answer vs {torch_name}: {msg}")
                tell(f"{what} {name}: failed", per_backend, 0)
                continue
            warm = warm_up(step)
        except ImportError as e:
            row.update(status="skipped", note=f"does not import: {e}")
            tell(f"{what} {name}: skipped", per_backend, 0)
            continue
        except Exception as e:  # report and go on: one broken backend must not stop a sweep
            row.update(status="error", note=f"{type(e).__name__}: {e}")
            tell(f"{what} {name}: error", per_backend, 0)
            continue
        steps[name] = step
        inner[name] = calls_per_sample(warm)
        if name == "triton" and workload == "layer":
            row["plan"] = triton_plan(ref, batch, mode)
        tell(f"{what} {name}: checked", w, 0)

    del want
    samples = timed_median(steps, repeats, inner, lambda n: tell(f"{what}: timing {n}", w, 0), gpu=gpu(dev))
    for name, secs in samples.items():
        row = by_name[name]
        ms = statistics.median(secs) * 1e3
        row.update(status="ok", ms=ms, ms_min=min(secs) * 1e3, ms_max=max(secs) * 1e3,
                   ms_per_step=ms / T, tokens_per_s=batch * T / (ms / 1e3), repeats=repeats, inner=inner[name])
    torch_ms = by_name["torch"]["ms"]
    for row in by_name.values():
        if row["ms"] is not None and torch_ms:
            row["speedup_vs_torch"] = torch_ms / row["ms"]
    if memory:
        for name in samples:
            if gpu(dev) is not None:
                by_name[name]["peak_mem_bytes"] = cuda_peak_memory(steps[name], dev)
            elif probe is not None and name not in extra:
                by_name[name]["peak_mem_bytes"] = probe.measure(name, mode, T)
                tell(f"{what}: peak memory of {name}", w, 0)
    return _close_group(list(by_name.values()), load)


def _close_group(group: List[dict], load: LoadMonitor) -> List[dict]:
    peak = load.window_max()
    for row in group:
        row["load_avg_1m_max"] = peak
    return group
