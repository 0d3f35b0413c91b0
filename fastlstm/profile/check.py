"""The answer check: a backend's results against the float64 reference, by name,
within the tolerance of the precision in force (`fastlstm.precision`)."""
from typing import Dict, Optional

import torch
from torch import Tensor

from ..precision import TOLERANCES as _BY_CHECK, answer_tolerance

# (atol, rtol) against a float64 nn.LSTM where no TF32 is in force (the CPU), by
# dtype. Looser than the unit tests' because errors accumulate over long
# sequences; a wrong gate order or a dropped term still misses by orders of
# magnitude. On CUDA, float32 gets TF32's where torch's settings allow it.
TOLERANCES = {dtype: _BY_CHECK["profile"][str(dtype).replace("torch.", "")]
              for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16)}


def compare(got: Dict[str, Tensor], want: Dict[str, Tensor], dtype: torch.dtype, device=None,
            backend: Optional[str] = None, workload: str = "layer"):
    """(ok, max_abs_err, message): is every tensor in `want` matched by `got`,
    within the tolerance for `dtype` as computed by `backend` on `device`
    (`fastlstm.precision.answer_tolerance`; |got - want| <= atol + rtol |want|)?
    `device` defaults to where `got` lives; `backend` None means any (TF32
    counts as in force if any of torch's settings allows it)."""
    if device is None:
        device = next((g.device for g in got.values() if isinstance(g, Tensor)), torch.device("cpu"))
    atol, rtol = answer_tolerance(dtype, device, backend, check="profile", workload=workload)
    worst, problems = 0.0, []
    for name, w in want.items():
        g = got.get(name)
        if g is None:
            problems.append(f"{name} is missing")
            continue
        if tuple(g.shape) != tuple(w.shape):
            problems.append(f"{name} has shape {tuple(g.shape)}, expected {tuple(w.shape)}")
            continue
        diff = (g.detach().double() - w).abs()
        err = float(diff.max()) if diff.numel() else 0.0
        if not torch.isfinite(g).all():
            err = float("inf")
        worst = max(worst, err)
        excess = diff - rtol * w.abs()
        if err == float("inf") or (excess.numel() and float(excess.max()) > atol):
            problems.append(f"{name}: max abs error {err:.3g} (atol {atol:g}, rtol {rtol:g})")
    return not problems, worst, "; ".join(problems)
