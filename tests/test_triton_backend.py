"""The Triton layer primitive against the float64 reference loop.

Runs under the Triton interpreter on the CPU (tests/conftest.py sets
TRITON_INTERPRET=1), or compiled on a GPU with FASTLSTM_TEST_NATIVE=1. Every
buffer the launchers allocate is pre-filled with NaN, so a tile the kernels
forget to write fails loudly.
"""
import os
from dataclasses import dataclass
from typing import Dict, Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastlstm import _dispatch
from fastlstm.backends.reference import lstm_layer_reference

triton = pytest.importorskip("triton")
from fastlstm.backends import triton as tb  # noqa: E402

DEVICE = "cuda" if os.environ.get("FASTLSTM_TEST_NATIVE", "0") == "1" else "cpu"

# (atol, rtol) against a float64 reference computed from the same
# (dtype-rounded) inputs. atol is relative to max(1, max|reference|), because
# weight gradients are sums over T*B rows and grow with them.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (2e-2, 2e-2),
}

INPUTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


@pytest.fixture(autouse=True)
def _nan_buffers(monkeypatch):
    """Make every kernel-written buffer start as NaN."""

    def empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(tb, "_empty", empty)


@dataclass
class Layer:
    T: int
    B: int
    I: int
    H: int
    proj: int = 0
    bias: bool = True
    packed: bool = False
    seed: int = 0

    def __str__(self):
        return (f"T{self.T}-B{self.B}-I{self.I}-H{self.H}-P{self.proj}"
                f"{'-bias' if self.bias else ''}{'-packed' if self.packed else ''}")

    def inputs(self) -> Dict[str, Optional[torch.Tensor]]:
        """float64 CPU inputs; weights scaled like nn.LSTM's init, but wider."""
        g = torch.Generator().manual_seed(self.seed)
        H, R = self.H, self.proj or self.H

        def rnd(*shape, scale=1.0):
            return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

        k = 1.5 / max(H, 1) ** 0.5
        return {
            "x": rnd(self.T, self.B, self.I),
            "h0": rnd(self.B, R, scale=0.5),
            "c0": rnd(self.B, H),
            "w_ih": rnd(4 * H, self.I, scale=k),
            "w_hh": rnd(4 * H, R, scale=k),
            "b_ih": rnd(4 * H, scale=0.5) if self.bias else None,
            "b_hh": rnd(4 * H, scale=0.5) if self.bias else None,
            "w_hr": rnd(R, H, scale=k) if self.proj else None,
        }

    def batch_sizes(self) -> Optional[torch.Tensor]:
        if not self.packed:
            return None
        g = torch.Generator().manual_seed(self.seed + 1)
        lengths = torch.randint(1, self.T + 1, (self.B,), generator=g).sort(descending=True).values
        lengths[0] = self.T
        return (lengths.unsqueeze(0) > torch.arange(self.T).unsqueeze(1)).sum(1)


def _run(fn, inputs, batch_sizes, dtype, device, seed):
    """Forward and backward under seeded random output gradients; every output
    and input gradient as float64 CPU, keyed by name."""
    leaves = {k: (v.detach().to(device=device, dtype=dtype).requires_grad_() if v is not None else None)
              for k, v in inputs.items()}
    out, h_n, c_n = fn(*leaves.values(), batch_sizes=batch_sizes)
    g = torch.Generator().manual_seed(seed + 2)
    grads = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
             for t in (out, h_n, c_n)]
    torch.autograd.backward((out, h_n, c_n), grads)
    result = {"out": out, "h_n": h_n, "c_n": c_n}
    result.update({f"grad_{k}": v.grad for k, v in leaves.items() if v is not None})
    return {k: v.detach().double().cpu() for k, v in result.items()}


def _assert_close(got, want, dtype, what):
    atol, rtol = TOLERANCES[dtype]
    assert got.keys() == want.keys(), f"{what}: names differ: {sorted(got)} vs {sorted(want)}"
    for name, b in want.items():
        a = got[name]
        assert a.shape == b.shape, f"{what}: {name} has shape {tuple(a.shape)}, expected {tuple(b.shape)}"
        assert torch.isfinite(a).all(), f"{what}: {name} has non-finite values (an unwritten tile?)"
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        err = (a - b).abs()
        bad = err > atol * scale + rtol * b.abs()
        assert not bad.any(), (
            f"{what}: {name} differs at {bad.sum().item()} of {b.numel()} places; "
            f"max abs error {err.max().item():.3g} (scale {scale:.3g}, atol {atol}, rtol {rtol})"
        )


def _check_layer(layer: Layer, dtype):
    inputs = layer.inputs()
    bs = layer.batch_sizes()
    # The reference sees the same dtype-rounded values, computed in float64.
    rounded = {k: (v.to(dtype).double() if v is not None else None) for k, v in inputs.items()}
    want = _run(lstm_layer_reference, rounded, bs, torch.float64, "cpu", layer.seed)
    got = _run(tb.lstm_layer_triton, inputs, bs, dtype, DEVICE, layer.seed)
    _assert_close(got, want, dtype, f"{layer}-{str(dtype)[6:]}")


GRID = [
    Layer(T=1, B=1, I=1, H=1),
    Layer(T=1, B=3, I=2, H=7, bias=False),
    Layer(T=4, B=1, I=5, H=3),
    Layer(T=5, B=3, I=4, H=13),
    Layer(T=3, B=17, I=3, H=16),
    Layer(T=3, B=2, I=3, H=33, bias=False),
    Layer(T=4, B=3, I=2, H=7, proj=3),
    Layer(T=3, B=2, I=3, H=5, proj=5, bias=False),
    Layer(T=6, B=5, I=3, H=7, packed=True),
    Layer(T=6, B=4, I=2, H=13, packed=True, bias=False),
    Layer(T=5, B=4, I=3, H=6, proj=3, packed=True),
    Layer(T=1, B=3, I=2, H=3, packed=True),
]


@pytest.mark.parametrize("layer", GRID, ids=str)
def test_float32_matches_reference(layer):
    _check_layer(layer, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layer", [
    Layer(T=4, B=3, I=4, H=13),
    Layer(T=5, B=4, I=3, H=7, proj=5, packed=True),
    Layer(T=5, B=3, I=3, H=9, packed=True, bias=False),
], ids=str)
def test_half_matches_reference(layer, dtype):
    _check_layer(layer, dtype)


@settings(max_examples=30)
@given(
    T=st.integers(1, 5),
    B=st.integers(1, 5),
    I=st.integers(1, 6),
    H=st.sampled_from([1, 2, 3, 7, 13, 17]),
    proj=st.integers(0, 4),
    bias=st.booleans(),
    packed=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(T, B, I, H, proj, bias, packed, dtype, seed):
    proj = proj if proj < H else 0
    _check_layer(Layer(T, B, I, H, proj=proj, bias=bias, packed=packed, seed=seed), dtype)


@pytest.fixture
def _small_blocks(monkeypatch):
    """Pretend the device has many SMs, so the heuristics pick 16-unit hidden
    blocks and the grid has several programs along both axes."""
    monkeypatch.setattr(tb, "_num_sms", lambda device: 10_000)
    tb._blocks.cache_clear()
    yield
    tb._blocks.cache_clear()


@pytest.mark.parametrize("layer,dtype", [
    (Layer(T=3, B=37, I=3, H=35), torch.float32),
    (Layer(T=4, B=37, I=2, H=36, proj=33, packed=True), torch.float32),
    (Layer(T=3, B=67, I=2, H=35, packed=True), torch.bfloat16),
], ids=lambda v: str(v) if isinstance(v, Layer) else str(v)[6:])
def test_multi_program_grid(layer, dtype, _small_blocks):
    B, H, R = layer.B, layer.H, layer.proj or layer.H
    block_b, block_h, block_k, _, _ = tb._blocks(B, H, R, dtype, torch.device(DEVICE))
    if DEVICE == "cpu":
        assert -(-B // block_b) > 1 and -(-H // block_h) > 1 and -(-R // block_k) > 1, "grid too small"
    _check_layer(layer, dtype)


def test_any_strides():
    """Transposed inputs and weights (explicit strides in the kernels)."""
    layer = Layer(T=4, B=3, I=5, H=7, proj=4)
    inputs = layer.inputs()
    want = _run(lstm_layer_reference, inputs, None, torch.float64, "cpu", 0)
    strided = {k: (v.transpose(0, -1).contiguous().transpose(0, -1) if v is not None and v.dim() > 1 else v)
               for k, v in inputs.items()}

    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
        assert not (x.is_contiguous() or h0.is_contiguous() or w_hh.is_contiguous())
        return tb.lstm_layer_triton(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)

    def leafify(d):
        # keep the strides through the .to() in _run
        return {k: (v.to(torch.float32) if v is not None else None) for k, v in d.items()}

    got = _run(fn, leafify(strided), None, torch.float32, DEVICE, 0)
    _assert_close(got, want, torch.float32, "strided")


@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_no_grad_forward_matches(packed, proj):
    # Without grad the cell (and projection input) buffers are one tile
    # updated in place; the results must not change.
    layer = Layer(T=4, B=3, I=3, H=7, proj=proj, packed=packed)
    inputs = {k: (v.float().to(DEVICE) if v is not None else None) for k, v in layer.inputs().items()}
    bs = layer.batch_sizes()
    with torch.no_grad():
        got = tb.lstm_layer_triton(*inputs.values(), batch_sizes=bs)
    want = lstm_layer_reference(*(v.double() if v is not None else None for v in inputs.values()), batch_sizes=bs)
    for name, a, b in zip(("out", "h_n", "c_n"), got, want):
        assert not a.requires_grad, name
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_some_inputs_without_grad():
    """Only w_hh and c0 require grad: those gradients are right, others None."""
    layer = Layer(T=3, B=2, I=3, H=5)
    inputs = layer.inputs()
    ref = {k: (v.clone().requires_grad_(k in ("w_hh", "c0")) if v is not None else None) for k, v in inputs.items()}
    tri = {k: (v.float().requires_grad_(k in ("w_hh", "c0")) if v is not None else None) for k, v in inputs.items()}
    for args in (ref, tri):
        fn = lstm_layer_reference if args is ref else tb.lstm_layer_triton
        out, h_n, c_n = fn(*args.values())
        (out.sum() + h_n.sum() + 2 * c_n.sum()).backward()
    for k in INPUTS:
        if tri[k] is None:
            continue
        if k in ("w_hh", "c0"):
            torch.testing.assert_close(tri[k].grad.double(), ref[k].grad, atol=1e-5, rtol=1e-5,
                                       msg=lambda m: f"grad_{k}: {m}")
        else:
            assert tri[k].grad is None, f"grad_{k} should be None"


@pytest.mark.parametrize("T,B", [(0, 3), (3, 0)])
def test_empty(T, B):
    layer = Layer(T=T, B=B, I=2, H=3)
    inputs = {k: (v.float().requires_grad_() if v is not None else None) for k, v in layer.inputs().items()}
    out, h_n, c_n = tb.lstm_layer_triton(*inputs.values())
    assert out.shape == (T, B, 3)
    torch.testing.assert_close(h_n, inputs["h0"])
    torch.testing.assert_close(c_n, inputs["c0"])
    (out.sum() + 2 * h_n.sum() + 3 * c_n.sum()).backward()
    assert (inputs["h0"].grad == 2).all() and (inputs["c0"].grad == 3).all()
    assert not inputs["w_hh"].grad.any() and not inputs["x"].grad.any()


def test_float64_is_refused_with_a_pointer_to_jit():
    inputs = {k: v for k, v in Layer(T=2, B=2, I=2, H=3).inputs().items()}
    with pytest.raises(TypeError, match="float64.*'jit'"):
        tb.lstm_layer_triton(*inputs.values())


def test_bad_shape_names_the_argument():
    inputs = {k: (v.float() if v is not None else None) for k, v in Layer(T=2, B=2, I=2, H=3).inputs().items()}
    inputs["c0"] = inputs["c0"][:, :2]
    with pytest.raises(ValueError, match="c0"):
        tb.lstm_layer_triton(*inputs.values())


def test_dispatch_refuses_cpu_without_interpreter(monkeypatch):
    x = torch.zeros(2, 1, 3)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="triton") as err:
        _dispatch.resolve_backend("triton", x)
    assert "'jit'" in str(err.value)


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter case")
def test_dispatch_gives_triton_under_the_interpreter():
    assert _dispatch.resolve_backend("triton", torch.zeros(2, 1, 3)) is tb.lstm_layer_triton


@pytest.mark.parametrize("api", ["legacy", "new"])
def test_tf32_setting_is_read_through_either_api(api):
    # torch raises if the legacy flag is read after the new API was used, so
    # the launcher must read whichever one the user set.
    matmul = torch.backends.cuda.matmul
    if api == "new" and not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision API")
    before = matmul.fp32_precision if api == "new" else matmul.allow_tf32
    try:
        if api == "new":
            matmul.fp32_precision = "tf32"
        else:
            matmul.allow_tf32 = True
        assert tb._dot_precision(torch.float32) == "tf32"
        if api == "new":
            matmul.fp32_precision = "ieee"
        else:
            matmul.allow_tf32 = False
        assert tb._dot_precision(torch.float32) == "ieee"
        assert tb._dot_precision(torch.bfloat16) == "tf32"  # ignored for 16-bit dots
    finally:
        if api == "new":
            matmul.fp32_precision = before
        else:
            matmul.allow_tf32 = before
