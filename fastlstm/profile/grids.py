"""The grids `fastlstm profile --grid` sweeps, and the GPU's default grid.

The GPU grid (`--grid gpu`, and the default of `fastlstm profile` on CUDA)
covers the shapes that decide the Triton backend's design against cuDNN:

- the main sweep: B in 1, 16, 64, 256; H (= I) in 256, 768, 1024; T in 1, 16,
  64, 256, 1024; float16, bfloat16 and float32; infer and train; fastlstm's
  Triton backend against nn.LSTM (cuDNN), 3 interleaved repeats;
- and, first (they are few and short, and FlashRNN's comparison is measured
  nowhere else), `GPU_EXTRAS`: every backend that can run (FlashRNN aside), in the three
  dtypes, at one small shape; a 2-layer bidirectional nn.LSTM; packed input; and FlashRNN's
  headline shape (B=16, H=768, T=1024, bf16 and fp16), FlashRNN beside
  Triton and cuDNN (skipped with a reason where the `flashrnn` package does
  not import).

How long it takes on an H100-class GPU, compile included (an estimate from the
H200's figures in the design notes, not a measurement): see `gpu_time_estimate`.
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

GPU_AXES: Dict[str, list] = {
    "batch": [1, 16, 64, 256],
    "hidden": [256, 768, 1024],
    "dtype": ["float16", "bfloat16", "float32"],
    "seq_lens": [1, 16, 64, 256, 1024],
}
GPU_REPEATS = 3
# The main sweep times what decides the design: Triton against cuDNN. The loop
# baselines take ~0.1-0.3 ms a step on a GPU (one launch per op); they get their
# own small sweep in GPU_EXTRAS.
GPU_BACKENDS = ("triton", "torch")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One more sweep of a grid: a shape, its T and backends (None: the device's
    defaults), under a tag that names its plot (profile-<tag>-<dtype>.png)."""

    tag: str
    batch: int
    hidden: int
    dtype: str
    seq_lens: Tuple[int, ...]
    backends: Optional[Tuple[str, ...]] = None
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False


# fastlstm's backends and the baselines other than FlashRNN, which has its own
# sweep at its headline shape (in the dtypes its fused kernel is made for).
ALL_BACKENDS = ("jit", "triton", "tutorial", "scripted", "torch")

GPU_EXTRAS: List[Sweep] = (
    [Sweep("all-backends", 16, 256, dtype, (64,), ALL_BACKENDS) for dtype in GPU_AXES["dtype"]]
    + [Sweep("bidir-2layers", 16, 512, dtype, (256,), GPU_BACKENDS, layers=2, bidirectional=True)
       for dtype in GPU_AXES["dtype"]]
    + [Sweep("packed", 32, 512, dtype, (256,), GPU_BACKENDS, packed=True) for dtype in GPU_AXES["dtype"]]
    + [Sweep("flashrnn", 16, 768, dtype, (1024,), ("flashrnn", "triton", "torch")) for dtype in ("bfloat16", "float16")]
)


def _shrunk(sweep: Sweep) -> Sweep:
    """An extra sweep at a tiny shape (two programs of the Triton backend)."""
    return dataclasses.replace(sweep, batch=3, hidden=16, seq_lens=(3,))


# `--grid gpu-dry`: the GPU grid's structure at tiny shapes, for a rehearsal of
# `make gpu-check` on a simulated GPU (`make gpu-check-dry`): every part of the
# sweep runs (the extra sweeps included; FlashRNN's rows are skipped off CUDA,
# with the reason), the Triton backend on two programs of the simulated grid.
GPU_DRY_AXES: Dict[str, list] = {"batch": [3], "hidden": [16], "dtype": list(GPU_AXES["dtype"]), "seq_lens": [1, 3]}
GPU_DRY_BACKENDS = GPU_BACKENDS
GPU_DRY_EXTRAS: List[Sweep] = [_shrunk(s) for s in GPU_EXTRAS if s.dtype == "bfloat16"]

# Per-step figures of the H200 run (GPU_DESIGN.md, µs a step, forward; train is
# forward + backward) and the fixed cost of a call, for `gpu_time_estimate`.
_STEP_US = {"small": (5.0, 15.0), "mid": (13.0, 45.0), "large": (49.0, 160.0)}  # B<=16, B=64, B=256
_CALL_US = (560.0, 1950.0)
_CUDNN_STEP_US = (19.0, 60.0)
_SAMPLE_S = 0.02  # a timing sample lasts at least this long (timing._MIN_SAMPLE_S)
# Distinct Triton kernel variants per warm-up job: about 180 for the GPU grid's
# 83 jobs, counted from the launch plans of its shapes (constexprs, and sizes of
# 1 or multiples of 16, which Triton specialises on).
_VARIANTS_PER_JOB = 2.2


def gpu_time_estimate(axes: Dict[str, list] = GPU_AXES, repeats: int = GPU_REPEATS,
                      extras: List[Sweep] = GPU_EXTRAS, compile_workers: int = 14) -> Dict[str, float]:
    """Seconds the GPU grid should take on an H100-class GPU, by part: an
    estimate from the H200's per-step figures, not a measurement.

    Per (shape, mode, T) group and backend: one checked call, about three
    warm-up calls and `repeats` samples of at least 20 ms, plus a peak-memory
    call; the float64 reference once per group (cuDNN in float64, taken as 4x
    the bf16 standard path's step). Triton's kernels compile first, in
    `compile_workers` processes (`warm.py`; `_VARIANTS_PER_JOB` kernel variants
    per warm-up job, 3 s each, plus ~10 s of process start-up); the sweep then
    only loads them.

    Example:
        >>> est = gpu_time_estimate()
        >>> est["total_s"] < 240
        True
    """
    def per_call(backend: str, batch: int, T: int, train: bool) -> float:
        k = 1 if train else 0
        if backend == "torch":
            return (110e-6 if not train else 820e-6) + T * _CUDNN_STEP_US[k] * 1e-6
        size = "small" if batch <= 16 else "mid" if batch <= 64 else "large"
        return _CALL_US[k] * 1e-6 + T * _STEP_US[size][k] * 1e-6

    def group(backends, batch: int, T: int, train: bool, layers: int = 1) -> float:
        s = 0.0
        for b in backends:
            call = per_call(b, batch, T, train) * layers
            s += 5 * call + repeats * max(_SAMPLE_S, call)
        ref = 4 * per_call("torch", batch, T, train) * layers
        return s + 2 * ref + 0.01  # reference, its inputs, Python

    main = sum(group(GPU_BACKENDS, b, T, train)
               for b in axes["batch"] for _ in axes["hidden"] for _ in axes["dtype"]
               for T in axes["seq_lens"] for train in (False, True))
    extra = sum(group(s.backends or ALL_BACKENDS, s.batch, T, train, s.layers * (2 if s.bidirectional else 1))
                for s in extras for T in s.seq_lens for train in (False, True))
    # The slow loop baselines of the all-backends sweep: ~0.2 ms a step (15 launches).
    loops = sum(2 * 5 * 64 * 2e-4 * (3 if train else 1) for s in extras if s.tag == "all-backends"
                for train in (False, True))
    load = 30.0  # loading ~170 compiled kernels from the cache, cuDNN and cuBLAS set-up, FlashRNN's extension
    from .warm import warm_jobs

    jobs = warm_jobs(axes["dtype"], axes["hidden"], axes["batch"], axes["seq_lens"], GPU_BACKENDS, extras)
    compile_s = _VARIANTS_PER_JOB * len(jobs) * 3.0 / compile_workers + 10.0
    return {"compile_s": compile_s, "main_s": main, "extras_s": extra + loops, "load_s": load,
            "total_s": compile_s + main + extra + loops + load}
