"""Peak memory of one call: the growth of memory in use during it, over what was
in use before it (the model, inputs and output gradient are not counted).

- CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`,
  minus `memory_allocated()` before the call (tensors from torch's allocator).
- CPU (Linux): one call per configuration, after a warm-up call, in a fresh
  subprocess; the process's peak resident set (VmHWM, reset through
  /proc/self/clear_refs) minus its resident set before the call. glibc is told
  to serve blocks of 64 kB and more with mmap and to trim freed memory, so
  freed memory returns to the OS and the peak follows live allocations. This
  counts everything the call touches, oneDNN scratch space included, at page
  granularity. Elsewhere the figure is None.
"""
import json
import os
import subprocess
import sys
from typing import Callable, Dict, Optional

import torch

from .models import DTYPES, _make_lstm, build_model
from .workloads import make_inputs, make_step

def cuda_peak_memory(step: Callable, device: torch.device) -> int:
    """Peak growth of CUDA memory allocated by torch during one `step()`, in bytes."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    return int(torch.cuda.max_memory_allocated(device) - before)


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
        [sys.executable, "-c", "from fastlstm.profile.memory import _memory_child; _memory_child()"],
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
