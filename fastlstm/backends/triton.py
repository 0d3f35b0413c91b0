"""The Triton backend: one LSTM layer, one direction, in one persistent launch.

Pieces, by name:
    kernels          `fastlstm.kernels` (only `@triton.jit` code):
                     `lstm_fwd.lstm_fwd_kernel`, `lstm_bwd.lstm_bwd_kernel`,
                     the tiles and products they share (`tiles`) and the
                     grid barrier (`barrier`). Looked up at each call
                     through their modules, so that tests can swap them.
    launch plan      `launch_plan` -> `LaunchPlan`: persistent or per step,
                     the grid, the block sizes, where the weights live.
    launchers        `_launch` (one kernel over all steps, persistent or step
                     by step), `_lstm_fwd`, `_lstm_bwd` (buffers, the host
                     GEMMs and the launches).
    Function         `LSTMTritonFunction`.
    public function  `lstm_layer_triton` (the layer primitive, see
                     `fastlstm.backends`).

Forward: x @ W_ih^T + b_ih + b_hh for all steps in one GEMM, then one
persistent launch for the whole recurrence: each program holds its hidden
units' slice of W_hh (and of W_hr) on chip for all T steps, and the programs
meet at a grid barrier once per step (twice with a projection). Backward: one
persistent launch for the recurrence dh = dg[t+1] @ W_hh (+ W_hr) and the
pointwise cell backward; every weight gradient, the bias gradients, dx and
dh0 are then GEMMs/reductions over all steps at once.

Where a persistent launch cannot run (the interpreter with more than one
program, or a triton without cooperative launches) the same kernels run one
launch per step (per phase), through the compiled kernel directly rather
than Triton's dispatcher, with no per-step tensor views.

Storage: h in the input dtype (it only feeds storage-dtype dots), c, gates and
all accumulation in float32. float64 is not supported: use backend 'jit'.
"""
import contextlib
import dataclasses
import functools
import inspect
import os
import threading
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..kernels import barrier as _barrier
from ..kernels import lstm_bwd as _bwd
from ..kernels import lstm_fwd as _fwd
from ._common import (differentiable_backward, has_no_data, host_to_device, needs_autograd, reference_grads, sequence_lengths,
                      transforms_active)
from .reference import lstm_layer_reference

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Barrier polls before a persistent launch gives up (seconds on a GPU; a step
# takes microseconds). Tests lower it to provoke the timeout.
_MAX_SPIN = 1 << 24
# The barrier counter is an int32 that only grows within a launch.
_MAX_ARRIVALS = 2**31 - 1


def _empty(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer a kernel writes is allocated here (tests fill it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _device_guard(t: Tensor):
    """Triton launches on the current CUDA device; make it the tensors' one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


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
# Launching
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _param_names(kernel) -> Tuple[str, ...]:
    return tuple(inspect.signature(kernel.fn).parameters)


class _StepLauncher:
    """Launches one kernel configuration step after step, changing only t0 and t1.

    With a CUDA `stream`, the kernel is compiled (or found in Triton's cache)
    once, then launched through the compiled kernel itself: no argument
    binding, specialisation or cache lookup per step. Without one (the
    interpreter) it goes through the usual `kernel[grid](...)`.
    """

    def __init__(self, kernel, grid: Tuple[int], params: Dict[str, object], options: Dict[str, object],
                 stream: Optional[int] = None):
        # A compiled kernel reads all three grid dimensions (the dispatcher pads them).
        grid = tuple(grid) + (1,) * (3 - len(grid))
        self.kernel, self.grid, self.options = kernel, grid, options
        self.names = _param_names(kernel)
        self.args: List[object] = [params[n] for n in self.names]
        self.i_t0, self.i_t1 = self.names.index("t0"), self.names.index("t1")
        self.run = None
        if stream is not None:
            compiled = kernel.warmup(*self.args, grid=grid, **options)
            self.run = functools.partial(compiled[grid], stream=stream)

    def __call__(self, t0: int, t1: int) -> None:
        self.args[self.i_t0], self.args[self.i_t1] = t0, t1
        if self.run is not None:
            self.run(*self.args)
        else:
            self.kernel[self.grid](*self.args, **self.options)


def _launch(kernel, plan: LaunchPlan, params: Dict[str, object], constexprs: Dict[str, object],
            steps: int, phases: Tuple[Dict[str, bool], ...], reverse: bool, shape: tuple) -> None:
    """Run `kernel` over steps [0, steps) as the plan says.

    `phases` are the constexpr switches of each phase of a step (one phase, or
    two with a projection). Persistent: one cooperative launch runs every
    phase of every step (more, in time order, only where the barrier counter
    would overflow: about 2**31 / programs steps).
    Per step (and for a single step): one launch per phase and step, forward
    or, with `reverse`, backward in time.
    """
    _run(_Prepared(kernel, plan, constexprs, steps, phases, reverse, params["p_ws"].device), params, shape)


class _Prepared:
    """What `_launch` derives from the plan and the call's shape alone: the
    launches' keyword arguments apart from the tensors and sizes, so that a
    layer call of a shape seen before rebuilds none of it (see `_lstm_fwd`)."""

    def __init__(self, kernel, plan: LaunchPlan, constexprs: Dict[str, object], steps: int,
                 phases: Tuple[Dict[str, bool], ...], reverse: bool, device: torch.device):
        self.kernel, self.plan, self.steps, self.reverse = kernel, plan, steps, reverse
        options = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
        if plan.maxnreg is not None and not _interpreting() and torch.version.hip is None:
            options["maxnreg"] = plan.maxnreg  # an NVIDIA option
        self.options = options
        self.constexprs = dict(constexprs, BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_R=plan.block_r,
                               BLOCK_K=plan.block_k, W_RESIDENT=plan.w_resident)
        # A single step needs no barrier: it is launched step-wise (an LSTMCell,
        # or a sequence fed one step at a time).
        self.persistent = plan.persistent and steps > 1
        self.device = device
        self.phases = phases
        if self.persistent:
            switches = {k: any(p[k] for p in phases) for k in phases[0]}
            if device.type == "cuda" and not _interpreting():
                options = dict(options, launch_cooperative_grid=True)
            per_launch = max(1, _MAX_ARRIVALS // (plan.grid[0] * len(phases)))
            starts = list(range(0, steps, per_launch))
            # Each launch leaves the workspace's counter at zero for the next
            # one (kernels.barrier._end_launch): nothing to reset between them.
            self.launches = [(plan.grid, dict(self.constexprs, **switches, t0=t0, t1=min(steps, t0 + per_launch),
                                              max_spin=_MAX_SPIN, PERSISTENT=True, **options))
                             for t0 in (reversed(starts) if reverse else starts)]
        else:
            self.grids = [plan.grid if p.get("CELL") else (plan.proj_grid,) for p in phases]
            # One launch per phase: straight through Triton's dispatcher, which
            # costs less than compiling a _StepLauncher for a single use.
            self.launches = [(g, dict(self.constexprs, **p, t0=0, t1=1, max_spin=_MAX_SPIN, PERSISTENT=False,
                                      **options)) for g, p in zip(self.grids, phases)]


def _run(prep: _Prepared, params: Dict[str, object], shape: tuple) -> None:
    """Launch what `prep` describes with the call's tensors and sizes `params`."""
    kernel = prep.kernel
    if prep.persistent or prep.steps == 1:
        for grid, kwargs in prep.launches:
            kernel[grid](**params, **kwargs)
        if prep.persistent:
            _workspace_of(params["p_ws"]).launched((shape, prep.plan))
        return
    device, steps = prep.device, prep.steps
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" and not _interpreting() else None
    launchers = [_StepLauncher(kernel, g, dict(params, **prep.constexprs, **p, t0=0, t1=1, max_spin=_MAX_SPIN,
                                               PERSISTENT=False), prep.options, stream)
                 for g, p in zip(prep.grids, prep.phases)]
    for t in (range(steps - 1, -1, -1) if prep.reverse else range(steps)):
        for launcher in launchers:
            launcher(t, t + 1)


_TIMEOUT_MESSAGE = ("fastlstm: a barrier of the persistent Triton LSTM kernel timed out ({launches}); "
                    "the programs of the grid were not all resident at once. That launch wrote NaN into its "
                    "outputs (they are not valid); this error is raised at the next layer call on {device} "
                    "after it ended. Please report this with the shape and GPU")


class _Workspace:
    """The persistent kernels' int32 workspace on one (device, stream): the
    barrier counter, the exit count, the launch's error flag and the sticky
    count (`kernels.barrier._WS_*`), zeroed once here and left at zero by every
    launch except the sticky count, which a launch whose barrier timed out
    increments.

    The host reads the sticky count without waiting for the GPU and never
    writes it: on the CPU (the interpreter) straight from memory; on CUDA
    through a non-blocking copy into pinned memory, made on the workspace's own
    stream, and an event, looked at (never waited for) at the next layer call,
    which raises if the count grew past what the host has already reported. At
    most one copy is in flight per workspace; a call that finds it still
    running leaves it be, so a timeout is reported at the first call after the
    copy that follows it ends.

    While a CUDA graph is being captured, every persistent launch gets a
    workspace of its own (`captured`), zeroed by a memset node of that graph,
    so that graphs never share a barrier counter with each other or with eager
    calls, and nothing is copied, queried or allocated in pinned memory. Eager
    calls after a replay check those workspaces too; as a replay zeroes its
    workspaces when it starts, a timeout in a replay is reported only if no
    other replay of the graph runs before that check (its outputs are NaN
    either way).

    Buffers are made outside inference mode, so that a first call under
    `torch.inference_mode()` leaves buffers that later calls may update.
    """

    def __init__(self, device: torch.device, captured: bool = False):
        self.device = device
        self.stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        with torch.inference_mode(False):
            self.buf = torch.zeros(4, dtype=torch.int32, device=device)
        self.on_cpu = device.type != "cuda"
        # The sticky count as the host sees it: on the CPU the buffer itself;
        # on CUDA a pinned copy, made at the first copy.
        self.host = None
        self.flag = self.buf.numpy()[_barrier._WS_STICKY.value:] if self.on_cpu else None
        self.seen = 0  # timeouts already reported
        self.event = None  # the CUDA event after the copy in flight
        self.covered: List[tuple] = []  # (shape, plan) of the launches the copy in flight (or the CPU flag) covers
        self.pending: List[tuple] = []  # those since that copy was made
        self.captured = captured  # made for a CUDA graph: replays may set the count at any time

    def launched(self, what: tuple) -> None:
        """Note a persistent launch just enqueued (`what`: its `_shape` and plan)."""
        _UNCHECKED.add(self)
        if self.on_cpu:
            self.covered.append(what)
            return
        if what not in self.pending and len(self.pending) < 4:
            self.pending.append(what)
        self._copy()

    def _copy(self) -> None:
        if self.event is not None or torch.cuda.is_current_stream_capturing():
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream), torch.inference_mode(False):
            if self.host is None:
                self.host = torch.zeros(1, dtype=torch.int32, pin_memory=True)
                self.flag = self.host.numpy()
            self.host.copy_(self.buf[_barrier._WS_STICKY.value:], non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(self.stream)
        self.covered, self.pending = self.pending, []

    def check(self) -> None:
        """Raise if a launch covered by a finished read timed out; never waits
        for the device."""
        if self.event is not None:
            if not self.event.query():
                return
            self.event = None
        count = int(self.flag[0]) if self.flag is not None else 0
        covered, self.covered = self.covered, []
        if count != self.seen:  # grown; or, for a graph's workspace, zeroed and grown again by replays
            self.seen = count
            if count:
                self._raise(covered)
        if not self.on_cpu and (self.pending or self.captured):
            self._copy()
        if self.event is None and not self.pending and not self.captured:
            _UNCHECKED.discard(self)  # nothing left to look at until its next launch

    def check_now(self) -> None:
        """`check`, reading the device's count itself (waits for it)."""
        count = int(self.buf[_barrier._WS_STICKY.value])
        if count != self.seen:
            self.seen = count
            if count:
                covered, self.covered = self.covered + self.pending, []
                self._raise(covered)

    def _raise(self, covered: List[tuple]) -> None:
        launches = "; ".join(_describe(*what) for what in covered) or "a launch on this device"
        if self.captured:
            launches += "; or a CUDA graph's replay"
        raise RuntimeError(_TIMEOUT_MESSAGE.format(launches=launches, device=self.device))


# (device, stream) -> its _Workspace; buffer pointer -> the same _Workspace.
_WORKSPACES: Dict[Tuple[torch.device, int], _Workspace] = {}
_BY_POINTER: Dict[int, _Workspace] = {}
_WORKSPACE_LOCK = threading.Lock()
# Workspaces with a launch not yet known to be clean (most calls find none).
_UNCHECKED: set = set()
# Workspaces and zeros made while capturing CUDA graphs: the graphs use them at
# every replay, so they live as long as the process.
_CAPTURED: List[object] = []


def _workspace(device: torch.device) -> _Workspace:
    """The workspace of `device`'s current stream (made on first use), after
    raising any barrier timeout reported since the last call on `device`.

    One per stream, because a launch resets its counter only at its end: two
    persistent launches must never share one at the same time. While a CUDA
    graph is being captured, a new one for each launch (see `_Workspace`).
    """
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        ws = _Workspace(device, captured=True)
        with _WORKSPACE_LOCK:
            _BY_POINTER[ws.buf.data_ptr()] = ws
            _CAPTURED.append(ws)
        return ws
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    ws = _WORKSPACES.get(key)
    if ws is None:
        with _WORKSPACE_LOCK:
            ws = _WORKSPACES.get(key)
            if ws is None:
                ws = _Workspace(device)
                _BY_POINTER[ws.buf.data_ptr()] = ws
                _WORKSPACES[key] = ws
    if _UNCHECKED:
        _check_barriers(device)
    return ws


def _workspace_of(buf: Tensor) -> _Workspace:
    return _BY_POINTER[buf.data_ptr()]


def _check_barriers(device: torch.device) -> None:
    """Raise the named RuntimeError if a persistent launch on `device` timed out
    at a barrier and this is the first call to see it (see `_Workspace`)."""
    for ws in list(_UNCHECKED):
        if ws.device == device:
            ws.check()


def raise_barrier_timeouts(device=None) -> None:
    """Wait for `device`'s (default: the current CUDA device's) work and raise the
    barrier-timeout RuntimeError if any persistent launch on it timed out.

    Layer calls already raise it, without waiting, at the first call after the
    broken launch has ended; this is for a program that wants to know now (at
    the cost of a synchronisation).
    """
    device = torch.device(device if device is not None else "cuda")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.synchronize(device)
    for ws in [ws for ws in list(_WORKSPACES.values()) + list(_CAPTURED) if isinstance(ws, _Workspace)]:
        if ws.device == device:
            ws.check_now()


def barrier_loop(programs: int, steps: int, device) -> Tensor:
    """Launch `programs` programs (cooperatively on a GPU) that meet the grid
    barrier `steps` times and do nothing else; the barrier microbenchmark.
    Returns the (2,) int32 [arrivals, error flag] buffer, without waiting."""
    sync = torch.zeros(2, dtype=torch.int32, device=device)
    options = {"launch_cooperative_grid": True} if sync.is_cuda and not _interpreting() else {}
    _barrier.barrier_loop_kernel[(programs,)](sync[0:1], sync[1:2], steps, _MAX_SPIN, num_warps=4, **options)
    return sync


# ----------------------------------------------------------------------------
# Whole-layer forward and backward
# ----------------------------------------------------------------------------


def _zero_strides(n: int) -> Tuple[int, ...]:
    return (0,) * n


# (device, stream, shape, dtype) -> zeros that no kernel writes (the backward's dg[T]).
_ZEROS: Dict[tuple, Tensor] = {}


def _zeros(device: torch.device, shape: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A cached tensor of zeros, made once per (device, stream, shape, dtype):
    read-only for the kernels, so one per shape serves every call. Per stream,
    as the caching allocator ties a block to the stream that made it. While a
    CUDA graph is being captured, a new one each time (zeroed by the graph
    itself at every replay, and never handed to calls outside that graph)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        z = torch.zeros(shape, dtype=dtype, device=device)
        _CAPTURED.append(z)
        return z
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream, shape, dtype)
    z = _ZEROS.get(key)
    if z is None:
        with torch.inference_mode(False):
            z = _ZEROS.setdefault(key, torch.zeros(shape, dtype=dtype, device=device))
    return z


def _shared_params(w_hh: Tensor, w_hr: Optional[Tensor], lens: Optional[Tensor], T: int, B: int) -> Dict[str, object]:
    """The arguments both kernels take alike: weights, row lengths, sizes and the
    workspace of this device and stream (barrier counter and error flags; see
    `_Workspace`, which also raises here a barrier timeout of an earlier call).
    Unused pointers point at a live tensor with zero strides; their constexpr
    flag is off."""
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    ws = _workspace(w_hh.device).buf
    wr = w_hr if w_hr is not None else w_hh
    return dict(
        p_w=w_hh, p_wr=wr, p_len=lens if lens is not None else ws, p_ws=ws,
        T=T, B=B, H=H, R=R, s_w_g=w_hh.stride(0), s_w_r=w_hh.stride(1),
        s_wr_r=wr.stride(0) if w_hr is not None else 0, s_wr_h=wr.stride(1) if w_hr is not None else 0,
    )


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


def _lstm_fwd(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
              w_hr: Optional[Tensor], lens: Optional[Tensor], save: bool, plan: LaunchPlan,
              precision: Optional[str] = None):
    """Returns out (T, B, R), hs, cs (T+1, B, H) float32, gates (T, B, 4H)
    float32 or None, hc (T, B, H) or None, h_n (B, R), c_n (B, H).

    hs (T, B, R) holds the states h_1..h_T: `out` itself in inference unless
    packed (a separate buffer when packed, as dead rows carry their state but
    output zeros, and in training, where the backward reads hs and the caller
    may edit out: the kernel copies it). The kernel writes c[0] from c0 and
    the final states; the host launches only the input GEMM and the kernel.
    """
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, dev = x.dtype, x.device
    x2 = x.reshape(T * B, I)
    xg = torch.addmm(bias, x2, w_ih.t()) if bias is not None else torch.mm(x2, w_ih.t())
    xg = xg.view(T, B, 4 * H)

    hs = _empty((T, B, R), dtype, dev)
    if h0.stride() != hs.stride()[1:]:
        h0 = h0.contiguous()  # the kernel reads it with the strides of one step of hs
    if save:
        cs = _empty((T + 1, B, H), torch.float32, dev)
    else:
        # With no backward to feed, one cell buffer updated in place is enough
        # (a zero time stride): each program reads and writes only its own
        # units of c. So inference keeps nothing per step beyond the output.
        cs = _empty((1, B, H), torch.float32, dev).expand(T + 1, B, H)
    gates = _empty((T, B, 4 * H), torch.float32, dev) if save else None
    hc = None
    if w_hr is not None:
        # Without a backward, hc[t] is consumed within step t: one buffer will do.
        hc = _empty((T, B, H), dtype, dev) if save else _empty((1, B, H), dtype, dev).expand(T, B, H)
    copy_out = save and lens is None
    out = _empty((T, B, R), dtype, dev) if lens is not None or copy_out else hs
    h_n, c_n = _empty((B, R), dtype, dev), _empty((B, H), dtype, dev)
    ws = _workspace(dev).buf
    precision = precision or _dot_precision(dtype)
    # Everything but the tensors is a function of this key (the buffers' strides
    # follow from their shapes): built once per shape, then reused.
    # The plan by identity (hashing a dataclass costs more than the rest of the
    # key); the cached entry keeps it alive and is checked to be the same one.
    key = (T, B, I, H, R, dtype, dev, save, lens is None, w_hr is None, id(plan), precision, c0.stride(),
           w_hh.stride(), None if w_hr is None else w_hr.stride(), _MAX_SPIN, _MAX_ARRIVALS, _interpreting())
    cached = _FWD_CACHE.get(key)
    if cached is None or cached[1].plan is not plan:
        sizes = dict(T=T, B=B, H=H, R=R, s_w_g=w_hh.stride(0), s_w_r=w_hh.stride(1),
                     s_wr_r=w_hr.stride(0) if w_hr is not None else 0, s_wr_h=w_hr.stride(1) if w_hr is not None else 0)
        sizes.update(zip(("s_xg_t", "s_xg_b", "s_xg_g"), xg.stride()))
        sizes.update(zip(("s_hs_t", "s_h_b", "s_h_r"), hs.stride()))
        sizes.update(zip(("s_c_t", "s_c_b", "s_c_h"), cs.stride()))
        sizes.update(zip(("s_c0_b", "s_c0_h"), c0.stride()))
        sizes.update(zip(("s_hn_b", "s_hn_r"), h_n.stride()))
        sizes.update(zip(("s_cn_b", "s_cn_h"), c_n.stride()))
        sizes.update(zip(("s_gt_t", "s_gt_b", "s_gt_g"), gates.stride() if gates is not None else _zero_strides(3)))
        sizes.update(zip(("s_hc_t", "s_hc_b", "s_hc_h"), hc.stride() if hc is not None else _zero_strides(3)))
        constexprs = dict(
            NUM_KR=_chunks(R, plan), NUM_KH=_chunks(H, plan), EVEN_K=_even(plan, R, H if w_hr is not None else R),
            HAS_PROJ=w_hr is not None, PACKED=lens is not None, SAVE_GATES=save, COPY_OUT=copy_out,
            DOT_PRECISION=precision, UPCAST_DOT=_upcast_dot(x), **_step_constexprs(plan, B),
        )
        phases = ({"CELL": True, "PROJECT": False},)
        if w_hr is not None:
            phases = ({"CELL": True, "PROJECT": False}, {"CELL": False, "PROJECT": True})
        if len(_FWD_CACHE) >= _CACHE_SIZE:
            _FWD_CACHE.clear()
        cached = _FWD_CACHE[key] = (sizes, _Prepared(_fwd.lstm_fwd_kernel, plan, constexprs, T, phases, False, dev),
                                    _shape(x, H, R, "forward"))
    sizes, prep, shape = cached
    if prep.kernel is not _fwd.lstm_fwd_kernel:  # the kernel was swapped (tests): prepare again
        prep = _Prepared(_fwd.lstm_fwd_kernel, plan, prep.constexprs, T, prep.phases, False, dev)
    params = dict(
        sizes, p_xg=xg, p_w=w_hh, p_wr=w_hr if w_hr is not None else w_hh, p_h0=h0, p_hs=hs, p_c=cs,
        p_gates=gates if gates is not None else cs, p_hc=hc if hc is not None else hs, p_out=out,
        p_len=lens if lens is not None else ws, p_ws=ws, p_c0=c0, p_hn=h_n, p_cn=c_n,
    )
    _run(prep, params, shape)
    return out, hs, cs, gates, hc, h_n, c_n


# (shape, strides, flags, plan) -> (sizes and strides, _Prepared, _shape): `_lstm_fwd`'s launch
# arguments apart from its tensors. Cleared when it reaches _CACHE_SIZE entries.
_FWD_CACHE: Dict[tuple, tuple] = {}
_CACHE_SIZE = 4096


def _shape(x: Tensor, H: int, R: int, what: str) -> tuple:
    """What a launch ran, for an error message: formatted by `_describe` only when needed."""
    return (what, *x.shape, H, R, x.dtype)


def _describe(shape: tuple, plan: LaunchPlan) -> str:
    what, T, B, I, H, R, dtype = shape
    return f"{what}, T={T}, B={B}, I={I}, H={H}, R={R}, {str(dtype).replace('torch.', '')}; {plan}"


def _live_mask(lens: Tensor, T: int) -> Tensor:
    """(T, B, 1) bool: row b is live at step t."""
    return (torch.arange(T, device=lens.device).unsqueeze(1) < lens.unsqueeze(0)).unsqueeze(2)


def _lstm_bwd(d_out: Tensor, d_hn: Tensor, d_cn: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
              w_hr: Optional[Tensor], hs: Tensor, cs: Tensor, gates: Tensor, hc: Optional[Tensor],
              lens: Optional[Tensor], needs: Tuple[bool, ...], plan: LaunchPlan):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr); None where not needed."""
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, dev = x.dtype, x.device

    # The gradient reaching h[t] from outside the recurrence: d_out at live
    # rows, plus d_hn at each row's last live step (dead rows carry h to h_n).
    # Unpacked, the kernel reads d_out as it is (any strides), and its last
    # step from d_out[T-1] + d_hn: one small add, no copy of d_out.
    if lens is None and 0 not in d_out.stride()[1:]:
        dout = d_out
        # with dout's row and column strides, as the kernel reads both alike
        dlast = torch.add(d_out[T - 1], d_hn, out=torch.empty_strided((B, R), d_out.stride()[1:], dtype=dtype,
                                                                      device=dev))
    elif lens is None:  # d_out broadcast along rows or columns (a sum's gradient): one copy
        dout = d_out.contiguous()
        dout[T - 1].add_(d_hn)
        dlast = dout[T - 1]
    else:
        dout = (d_out * _live_mask(lens, T)).to(dtype)
        dout.index_put_((lens.long() - 1, torch.arange(B, device=dev)), d_hn.to(dtype), accumulate=True)
        dlast = dout[T - 1]

    # dg[T] = 0 is read from a cached zero buffer and dc = d_cn is copied by
    # the kernel: no host launches for them.
    dg = _empty((T, B, 4 * H), dtype, dev)
    dc = _empty((B, H), torch.float32, dev)
    dh = _empty((T, B, R), dtype, dev) if w_hr is not None else None
    params = _shared_params(w_hh, w_hr, lens, T, B)
    params.update(
        p_dg=dg, p_dout=dout, p_dh=dh if dh is not None else dout, p_gates=gates, p_c=cs, p_dc=dc,
        p_dgz=_zeros(dev, (B, 4 * H), dtype), p_dcn=d_cn, p_dlast=dlast, s_dcn_b=d_cn.stride(0), s_dcn_h=d_cn.stride(1),
        s_dg_t=dg.stride(0), s_dg_b=dg.stride(1), s_dg_g=dg.stride(2),
        s_do_t=dout.stride(0), s_do_b=dout.stride(1), s_do_r=dout.stride(2),
        s_gt_t=gates.stride(0), s_gt_b=gates.stride(1), s_gt_g=gates.stride(2),
        s_c_t=cs.stride(0), s_c_b=cs.stride(1), s_c_h=cs.stride(2),
        s_dc_b=dc.stride(0), s_dc_h=dc.stride(1),
    )
    params.update(zip(("s_dh_t", "s_dh_b", "s_dh_r"), dh.stride() if dh is not None else _zero_strides(3)))
    constexprs = dict(
        NUM_KG=_chunks(4 * H, plan), NUM_KR=_chunks(R, plan), EVEN_K=_even(plan, 4 * H, R if w_hr is not None else H),
        HAS_PROJ=w_hr is not None,
        PACKED=lens is not None, DOT_PRECISION=_dot_precision(dtype), UPCAST_DOT=_upcast_dot(x),
        **_step_constexprs(plan, B),
    )
    phases = ({"RECUR": False, "CELL": True},)
    if w_hr is not None:
        phases = ({"RECUR": True, "CELL": False}, {"RECUR": False, "CELL": True})
    _launch(_bwd.lstm_bwd_kernel, plan, params, constexprs, T, phases, reverse=True,
            shape=_shape(x, H, R, "backward"))

    need_x, need_h0, need_c0, need_wih, need_whh, need_b, need_whr = needs
    dg2 = dg.view(T * B, 4 * H)
    dx = torch.mm(dg2, w_ih).view(T, B, I) if need_x else None
    dw_ih = torch.mm(dg2.t(), x.reshape(T * B, I)) if need_wih else None
    dw_hh = None
    if need_whh:
        # sum_t dg[t]^T h[t-1], with h[-1] = h0 and h[t] = hs[t]
        dw_hh = torch.mm(dg[0].t(), h0)
        if T > 1:
            dw_hh.addmm_(dg[1:T].reshape((T - 1) * B, 4 * H).t(), hs[: T - 1].reshape((T - 1) * B, R))
    db = dg2.sum(0, dtype=torch.float32).to(dtype) if need_b else None
    dh0 = torch.mm(dg[0], w_hh) if need_h0 else None
    dc0 = dc.to(dtype) if need_c0 else None
    dw_hr = None
    if w_hr is not None and need_whr:
        dw_hr = torch.mm(dh.view(T * B, R).t(), hc.view(T * B, H))
    return dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr


# ----------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------


class LSTMTritonFunction(torch.autograd.Function):
    """One LSTM layer with a hand-written backward; see `lstm_layer_triton`.

    `lens` is the (B,) int32 device tensor of row lengths (None when not
    packed); `save` says whether a backward can follow (inside forward, grad
    mode is always off and needs_input_grad ignores it, so the caller decides).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lens, save):
        T, B = x.shape[0], x.shape[1]
        ctx.empty = T == 0 or B == 0
        ctx.has_b_ih, ctx.has_b_hh, ctx.has_w_hr = b_ih is not None, b_hh is not None, w_hr is not None
        if ctx.empty or has_no_data(x):
            # No steps or rows, or shapes without data (meta, FakeTensorMode):
            # nothing to launch; the backward gives gradients of the right shapes.
            ctx.shapes = (x.shape, w_ih.shape, w_hh.shape, None if w_hr is None else w_hr.shape)
            if not ctx.empty:
                ctx.empty = True
                return x.new_empty(T, B, h0.shape[1]), h0.new_empty(h0.shape), c0.new_empty(c0.shape)
            out = x.new_zeros(T, B, h0.shape[1])
            return out, h0.clone(), c0.clone()
        precision = _dot_precision(x.dtype)
        fwd_plan, _ = plans_for(x, w_hh.shape[0] // 4, w_hr.shape[0] if w_hr is not None else 0, training=save)
        bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
        with _device_guard(x):
            out, hs, cs, gates, hc, h_n, c_n = _lstm_fwd(x, h0, c0, w_ih, w_hh, bias, w_hr, lens, save, fwd_plan,
                                                         precision)
        if save:
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, hs, cs, gates, hc, lens)
        # No output is a view (torch forbids in-place on views returned by a
        # Function) or aliases another output or a saved buffer: in training
        # `out` is the kernel's copy of hs, which the backward reads.
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        needs = ctx.needs_input_grad
        if not ctx.empty and differentiable_backward((d_out, d_hn, d_cn)):
            # Past first derivatives: the reference loop, recomputed under autograd.
            inputs, lens = ctx.saved_tensors[:8], ctx.saved_tensors[-1]
            batch_sizes = None
            if lens is not None:
                steps = torch.arange(inputs[0].shape[0])
                batch_sizes = (lens.cpu().unsqueeze(0) > steps.unsqueeze(1)).sum(1)
            return (*reference_grads(inputs, batch_sizes, (d_out, d_hn, d_cn), needs), None, None)
        if ctx.empty:
            x_shape, wih_shape, whh_shape, whr_shape = ctx.shapes
            z = (lambda s: d_out.new_empty(s)) if has_no_data(d_out) else (lambda s: d_out.new_zeros(s))  # noqa: E731
            return (z(x_shape) if needs[0] else None, d_hn, d_cn,
                    z(wih_shape) if needs[3] else None, z(whh_shape) if needs[4] else None,
                    z(whh_shape[0]) if ctx.has_b_ih and needs[5] else None,
                    z(whh_shape[0]) if ctx.has_b_hh and needs[6] else None,
                    z(whr_shape) if ctx.has_w_hr and needs[7] else None, None, None)
        x, h0, _, w_ih, w_hh, _, _, w_hr, hs, cs, gates, hc, lens = ctx.saved_tensors
        # Planned now, with the precision setting the backward's products use.
        _, bwd_plan = plans_for(x, w_hh.shape[0] // 4, w_hr.shape[0] if w_hr is not None else 0, training=True)
        with _device_guard(x):
            dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = _lstm_bwd(
                d_out, d_hn, d_cn, x, h0, w_ih, w_hh, w_hr, hs, cs, gates, hc, lens,
                (needs[0], needs[1], needs[2], needs[3], needs[4], needs[5] or needs[6], needs[7]),
                bwd_plan,
            )
        db_ih = db if ctx.has_b_ih and needs[5] else None
        db_hh = db if ctx.has_b_hh and needs[6] else None
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None, None


# ----------------------------------------------------------------------------
# public
# ----------------------------------------------------------------------------


def _check(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
    if x.dtype == torch.float64:
        raise TypeError(
            "lstm_layer_triton: float64 is not supported by the Triton kernels; "
            "use backend 'jit' (backend='auto' sends float64 there)"
        )
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"lstm_layer_triton: x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"lstm_layer_triton: x must be (T, B, I), got shape {tuple(x.shape)}")
    T, B, I = x.shape
    if w_hh.dim() != 2 or w_hh.shape[0] % 4:
        raise ValueError(f"lstm_layer_triton: w_hh must be (4H, R), got shape {tuple(w_hh.shape)}")
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, device = x.dtype, x.device
    for name, tensor, shape in (("h0", h0, (B, R)), ("c0", c0, (B, H)), ("w_ih", w_ih, (4 * H, I)),
                                ("b_ih", b_ih, (4 * H,)), ("b_hh", b_hh, (4 * H,)), ("w_hr", w_hr, (R, H))):
        if tensor is None:
            continue
        if tensor.shape != shape:  # a torch.Size equals the tuple of its sizes
            raise ValueError(f"lstm_layer_triton: {name} must have shape {shape}, got {tuple(tensor.shape)}")
        if tensor.dtype != dtype or tensor.device != device:
            raise TypeError(
                f"lstm_layer_triton: {name} must be {x.dtype} on {x.device} like x, "
                f"got {tensor.dtype} on {tensor.device}"
            )
    if w_hh.dtype != x.dtype or w_hh.device != x.device:
        raise TypeError(f"lstm_layer_triton: w_hh must be {x.dtype} on {x.device} like x, "
                        f"got {w_hh.dtype} on {w_hh.device}")
    if w_hr is None and R != H:
        raise ValueError(f"lstm_layer_triton: w_hh has {R} columns but H = {H} and no w_hr was given")
    if batch_sizes is not None:
        if batch_sizes.device.type != "cpu" or batch_sizes.dim() != 1 or batch_sizes.shape[0] != T:
            raise ValueError(
                f"lstm_layer_triton: batch_sizes must be a CPU tensor of shape ({T},), got "
                f"{tuple(batch_sizes.shape)} on {batch_sizes.device}"
            )
        if T > 0 and (int(batch_sizes[0]) != B or bool((batch_sizes[1:] > batch_sizes[:-1]).any())
                      or int(batch_sizes[-1]) < 0):
            raise ValueError(
                f"lstm_layer_triton: batch_sizes must not increase and start at B = {B}, "
                f"got {batch_sizes.tolist()}"
            )


def lstm_layer_triton(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    w_hr: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer, one direction, on Triton kernels; see `fastlstm.backends`.

    Shapes: x (T, B, I), h0 (B, R), c0 (B, H), w_ih (4H, I), w_hh (4H, R),
    b_ih/b_hh (4H,) or None, w_hr (R, H) or None, batch_sizes CPU int64 (T,)
    or None -> out (T, B, R), h_n (B, R), c_n (B, H). float32, float16 or
    bfloat16 (float64: use backend 'jit'); CUDA, or CPU under TRITON_INTERPRET=1.

    Example:
        >>> x, h0, c0 = torch.randn(5, 2, 3, device="cuda"), torch.zeros(2, 4, device="cuda"), torch.zeros(2, 4, device="cuda")
        >>> out, h, c = lstm_layer_triton(x, h0, c0, torch.randn(16, 3, device="cuda"), torch.randn(16, 4, device="cuda"))
        >>> out.shape
        torch.Size([5, 2, 4])
    """
    if transforms_active(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        return lstm_layer_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
    save = needs_autograd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    fn, args = _function_and_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save)
    if not save:
        # Nothing to record: the Function's forward as a plain call (autograd's
        # apply costs more host time than the rest of a small call).
        return fn.forward(_NoCtx(), *args)
    return fn.apply(*args)


class _NoCtx:
    """The ctx of a forward that saves nothing (see `lstm_layer_triton`)."""

    def save_for_backward(self, *tensors):
        raise AssertionError("an inference forward saves nothing")




def _function_and_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save: bool):
    """The autograd.Function and its arguments for one layer call.

    `fastlstm._ops` calls the Function's forward and backward directly with
    these (under torch.compile), so the two stay one code path.
    """
    _check(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
    lens = None
    if batch_sizes is not None and x.shape[0] > 0:
        lens = host_to_device(sequence_lengths(batch_sizes, x.shape[1]).to(torch.int32), x.device)
    return LSTMTritonFunction, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lens, save)
