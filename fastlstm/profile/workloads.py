"""What one timed call does: its inputs, the call itself (infer or train) and the
float64 result it must match."""
import copy
from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn

def make_inputs(seq_len: int, batch: int, lstm: nn.LSTM, mode: str, seed: int = 0):
    """Input x (T, B, I) and, in training, an output gradient (T, B, H), in `lstm`'s
    dtype and device. In training x requires grad, as a layer's input does when
    anything below it trains (an embedding, another layer)."""
    w = lstm.weight_ih_l0
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(seq_len, batch, lstm.input_size, generator=g).to(w.device, w.dtype)
    grad_out = None
    if mode == "train":
        x.requires_grad_(True)
        out_size = lstm.proj_size or lstm.hidden_size
        d = 2 if lstm.bidirectional else 1
        grad_out = torch.randn(seq_len, batch, d * out_size, generator=g).to(w.device, w.dtype)
    return x, grad_out


def make_step(model: nn.Module, x: Tensor, mode: str, grad_out: Optional[Tensor] = None) -> Callable:
    """A function running one call of `model`: a forward under no_grad ("infer"), or
    forward + backward of `grad_out` ("train"). It waits for the GPU before it
    returns, so timing it times the work. Returns a dict of the results.

    Example:
        >>> ref = nn.LSTM(4, 8); x, g = make_inputs(5, 2, ref, "train")
        >>> sorted(make_step(ref, x, "train", g)())
        ['c_n', 'grad_input', 'h_n', 'out']
    """
    if mode not in ("infer", "train"):
        raise ValueError(f"make_step: mode must be 'infer' or 'train', got {mode!r}")
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    if mode == "infer":
        def step():
            with torch.no_grad():
                out, (h_n, c_n) = model(x)
            sync()
            return {"out": out, "h_n": _layered(h_n), "c_n": _layered(c_n)}
        return step

    if grad_out is None:
        raise ValueError("make_step: mode 'train' needs grad_out")
    params = list(model.parameters())

    def step():
        # Fresh gradients each call, so every call does the same work and allocations.
        x.grad = None
        for p in params:
            p.grad = None
        out, (h_n, c_n) = model(x)
        out.backward(grad_out)
        sync()
        return {"out": out.detach(), "h_n": _layered(h_n.detach()), "c_n": _layered(c_n.detach()),
                "grad_input": x.grad}
    return step


def _layered(state: Tensor) -> Tensor:
    # The one-layer baselines return states (B, H); nn.LSTM's are (L*D, B, H).
    return state.unsqueeze(0) if state.dim() == 2 else state


def reference_result(lstm: nn.LSTM, x: Tensor, mode: str, grad_out: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """What `make_step` should return, from a float64 copy of `lstm` on the same inputs."""
    ref = copy.deepcopy(lstm).double()
    x64 = x.detach().double().requires_grad_(mode == "train")
    g64 = grad_out.double() if grad_out is not None else None
    return {k: v.detach() for k, v in make_step(ref, x64, mode, g64)().items()}
