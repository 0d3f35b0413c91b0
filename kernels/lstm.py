"""Triton kernels for one LSTM layer in one direction: `lstm_fwd_kernel` and
`lstm_bwd_kernel`.

Only `@triton.jit` code lives here; the launch plan, the launchers, the
autograd Function and the public function are in `fastlstm.backends.triton`.

One kernel runs the steps [t0, t1) of a layer. Program p owns a block of
hidden units of all four gates, for every batch row, and keeps the slice of
the recurrent weight that those units need on chip for the whole launch
(W_RESIDENT: loaded once, before the time loop, as a tuple of K chunks; the
compiler places them in shared memory, and ptxas caches what fits of them in
registers). Without W_RESIDENT each step streams the weight chunks from
memory. Each step runs the same step body in every mode:

    PERSISTENT   one launch runs all the steps; the programs meet at a
                 grid-wide barrier (`_grid_barrier`) after each phase of each
                 step. The host launches it cooperatively, so every program is
                 resident at once (a spin barrier would deadlock otherwise).
    per step     t1 = t0 + 1; the launch boundary is the barrier. The
                 fallback, and how the interpreter runs multi-program grids
                 (it runs programs one after another, so a spin would hang).

No host-device synchronisation: a persistent launch's barrier counter and
error flags live in a workspace (`_WS_*`) that the launch leaves at zero for
the next one (`_end_launch`); a launch whose barrier timed out writes NaN
into its outputs (`_launch_failed`) and adds one to a sticky count that the
host reads later without waiting (fastlstm.backends.triton, `_Workspace`).

A step is one phase without projection, two with it (the projection needs all
of o * tanh(c), which other programs write): the forward's cell phase (CELL)
and projection phase (PROJECT), the backward's recurrent phase (RECUR: dh from
dg[t+1]) and cell phase (CELL). A persistent launch runs both phases with a
barrier between them; per-step launches run one phase each.

Layout (time-major, explicit strides; H hidden units, R = proj_size or H):
    xg     (T, B, 4H)   x_t @ W_ih^T + b_ih + b_hh, gate order i, f, g, o
    w      (4H, R)      W_hh
    wr     (R, H)       W_hr (projection)
    h0     (B, R)       same strides as one step of hs
    hs     (T, B, R)    h_1 .. h_T; a row past its length carries its state
    c      (T+1, B, H)  float32 cell states, c[0] = c0 (copied by the kernel;
                        time stride 0 when nothing is saved: one tile
                        updated in place)
    gates  (T, B, 4H)   float32 activated gates, saved for the backward
    hc     (T, B, H)    o * tanh(c) before the projection (storage dtype)
    dg     (T, B, 4H)   gradients of the gate pre-activations (dg[T] = 0 is
                        read from a separate zero buffer)

Tiles are (BLOCK_B rows, units); the batch is looped over inside a step, so a
program's weights serve every row. Products accumulate in float32, and c,
gates and the pointwise maths are float32 whatever the storage dtype; h, hc,
dh and dg are stored in the storage dtype, since they only feed
storage-dtype dots and the host GEMMs.

Two step bodies, chosen by the host plan (`LaunchPlan.step`; STEP_WAVE):

    chunked  (today's; the default) each BLOCK_K chunk of h[t-1] (dg[t+1] in
             the backward) is loaded and multiplied in turn; xg[t] and c[t]
             are loaded after the product.
    wave     the whole read of h[t-1] for a batch tile is issued before the
             first product (WAVE_K chunks in flight, at least all of them
             where the plan can: `_matmul_wave`), into four accumulators; the
             tile's own inputs (xg, c; the backward's saved gates, c, dc and
             dout), which no other program writes, are loaded first, or
             with one batch tile (ONE_TILE) before the barrier wait: xg[t+1]
             between `_barrier_arrive` and `_barrier_wait`, c kept in
             registers. Resident weights only.

Per-step budget at fp16, B=16, H=768 (96 programs x 8 units, W resident,
48 KiB a program), from the sm_90 SASS (tests/aot.py, `step_critical_path`)
and the H200 measurements of ../shared/GPU_DESIGN.md; a dependent L2 round
trip is taken as 0.4-0.5 us (what makes today's counts add up to the
measured 4.3 us), the barrier as its measured 0.95 us:

    forward                 chunked (measured 4.3 us)   wave (predicted)
    grid barrier            ~0.95 us                    ~0.95 us (xg[t+1] loads issued inside it)
    memory round trips      7 in a row: 6 chunks of     1: six 16-byte loads a thread, all
      after the barrier       h, then xg and c            issued before the first wait
    CTA barriers a step     24                          14
    longest HMMA chain      48 (one accumulator)        16 (four)
    total                   ~4.3 us                     ~1.7-2.0 us

    backward                chunked (measured ~9.8 us)  wave (predicted)
    grid barrier            ~0.95 us                    ~0.95 us
    memory round trips      26: 24 chunks of dg[t+1],   1: 40 loads a thread (dg[t+1] and
                              then gates, c               the tile's own inputs)
    CTA barriers a step     68                          20
    longest HMMA chain      192                         48
    total                   ~9.8 us                     ~3-4 us

The wave moves as many bytes: every program reads all of h[t-1] (24 KiB, 2.4
MB a step over the grid) or of dg[t+1] (96 KiB, 9.4 MB a step), so at
several TB/s of L2 bandwidth the backward's one trip costs more like 1.5 us
than 0.5; reading less (fewer, wider programs) is the next lever there.
The 48-long HMMA chain of a (16 x 8) output tile is the other: one warp's
worth of work, about 0.5-0.8 us at a tensor-core latency of 20-30 cycles.
Where the wave is bounded (WAVE_K < chunks: the backward at H = 1024 in 16
bits, TF32 backwards; the A100's smaller shared memory) the read slides
through WAVE_K chunks at a time; tests/test_triton_aot.py lists the counts.

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


# ----------------------------------------------------------------------------
# Grid-wide barrier
# ----------------------------------------------------------------------------


@triton.jit
def _grid_barrier(p_sync, target, max_spin, p_err):
    """Arrive at the barrier and wait until `target` arrivals have been counted.

    p_sync is one int32 counter, zero at launch, that only grows within a
    launch: the n-th barrier of a launch waits for n * num_programs arrivals,
    so no counter is ever reset mid-launch (`_end_launch` resets it once every
    program is past its last barrier). The arrival is a release and the poll
    an acquire (both at GPU scope), with a CTA barrier on either side, so every
    store this program made before arriving is visible to every program after
    it leaves. Scalar atomics run on one thread of the program (triton 3.9
    turns the polling add of 0 into an acquire load). The spin is bounded:
    after `max_spin` polls it gives up and sets *p_err (see `_end_launch` for
    what follows: NaN outputs and an error on the host). Returns the spin
    budget for this program's next barrier: 0 once it has given up, so a
    broken launch ends after one timeout rather than one per barrier (a program
    that gave up still arrives at every later barrier, so the counts stay
    whole).
    """
    _barrier_arrive(p_sync)
    return _barrier_wait(p_sync, target, max_spin, p_err)


# The persistent kernels' workspace: one int32 buffer per (device, stream),
# zeroed once when the host creates it, that every launch leaves as it found
# it (zeros), apart from the sticky count.
_WS_COUNT = tl.constexpr(0)  # barrier arrivals of this launch
_WS_EXITS = tl.constexpr(1)  # programs that have finished this launch
_WS_ERR = tl.constexpr(2)  # set when a barrier of this launch timed out
_WS_STICKY = tl.constexpr(3)  # launches whose barrier timed out, counted (the host reads it, never writes it)


@triton.jit
def _launch_failed(p_ws):
    """Whether a barrier of this launch timed out, as seen by this program after
    its last barrier (an acquire read of the launch's error flag).

    Why this catches every barrier that gave up before this program's last
    barrier completed: a program that gives up sets the flag (a release) before
    it arrives at its next barrier, and this program's last barrier either
    completed, having acquired every program's final arrival, which comes
    after any flag that program set, or gave up, and set the flag itself. A
    program that gives up only at the very last barrier sets the flag after
    the others may have looked: their results need nothing after that
    barrier, so they are right, and the giving-up program poisons its own.
    """
    return tl.atomic_add(p_ws + _WS_ERR, 0, sem="acquire", scope="gpu") != 0


@triton.jit
def _end_launch(p_ws):
    """The last program to finish a persistent launch resets the workspace for
    the next launch: the barrier counter, the exit count and the launch's error
    flag go back to zero, and a set error flag adds one to the sticky count
    that the host checks (fastlstm.backends.triton, `_Workspace`).

    Memory ordering: each program calls this after its last barrier and after
    `_launch_failed`; its exit is an acq_rel add, so the program that counts the
    last exit has acquired every other program's exit, and no program reads
    the counter or the flag after its exit. The reset stores need no ordering
    of their own: the next launch on this stream starts after this one has
    ended (stream order), and a kernel's end makes its stores visible to
    later kernels. A grid that is not co-resident still ends (every spin is
    bounded), so the reset always happens.
    """
    tl.debug_barrier()
    exits = tl.atomic_add(p_ws + _WS_EXITS, 1, sem="acq_rel", scope="gpu")
    if exits == tl.num_programs(0) - 1:
        err = tl.atomic_xchg(p_ws + _WS_ERR, 0, sem="acq_rel", scope="gpu")
        tl.atomic_add(p_ws + _WS_STICKY, err, sem="relaxed", scope="gpu")
        tl.atomic_xchg(p_ws + _WS_COUNT, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(p_ws + _WS_EXITS, 0, sem="relaxed", scope="gpu")


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


@triton.jit
def _barrier_arrive(p_sync):
    """The first half of `_grid_barrier`: count this program's arrival (a
    release at GPU scope, after a CTA barrier, so every store the program made
    before it is visible to whoever acquires the counter). Independent work
    may follow before `_barrier_wait`: loads of what no other program writes."""
    tl.debug_barrier()
    tl.atomic_add(p_sync, 1, sem="release", scope="gpu")


@triton.jit
def _barrier_wait(p_sync, target, max_spin, p_err):
    """The second half of `_grid_barrier`: spin on an acquire read of the
    counter until `target` arrivals have been counted, with the same counter
    semantics, bounded spin, error flag and returned spin budget."""
    seen = tl.atomic_add(p_sync, 0, sem="acquire", scope="gpu")
    n = 0
    while (seen < target) & (n < max_spin):
        seen = tl.atomic_add(p_sync, 0, sem="acquire", scope="gpu")
        n += 1
    spin = max_spin
    if seen < target:
        tl.atomic_max(p_err, 1, sem="release", scope="gpu")
        spin = max_spin * 0
    tl.debug_barrier()
    return spin


@triton.jit(do_not_specialize=["steps", "max_spin"])
def barrier_loop_kernel(
    p_sync,  # (1,) int32 barrier counter, zero at launch
    p_err,  # (1,) int32 set to 1 if a barrier timed out
    steps,  # barriers to meet
    max_spin,  # polls before a barrier gives up
):
    """A persistent loop that does nothing but meet the grid barrier `steps`
    times: what one step of the LSTM kernels pays for synchronisation."""
    nprog = tl.num_programs(0)
    spin = max_spin
    for s in range(0, steps):
        spin = _grid_barrier(p_sync, (s + 1) * nprog, spin, p_err)


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


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------


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
    STEP_WAVE: tl.constexpr,  # the wave step (see the module doc); else today's chunked step
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


# ----------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------


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
    STEP_WAVE: tl.constexpr,  # the wave step (see the module doc); else today's chunked step
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
