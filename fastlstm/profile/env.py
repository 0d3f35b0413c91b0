"""What a figure depends on: device, versions, threads, load, commit and time."""
import datetime
import importlib.metadata
import os
import platform
import subprocess
from typing import Dict, Optional

import torch


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
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
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
