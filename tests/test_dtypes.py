"""float16 / bfloat16 parameters and autocast: fp32 state inside, bounded error.

The oracle is nn.LSTM in float64 run on the very same low-precision values
(inputs, weights and states rounded to the dtype, then widened), so what is
measured is fastlstm's own error: fp32 arithmetic inside and one rounding of
each result to the storage dtype. The bound is a few units in the last place
of that dtype (eps = 2**-8 for bfloat16, 2**-11 for float16).
"""
import pytest
import torch

import fastlstm
from helpers import INTERPRETED, triton_can_run_here

# The bound in units of the dtype's eps, relative to max(1, |value|): one
# rounding of each result (half an ulp) plus fp32 error carried through the
# recurrence. Measured worst case: 0.95 (a weight gradient at T=40, H=64).
# Computing in the low precision itself (the "reference" backend in bf16)
# reaches 5.8 there, so the bound tells fp32 state from bf16 state.
ULPS = 2
EPS = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
BACKENDS = ["jit"] + (["triton"] if INTERPRETED and triton_can_run_here() else [])


def _models(dtype, backend, I=6, H=9, **kw):
    torch.manual_seed(0)
    ours = fastlstm.LSTM(I, H, **kw, backend=backend).to(dtype)
    ref = torch.nn.LSTM(I, H, **kw).double()
    ref.load_state_dict(ours.state_dict())  # the rounded values, widened
    return ours, ref


def _assert_within(got, want, dtype, name):
    bound = ULPS * EPS[dtype] * want.abs().clamp(min=1.0)
    err = (got.double() - want).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"{name}: error is {worst:.2f}x the bound of {ULPS} ulps ({dtype})"


CASES = {"T5-I6-H9-L2": (5, 6, 9, 2), "T40-I64-H64-L1": (40, 64, 64, 1)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_parameters_forward_and_backward(backend, case, dtype):
    T, I, H, L = CASES[case]
    if backend == "triton" and T > 5:
        pytest.skip("the Triton interpreter is too slow for the long case; the short one covers it")
    ours, ref = _models(dtype, backend, I=I, H=H, num_layers=L)
    x = torch.randn(T, 3, I).to(dtype)
    xg = x.clone().requires_grad_(True)
    xr = x.double().requires_grad_(True)
    (out, (h, c)), (rout, (rh, rc)) = ours(xg), ref(xr)
    assert out.dtype == h.dtype == c.dtype == dtype
    for name, a, b in (("out", out, rout), ("h_n", h, rh), ("c_n", c, rc)):
        _assert_within(a, b, dtype, name)
    g = torch.randn(out.shape).to(dtype)
    (out * g).sum().backward()
    (rout * g.double()).sum().backward()
    assert xg.grad.dtype == dtype
    # Gradients sum over time and batch in fp32, then round once; relative to
    # their own scale they stay within the same few ulps.
    _assert_within(xg.grad, xr.grad, dtype, "grad_input")
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert p.grad.dtype == dtype
        _assert_within(p.grad, q.grad, dtype, f"grad_{name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_cpu_autocast_runs_in_the_autocast_dtype(dtype):
    torch.manual_seed(0)
    ours = fastlstm.LSTM(6, 9)
    x = torch.randn(5, 3, 6)
    with torch.autocast("cpu", dtype=dtype):
        out, (h, c) = ours(x)
    assert out.dtype == h.dtype == c.dtype == dtype, "autocast output dtype, as nn.LSTM gives"
    ref = torch.nn.LSTM(6, 9).double()
    ref.load_state_dict({k: v.to(dtype) for k, v in ours.state_dict().items()})
    rout, (rh, rc) = ref(x.to(dtype).double())
    for name, a, b in (("out", out, rout), ("h_n", h, rh), ("c_n", c, rc)):
        _assert_within(a, b, dtype, name)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters()), (
        "fp32 master weights get fp32 gradients under autocast"
    )


def test_autocast_matches_torch_output_dtype_for_bf16():
    m = torch.nn.LSTM(4, 5)
    ours = fastlstm.LSTM.from_torch(m)
    x = torch.randn(3, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            want = m(x)
        except RuntimeError as e:
            # oneDNN builds its bf16 LSTM only on CPUs with bf16 support (seen on an
            # AMD EPYC without AVX-512): torch itself has no answer to compare with.
            if "could not create a primitive descriptor" not in str(e):
                raise
            pytest.skip(f"torch's nn.LSTM cannot run under bf16 autocast on this CPU: {e}")
        got = ours(x)
    assert got[0].dtype == want[0].dtype and got[1][0].dtype == want[1][0].dtype
