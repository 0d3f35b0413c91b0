"""Backend choice, made at forward time from the input tensor.

Nothing here runs at import: `import fastlstm` probes no hardware and does not
import Triton. The Triton backend is imported the first time it is chosen.
"""
import functools
import importlib.util
import os
from typing import Callable, List, Optional, Union

import torch
from torch import Tensor

from .device import default_device, gpu, simulated

BACKENDS = ("auto", "jit", "triton", "reference")


def check_backend_name(name: object) -> str:
    """Return `name` if it is a known backend, else raise a ValueError naming it."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}; expected one of {', '.join(map(repr, BACKENDS))}"
        )
    return name


def triton_unavailable_reason(x) -> Optional[str]:
    """Why the Triton backend cannot run on `x` (a tensor or a device), or None when it can."""
    device = x.device if isinstance(x, Tensor) else torch.device(x)
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device.type == "meta":
        if not _triton_installed():
            return "the 'triton' package is not installed (pip install 'fastlstm[triton]')"
        return None  # shapes only: every backend gives them without running (as nn.LSTM's meta kernels)
    if device.type == "cpu" and not interpret:
        return (
            "the input is on the CPU, where Triton kernels run only under the "
            "interpreter (set TRITON_INTERPRET=1 before importing fastlstm); "
            "use backend='jit' for CPU tensors"
        )
    if device.type not in ("cpu", "cuda"):
        return f"Triton does not run on device type {device.type!r}"
    if not _triton_installed():
        return "the 'triton' package is not installed (pip install 'fastlstm[triton]')"
    g = gpu(device)
    if g is not None and (g.simulated or not interpret):
        return _capability_reason(g.properties.capability, torch.version.hip is not None)
    return None


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _capability_reason(capability, hip: bool) -> Optional[str]:
    """Triton's NVIDIA backend needs compute capability 7.5 (ROCm: no such bound).
    Asked at the first forward on a device (never at import)."""
    major, minor = capability
    if not hip and (major, minor) < (7, 5):
        return f"Triton needs compute capability 7.5 or newer, this GPU has {major}.{minor}"
    return None


def available_backends(x: Union[Tensor, torch.device, str, None] = None) -> List[str]:
    """The values of `backend=` that can run here, for tensors like `x`.

    `x` is a tensor, a device or a device string; None (the default) means
    this machine's usual device: CUDA when `torch.cuda.is_available()` (or the
    simulated GPU, see `fastlstm.device`), else the CPU (asking is when that is
    probed, never at import). "auto", "jit"
    and "reference" always run; "triton" is listed when it can run on that
    device (CUDA with Triton installed and compute capability 7.5 or newer, or
    the CPU under `TRITON_INTERPRET=1`); `triton_unavailable_reason(x)` says
    why not otherwise. A backend left out raises a RuntimeError naming the
    reason when a module is asked for it.

    Example:
        >>> available_backends(torch.device("cpu"))  # without TRITON_INTERPRET=1
        ['auto', 'jit', 'reference']
    """
    if x is None:
        x = default_device()
    names = ["auto", "jit", "reference"]
    if triton_unavailable_reason(x) is None:
        names.insert(2, "triton")
    return names


def _concrete_backend(name: str, x: Tensor) -> str:
    """`name` with "auto" resolved for `x`; raises when "triton" cannot run on `x`."""
    check_backend_name(name)
    if name == "auto":
        name = "jit"
        if gpu(x) is not None and x.dtype != torch.float64 and triton_unavailable_reason(x) is None:
            name = "triton"
    if name == "triton":
        reason = triton_unavailable_reason(x)
        if reason is not None:
            raise RuntimeError(
                f"backend 'triton' cannot run here: {reason}. "
                f"Available here: {', '.join(map(repr, available_backends(x)))}"
            )
    return name


def resolve_backend(name: str, x: Tensor) -> Callable:
    """Return the layer primitive (see `fastlstm.backends`) that runs `x` for `name`."""
    name = _concrete_backend(name, x)
    if name == "triton":
        from .backends.triton import lstm_layer_triton

        return lstm_layer_triton
    if name == "jit":
        from .backends.jit import lstm_layer_jit

        return lstm_layer_jit
    from .backends.reference import lstm_layer_reference

    return lstm_layer_reference


# [lstm_cell_jit] once it has been imported (at the first "jit" cell call, not at import).
_JIT_CELL: list = []


def resolve_cell_backend(name: str, x: Tensor) -> Callable:
    """Return the cell primitive (see `fastlstm.backends`) that runs `x` for `name`."""
    if x.is_cpu and (name == "jit" or (name == "auto" and simulated() is None)) and _JIT_CELL:
        return _JIT_CELL[0]  # an LSTMCell stepped on the CPU comes here every step
    name = _concrete_backend(name, x)
    if name == "jit":
        from .backends.jit_cell import lstm_cell_jit

        _JIT_CELL[:] = [lstm_cell_jit]
        return lstm_cell_jit
    if name == "reference":
        from .backends.reference import lstm_cell_reference

        return lstm_cell_reference
    return functools.partial(_cell_from_layer, resolve_backend(name, x))


def _cell_from_layer(layer: Callable, x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """A cell primitive from a layer primitive: one step of a one-step sequence."""
    _, h_new, c_new = layer(x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, None, None)
    return h_new, c_new
