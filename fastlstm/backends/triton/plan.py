"""The Triton backend's launch plan (`launch_plan` -> `LaunchPlan`, `plans_for`):
how each kernel runs a layer on a device, pure functions of the shapes and
the device's limits; the products' precision; and the compile-time
constants a plan turns into (`_chunks`, `_even`, `_step_constexprs`).
"""
import dataclasses
import functools
import os
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------
# Launch plan
# ----------------------------------------------------------------------------

# Fewest hidden units a program owns: a tensor-core product is 8 columns wide.
_MIN_UNITS = 8
# Shared memory kept free beside the resident weights: the streamed operand's
# chunk, layout conversions of the pointwise tiles, the barrier's scratch.
_SMEM_SLACK = 16 * 1024
# Warps and register caps. With resident weights ptxas keeps as much of the
# slice in registers as the cap allows, and near a cap it spills a few bytes
# of loop-invariant values in some configurations, differently for each cap.
# These are the values under which every configuration of the ahead-of-time
# check (tests/test_triton_aot.py: sm_90 and sm_80, triton 3.9) compiles
# without spills. 8 warps x 255 registers still fit one program per SM.
_NUM_WARPS = 8
_MAXNREG_RESIDENT = 192
_MAXNREG_STREAMED = 255
# A streamed weight chunk (block_k x 4 block_h) lives in registers each step:
# block_k is bounded so that it holds at most this many elements.
_STREAMED_CHUNK = 4096
# The step kernels' two step bodies (`LaunchPlan.step`): "chunked", today's
# (each K chunk of h[t-1] loaded, then multiplied), and "wave" (the whole read
# issued before the first product; the barrier split around the next step's
# input loads). The environment variable chooses for every layer, so that one
# GPU run can measure both on the same shapes; the default stays "chunked"
# until a GPU measurement says otherwise.
_STEPS = ("chunked", "wave")
_STEP_ENV = "FASTLSTM_TRITON_STEP"
# Likewise the fewest hidden units a program owns (a power of two; unset: the
# plan's own choice, the fewest that need no more programs than SMs). More
# units a program means fewer programs, each reading all of h[t-1] (dg[t+1]):
# less L2 traffic a step, more math a program. For a GPU run to tune.
_UNITS_ENV = "FASTLSTM_TRITON_UNITS"
# The wave step keeps the loaded chunks of h[t-1] (dg[t+1] in the backward) of
# one batch tile in registers until their products: at most this many bytes
# of them are in flight at once (96 registers a thread at 8 warps). fp16,
# B=16: one wave up to R = 3072, so the forward's whole read and the
# backward's (4H = 3072 at H = 768). The loaded chunks also pass through
# shared memory on their way to the tensor cores (each chunk its own buffer
# while in flight), so the wave is bounded by the room the resident weights
# leave as well. The wave step runs under the highest register cap: at 192
# ptxas holds back the last chunks of the backward's read until the first
# ones land (two round trips; tests/aot.py's `step_critical_path` sees it).
_WAVE_BYTES = 96 * 1024
_MAXNREG_WAVE = 255


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """How one kernel (the forward or the backward) runs one layer.

    persistent   one launch for all steps, programs meeting at a grid barrier
                 (else one launch per step and phase).
    grid         programs: one per block of `block_h` hidden units (a
                 persistent grid is never larger than the SM count).
    proj_grid    programs of a per-step projection (or backward recurrent)
                 phase, one per block of `block_r` units of h; 0 without one.
    block_b      batch rows per tile; the batch is looped over in a step.
    block_h      hidden units (of all four gates) per program.
    block_r      units of the projected h per program (= block_h without).
    block_k      chunk of the inner dimension of every product.
    num_warps, num_stages, maxnreg   Triton's launch options.
    w_resident   the weights stay on chip for the launch (else each step
                 streams them from L2).
    smem_bytes   shared memory the resident weights take per program.
    step         the step body: "chunked" (each K chunk of the streamed
                 operand loaded, then multiplied) or "wave" (the loads issued
                 ahead of the products, `wave_k` chunks in flight; resident
                 weights only). See `fastlstm.kernels`.
    wave_k       K chunks of the streamed operand in flight in the wave step
                 (at least the product's chunk count: one wave); 0 if chunked.
    """

    kernel: str
    persistent: bool
    grid: Tuple[int]
    proj_grid: int
    block_b: int
    block_h: int
    block_r: int
    block_k: int
    num_warps: int
    num_stages: int
    maxnreg: Optional[int]
    w_resident: bool
    smem_bytes: int
    step: str = "chunked"
    wave_k: int = 0

    def __str__(self) -> str:
        mode = "persistent" if self.persistent else "per-step"
        where = f"W on chip {self.smem_bytes // 1024} KiB" if self.w_resident else "W streamed"
        proj = f", {self.proj_grid} x {self.block_r} h units" if self.proj_grid else ""
        wave = f", wave step ({self.wave_k} chunks in flight)" if self.step == "wave" else ""
        return (f"{self.kernel} {mode}: {self.grid[0]} programs x {self.block_h} units{proj}, {where}, "
                f"BLOCK_B {self.block_b}, BLOCK_K {self.block_k}, {self.num_warps} warps{wave}")


def launch_plan(batch: int, hidden: int, proj: int, dtype: torch.dtype, sm_count: int, smem_per_block: int,
                training: bool, kernel: str = "forward", cooperative: bool = True,
                exact_fp32: bool = False, step: str = "chunked", units: int = 0) -> LaunchPlan:
    """The launch plan of one layer's forward or backward kernel (pure: no device access).

    Args:
        batch, hidden, proj: B, H and proj_size (0 for none).
        dtype: float32, float16 or bfloat16.
        sm_count: streaming multiprocessors (programs that can be resident at once).
        smem_per_block: shared memory one program may use, in bytes.
        training: a backward will follow (the forward saves gates and cells).
        kernel: "forward" or "backward".
        cooperative: the grid can be launched co-resident (a cooperative
            launch). Without it a persistent launch is planned only for a
            single program.
        exact_fp32: float32 products in full precision (TF32 off). They run
            on FMA units, whose operands Triton keeps in registers, so the
            weights cannot stay on chip: they are streamed.
        step: "chunked" (today's step body) or "wave" (see `LaunchPlan`). The
            wave step needs the weights on chip: where they are streamed the
            plan keeps "chunked".
        units: the fewest hidden units a program owns, rounded up to a power
            of two (0: the plan's choice below).

    The grid has one program per `block_h` hidden units, with `block_h` the
    smallest power of two (at least 8) that needs no more programs than SMs,
    so a persistent grid is always co-resident at one program per SM. Each
    program's weight slice stays on chip when it fits in shared memory beside
    `_SMEM_SLACK`; otherwise it is streamed from L2 every step. The block
    sizes and launch options are the ones that compile without register
    spills (tests/test_triton_aot.py): batch tiles of at most 32 rows, 8 warps,
    and the register caps `_MAXNREG_*` (a persistent grid runs one program per
    SM anyway).

    Example:
        >>> p = launch_plan(16, 1024, 0, torch.bfloat16, 132, 227 * 1024, training=True)
        >>> p.persistent, p.grid, p.block_h, p.w_resident
        (True, (128,), 8, True)
    """
    if kernel not in ("forward", "backward"):
        raise ValueError(f"launch_plan: kernel must be 'forward' or 'backward', got {kernel!r}")
    if dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"launch_plan: dtype must be float32, float16 or bfloat16, got {dtype}")
    if step not in _STEPS:
        raise ValueError(f"launch_plan: step must be 'chunked' or 'wave', got {step!r}")
    if units < 0:
        raise ValueError(f"launch_plan: units must be >= 0 (0: the plan's choice), got {units}")
    if min(batch, hidden, sm_count) < 1 or proj < 0:
        raise ValueError(f"launch_plan: need batch, hidden, sm_count >= 1 and proj >= 0, got "
                         f"batch={batch}, hidden={hidden}, proj={proj}, sm_count={sm_count}")
    H, R = hidden, proj or hidden
    elt = torch.empty(0, dtype=dtype).element_size()
    exact = exact_fp32 and dtype == torch.float32
    block_b = min(32, max(16, _next_pow2(batch)))
    block_h = max(_MIN_UNITS, _next_pow2(_cdiv(H, sm_count)), _next_pow2(units) if units else 0)
    programs = _cdiv(H, block_h)
    block_r, proj_grid = block_h, 0
    if proj:
        block_r = max(_MIN_UNITS, _next_pow2(_cdiv(R, programs)))
        proj_grid = _cdiv(R, block_r)

    block_k = min(128, max(16, _next_pow2(R)))

    def padded(n: int) -> int:
        return _cdiv(n, block_k) * block_k

    if kernel == "forward":
        # 4 gates x block_h columns of W_hh^T (R rows); block_r columns of W_hr^T (H rows).
        w_elems = 4 * block_h * padded(R) + (block_r * padded(H) if proj else 0)
    elif proj:
        # block_r columns of W_hh (4H rows); block_h columns of W_hr (R rows).
        w_elems = block_r * padded(4 * H) + block_h * padded(R)
    else:
        w_elems = block_h * padded(4 * H)
    smem = w_elems * elt
    resident = not exact and smem + _SMEM_SLACK <= smem_per_block
    if not resident:
        # FMA products (exact float32) hold both operands in registers: smaller chunks.
        chunk = _STREAMED_CHUNK // 4 if exact else _STREAMED_CHUNK
        block_k = min(block_k, max(16, chunk // (4 * max(block_h, block_r))))
    persistent = programs <= sm_count and (cooperative or programs == 1)
    step = step if resident else "chunked"
    wave_bytes = min(_WAVE_BYTES, smem_per_block - smem - _SMEM_SLACK)
    if step == "wave" and (kernel == "backward" or block_b * padded(R) * elt > wave_bytes):
        # 16-row tiles where a 32-row tile's read would not be one wave. And
        # always in the backward: there the pointwise inputs (saved gates, c,
        # dc) of a 32-row tile go through layout conversions that serialise
        # their loads (seven round trips, in the SASS), while a 16-row tile
        # loads them in the same wave as dg[t+1].
        block_b = 16
    wave_k = max(1, wave_bytes // (block_b * block_k * elt)) if step == "wave" else 0
    maxnreg = _MAXNREG_WAVE if step == "wave" else _MAXNREG_RESIDENT if resident else _MAXNREG_STREAMED
    return LaunchPlan(
        kernel=kernel, persistent=persistent, grid=(programs,), proj_grid=proj_grid,
        block_b=block_b, block_h=block_h, block_r=block_r, block_k=block_k, num_warps=_NUM_WARPS,
        # Resident weights leave no room for multi-buffered loads; streamed
        # chunks are worth prefetching.
        num_stages=1 if resident else 2, maxnreg=maxnreg,
        w_resident=resident, smem_bytes=smem if resident else 0, step=step, wave_k=wave_k,
    )


@functools.lru_cache(maxsize=None)
def _device_limits(device: torch.device) -> Tuple[int, int, bool]:
    """(sm_count, smem_per_block, cooperative) for plans on `device`.

    Under the interpreter (which runs a grid's programs one after another,
    whatever the tensors' device): one SM, so one program runs every step in a
    single persistent launch, and an H100's shared memory, so the
    resident-weight path is the one exercised. Read at the first forward on
    a device, never at import.
    """
    if device.type != "cuda" or _interpreting():
        return 1, 227 * 1024, False
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024
    return props.multi_processor_count, smem, _triton_has_cooperative_launch()


def _triton_has_cooperative_launch() -> bool:
    import triton

    major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    return (major, minor) >= (3, 3)


def plans_for(x: Tensor, hidden: int, proj: int, training: bool) -> Tuple[LaunchPlan, Optional[LaunchPlan]]:
    """The (forward, backward) plans this backend uses for a layer with input x (T, B, I);
    the backward plan is None unless training."""
    sm_count, smem, cooperative = _device_limits(x.device)
    args = (x.shape[1], hidden, proj, x.dtype, sm_count, smem, training)
    exact = _dot_precision(x.dtype) == "ieee"
    step, units = _step_choice(), _units_choice()
    fwd = _plan(*args, "forward", cooperative, exact, step, units)
    return fwd, _plan(*args, "backward", cooperative, exact, step, units) if training else None


def _step_choice() -> str:
    """The step body asked for by FASTLSTM_TRITON_STEP ("chunked" unless set),
    read at each call so that a benchmark can switch it between runs."""
    step = os.environ.get(_STEP_ENV, "chunked") or "chunked"
    if step not in _STEPS:
        raise ValueError(f"{_STEP_ENV} must be 'chunked' or 'wave', got {step!r}")
    return step


def _units_choice() -> int:
    """The fewest units a program owns asked for by FASTLSTM_TRITON_UNITS (0 unless set)."""
    units = os.environ.get(_UNITS_ENV, "") or "0"
    if not units.isdigit():
        raise ValueError(f"{_UNITS_ENV} must be a whole number of hidden units, got {units!r}")
    return int(units)


@functools.lru_cache(maxsize=None)
def _plan(*args) -> LaunchPlan:
    return launch_plan(*args)


# ----------------------------------------------------------------------------
# Precision
# ----------------------------------------------------------------------------


def _dot_precision(dtype: torch.dtype) -> str:
    """float32 recurrent products follow nn.LSTM on CUDA: cuDNN computes them in
    TF32 unless `torch.backends.cudnn.allow_tf32` (or, in newer torch,
    `torch.backends.cudnn.rnn.fp32_precision`) says otherwise. 16-bit dots
    ignore the setting."""
    if dtype != torch.float32:
        return "tf32"
    cudnn = torch.backends.cudnn
    rnn = _cudnn_rnn()
    # Newer torch: the rnn setting reads back the effective value (it inherits
    # from cudnn's and the global one); reading the legacy allow_tf32 after a
    # user set a new-style value raises there.
    precision = getattr(rnn, "fp32_precision", None)
    if precision is not None:
        return "tf32" if precision == "tf32" else "ieee"
    return "tf32" if cudnn.allow_tf32 else "ieee"


@functools.lru_cache(maxsize=None)
def _cudnn_rnn():
    """`torch.backends.cudnn.rnn` (newer torch), or None: looked up once, as the
    lookup costs more host time than reading the setting."""
    return getattr(torch.backends.cudnn, "rnn", None)


def _upcast_dot(t: Tensor) -> bool:
    # CPU tensors only run under the interpreter, whose bf16 tl.dot is wrong
    # (it multiplies raw bit patterns); see the note in fastlstm.kernels.tiles.
    return t.device.type == "cpu" and t.dtype == torch.bfloat16


# ----------------------------------------------------------------------------
# A plan's compile-time constants
# ----------------------------------------------------------------------------


def _even(plan: LaunchPlan, *dims: int) -> bool:
    """Whether the plan's K chunk divides every inner dimension of a kernel's
    products (then the kernel drops the column masks of its operand tiles)."""
    return all(k % plan.block_k == 0 for k in dims)


def _chunks(k: int, plan: LaunchPlan) -> int:
    """Resident chunks of an inner dimension k (a compile-time constant). Streamed
    weights are read in a loop instead, so the count is not needed there; 1 keeps
    one compiled kernel for every size."""
    return _cdiv(k, plan.block_k) if plan.w_resident else 1


def _step_constexprs(plan: LaunchPlan, batch: int) -> Dict[str, object]:
    """The step body's compile-time switches (both kernels take the same three)."""
    wave = plan.step == "wave"
    return dict(STEP_WAVE=wave, WAVE_K=plan.wave_k if wave else 1, ONE_TILE=wave and batch <= plan.block_b)
