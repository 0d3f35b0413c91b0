"""Triton kernels for one LSTM layer in one direction: `lstm_fwd_kernel` and
`lstm_bwd_kernel`, installed as `fastlstm.kernels`.

Only `@triton.jit` code lives here; the launch plan, the launchers, the
autograd Function and the public function are in `fastlstm.backends.triton`.
The modules, by family:

    barrier     the grid-wide barrier and the persistent launches' workspace
                (`_WS_*`, `_grid_barrier`, `_launch_failed`, `_end_launch`,
                `barrier_loop_kernel`)
    tiles       what both kernels build a step from: fp32 `_sigmoid`/`_tanh`,
                tile loads and copies, the products (`_matmul`,
                `_matmul_wave`, `_product`), the gate split
    lstm_fwd    `lstm_fwd_kernel`
    lstm_bwd    `lstm_bwd_kernel` and the pointwise cell backward

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
                 fallback where a grid cannot be launched cooperatively.
                 (In Triton's interpreter a persistent grid's programs run as
                 turn-taking threads: fastlstm.backends.triton.interpreter.)

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
and the H200 measurements of docs/gpu.md; a dependent L2 round
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

"""
