"""The jit backend's LSTMCell path: one step, without the sequence machinery.

`lstm_cell_jit` is what `fastlstm.LSTMCell` runs on the "jit" backend. A cell
stepped from Python (`h, c = cell(x[t], (h, c))`, as in pytorch/examples'
time-sequence predictor) pays its fixed cost every step, so this path does
the least it can per call:

- Nothing is prepared from the weights: the products read `w.t()` views of
  the parameters as they are, and the biases are added where they are. A
  cache of prepared copies (summed biases, rescaled gate rows) could go stale
  without a trace: an edit through `.data` changes neither a parameter's
  `_version` nor its data pointer, and `bias.data[H:2H].fill_(1.0)` is a
  common forget-gate initialisation. So there is nothing to cache, and every
  call reads the parameters' current values.
- The forward is one TorchScript function of nine ATen ops: two GEMMs, the
  second bias, one sigmoid over all 4H gates (the g quarter is read through
  tanh first), and four ops for the cell update. Gates are i, f, g, o and the
  formulas are nn.LSTMCell's, so float64 results agree with it to rounding.
- The backward is one TorchScript function: the cell's pointwise gradient in
  six ATen ops (with aten's fused `sigmoid_backward`/`tanh_backward`, which
  compute s(1 - s) and 1 - y^2 times the incoming gradient in one pass), then
  only the GEMMs whose gradients are asked for. Beyond what it returns it
  allocates the pre-activation gradient and one temporary of each of the
  shapes (B, 4H) and (B, H).
- Without autograd (no_grad, inference_mode, or nothing requires grad) the
  forward runs on its own and keeps nothing.

Past first derivatives (create_graph, torch.func), the layer's rules apply:
see `fastlstm.backends.jit`.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import ScriptedOnce, differentiable_backward, needs_autograd, reference_grads, transforms_active
from .reference import lstm_cell_reference

__all__ = ["lstm_cell_jit", "LSTMCellJitFunction"]

_HALF_TYPES = (torch.float16, torch.bfloat16)


def _cell_forward(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    save: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One step: (h', c') and, when `save`, what the backward reads.

    Shapes: x (B, I), h and c (B, H), w_ih (4H, I), w_hh (4H, H), biases (4H,)
    -> h' (B, H), c' (B, H), S (B, 4H) = sigmoid of the gate pre-activations
    (its g quarter unused), G (B, H) = tanh(g), TC (B, H) = tanh(c'). Without
    `save`, TC is h' (no tanh(c') is kept apart).
    """
    # linear, not addmm: TorchScript splits addmm(b, x, w.t()) into mm + add
    # (for fusers the CPU does not have), a second pass over the gates.
    z = torch.nn.functional.linear(x, w_ih, b_ih)
    z.addmm_(h, w_hh.t())
    if b_hh is not None:
        z.add_(b_hh)
    i, f, g, o = z.chunk(4, 1)
    g = torch.tanh(g)
    # One sigmoid over all 4H columns is cheaper than three over the i, f and
    # o quarters; the g quarter, already read, is overwritten and unused.
    z.sigmoid_()
    c_new = torch.mul(f, c).addcmul_(i, g)
    if save:
        tc = torch.tanh(c_new)
        return torch.mul(o, tc), c_new, z, g, tc
    h_new = torch.tanh(c_new).mul_(o)
    return h_new, c_new, z, g, h_new


def _cell_backward(
    dh_new: Tensor,
    dc_new: Tensor,
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    S: Tensor,
    G: Tensor,
    TC: Tensor,
    need_dx: bool,
    need_dh: bool,
    need_dw_ih: bool,
    need_dw_hh: bool,
    need_db: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients of one step from what `_cell_forward` saved.

    Returns dx (B, I), dh (B, H), dc (B, H), dw_ih (4H, I), dw_hh (4H, H) and
    db (4H,) (the gradient of either bias); those not needed are empty.
    """
    i, f, _, o = S.chunk(4, 1)
    # dc = dc' + dh' * o * (1 - tanh(c')^2)
    dc = torch.ops.aten.tanh_backward(dh_new * o, TC).add_(dc_new)
    # The gradient reaching each gate's activation, in one (B, 4H) block:
    # i: dc * g, f: dc * c, g: dc * i, o: dh' * tanh(c').
    P = torch.empty_like(S)
    p_i, p_f, p_g, p_o = P.chunk(4, 1)
    torch.mul(dc, G, out=p_i)
    torch.mul(dc, c, out=p_f)
    torch.mul(dc, i, out=p_g)
    torch.mul(dh_new, TC, out=p_o)
    # Through the activations: s(1 - s) for the sigmoid gates in one pass
    # (wrong in the g quarter), then 1 - g^2 written over the g quarter.
    dZ = torch.ops.aten.sigmoid_backward(P, S)
    H = G.size(1)
    torch.ops.aten.tanh_backward(p_g, G, grad_input=dZ.narrow(1, 2 * H, H))
    dc_prev = dc.mul_(f)
    empty = torch.empty(0, dtype=S.dtype, device=S.device)
    dx = torch.mm(dZ, w_ih) if need_dx else empty
    dh = torch.mm(dZ, w_hh) if need_dh else empty
    dw_ih = torch.mm(dZ.t(), x) if need_dw_ih else empty
    dw_hh = torch.mm(dZ.t(), h) if need_dw_hh else empty
    db = dZ.sum(0) if need_db else empty
    return dx, dh, dc_prev, dw_ih, dw_hh, db


# (forward, backward) as ScriptFunctions, compiled once on first use.
_scripted = ScriptedOnce(_cell_forward, _cell_backward)


class LSTMCellJitFunction(torch.autograd.Function):
    """One LSTM step with a hand-written backward; see `lstm_cell_jit`.

    Saves the inputs and the step's activations (not h' or c', so in-place
    ops on the returned states are safe); everything goes through
    `save_for_backward`. Past first derivatives the backward recomputes the
    step with the reference cell (`reference_grads`).
    """

    @staticmethod
    def forward(ctx, x, h, c, w_ih, w_hh, b_ih, b_hh):
        h_new, c_new, S, G, TC = _scripted()[0](x, h, c, w_ih, w_hh, b_ih, b_hh, True)
        ctx.save_for_backward(x, h, c, w_ih, w_hh, b_ih, b_hh, S, G, TC)
        return h_new, c_new

    @staticmethod
    def backward(ctx, dh_new, dc_new):
        x, h, c, w_ih, w_hh, b_ih, b_hh, S, G, TC = ctx.saved_tensors
        need = ctx.needs_input_grad
        if differentiable_backward((dh_new, dc_new)):
            inputs = (x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, None)
            grads = reference_grads(inputs, None, (None, dh_new, dc_new), need + (False,))
            if grads[0] is not None:
                grads[0] = grads[0].squeeze(0)
            return tuple(grads[:7])
        has_ih, has_hh = b_ih is not None, b_hh is not None
        need_db = (has_ih and need[5]) or (has_hh and need[6])
        dx, dh, dc, dw_ih, dw_hh, db = _scripted()[1](
            dh_new, dc_new, x, h, c, w_ih, w_hh, S, G, TC, need[0], need[1], need[3], need[4], need_db
        )
        db_ih = db if has_ih and need[5] else None
        db_hh = None
        if has_hh and need[6]:
            db_hh = db.clone() if db_ih is not None else db
        return (dx if need[0] else None, dh if need[1] else None, dc if need[2] else None,
                dw_ih if need[3] else None, dw_hh if need[4] else None, db_ih, db_hh)


def lstm_cell_jit(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """One LSTM step in TorchScript; see `fastlstm.backends` (the cell primitive).

    Shapes: x (B, I), h and c (B, H), w_ih (4H, I), w_hh (4H, H), b_ih/b_hh
    (4H,) or None -> h' (B, H), c' (B, H). float16 and bfloat16 run in
    float32 and return their own dtype.

    Example:
        >>> x, h, c = torch.randn(2, 3), torch.zeros(2, 4), torch.zeros(2, 4)
        >>> h, c = lstm_cell_jit(x, h, c, torch.randn(16, 3), torch.randn(16, 4))
        >>> h.shape
        torch.Size([2, 4])
    """
    if transforms_active(x, h, c, w_ih, w_hh, b_ih, b_hh):
        return lstm_cell_reference(x, h, c, w_ih, w_hh, b_ih, b_hh)
    if x.dtype in _HALF_TYPES:
        # fp32 state and accumulation; autograd casts the gradients back.
        args = [None if t is None else t.float() for t in (x, h, c, w_ih, w_hh, b_ih, b_hh)]
        h_new, c_new = lstm_cell_jit(*args)
        return h_new.to(x.dtype), c_new.to(x.dtype)
    if needs_autograd(x, h, c, w_ih, w_hh, b_ih, b_hh):
        return LSTMCellJitFunction.apply(x, h, c, w_ih, w_hh, b_ih, b_hh)
    h_new, c_new, _, _, _ = _scripted()[0](x, h, c, w_ih, w_hh, b_ih, b_hh, False)
    return h_new, c_new
