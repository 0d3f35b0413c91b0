"""Warm-up and interleaved timing: each repetition runs every backend once, in an
order rotated from one repetition to the next; short calls are repeated inside
one sample so that a sample lasts at least ~20 ms."""
import time
from typing import Callable, Dict, List, Optional

# A timing sample repeats short calls until it lasts about this long.
_MIN_SAMPLE_S = 0.02
_MAX_INNER = 50


def warm_up(step: Callable, max_calls: int = 3, budget_s: float = 0.5) -> float:
    """Run `step` up to `max_calls` times, stopping once `budget_s` is spent, and
    return the last call's seconds. TorchScript's profiling executor specialises
    and optimises over its first runs at a new shape, so one call is not enough.

    Example:
        >>> seconds = warm_up(lambda: None)
    """
    spent, last = 0.0, 0.0
    for _ in range(max_calls):
        t0 = time.perf_counter()
        step()
        last = time.perf_counter() - t0
        spent += last
        if spent > budget_s:
            break
    return last


def calls_per_sample(seconds_per_call: float) -> int:
    """How many calls one timing sample repeats so that it lasts about
    `_MIN_SAMPLE_S` (at most `_MAX_INNER`), from one warm call's seconds."""
    return max(1, min(_MAX_INNER, int(_MIN_SAMPLE_S / max(seconds_per_call, 1e-6)) + 1))


def timed_median(steps: Dict[str, Callable], repeats: int, inner: Dict[str, int],
                 on_sample: Optional[Callable[[str], None]] = None) -> Dict[str, List[float]]:
    """Interleaved timing: `repeats` rounds, each timing every step once in an order
    rotated round by round. Returns the seconds per call of each sample, by name."""
    names = list(steps)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            fn, n = steps[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
            if on_sample is not None:
                on_sample(name)
    return samples
