"""fastlstm.LSTM against torch.nn.LSTM: every output and gradient, every option.

The oracle is torch.nn.LSTM in float64 with the same weights. Each backend runs
the same drawn cases; float64 must agree to ~1e-9, lower precisions by dtype
(and float32 on a GPU by the precision in force, TF32 by default).

Dropout is checked against nn.LSTM's own only on the CPU, where fastlstm draws
the same random stream. On a GPU no one can reproduce cuDNN's dropout stream,
so there it is checked by what it must do (`test_dropout_on_the_device`).

With FASTLSTM_TEST_NATIVE=1 the Triton cases draw their kernel-shaping sizes
from a fixed list (`NATIVE_SHAPES`), since each new shape class is a kernel
compile there; options that do not reach the kernels are still drawn.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import fastlstm
from fastlstm import functional
from helpers import INTERPRETED, TRITON_DEVICE, Case, assert_same, run, triton_can_run_here

SIZES = st.sampled_from([1, 2, 3, 5, 7, 8])

# (hidden, proj, batch, seq_len, packed, unbatched, train): what shapes a Triton
# kernel compile (sizes of 1 are specialised; T=1 runs step-wise; packing and
# training switch kernel code). The rest of a case is drawn freely.
NATIVE_SHAPES = [
    (5, 0, 3, 3, None, False, True),
    (3, 2, 2, 3, "unsorted", False, True),
    (5, 0, 1, 1, None, True, False),
    (1, 0, 3, 2, "sorted", False, True),
]


@st.composite
def cases(draw, max_layers=3, max_len=7, max_batch=4, sizes=SIZES, shapes=None, dropout=True):
    """A Case drawn freely, or, given `shapes` (see NATIVE_SHAPES), with its
    kernel-shaping sizes from that list. `dropout=False` draws none."""
    if shapes is None:
        hidden = draw(sizes)
        proj = draw(st.sampled_from([0] + list(range(1, hidden))))
        train = draw(st.booleans())
        unbatched = draw(st.booleans()) and draw(st.booleans())
        packed = None if unbatched else draw(st.sampled_from([None, None, "sorted", "unsorted"]))
        T = draw(st.integers(1, max_len))
        B = 1 if unbatched else draw(st.integers(1, max_batch))
    else:
        hidden, proj, B, T, packed, unbatched, train = draw(st.sampled_from(shapes))
    num_layers = draw(st.integers(1, max_layers))
    lengths = []
    if packed is not None:
        lengths = [T] + [draw(st.integers(1, T)) for _ in range(B - 1)]
        lengths = sorted(lengths, reverse=True) if packed == "sorted" else draw(st.permutations(lengths))
    return Case(
        input_size=draw(sizes),
        hidden_size=hidden,
        num_layers=num_layers,
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        proj_size=proj,
        unbatched=unbatched,
        packed=packed,
        with_hx=draw(st.booleans()),
        train=train,
        dropout=0.5 if (dropout and train and num_layers > 1 and draw(st.booleans())) else 0.0,
        seq_len=T,
        batch=B,
        lengths=list(lengths),
        seed=draw(st.integers(0, 2**16)),
    )


def compare(case: Case, backend: str, dtype, device="cpu") -> None:
    ref = torch.nn.LSTM(case.input_size, case.hidden_size, **case.kwargs()).double()
    ours = fastlstm.LSTM(case.input_size, case.hidden_size, **case.kwargs(), backend=backend)
    ours.load_state_dict(ref.state_dict())
    ours.to(device=device, dtype=dtype)
    inputs = case.make_inputs()
    want = run(ref, case, torch.float64, *inputs)
    got = run(ours, case, dtype, *inputs, device=device)
    assert_same(got, want, dtype, f"backend={backend} dtype={dtype} {case}", device=device, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", ["reference", "jit"])
@settings(max_examples=60)
@given(case=cases())
def test_lstm_matches_torch(backend, dtype, case):
    compare(case, backend, dtype)


# On a GPU: the fixed shapes, no dropout (its stream is cuDNN's there).
TRITON_CASES = (cases(max_layers=2, max_len=3, max_batch=3, sizes=st.sampled_from([1, 3, 5])) if INTERPRETED
                else cases(max_layers=2, shapes=NATIVE_SHAPES, dropout=False))


@pytest.mark.skipif(not triton_can_run_here(), reason="needs triton (interpreter or GPU)")
@pytest.mark.parametrize("dtype", [torch.float32], ids=["f32"])
@settings(max_examples=12)
@given(case=TRITON_CASES)
def test_lstm_matches_torch_triton(dtype, case):
    compare(case, "triton", dtype, TRITON_DEVICE)


@pytest.mark.parametrize("backend", ["reference", "jit"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@settings(max_examples=40)
@given(
    I=SIZES, H=SIZES, B=st.integers(1, 5), bias=st.booleans(),
    unbatched=st.booleans(), with_hx=st.booleans(), seed=st.integers(0, 2**16),
)
def test_cell_matches_torch(backend, dtype, I, H, B, bias, unbatched, with_hx, seed):
    ref = torch.nn.LSTMCell(I, H, bias=bias).double()
    ours = fastlstm.LSTMCell(I, H, bias=bias, backend=backend)
    ours.load_state_dict(ref.state_dict())
    ours.to(dtype)
    g = torch.Generator().manual_seed(seed)
    shape = () if unbatched else (B,)
    x0 = torch.randn(*shape, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(*shape, H, generator=g, dtype=torch.float64)
    c0 = torch.randn(*shape, H, generator=g, dtype=torch.float64)
    gh = torch.randn(*shape, H, generator=g, dtype=torch.float64)
    gc = torch.randn(*shape, H, generator=g, dtype=torch.float64)

    def go(m, dt):
        x = x0.to(dt).requires_grad_(True)
        hx = (h0.to(dt).requires_grad_(True), c0.to(dt).requires_grad_(True)) if with_hx else None
        h, c = m(x, hx)
        ((h * gh.to(dt)).sum() + (c * gc.to(dt)).sum()).backward()
        res = {"h": h, "c": c, "grad_input": x.grad}
        if with_hx:
            res.update(grad_h0=hx[0].grad, grad_c0=hx[1].grad)
        res.update({f"grad_{n}": p.grad for n, p in m.named_parameters()})
        return {k: v.detach().double() for k, v in res.items()}

    assert_same(go(ours, dtype), go(ref, torch.float64), dtype, f"LSTMCell backend={backend}")


# Where the dropout test runs: the CPU's jit backend, and natively Triton on the
# GPU. (Under the interpreter, Triton's dropout is checked by equality with
# nn.LSTM's CPU stream in test_lstm_matches_torch_triton.)
DROPOUT_BACKENDS = [("jit", "cpu")] + ([] if INTERPRETED or not triton_can_run_here() else [("triton", "cuda")])


@pytest.mark.parametrize("backend,device", DROPOUT_BACKENDS, ids=lambda v: v)
def test_dropout_on_the_device(backend, device, monkeypatch):
    """Dropout between layers, checked by what it must do rather than by
    cuDNN's random stream: the keep rate is 1 - p within 5 standard deviations,
    kept values are scaled by 1 / (1 - p), the backward uses the forward's mask,
    the result is the float64 layers with that very mask between them, and in
    eval there is no dropout."""
    p, T, B, I, H = 0.25, 8, 16, 4, 32
    ref = torch.nn.LSTM(I, H, num_layers=2, dropout=p).double()
    ours = fastlstm.LSTM(I, H, num_layers=2, dropout=p, backend=backend)
    ours.load_state_dict(ref.state_dict())
    ours.to(device=device, dtype=torch.float32)
    seen = []
    real = torch.nn.functional.dropout

    def spy(x, p_, training=True, inplace=False):
        y = real(x, p_, training, inplace)
        if x.requires_grad:
            x.retain_grad()
            y.retain_grad()
        seen.append((x, y, p_, training))
        return y

    monkeypatch.setattr(functional.F, "dropout", spy)
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    grad = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    x = x64.to(device=device, dtype=torch.float32).requires_grad_()
    ours.train()
    out, (h_n, c_n) = ours(x)
    (out * grad.to(out)).sum().backward()
    assert [(p_, training) for _, _, p_, training in seen] == [(p, True)], "one dropout, between the layers"
    before, after = seen[0][0], seen[0][1]
    kept = after != 0
    rate, n = kept.double().mean().item(), kept.numel()
    assert abs(rate - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5, f"keep rate {rate:.4f} for p={p} over {n} values"
    torch.testing.assert_close(after[kept], before[kept] / (1 - p), msg=lambda m: f"kept values: {m}")
    assert not before.grad[~kept].any(), "gradient reached dropped values: the backward used another mask"
    torch.testing.assert_close(before.grad[kept], after.grad[kept] / (1 - p), msg=lambda m: f"backward: {m}")

    # The float64 layers with the recorded mask between them.
    layers = [torch.nn.LSTM(I, H).double(), torch.nn.LSTM(H, H).double()]
    for k, layer in enumerate(layers):
        # weight_ih_l0 of layer k is the stacked model's weight_ih_l{k}
        layer.load_state_dict({name: getattr(ref, name[:-1] + str(k)).detach() for name, _ in layer.named_parameters()})
    xr = x64.clone().requires_grad_()
    mask = kept.detach().cpu().double() / (1 - p)
    o0, (h0, c0) = layers[0](xr)
    o1, (h1, c1) = layers[1](o0 * mask)
    (o1 * grad).sum().backward()
    want = {"out": o1, "h_n": torch.cat([h0, h1]), "c_n": torch.cat([c0, c1]), "grad_input": xr.grad}
    got = {"out": out, "h_n": h_n, "c_n": c_n, "grad_input": x.grad}
    assert_same({k: v.detach().cpu().double() for k, v in got.items()}, {k: v.detach() for k, v in want.items()},
                torch.float32, f"dropout {backend}", device=device, backend=backend)

    # Eval: no dropout at all.
    seen.clear()
    ours.eval()
    with torch.no_grad():
        out_eval = ours(x)[0]
    assert not any(training for *_, training in seen), "dropout in eval"
    ref.eval()
    assert_same({"out": out_eval.cpu().double()}, {"out": ref(x64)[0].detach()}, torch.float32,
                f"eval {backend}", device=device, backend=backend)
