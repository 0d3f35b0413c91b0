"""Shared test helpers: run an LSTM on given inputs and collect every output and
gradient by name, so two runs can be compared name by name."""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fastlstm.precision import TOLERANCES as _BY_CHECK, answer_tolerance

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# (atol, rtol) against a float64 nn.LSTM, by the dtype the tested module runs in,
# where no TF32 is in force (the CPU). On CUDA `assert_same` asks
# fastlstm.precision, which gives float32 TF32's tolerance when torch's settings
# let the backend use it.
TOLERANCES = {dtype: _BY_CHECK["module"][str(dtype).replace("torch.", "")]
              for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16)}


# Where the Triton backend's tests put their tensors: the CPU under the
# interpreter, the GPU when the kernels are tested natively.
TRITON_DEVICE = "cpu" if INTERPRETED else "cuda"


def triton_can_run_here() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return INTERPRETED or torch.cuda.is_available()


@dataclass
class Case:
    """One drawn LSTM configuration and its inputs (time-major, float64)."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    bidirectional: bool = False
    proj_size: int = 0
    unbatched: bool = False
    packed: Optional[str] = None  # None, "sorted" or "unsorted"
    with_hx: bool = True
    train: bool = False
    dropout: float = 0.0
    seq_len: int = 4
    batch: int = 2
    lengths: List[int] = field(default_factory=list)
    seed: int = 0

    def kwargs(self) -> dict:
        return dict(
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            proj_size=self.proj_size,
        )

    def make_inputs(self):
        g = torch.Generator().manual_seed(self.seed)
        D = 2 if self.bidirectional else 1
        R = self.proj_size or self.hidden_size
        B = 1 if self.unbatched else self.batch
        x = torch.randn(self.seq_len, B, self.input_size, generator=g, dtype=torch.float64)
        h0 = torch.randn(self.num_layers * D, B, R, generator=g, dtype=torch.float64)
        c0 = torch.randn(self.num_layers * D, B, self.hidden_size, generator=g, dtype=torch.float64)
        return x, h0, c0


def run(module, case: Case, dtype, x, h0, c0, device="cpu") -> Dict[str, torch.Tensor]:
    """Forward and backward `module` on the case; return every output and gradient
    (as float64 on the CPU) keyed by name. Output gradients are random but seeded."""
    module.train(case.train)
    x = x.to(device=device, dtype=dtype)
    if case.unbatched:
        x = x[:, 0]
    if case.batch_first and not case.unbatched:
        x = x.transpose(0, 1)
    x = x.detach().clone().requires_grad_(True)
    inp = x
    if case.packed is not None:
        inp = pack_padded_sequence(
            x, torch.tensor(case.lengths), batch_first=case.batch_first,
            enforce_sorted=case.packed == "sorted",
        )
    hx = None
    leaves = {"input": x}
    if case.with_hx:
        h, c = h0.to(device=device, dtype=dtype), c0.to(device=device, dtype=dtype)
        if case.unbatched:
            h, c = h[:, 0], c[:, 0]
        h = h.detach().clone().requires_grad_(True)
        c = c.detach().clone().requires_grad_(True)
        hx = (h, c)
        leaves.update(h0=h, c0=c)

    torch.manual_seed(case.seed + 1)  # the dropout stream
    out, (h_n, c_n) = module(inp, hx)
    out_data = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(case.seed + 2)
    grads = [
        torch.randn(t.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
        for t in (out_data, h_n, c_n)
    ]
    loss = sum((t * gt).sum() for t, gt in zip((out_data, h_n, c_n), grads))
    params = dict(module.named_parameters())
    loss.backward()
    result = {"out": out_data, "h_n": h_n, "c_n": c_n}
    if isinstance(out, PackedSequence):
        result["batch_sizes"] = out.batch_sizes
    for name, t in {**leaves, **params}.items():
        result[f"grad_{name}"] = t.grad
    return {k: (v.detach().cpu().double() if v is not None else None) for k, v in result.items()}


def assert_same(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], dtype, what: str = "",
                device="cpu", backend: Optional[str] = None) -> None:
    """Every output and gradient of `got` (computed in `dtype` on `device` by
    `backend`) against `want` (float64), name by name, within the "module"
    tolerance of the precision in force."""
    atol, rtol = answer_tolerance(dtype, device, backend, check="module")
    assert got.keys() == want.keys(), f"{what}: names differ: {sorted(got)} vs {sorted(want)}"
    for name in want:
        a, b = got[name], want[name]
        if b is None:
            assert a is None or not a.any(), f"{what}: {name} should have no gradient"
            continue
        assert a is not None, f"{what}: {name} is missing (no gradient reached it)"
        assert a.shape == b.shape, f"{what}: {name} has shape {tuple(a.shape)}, expected {tuple(b.shape)}"
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {name}: {m}")


class KernelLaunches:
    """Every kernel launch of the Triton backend, seen where they all pass
    (`fastlstm.backends.triton.launch._kernel_launch`): `of(name).launches` is
    the list of one kernel's launches, each a dict of its arguments by name
    (tensors left out) plus `grid`, `cooperative` and `kernel_fn` (the kernel). With `run=False` nothing is launched (host
    code only); `around` wraps each real launch (a context manager factory).

    Example:
        >>> spy = KernelLaunches(monkeypatch)
        >>> ...  # a layer call
        >>> [launch["PERSISTENT"] for launch in spy.of("lstm_fwd_kernel").launches]
    """

    class _Log:
        def __init__(self):
            self.launches = []

    def __init__(self, monkeypatch, run: bool = True, around=None):
        from fastlstm.backends.triton import launch

        real = launch._kernel_launch
        self.logs: Dict[str, "KernelLaunches._Log"] = {}

        def spy(kernel, grid, kwargs, cooperative, device):
            name = getattr(kernel, "__name__", None) or kernel.fn.__name__
            # No tensors kept: a reference would change what autograd copies.
            args = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
            self.of(name).launches.append(dict(args, grid=tuple(grid), cooperative=cooperative, kernel_fn=kernel))
            if run:
                if around is None:
                    real(kernel, grid, kwargs, cooperative, device)
                else:
                    with around():
                        real(kernel, grid, kwargs, cooperative, device)

        monkeypatch.setattr(launch, "_kernel_launch", spy)

    def of(self, name: str) -> "KernelLaunches._Log":
        return self.logs.setdefault(name, KernelLaunches._Log())

    def all(self) -> List[dict]:
        return [dict(launch, kernel=name) for name, log in self.logs.items() for launch in log.launches]
