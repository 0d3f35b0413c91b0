"""What both step kernels build a step from: fp32 `_sigmoid` and `_tanh`, the
copies and NaN fills of whole rows, the tiles and products of a step and the
split of the gates.

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
def _fill_nan(p_dst, s_b, s_u, i_u, m_u, B, BLOCK_B: tl.constexpr):
    """dst[b, i_u] = NaN for every row b: what a launch writes where it could
    not compute (its barrier timed out)."""
    for b0 in range(0, B, BLOCK_B):
        i_b = b0 + tl.arange(0, BLOCK_B)
        m = (i_b < B)[:, None] & m_u[None, :]
        b_nan = ((i_b[:, None] + i_u[None, :]) * 0 + 0x7FC00000).to(tl.float32, bitcast=True)  # quiet NaN
        tl.store(p_dst + i_b[:, None] * s_b + i_u[None, :] * s_u, b_nan.to(p_dst.dtype.element_ty), mask=m)


@triton.jit
def _copy_rows(p_src, s_src_b, s_src_u, p_dst, s_dst_b, s_dst_u, i_u, m_u, B, BLOCK_B: tl.constexpr):
    """dst[b, i_u] = src[b, i_u] for every row b, cast to dst's dtype: the
    kernels' own initialisation and final copies (c0 into c[0], the final
    states), so that the host launches nothing for them. Only this program
    reads or writes these units, so no barrier between programs is needed."""
    for b0 in range(0, B, BLOCK_B):
        i_b = b0 + tl.arange(0, BLOCK_B)
        m = (i_b < B)[:, None] & m_u[None, :]
        b_v = tl.load(p_src + i_b[:, None] * s_src_b + i_u[None, :] * s_src_u, mask=m, other=0.0)
        tl.store(p_dst + i_b[:, None] * s_dst_b + i_u[None, :] * s_dst_u, b_v.to(p_dst.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------
# Tiles and products
# ----------------------------------------------------------------------------


@triton.jit
def _load_a(p_a, s_a_b, s_a_k, i_b, m_b, k0, K, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
            UPCAST_DOT: tl.constexpr):
    """Rows i_b, columns [k0, k0 + BLOCK_K) of the streamed operand A (B, K),
    read past L1: other programs wrote it, and L1 is not coherent. EVEN_K:
    BLOCK_K divides K, so no column mask (fewer registers and instructions)."""
    i_k = k0 + tl.arange(0, BLOCK_K)
    m_a = m_b[:, None] if EVEN_K else m_b[:, None] & (i_k < K)[None, :]
    b_a = tl.load(p_a + i_b[:, None] * s_a_b + i_k[None, :] * s_a_k, mask=m_a, other=0.0, cache_modifier=".cg")
    if UPCAST_DOT:
        b_a = b_a.to(tl.float32)
    return b_a


@triton.jit
def _load_w(p_w, s_w_k, s_w_n, i_n, m_n, k0, K, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
            UPCAST_DOT: tl.constexpr):
    """Rows [k0, k0 + BLOCK_K), columns i_n of a weight operand W (K, N)."""
    i_k = k0 + tl.arange(0, BLOCK_K)
    m_w = m_n[None, :] if EVEN_K else (i_k < K)[:, None] & m_n[None, :]
    b_w = tl.load(p_w + i_k[:, None] * s_w_k + i_n[None, :] * s_w_n, mask=m_w, other=0.0)
    if UPCAST_DOT:
        b_w = b_w.to(tl.float32)
    return b_w


@triton.jit
def _resident(p_w, s_w_k, s_w_n, i_n, m_n, K, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr,
              EVEN_K: tl.constexpr, LOAD: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """This program's columns i_n of W (K, N) as a tuple of NUM_K tiles
    (BLOCK_K, BLOCK_N), loaded once; an empty tuple unless LOAD."""
    b_ws = ()
    if LOAD:
        for kk in tl.static_range(NUM_K):
            b_ws = b_ws + (_load_w(p_w, s_w_k, s_w_n, i_n, m_n, kk * BLOCK_K, K, BLOCK_K, EVEN_K, UPCAST_DOT),)
    return b_ws


@triton.jit
def _matmul(p_a, s_a_b, s_a_k, i_b, m_b, K, b_ws, p_w, s_w_k, s_w_n, i_n, m_n,
            BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr,
            EVEN_K: tl.constexpr, W_RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """A[i_b, :K] @ W[:K, i_n] as a float32 (BLOCK_B, BLOCK_N) tile; W from the
    resident tiles b_ws, or streamed from memory chunk by chunk."""
    b_acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    if W_RESIDENT:
        for kk in tl.static_range(NUM_K):
            b_a = _load_a(p_a, s_a_b, s_a_k, i_b, m_b, kk * BLOCK_K, K, BLOCK_K, EVEN_K, UPCAST_DOT)
            b_acc = tl.dot(b_a, b_ws[kk], b_acc, input_precision=DOT_PRECISION)
    else:
        for k0 in range(0, K, BLOCK_K):
            b_a = _load_a(p_a, s_a_b, s_a_k, i_b, m_b, k0, K, BLOCK_K, EVEN_K, UPCAST_DOT)
            b_w = _load_w(p_w, s_w_k, s_w_n, i_n, m_n, k0, K, BLOCK_K, EVEN_K, UPCAST_DOT)
            b_acc = tl.dot(b_a, b_w, b_acc, input_precision=DOT_PRECISION)
    return b_acc


@triton.jit
def _matmul_wave(p_a, s_a_b, s_a_k, i_b, m_b, K, b_ws, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, NUM_K: tl.constexpr, WAVE_K: tl.constexpr, EVEN_K: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """A[i_b, :K] @ W[:K, i_n] against resident W tiles b_ws, as `_matmul`, but
    with the reads of A issued ahead of the products: the first WAVE_K chunks
    before the first dot, then one more after each dot. With WAVE_K >= NUM_K
    the whole (BLOCK_B, K) read of A is one wave of loads, so a step waits for
    one memory round trip instead of one per chunk (the wave step).

    The chunks' products go to four accumulators in turn, summed at the end:
    each tensor-core instruction of a dot waits for the previous one on the
    same accumulator, so one accumulator makes the product a chain of K / 16
    dependent instructions (192 in the backward at H = 768), four make four
    chains a quarter as long that run interleaved."""
    b_acc0 = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    b_acc1 = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    b_acc2 = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    b_acc3 = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    b_as = ()
    for kk in tl.static_range(NUM_K):
        if kk < WAVE_K:
            b_as = b_as + (_load_a(p_a, s_a_b, s_a_k, i_b, m_b, kk * BLOCK_K, K, BLOCK_K, EVEN_K, UPCAST_DOT),)
    for kk in tl.static_range(NUM_K):
        if kk % 4 == 0:
            b_acc0 = tl.dot(b_as[kk], b_ws[kk], b_acc0, input_precision=DOT_PRECISION)
        elif kk % 4 == 1:
            b_acc1 = tl.dot(b_as[kk], b_ws[kk], b_acc1, input_precision=DOT_PRECISION)
        elif kk % 4 == 2:
            b_acc2 = tl.dot(b_as[kk], b_ws[kk], b_acc2, input_precision=DOT_PRECISION)
        else:
            b_acc3 = tl.dot(b_as[kk], b_ws[kk], b_acc3, input_precision=DOT_PRECISION)
        if kk + WAVE_K < NUM_K:
            b_as = b_as + (_load_a(p_a, s_a_b, s_a_k, i_b, m_b, (kk + WAVE_K) * BLOCK_K, K, BLOCK_K, EVEN_K,
                                   UPCAST_DOT),)
    if NUM_K > 1:
        b_acc0 += b_acc1
    if NUM_K > 2:
        b_acc2 += b_acc3
        b_acc0 += b_acc2
    return b_acc0


@triton.jit
def _product(p_a, s_a_b, s_a_k, i_b, m_b, K, b_ws, p_w, s_w_k, s_w_n, i_n, m_n,
             BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr,
             EVEN_K: tl.constexpr, W_RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
             STEP_WAVE: tl.constexpr, WAVE_K: tl.constexpr):
    """The step's product: `_matmul_wave` in the wave step (resident weights
    only; the host plans it no other way), else `_matmul` (today's step)."""
    if STEP_WAVE:
        b_acc = _matmul_wave(p_a, s_a_b, s_a_k, i_b, m_b, K, b_ws, BLOCK_B, BLOCK_N, BLOCK_K, NUM_K, WAVE_K, EVEN_K,
                             DOT_PRECISION, UPCAST_DOT)
    else:
        b_acc = _matmul(p_a, s_a_b, s_a_k, i_b, m_b, K, b_ws, p_w, s_w_k, s_w_n, i_n, m_n, BLOCK_B, BLOCK_N, BLOCK_K,
                        NUM_K, EVEN_K, W_RESIDENT, DOT_PRECISION, UPCAST_DOT)
    return b_acc


@triton.jit
def _split_gates(b_acc, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """(BLOCK_B, 4 * BLOCK_H) with column u * 4 + q for unit u of gate q ->
    the four (BLOCK_B, BLOCK_H) gate tiles i, f, g, o."""
    b_acc = tl.reshape(b_acc, [BLOCK_B, BLOCK_H, 2, 2])  # [.., u, q // 2, q % 2]
    b_even, b_odd = tl.split(b_acc)  # q % 2 == 0: gates i, g; q % 2 == 1: f, o
    b_i, b_g = tl.split(b_even)
    b_f, b_o = tl.split(b_odd)
    return b_i, b_f, b_g, b_o


@triton.jit
def _load_xg(p_xg, t64, s_xg_t, s_xg_b, s_xg_g, i_b, i_h, m_bh, H):
    """The four float32 (BLOCK_B, BLOCK_H) tiles of xg[t] (gates i, f, g, o) for
    this program's units: an input, which no program writes."""
    p_x = p_xg + t64 * s_xg_t + i_b[:, None] * s_xg_b + i_h[None, :] * s_xg_g
    b_xi = tl.load(p_x, mask=m_bh, other=0.0).to(tl.float32)
    b_xf = tl.load(p_x + H * s_xg_g, mask=m_bh, other=0.0).to(tl.float32)
    b_xg = tl.load(p_x + 2 * H * s_xg_g, mask=m_bh, other=0.0).to(tl.float32)
    b_xo = tl.load(p_x + 3 * H * s_xg_g, mask=m_bh, other=0.0).to(tl.float32)
    return b_xi, b_xf, b_xg, b_xo


@triton.jit
def _live_rows(p_len, i_b, m_b, t, PACKED: tl.constexpr):
    """(BLOCK_B, 1) bool: the row is live at step t (every row, unless PACKED)."""
    if PACKED:
        b_live = (t < tl.load(p_len + i_b, mask=m_b, other=0))[:, None]
    else:
        b_live = (i_b >= 0)[:, None]
    return b_live
