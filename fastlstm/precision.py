"""The precision really in force, and the answer tolerances that follow from it.

One place decides how close a result must be to a float64 nn.LSTM: the
profile's answer check, the benchmarks and the tests all ask
`answer_tolerance`. The tolerance follows the arithmetic that really ran, not
only the storage dtype:

- float64: tight.
- float32 on the CPU, or on CUDA with TF32 off: today's float32 values.
- float32 on CUDA with TF32 in force: a TF32 tolerance. TF32 keeps 10 bits of
  mantissa in the operands of a product (unit roundoff 2**-11, about 4.9e-4,
  the same as float16's), accumulating in float32. On an H200 the worst
  relative error of fastlstm's layers against a float64 nn.LSTM was 9e-4 with
  TF32 on and 1.6e-6 with it off (float16: 8e-4). So TF32 gets a tolerance of
  a few TF32 roundoffs: far from float32's, still orders of magnitude below
  what a wrong gate or a dropped term gives (errors of order 1e-1 to 1).
- bfloat16 and float16: their own.

Whether TF32 is in force depends on which of torch's settings a computation
follows (see `TF32_SETTINGS`):
- "cudnn": cuDNN's RNN setting (`torch.backends.cudnn.allow_tf32`, or in newer
  torch `torch.backends.cudnn.rnn.fp32_precision`), on by default. nn.LSTM on
  CUDA follows it for all its GEMMs, and fastlstm's Triton kernels for their
  recurrent products (the rule is the backend's own, `_dot_precision` in
  `fastlstm.backends.triton.plan`, reused here).
- "matmul": `torch.backends.cuda.matmul` (off by default), which every torch
  GEMM on CUDA follows: fastlstm's host GEMMs (the input projection, the weight
  gradients), the jit backend's products, the Python-loop baselines and
  nn.LSTMCell.
On the CPU no float32 product runs in TF32.

Example:
    >>> answer_tolerance(torch.float32, "cpu")
    (0.0001, 0.001)
    >>> answer_tolerance(torch.float32, "cuda", tf32=True)
    (0.005, 0.005)
"""
from typing import Dict, Iterable, Optional, Tuple, Union

import torch

Device = Union[str, torch.device]

# How close, by what is checked: (atol, rtol) with |got - want| <= atol + rtol |want|,
# against float64, by the precision in force.
# - "profile": a backend's call in `fastlstm profile` and the benchmarks, on
#   sequences up to thousands of steps (errors accumulate over T).
# - "module": a whole fastlstm.LSTM / LSTMCell in the tests (short sequences).
# - "kernel": the Triton layer primitive in tests/test_triton_backend.py, where
#   atol is taken relative to max(1, max |reference|) (weight gradients are
#   sums over T*B rows and grow with them).
# TF32's values are a few of its unit roundoffs (2**-11 ~ 4.9e-4): "profile"
# about 10 (18x the largest error, 2.8e-4, of the H200's fp32 profile rows
# with TF32 on), the tests about 4 (2x the worst relative error, 9e-4, of the
# H200's layer checks with TF32 on; 77x the 2.6e-5 of the native unit tests).
TOLERANCES: Dict[str, Dict[str, Tuple[float, float]]] = {
    "profile": {
        "float64": (1e-8, 1e-8),
        "float32": (1e-4, 1e-3),
        "tf32": (5e-3, 5e-3),
        "bfloat16": (6e-2, 6e-2),
        "float16": (1e-2, 1e-2),
    },
    "module": {
        "float64": (1e-9, 1e-9),
        "float32": (2e-5, 1e-4),
        "tf32": (2e-3, 2e-3),
        "bfloat16": (5e-2, 5e-2),
        "float16": (1e-2, 1e-2),
    },
    "kernel": {
        "float64": (1e-9, 1e-9),
        "float32": (1e-5, 1e-5),
        "tf32": (2e-3, 2e-3),
        "bfloat16": (2e-2, 2e-2),
        "float16": (5e-3, 5e-3),
    },
}
CHECKS = tuple(TOLERANCES)

# Which TF32 settings a backend's float32 products follow on CUDA, by name
# (fastlstm's backends and the profile's baselines); others follow "matmul".
TF32_SETTINGS: Dict[str, Tuple[str, ...]] = {
    # nn.LSTM: cuDNN's RNN runs every GEMM under its own setting.
    "torch": ("cudnn",),
    # Recurrent products in the kernels (cuDNN's setting, as nn.LSTM); the
    # input projection and the weight gradients are torch GEMMs.
    "triton": ("cudnn", "matmul"),
}
_SETTINGS = ("cudnn", "matmul")


def _device_type(device: Device) -> str:
    return device if isinstance(device, str) and ":" not in device else torch.device(device).type


def cudnn_tf32() -> bool:
    """cuDNN's RNN setting allows TF32 (the rule of the Triton backend's
    `_dot_precision`, which follows nn.LSTM)."""
    from .backends.triton import _dot_precision

    return _dot_precision(torch.float32) == "tf32"


def matmul_tf32() -> bool:
    """torch's CUDA GEMMs may run float32 in TF32 (`torch.backends.cuda.matmul`)."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if isinstance(precision, str) and precision != "none":
        return precision == "tf32"
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:  # newer torch refuses the legacy flag once the new API was used
        return torch.get_float32_matmul_precision() != "highest"


def tf32_settings(backend: Optional[str], workload: str = "layer") -> Tuple[str, ...]:
    """The TF32 settings ("cudnn", "matmul") that `backend`'s float32 products follow
    on CUDA; None: all of them (a check that does not know which ran).
    nn.LSTMCell ("torch" in the cell workload) computes its gates with torch GEMMs."""
    if backend is None:
        return _SETTINGS
    if workload == "cell" and backend == "torch":
        return ("matmul",)
    return TF32_SETTINGS.get(backend, ("matmul",))


def tf32_in_force(device: Device, settings: Iterable[str] = _SETTINGS) -> bool:
    """Do float32 products on `device` run in TF32 under any of `settings`
    ("cudnn", "matmul")? Never on the CPU."""
    if _device_type(device) != "cuda":
        return False
    settings = tuple(settings)
    bad = [s for s in settings if s not in _SETTINGS]
    if bad:
        raise ValueError(f"tf32_in_force: settings must be among {', '.join(_SETTINGS)}, got {bad}")
    return ("cudnn" in settings and cudnn_tf32()) or ("matmul" in settings and matmul_tf32())


def precision_in_force(dtype: torch.dtype, device: Device, backend: Optional[str] = None,
                       workload: str = "layer", tf32: Optional[bool] = None) -> str:
    """The arithmetic a `dtype` computation on `device` really runs: "float64",
    "float32", "tf32", "bfloat16" or "float16". `tf32` forces the TF32 answer
    for float32 on CUDA; by default it is read from torch's settings for
    `backend` (see `tf32_settings`)."""
    names = {torch.float64: "float64", torch.float32: "float32", torch.bfloat16: "bfloat16",
             torch.float16: "float16"}
    if dtype not in names:
        raise ValueError(f"precision_in_force: dtype must be one of {', '.join(map(str, names))}, got {dtype}")
    if dtype != torch.float32 or _device_type(device) != "cuda":
        return names[dtype]
    if tf32 is None:
        tf32 = tf32_in_force(device, tf32_settings(backend, workload))
    return "tf32" if tf32 else "float32"


def answer_tolerance(dtype: torch.dtype, device: Device, backend: Optional[str] = None, *,
                     check: str = "profile", workload: str = "layer",
                     tf32: Optional[bool] = None) -> Tuple[float, float]:
    """(atol, rtol) for a `dtype` result on `device` against float64, by what is
    checked (`check`: "profile", "module" or "kernel", see TOLERANCES) and the
    precision in force (`precision_in_force`; `tf32` forces it).

    Example:
        >>> answer_tolerance(torch.float32, "cuda", tf32=False, check="kernel")
        (1e-05, 1e-05)
    """
    if check not in TOLERANCES:
        raise ValueError(f"answer_tolerance: check must be one of {', '.join(CHECKS)}, got {check!r}")
    return TOLERANCES[check][precision_in_force(dtype, device, backend, workload, tf32)]
