"""What one timed call does: its inputs, the call itself (infer or train) and the
float64 result it must match, for each workload.

- "layer": one call of an LSTM layer (`nn.LSTM` and the modules computing it)
  on the whole sequence x (T, B, I).
- "cell": an `LSTMCell` stepped from Python over the T steps, as the
  time-sequence predictor of pytorch/examples does: `h, c = cell(x[t], (h, c))`
  from zero states, the outputs h stacked into (T, B, H). It times what a
  per-step loop costs: T calls, each with its own dispatch and (in training)
  its own autograd node. Backends: fastlstm.LSTMCell ("jit", "triton",
  "reference") and torch.nn.LSTMCell ("torch"), on the same weights.

Infer runs the call under no_grad; train runs it and backpropagates a random
output gradient through the outputs (T, B, H), into the weights and the input.

A layer workload may be bidirectional (`make_reference_module(..., bidirectional=True)`)
and may take packed input (`make_inputs(..., packed=True)`: a PackedSequence of
sequences of different lengths, in unsorted order, as a padded batch of
sentences is).
"""
import copy
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from ..device import gpu
from ..modules import LSTMCell
from .models import KNOWN_BACKENDS, build_model, unavailable_reason

WORKLOADS = ("layer", "cell")
# The backends with an LSTMCell: fastlstm's (fastlstm.LSTMCell) and torch's (nn.LSTMCell).
CELL_BACKENDS = ("jit", "triton", "reference", "torch")


def make_reference_module(workload: str, input_size: int, hidden_size: int, layers: int, dtype, device,
                          seed: int, bidirectional: bool = False) -> nn.Module:
    """The torch module a workload is measured against (seeded): nn.LSTM for "layer",
    nn.LSTMCell for "cell" (one layer, one direction)."""
    torch.manual_seed(seed)
    if workload == "layer":
        return nn.LSTM(input_size, hidden_size, num_layers=layers, bidirectional=bidirectional).to(
            device=device, dtype=dtype)
    if workload == "cell":
        if layers != 1 or bidirectional:
            raise ValueError(f"workload 'cell' steps one LSTMCell: layers must be 1 and one direction, got "
                             f"layers={layers}, bidirectional={bidirectional}")
        return nn.LSTMCell(input_size, hidden_size).to(device=device, dtype=dtype)
    raise ValueError(f"workload: expected one of {', '.join(WORKLOADS)}, got {workload!r}")


def backends_for(workload: str, names: List[str]) -> List[str]:
    """The backends of `names` that have a version for `workload`, in order."""
    return [n for n in names if workload != "cell" or n in CELL_BACKENDS]


def workload_unavailable_reason(workload: str, name: str, ref: nn.Module, device: torch.device,
                                packed: bool = False) -> Optional[str]:
    """Why backend `name` cannot be timed on `workload` here (on packed input with
    `packed`), or None when it can."""
    if workload == "cell":
        if name not in CELL_BACKENDS:
            known = name in KNOWN_BACKENDS
            return (f"{name} has no LSTMCell" if known else f"unknown backend {name!r}") + \
                f"; the cell workload runs {', '.join(CELL_BACKENDS)}"
        # Only Triton depends on the device; a one-layer stand-in asks it.
        return unavailable_reason(name, nn.LSTM(1, 1, device="meta"), device)
    return unavailable_reason(name, ref, device, packed)


def build_workload_model(workload: str, name: str, ref: nn.Module) -> nn.Module:
    """The module running `workload` with backend `name` on `ref`'s weights (shared)."""
    if workload == "cell":
        return ref if name == "torch" else LSTMCell.from_torch(ref, backend=name)
    return build_model(name, ref)


def packed_lengths(seq_len: int, batch: int, seed: int = 0) -> List[int]:
    """Sequence lengths of a packed batch: from T down to about T/2, evenly, the
    first T, in a seeded shuffled order (so the batch is packed unsorted).

    Example:
        >>> sorted(packed_lengths(8, 3), reverse=True)
        [8, 6, 4]
    """
    lengths = [seq_len - (seq_len // 2) * k // max(1, batch - 1) for k in range(batch)]
    g = torch.Generator().manual_seed(seed + 7)
    return [lengths[i] for i in torch.randperm(batch, generator=g).tolist()]


def make_inputs(seq_len: int, batch: int, lstm: nn.Module, mode: str, seed: int = 0, packed: bool = False):
    """Input x (T, B, I) and, in training, an output gradient (T, B, H) (D*H for a
    bidirectional layer, R with a projection), in `lstm`'s dtype and device; `lstm`
    is an nn.LSTM or an nn.LSTMCell. In training x requires grad, as a layer's input
    does when anything below it trains (an embedding, another layer).

    With `packed` (nn.LSTM only), x is a PackedSequence of B sequences of
    `packed_lengths` (its data (N, I), N the sum of the lengths, requires grad in
    training) and the output gradient is (N, D*H), for the output's data."""
    cell = isinstance(lstm, nn.LSTMCell)
    if packed and cell:
        raise ValueError("make_inputs: packed input is for nn.LSTM, not nn.LSTMCell")
    w = lstm.weight_ih if cell else lstm.weight_ih_l0
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(seq_len, batch, lstm.input_size, generator=g).to(w.device, w.dtype)
    if packed:
        x = pack_padded_sequence(x, torch.tensor(packed_lengths(seq_len, batch, seed)), enforce_sorted=False)
    grad_out = None
    if mode == "train":
        _data(x).requires_grad_(True)
        if cell:
            out_size = lstm.hidden_size
        else:
            out_size = (2 if lstm.bidirectional else 1) * (lstm.proj_size or lstm.hidden_size)
        shape = (x.data.shape[0],) if packed else (seq_len, batch)
        grad_out = torch.randn(*shape, out_size, generator=g).to(w.device, w.dtype)
    return x, grad_out


def _data(x: Union[Tensor, PackedSequence]) -> Tensor:
    return x.data if isinstance(x, PackedSequence) else x


def make_step(model: nn.Module, x: Tensor, mode: str, grad_out: Optional[Tensor] = None) -> Callable:
    """A function running one call of `model`: a forward under no_grad ("infer"), or
    forward + backward of `grad_out` ("train"). An nn.LSTMCell (fastlstm's too) is
    stepped over x's T steps in a Python loop (the "cell" workload). It waits for
    the GPU before it returns, so timing it times the work. Returns a dict of the
    results.

    Example:
        >>> ref = nn.LSTM(4, 8); x, g = make_inputs(5, 2, ref, "train")
        >>> sorted(make_step(ref, x, "train", g)())
        ['c_n', 'grad_input', 'h_n', 'out']
    """
    if mode not in ("infer", "train"):
        raise ValueError(f"make_step: mode must be 'infer' or 'train', got {mode!r}")
    if mode == "train" and grad_out is None:
        raise ValueError("make_step: mode 'train' needs grad_out")
    xd = _data(x)
    g = gpu(xd.device)
    sync = g.synchronize if g is not None else (lambda: None)
    forward = _cell_loop(model) if isinstance(model, nn.LSTMCell) else model

    if mode == "infer":
        def step():
            with torch.no_grad():
                out, (h_n, c_n) = forward(x)
            sync()
            return {"out": _data(out), "h_n": _layered(h_n), "c_n": _layered(c_n)}
        return step

    params = list(model.parameters())

    def step():
        # Fresh gradients each call, so every call does the same work and allocations.
        xd.grad = None
        for p in params:
            p.grad = None
        out, (h_n, c_n) = forward(x)
        _data(out).backward(grad_out)
        sync()
        return {"out": _data(out).detach(), "h_n": _layered(h_n.detach()), "c_n": _layered(c_n.detach()),
                "grad_input": xd.grad}
    return step


def _cell_loop(cell: nn.LSTMCell) -> Callable:
    """x (T, B, I) -> (out (T, B, H), (h_T, c_T)), stepping `cell` once per time step."""
    def forward(x: Tensor):
        h = c = x.new_zeros(x.shape[1], cell.hidden_size)
        outs = []
        for t in range(x.shape[0]):
            h, c = cell(x[t], (h, c))
            outs.append(h)
        return torch.stack(outs), (h, c)
    return forward


def _layered(state: Tensor) -> Tensor:
    # Cells and the one-layer baselines return states (B, H); nn.LSTM's are (L*D, B, H).
    return state.unsqueeze(0) if state.dim() == 2 else state


def reference_result(lstm: nn.Module, x: Tensor, mode: str, grad_out: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """What `make_step` should return, from a float64 copy of `lstm` (an nn.LSTM, or an
    nn.LSTMCell stepped in a loop) on the same inputs."""
    ref = copy.deepcopy(lstm).double()
    if isinstance(x, PackedSequence):
        x64 = PackedSequence(x.data.detach().double().requires_grad_(mode == "train"), x.batch_sizes,
                             x.sorted_indices, x.unsorted_indices)
    else:
        x64 = x.detach().double().requires_grad_(mode == "train")
    g64 = grad_out.double() if grad_out is not None else None
    return {k: v.detach() for k, v in make_step(ref, x64, mode, g64)().items()}
