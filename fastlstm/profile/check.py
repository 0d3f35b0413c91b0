"""The answer check: a backend's results against the float64 reference, by name."""
from typing import Dict

import torch
from torch import Tensor

# (atol, rtol) against a float64 nn.LSTM. Looser than the unit tests' because
# errors accumulate over long sequences; a wrong gate order or a dropped term
# still misses by orders of magnitude.
TOLERANCES = {
    torch.float64: (1e-8, 1e-8),
    torch.float32: (1e-4, 1e-3),
    torch.bfloat16: (6e-2, 6e-2),
    torch.float16: (1e-2, 1e-2),
}


def compare(got: Dict[str, Tensor], want: Dict[str, Tensor], dtype: torch.dtype):
    """(ok, max_abs_err, message): is every tensor in `want` matched by `got`,
    within TOLERANCES[dtype] (|got - want| <= atol + rtol |want|)?"""
    atol, rtol = TOLERANCES[dtype]
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
