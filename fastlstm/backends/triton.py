"""The Triton backend: one LSTM layer, one direction, one fused launch per step.

Pieces, by name:
    kernels          `fastlstm.kernels.lstm`: `lstm_fwd_step_kernel`,
                     `lstm_bwd_step_kernel` (only `@triton.jit` code).
    launchers        `_lstm_fwd_step`, `_lstm_bwd_step` (launch heuristics),
                     `_lstm_fwd`, `_lstm_bwd` (the time loops and the big GEMMs).
    Function         `LSTMTritonFunction`.
    public function  `lstm_layer_triton` (the layer primitive, see
                     `fastlstm.backends`).

Forward: x @ W_ih^T + b_ih + b_hh for all steps in one GEMM, then per step one
kernel doing h[t] @ W_hh^T, the gate nonlinearities and the cell update (plus a
host GEMM for the projection, when there is one). Backward: per step one kernel
doing the recurrent product dg[t+1] @ W_hh and the pointwise cell backward (plus
a host GEMM for the projection); every weight gradient, the bias gradients and
dx are GEMMs/reductions over all steps at once.

Storage: h in the input dtype (it only feeds storage-dtype dots), c, gates and
all accumulation in float32. float64 is not supported: use backend 'jit'.
"""
import contextlib
import functools
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..kernels import lstm as _k
from ._common import needs_autograd, refuse_double_backward, sequence_lengths

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _empty(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer a kernel writes is allocated here (tests fill it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


# ----------------------------------------------------------------------------
# Launch heuristics
# ----------------------------------------------------------------------------


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _device_guard(t: Tensor):
    """Triton launches on the current CUDA device; make it the tensors' one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter: fewest, largest programs are fastest
    return torch.cuda.get_device_properties(device).multi_processor_count


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 dots are exact fp32 FMAs unless the user opted into TF32, as for
    # torch's own matmuls; 16-bit dots ignore the setting.
    if dtype != torch.float32:
        return "tf32"
    matmul = torch.backends.cuda.matmul
    # Newer torch has `fp32_precision` ("tf32"/"ieee"/"none"); reading the
    # legacy `allow_tf32` after a user set the new one raises there.
    precision = getattr(matmul, "fp32_precision", None)
    if precision is not None:
        return "tf32" if precision == "tf32" else "ieee"
    return "tf32" if matmul.allow_tf32 else "ieee"


def _upcast_dot(t: Tensor) -> bool:
    # CPU tensors only run under the interpreter, whose bf16 tl.dot is wrong
    # (it multiplies raw bit patterns); see the note in fastlstm.kernels.lstm.
    return t.device.type == "cpu" and t.dtype == torch.bfloat16


@functools.lru_cache(maxsize=None)
def _blocks(B: int, H: int, K: int, dtype: torch.dtype, device: torch.device) -> Tuple[int, int, int, int, int]:
    """(BLOCK_B, BLOCK_H, BLOCK_K, num_warps, num_stages) for a step kernel.

    A step is latency-bound (one pass over W_hh, mostly from L2), so the
    hidden block is the largest that still gives every SM a program. The
    limits keep the sm_90 forward kernel free of spills (checked with
    `ptxas -v` on triton 3.9): BLOCK_K 32, 8 warps from 512 outputs, and
    float32 tiles of at most 32 x 32 (its exact dot is FMA-based).
    tl.dot needs every block >= 16.
    """
    is32 = dtype == torch.float32
    block_b = min(32 if is32 else 64, max(16, _next_pow2(B)))
    n_b = _cdiv(B, block_b)
    block_h = 16
    for cand in (64, 32):
        if block_b * cand <= (1024 if is32 else 2048) and _cdiv(H, cand) * n_b >= _num_sms(device):
            block_h = cand
            break
    block_h = min(block_h, max(16, _next_pow2(H)))
    block_k = min(32, max(16, _next_pow2(K)))
    num_warps = 8 if block_b * block_h >= 512 else 4
    return block_b, block_h, block_k, num_warps, 2


# ----------------------------------------------------------------------------
# Per-step launchers
# ----------------------------------------------------------------------------


def _lstm_fwd_step(t: int, xg: Tensor, w_hh: Tensor, h_prev: Tensor, h_next: Tensor, cs: Tensor,
                   gates: Optional[Tensor], hc: Optional[Tensor], out: Optional[Tensor],
                   lens: Optional[Tensor]) -> None:
    """One forward step: reads h_prev (B, R) and cs[t]; writes cs[t+1], and
    h_next (B, R) (no projection) or hc[t] (projection); gates[t] and out[t]
    if given."""
    _, B, H4 = xg.shape
    H, R = H4 // 4, w_hh.shape[1]
    has_proj = hc is not None
    block_b, block_h, block_k, num_warps, num_stages = _blocks(B, H, R, xg.dtype, xg.device)
    # Unused pointers point at xg with zero strides; their constexpr flag is off.
    gt = gates if gates is not None else xg
    hcx = hc if has_proj else xg
    o = out if out is not None else xg
    ln = lens if lens is not None else xg
    s_gt = gates.stride() if gates is not None else (0, 0, 0)
    s_hc = hc.stride() if has_proj else (0, 0, 0)
    s_o = out.stride() if out is not None else (0, 0, 0)
    grid = (_cdiv(H, block_h), _cdiv(B, block_b))
    _k.lstm_fwd_step_kernel[grid](
        xg, w_hh, h_prev, h_next, cs, gt, hcx, o, ln,
        t, B, H, R,
        *xg.stride(), *w_hh.stride(), *h_prev.stride(), *h_next.stride(), *cs.stride(), *s_gt, *s_hc, *s_o,
        BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k,
        HAS_PROJ=has_proj, PACKED=lens is not None, SAVE_GATES=gates is not None,
        DOT_PRECISION=_dot_precision(xg.dtype), UPCAST_DOT=_upcast_dot(xg),
        num_warps=num_warps, num_stages=num_stages,
    )


def _lstm_bwd_step(t: int, a: Tensor, w: Tensor, dout: Optional[Tensor], gates: Tensor, cs: Tensor,
                   dc: Tensor, dg: Tensor, lens: Optional[Tensor]) -> None:
    """One backward step: dh[t] = a @ w (+ dout[t]) for every hidden unit, then
    writes dg[t] and updates dc (the cell-state gradient) in place."""
    B, K = a.shape
    H = w.shape[1]
    block_b, block_h, block_k, num_warps, num_stages = _blocks(B, H, K, dg.dtype, dg.device)
    d = dout if dout is not None else dg
    s_do = dout.stride() if dout is not None else (0, 0, 0)
    ln = lens if lens is not None else dg
    grid = (_cdiv(H, block_h), _cdiv(B, block_b))
    _k.lstm_bwd_step_kernel[grid](
        a, w, d, gates, cs, dc, dg, ln,
        t, B, H, K,
        *a.stride(), *w.stride(), *s_do, *gates.stride(), *cs.stride(), *dc.stride(), *dg.stride(),
        BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k,
        HAS_DOUT=dout is not None, PACKED=lens is not None,
        DOT_PRECISION=_dot_precision(dg.dtype), UPCAST_DOT=_upcast_dot(dg),
        num_warps=num_warps, num_stages=num_stages,
    )


# ----------------------------------------------------------------------------
# Whole-layer forward and backward
# ----------------------------------------------------------------------------


def _live_mask(lens: Tensor, T: int) -> Tensor:
    """(T, B, 1) bool: row b is live at step t."""
    return (torch.arange(T, device=lens.device).unsqueeze(1) < lens.unsqueeze(0)).unsqueeze(2)


def _lstm_fwd(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
              w_hr: Optional[Tensor], lens: Optional[Tensor], bs_list: Optional[List[int]], save: bool):
    """Returns out (T, B, R), hseq, cs (T+1, B, H) float32, gates (T, B, 4H)
    float32 or None, hc (T, B, H) or None.

    hseq (T, B, R) holds the states h_1..h_T: `out` itself unless packed (a
    separate buffer there, as dead rows carry their state but output zeros).
    """
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, dev = x.dtype, x.device
    x2 = x.reshape(T * B, I)
    if bias is not None:
        xg = torch.addmm(bias, x2, w_ih.t())
    else:
        xg = torch.mm(x2, w_ih.t())
    xg = xg.view(T, B, 4 * H)

    hseq = _empty((T, B, R), dtype, dev)
    if save:
        cs = _empty((T + 1, B, H), torch.float32, dev)
    else:
        # With no backward to feed, one cell buffer updated in place is enough
        # (a zero time stride): each program reads and writes only its own
        # tile of c. So inference keeps nothing per step beyond the output.
        cs = _empty((1, B, H), torch.float32, dev).expand(T + 1, B, H)
    cs[0].copy_(c0)
    gates = _empty((T, B, 4 * H), torch.float32, dev) if save else None
    hc = None
    if w_hr is not None:
        # hc[t] is consumed by the projection GEMM within the same step.
        hc = _empty((T, B, H), dtype, dev) if save else _empty((1, B, H), dtype, dev).expand(T, B, H)
    out = _empty((T, B, R), dtype, dev) if (lens is not None and w_hr is None) else None
    w_hr_t = w_hr.t() if w_hr is not None else None

    for t in range(T):
        h_prev = h0 if t == 0 else hseq[t - 1]
        _lstm_fwd_step(t, xg, w_hh, h_prev, hseq[t], cs, gates, hc, out, lens)
        if w_hr is not None:
            # Rows of a PackedSequence are sorted: the live ones are a prefix.
            n = B if bs_list is None else bs_list[t]
            torch.mm(hc[t, :n], w_hr_t, out=hseq[t, :n])
            if n < B:
                hseq[t, n:].copy_(h_prev[n:])

    if lens is None:
        out = hseq
    elif w_hr is not None:
        out = hseq * _live_mask(lens, T)
    return out, hseq, cs, gates, hc


def _lstm_bwd(d_out: Tensor, d_hn: Tensor, d_cn: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
              w_hr: Optional[Tensor], hseq: Tensor, cs: Tensor, gates: Tensor, hc: Optional[Tensor],
              lens: Optional[Tensor], needs: Tuple[bool, ...]):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr); None where not needed."""
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, dev = x.dtype, x.device
    rows = torch.arange(B, device=dev)

    # The gradient reaching h[t] from outside the recurrence: d_out at live
    # rows, plus d_hn at each row's last live step (dead rows carry h to h_n).
    if lens is None:
        dout = d_out.to(dtype, copy=True)
        dout[T - 1] += d_hn
    else:
        dout = (d_out * _live_mask(lens, T)).to(dtype)
        dout.index_put_((lens.long() - 1, rows), d_hn.to(dtype), accumulate=True)

    dg = _empty((T + 1, B, 4 * H), dtype, dev)
    dg[T].zero_()
    dc = _empty((B, H), torch.float32, dev)
    dc.copy_(d_cn)
    dh = _empty((T, B, R), dtype, dev) if w_hr is not None else None

    for t in range(T - 1, -1, -1):
        if w_hr is None:
            _lstm_bwd_step(t, dg[t + 1], w_hh, dout, gates, cs, dc, dg, lens)
        else:
            torch.addmm(dout[t], dg[t + 1], w_hh, out=dh[t])
            _lstm_bwd_step(t, dh[t], w_hr, None, gates, cs, dc, dg, lens)

    need_x, need_h0, need_c0, need_wih, need_whh, need_b, need_whr = needs
    dg2 = dg[:T].view(T * B, 4 * H)
    dx = torch.mm(dg2, w_ih).view(T, B, I) if need_x else None
    dw_ih = torch.mm(dg2.t(), x.reshape(T * B, I)) if need_wih else None
    dw_hh = None
    if need_whh:
        # sum_t dg[t]^T h[t-1], with h[-1] = h0 and h[t] = hseq[t]
        dw_hh = torch.mm(dg[0].t(), h0)
        if T > 1:
            dw_hh.addmm_(dg[1:T].reshape((T - 1) * B, 4 * H).t(), hseq[: T - 1].reshape((T - 1) * B, R))
    db = dg2.sum(0, dtype=torch.float32).to(dtype) if need_b else None
    dh0 = torch.mm(dg[0], w_hh) if need_h0 else None
    dc0 = dc.to(dtype) if need_c0 else None
    dw_hr = None
    if w_hr is not None and need_whr:
        dw_hr = torch.mm(dh.view(T * B, R).t(), hc.view(T * B, H))
    return dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr


# ----------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------


class LSTMTritonFunction(torch.autograd.Function):
    """One LSTM layer with a hand-written backward; see `lstm_layer_triton`.

    `lens` is the (B,) int32 device tensor of row lengths and `bs_list` the
    batch sizes as Python ints (both None when not packed); `save` says
    whether a backward can follow (inside forward, grad mode is always off and
    needs_input_grad ignores it, so the caller decides).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lens, bs_list, save):
        T, B = x.shape[0], x.shape[1]
        ctx.empty = T == 0 or B == 0
        ctx.has_b_ih, ctx.has_b_hh, ctx.has_w_hr = b_ih is not None, b_hh is not None, w_hr is not None
        if ctx.empty:
            out = x.new_zeros(T, B, h0.shape[1])
            ctx.shapes = (x.shape, w_ih.shape, w_hh.shape, None if w_hr is None else w_hr.shape)
            return out, h0.clone(), c0.clone()
        bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
        with _device_guard(x):
            out, hseq, cs, gates, hc = _lstm_fwd(x, h0, c0, w_ih, w_hh, bias, w_hr, lens, bs_list, save)
        if save:
            ctx.save_for_backward(x, h0, w_ih, w_hh, w_hr, hseq, cs, gates, hc, lens)
        # No output may be a view (torch forbids in-place on views returned by
        # a Function) nor alias another output or a saved buffer.
        return out, hseq[T - 1].clone(), cs[T].to(x.dtype, copy=True)

    @staticmethod
    @refuse_double_backward
    @once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        needs = ctx.needs_input_grad
        if ctx.empty:
            x_shape, wih_shape, whh_shape, whr_shape = ctx.shapes
            z = lambda s: d_out.new_zeros(s)  # noqa: E731
            return (z(x_shape) if needs[0] else None, d_hn, d_cn,
                    z(wih_shape) if needs[3] else None, z(whh_shape) if needs[4] else None,
                    z(whh_shape[0]) if ctx.has_b_ih and needs[5] else None,
                    z(whh_shape[0]) if ctx.has_b_hh and needs[6] else None,
                    z(whr_shape) if ctx.has_w_hr and needs[7] else None, None, None, None)
        x, h0, w_ih, w_hh, w_hr, hseq, cs, gates, hc, lens = ctx.saved_tensors
        with _device_guard(x):
            dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = _lstm_bwd(
                d_out, d_hn, d_cn, x, h0, w_ih, w_hh, w_hr, hseq, cs, gates, hc, lens,
                (needs[0], needs[1], needs[2], needs[3], needs[4], needs[5] or needs[6], needs[7]),
            )
        db_ih = db if ctx.has_b_ih and needs[5] else None
        db_hh = db if ctx.has_b_hh and needs[6] else None
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None, None, None


# ----------------------------------------------------------------------------
# public
# ----------------------------------------------------------------------------


def _check(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
    if x.dtype == torch.float64:
        raise TypeError(
            "lstm_layer_triton: float64 is not supported by the Triton kernels; "
            "use backend 'jit' (backend='auto' sends float64 there)"
        )
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"lstm_layer_triton: x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"lstm_layer_triton: x must be (T, B, I), got shape {tuple(x.shape)}")
    T, B, I = x.shape
    if w_hh.dim() != 2 or w_hh.shape[0] % 4:
        raise ValueError(f"lstm_layer_triton: w_hh must be (4H, R), got shape {tuple(w_hh.shape)}")
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    expected = {
        "h0": (h0, (B, R)), "c0": (c0, (B, H)), "w_ih": (w_ih, (4 * H, I)),
        "b_ih": (b_ih, (4 * H,)), "b_hh": (b_hh, (4 * H,)), "w_hr": (w_hr, (R, H)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is None:
            continue
        if tuple(tensor.shape) != shape:
            raise ValueError(f"lstm_layer_triton: {name} must have shape {shape}, got {tuple(tensor.shape)}")
        if tensor.dtype != x.dtype or tensor.device != x.device:
            raise TypeError(
                f"lstm_layer_triton: {name} must be {x.dtype} on {x.device} like x, "
                f"got {tensor.dtype} on {tensor.device}"
            )
    if w_hh.dtype != x.dtype or w_hh.device != x.device:
        raise TypeError(f"lstm_layer_triton: w_hh must be {x.dtype} on {x.device} like x, "
                        f"got {w_hh.dtype} on {w_hh.device}")
    if w_hr is None and R != H:
        raise ValueError(f"lstm_layer_triton: w_hh has {R} columns but H = {H} and no w_hr was given")
    if batch_sizes is not None:
        if batch_sizes.device.type != "cpu" or batch_sizes.dim() != 1 or batch_sizes.shape[0] != T:
            raise ValueError(
                f"lstm_layer_triton: batch_sizes must be a CPU tensor of shape ({T},), got "
                f"{tuple(batch_sizes.shape)} on {batch_sizes.device}"
            )
        if T > 0 and (int(batch_sizes[0]) != B or bool((batch_sizes[1:] > batch_sizes[:-1]).any())
                      or int(batch_sizes[-1]) < 0):
            raise ValueError(
                f"lstm_layer_triton: batch_sizes must not increase and start at B = {B}, "
                f"got {batch_sizes.tolist()}"
            )


def lstm_layer_triton(
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
    """One LSTM layer, one direction, on Triton kernels; see `fastlstm.backends`.

    Shapes: x (T, B, I), h0 (B, R), c0 (B, H), w_ih (4H, I), w_hh (4H, R),
    b_ih/b_hh (4H,) or None, w_hr (R, H) or None, batch_sizes CPU int64 (T,)
    or None -> out (T, B, R), h_n (B, R), c_n (B, H). float32, float16 or
    bfloat16 (float64: use backend 'jit'); CUDA, or CPU under TRITON_INTERPRET=1.

    Example:
        >>> x, h0, c0 = torch.randn(5, 2, 3, device="cuda"), torch.zeros(2, 4, device="cuda"), torch.zeros(2, 4, device="cuda")
        >>> out, h, c = lstm_layer_triton(x, h0, c0, torch.randn(16, 3, device="cuda"), torch.randn(16, 4, device="cuda"))
        >>> out.shape
        torch.Size([5, 2, 4])
    """
    save = needs_autograd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    fn, args = _function_and_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save)
    return fn.apply(*args)


def _function_and_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save: bool):
    """The autograd.Function and its arguments for one layer call.

    `fastlstm._ops` calls the Function's forward and backward directly with
    these (under torch.compile), so the two stay one code path.
    """
    _check(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
    lens = bs_list = None
    if batch_sizes is not None and x.shape[0] > 0:
        bs_list = [int(b) for b in batch_sizes.tolist()]
        lens = sequence_lengths(batch_sizes, x.shape[1]).to(device=x.device, dtype=torch.int32)
    return LSTMTritonFunction, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lens, bs_list, save)
