"""The Triton kernels in Triton's interpreter: one launch at a time, and persistent
grids run cooperatively.

Triton's interpreter (TRITON_INTERPRET=1) runs a grid's programs one after
another, in Python. Two things follow, and this module handles both for every
interpreted launch of fastlstm's kernels (`launch`):

- **It is not thread-safe.** A launch patches `triton.language` for the whole
  process, and the interpreter's builder holds the running program's id as
  global state; two threads launching at once corrupt each other. And every
  interpreted launch shares the CPU's one kernel workspace (the barrier
  counter). So interpreted launches are serialised by one lock, `LOCK`.
- **A persistent grid cannot run one program after another.** Its programs meet
  at a spin barrier once a step: the first program would wait for the others
  forever. `run_cooperative` runs each program in a thread of its own, the
  threads taking turns (only one runs at a time, so the interpreter's global
  state stays whole): a program runs until its next atomic operation, every
  barrier arrival and poll being one, then hands the turn to the next
  program, round robin. So the programs step together as on a GPU whose grid
  is co-resident, meeting at the kernels' own barrier, with the kernels' own
  compile-time flags, block sizes and grid; only the scheduling differs. A
  grid larger than the simulated GPU could hold is refused, as a cooperative
  launch on the GPU refuses it, and a grid in which every program waits for
  an arrival that never comes (a deadlock, which a GPU turns into a barrier
  timeout only after `max_spin` polls) raises at once. `resident` runs at
  most that many programs at once, the others starting as earlier ones end:
  the grid a launch gets on a GPU when it is not co-resident, whose barrier
  then times out (how the tests provoke the kernels' timeout path).

`run_cooperative` reads the interpreter's internals (`GridExecutor`'s
argument handling, `_patch_lang`, `interpreter_builder`), as in triton 3.9;
a Triton whose interpreter lacks them makes it raise a RuntimeError that
says so, never run wrongly.
"""
import inspect
import threading
from typing import Dict, List, Optional, Sequence, Tuple

# Every interpreted launch of fastlstm's kernels holds this lock (re-entrant:
# a launch from inside a launch's hooks would otherwise deadlock).
LOCK = threading.RLock()

# A deadlock: this many polls of every live program in a row, none of them
# answered by an atomic that writes memory (an arrival, an error flag, an
# exit). A live grid needs at most one poll per program between writes.
_IDLE_ROUNDS = 64


def launch(kernel, grid: Sequence[int], kwargs: Dict[str, object], cooperative: bool = False,
           max_programs: Optional[int] = None, resident: Optional[int] = None) -> None:
    """Launch `kernel` over `grid` in the interpreter, holding `LOCK`.

    cooperative: the launch is a persistent one, whose programs must run at
        once (`run_cooperative`); else Triton's own launch, program after
        program.
    max_programs: with `cooperative`, the most programs the (simulated) GPU
        holds at once; a larger grid raises, as a cooperative launch does.
    resident: with `cooperative`, the most programs running at once (None:
        all of them).
    """
    with LOCK:
        if cooperative:
            run_cooperative(kernel, grid, kwargs, max_programs, resident)
        else:
            kernel[tuple(grid)](**kwargs)


def _program_ids(grid: Sequence[int]) -> List[Tuple[int, int, int]]:
    gx, gy, gz = tuple(grid) + (1,) * (3 - len(grid))
    return [(x, y, z) for x in range(gx) for y in range(gy) for z in range(gz)]


def run_cooperative(kernel, grid: Sequence[int], kwargs: Dict[str, object],
                    max_programs: Optional[int] = None, resident: Optional[int] = None) -> None:
    """Run every program of `grid` at once (see the module doc). Call with `LOCK` held."""
    ids = _program_ids(grid)
    if max_programs is not None and len(ids) > max_programs:
        raise RuntimeError(f"cooperative launch of {getattr(kernel, '__name__', kernel)}: {len(ids)} programs, "
                           f"but the GPU holds at most {max_programs} at once (too many blocks in a "
                           "cooperative launch)")
    try:
        from triton.runtime import interpreter as ti

        rewrite, builder, executor_cls = kernel.rewrite, ti.interpreter_builder, ti.GridExecutor
        patch_lang, implicit_cvt = ti._patch_lang, ti._implicit_cvt
    except (ImportError, AttributeError) as e:
        raise RuntimeError("fastlstm's cooperative launches under the interpreter need Triton's interpreter "
                           f"as in triton 3.9 (GridExecutor, _patch_lang, interpreter_builder): {e}") from None
    fn = rewrite()
    executor = executor_cls(fn, kernel.arg_names, tuple(grid), kernel.pre_run_hooks)
    spec = inspect.getfullargspec(fn)
    kwargs = {k: v for k, v in kwargs.items() if k in spec.args or k in spec.kwonlyargs}
    _, kwargs_hst = executor._init_args_hst((), kwargs)
    for hook in executor.pre_run_hooks:
        hook(**kwargs_hst)
    scope = patch_lang(fn)
    try:
        args = inspect.getcallargs(fn, **kwargs_hst)
        args = {name: arg if name in executor.constexprs else implicit_cvt(arg) for name, arg in args.items()}
        builder.set_grid_dim(*(tuple(grid) + (1,) * (3 - len(grid))))
        _Turns(fn, args, ids, builder, resident).run()
    finally:
        scope.restore()
    executor._restore_args_dev((), (), kwargs, kwargs_hst)


class _Abort(BaseException):
    """Unwinds a program's thread when another program has failed."""


class _Turns:
    """The programs of one launch as threads that take turns (see the module doc)."""

    def __init__(self, fn, args: Dict[str, object], ids: List[Tuple[int, int, int]], builder,
                 resident: Optional[int] = None):
        self.fn, self.args, self.ids, self.builder = fn, args, ids, builder
        self.wake = [threading.Event() for _ in ids]
        self.alive = [True] * len(ids)
        # Programs [0, admitted) have started (or may); the rest wait for one to end.
        self.admitted = len(ids) if resident is None else max(1, min(resident, len(ids)))
        self.done = threading.Event()
        self.error: Optional[BaseException] = None
        self.idle = 0  # polls since the last atomic that wrote memory

    def run(self) -> None:
        builder = self.builder
        from triton._C.libtriton import ir

        add = ir.ATOMIC_OP.ADD
        real_rmw, real_cas = builder.create_atomic_rmw, builder.create_atomic_cas

        def rmw(op, ptr, val, mask, sem, scope):
            result = real_rmw(op, ptr, val, mask, sem, scope)
            # An add of zero reads (the barrier's poll); anything else writes.
            polled = op == add and not val.data.any()
            self._turn(polled)
            return result

        def cas(ptr, cmp, val, sem, scope):
            result = real_cas(ptr, cmp, val, sem, scope)
            self._turn(False)
            return result

        builder.create_atomic_rmw, builder.create_atomic_cas = rmw, cas
        try:
            threads = [threading.Thread(target=self._program, args=(i,), daemon=True,
                                        name=f"fastlstm-program-{i}") for i in range(len(self.ids))]
            for t in threads:
                t.start()
            self.wake[0].set()
            self.done.wait()
            for t in threads:
                t.join()
        finally:
            del builder.create_atomic_rmw, builder.create_atomic_cas  # back to the class's methods
        if self.error is not None:
            raise self.error

    def _program(self, i: int) -> None:
        self.wake[i].wait()
        self.wake[i].clear()
        try:
            if self.error is None:
                self.me = i
                self.builder.set_grid_idx(*self.ids[i])
                self.fn(**self.args)
        except _Abort:
            pass
        except BaseException as e:  # the kernel failed: stop every program, report the first error
            if self.error is None:
                self.error = e
        finally:
            self.alive[i] = False
            if self.admitted < len(self.ids):
                self.admitted += 1  # a waiting program takes the place this one leaves
            self._hand_on(i)

    def _next(self, i: int) -> Optional[int]:
        n = self.admitted
        for k in range(1, n + 1):
            j = (i + k) % n
            if self.alive[j]:
                return j
        return None

    def _hand_on(self, i: int) -> None:
        """Give the turn to the live program after i (or end the launch)."""
        j = self._next(i)
        if j is None:
            self.done.set()
        else:
            self.wake[j].set()

    def _turn(self, polled: bool) -> None:
        """After an atomic of the running program: hand the turn on, wait for it back."""
        i = self.me
        live = sum(self.alive[:self.admitted])
        self.idle = self.idle + 1 if polled else 0
        if self.idle > _IDLE_ROUNDS * live and self.error is None:
            self.error = RuntimeError(
                f"simulated GPU: deadlock: all {live} running programs of the grid have polled the barrier "
                f"{_IDLE_ROUNDS} times each with no arrival, error or exit in between: they wait for "
                "programs that will never arrive (on a GPU the barrier would time out after max_spin polls)")
        if self.error is not None:
            raise _Abort()
        self._hand_on(i)
        self.wake[i].wait()
        self.wake[i].clear()
        if self.error is not None:
            raise _Abort()
        self.me = i
        self.builder.set_grid_idx(*self.ids[i])
