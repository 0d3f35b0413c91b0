"""Peak memory of one call: the growth of memory in use during it, over what was
in use before it (the model, inputs and output gradient are not counted).

- A GPU: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`,
  minus `memory_allocated()` before the call (tensors from torch's allocator);
  on a simulated GPU, the bytes of the tensors the call creates that are alive
  at once (`fastlstm.device`, `GPU.peak_memory`).
- CPU (Linux): one call per configuration, after a warm-up call, in a fresh
  subprocess; the process's peak resident set (VmHWM, reset through
  /proc/self/clear_refs) minus its resident set before the call. glibc is told
  to serve blocks of 64 KiB and more with mmap and to trim freed memory, so
  freed memory returns to the OS and the peak follows live allocations. This
  counts everything the call touches, oneDNN scratch space included, at page
  granularity. One subprocess per shape (`CpuMemoryProbe`) measures the
  configurations one by one, as the sweep reaches them. Elsewhere the figure
  is None.
"""
import json
import os
import subprocess
import sys
from typing import Callable, Optional

import torch

from ..device import gpu
from .models import DTYPES
from .workloads import build_workload_model, make_inputs, make_reference_module, make_step

def cuda_peak_memory(step: Callable, device: torch.device) -> int:
    """Peak growth of the GPU memory (CUDA, or simulated) torch allocates during one `step()`, in bytes."""
    return gpu(device).peak_memory(step)


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
    """Subprocess entry: read a spec (one JSON line) on stdin, then one configuration
    [backend, mode, seq_len] per line, and answer each with one JSON line."""
    import ctypes

    spec = json.loads(sys.stdin.readline())
    torch.set_num_threads(spec["threads"])
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD, fixed (no dynamic growth)
        libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    except OSError:
        libc = None
    dtype, device = DTYPES[spec["dtype"]], torch.device("cpu")
    ref = make_reference_module(spec["workload"], spec["input"], spec["hidden"], spec["layers"], dtype, device,
                                spec["seed"], bidirectional=spec.get("bidirectional", False))
    for line in sys.stdin:
        backend, mode, seq_len = json.loads(line)
        peak = None
        try:
            model = build_workload_model(spec["workload"], backend, ref)
            x, grad_out = make_inputs(seq_len, spec["batch"], ref, mode, spec["seed"], spec.get("packed", False))
            step = make_step(model, x, mode, grad_out)
            step()  # warm-up: compilation, caches and packed weights are not per call
            peak = _cpu_peak_growth(step, libc)
            del step, x, grad_out, model
        except Exception:  # the parent already reports errors; memory is then unknown
            peak = None
        print(json.dumps({"peak_mem_bytes": peak}), flush=True)


class CpuMemoryProbe:
    """Measures CPU peak memory of one call per configuration in one subprocess
    (started at the first `measure`, one per shape), one configuration at a time,
    while this process waits, so the two never compete for the cores.
    `spec`: workload, batch, input, hidden, layers, dtype (a name), seed, threads (and
    optionally bidirectional, packed).

    Example:
        >>> with CpuMemoryProbe(dict(workload="layer", batch=2, input=3, hidden=4, layers=1,
        ...                          dtype="float32", seed=0, threads=1)) as probe:
        ...     peak = probe.measure("torch", "infer", 5)
    """

    def __init__(self, spec: dict):
        self.spec = spec
        self._proc: Optional[subprocess.Popen] = None
        self._dead = not sys.platform.startswith("linux")

    def measure(self, backend: str, mode: str, seq_len: int) -> Optional[int]:
        """Peak growth in bytes of one call, or None when it cannot be measured here."""
        if self._dead:
            return None
        try:
            if self._proc is None:
                env = dict(os.environ)
                env["GLIBC_TUNABLES"] = "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0"
                # Its own session: a Ctrl-C meant for the profile does not reach it; close() ends it.
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", "from fastlstm.profile.memory import _memory_child; _memory_child()"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                    start_new_session=True,
                )
                self._proc.stdin.write(json.dumps(self.spec) + "\n")
            self._proc.stdin.write(json.dumps([backend, mode, seq_len]) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
            return json.loads(line)["peak_mem_bytes"]
        except (OSError, ValueError, KeyError):  # the child died or said something else: no figure
            self._dead = True
            return None

    def close(self) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.kill()
            self._proc.wait()
            self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> "CpuMemoryProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
