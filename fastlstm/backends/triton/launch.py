"""Launching the step kernels as a plan says: one persistent launch (or a few)
for all steps, or one launch per step and phase (`_launch`, `_Prepared`,
`_run`, `_StepLauncher`); and `barrier_loop`, the grid barrier alone.

Every launch goes through `_kernel_launch`: on a GPU straight to the compiled
kernel (a persistent one cooperatively), in Triton's interpreter through
`interpreter.launch`, one launch at a time, persistent grids with their
programs running at once (on a simulated GPU that is the GPU's own grid).
"""
import contextlib
import functools
import inspect
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ...device import gpu
from ...kernels import barrier as _barrier
from . import interpreter
from .plan import LaunchPlan, _interpreting
from .workspace import _workspace_of

# Barrier polls before a persistent launch gives up (seconds on a GPU; a step
# takes microseconds). Tests lower it to provoke the timeout.
_MAX_SPIN = 1 << 24
# The barrier counter is an int32 that only grows within a launch.
_MAX_ARRIVALS = 2**31 - 1


def _device_guard(t: Tensor):
    """Triton launches on the current CUDA device; make it the tensors' one."""
    g = gpu(t)
    return g.device_context() if g is not None else contextlib.nullcontext()


def _kernel_launch(kernel, grid: Tuple[int, ...], kwargs: Dict[str, object], cooperative: bool,
                   device: torch.device) -> None:
    """One launch of `kernel` (see the module doc); `cooperative`: a persistent
    launch, whose programs must all be resident at once."""
    if _interpreting():
        g = gpu(device)
        simulated = g is not None and g.simulated
        interpreter.launch(kernel, grid, kwargs, cooperative,
                           max_programs=g.properties.sm_count if simulated else None,
                           resident=g.resident if simulated else None)
    else:
        _compiled_launch(kernel, grid, kwargs)


def _compiled_launch(kernel, grid: Tuple[int, ...], kwargs: Dict[str, object]) -> None:
    """A launch on a GPU, through Triton's dispatcher (which compiles the variant
    on first use; a persistent one has `launch_cooperative_grid`)."""
    kernel[grid](**kwargs)


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
                 stream: Optional[int] = None, device: Optional[torch.device] = None):
        # A compiled kernel reads all three grid dimensions (the dispatcher pads them).
        grid = tuple(grid) + (1,) * (3 - len(grid))
        self.kernel, self.grid, self.options = kernel, grid, options
        self.names = _param_names(kernel)
        self.args: List[object] = [params[n] for n in self.names]
        self.i_t0, self.i_t1 = self.names.index("t0"), self.names.index("t1")
        self.run = None
        self.device = device
        if stream is not None:
            compiled = kernel.warmup(*self.args, grid=grid, **options)
            self.run = functools.partial(compiled[grid], stream=stream)

    def __call__(self, t0: int, t1: int) -> None:
        self.args[self.i_t0], self.args[self.i_t1] = t0, t1
        if self.run is not None:
            self.run(*self.args)
        else:
            _kernel_launch(self.kernel, self.grid, dict(zip(self.names, self.args), **self.options), False,
                           self.device)


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
            # Cooperative on a GPU (CUDA refuses a grid that cannot be co-resident);
            # the interpreter takes no such option and ignores it.
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
            _kernel_launch(kernel, grid, dict(params, **kwargs), prep.persistent, prep.device)
        if prep.persistent:
            _workspace_of(params["p_ws"]).launched((shape, prep.plan))
        return
    device, steps = prep.device, prep.steps
    g = gpu(device)
    stream = g.stream_id() if g is not None and not _interpreting() else None
    launchers = [_StepLauncher(kernel, g, dict(params, **prep.constexprs, **p, t0=0, t1=1, max_spin=_MAX_SPIN,
                                               PERSISTENT=False), prep.options, stream, device)
                 for g, p in zip(prep.grids, prep.phases)]
    for t in (range(steps - 1, -1, -1) if prep.reverse else range(steps)):
        for launcher in launchers:
            launcher(t, t + 1)


def barrier_loop(programs: int, steps: int, device) -> Tensor:
    """Launch `programs` programs (cooperatively on a GPU) that meet the grid
    barrier `steps` times and do nothing else; the barrier microbenchmark.
    Returns the (2,) int32 [arrivals, error flag] buffer, without waiting."""
    sync = torch.zeros(2, dtype=torch.int32, device=device)
    _kernel_launch(_barrier.barrier_loop_kernel, (programs,),
                   dict(p_sync=sync[0:1], p_err=sync[1:2], steps=steps, max_spin=_MAX_SPIN, num_warps=4,
                        launch_cooperative_grid=True), True, sync.device)
    return sync
