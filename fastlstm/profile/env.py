"""What a figure depends on: device, versions, threads, load, commit and time."""
import datetime
import importlib.metadata
import os
import platform
import subprocess
import threading
import time
from typing import Dict, Optional, Tuple

import torch

from ..device import gpu


def git_commit() -> Optional[str]:
    """The short commit of the checkout fastlstm runs from (with "-dirty" when it has
    uncommitted changes to tracked files), or None outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _package_version(name: str) -> Optional[str]:
    # Read from the installed metadata, so that Triton is never imported here.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    """A readable name for `device`: the GPU's name, or the CPU model."""
    g = gpu(device)
    if g is not None:
        return g.properties.name
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def environment(device: torch.device) -> Dict[str, object]:
    """What a figure depends on: device, versions, threads, commit and time.

    Example:
        >>> environment(torch.device("cpu"))["torch_version"] == torch.__version__
        True
    """
    return {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "load_avg_1m": _load_average(),
        "torch_version": torch.__version__,
        "triton_version": _package_version("triton"),
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class LoadMonitor:
    """Samples the 1-minute load average every `interval_s` seconds in a daemon thread,
    keeping its maximum over the whole run and over the current window (one group of
    rows): a run that starts on an idle machine can go on on a busy one.

    Example:
        >>> with LoadMonitor() as load:
        ...     load.new_window()
        ...     peak = load.window_max()
    """

    def __init__(self, interval_s: float = 2.0):
        self.interval_s = interval_s
        self.run_max: Optional[float] = None
        self._window: Optional[float] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def sample(self) -> Optional[float]:
        load = _load_average()
        if load is not None:
            with self._lock:
                self.run_max = load if self.run_max is None else max(self.run_max, load)
                self._window = load if self._window is None else max(self._window, load)
        return load

    def new_window(self) -> Optional[float]:
        """Start a new window; returns the load now."""
        with self._lock:
            self._window = None
        return self.sample()

    def window_max(self) -> Optional[float]:
        self.sample()
        return self._window

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "LoadMonitor":
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="fastlstm-load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def busy(load: Optional[float], threads: int) -> bool:
    """Was something else running? A load average of at least one more than our own
    torch threads means another runnable process on average; with several threads
    on shared cores, an OpenMP thread that loses its core stalls the others at each
    barrier, and times inflate many-fold, unevenly."""
    return load is not None and load >= threads + 1


def _cpu_times() -> Optional[Tuple[int, int]]:
    # (idle, total) jiffies of all cores, from the first line of /proc/stat (Linux).
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return fields[3] + fields[4], sum(fields)


def cores_in_use(seconds: float = 0.5) -> Optional[float]:
    """How many cores were busy, on average, over the next `seconds` (Linux; else None).
    Taken before a profile starts, it is what other processes use: the 1-minute load
    average still counts a run that ended a minute ago."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times()
    total = second[1] - first[1]
    if total <= 0:
        return None
    return round((1 - (second[0] - first[0]) / total) * (os.cpu_count() or 1), 2)
