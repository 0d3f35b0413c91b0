"""The grid-wide barrier of the persistent kernels and their workspace.

No host-device synchronisation: a persistent launch's barrier counter and
error flags live in a workspace (`_WS_*`) that the launch leaves at zero for
the next one (`_end_launch`); a launch whose barrier timed out writes NaN
into its outputs (`_launch_failed`) and adds one to a sticky count that the
host reads later without waiting (fastlstm.backends.triton.workspace,
`_Workspace`).
"""
import triton
import triton.language as tl


@triton.jit
def _grid_barrier(p_sync, target, max_spin, p_err):
    """Arrive at the barrier and wait until `target` arrivals have been counted.

    p_sync is one int32 counter, zero at launch, that only grows within a
    launch: the n-th barrier of a launch waits for n * num_programs arrivals,
    so no counter is ever reset mid-launch (`_end_launch` resets it once every
    program is past its last barrier). The arrival is a release and the poll
    an acquire (both at GPU scope), with a CTA barrier on either side, so every
    store this program made before arriving is visible to every program after
    it leaves. Scalar atomics run on one thread of the program (triton 3.9
    turns the polling add of 0 into an acquire load). The spin is bounded:
    after `max_spin` polls it gives up and sets *p_err (see `_end_launch` for
    what follows: NaN outputs and an error on the host). Returns the spin
    budget for this program's next barrier: 0 once it has given up, so a
    broken launch ends after one timeout rather than one per barrier (a program
    that gave up still arrives at every later barrier, so the counts stay
    whole).
    """
    _barrier_arrive(p_sync)
    return _barrier_wait(p_sync, target, max_spin, p_err)


# The persistent kernels' workspace: one int32 buffer per (device, stream),
# zeroed once when the host creates it, that every launch leaves as it found
# it (zeros), apart from the sticky count.
_WS_COUNT = tl.constexpr(0)  # barrier arrivals of this launch
_WS_EXITS = tl.constexpr(1)  # programs that have finished this launch
_WS_ERR = tl.constexpr(2)  # set when a barrier of this launch timed out
_WS_STICKY = tl.constexpr(3)  # launches whose barrier timed out, counted (the host reads it, never writes it)


@triton.jit
def _launch_failed(p_ws):
    """Whether a barrier of this launch timed out, as seen by this program after
    its last barrier (an acquire read of the launch's error flag).

    Why this catches every barrier that gave up before this program's last
    barrier completed: a program that gives up sets the flag (a release) before
    it arrives at its next barrier, and this program's last barrier either
    completed, having acquired every program's final arrival, which comes
    after any flag that program set, or gave up, and set the flag itself. A
    program that gives up only at the very last barrier sets the flag after
    the others may have looked: their results need nothing after that
    barrier, so they are right, and the giving-up program poisons its own.
    """
    return tl.atomic_add(p_ws + _WS_ERR, 0, sem="acquire", scope="gpu") != 0


@triton.jit
def _end_launch(p_ws):
    """The last program to finish a persistent launch resets the workspace for
    the next launch: the barrier counter, the exit count and the launch's error
    flag go back to zero, and a set error flag adds one to the sticky count
    that the host checks (fastlstm.backends.triton.workspace, `_Workspace`).

    Memory ordering: each program calls this after its last barrier and after
    `_launch_failed`; its exit is an acq_rel add, so the program that counts the
    last exit has acquired every other program's exit, and no program reads
    the counter or the flag after its exit. The reset stores need no ordering
    of their own: the next launch on this stream starts after this one has
    ended (stream order), and a kernel's end makes its stores visible to
    later kernels. A grid that is not co-resident still ends (every spin is
    bounded), so the reset always happens.
    """
    tl.debug_barrier()
    exits = tl.atomic_add(p_ws + _WS_EXITS, 1, sem="acq_rel", scope="gpu")
    if exits == tl.num_programs(0) - 1:
        err = tl.atomic_xchg(p_ws + _WS_ERR, 0, sem="acq_rel", scope="gpu")
        tl.atomic_add(p_ws + _WS_STICKY, err, sem="relaxed", scope="gpu")
        tl.atomic_xchg(p_ws + _WS_COUNT, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(p_ws + _WS_EXITS, 0, sem="relaxed", scope="gpu")


@triton.jit
def _barrier_arrive(p_sync):
    """The first half of `_grid_barrier`: count this program's arrival (a
    release at GPU scope, after a CTA barrier, so every store the program made
    before it is visible to whoever acquires the counter). Independent work
    may follow before `_barrier_wait`: loads of what no other program writes."""
    tl.debug_barrier()
    tl.atomic_add(p_sync, 1, sem="release", scope="gpu")


@triton.jit
def _barrier_wait(p_sync, target, max_spin, p_err):
    """The second half of `_grid_barrier`: spin on an acquire read of the
    counter until `target` arrivals have been counted, with the same counter
    semantics, bounded spin, error flag and returned spin budget."""
    seen = tl.atomic_add(p_sync, 0, sem="acquire", scope="gpu")
    n = 0
    while (seen < target) & (n < max_spin):
        seen = tl.atomic_add(p_sync, 0, sem="acquire", scope="gpu")
        n += 1
    spin = max_spin
    if seen < target:
        tl.atomic_max(p_err, 1, sem="release", scope="gpu")
        spin = max_spin * 0
    tl.debug_barrier()
    return spin


@triton.jit(do_not_specialize=["steps", "max_spin"])
def barrier_loop_kernel(
    p_sync,  # (1,) int32 barrier counter, zero at launch
    p_err,  # (1,) int32 set to 1 if a barrier timed out
    steps,  # barriers to meet
    max_spin,  # polls before a barrier gives up
):
    """A persistent loop that does nothing but meet the grid barrier `steps`
    times: what one step of the LSTM kernels pays for synchronisation."""
    nprog = tl.num_programs(0)
    spin = max_spin
    for s in range(0, steps):
        spin = _grid_barrier(p_sync, (s + 1) * nprog, spin, p_err)
