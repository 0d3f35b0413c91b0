"""The backward step kernel, `lstm_bwd_kernel`, and the pointwise backward of
the cell (the step bodies, the layout and the per-step budget are in
`fastlstm.kernels`).
"""
import triton
import triton.language as tl

from .barrier import _WS_COUNT, _WS_ERR, _barrier_arrive, _barrier_wait, _end_launch, _grid_barrier, _launch_failed
from .tiles import _copy_rows, _fill_nan, _live_rows, _matmul, _matmul_wave, _product, _resident, _tanh


@triton.jit
def _cell_backward_inputs(p_gates, p_c, p_dc, t64, i_b, i_h, m_bh, H, s_gt_t, s_gt_b, s_gt_g, s_c_t, s_c_b, s_c_h,
                          s_dc_b, s_dc_h):
    """What the pointwise backward of one tile at step t reads, none of it
    written by another program: the saved gates i, f, g, o, c[t], tanh(c[t+1])
    and this program's running dc."""
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
    return b_i, b_f, b_g, b_o, b_c_prev, b_tc, b_dc_next


@triton.jit
def _cell_backward(p_gates, p_c, p_dc, p_dg, p_len, t, t64, b_dh, i_b, m_b, i_h, m_bh, H,
                   s_gt_t, s_gt_b, s_gt_g, s_c_t, s_c_b, s_c_h, s_dc_b, s_dc_h, s_dg_t, s_dg_b, s_dg_g,
                   PACKED: tl.constexpr):
    """Pointwise backward of one (BLOCK_B, BLOCK_H) tile of the cell at step t,
    given dh[t]: writes dg[t] and updates dc (this program's tile only)."""
    b_i, b_f, b_g, b_o, b_c_prev, b_tc, b_dc_next = _cell_backward_inputs(
        p_gates, p_c, p_dc, t64, i_b, i_h, m_bh, H, s_gt_t, s_gt_b, s_gt_g, s_c_t, s_c_b, s_c_h, s_dc_b, s_dc_h)
    _cell_backward_update(p_dc, p_dg, p_len, t, t64, b_dh, i_b, m_b, i_h, m_bh, H, s_dc_b, s_dc_h,
                          s_dg_t, s_dg_b, s_dg_g, b_i, b_f, b_g, b_o, b_c_prev, b_tc, b_dc_next, PACKED)


@triton.jit
def _cell_backward_update(p_dc, p_dg, p_len, t, t64, b_dh, i_b, m_b, i_h, m_bh, H, s_dc_b, s_dc_h,
                          s_dg_t, s_dg_b, s_dg_g, b_i, b_f, b_g, b_o, b_c_prev, b_tc, b_dc_next,
                          PACKED: tl.constexpr):
    """The pointwise backward of one tile from its inputs (`_cell_backward_inputs`)
    and dh[t]: writes dg[t] and dc."""
    p_dc_bh = p_dc + i_b[:, None] * s_dc_b + i_h[None, :] * s_dc_h
    b_dc = b_dc_next + b_dh * b_o * (1.0 - b_tc * b_tc)
    b_di = b_dc * b_g * b_i * (1.0 - b_i)
    b_df = b_dc * b_c_prev * b_f * (1.0 - b_f)
    b_dgg = b_dc * b_i * (1.0 - b_g * b_g)
    b_do = b_dh * b_tc * b_o * (1.0 - b_o)
    b_dc = b_dc * b_f
    if PACKED:
        b_live = _live_rows(p_len, i_b, m_b, t, PACKED)
        b_di = tl.where(b_live, b_di, 0.0)
        b_df = tl.where(b_live, b_df, 0.0)
        b_dgg = tl.where(b_live, b_dgg, 0.0)
        b_do = tl.where(b_live, b_do, 0.0)
        b_dc = tl.where(b_live, b_dc, b_dc_next)
    tl.store(p_dc_bh, b_dc, mask=m_bh)

    p_dg_bh = p_dg + t64 * s_dg_t + i_b[:, None] * s_dg_b + i_h[None, :] * s_dg_g
    ty = p_dg.dtype.element_ty
    tl.store(p_dg_bh, b_di.to(ty), mask=m_bh)
    tl.store(p_dg_bh + H * s_dg_g, b_df.to(ty), mask=m_bh)
    tl.store(p_dg_bh + 2 * H * s_dg_g, b_dgg.to(ty), mask=m_bh)
    tl.store(p_dg_bh + 3 * H * s_dg_g, b_do.to(ty), mask=m_bh)


@triton.jit(do_not_specialize=["t0", "t1", "max_spin"])
def lstm_bwd_kernel(
    p_dg,  # (T+1, B, 4H) gradients of the gate pre-activations: reads dg[t+1], writes dg[t]
    p_w,  # (4H, R) recurrent weight W_hh
    p_wr,  # (R, H) projection weight W_hr, read if HAS_PROJ
    p_dout,  # (T, B, R) gradient reaching h[t] from outside the recurrence (read for t < T-1)
    p_dlast,  # (B, R) the same at t = T-1 (d_out[T-1] + d_hn), with dout's row and column strides
    p_dh,  # (T, B, R) dh[t], written and read if HAS_PROJ
    p_gates,  # (T, B, 4H) float32 activated gates from the forward
    p_c,  # (T+1, B, H) float32 cell states from the forward
    p_dc,  # (B, H) float32 running gradient of the cell state, updated in place
    p_len,  # (B,) int32 number of live steps per row, read if PACKED
    p_ws,  # (4,) int32 workspace (_WS_*): barrier counter and error flags, used if PERSISTENT
    p_dgz,  # (B, 4H) zeros with the strides of one step of dg: read as dg[T]
    p_dcn,  # (B, H) gradient of c_n, copied into dc by the launch that runs step T-1
    t0,  # lowest step of this launch
    t1,  # one past its highest step (steps run from t1 - 1 down to t0)
    T,  # steps of the whole sequence
    B,  # batch rows
    H,  # hidden units
    R,  # size of h (= H without projection)
    max_spin,  # barrier polls before giving up
    s_dg_t, s_dg_b, s_dg_g,  # strides of dg
    s_w_g, s_w_r,  # strides of w
    s_wr_r, s_wr_h,  # strides of wr
    s_do_t, s_do_b, s_do_r,  # strides of dout
    s_dh_t, s_dh_b, s_dh_r,  # strides of dh
    s_gt_t, s_gt_b, s_gt_g,  # strides of gates
    s_c_t, s_c_b, s_c_h,  # strides of c
    s_dc_b, s_dc_h,  # strides of dc
    s_dcn_b, s_dcn_h,  # strides of dcn
    BLOCK_B: tl.constexpr,  # batch rows per tile
    BLOCK_H: tl.constexpr,  # hidden units per program (cell phase)
    BLOCK_R: tl.constexpr,  # units of h per program (recurrent phase, with projection)
    BLOCK_K: tl.constexpr,  # inner-dimension chunk of every product
    NUM_KG: tl.constexpr,  # cdiv(4H, BLOCK_K): chunks of the recurrent product
    NUM_KR: tl.constexpr,  # cdiv(R, BLOCK_K): chunks of the projection's product
    EVEN_K: tl.constexpr,  # BLOCK_K divides every inner dimension (4H, and R with HAS_PROJ)
    PERSISTENT: tl.constexpr,  # run [t0, t1) with grid barriers
    RECUR: tl.constexpr,  # run the recurrent phase (with HAS_PROJ; fused into CELL without)
    CELL: tl.constexpr,  # run the cell phase
    HAS_PROJ: tl.constexpr,
    PACKED: tl.constexpr,
    W_RESIDENT: tl.constexpr,  # weights loaded once per launch (else streamed per step)
    DOT_PRECISION: tl.constexpr,  # "tf32" or "ieee" (float32 only)
    UPCAST_DOT: tl.constexpr,
    STEP_WAVE: tl.constexpr,  # the wave step (see `fastlstm.kernels`); else today's chunked step
    WAVE_K: tl.constexpr,  # STEP_WAVE: K chunks of dg[t+1] (or dh) in flight before the first dot
    ONE_TILE: tl.constexpr,  # B <= BLOCK_B (unused by the backward so far; one flag for both kernels)
):
    """Steps t1-1 down to t0 of the backward: dh[t] = dg[t+1] @ W_hh + dout[t]
    (then dh[t] @ W_hr with HAS_PROJ), and the pointwise backward of the cell:
    dg[t] and dc. Dead rows write zero gate gradients and pass dc through.

    dg (T, B, 4H) has no step T: dg[T] is read from the zeros p_dgz, and dc
    starts as a copy of d_cn made here, so the host launches nothing for
    them. A persistent launch whose barrier timed out writes NaN into what
    this program owns (dg, dc, dh), as the forward does."""
    pid = tl.program_id(0)
    i_h = pid * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = i_h < H
    i_p = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    m_p = i_p < R
    # Without projection the cell phase computes dh for its own units itself.
    if HAS_PROJ:
        b_w = _resident(p_w, s_w_g, s_w_r, i_p, m_p, 4 * H, BLOCK_K, NUM_KG, EVEN_K, W_RESIDENT and RECUR, UPCAST_DOT)
        b_wr = _resident(p_wr, s_wr_r, s_wr_h, i_h, m_h, R, BLOCK_K, NUM_KR, EVEN_K, W_RESIDENT and CELL, UPCAST_DOT)
    else:
        b_w = _resident(p_w, s_w_g, s_w_r, i_h, m_h, 4 * H, BLOCK_K, NUM_KG, EVEN_K, W_RESIDENT and CELL, UPCAST_DOT)
        b_wr = b_w
    nprog = tl.num_programs(0)
    n_phases: tl.constexpr = 2 if (RECUR and CELL) else 1
    p_sync = p_ws + _WS_COUNT
    p_err = p_ws + _WS_ERR
    spin = max_spin
    if CELL:
        if t1 == T:
            # dc = d_cn, for this program's units: only this program reads them.
            _copy_rows(p_dcn, s_dcn_b, s_dcn_h, p_dc, s_dc_b, s_dc_h, i_h, m_h, B, BLOCK_B)
            tl.debug_barrier()

    for s in range(0, t1 - t0):
        t = t1 - 1 - s
        t64 = tl.cast(t, tl.int64)
        p_dg_next = p_dg + (t64 + 1) * s_dg_t
        p_dout_t = p_dout + t64 * s_do_t
        if t == T - 1:
            p_dg_next = p_dgz
            p_dout_t = p_dlast
        if RECUR:
            if pid * BLOCK_R < R:
                for b0 in range(0, B, BLOCK_B):
                    i_b = b0 + tl.arange(0, BLOCK_B)
                    m_b = i_b < B
                    m_bp = m_b[:, None] & m_p[None, :]
                    p_do = p_dout_t + i_b[:, None] * s_do_b + i_p[None, :] * s_do_r
                    if STEP_WAVE:
                        b_do = tl.load(p_do, mask=m_bp, other=0.0).to(tl.float32)  # before the dg wave
                    b_dh = _product(p_dg_next, s_dg_b, s_dg_g, i_b, m_b, 4 * H, b_w, p_w, s_w_g, s_w_r, i_p, m_p,
                                    BLOCK_B, BLOCK_R, BLOCK_K, NUM_KG, EVEN_K, W_RESIDENT, DOT_PRECISION, UPCAST_DOT,
                                    STEP_WAVE, WAVE_K)
                    if not STEP_WAVE:
                        b_do = tl.load(p_do, mask=m_bp, other=0.0).to(tl.float32)
                    b_dh += b_do
                    p_dh_bp = p_dh + t64 * s_dh_t + i_b[:, None] * s_dh_b + i_p[None, :] * s_dh_r
                    tl.store(p_dh_bp, b_dh.to(p_dh.dtype.element_ty), mask=m_bp)
            if PERSISTENT and CELL:
                spin = _grid_barrier(p_sync, (s * n_phases + 1) * nprog, spin, p_err)
        if CELL:
            if pid * BLOCK_H < H:
                for b0 in range(0, B, BLOCK_B):
                    i_b = b0 + tl.arange(0, BLOCK_B)
                    m_b = i_b < B
                    m_bh = m_b[:, None] & m_h[None, :]
                    if STEP_WAVE:
                        # The tile's own inputs first, then one wave of dg[t+1]
                        # (or dh[t]): after the barrier, one round trip.
                        b_i, b_f, b_g, b_o, b_c_prev, b_tc, b_dc_next = _cell_backward_inputs(
                            p_gates, p_c, p_dc, t64, i_b, i_h, m_bh, H, s_gt_t, s_gt_b, s_gt_g, s_c_t, s_c_b, s_c_h,
                            s_dc_b, s_dc_h)
                        if HAS_PROJ:
                            b_dh = _matmul_wave(p_dh + t64 * s_dh_t, s_dh_b, s_dh_r, i_b, m_b, R, b_wr, BLOCK_B,
                                                BLOCK_H, BLOCK_K, NUM_KR, WAVE_K, EVEN_K, DOT_PRECISION, UPCAST_DOT)
                        else:
                            p_do = p_dout_t + i_b[:, None] * s_do_b + i_h[None, :] * s_do_r
                            b_do = tl.load(p_do, mask=m_bh, other=0.0).to(tl.float32)
                            b_dh = _matmul_wave(p_dg_next, s_dg_b, s_dg_g, i_b, m_b, 4 * H, b_w, BLOCK_B, BLOCK_H,
                                                BLOCK_K, NUM_KG, WAVE_K, EVEN_K, DOT_PRECISION, UPCAST_DOT)
                            b_dh += b_do
                        _cell_backward_update(p_dc, p_dg, p_len, t, t64, b_dh, i_b, m_b, i_h, m_bh, H, s_dc_b, s_dc_h,
                                              s_dg_t, s_dg_b, s_dg_g, b_i, b_f, b_g, b_o, b_c_prev, b_tc,
                                              b_dc_next, PACKED)
                    else:
                        if HAS_PROJ:
                            b_dh = _matmul(p_dh + t64 * s_dh_t, s_dh_b, s_dh_r, i_b, m_b, R, b_wr, p_wr, s_wr_r,
                                           s_wr_h, i_h, m_h, BLOCK_B, BLOCK_H, BLOCK_K, NUM_KR, EVEN_K, W_RESIDENT,
                                           DOT_PRECISION, UPCAST_DOT)
                        else:
                            b_dh = _matmul(p_dg_next, s_dg_b, s_dg_g, i_b, m_b, 4 * H, b_w, p_w, s_w_g, s_w_r, i_h,
                                           m_h, BLOCK_B, BLOCK_H, BLOCK_K, NUM_KG, EVEN_K, W_RESIDENT, DOT_PRECISION,
                                           UPCAST_DOT)
                            p_do = p_dout_t + i_b[:, None] * s_do_b + i_h[None, :] * s_do_r
                            b_dh += tl.load(p_do, mask=m_bh, other=0.0).to(tl.float32)
                        _cell_backward(p_gates, p_c, p_dc, p_dg, p_len, t, t64, b_dh, i_b, m_b, i_h, m_bh, H,
                                       s_gt_t, s_gt_b, s_gt_g, s_c_t, s_c_b, s_c_h, s_dc_b, s_dc_h,
                                       s_dg_t, s_dg_b, s_dg_g, PACKED)
        if PERSISTENT and not STEP_WAVE:
            spin = _grid_barrier(p_sync, (s + 1) * n_phases * nprog, spin, p_err)
        if PERSISTENT and STEP_WAVE:
            _barrier_arrive(p_sync)
            spin = _barrier_wait(p_sync, (s + 1) * n_phases * nprog, spin, p_err)

    if PERSISTENT:
        if _launch_failed(p_ws):
            if CELL:
                for t in range(t0, t1):
                    for q in tl.static_range(4):
                        _fill_nan(p_dg + tl.cast(t, tl.int64) * s_dg_t + q * H * s_dg_g, s_dg_b, s_dg_g, i_h, m_h, B,
                                  BLOCK_B)
                _fill_nan(p_dc, s_dc_b, s_dc_h, i_h, m_h, B, BLOCK_B)
            if RECUR:
                for t in range(t0, t1):
                    _fill_nan(p_dh + tl.cast(t, tl.int64) * s_dh_t, s_dh_b, s_dh_r, i_p, m_p, B, BLOCK_B)
        _end_launch(p_ws)
