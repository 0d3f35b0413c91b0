"""The forward step kernel, `lstm_fwd_kernel` (the step bodies, the layout and
the per-step budget are in `fastlstm.kernels`).
"""
import triton
import triton.language as tl

from .barrier import _WS_COUNT, _WS_ERR, _barrier_arrive, _barrier_wait, _end_launch, _grid_barrier, _launch_failed
from .tiles import _copy_rows, _fill_nan, _live_rows, _load_xg, _product, _resident, _sigmoid, _split_gates, _tanh


@triton.jit
def _store_h(p_hs, p_out, p_hp, t64, s_hs_t, s_h_b, s_h_r, i_b, i_r, m_br, b_live, b_hn, PACKED: tl.constexpr):
    """Store a tile of h[t] (columns i_r); when PACKED, dead rows carry h[t-1]
    into hs and get zeros in out. This program wrote the h[t-1] tile itself."""
    p_rows = i_b[:, None] * s_h_b + i_r[None, :] * s_h_r
    ty = p_hs.dtype.element_ty
    if PACKED:
        b_h_prev = tl.load(p_hp + p_rows, mask=m_br, other=0.0)
        tl.store(p_out + t64 * s_hs_t + p_rows, tl.where(b_live, b_hn, 0.0).to(ty), mask=m_br)
        tl.store(p_hs + t64 * s_hs_t + p_rows, tl.where(b_live, b_hn.to(ty), b_h_prev), mask=m_br)
    else:
        tl.store(p_hs + t64 * s_hs_t + p_rows, b_hn.to(ty), mask=m_br)


@triton.jit(do_not_specialize=["t0", "t1", "max_spin"])
def lstm_fwd_kernel(
    p_xg,  # (T, B, 4H) input projection with both biases folded in
    p_w,  # (4H, R) recurrent weight W_hh
    p_wr,  # (R, H) projection weight W_hr, read if HAS_PROJ
    p_h0,  # (B, R) initial state; strides s_h_b, s_h_r like one step of hs
    p_hs,  # (T, B, R) states h_1..h_T, written (dead rows: a copy of the previous state)
    p_c,  # (T+1, B, H) float32 cell states: reads c[t], writes c[t+1]
    p_gates,  # (T, B, 4H) float32 activated gates, written if SAVE_GATES
    p_hc,  # (T, B, H) o * tanh(c) before the projection, written and read if HAS_PROJ
    p_out,  # (T, B, R) output with dead rows zeroed, written if PACKED; strides of hs
    p_len,  # (B,) int32 number of live steps per row, read if PACKED
    p_ws,  # (4,) int32 workspace (_WS_*): barrier counter and error flags, used if PERSISTENT
    p_c0,  # (B, H) initial cell state, copied into c[0] by the launch that runs step 0
    p_hn,  # (B, R) final state h_n = hs[T-1], written by the launch that runs step T-1
    p_cn,  # (B, H) final cell state c_n = c[T] in the storage dtype, written likewise
    t0,  # first step of this launch
    t1,  # one past its last step
    T,  # steps of the whole sequence
    B,  # batch rows
    H,  # hidden units
    R,  # size of h (= H without projection)
    max_spin,  # barrier polls before giving up
    s_xg_t, s_xg_b, s_xg_g,  # strides of xg
    s_w_g, s_w_r,  # strides of w
    s_wr_r, s_wr_h,  # strides of wr
    s_hs_t, s_h_b, s_h_r,  # strides of hs (and out); h0 has (s_h_b, s_h_r)
    s_c_t, s_c_b, s_c_h,  # strides of c
    s_gt_t, s_gt_b, s_gt_g,  # strides of gates
    s_hc_t, s_hc_b, s_hc_h,  # strides of hc
    s_c0_b, s_c0_h, s_hn_b, s_hn_r, s_cn_b, s_cn_h,  # strides of c0, h_n and c_n
    BLOCK_B: tl.constexpr,  # batch rows per tile
    BLOCK_H: tl.constexpr,  # hidden units per program (cell phase)
    BLOCK_R: tl.constexpr,  # projected units per program (projection phase)
    BLOCK_K: tl.constexpr,  # inner-dimension chunk of every product
    NUM_KR: tl.constexpr,  # cdiv(R, BLOCK_K): chunks of the recurrent product
    NUM_KH: tl.constexpr,  # cdiv(H, BLOCK_K): chunks of the projection
    EVEN_K: tl.constexpr,  # BLOCK_K divides every inner dimension (R, and H with HAS_PROJ)
    PERSISTENT: tl.constexpr,  # run [t0, t1) with grid barriers
    CELL: tl.constexpr,  # run the cell phase
    PROJECT: tl.constexpr,  # run the projection phase (HAS_PROJ only)
    HAS_PROJ: tl.constexpr,
    PACKED: tl.constexpr,
    SAVE_GATES: tl.constexpr,
    COPY_OUT: tl.constexpr,  # copy hs[t] into out[t] after the steps (out must not alias hs)
    W_RESIDENT: tl.constexpr,  # weights loaded once per launch (else streamed per step)
    DOT_PRECISION: tl.constexpr,  # "tf32" or "ieee" (float32 only)
    UPCAST_DOT: tl.constexpr,
    STEP_WAVE: tl.constexpr,  # the wave step (see `fastlstm.kernels`); else today's chunked step
    WAVE_K: tl.constexpr,  # STEP_WAVE: K chunks of h[t-1] (or hc) in flight before the first dot
    ONE_TILE: tl.constexpr,  # B <= BLOCK_B: STEP_WAVE carries xg[t+1] and c across the barrier
):
    """Steps [t0, t1) of the forward: gates = xg[t] + h[t-1] @ W_hh^T, the cell
    update, and with HAS_PROJ h[t] = (o * tanh(c)) @ W_hr^T. Dead rows
    (t >= len) keep h and c and get zeros in out.

    The kernel initialises what it reads and writes the final states itself
    (c0 into c[0] before step 0; h_n, c_n after step T-1; out as a copy of hs
    with COPY_OUT), so a layer's forward is the input GEMM and this launch.
    A persistent launch whose barrier timed out writes NaN into everything
    this program owns for its steps (see `_launch_failed`), then the
    workspace is reset for the next launch (`_end_launch`)."""
    pid = tl.program_id(0)
    i_h = pid * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = i_h < H
    i_p = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    m_p = i_p < R
    # The four gates' columns of W_hh^T, interleaved: column n of the stacked
    # operand is unit n // 4 of gate n % 4, that is row (n % 4) * H + unit of
    # w (so one product serves all four gates). W_hr^T[k, r] is wr[r, k].
    i_n = tl.arange(0, 4 * BLOCK_H)
    i_g = (i_n % 4) * H + pid * BLOCK_H + i_n // 4
    m_g = pid * BLOCK_H + i_n // 4 < H
    b_w = _resident(p_w, s_w_r, s_w_g, i_g, m_g, R, BLOCK_K, NUM_KR, EVEN_K, W_RESIDENT and CELL, UPCAST_DOT)
    b_wr = _resident(p_wr, s_wr_h, s_wr_r, i_p, m_p, H, BLOCK_K, NUM_KH, EVEN_K, W_RESIDENT and PROJECT, UPCAST_DOT)
    nprog = tl.num_programs(0)
    n_phases: tl.constexpr = 2 if (CELL and PROJECT) else 1
    # The phase that writes h (hs, out, h_n): its units are i_p (= i_h without projection).
    OWNS_H: tl.constexpr = PROJECT if HAS_PROJ else CELL
    p_sync = p_ws + _WS_COUNT
    p_err = p_ws + _WS_ERR
    spin = max_spin
    if CELL:
        if t0 == 0:
            # c[0] = c0, for this program's units: only this program reads them.
            _copy_rows(p_c0, s_c0_b, s_c0_h, p_c, s_c_b, s_c_h, i_h, m_h, B, BLOCK_B)
            tl.debug_barrier()
    if STEP_WAVE and ONE_TILE and CELL:
        # The whole batch is one tile: this program's xg[t] and c[t] are
        # loaded before the step's barrier wait (xg[t0] here, xg[t+1] between
        # the arrival and the wait of step t), and c stays in registers.
        i_b1 = tl.arange(0, BLOCK_B)
        m_bh1 = (i_b1 < B)[:, None] & m_h[None, :]
        b_xi, b_xf, b_xg, b_xo = _load_xg(p_xg, tl.cast(t0, tl.int64), s_xg_t, s_xg_b, s_xg_g, i_b1, i_h, m_bh1, H)
        p_c1 = p_c + i_b1[:, None] * s_c_b + i_h[None, :] * s_c_h
        b_c_keep = tl.load(p_c1 + tl.cast(t0, tl.int64) * s_c_t, mask=m_bh1, other=0.0)

    for t in range(t0, t1):
        t64 = tl.cast(t, tl.int64)
        # h[t-1]: h0 at the first step, else the previous step of hs.
        p_hp = p_hs + (t64 - 1) * s_hs_t
        if t == 0:
            p_hp = p_h0
        if CELL:
            if pid * BLOCK_H < H:
                for b0 in range(0, B, BLOCK_B):
                    i_b = b0 + tl.arange(0, BLOCK_B)
                    m_b = i_b < B
                    m_bh = m_b[:, None] & m_h[None, :]
                    p_c_bh = p_c + i_b[:, None] * s_c_b + i_h[None, :] * s_c_h
                    if STEP_WAVE:
                        # What no other program writes is loaded before h[t-1]
                        # (or, one tile, before the barrier): after the barrier
                        # a step waits for the wave of h loads alone.
                        if ONE_TILE:
                            b_c_prev = b_c_keep
                        else:
                            b_xi, b_xf, b_xg, b_xo = _load_xg(p_xg, t64, s_xg_t, s_xg_b, s_xg_g, i_b, i_h, m_bh, H)
                            b_c_prev = tl.load(p_c_bh + t64 * s_c_t, mask=m_bh, other=0.0)
                        b_live = _live_rows(p_len, i_b, m_b, t, PACKED)
                    b_gates = _product(p_hp, s_h_b, s_h_r, i_b, m_b, R, b_w, p_w, s_w_r, s_w_g, i_g, m_g,
                                       BLOCK_B, 4 * BLOCK_H, BLOCK_K, NUM_KR, EVEN_K, W_RESIDENT, DOT_PRECISION,
                                       UPCAST_DOT, STEP_WAVE, WAVE_K)
                    b_ai, b_af, b_ag, b_ao = _split_gates(b_gates, BLOCK_B, BLOCK_H)
                    if not STEP_WAVE:
                        b_xi, b_xf, b_xg, b_xo = _load_xg(p_xg, t64, s_xg_t, s_xg_b, s_xg_g, i_b, i_h, m_bh, H)
                    b_i = _sigmoid(b_ai + b_xi)
                    b_f = _sigmoid(b_af + b_xf)
                    b_g = _tanh(b_ag + b_xg)
                    b_o = _sigmoid(b_ao + b_xo)

                    if not STEP_WAVE:
                        b_c_prev = tl.load(p_c_bh + t64 * s_c_t, mask=m_bh, other=0.0)
                    b_c = b_f * b_c_prev + b_i * b_g
                    b_hn = b_o * _tanh(b_c)
                    if SAVE_GATES:
                        p_gt = p_gates + t64 * s_gt_t + i_b[:, None] * s_gt_b + i_h[None, :] * s_gt_g
                        tl.store(p_gt, b_i, mask=m_bh)
                        tl.store(p_gt + H * s_gt_g, b_f, mask=m_bh)
                        tl.store(p_gt + 2 * H * s_gt_g, b_g, mask=m_bh)
                        tl.store(p_gt + 3 * H * s_gt_g, b_o, mask=m_bh)
                    if not STEP_WAVE:
                        b_live = _live_rows(p_len, i_b, m_b, t, PACKED)
                    b_c = tl.where(b_live, b_c, b_c_prev)
                    tl.store(p_c_bh + (t64 + 1) * s_c_t, b_c, mask=m_bh)
                    if STEP_WAVE and ONE_TILE:
                        b_c_keep = b_c
                    if HAS_PROJ:
                        p_hc_bh = p_hc + t64 * s_hc_t + i_b[:, None] * s_hc_b + i_h[None, :] * s_hc_h
                        tl.store(p_hc_bh, tl.where(b_live, b_hn, 0.0).to(p_hc.dtype.element_ty), mask=m_bh)
                    else:
                        _store_h(p_hs, p_out, p_hp, t64, s_hs_t, s_h_b, s_h_r, i_b, i_h, m_bh, b_live, b_hn, PACKED)
            if PERSISTENT and PROJECT:
                spin = _grid_barrier(p_sync, ((t - t0) * n_phases + 1) * nprog, spin, p_err)
        if PROJECT:
            if pid * BLOCK_R < R:
                for b0 in range(0, B, BLOCK_B):
                    i_b = b0 + tl.arange(0, BLOCK_B)
                    m_b = i_b < B
                    b_hn = _product(p_hc + t64 * s_hc_t, s_hc_b, s_hc_h, i_b, m_b, H, b_wr, p_wr, s_wr_h, s_wr_r,
                                    i_p, m_p, BLOCK_B, BLOCK_R, BLOCK_K, NUM_KH, EVEN_K, W_RESIDENT, DOT_PRECISION,
                                    UPCAST_DOT, STEP_WAVE, WAVE_K)
                    b_live = _live_rows(p_len, i_b, m_b, t, PACKED)
                    _store_h(p_hs, p_out, p_hp, t64, s_hs_t, s_h_b, s_h_r, i_b, i_p, m_b[:, None] & m_p[None, :],
                             b_live, b_hn, PACKED)
        if PERSISTENT and not STEP_WAVE:
            spin = _grid_barrier(p_sync, (t - t0 + 1) * n_phases * nprog, spin, p_err)
        if STEP_WAVE:
            # Split barrier: arrive, load the next step's xg (no program
            # writes it; the last step reloads its own, in bounds), then wait.
            if PERSISTENT:
                _barrier_arrive(p_sync)
            if ONE_TILE and CELL:
                t_next = tl.cast(tl.minimum(t + 1, t1 - 1), tl.int64)
                b_xi, b_xf, b_xg, b_xo = _load_xg(p_xg, t_next, s_xg_t, s_xg_b, s_xg_g, i_b1, i_h, m_bh1, H)
            if PERSISTENT:
                spin = _barrier_wait(p_sync, (t - t0 + 1) * n_phases * nprog, spin, p_err)

    if PERSISTENT:
        if _launch_failed(p_ws):
            for t in range(t0, t1):
                t64 = tl.cast(t, tl.int64)
                if CELL:
                    _fill_nan(p_c + (t64 + 1) * s_c_t, s_c_b, s_c_h, i_h, m_h, B, BLOCK_B)
                    if SAVE_GATES:
                        for q in tl.static_range(4):
                            _fill_nan(p_gates + t64 * s_gt_t + q * H * s_gt_g, s_gt_b, s_gt_g, i_h, m_h, B, BLOCK_B)
                    if HAS_PROJ:
                        _fill_nan(p_hc + t64 * s_hc_t, s_hc_b, s_hc_h, i_h, m_h, B, BLOCK_B)
                if OWNS_H:
                    _fill_nan(p_hs + t64 * s_hs_t, s_h_b, s_h_r, i_p, m_p, B, BLOCK_B)
                    if PACKED:
                        _fill_nan(p_out + t64 * s_hs_t, s_h_b, s_h_r, i_p, m_p, B, BLOCK_B)
    tl.debug_barrier()
    if OWNS_H:
        if COPY_OUT:
            for t in range(t0, t1):
                t64 = tl.cast(t, tl.int64)
                _copy_rows(p_hs + t64 * s_hs_t, s_h_b, s_h_r, p_out + t64 * s_hs_t, s_h_b, s_h_r, i_p, m_p, B,
                           BLOCK_B)
        if t1 == T:
            _copy_rows(p_hs + (tl.cast(T, tl.int64) - 1) * s_hs_t, s_h_b, s_h_r, p_hn, s_hn_b, s_hn_r, i_p, m_p, B,
                       BLOCK_B)
    if CELL:
        if t1 == T:
            _copy_rows(p_c + tl.cast(T, tl.int64) * s_c_t, s_c_b, s_c_h, p_cn, s_cn_b, s_cn_h, i_h, m_h, B, BLOCK_B)
    if PERSISTENT:
        _end_launch(p_ws)
