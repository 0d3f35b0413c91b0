"""The reference backend: a plain autograd loop, written to be read.

It is the oracle the other backends are tested against (in float64), and it
is deliberately naive: one step at a time, no fusion, no premultiplication.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def lstm_cell_reference(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """One LSTM step; see `fastlstm.backends` (the cell primitive).

    Shapes: x (B, I), h (B, R), c (B, H), w_ih (4H, I), w_hh (4H, R) -> h' (B, H), c' (B, H).

    Example:
        >>> x, h, c = torch.randn(2, 3), torch.zeros(2, 4), torch.zeros(2, 4)
        >>> h, c = lstm_cell_reference(x, h, c, torch.randn(16, 3), torch.randn(16, 4))
        >>> h.shape
        torch.Size([2, 4])
    """
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih
    if b_hh is not None:
        gates = gates + b_hh
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    return h_new, c_new


def lstm_layer_reference(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    w_hr: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer, one direction; see `fastlstm.backends` for the contract.

    Shapes: x (T, B, I), h0 (B, R), c0 (B, H) -> out (T, B, R), h_n, c_n.

    Example:
        >>> x, h0, c0 = torch.randn(5, 2, 3), torch.zeros(2, 4), torch.zeros(2, 4)
        >>> out, h, c = lstm_layer_reference(x, h0, c0, torch.randn(16, 3), torch.randn(16, 4))
        >>> out.shape
        torch.Size([5, 2, 4])
    """
    h, c = h0, c0
    rows = torch.arange(x.shape[1], device=x.device)
    outputs = []
    for t in range(x.shape[0]):
        h_new, c_new = lstm_cell_reference(x[t], h, c, w_ih, w_hh, b_ih, b_hh)
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        if batch_sizes is None:
            h, c = h_new, c_new
            outputs.append(h_new)
        else:
            live = (rows < int(batch_sizes[t])).unsqueeze(1)
            h = torch.where(live, h_new, h)
            c = torch.where(live, c_new, c)
            outputs.append(torch.where(live, h_new, torch.zeros_like(h_new)))
    if outputs:
        out = torch.stack(outputs)
    else:
        out = x.new_zeros(0, x.shape[1], h0.shape[1])
    return out, h, c
