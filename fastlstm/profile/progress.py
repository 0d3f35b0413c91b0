"""Progress of a profile: the current row, rows done of the total, time elapsed and an
estimate of the time left. A rich bar on a terminal when rich is installed; plain
lines otherwise (a log, a pipe, no rich): one per finished group of rows, and one
at least every `plain_every_s` seconds while a group runs."""
import sys
import time
from typing import Optional, TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressLine:
    """Counts rows and work units (see `run.count_work`); `update(what, work, rows)` is
    the `progress` callback of `run_profile`. Used as a context manager.

    The time left is the elapsed time scaled by the work left over the work done;
    work units are weighted by T*B, so it holds roughly across sequence lengths.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with ProgressLine(total_rows=2, total_work=4, stream=out, use_rich=False) as p:
        ...     p.update("infer T=16: done", 4, 2)
        >>> "2/2 rows" in out.getvalue()
        True
    """

    def __init__(self, total_rows: int, total_work: float, stream: Optional[TextIO] = None,
                 use_rich: Optional[bool] = None, plain_every_s: float = 10.0):
        self.total_rows, self.total_work = total_rows, max(total_work, 1e-9)
        self.rows = 0
        self.work = 0.0
        self.stream = stream or sys.stdout
        self.plain_every_s = plain_every_s
        self._start = self._last_print = time.perf_counter()
        self._bar = self._task = None
        if use_rich is None:
            use_rich = self.stream.isatty()
        if use_rich:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            except ImportError:
                return
            self._bar = Progress(
                TextColumn("{task.description:<24.24}"), BarColumn(bar_width=12),
                TextColumn("{task.fields[rows]}/{task.fields[total_rows]} rows"),
                TimeElapsedColumn(), TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"),
                console=Console(file=self.stream))
            self._task = self._bar.add_task("starting", total=self.total_work, rows=0, total_rows=total_rows)

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def left(self) -> Optional[float]:
        """Estimated seconds left, or None before any work is done."""
        if self.work <= 0:
            return None
        return self.elapsed() * max(0.0, self.total_work - self.work) / self.work

    def line(self, what: str) -> str:
        left = self.left()
        return (f"[{self.rows}/{self.total_rows} rows] {what} | {_clock(self.elapsed())} elapsed, "
                + (f"about {_clock(left)} left" if left is not None else "time left not known yet"))

    def update(self, what: str, work: float = 0.0, rows: int = 0) -> None:
        self.work += work
        self.rows += rows
        if self._bar is not None:
            self._bar.update(self._task, advance=work, description=what, rows=self.rows)
            return
        now = time.perf_counter()
        if rows or now - self._last_print >= self.plain_every_s:
            self._last_print = now
            print(self.line(what), file=self.stream, flush=True)

    def __enter__(self) -> "ProgressLine":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
