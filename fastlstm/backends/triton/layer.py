"""One Triton LSTM layer: the whole-layer forward and backward (`_lstm_fwd`,
`_lstm_bwd`: buffers, the host GEMMs and the launches), the autograd Function
(`LSTMTritonFunction`) and the public function (`lstm_layer_triton`).

The kernels are looked up at each call through their modules
(`_fwd.lstm_fwd_kernel`, `_bwd.lstm_bwd_kernel`), so that tests can swap them.
"""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ...kernels import lstm_bwd as _bwd
from ...kernels import lstm_fwd as _fwd
from .._common import (differentiable_backward, has_no_data, host_to_device, needs_autograd, reference_grads,
                       sequence_lengths, transforms_active)
from ..reference import lstm_layer_reference
from . import launch
from .launch import _device_guard, _launch, _Prepared, _run
from .plan import (_SUPPORTED_DTYPES, LaunchPlan, _chunks, _dot_precision, _even, _interpreting, _step_constexprs,
                   _upcast_dot, plans_for)
from .workspace import _shape, _workspace, _zeros


def _empty(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer a kernel writes is allocated here (tests fill it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


# ----------------------------------------------------------------------------
# Whole-layer forward and backward
# ----------------------------------------------------------------------------


def _zero_strides(n: int) -> Tuple[int, ...]:
    return (0,) * n


def _shared_params(w_hh: Tensor, w_hr: Optional[Tensor], lens: Optional[Tensor], T: int, B: int) -> Dict[str, object]:
    """The arguments both kernels take alike: weights, row lengths, sizes and the
    workspace of this device and stream (barrier counter and error flags; see
    `_Workspace`, which also raises here a barrier timeout of an earlier call).
    Unused pointers point at a live tensor with zero strides; their constexpr
    flag is off."""
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    ws = _workspace(w_hh.device).buf
    wr = w_hr if w_hr is not None else w_hh
    return dict(
        p_w=w_hh, p_wr=wr, p_len=lens if lens is not None else ws, p_ws=ws,
        T=T, B=B, H=H, R=R, s_w_g=w_hh.stride(0), s_w_r=w_hh.stride(1),
        s_wr_r=wr.stride(0) if w_hr is not None else 0, s_wr_h=wr.stride(1) if w_hr is not None else 0,
    )


def _lstm_fwd(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
              w_hr: Optional[Tensor], lens: Optional[Tensor], save: bool, plan: LaunchPlan,
              precision: Optional[str] = None):
    """Returns out (T, B, R), hs, cs (T+1, B, H) float32, gates (T, B, 4H)
    float32 or None, hc (T, B, H) or None, h_n (B, R), c_n (B, H).

    hs (T, B, R) holds the states h_1..h_T: `out` itself in inference unless
    packed (a separate buffer when packed, as dead rows carry their state but
    output zeros, and in training, where the backward reads hs and the caller
    may edit out: the kernel copies it). The kernel writes c[0] from c0 and
    the final states; the host launches only the input GEMM and the kernel.
    """
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, dev = x.dtype, x.device
    x2 = x.reshape(T * B, I)
    xg = torch.addmm(bias, x2, w_ih.t()) if bias is not None else torch.mm(x2, w_ih.t())
    xg = xg.view(T, B, 4 * H)

    hs = _empty((T, B, R), dtype, dev)
    if h0.stride() != hs.stride()[1:]:
        h0 = h0.contiguous()  # the kernel reads it with the strides of one step of hs
    if save:
        cs = _empty((T + 1, B, H), torch.float32, dev)
    else:
        # With no backward to feed, one cell buffer updated in place is enough
        # (a zero time stride): each program reads and writes only its own
        # units of c. So inference keeps nothing per step beyond the output.
        cs = _empty((1, B, H), torch.float32, dev).expand(T + 1, B, H)
    gates = _empty((T, B, 4 * H), torch.float32, dev) if save else None
    hc = None
    if w_hr is not None:
        # Without a backward, hc[t] is consumed within step t: one buffer will do.
        hc = _empty((T, B, H), dtype, dev) if save else _empty((1, B, H), dtype, dev).expand(T, B, H)
    copy_out = save and lens is None
    out = _empty((T, B, R), dtype, dev) if lens is not None or copy_out else hs
    h_n, c_n = _empty((B, R), dtype, dev), _empty((B, H), dtype, dev)
    ws = _workspace(dev).buf
    precision = precision or _dot_precision(dtype)
    # Everything but the tensors is a function of this key (the buffers' strides
    # follow from their shapes): built once per shape, then reused.
    # The plan by identity (hashing a dataclass costs more than the rest of the
    # key); the cached entry keeps it alive and is checked to be the same one.
    # The launch limits are read through their module, where tests lower them.
    key = (T, B, I, H, R, dtype, dev, save, lens is None, w_hr is None, id(plan), precision, c0.stride(),
           w_hh.stride(), None if w_hr is None else w_hr.stride(), launch._MAX_SPIN, launch._MAX_ARRIVALS,
           _interpreting())
    cached = _FWD_CACHE.get(key)
    if cached is None or cached[1].plan is not plan:
        sizes = dict(T=T, B=B, H=H, R=R, s_w_g=w_hh.stride(0), s_w_r=w_hh.stride(1),
                     s_wr_r=w_hr.stride(0) if w_hr is not None else 0, s_wr_h=w_hr.stride(1) if w_hr is not None else 0)
        sizes.update(zip(("s_xg_t", "s_xg_b", "s_xg_g"), xg.stride()))
        sizes.update(zip(("s_hs_t", "s_h_b", "s_h_r"), hs.stride()))
        sizes.update(zip(("s_c_t", "s_c_b", "s_c_h"), cs.stride()))
        sizes.update(zip(("s_c0_b", "s_c0_h"), c0.stride()))
        sizes.update(zip(("s_hn_b", "s_hn_r"), h_n.stride()))
        sizes.update(zip(("s_cn_b", "s_cn_h"), c_n.stride()))
        sizes.update(zip(("s_gt_t", "s_gt_b", "s_gt_g"), gates.stride() if gates is not None else _zero_strides(3)))
        sizes.update(zip(("s_hc_t", "s_hc_b", "s_hc_h"), hc.stride() if hc is not None else _zero_strides(3)))
        constexprs = dict(
            NUM_KR=_chunks(R, plan), NUM_KH=_chunks(H, plan), EVEN_K=_even(plan, R, H if w_hr is not None else R),
            HAS_PROJ=w_hr is not None, PACKED=lens is not None, SAVE_GATES=save, COPY_OUT=copy_out,
            DOT_PRECISION=precision, UPCAST_DOT=_upcast_dot(x), **_step_constexprs(plan, B),
        )
        phases = ({"CELL": True, "PROJECT": False},)
        if w_hr is not None:
            phases = ({"CELL": True, "PROJECT": False}, {"CELL": False, "PROJECT": True})
        if len(_FWD_CACHE) >= _CACHE_SIZE:
            _FWD_CACHE.clear()
        cached = _FWD_CACHE[key] = (sizes, _Prepared(_fwd.lstm_fwd_kernel, plan, constexprs, T, phases, False, dev),
                                    _shape(x, H, R, "forward"))
    sizes, prep, shape = cached
    if prep.kernel is not _fwd.lstm_fwd_kernel:  # the kernel was swapped (tests): prepare again
        prep = _Prepared(_fwd.lstm_fwd_kernel, plan, prep.constexprs, T, prep.phases, False, dev)
    params = dict(
        sizes, p_xg=xg, p_w=w_hh, p_wr=w_hr if w_hr is not None else w_hh, p_h0=h0, p_hs=hs, p_c=cs,
        p_gates=gates if gates is not None else cs, p_hc=hc if hc is not None else hs, p_out=out,
        p_len=lens if lens is not None else ws, p_ws=ws, p_c0=c0, p_hn=h_n, p_cn=c_n,
    )
    _run(prep, params, shape)
    return out, hs, cs, gates, hc, h_n, c_n


# (shape, strides, flags, plan) -> (sizes and strides, _Prepared, _shape): `_lstm_fwd`'s launch
# arguments apart from its tensors. Cleared when it reaches _CACHE_SIZE entries.
_FWD_CACHE: Dict[tuple, tuple] = {}
_CACHE_SIZE = 4096


def _live_mask(lens: Tensor, T: int) -> Tensor:
    """(T, B, 1) bool: row b is live at step t."""
    return (torch.arange(T, device=lens.device).unsqueeze(1) < lens.unsqueeze(0)).unsqueeze(2)


def _lstm_bwd(d_out: Tensor, d_hn: Tensor, d_cn: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
              w_hr: Optional[Tensor], hs: Tensor, cs: Tensor, gates: Tensor, hc: Optional[Tensor],
              lens: Optional[Tensor], needs: Tuple[bool, ...], plan: LaunchPlan):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr); None where not needed."""
    T, B, I = x.shape
    H, R = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype, dev = x.dtype, x.device

    # The gradient reaching h[t] from outside the recurrence: d_out at live
    # rows, plus d_hn at each row's last live step (dead rows carry h to h_n).
    # Unpacked, the kernel reads d_out as it is (any strides), and its last
    # step from d_out[T-1] + d_hn: one small add, no copy of d_out.
    if lens is None and 0 not in d_out.stride()[1:]:
        dout = d_out
        # with dout's row and column strides, as the kernel reads both alike
        dlast = torch.add(d_out[T - 1], d_hn, out=torch.empty_strided((B, R), d_out.stride()[1:], dtype=dtype,
                                                                      device=dev))
    elif lens is None:  # d_out broadcast along rows or columns (a sum's gradient): one copy
        dout = d_out.contiguous()
        dout[T - 1].add_(d_hn)
        dlast = dout[T - 1]
    else:
        dout = (d_out * _live_mask(lens, T)).to(dtype)
        dout.index_put_((lens.long() - 1, torch.arange(B, device=dev)), d_hn.to(dtype), accumulate=True)
        dlast = dout[T - 1]

    # dg[T] = 0 is read from a cached zero buffer and dc = d_cn is copied by
    # the kernel: no host launches for them.
    dg = _empty((T, B, 4 * H), dtype, dev)
    dc = _empty((B, H), torch.float32, dev)
    dh = _empty((T, B, R), dtype, dev) if w_hr is not None else None
    params = _shared_params(w_hh, w_hr, lens, T, B)
    params.update(
        p_dg=dg, p_dout=dout, p_dh=dh if dh is not None else dout, p_gates=gates, p_c=cs, p_dc=dc,
        p_dgz=_zeros(dev, (B, 4 * H), dtype), p_dcn=d_cn, p_dlast=dlast, s_dcn_b=d_cn.stride(0), s_dcn_h=d_cn.stride(1),
        s_dg_t=dg.stride(0), s_dg_b=dg.stride(1), s_dg_g=dg.stride(2),
        s_do_t=dout.stride(0), s_do_b=dout.stride(1), s_do_r=dout.stride(2),
        s_gt_t=gates.stride(0), s_gt_b=gates.stride(1), s_gt_g=gates.stride(2),
        s_c_t=cs.stride(0), s_c_b=cs.stride(1), s_c_h=cs.stride(2),
        s_dc_b=dc.stride(0), s_dc_h=dc.stride(1),
    )
    params.update(zip(("s_dh_t", "s_dh_b", "s_dh_r"), dh.stride() if dh is not None else _zero_strides(3)))
    constexprs = dict(
        NUM_KG=_chunks(4 * H, plan), NUM_KR=_chunks(R, plan), EVEN_K=_even(plan, 4 * H, R if w_hr is not None else H),
        HAS_PROJ=w_hr is not None,
        PACKED=lens is not None, DOT_PRECISION=_dot_precision(dtype), UPCAST_DOT=_upcast_dot(x),
        **_step_constexprs(plan, B),
    )
    phases = ({"RECUR": False, "CELL": True},)
    if w_hr is not None:
        phases = ({"RECUR": True, "CELL": False}, {"RECUR": False, "CELL": True})
    _launch(_bwd.lstm_bwd_kernel, plan, params, constexprs, T, phases, reverse=True,
            shape=_shape(x, H, R, "backward"))

    need_x, need_h0, need_c0, need_wih, need_whh, need_b, need_whr = needs
    dg2 = dg.view(T * B, 4 * H)
    dx = torch.mm(dg2, w_ih).view(T, B, I) if need_x else None
    dw_ih = torch.mm(dg2.t(), x.reshape(T * B, I)) if need_wih else None
    dw_hh = None
    if need_whh:
        # sum_t dg[t]^T h[t-1], with h[-1] = h0 and h[t] = hs[t]
        dw_hh = torch.mm(dg[0].t(), h0)
        if T > 1:
            dw_hh.addmm_(dg[1:T].reshape((T - 1) * B, 4 * H).t(), hs[: T - 1].reshape((T - 1) * B, R))
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

    `lens` is the (B,) int32 device tensor of row lengths (None when not
    packed); `save` says whether a backward can follow (inside forward, grad
    mode is always off and needs_input_grad ignores it, so the caller decides).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lens, save):
        T, B = x.shape[0], x.shape[1]
        ctx.empty = T == 0 or B == 0
        ctx.has_b_ih, ctx.has_b_hh, ctx.has_w_hr = b_ih is not None, b_hh is not None, w_hr is not None
        if ctx.empty or has_no_data(x):
            # No steps or rows, or shapes without data (meta, FakeTensorMode):
            # nothing to launch; the backward gives gradients of the right shapes.
            ctx.shapes = (x.shape, w_ih.shape, w_hh.shape, None if w_hr is None else w_hr.shape)
            if not ctx.empty:
                ctx.empty = True
                return x.new_empty(T, B, h0.shape[1]), h0.new_empty(h0.shape), c0.new_empty(c0.shape)
            out = x.new_zeros(T, B, h0.shape[1])
            return out, h0.clone(), c0.clone()
        precision = _dot_precision(x.dtype)
        fwd_plan, _ = plans_for(x, w_hh.shape[0] // 4, w_hr.shape[0] if w_hr is not None else 0, training=save)
        bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
        with _device_guard(x):
            out, hs, cs, gates, hc, h_n, c_n = _lstm_fwd(x, h0, c0, w_ih, w_hh, bias, w_hr, lens, save, fwd_plan,
                                                         precision)
        if save:
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, hs, cs, gates, hc, lens)
        # No output is a view (torch forbids in-place on views returned by a
        # Function) or aliases another output or a saved buffer: in training
        # `out` is the kernel's copy of hs, which the backward reads.
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        needs = ctx.needs_input_grad
        if not ctx.empty and differentiable_backward((d_out, d_hn, d_cn)):
            # Past first derivatives: the reference loop, recomputed under autograd.
            inputs, lens = ctx.saved_tensors[:8], ctx.saved_tensors[-1]
            batch_sizes = None
            if lens is not None:
                steps = torch.arange(inputs[0].shape[0])
                batch_sizes = (lens.cpu().unsqueeze(0) > steps.unsqueeze(1)).sum(1)
            return (*reference_grads(inputs, batch_sizes, (d_out, d_hn, d_cn), needs), None, None)
        if ctx.empty:
            x_shape, wih_shape, whh_shape, whr_shape = ctx.shapes
            z = (lambda s: d_out.new_empty(s)) if has_no_data(d_out) else (lambda s: d_out.new_zeros(s))  # noqa: E731
            return (z(x_shape) if needs[0] else None, d_hn, d_cn,
                    z(wih_shape) if needs[3] else None, z(whh_shape) if needs[4] else None,
                    z(whh_shape[0]) if ctx.has_b_ih and needs[5] else None,
                    z(whh_shape[0]) if ctx.has_b_hh and needs[6] else None,
                    z(whr_shape) if ctx.has_w_hr and needs[7] else None, None, None)
        x, h0, _, w_ih, w_hh, _, _, w_hr, hs, cs, gates, hc, lens = ctx.saved_tensors
        # Planned now, with the precision setting the backward's products use.
        _, bwd_plan = plans_for(x, w_hh.shape[0] // 4, w_hr.shape[0] if w_hr is not None else 0, training=True)
        with _device_guard(x):
            dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = _lstm_bwd(
                d_out, d_hn, d_cn, x, h0, w_ih, w_hh, w_hr, hs, cs, gates, hc, lens,
                (needs[0], needs[1], needs[2], needs[3], needs[4], needs[5] or needs[6], needs[7]),
                bwd_plan,
            )
        db_ih = db if ctx.has_b_ih and needs[5] else None
        db_hh = db if ctx.has_b_hh and needs[6] else None
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None, None


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
    dtype, device = x.dtype, x.device
    for name, tensor, shape in (("h0", h0, (B, R)), ("c0", c0, (B, H)), ("w_ih", w_ih, (4 * H, I)),
                                ("b_ih", b_ih, (4 * H,)), ("b_hh", b_hh, (4 * H,)), ("w_hr", w_hr, (R, H))):
        if tensor is None:
            continue
        if tensor.shape != shape:  # a torch.Size equals the tuple of its sizes
            raise ValueError(f"lstm_layer_triton: {name} must have shape {shape}, got {tuple(tensor.shape)}")
        if tensor.dtype != dtype or tensor.device != device:
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
    if transforms_active(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        return lstm_layer_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
    save = needs_autograd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    fn, args = _function_and_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save)
    if not save:
        # Nothing to record: the Function's forward as a plain call (autograd's
        # apply costs more host time than the rest of a small call).
        return fn.forward(_NoCtx(), *args)
    return fn.apply(*args)


class _NoCtx:
    """The ctx of a forward that saves nothing (see `lstm_layer_triton`)."""

    def save_for_backward(self, *tensors):
        raise AssertionError("an inference forward saves nothing")


def _function_and_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, save: bool):
    """The autograd.Function and its arguments for one layer call.

    `fastlstm._ops` calls the Function's forward and backward directly with
    these (under torch.compile), so the two stay one code path.
    """
    _check(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
    lens = None
    if batch_sizes is not None and x.shape[0] > 0:
        lens = host_to_device(sequence_lengths(batch_sizes, x.shape[1]).to(torch.int32), x.device)
    return LSTMTritonFunction, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lens, save)