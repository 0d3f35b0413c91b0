"""fastlstm.LSTM against torch.nn.LSTM: every output and gradient, every option.

The oracle is torch.nn.LSTM in float64 with the same weights. Each backend runs
the same drawn cases; float64 must agree to ~1e-9, lower precisions by dtype.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastlstm
from helpers import TRITON_DEVICE, Case, assert_same, run, triton_can_run_here

SIZES = st.sampled_from([1, 2, 3, 5, 7, 8])


@st.composite
def cases(draw, max_layers=3, max_len=7, max_batch=4, sizes=SIZES):
    hidden = draw(sizes)
    proj = draw(st.sampled_from([0] + list(range(1, hidden))))
    num_layers = draw(st.integers(1, max_layers))
    train = draw(st.booleans())
    unbatched = draw(st.booleans()) and draw(st.booleans())
    packed = None if unbatched else draw(st.sampled_from([None, None, "sorted", "unsorted"]))
    T = draw(st.integers(1, max_len))
    B = 1 if unbatched else draw(st.integers(1, max_batch))
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
        dropout=0.5 if (train and num_layers > 1 and draw(st.booleans())) else 0.0,
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
    assert_same(got, want, dtype, f"backend={backend} dtype={dtype} {case}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", ["reference", "jit"])
@settings(max_examples=60)
@given(case=cases())
def test_lstm_matches_torch(backend, dtype, case):
    compare(case, backend, dtype)


@pytest.mark.skipif(not triton_can_run_here(), reason="needs triton (interpreter or GPU)")
@pytest.mark.parametrize("dtype", [torch.float32], ids=["f32"])
@settings(max_examples=12)
@given(case=cases(max_layers=2, max_len=3, max_batch=3, sizes=st.sampled_from([1, 3, 5])))
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
