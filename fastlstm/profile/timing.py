"""Warm-up and interleaved timing: each repetition runs every backend once, in an
order rotated from one repetition to the next; short calls are repeated inside
one sample so that a sample lasts at least ~20 ms."""
import time
from typing import Callable, Dict, List, Optional

# A timing sample repeats short calls until it lasts about this long.
_MIN_SAMPLE_S = 0.02
_MAX_INNER = 50


def warm_up(step: Callable, max_calls: int = 3, budget_s: float = 0.5, settle: float = 1.5,
            limit_calls: int = 20, limit_s: float = 30.0) -> float:
    """Run `step` until its time per call has settled; return the last call's seconds.

    A first call (or a first few) can include compiling: TorchScript's profiling
    executor specialises and optimises over its first runs at a new shape (and
    again for the backward), Triton and FlashRNN compile their kernels. So one
    call is not enough, and a slow call is not a sign of being warm: warming
    stops only once two calls in a row agree within a factor `settle`, and
    `max_calls` calls are done or `budget_s` seconds spent. A step whose time
    never settles (a noisy machine) stops after `limit_calls` calls or `limit_s`
    seconds; its samples' spread then shows it.

    Example:
        >>> seconds = warm_up(lambda: None)
    """
    spent, last, previous = 0.0, 0.0, None
    for n in range(1, limit_calls + 1):
        t0 = time.perf_counter()
        step()
        last = time.perf_counter() - t0
        spent += last
        # Within a factor `settle`, or within a millisecond (no compile is that
        # short, and the timer's noise is not negligible for calls of microseconds).
        settled = previous is not None and (max(last, previous) <= settle * min(last, previous)
                                             or abs(last - previous) < 1e-3)
        if settled and (n >= max_calls or spent > budget_s):
            break
        if spent > limit_s:
            break
        previous = last
    return last


def calls_per_sample(seconds_per_call: float) -> int:
    """How many calls one timing sample repeats so that it lasts about
    `_MIN_SAMPLE_S` (at most `_MAX_INNER`), from one warm call's seconds."""
    return max(1, min(_MAX_INNER, int(_MIN_SAMPLE_S / max(seconds_per_call, 1e-6)) + 1))


def timed_median(steps: Dict[str, Callable], repeats: int, inner: Dict[str, int],
                 on_sample: Optional[Callable[[str], None]] = None, gpu=None) -> Dict[str, List[float]]:
    """Interleaved timing: `repeats` rounds, each timing every step once in an order
    rotated round by round. Returns the seconds per call of each sample, by name.

    On a GPU (`gpu`, a fastlstm.device.GPU) a sample is timed by two of its
    events, recorded on the stream before the first call and after the last
    (each step waits for the GPU before it returns, so the two clocks agree
    but for the host's own noise); elsewhere by the host's clock."""
    names = list(steps)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            fn, n = steps[name], inner[name]
            if gpu is not None:
                start, end = gpu.event(), gpu.event()
                start.record()
                for _ in range(n):
                    fn()
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                seconds = time.perf_counter() - t0
            samples[name].append(seconds / n)
            if on_sample is not None:
                on_sample(name)
    return samples
