"""The jit backend: TorchScript loops with a hand-written backward (BPTT).

The CPU default. Forward and backward are `torch.jit.script` functions inside
one `torch.autograd.Function` (`LSTMJitFunction`); without autograd the
forward runs on its own and saves nothing.

How it is fast:
- Work is done in chunks of ~512 rows (T_chunk * B) of time steps: the input
  projection x @ W_ih^T + b is one GEMM per chunk, and the backward's dx and
  weight gradients are one GEMM per chunk, accumulated. Whole-sequence
  (T, B, 4H) buffers would be faster GEMMs on paper, but past glibc's mmap
  threshold (32 MB) every call faults in fresh pages, which cost more than the
  arithmetic; chunk-sized buffers stay in cache and are reused.
- Each step is one GEMM (oneDNN's linear in float32 on CPU, `addmm`
  otherwise) and eight cheap pointwise ops. tanh is ATen's slowest pointwise
  op here (4-10x sigmoid), so none is used: with tanh(z) = 2 sigmoid(2z) - 1 the
  g rows of the weights are doubled (exact in binary floating point), one
  sigmoid covers all 4H gates, and the cell state is carried as 2c so that
  tanh(c) is again a sigmoid. Without projection the hidden state is carried
  as h/2 (W_hh doubled once more) and `out` is doubled once at the end, which
  saves a multiply per step.
- The backward builds its per-step coefficients in bulk over each chunk,
  leaving four pointwise ops and one GEMM(+add) per step.
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from ._common import (DeferredError, FunctionCtx, ScriptedOnce, differentiable_backward, has_no_data, on_host,
                      needs_autograd, reference_grads, transforms_active)
from .reference import lstm_layer_reference

__all__ = ["lstm_layer_jit", "LSTMJitFunction"]

# Rows of the input projection per GEMM: big enough for an efficient GEMM,
# small enough that the block stays in cache until its steps consume it.
_PROJECTION_ROWS = 512
# Multiply-adds of one recurrent step (B * 4H * R) from which oneDNN beats addmm.
_MKLDNN_MIN_MACS = 2**19
# Steps from which reordering W_hh into oneDNN's blocked layout pays: the
# reorder costs ~2 plain GEMMs and saves ~20% of each. (Reordering W_hh^T for
# the backward costs ~6 GEMMs; in the step loop it saved nothing measurable.)
_REORDER_MIN_STEPS = 10


def _use_mkldnn(x: Tensor, H: int, R: int) -> bool:
    """Whether oneDNN's linear runs the GEMMs: float32 on CPU (it has no
    float64), and only when a step's GEMM is big enough: below ~0.5M
    multiply-adds, MKL's addmm is faster (fewer fixed costs)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[1] * 4 * H * R >= _MKLDNN_MIN_MACS
        and torch.backends.mkldnn.is_available()
        and torch._C._get_mkldnn_enabled()
    )


def _pack(w: Tensor, rows: int, reorder: bool, use_mkldnn: bool) -> Tensor:
    """w (N, K) for y = a @ w.t() in `_gemm`: w.t() for addmm; for oneDNN,
    w itself, or, when `reorder`, w reordered into oneDNN's blocked layout for
    GEMMs of `rows` rows. A reorder pays only when the GEMM repeats often
    enough: see `_REORDER_MIN_STEPS`."""
    if not use_mkldnn:
        return w.t()
    if reorder:
        return torch.ops.mkldnn._reorder_linear_weight(w, rows)
    return w


def _gemm(a: Tensor, w: Tensor, use_mkldnn: bool) -> Tensor:
    """a @ w.t() with w from `_pack`."""
    if use_mkldnn:
        no_scalars = torch.jit.annotate(List[Optional[Union[int, float, complex]]], [])
        return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", no_scalars, "")
    return torch.mm(a, w)


def _gemm_add(a: Tensor, w: Tensor, other: Tensor, use_mkldnn: bool) -> Tensor:
    """a @ w.t() + other with w from `_pack`, as a new tensor.

    Not oneDNN's fused "add" post-op: with a plain weight it runs ~70% slower
    than the GEMM alone; with a reordered one it is faster in isolation but
    slower inside the step loop (measured 104 against 69 us per step).
    """
    if use_mkldnn:
        return _gemm(a, w, True).add_(other)
    return torch.addmm(other, a, w)


def _wgrad_t(acc: Tensor, a: Tensor, g: Tensor, first: bool, use_mkldnn: bool) -> Tensor:
    """acc + a.t() @ g: a weight gradient, transposed (K, N), from the rows'
    inputs a (rows, K) and output gradients g (rows, N); acc is ignored when
    `first`. Transposed, because oneDNN then needs only the small a.t() made
    contiguous and takes g.t() as a weight view as it is; the gradient in
    weight layout would need the big g transposed (2 MB per 512-row chunk at
    4H=1024, ~100 us). The caller transposes the sum once at the end.
    """
    if use_mkldnn:
        y = _gemm(a.t().contiguous(), g.t(), True)
        return y if first else acc.add_(y)
    if first:
        return torch.mm(a.t(), g)
    return acc.addmm_(a.t(), g)


def _forward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    bias: Optional[Tensor],
    w_hr: Optional[Tensor],
    sizes: List[int],
    save: bool,
    use_mkldnn: bool,
    chunk: int,
    reorder: bool,
    plain: bool,
) -> Tuple[Tensor, Tensor, Tensor, List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
    """The forward loop on prepared weights (see `_prepare`), or with `plain`
    (never with `save`) on the layer's own weights, biases summed.

    Plain steps use tanh where the formulas have it and carry c and h as
    they are: seven ops a step instead of eight and no weights to prepare,
    which wins where a step's pointwise work is small (tanh costs 5-7x
    sigmoid per element here, but a few hundred elements cost less than one
    op's dispatch); see `_plain`.

    Returns out, h_n, c_n and, when `save`, what the backward needs, as one
    tensor per chunk of `chunk` steps: S (n, B, 4H) = [i, f, g/2, o],
    C (n, B, H) = 2c_t, TH (n, B, H) = tanh(c_t)/2 and, with projection,
    M (n, B, H) = o * tanh(c_t) / 2. Chunks, not (T, B, .) tensors, because
    allocations past glibc's mmap threshold (32 MB) are fresh pages every
    call, and faulting them in costs more than the arithmetic.
    """
    T, B, I = x.size(0), x.size(1), x.size(2)
    H = c0.size(1)
    R = h0.size(1)
    packed = len(sizes) > 0
    proj = w_hr is not None
    # Dead rows of `out` must read zero; with packing nothing else writes them.
    if packed:
        out = torch.zeros((T, B, R), dtype=x.dtype, device=x.device)
    else:
        out = torch.empty((T, B, R), dtype=x.dtype, device=x.device)
    S_l: List[Tensor] = []
    C_l: List[Tensor] = []
    TH_l: List[Tensor] = []
    M_l: List[Tensor] = []

    # One GEMM per chunk: the plain weight is as fast as a reordered one.
    wih_p = _pack(w_ih, chunk * B, False, use_mkldnn)
    whh_p = _pack(w_hh, B, reorder, use_mkldnn)
    whr_p = whh_p
    if w_hr is not None:
        whr_p = _pack(w_hr, B, reorder, use_mkldnn)

    # The state as carried: 2c and (without projection) h/2, or as it is when plain.
    c = c0.clone() if plain else c0 * 2.0
    cp = c
    hp = h0 if proj or plain else h0 * 0.5
    c_gain = 1.0 if plain else 4.0
    # A one-element tensor: ATen's tensor-tensor sub is ~2x its tensor-scalar sub.
    half = torch.full((1,), 0.5, dtype=x.dtype, device=x.device)
    # Views made once, not per step: each view op costs about as much as a
    # small pointwise op here.
    outs = out.unbind(0)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        n = t1 - t0
        xc = x[t0:t1].reshape(n * B, I)
        if use_mkldnn:
            no_scalars = torch.jit.annotate(List[Optional[Union[int, float, complex]]], [])
            xw = torch.ops.mkldnn._linear_pointwise(xc, wih_p, bias, "none", no_scalars, "")
        elif bias is None:
            xw = torch.mm(xc, wih_p)
        else:
            xw = torch.addmm(bias, xc, wih_p)
        # The projection block becomes the saved activations S, in place.
        xw = xw.view(n, B, 4 * H)
        xs = xw.unbind(0)
        gates = xw.view(n, B, 4, H)
        i_s = gates[:, :, 0].unbind(0)
        f_s = gates[:, :, 1].unbind(0)
        u_s = gates[:, :, 2].unbind(0)
        o_s = gates[:, :, 3].unbind(0)
        Cs = xs
        THs = xs
        Ms = xs
        if save:
            S_l.append(xw)
            Cj = torch.empty((n, B, H), dtype=x.dtype, device=x.device)
            THj = torch.empty((n, B, H), dtype=x.dtype, device=x.device)
            C_l.append(Cj)
            TH_l.append(THj)
            Cs = Cj.unbind(0)
            THs = THj.unbind(0)
            if proj:
                # Zeros: the gradient of w_hr multiplies dead rows by them.
                if packed:
                    Mj = torch.zeros((n, B, H), dtype=x.dtype, device=x.device)
                else:
                    Mj = torch.empty((n, B, H), dtype=x.dtype, device=x.device)
                M_l.append(Mj)
                Ms = Mj.unbind(0)
        for t in range(t0, t1):
            k = t - t0
            s = xs[k]
            i, f, u, o = i_s[k], f_s[k], u_s[k], o_s[k]
            hl = hp
            ot = outs[t]
            cl = cp
            bs = B
            if packed:
                bs = sizes[t]
                s, i, f, u, o = s[:bs], i[:bs], f[:bs], u[:bs], o[:bs]
                hl = hp[:bs]
                ot = ot[:bs]
                cl = cp[:bs]
            if use_mkldnn:
                s.add_(_gemm(hl, whh_p, True))
            else:
                s.addmm_(hl, whh_p)
            if plain:
                u = torch.tanh(u)
                s.sigmoid_()
            else:
                s.sigmoid_()
                u.sub_(half)
            # 2c_t = f * 2c_{t-1} + 4 * i * (g/2); plain: c_t = f * c_{t-1} + i * g
            if save:
                cn = Cs[k]
                if packed:
                    cn = cn[:bs]
                torch.mul(f, cl, out=cn)
                cp = Cs[k]
            else:
                cn = cl.mul_(f)
            cn.addcmul_(i, u, value=c_gain)
            if save:
                th = THs[k]
                if packed:
                    th = th[:bs]
                torch.sigmoid(cn, out=th)
                th.sub_(half)
            elif plain:
                th = torch.tanh(cn)
            else:
                th = torch.sigmoid(cn)
                th.sub_(half)
            if proj:
                if save:
                    m = Ms[k]
                    if packed:
                        m = m[:bs]
                    torch.mul(o, th, out=m)
                else:
                    m = torch.mul(o, th)
                if use_mkldnn:
                    ot.copy_(_gemm(m, whr_p, True))
                else:
                    torch.mm(m, whr_p, out=ot)
            else:
                torch.mul(o, th, out=ot)
            hp = outs[t]
    if not proj and not plain:
        out.mul_(2.0)

    c_unit = 1.0 if plain else 0.5  # from c as carried to c
    if not packed:
        return out, out[T - 1].clone(), cp * c_unit, S_l, C_l, TH_l, M_l
    # A row's final state is at its last live step: rows [sizes[t+1], sizes[t]) end at t.
    h_n = h0.clone()
    c_n = c0.clone()
    for t in range(T):
        lo = sizes[t + 1] if t + 1 < T else 0
        hi = sizes[t]
        if lo < hi:
            h_n[lo:hi] = out[t, lo:hi]
            if save:
                c_n[lo:hi] = C_l[t // chunk][t % chunk, lo:hi] * 0.5
            else:
                c_n[lo:hi] = c[lo:hi] * c_unit
    return out, h_n, c_n, S_l, C_l, TH_l, M_l


def _backward(
    dout: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    out: Tensor,
    S_l: List[Tensor],
    C_l: List[Tensor],
    TH_l: List[Tensor],
    M_l: List[Tensor],
    sizes: List[int],
    chunk: int,
    use_mkldnn: bool,
    need_dx: bool,
    need_dw: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """BPTT on what `_forward` saved, with the original (unscaled) weights.

    Returns dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr; dx and the weight
    gradients are empty when not needed. Works chunk by chunk, last first:
    per-step coefficients in bulk over the chunk, the sequential dh/dc
    recursion, then the chunk's share of dx and the weight gradients as GEMMs,
    so every buffer is chunk-sized and reused.
    """
    T, B, I = x.size(0), x.size(1), x.size(2)
    H = c0.size(1)
    R = h0.size(1)
    K = chunk
    packed = len(sizes) > 0
    proj = w_hr is not None
    opts_dtype = x.dtype
    dev = x.device
    empty = torch.empty(0, dtype=opts_dtype, device=dev)

    dx = empty
    if need_dx:
        dx = torch.empty((T, B, I), dtype=opts_dtype, device=dev)
    dw_ih = empty
    dw_hh = empty
    db = empty
    dw_hr = empty

    # Per-step coefficients, with tc = tanh(c_t) and s' = s(1 - s):
    #   dz_o = dm * (tc * s'(o))                                     (Po)
    #   dc  += dm * (o * (1 - tc^2))                                  (Q)
    #   dz_i, dz_f, dz_g = dc * [g s'(i), c_{t-1} s'(f), i (1 - g^2)]  (P)
    P = torch.empty((K, B, 3, H), dtype=opts_dtype, device=dev)
    Po = torch.empty((K, B, H), dtype=opts_dtype, device=dev)
    Q = torch.empty((K, B, H), dtype=opts_dtype, device=dev)
    d_if = torch.empty((K, B, 2, H), dtype=opts_dtype, device=dev)
    tmp = torch.empty((K, B, H), dtype=opts_dtype, device=dev)
    one = torch.ones((1,), dtype=opts_dtype, device=dev)
    # Dead rows of dZ and dH must be zero: the weight gradients sum over them.
    if packed:
        dZ = torch.zeros((K, B, 4 * H), dtype=opts_dtype, device=dev)
    else:
        dZ = torch.empty((K, B, 4 * H), dtype=opts_dtype, device=dev)
    dH = empty
    if proj:
        dH = torch.zeros((K, B, R), dtype=opts_dtype, device=dev)
    # oneDNN takes these transposed views as they are.
    whh_p = _pack(w_hh.t(), B, False, use_mkldnn)
    whr_p = whh_p
    if w_hr is not None:
        whr_p = _pack(w_hr.t(), B, False, use_mkldnn)
    wih_p = _pack(w_ih.t(), K * B, False, use_mkldnn)

    dZv = dZ.view(K, B, 4, H)
    douts = dout.unbind(0)
    dh = dh_n.clone()
    dc = dc_n.clone()
    for j in range(len(S_l) - 1, -1, -1):
        t0 = j * K
        Sv = S_l[j].view(-1, B, 4, H)
        n = Sv.size(0)
        t1 = t0 + n
        Cj = C_l[j]
        THj = TH_l[j]
        i = Sv[:, :, 0]
        u = Sv[:, :, 2]  # g / 2
        o = Sv[:, :, 3]
        Pn = P[:n]
        dn = d_if[:n]
        torch.addcmul(Sv[:, :, :2], Sv[:, :, :2], Sv[:, :, :2], value=-1.0, out=dn)
        torch.mul(u, dn[:, :, 0], out=Pn[:, :, 0]).mul_(2.0)
        if j == 0:
            torch.mul(c0, dn[0, :, 1], out=Pn[0, :, 1])
        else:
            torch.mul(C_l[j - 1][-1], dn[0, :, 1], out=Pn[0, :, 1]).mul_(0.5)
        if n > 1:
            torch.mul(Cj[:-1], dn[1:, :, 1], out=Pn[1:, :, 1]).mul_(0.5)
        torch.mul(i, torch.addcmul(one, u, u, value=-4.0, out=tmp[:n]), out=Pn[:, :, 2])
        Pon = torch.addcmul(o, o, o, value=-1.0, out=Po[:n]).mul_(THj).mul_(2.0)
        Qn = torch.addcmul(one, THj, THj, value=-4.0, out=Q[:n]).mul_(o)
        if packed and j < len(S_l) - 1:
            dZ.zero_()
            if proj:
                dH.zero_()
        # Per-step views, made once per chunk.
        Ps = Pn.unbind(0)
        Pos = Pon.unbind(0)
        Qs = Qn.unbind(0)
        fs = Sv[:, :, 1].unbind(0)
        dZs = dZ.unbind(0)
        dZifg = dZv[:, :, :3].unbind(0)
        dZo = dZv[:, :, 3].unbind(0)
        dHs = dH.unbind(0) if proj else dZs

        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            dz = dZs[k]
            dz_ifg = dZifg[k]
            dz_o = dZo[k]
            p = Ps[k]
            po = Pos[k]
            q = Qs[k]
            f = fs[k]
            dhl = dh
            dcl = dc
            bs = B
            if packed:
                bs = sizes[t]
                # dout[t] was fused into the previous GEMM for rows live at t + 1 only.
                lo = sizes[t + 1] if t + 1 < T else 0
                if lo < bs:
                    dh[lo:bs].add_(douts[t][lo:bs])
                dz, dz_ifg, dz_o = dz[:bs], dz_ifg[:bs], dz_o[:bs]
                p, po, q, f = p[:bs], po[:bs], q[:bs], f[:bs]
                dhl = dh[:bs]
                dcl = dc[:bs]
            elif t == T - 1:
                dh.add_(douts[t])
            if proj:
                if packed:
                    dHs[k][:bs] = dhl
                else:
                    dHs[k].copy_(dhl)
                dm = _gemm(dhl, whr_p, use_mkldnn)
            else:
                dm = dhl
            torch.mul(dm, po, out=dz_o)
            dcl.addcmul_(dm, q)
            torch.mul(dcl.unsqueeze(1), p, out=dz_ifg)
            dcl.mul_(f)
            if t > 0:
                dprev = douts[t - 1]
                if packed:
                    dprev = dprev[:bs]
                dh_new = _gemm_add(dz, whh_p, dprev, use_mkldnn)
            else:
                dh_new = _gemm(dz, whh_p, use_mkldnn)
            if packed:
                dh[:bs] = dh_new
            else:
                dh = dh_new

        G = dZ[:n].view(n * B, 4 * H)
        if need_dx:
            if use_mkldnn:
                dx[t0:t1] = _gemm(G, wih_p, True).view(n, B, I)
            else:
                torch.mm(G, wih_p, out=dx[t0:t1].view(n * B, I))
        if need_dw:
            # Transposed gradients (K, 4H); see `_wgrad_t`.
            first = j == len(S_l) - 1
            dw_ih = _wgrad_t(dw_ih, x[t0:t1].reshape(n * B, I), G, first, use_mkldnn)
            if j == 0:
                h_prev = torch.cat([h0.unsqueeze(0), out[0:n - 1]]).view(n * B, R)
            else:
                h_prev = out[t0 - 1:t1 - 1].reshape(n * B, R)
            dw_hh = _wgrad_t(dw_hh, h_prev, G, first, use_mkldnn)
            db = G.sum(0) if first else db.add_(G.sum(0))
            if proj:
                # M holds o * tanh(c) / 2; the 2 is applied once at the end.
                dw_hr = _wgrad_t(dw_hr, M_l[j].view(n * B, H), dH[:n].view(n * B, R), first, use_mkldnn)
    if need_dw:
        dw_ih = dw_ih.t().contiguous()
        dw_hh = dw_hh.t().contiguous()
        if proj:
            dw_hr = dw_hr.t().contiguous().mul_(2.0)
    return dx, dh, dc, dw_ih, dw_hh, db, dw_hr


# (forward, backward) as ScriptFunctions, compiled once on first use.
_scripted = ScriptedOnce(_forward, _backward)


def _prepare(w_ih, w_hh, b_ih, b_hh, w_hr):
    """The weights `_forward` runs on: g rows doubled (tanh via sigmoid), W_hh
    doubled again without projection (it reads h/2), W_hr doubled (it reads
    o * tanh(c) / 2), biases summed. All are exact power-of-two scalings."""
    H = w_hh.shape[0] // 4
    gate_scale = torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=w_hh.dtype, device=w_hh.device)
    wi = (w_ih.detach().reshape(4, H, -1) * gate_scale.view(4, 1, 1)).view(4 * H, -1)
    wh_scale = gate_scale if w_hr is not None else gate_scale * 2.0
    wh = (w_hh.detach().reshape(4, H, -1) * wh_scale.view(4, 1, 1)).view(4 * H, -1)
    bias = _bias(b_ih, b_hh)
    if bias is not None:
        bias = (bias.reshape(4, H) * gate_scale.view(4, 1)).view(4 * H)
    wr = None if w_hr is None else w_hr.detach() * 2.0
    return wi, wh, bias, wr


def _bias(b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Optional[Tensor]:
    """The one bias the forward adds (detached): the sum of those given."""
    if b_ih is not None and b_hh is not None:
        return b_ih.detach() + b_hh.detach()
    b = b_ih if b_ih is not None else b_hh
    return None if b is None else b.detach()


# Rows x units (B * H) up to which an inference step runs plain (see `_forward`):
# at B=1, H=256 the plain step floor measured 0.75 against 0.91 ms (T=16) and
# 12.9 against 13.6 ms (T=256); at B=8 the scaled one wins (1.52 against 1.57,
# 5.2 against 6.1 ms at T=64). bench/test_bench_floor.py, step1 and step2.
_PLAIN_MAX_ELEMS = 512


def _plain(B: int, H: int, save: bool) -> bool:
    """Whether a layer call runs `_forward`'s plain steps: inference at small B * H.
    Plain steps scale nothing, so they need no range check on the weights either."""
    return not save and B * H <= _PLAIN_MAX_ELEMS


def _chunk(T: int, B: int) -> int:
    return max(1, min(T, _PROJECTION_ROWS // max(B, 1)))


def _sizes(batch_sizes: Optional[Tensor]) -> List[int]:
    return [] if batch_sizes is None else [int(n) for n in batch_sizes.tolist()]


_HALF_TYPES = (torch.float16, torch.bfloat16)
def _f32(t: Optional[Tensor]) -> Optional[Tensor]:
    """float16/bfloat16 run in float32 (fp32 state and accumulation)."""
    return t.float() if t is not None and t.dtype in _HALF_TYPES else t


class LSTMJitFunction(torch.autograd.Function):
    """One LSTM layer with a hand-written BPTT; see `lstm_layer_jit`.

    Arguments: lstm_layer_jit's, then `save` (keep what the backward needs).
    float16/bfloat16 arguments are computed in float32; outputs and
    gradients come back in the arguments' dtypes. Everything the backward
    reads goes through `save_for_backward` (so saved-tensor hooks and
    checkpointing see it), and nothing saved is a returned tensor (so
    in-place ops on the outputs are safe). Past first derivatives, the
    backward recomputes with the reference loop (`reference_grads`).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save=True):
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        dtype = x.dtype
        T, B = x.shape[0], x.shape[1]
        sizes = _sizes(batch_sizes)
        ctx.dtypes = [None if t is None else t.dtype for t in inputs]
        ctx.batch_sizes = batch_sizes
        ctx.empty = T == 0
        ctx.unscaled = False
        if ctx.empty or has_no_data(x):
            # No steps, or shapes without data (meta, FakeTensorMode): nothing to compute.
            ctx.empty = True
            ctx.shapes = (x.shape, w_ih.shape, w_hh.shape, None if w_hr is None else w_hr.shape)
            ctx.save_for_backward(*inputs)
            if T == 0:
                return x.new_zeros(0, B, h0.shape[1]), h0.clone(), c0.clone()
            return x.new_empty(T, B, h0.shape[1]), h0.new_empty(h0.shape), c0.new_empty(c0.shape)
        plain = _plain(B, c0.shape[1], save)
        # The weights' range decides whether the scaled steps are exact. On the
        # CPU it is read (no device to wait for; cached per weight version);
        # elsewhere it is checked on the device without a read (`_flag_on_device`).
        on_cpu = on_host(x)
        ctx.unscaled = on_cpu and not plain and not _scaling_is_finite(w_ih, w_hh, b_ih, b_hh, w_hr)
        if ctx.unscaled:
            # Weights whose power-of-two scalings would overflow: the reference
            # loop, forward here and (recomputed) in the backward.
            with torch.no_grad():
                result = lstm_layer_reference(*inputs, batch_sizes)
            if save:
                ctx.save_for_backward(*inputs)
            return result[0].clone() if save else result[0], result[1], result[2]
        x32, h032, c032, w_ih32, w_hh32, b_ih32, b_hh32, w_hr32 = map(_f32, inputs)
        fwd, _ = _scripted()
        use_mkldnn = _use_mkldnn(x32, c032.shape[1], h032.shape[1])
        if plain:
            wi, wh, bias = w_ih32.detach(), w_hh32.detach(), _bias(b_ih32, b_hh32)
            wr = None if w_hr32 is None else w_hr32.detach()
        else:
            wi, wh, bias, wr = _prepare(w_ih32, w_hh32, b_ih32, b_hh32, w_hr32)
        chunk = _chunk(T, B)
        out, h_n, c_n, S, C, TH, M = fwd(x32, h032, c032, wi, wh, bias, wr, sizes, save, use_mkldnn, chunk,
                                         T >= _REORDER_MIN_STEPS, plain)
        if not on_cpu and not plain and dtype not in _HALF_TYPES:
            out, h_n, c_n = _flag_on_device((w_ih, w_hh, b_ih, b_hh, w_hr), (out, h_n, c_n))
        result = out.to(dtype) if dtype in _HALF_TYPES else out
        if save:
            if result is out:
                result = out.clone()  # the backward reads `out`; the caller may edit what it gets
            ctx.counts = (len(S), len(C), len(TH), len(M))
            ctx.save_for_backward(*inputs, out, *S, *C, *TH, *M)
            ctx.sizes = sizes
            ctx.chunk = chunk
            ctx.use_mkldnn = use_mkldnn
        return result, h_n.to(dtype), c_n.to(dtype)

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n):
        need = ctx.needs_input_grad
        saved = ctx.saved_tensors
        inputs = saved[:8]
        differentiable = differentiable_backward((dout, dh_n, dc_n))
        if differentiable or ctx.unscaled:
            grads = reference_grads(inputs, ctx.batch_sizes, (dout, dh_n, dc_n), need, create_graph=differentiable)
            return (*grads, None, None)
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
        if ctx.empty:
            x_shape, wih_shape, whh_shape, whr_shape = ctx.shapes
            z = dout.new_zeros
            grads = [z(x_shape), dh_n.clone(), dc_n.clone(), z(wih_shape), z(whh_shape),
                     z(whh_shape[0]) if b_ih is not None else None, z(whh_shape[0]) if b_hh is not None else None,
                     z(whr_shape) if whr_shape is not None else None]
        else:
            _, bwd = _scripted()
            out, rest = saved[8], saved[9:]
            acts = []
            for n in ctx.counts:
                acts.append(list(rest[:n]))
                rest = rest[n:]
            S, C, TH, M = acts
            x, h0, c0 = _f32(x), _f32(h0), _f32(c0)
            w_ih, w_hh = _f32(w_ih).contiguous(), _f32(w_hh).contiguous()
            w_hr = None if w_hr is None else _f32(w_hr).contiguous()
            need_dw = any(need[3:8])
            dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = bwd(
                _f32(dout).contiguous(), _f32(dh_n), _f32(dc_n), x, h0, c0, w_ih, w_hh, w_hr, out,
                S, C, TH, M, ctx.sizes, ctx.chunk, ctx.use_mkldnn, bool(need[0]), need_dw,
            )
            has_ih, has_hh = b_ih is not None, b_hh is not None
            grads = [dx, dh0, dc0, dw_ih, dw_hh, db if has_ih else None,
                     (db.clone() if has_ih else db) if has_hh else None,
                     dw_hr if w_hr is not None else None]
        result = []
        for k, (g, dtype) in enumerate(zip(grads, ctx.dtypes)):
            result.append(g.to(dtype) if g is not None and need[k] else None)
        return tuple(result) + (None, None)


def _function_and_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save: bool):
    """The autograd.Function and its arguments for one layer call
    (`fastlstm._ops` calls its forward and backward directly under torch.compile)."""
    return LSTMJitFunction, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save)


def lstm_layer_jit(
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
    """One LSTM layer, one direction, in TorchScript; see `fastlstm.backends`.

    Shapes: x (T, B, I), h0 (B, R), c0 (B, H), w_ih (4H, I), w_hh (4H, R),
    b_ih/b_hh (4H,) or None, w_hr (R, H) or None, batch_sizes (T,) or None
    -> out (T, B, R), h_n (B, R), c_n (B, H). float16 and bfloat16 run in
    float32 and return their own dtype.

    Example:
        >>> x, h0, c0 = torch.randn(5, 2, 3), torch.zeros(2, 4), torch.zeros(2, 4)
        >>> out, h, c = lstm_layer_jit(x, h0, c0, torch.randn(16, 3), torch.randn(16, 4))
        >>> out.shape
        torch.Size([5, 2, 4])
    """
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    if transforms_active(*tensors):
        return lstm_layer_reference(*tensors, batch_sizes)
    on_cpu = on_host(x)
    if not on_cpu and not has_no_data(x):
        _check_device(x.device)
    if needs_autograd(*tensors):
        result = LSTMJitFunction.apply(*tensors, batch_sizes, True)
    else:
        # No autograd: run the Function's forward as a plain call, saving nothing.
        args = (*tensors, batch_sizes, False)
        result = LSTMJitFunction.forward(FunctionCtx(args), *args)
        if _plain(x.shape[1], c0.shape[1], False):
            return result  # nothing was scaled, so nothing can have overflowed
    if not on_cpu or x.dtype in _HALF_TYPES or x.shape[0] == 0 or has_no_data(x):
        # Off the CPU the range was checked on the device, uncached; half
        # types run in float32, whose range holds them; no data, no overflow.
        return result
    if not _finite(result[1], result[2]) and not _scaling_is_finite(w_ih, w_hh, b_ih, b_hh, w_hr, cached=False):
        # Weights edited through .data (which leaves _version alone) past the range
        return lstm_layer_reference(*tensors, batch_sizes)
    return result


def _finite(h: Tensor, c: Tensor) -> bool:
    return bool(torch.isfinite(h).all() & torch.isfinite(c).all())  # CPU only: a read, no device to wait for


_RANGE_MESSAGE = ("fastlstm: backend 'jit' was given weights beyond an eighth of {dtype}'s range on {device} "
                  "(an entry above {limit:.3g} in magnitude, or inf), where its power-of-two weight scalings "
                  "would overflow; the outputs of that call were set to NaN. Off the CPU the check runs on the "
                  "device without waiting, so it is reported at the next call. Use backend='reference' "
                  "for such weights")
# device -> its DeferredError (weights out of range, seen on the device).
_DEVICE_ERRORS: dict = {}


def _check_device(device: torch.device) -> None:
    """Raise the out-of-range error a finished earlier call on `device` found."""
    for (dev, _), err in list(_DEVICE_ERRORS.items()):
        if dev == device:
            err.check()


def _flag_on_device(weights, outputs):
    """Off the CPU, without reading the device: whether any weight lies past
    `_scaling_is_finite`'s limit is computed there (every call, so `.data`
    edits are seen too). If so the outputs become NaN, and the next call on
    the device raises the error naming the problem (`DeferredError`). So an
    overflowed scaling never gives a silent wrong answer, and nothing waits."""
    ws = [w.detach() for w in weights if w is not None and w.numel()]
    dtype = ws[0].dtype
    limit = torch.finfo(dtype).max / 8
    bad = torch.stack(torch._foreach_norm(ws, float("inf"))).max() > limit
    key = (ws[0].device, dtype)
    err = _DEVICE_ERRORS.get(key)
    if err is None:
        message = _RANGE_MESSAGE.format(dtype=str(dtype).replace("torch.", ""), device=ws[0].device, limit=limit)
        err = _DEVICE_ERRORS.setdefault(key, DeferredError(ws[0].device, message))
    err.flag(bad)
    return tuple(t.masked_fill(bad, float("nan")) for t in outputs)


# weight -> (its _version when checked, within range): parameters are checked
# once per change (an optimizer step), not once per call.
_IN_RANGE = WeakIdKeyDictionary()  # keyed by identity (tensors compare elementwise)


def _scaling_is_finite(*weights: Optional[Tensor], cached: bool = True) -> bool:
    """Whether `_prepare`'s power-of-two scalings (at most 4x, after summing
    the biases) stay finite: they do for weights within an eighth of the
    dtype's range. Past it (a float32 entry of 1e38, say) the layer runs the
    unscaled reference loop, which stays finite wherever nn.LSTM does. Each
    weight's answer is kept until its `_version` changes; an edit through
    `.data` does not change it, so `lstm_layer_jit` also rechecks, uncached,
    whenever the final state is not finite."""
    if weights[0].dtype in _HALF_TYPES:
        return True  # computed in float32
    limit = torch.finfo(weights[0].dtype).max / 8
    for w in weights:
        if w is None or not w.numel():
            continue
        seen = _IN_RANGE.get(w) if cached else None
        if seen is not None and seen[0] == w._version:
            ok = seen[1]
        else:
            lo, hi = torch.aminmax(w.detach())
            ok = -limit <= float(lo) <= float(hi) <= limit
            if cached:
                _IN_RANGE[w] = (w._version, ok)
        if not ok:
            return False
    return True
