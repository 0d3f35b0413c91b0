"""Progress of a profile: the current row, rows done of the total, time elapsed and an
estimate of the time left. A rich bar on a terminal when rich is installed; plain
lines otherwise (a log, a pipe, no rich): one per finished group of rows, and one
at least every `plain_every_s` seconds while a group runs.

The time left comes from what the run has measured so far (`time_left`): each group
of rows still to come (one mode and T of one shape) is predicted from the groups
already finished (`estimate_left`), bounded by the elapsed time scaled by the work
units left. The work units alone (a fixed guess of how cost grows with T and B)
made early estimates of the default CPU run twice too long."""
import sys
import time
from typing import Dict, Hashable, List, NamedTuple, Optional, Sequence, TextIO, Tuple


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Group(NamedTuple):
    """One group of rows of a sweep (every backend at one mode and T), for the estimate.

    `series` is what stays the same as T grows (shape, dtype, workload, batch, mode);
    `backends` the backends the group times (the others are skipped at no cost);
    `prior` a rough relative cost per backend and step of the series, and `kind`
    (the mode) which series compare best, used only for a series whose growth
    with T is not measured yet.
    """
    series: Hashable
    seq_len: int
    backends: int
    prior: float = 1.0
    kind: str = ""


def _prior(batch: int, hidden: int, mode: str) -> float:
    # A step costs a fixed part and a part growing with B and H^2; training
    # about three times inference (the CPU profiles in README). A guess, used
    # only until the series has a measured group.
    return (1.0 + batch / 8.0) * (hidden / 256.0) ** 2 * (3.0 if mode == "train" else 1.0)


def profile_plan(shapes: Sequence[Tuple[str, int, str, int]], modes: Sequence[str], seq_lens: Sequence[int],
                 names: Sequence[str], slow_max_seq_len: int) -> List[Group]:
    """The groups of a `fastlstm profile` run in the order it measures them: for each
    (dtype, hidden, workload, batch) of `shapes`, each mode, each T.

    Example:
        >>> [g.backends for g in profile_plan([("float32", 256, "layer", 32)], ["infer"], [16, 256],
        ...                                   ["jit", "torch", "tutorial"], 64)]
        [3, 2]
    """
    from .models import SLOW_BACKENDS
    from .workloads import backends_for

    plan = []
    for dtype, hidden, workload, batch in shapes:
        present = backends_for(workload, list(names))
        for mode in modes:
            for T in seq_lens:
                n = sum(1 for b in present if not (b in SLOW_BACKENDS and slow_max_seq_len and T > slow_max_seq_len))
                plan.append(Group((dtype, hidden, workload, batch, mode), T, n, _prior(batch, hidden, mode), mode))
    return plan


def _slope(points: Dict[int, float]) -> Optional[float]:
    """Seconds per step of T between a series' two measured points of largest T
    (never below 0), or None with fewer than two."""
    if len(points) < 2:
        return None
    T1, T2 = sorted(points)[-2:]
    return max(0.0, (points[T2] - points[T1]) / (T2 - T1))


def estimate_left(plan: Sequence[Group], finished: Sequence[float], current_s: float = 0.0) -> Optional[float]:
    """Seconds left in a run of `plan`'s groups, of which the first len(`finished`)
    took `finished` seconds each and the next has run for `current_s`; None until
    some series (one shape and mode) has two groups measured.

    Costs are per backend timed. A group's cost grows with T along a line. Its
    slope is the series' own, through its two groups of largest T, when that
    rises; else it is a reference series' (one of the same kind, the most
    measured) scaled by the two series' priors. The line starts from the
    series' own group of largest T, or, for a series not started yet, from the
    reference's group of smallest T (the cost that does not grow with T:
    checks, warm-ups, the shortest timing samples, a memory probe).

    Example:
        >>> plan = [Group("a", 16, 2), Group("a", 64, 2), Group("a", 256, 2)]
        >>> estimate_left(plan, [2.0, 4.0])   # 1 s, then 2 s per backend: 4 s more per backend
        8.0
    """
    points: Dict[Hashable, Dict[int, float]] = {}
    for group, seconds in zip(plan, finished):
        points.setdefault(group.series, {})[group.seq_len] = seconds / max(group.backends, 1)
    priors = {g.series: g.prior for g in plan}
    kinds = {g.series: g.kind for g in plan}
    sloped = [s for s in points if _slope(points[s])]
    if not sloped:
        return None
    # The series whose slope stands in where a series has no rising pair of groups
    # yet (fewer than two, or a first group inflated by one-off costs: imports,
    # first compilations, starting the memory probe's process): one of the same
    # kind (mode) if there is one, then the most measured.
    def reference(g: Group) -> Hashable:
        return max(sloped, key=lambda s: (kinds[s] == g.kind, len(points[s])))

    def per_backend(g: Group) -> float:
        own = points.get(g.series, {})
        if g.seq_len in own:
            return own[g.seq_len]
        slope = _slope(own)
        ref = reference(g)
        if not slope:
            slope = _slope(points[ref]) * g.prior / max(priors[ref], 1e-12)
        start = own if own else points[ref]
        T0 = max(start) if own else min(start)
        return start[T0] + slope * max(0, g.seq_len - T0)

    left = 0.0
    for i, g in enumerate(plan[len(finished):]):
        cost = per_backend(g) * g.backends
        left += max(0.0, cost - current_s) if i == 0 else cost
    return left


def time_left(plan: Optional[Sequence[Group]], finished: Sequence[float], current_s: float, elapsed: float,
              work: float, total_work: float) -> Optional[float]:
    """The estimate a progress line shows: the smaller of `estimate_left` (from the
    plan's groups, when it has something to go on) and the elapsed time scaled by the
    work units left over those done (see `run.count_work`); None before either is known.

    Each of the two overshoots where the other does not: the work units weigh T*B
    by a fixed rule, which on the CPU made early estimates twice too long; a group
    slowed by a burst of load from other processes makes the plan's line through it
    too steep, while the work units average over the whole run.

    Example:
        >>> time_left(None, [], 0.0, elapsed=10.0, work=1.0, total_work=4.0)
        30.0
    """
    by_work = elapsed * max(0.0, total_work - work) / work if work > 0 else None
    by_plan = estimate_left(plan, finished, current_s) if plan is not None else None
    known = [v for v in (by_plan, by_work) if v is not None]
    return min(known) if known else None


class ProgressLine:
    """Counts rows and work units (see `run.count_work`); `update(what, work, rows)` is
    the `progress` callback of `run_profile`. Used as a context manager.

    With `plan` (see `profile_plan`), an update with `rows` ends a group of the plan,
    and the time left is `time_left`: `estimate_left` from the groups' measured times,
    bounded by the elapsed time scaled by the work left over the work done. Without a
    plan it is the latter alone (right for work of even cost, such as a demo's epochs).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with ProgressLine(total_rows=2, total_work=4, stream=out, use_rich=False) as p:
        ...     p.update("infer T=16: done", 4, 2)
        >>> "2/2 rows" in out.getvalue()
        True
    """

    def __init__(self, total_rows: int, total_work: float, stream: Optional[TextIO] = None,
                 use_rich: Optional[bool] = None, plain_every_s: float = 10.0, plan: Optional[List[Group]] = None,
                 unit: str = "rows", line_per_row: bool = True):
        self.total_rows, self.total_work = total_rows, max(total_work, 1e-9)
        self.rows = 0
        self.work = 0.0
        self.unit = unit
        # False: plain lines only every plain_every_s (a caller that prints its own line per row)
        self.line_per_row = line_per_row
        self.plan = plan
        self.group_seconds: List[float] = []
        self.stream = stream or sys.stdout
        self.plain_every_s = plain_every_s
        self._start = self._last_print = self._group_start = time.perf_counter()
        self._bar = self._task = None
        if use_rich is None:
            use_rich = self.stream.isatty()
        if use_rich:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
                from rich.text import Text
            except ImportError:
                return
            owner = self

            class _Left(ProgressColumn):
                """The estimate of `owner.left()`, not rich's own (a rate over recent updates)."""
                def render(self, task) -> Text:
                    left = owner.left()
                    return Text("left: not known yet" if left is None else f"about {_clock(left)} left")

            self._bar = Progress(
                TextColumn("{task.description:<24.24}"), BarColumn(bar_width=12),
                TextColumn("{task.fields[rows]}/{task.fields[total_rows]} " + unit),
                TimeElapsedColumn(), TextColumn("elapsed,"), _Left(),
                console=Console(file=self.stream))
            self._task = self._bar.add_task("starting", total=self.total_work, rows=0, total_rows=total_rows)

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def left(self) -> Optional[float]:
        """Estimated seconds left, or None before anything is measured."""
        return time_left(self.plan, self.group_seconds, time.perf_counter() - self._group_start, self.elapsed(),
                         self.work, self.total_work)

    def times(self) -> str:
        """'M:SS elapsed, about M:SS left' (or that the time left is not known yet)."""
        left = self.left()
        return (f"{_clock(self.elapsed())} elapsed, "
                + (f"about {_clock(left)} left" if left is not None else "time left not known yet"))

    def line(self, what: str) -> str:
        return f"[{self.rows}/{self.total_rows} {self.unit}] {what} | {self.times()}"

    def update(self, what: str, work: float = 0.0, rows: int = 0) -> None:
        self.work += work
        self.rows += rows
        now = time.perf_counter()
        if rows and self.plan is not None:
            self.group_seconds.append(now - self._group_start)
            self._group_start = now
        if self._bar is not None:
            self._bar.update(self._task, advance=work, description=what, rows=self.rows)
            return
        if (rows and self.line_per_row) or now - self._last_print >= self.plain_every_s:
            self._last_print = now
            print(self.line(what), file=self.stream, flush=True)

    def __enter__(self) -> "ProgressLine":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
