"""Triton kernels for one LSTM layer: one fused launch per time step.

Only `@triton.jit` code lives here; the launchers, the autograd Function and
the public function are in `fastlstm.backends.triton`.

Layout (every tensor time-major, explicit strides):
    xg     (T, B, 4H)  x_t @ W_ih^T + b_ih + b_hh, gate order i, f, g, o
    w_hh   (4H, R)
    h      (B, R)      two pointers per step: the state before step t and
                       the state after it, so that unpacked, the states are
                       `out` itself. Storage dtype: h only ever feeds a
                       storage-dtype dot, so nothing is lost.
    c      (T+1, B, H) cell states, float32: c[0] = c0, c[t+1] after step t
    gates  (T, B, 4H)  activated gates, float32, saved for the backward
    dg     (T+1, B, 4H) gradients of the gate pre-activations, dg[T] = 0

Program grid of both step kernels: (cdiv(H, BLOCK_H), cdiv(B, BLOCK_B)); a
program owns hidden units [pid0*BLOCK_H, +BLOCK_H) of all four gates for rows
[pid1*BLOCK_B, +BLOCK_B), so the pointwise part never leaves registers.
Accumulation and cell state are float32 whatever the storage dtype.

UPCAST_DOT casts the dot operands to float32 first. The host sets it only
under the interpreter for bfloat16, whose `tl.dot` there multiplies the raw
uint16 bit patterns (triton 3.9). It changes nothing numerically: products of
two bfloat16 values are exact in float32, as in a tensor-core bf16 dot.
"""
import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # 2*sigmoid(2x) - 1: no overflow for any x, absolute error ~1 ulp near 0.
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's rows, hidden units and K offsets, with their masks."""
    i_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    i_h = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    i_k = tl.arange(0, BLOCK_K)
    m_b = i_b < B
    m_h = i_h < H
    return i_b, i_h, i_k, m_b, m_h, m_b[:, None] & m_h[None, :]


@triton.jit(do_not_specialize=["t"])
def lstm_fwd_step_kernel(
    p_xg,  # (T, B, 4H) input projection with both biases folded in
    p_w,  # (4H, R) recurrent weight W_hh
    p_hp,  # (B, R) h[t-1], the state this step starts from
    p_hn,  # (B, R) h[t], written unless HAS_PROJ (dead rows: a copy of h[t-1])
    p_c,  # (T+1, B, H) float32 cell states: reads c[t], writes c[t+1]
    p_gates,  # (T, B, 4H) float32 activated gates, written if SAVE_GATES
    p_hc,  # (T, B, H) o * tanh(c) before the projection, written if HAS_PROJ
    p_out,  # (T, B, R) output with dead rows zeroed, written if PACKED and not HAS_PROJ
    p_len,  # (B,) int32 number of live steps per row, read if PACKED
    t,  # time step (runtime int: never specialised)
    B,  # batch rows
    H,  # hidden units
    R,  # size of h (= H without projection)
    s_xg_t, s_xg_b, s_xg_g,  # strides of xg
    s_w_g, s_w_r,  # strides of w_hh
    s_hp_b, s_hp_r,  # strides of hp
    s_hn_b, s_hn_r,  # strides of hn
    s_c_t, s_c_b, s_c_h,  # strides of c
    s_gt_t, s_gt_b, s_gt_g,  # strides of gates
    s_hc_t, s_hc_b, s_hc_h,  # strides of hc
    s_o_t, s_o_b, s_o_r,  # strides of out
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    PACKED: tl.constexpr,
    SAVE_GATES: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """gates = xg[t] + hp @ W_hh^T for a (BLOCK_B, 4 x BLOCK_H) tile, then
    the cell update; dead rows (t >= len) keep h and c and get zeros in out."""
    t64 = t.to(tl.int64)
    i_b, i_h, i_k, m_b, m_h, m_bh = _tile(B, H, BLOCK_B, BLOCK_H, BLOCK_K)

    # Recurrent product, one accumulator per gate; the h tile is loaded once
    # per K step and shared by the four gates.
    b_acc_i = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    b_acc_f = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    b_acc_g = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    b_acc_o = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    for k0 in range(0, R, BLOCK_K):
        i_r = k0 + i_k
        m_r = i_r < R
        b_hp = tl.load(p_hp + i_b[:, None] * s_hp_b + i_r[None, :] * s_hp_r,
                       mask=m_b[:, None] & m_r[None, :], other=0.0)
        if UPCAST_DOT:
            b_hp = b_hp.to(tl.float32)
        # W_hh^T tile: rows are r, columns are hidden units of one gate.
        p_wk = p_w + i_r[:, None] * s_w_r + i_h[None, :] * s_w_g
        m_w = m_r[:, None] & m_h[None, :]
        b_w = tl.load(p_wk, mask=m_w, other=0.0)
        if UPCAST_DOT:
            b_w = b_w.to(tl.float32)
        b_acc_i = tl.dot(b_hp, b_w, b_acc_i, input_precision=DOT_PRECISION)
        b_w = tl.load(p_wk + H * s_w_g, mask=m_w, other=0.0)
        if UPCAST_DOT:
            b_w = b_w.to(tl.float32)
        b_acc_f = tl.dot(b_hp, b_w, b_acc_f, input_precision=DOT_PRECISION)
        b_w = tl.load(p_wk + 2 * H * s_w_g, mask=m_w, other=0.0)
        if UPCAST_DOT:
            b_w = b_w.to(tl.float32)
        b_acc_g = tl.dot(b_hp, b_w, b_acc_g, input_precision=DOT_PRECISION)
        b_w = tl.load(p_wk + 3 * H * s_w_g, mask=m_w, other=0.0)
        if UPCAST_DOT:
            b_w = b_w.to(tl.float32)
        b_acc_o = tl.dot(b_hp, b_w, b_acc_o, input_precision=DOT_PRECISION)

    p_x = p_xg + t64 * s_xg_t + i_b[:, None] * s_xg_b + i_h[None, :] * s_xg_g
    b_i = _sigmoid(b_acc_i + tl.load(p_x, mask=m_bh, other=0.0).to(tl.float32))
    b_f = _sigmoid(b_acc_f + tl.load(p_x + H * s_xg_g, mask=m_bh, other=0.0).to(tl.float32))
    b_g = _tanh(b_acc_g + tl.load(p_x + 2 * H * s_xg_g, mask=m_bh, other=0.0).to(tl.float32))
    b_o = _sigmoid(b_acc_o + tl.load(p_x + 3 * H * s_xg_g, mask=m_bh, other=0.0).to(tl.float32))

    p_c_bh = p_c + i_b[:, None] * s_c_b + i_h[None, :] * s_c_h
    b_c_prev = tl.load(p_c_bh + t64 * s_c_t, mask=m_bh, other=0.0)
    b_c = b_f * b_c_prev + b_i * b_g
    b_hn = b_o * _tanh(b_c)

    if SAVE_GATES:
        p_gt = p_gates + t64 * s_gt_t + i_b[:, None] * s_gt_b + i_h[None, :] * s_gt_g
        tl.store(p_gt, b_i, mask=m_bh)
        tl.store(p_gt + H * s_gt_g, b_f, mask=m_bh)
        tl.store(p_gt + 2 * H * s_gt_g, b_g, mask=m_bh)
        tl.store(p_gt + 3 * H * s_gt_g, b_o, mask=m_bh)

    if PACKED:
        b_len = tl.load(p_len + i_b, mask=m_b, other=0)
        b_live = (t < b_len)[:, None]
        b_c = tl.where(b_live, b_c, b_c_prev)
    tl.store(p_c_bh + (t64 + 1) * s_c_t, b_c, mask=m_bh)

    if HAS_PROJ:
        # The projection (a GEMM over all of H) runs on the host; it also
        # carries h over dead rows.
        p_hc_bh = p_hc + t64 * s_hc_t + i_b[:, None] * s_hc_b + i_h[None, :] * s_hc_h
        if PACKED:
            b_hn = tl.where(b_live, b_hn, 0.0)
        tl.store(p_hc_bh, b_hn.to(p_hc.dtype.element_ty), mask=m_bh)
    else:
        p_hn_bh = p_hn + i_b[:, None] * s_hn_b + i_h[None, :] * s_hn_r
        if PACKED:
            b_h_prev = tl.load(p_hp + i_b[:, None] * s_hp_b + i_h[None, :] * s_hp_r, mask=m_bh, other=0.0)
            p_o = p_out + t64 * s_o_t + i_b[:, None] * s_o_b + i_h[None, :] * s_o_r
            tl.store(p_o, tl.where(b_live, b_hn, 0.0).to(p_out.dtype.element_ty), mask=m_bh)
            tl.store(p_hn_bh, tl.where(b_live, b_hn.to(p_hn.dtype.element_ty), b_h_prev), mask=m_bh)
        else:
            tl.store(p_hn_bh, b_hn.to(p_hn.dtype.element_ty), mask=m_bh)


@triton.jit(do_not_specialize=["t"])
def lstm_bwd_step_kernel(
    p_a,  # (B, K) left operand of the recurrent product: dg[t+1] (K=4H) or, with projection, dh[t] (K=R)
    p_w,  # (K, H) right operand: W_hh (4H, R=H) or, with projection, W_hr (R, H)
    p_dout,  # (T, B, H) gradient reaching h[t] from outside the recurrence, read if HAS_DOUT
    p_gates,  # (T, B, 4H) float32 activated gates from the forward
    p_c,  # (T+1, B, H) float32 cell states from the forward
    p_dc,  # (B, H) float32 running gradient of the cell state, updated in place
    p_dg,  # (T+1, B, 4H) gradients of the gate pre-activations: writes dg[t]
    p_len,  # (B,) int32 number of live steps per row, read if PACKED
    t,  # time step (runtime int: never specialised)
    B,  # batch rows
    H,  # hidden units
    K,  # inner size of the recurrent product
    s_a_b, s_a_k,  # strides of a
    s_w_k, s_w_h,  # strides of w
    s_do_t, s_do_b, s_do_h,  # strides of dout
    s_gt_t, s_gt_b, s_gt_g,  # strides of gates
    s_c_t, s_c_b, s_c_h,  # strides of c
    s_dc_b, s_dc_h,  # strides of dc
    s_dg_t, s_dg_b, s_dg_g,  # strides of dg
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_DOUT: tl.constexpr,
    PACKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """dh[t] = a @ w (+ dout[t]) for a (BLOCK_B, BLOCK_H) tile, then the
    pointwise backward of the cell: dg[t] and dc[t-1]. Dead rows write zero
    gate gradients and pass dc through unchanged."""
    t64 = t.to(tl.int64)
    i_b, i_h, i_k, m_b, m_h, m_bh = _tile(B, H, BLOCK_B, BLOCK_H, BLOCK_K)

    b_dh = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        i_kk = k0 + i_k
        m_k = i_kk < K
        b_a = tl.load(p_a + i_b[:, None] * s_a_b + i_kk[None, :] * s_a_k,
                      mask=m_b[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(p_w + i_kk[:, None] * s_w_k + i_h[None, :] * s_w_h,
                      mask=m_k[:, None] & m_h[None, :], other=0.0)
        if UPCAST_DOT:
            b_a = b_a.to(tl.float32)
            b_w = b_w.to(tl.float32)
        b_dh = tl.dot(b_a, b_w, b_dh, input_precision=DOT_PRECISION)
    if HAS_DOUT:
        p_do = p_dout + t64 * s_do_t + i_b[:, None] * s_do_b + i_h[None, :] * s_do_h
        b_dh += tl.load(p_do, mask=m_bh, other=0.0).to(tl.float32)

    p_gt = p_gates + t64 * s_gt_t + i_b[:, None] * s_gt_b + i_h[None, :] * s_gt_g
    b_i = tl.load(p_gt, mask=m_bh, other=0.0)
    b_f = tl.load(p_gt + H * s_gt_g, mask=m_bh, other=0.0)
    b_g = tl.load(p_gt + 2 * H * s_gt_g, mask=m_bh, other=0.0)
    b_o = tl.load(p_gt + 3 * H * s_gt_g, mask=m_bh, other=0.0)
    p_c_bh = p_c + i_b[:, None] * s_c_b + i_h[None, :] * s_c_h
    b_c_prev = tl.load(p_c_bh + t64 * s_c_t, mask=m_bh, other=0.0)
    b_tc = _tanh(tl.load(p_c_bh + (t64 + 1) * s_c_t, mask=m_bh, other=0.0))
    p_dc_bh = p_dc + i_b[:, None] * s_dc_b + i_h[None, :] * s_dc_h
    b_dc_next = tl.load(p_dc_bh, mask=m_bh, other=0.0)

    b_dc = b_dc_next + b_dh * b_o * (1.0 - b_tc * b_tc)
    b_di = b_dc * b_g * b_i * (1.0 - b_i)
    b_df = b_dc * b_c_prev * b_f * (1.0 - b_f)
    b_dg = b_dc * b_i * (1.0 - b_g * b_g)
    b_do = b_dh * b_tc * b_o * (1.0 - b_o)
    b_dc = b_dc * b_f
    if PACKED:
        b_len = tl.load(p_len + i_b, mask=m_b, other=0)
        b_live = (t < b_len)[:, None]
        b_di = tl.where(b_live, b_di, 0.0)
        b_df = tl.where(b_live, b_df, 0.0)
        b_dg = tl.where(b_live, b_dg, 0.0)
        b_do = tl.where(b_live, b_do, 0.0)
        b_dc = tl.where(b_live, b_dc, b_dc_next)
    tl.store(p_dc_bh, b_dc, mask=m_bh)

    p_dg_bh = p_dg + t64 * s_dg_t + i_b[:, None] * s_dg_b + i_h[None, :] * s_dg_g
    ty = p_dg.dtype.element_ty
    tl.store(p_dg_bh, b_di.to(ty), mask=m_bh)
    tl.store(p_dg_bh + H * s_dg_g, b_df.to(ty), mask=m_bh)
    tl.store(p_dg_bh + 2 * H * s_dg_g, b_dg.to(ty), mask=m_bh)
    tl.store(p_dg_bh + 3 * H * s_dg_g, b_do.to(ty), mask=m_bh)
