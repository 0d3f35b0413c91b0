"""fastlstm.backends.triton.interpreter: interpreted launches one at a time, and
persistent grids whose programs run at once (taking turns at every atomic),
so that the kernels' own grid barrier works in Triton's interpreter."""
import os
import threading

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from fastlstm.backends.triton import interpreter  # noqa: E402
from fastlstm.kernels import barrier as k  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="tests the interpreter's scheduling (TRITON_INTERPRET=1)")


def _barrier_loop(programs: int, steps: int, max_programs=None) -> list:
    sync = torch.zeros(2, dtype=torch.int32)
    interpreter.launch(k.barrier_loop_kernel, (programs,),
                       dict(p_sync=sync[0:1], p_err=sync[1:2], steps=steps, max_spin=1 << 24, num_warps=4),
                       cooperative=True, max_programs=max_programs)
    return sync.tolist()


@pytest.mark.parametrize("programs", [1, 2, 7, 32])
def test_programs_meet_at_the_barrier(programs):
    """Every program arrives at each of the 5 barriers; none times out (error flag 0)."""
    assert _barrier_loop(programs, 5) == [programs * 5, 0]


def test_without_turns_the_barrier_would_hang():
    """The control: Triton's own launch runs the programs one after another, so the
    first spins out its budget alone and sets the error flag."""
    sync = torch.zeros(2, dtype=torch.int32)
    interpreter.launch(k.barrier_loop_kernel, (2,), dict(p_sync=sync[0:1], p_err=sync[1:2], steps=1, max_spin=3,
                                                        num_warps=4))
    assert sync.tolist() == [2, 1]


def test_a_grid_too_large_is_refused():
    with pytest.raises(RuntimeError, match="9 programs, but the GPU holds at most 8 at once"):
        _barrier_loop(9, 1, max_programs=8)


@triton.jit
def _wait_for_one_more(p_sync, p_out):
    """Every program arrives once and waits for one arrival more than there are programs."""
    tl.atomic_add(p_sync, 1, sem="release")
    seen = tl.atomic_add(p_sync, 0, sem="acquire")
    while seen < tl.num_programs(0) + 1:
        seen = tl.atomic_add(p_sync, 0, sem="acquire")
    tl.store(p_out + tl.program_id(0), seen)


def test_a_deadlock_raises_at_once():
    sync, out = torch.zeros(1, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="deadlock: all 3 running programs .* polled the barrier 64 times"):
        interpreter.launch(_wait_for_one_more, (3,), dict(p_sync=sync, p_out=out), cooperative=True)
    assert sync.item() == 3 and out.tolist() == [0, 0, 0]
    assert _barrier_loop(3, 2) == [6, 0]  # the lock was released, the builder restored


@triton.jit
def _program_ids(p_out, p_sync):
    """Each program writes its id before and after a barrier-like round of atomics."""
    pid = tl.program_id(0)
    tl.store(p_out + 2 * pid, pid)
    tl.atomic_add(p_sync, 1)
    while tl.atomic_add(p_sync, 0) < tl.num_programs(0):
        pass
    tl.store(p_out + 2 * pid + 1, tl.program_id(0))


def test_each_program_keeps_its_own_id_across_turns():
    out, sync = torch.full((10,), -1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    interpreter.launch(_program_ids, (5,), dict(p_out=out, p_sync=sync), cooperative=True)
    assert out.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


@triton.jit
def _fails_in_program_one(p_sync, p_out, BLOCK: tl.constexpr):
    tl.atomic_add(p_sync, 1)
    if tl.program_id(0) == 1:
        tl.store(p_out + tl.arange(0, BLOCK), tl.zeros([BLOCK], dtype=tl.int32))  # BLOCK is not a power of two
    tl.atomic_add(p_sync, 1)


def test_an_error_in_one_program_stops_the_launch():
    sync, out = torch.zeros(1, dtype=torch.int32), torch.zeros(8, dtype=torch.int32)
    with pytest.raises(Exception, match="power of 2|power of two"):
        interpreter.launch(_fails_in_program_one, (4,), dict(p_sync=sync, p_out=out, BLOCK=3), cooperative=True)
    assert threading.active_count() < 8  # the programs' threads are gone
    assert _barrier_loop(4, 1) == [4, 0]


def test_launches_from_threads_are_serialised():
    """Four threads launching four-program persistent grids at once: each launch
    keeps its own counter right (the interpreter's global state is not shared
    between two launches at a time)."""
    results, errors = {}, []

    def work(i):
        try:
            results[i] = _barrier_loop(4, 3 + i)
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == {i: [4 * (3 + i), 0] for i in range(4)}
