"""Backends: each computes one LSTM layer in one direction.

Every backend exposes a function with this signature (the "layer primitive"):

    lstm_layer_<name>(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
        -> (out, h_n, c_n)

    x            (T, B, I)  time-major input, any strides.
    h0           (B, R)     initial hidden state; R = proj_size or H.
    c0           (B, H)     initial cell state.
    w_ih         (4H, I)    gate order i, f, g, o (PyTorch's).
    w_hh         (4H, R)
    b_ih, b_hh   (4H,) or None
    w_hr         (R, H) or None (projection, proj_size > 0)
    batch_sizes  None, or a CPU int64 tensor (T,) that does not increase, with
                 batch_sizes[0] == B: at step t only rows [0, batch_sizes[t])
                 are live (a PackedSequence in sorted order). Rows past their
                 length keep their state and get zeros in `out`.

    out          (T, B, R)  h_t for every step (zeros at dead rows).
    h_n          (B, R)     the state after each row's last live step.
    c_n          (B, H)

Results are differentiable with respect to every tensor argument.

Each backend also has a "cell primitive", one step with no sequence around
it (what `fastlstm.LSTMCell` runs, so that a cell stepped from Python pays
no per-sequence set-up):

    lstm_cell_<name>(x, h, c, w_ih, w_hh, b_ih, b_hh) -> (h', c')

    x (B, I), h (B, H), c (B, H), weights as above (no projection)
    -> h' (B, H), c' (B, H).

"jit" and "reference" write their own; "triton" runs its layer with T = 1.
Layers, directions, projection and packing are composed on top of this in
`fastlstm.functional`; the backends know nothing of them.
"""
