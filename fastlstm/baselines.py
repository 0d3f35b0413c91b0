"""Baselines that benchmarks, the profiler and the demos compare against.

These are what people use today, written the way they are usually written:
- `TutorialLSTM`: the from-scratch LSTM of the tutorials, with per-gate weight
  matrices and eight matmuls per step.
- `ScriptedCellLSTM`: a plain TorchScript cell loop in the style of PyTorch's
  fastrnns benchmark (one fused-weight cell per step, autograd does the rest).
`torch.nn.LSTM` itself (oneDNN on CPU, cuDNN on CUDA) is the main baseline.
"""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .backends._common import ScriptedOnce

GATES = ("i", "f", "g", "o")


class TutorialLSTM(nn.Module):
    """A single-layer LSTM as tutorials write it: per-gate weights, 8 matmuls a step.

    Shapes: x (T, B, I), hx = (h (B, H), c (B, H)) -> out (T, B, H), (h, c).
    `from_lstm` copies the weights of a one-layer `nn.LSTM` so outputs match.

    Example:
        >>> m = TutorialLSTM(10, 20)
        >>> out, (h, c) = m(torch.randn(5, 3, 10))
    """

    def __init__(self, input_size: int, hidden_size: int, device=None, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        kw = dict(device=device, dtype=dtype)
        for g in GATES:
            setattr(self, f"W_x{g}", nn.Parameter(torch.empty(input_size, hidden_size, **kw)))
            setattr(self, f"W_h{g}", nn.Parameter(torch.empty(hidden_size, hidden_size, **kw)))
            setattr(self, f"b_{g}", nn.Parameter(torch.empty(hidden_size, **kw)))
        stdv = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "TutorialLSTM":
        if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size or not lstm.bias:
            raise ValueError("TutorialLSTM.from_lstm: expected a one-layer, one-direction LSTM with bias")
        w = lstm.weight_ih_l0
        m = cls(lstm.input_size, lstm.hidden_size, device=w.device, dtype=w.dtype)
        H = lstm.hidden_size
        with torch.no_grad():
            for k, g in enumerate(GATES):
                rows = slice(k * H, (k + 1) * H)
                getattr(m, f"W_x{g}").copy_(lstm.weight_ih_l0[rows].t())
                getattr(m, f"W_h{g}").copy_(lstm.weight_hh_l0[rows].t())
                getattr(m, f"b_{g}").copy_(lstm.bias_ih_l0[rows] + lstm.bias_hh_l0[rows])
        return m

    def forward(self, x: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None):
        if hx is None:
            h = x.new_zeros(x.shape[1], self.hidden_size)
            c = x.new_zeros(x.shape[1], self.hidden_size)
        else:
            h, c = hx
        outputs = []
        for x_t in x.unbind(0):
            i = torch.sigmoid(x_t @ self.W_xi + h @ self.W_hi + self.b_i)
            f = torch.sigmoid(x_t @ self.W_xf + h @ self.W_hf + self.b_f)
            g = torch.tanh(x_t @ self.W_xg + h @ self.W_hg + self.b_g)
            o = torch.sigmoid(x_t @ self.W_xo + h @ self.W_ho + self.b_o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs), (h, c)


def _scripted_cell_loop(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                        b_ih: Tensor, b_hh: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    outputs: List[Tensor] = []
    for x_t in x.unbind(0):
        gates = torch.mm(x_t, w_ih.t()) + torch.mm(h, w_hh.t()) + b_ih + b_hh
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


_scripted = ScriptedOnce(_scripted_cell_loop)  # scripted on first use


class ScriptedCellLSTM(nn.Module):
    """A TorchScript cell loop as in PyTorch's fastrnns benchmark ("jit" variant).

    Shapes: x (T, B, I) -> out (T, B, H), (h, c). Autograd differentiates it.

    Example:
        >>> m = ScriptedCellLSTM.from_lstm(nn.LSTM(10, 20))
        >>> out, (h, c) = m(torch.randn(5, 3, 10))
    """

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size or not lstm.bias:
            raise ValueError("ScriptedCellLSTM: expected a one-layer, one-direction LSTM with bias")
        self.hidden_size = lstm.hidden_size
        self.lstm = lstm

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "ScriptedCellLSTM":
        return cls(lstm)

    def forward(self, x: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None):
        if hx is None:
            h = x.new_zeros(x.shape[1], self.hidden_size)
            hx = (h, h)
        m = self.lstm
        out, h, c = _scripted()[0](x, hx[0], hx[1], m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
        return out, (h, c)
