"""The Triton layer primitive against the float64 reference loop, in every
launch mode, and its launch plan.

Runs under the Triton interpreter on the CPU (tests/conftest.py sets
TRITON_INTERPRET=1), or compiled on a GPU with FASTLSTM_TEST_NATIVE=1. Every
buffer the launchers allocate is pre-filled with NaN, so a tile the kernels
forget to write fails loudly.

The same kernels run in each mode (`MODES`), and every conformance test runs
in several:
- "persistent": the plan the device gets. Under the interpreter that is one
  program running every step in one launch (the interpreter runs programs
  one after another, so a multi-program spin barrier would hang there); on
  a GPU, the real multi-program grid and its barrier.
- "per-step": many small programs (4 hidden units each, 16-wide K chunks),
  one launch per step and phase: the fallback, and the multi-program grid
  the interpreter can run.
- "streamed": persistent, with the weights re-read every step instead of
  held on chip (the plan for layers whose weights do not fit).

Compiled natively, every distinct shape class (and mode) is a kernel compile of
a few seconds, so natively the full mode matrix runs on a few layers that
cover the plan's branches (`_with_modes`), the rest in the device's own plan,
and the property tests draw from a fixed list of shapes (`NATIVE_SHAPES`)
whose kernels the fixed tests compile anyway. Under the interpreter nothing is
compiled, and hypothesis draws freely.
"""
import dataclasses
import os
from dataclasses import dataclass
from typing import Dict, Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastlstm
from fastlstm import _dispatch
from fastlstm.backends.reference import lstm_layer_reference
from fastlstm.precision import answer_tolerance
from helpers import Case, assert_same, run

triton = pytest.importorskip("triton")
from fastlstm.backends import triton as tb  # noqa: E402
from fastlstm.backends.triton import launch as tb_launch  # noqa: E402
from fastlstm.backends.triton import layer as tb_layer  # noqa: E402
from fastlstm.backends.triton import plan as tb_plan  # noqa: E402
from fastlstm.kernels import lstm_bwd as k_bwd  # noqa: E402
from fastlstm.kernels import lstm_fwd as k_fwd  # noqa: E402

DEVICE = "cuda" if os.environ.get("FASTLSTM_TEST_NATIVE", "0") == "1" else "cpu"
INTERPRETED = DEVICE == "cpu"

# Tolerances against a float64 reference computed from the same (dtype-rounded)
# inputs: fastlstm.precision's "kernel" check, whose atol is relative to
# max(1, max|reference|), because weight gradients are sums over T*B rows and
# grow with them. float32 gets TF32's where torch's settings let the kernels
# (or the host GEMMs) use it on a GPU; the interpreter computes in full float32.


def _tolerance(dtype):
    return answer_tolerance(dtype, DEVICE, "triton", check="kernel")

INPUTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")

MODES = ("persistent", "per-step", "streamed")


@pytest.fixture(autouse=True)
def _nan_buffers(monkeypatch):
    """Make every kernel-written buffer start as NaN."""

    def empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(tb_layer, "_empty", empty)


def _use_mode(monkeypatch, mode: str, **changes) -> None:
    """Make the backend plan its launches as `mode` says (see the module doc);
    `changes` override plan fields of both kernels. It replaces `plans_for` in
    `fastlstm.backends.triton.layer`, where the layer looks it up."""
    real = tb_layer.plans_for

    def plans_for(x, hidden, proj, training):
        if mode == "per-step":
            monkeypatch.setattr(tb_plan, "_MIN_UNITS", 4)
            args = (x.shape[1], hidden, proj, x.dtype, 10_000, 227 * 1024, training)
            plans = [tb.launch_plan(*args, kernel=k, cooperative=False) for k in ("forward", "backward")]
            plans = [dataclasses.replace(p, persistent=False, block_k=16) for p in plans]
            if not training:
                plans[1] = None
        else:
            plans = list(real(x, hidden, proj, training))
            if mode == "streamed":
                plans = [p and dataclasses.replace(p, w_resident=False, smem_bytes=0, num_stages=2, block_k=16)
                         for p in plans]
        return tuple(p and dataclasses.replace(p, **changes) for p in plans)

    monkeypatch.setattr(tb_layer, "plans_for", plans_for)


@pytest.fixture(params=MODES if INTERPRETED else ["persistent"])
def mode(request, monkeypatch):
    """Every mode under the interpreter; natively the device's own plan, unless a
    test asks for more through `_with_modes`."""
    _use_mode(monkeypatch, request.param)
    return request.param


def _with_modes(cases, every_mode_natively=()):
    """(case, mode) parameters: every case in every mode under the interpreter;
    natively every case in the device's plan ("persistent"), and the cases at the
    indexes `every_mode_natively` in every mode (each mode of a shape class is a
    kernel compile there)."""
    def name(case):
        return f"{case[0]}-{str(case[1])[6:]}" if isinstance(case, tuple) else str(case)

    return [pytest.param(case, m, id=f"{name(case)}-{m}") for i, case in enumerate(cases) for m in MODES
            if INTERPRETED or m == "persistent" or i in every_mode_natively]


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
    atol, rtol = _tolerance(dtype)
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


# Natively in every mode: a plain layer, a projected packed one, and one of two
# 16-row batch tiles with K chunks that divide H (EVEN_K).
@pytest.mark.parametrize("layer,mode", _with_modes(GRID, every_mode_natively=(3, 4, 10)), indirect=["mode"])
def test_float32_matches_reference(layer, mode):
    _check_layer(layer, torch.float32)


HALF = [
    Layer(T=4, B=3, I=4, H=13),
    Layer(T=5, B=4, I=3, H=7, proj=5, packed=True),
    Layer(T=5, B=3, I=3, H=9, packed=True, bias=False),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layer,mode", _with_modes(HALF, every_mode_natively=(1,)), indirect=["mode"])
def test_half_matches_reference(layer, dtype, mode):
    _check_layer(layer, dtype)


@pytest.mark.parametrize("layer,dtype", [(GRID[3], torch.float32), (GRID[10], torch.float32),
                                         (HALF[0], torch.float16), (HALF[0], torch.bfloat16)],
                         ids=["f32", "f32-proj-packed", "f16", "bf16"])
def test_tf32_off_keeps_float32_tight(layer, dtype, monkeypatch):
    """With cuDNN's TF32 off (as nn.LSTM: `torch.backends.cudnn.allow_tf32 =
    False`), float32 is checked at float32's own tolerance, and the plan is
    the exact one (FMA products, weights streamed); 16-bit dtypes are unchanged.
    The interpreter computes exactly either way."""
    _use_mode(monkeypatch, "persistent")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        if dtype == torch.float32:
            assert _tolerance(dtype) == answer_tolerance(dtype, "cpu", check="kernel"), "not the tight tolerance"
            fwd, bwd = tb_layer.plans_for(torch.empty(layer.T, layer.B, layer.I, dtype=dtype, device=DEVICE),
                                          layer.H, layer.proj, True)
            if not INTERPRETED:
                assert not fwd.w_resident and not bwd.w_resident, f"exact float32 keeps W on chip: {fwd}"
        _check_layer(layer, dtype)


def _free_shapes():
    """Any small layer and dtype (under the interpreter, where nothing compiles)."""
    @st.composite
    def draw_shape(draw):
        H = draw(st.sampled_from([1, 2, 3, 7, 13, 17]))
        proj = draw(st.integers(0, 4))
        layer = Layer(T=draw(st.integers(1, 5)), B=draw(st.integers(1, 5)), I=draw(st.integers(1, 6)), H=H,
                      proj=proj if proj < H else 0, bias=draw(st.booleans()), packed=draw(st.booleans()))
        return layer, draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16]))
    return draw_shape()


# Natively the property tests draw from shapes that the tests above compile in
# every mode already (values and seeds still vary), instead of a kernel compile
# per drawn shape: a plain layer, one with a single unit (sizes of 1 are
# specialised), two 16-row batch tiles, a projected packed layer, and both
# 16-bit dtypes.
NATIVE_SHAPES = [(GRID[3], torch.float32), (GRID[4], torch.float32), (GRID[10], torch.float32),
                 (HALF[1], torch.float16), (HALF[1], torch.bfloat16)]
SHAPES = _free_shapes() if INTERPRETED else st.sampled_from(NATIVE_SHAPES)


@pytest.mark.parametrize("mode_name", ["per-step", "persistent"])
@settings(max_examples=30 if INTERPRETED else 2 * len(NATIVE_SHAPES))
@given(shape=SHAPES, seed=st.integers(0, 2**16))
def test_property_matches_reference(mode_name, shape, seed):
    layer, dtype = shape
    with pytest.MonkeyPatch.context() as mp:
        _use_mode(mp, mode_name)
        _check_layer(dataclasses.replace(layer, seed=seed), dtype)


SEVERAL_BLOCKS = [
    (Layer(T=3, B=37, I=3, H=35), torch.float32),
    (Layer(T=4, B=37, I=2, H=36, proj=33, packed=True), torch.float32),
    (Layer(T=3, B=67, I=2, H=35, packed=True), torch.bfloat16),
]


@pytest.mark.parametrize("case,mode", _with_modes(SEVERAL_BLOCKS, every_mode_natively=(1,)), indirect=["mode"])
def test_several_batch_blocks_and_k_chunks(case, mode):
    """Shapes that need more than one batch tile per step, and (in the per-step
    and streamed modes) several K chunks per product."""
    layer, dtype = case
    fwd, bwd = tb_layer.plans_for(torch.empty(layer.T, layer.B, layer.I, dtype=dtype, device=DEVICE), layer.H,
                                  layer.proj, True)
    R = layer.proj or layer.H
    assert -(-layer.B // fwd.block_b) > 1, f"one batch tile only: {fwd}"
    if mode != "persistent":
        assert -(-R // fwd.block_k) > 1 and -(-4 * layer.H // bwd.block_k) > 1, f"one K chunk only: {fwd}"
    if mode == "per-step" and INTERPRETED:
        assert fwd.grid[0] > 1 and bwd.grid[0] > 1 and not fwd.persistent, f"not a multi-program grid: {fwd}"
    _check_layer(layer, dtype)


def test_any_strides(mode):
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
def test_no_grad_forward_matches(packed, proj, mode):
    # Without grad the cell (and projection input) buffers are one tile
    # updated in place; the results must not change.
    layer = Layer(T=4, B=3, I=3, H=7, proj=proj, packed=packed)
    inputs = {k: (v.float().to(DEVICE) if v is not None else None) for k, v in layer.inputs().items()}
    bs = layer.batch_sizes()
    with torch.no_grad():
        got = tb.lstm_layer_triton(*inputs.values(), batch_sizes=bs)
    want = lstm_layer_reference(*(v.double() if v is not None else None for v in inputs.values()), batch_sizes=bs)
    atol, rtol = _tolerance(torch.float32)
    for name, a, b in zip(("out", "h_n", "c_n"), got, want):
        assert not a.requires_grad, name
        torch.testing.assert_close(a.double(), b, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def test_some_inputs_without_grad():
    """Only w_hh and c0 require grad: those gradients are right, others None."""
    layer = Layer(T=3, B=2, I=3, H=5)
    inputs = layer.inputs()
    ref = {k: (v.clone().requires_grad_(k in ("w_hh", "c0")) if v is not None else None) for k, v in inputs.items()}
    tri = {k: (v.to(device=DEVICE, dtype=torch.float32).requires_grad_(k in ("w_hh", "c0")) if v is not None else None)
           for k, v in inputs.items()}
    for args in (ref, tri):
        fn = lstm_layer_reference if args is ref else tb.lstm_layer_triton
        out, h_n, c_n = fn(*args.values())
        (out.sum() + h_n.sum() + 2 * c_n.sum()).backward()
    atol, rtol = _tolerance(torch.float32)
    for k in INPUTS:
        if tri[k] is None:
            continue
        if k in ("w_hh", "c0"):
            torch.testing.assert_close(tri[k].grad.double().cpu(), ref[k].grad, atol=atol, rtol=rtol,
                                       msg=lambda m: f"grad_{k}: {m}")
        else:
            assert tri[k].grad is None, f"grad_{k} should be None"


@pytest.mark.parametrize("T,B", [(0, 3), (3, 0)])
def test_empty(T, B):
    layer = Layer(T=T, B=B, I=2, H=3)
    inputs = {k: (v.to(device=DEVICE, dtype=torch.float32).requires_grad_() if v is not None else None)
              for k, v in layer.inputs().items()}
    out, h_n, c_n = tb.lstm_layer_triton(*inputs.values())
    assert out.shape == (T, B, 3)
    torch.testing.assert_close(h_n, inputs["h0"])
    torch.testing.assert_close(c_n, inputs["c0"])
    (out.sum() + 2 * h_n.sum() + 3 * c_n.sum()).backward()
    assert (inputs["h0"].grad == 2).all() and (inputs["c0"].grad == 3).all()
    assert not inputs["w_hh"].grad.any() and not inputs["x"].grad.any()


def test_float64_is_refused_with_a_pointer_to_jit():
    inputs = {k: (v.to(DEVICE) if v is not None else None) for k, v in Layer(T=2, B=2, I=2, H=3).inputs().items()}
    with pytest.raises(TypeError, match="float64.*'jit'"):
        tb.lstm_layer_triton(*inputs.values())


def test_bad_shape_names_the_argument():
    inputs = {k: (v.to(device=DEVICE, dtype=torch.float32) if v is not None else None)
              for k, v in Layer(T=2, B=2, I=2, H=3).inputs().items()}
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


@pytest.mark.parametrize("T", [1, 2, 37])
@pytest.mark.parametrize("options", [
    dict(proj_size=3, packed="unsorted"),
    dict(bidirectional=True, num_layers=2, packed="sorted"),
    dict(bidirectional=True, proj_size=2, bias=False),
], ids=["proj-packed", "bidir-2layers-packed", "bidir-proj-nobias"])
def test_whole_lstm_matches_nn_lstm_in_float64(T, options, monkeypatch):
    """fastlstm.LSTM on the persistent kernels (float32) against a float64
    nn.LSTM with the same weights: outputs, final states and every gradient."""
    _use_mode(monkeypatch, "persistent")
    B = 3
    lengths = [T, max(1, T - 1), max(1, T // 2)] if options.get("packed") else []
    case = Case(input_size=3, hidden_size=5, batch=B, seq_len=T, lengths=lengths, train=True, seed=T, **options)
    ref = torch.nn.LSTM(case.input_size, case.hidden_size, **case.kwargs()).double()
    ours = fastlstm.LSTM(case.input_size, case.hidden_size, **case.kwargs(), backend="triton")
    ours.load_state_dict(ref.state_dict())
    ours.to(device=DEVICE, dtype=torch.float32)
    inputs = case.make_inputs()
    want = run(ref, case, torch.float64, *inputs)
    got = run(ours, case, torch.float32, *inputs, device=DEVICE)
    assert_same(got, want, torch.float32, f"triton persistent {case}", device=DEVICE, backend="triton")


# ----------------------------------------------------------------------------
# Launches, barrier, precision
# ----------------------------------------------------------------------------


class _Recorder:
    """Stands in for a kernel: records the arguments of every launch by name."""

    def __init__(self, kernel):
        self.kernel, self.fn, self.launches = kernel, kernel.fn, []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            named = dict(zip(tb_launch._param_names(self.kernel), args), **kwargs)
            self.launches.append(dict(named, grid=grid))
            return launch(*args, **kwargs)

        return run


@pytest.fixture
def recorded(monkeypatch):
    """The forward and backward kernels, recording their launches (interpreter only:
    on a GPU the per-step fallback launches the compiled kernel directly)."""
    if not INTERPRETED:
        pytest.skip("launches are recorded under the interpreter")
    fwd, bwd = _Recorder(k_fwd.lstm_fwd_kernel), _Recorder(k_bwd.lstm_bwd_kernel)
    monkeypatch.setattr(k_fwd, "lstm_fwd_kernel", fwd)
    monkeypatch.setattr(k_bwd, "lstm_bwd_kernel", bwd)
    return fwd, bwd


def _train_once(layer: Layer, dtype=torch.float32):
    inputs = {k: (v.to(device=DEVICE, dtype=dtype).requires_grad_() if v is not None else None)
              for k, v in layer.inputs().items()}
    out, h_n, c_n = tb.lstm_layer_triton(*inputs.values(), batch_sizes=layer.batch_sizes())
    (out.sum() + h_n.sum() + c_n.sum()).backward()


@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
def test_persistent_launch_count_does_not_grow_with_T(recorded, monkeypatch, proj):
    _use_mode(monkeypatch, "persistent")
    fwd, bwd = recorded
    counts = []
    for T in (4, 64):
        fwd.launches.clear()
        bwd.launches.clear()
        _train_once(Layer(T=T, B=2, I=3, H=5, proj=proj, packed=True))
        assert all(launch["PERSISTENT"] for launch in fwd.launches + bwd.launches)
        counts.append((len(fwd.launches), len(bwd.launches)))
    assert counts == [(1, 1), (1, 1)], f"(forward, backward) launches at T=4 and T=64: {counts}"
    # One step needs no barrier (nor the host's wait to check it): launched as one step.
    fwd.launches.clear()
    bwd.launches.clear()
    _train_once(Layer(T=1, B=2, I=3, H=5, proj=proj))
    phases = 2 if proj else 1
    assert len(fwd.launches) == len(bwd.launches) == phases
    assert not any(launch["PERSISTENT"] for launch in fwd.launches + bwd.launches)


@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
def test_persistent_launches_split_where_the_barrier_counter_would_overflow(recorded, monkeypatch, proj):
    """The counter is an int32 that only grows within a launch; a sequence longer
    than it allows runs in several persistent launches, in time order (the
    backward from the last steps down)."""
    _use_mode(monkeypatch, "persistent")
    monkeypatch.setattr(tb_launch, "_MAX_ARRIVALS", 6)  # one program: 6 or 3 steps a launch
    fwd, bwd = recorded
    _check_layer(Layer(T=8, B=3, I=2, H=5, proj=proj, packed=True), torch.float32)
    n = 3 if proj else 6
    starts = list(range(0, 8, n))
    assert [(launch["t0"], launch["t1"]) for launch in fwd.launches] == [(t, min(8, t + n)) for t in starts]
    assert [(launch["t0"], launch["t1"]) for launch in bwd.launches] == [(t, min(8, t + n)) for t in starts[::-1]]


@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
def test_per_step_fallback_launches_once_per_step_and_phase(recorded, monkeypatch, proj):
    _use_mode(monkeypatch, "per-step")
    fwd, bwd = recorded
    T = 6
    _train_once(Layer(T=T, B=2, I=3, H=9, proj=proj))
    phases = 2 if proj else 1
    assert len(fwd.launches) == len(bwd.launches) == T * phases
    assert [launch["t0"] for launch in fwd.launches][::phases] == list(range(T))
    assert [launch["t0"] for launch in bwd.launches][::phases] == list(range(T - 1, -1, -1))
    assert all(launch["t1"] == launch["t0"] + 1 and not launch["PERSISTENT"] for launch in fwd.launches)


def test_barrier_counts_every_arrival_and_flags_a_timeout(monkeypatch):
    """The barrier alone (the GPU microbenchmark's kernel): one program meets it
    trivially; two programs run one after another (the interpreter) cannot
    meet, and the bounded spin gives up and raises the flag."""
    if not INTERPRETED:
        pytest.skip("the timeout needs a grid that is not co-resident: the interpreter's")
    assert tb.barrier_loop(1, 5, DEVICE).tolist() == [5, 0]
    monkeypatch.setattr(tb_launch, "_MAX_SPIN", 10)
    arrivals, err = tb.barrier_loop(2, 3, DEVICE).tolist()
    assert arrivals == 6 and err == 1


def test_column_masks_are_dropped_only_where_the_k_chunk_divides_the_sizes(recorded, monkeypatch):
    _use_mode(monkeypatch, "per-step")  # 16-wide K chunks
    fwd, bwd = recorded
    _train_once(Layer(T=2, B=2, I=3, H=16))
    even = [launch["EVEN_K"] for launch in fwd.launches + bwd.launches]
    fwd.launches.clear()
    bwd.launches.clear()
    _train_once(Layer(T=2, B=2, I=3, H=13))
    odd = [launch["EVEN_K"] for launch in fwd.launches + bwd.launches]
    assert even == [True] * 4 and odd == [False] * 4


@pytest.mark.skipif(not INTERPRETED, reason="the interpreter case")
def test_the_interpreter_plans_one_program_even_for_cuda_tensors():
    """The interpreter runs a grid's programs one after another whatever the
    tensors' device, so a multi-program persistent grid would spin there."""
    assert tb_plan._device_limits.__wrapped__(torch.device("cuda", 0)) == (1, 227 * 1024, False)


def test_per_step_fallback_on_a_gpu_compiles_once_and_launches_the_compiled_kernel():
    """The GPU branch of the fallback's launcher, with stand-ins for Triton's
    JIT function and compiled kernel (the latter reads the grid as triton's
    `CompiledKernel` does: all three dimensions)."""
    warmed, runs = [], []

    class Compiled:
        def __getitem__(self, grid):
            grid_x, grid_y, grid_z = grid[0], grid[1], grid[2]  # noqa: F841

            def run(*args, stream):
                runs.append((grid, args[names.index("t0")], args[names.index("t1")], stream, len(args)))

            return run

    class Kernel:
        fn = k_fwd.lstm_fwd_kernel.fn

        def warmup(self, *args, grid, **options):
            warmed.append((grid, options))
            return Compiled()

        def __getitem__(self, grid):
            raise AssertionError("the per-step loop must not go through Triton's dispatcher")

    kernel = Kernel()
    names = tb_launch._param_names(kernel)
    params = dict.fromkeys(names, 0)
    launcher = tb_launch._StepLauncher(kernel, (5,), params, {"num_warps": 8}, stream=1234)
    for t in range(3):
        launcher(t, t + 1)
    assert warmed == [((5, 1, 1), {"num_warps": 8})], "compiled once, for a padded 3-d grid"
    assert runs == [((5, 1, 1), t, t + 1, 1234, len(names)) for t in range(3)]


@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
@pytest.mark.parametrize("which", ["forward", "backward"])
def test_barrier_timeout_gives_nan_and_an_error_naming_the_shape_at_the_next_call(monkeypatch, which, proj):
    """A persistent grid whose programs are not all resident at once: the
    interpreter runs them one after another, so the first waits at its barrier
    in vain. The bounded spin gives up; the broken launch writes NaN into every
    output (the forward's, or every gradient), and the next call on the device
    raises the named error (the host never waits for the flag). After that the
    device works again."""
    if not INTERPRETED:
        pytest.skip("on a GPU the persistent grid is co-resident; the interpreter is not")
    monkeypatch.setattr(tb_launch, "_MAX_SPIN", 20)
    monkeypatch.setattr(tb_plan, "_MIN_UNITS", 4)
    real = tb_layer.plans_for
    broken = [True]

    def plans_for(x, hidden, proj, training):
        good = real(x, hidden, proj, training)
        if not broken[0]:
            return good
        args = (x.shape[1], hidden, proj, x.dtype, 10_000, 227 * 1024, training)
        # cooperative=True: a two-program persistent grid, which cannot work here
        bad = [tb.launch_plan(*args, kernel=k, cooperative=True) for k in ("forward", "backward")]
        assert all(p.persistent and p.grid[0] > 1 for p in bad)
        return (bad[0], bad[1]) if which == "forward" else (good[0], bad[1])

    monkeypatch.setattr(tb_layer, "plans_for", plans_for)
    # Buffers start as zeros here, not NaN: the NaN must be the kernel's.
    monkeypatch.setattr(tb_layer, "_empty", lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device))
    layer = Layer(T=3, B=2, I=3, H=7, proj=proj)
    R = proj or 7
    inputs = {k: (v.to(device=DEVICE, dtype=torch.float32).requires_grad_() if v is not None else None)
              for k, v in layer.inputs().items()}
    out, h_n, c_n = tb.lstm_layer_triton(*inputs.values())
    if which == "forward":
        assert all(t.isnan().all() for t in (out, h_n, c_n)), "a broken forward's outputs must all be NaN"
    else:
        assert all(t.isfinite().all() for t in (out, h_n, c_n))
        (out.sum() + h_n.sum() + c_n.sum()).backward()
        grads = {k: v.grad for k, v in inputs.items() if v is not None}
        assert all(g.isnan().all() for g in grads.values()), \
            f"a broken backward's gradients must all be NaN: {[k for k, g in grads.items() if not g.isnan().all()]}"
    with pytest.raises(RuntimeError, match=rf"barrier .*timed out \({which}, T=3, B=2, I=3, H=7, R={R}, float32"):
        tb.lstm_layer_triton(*[v.detach() if v is not None else None for v in inputs.values()])
    broken[0] = False
    out, h_n, c_n = tb.lstm_layer_triton(*[v.detach() if v is not None else None for v in inputs.values()])
    assert all(t.isfinite().all() for t in (out, h_n, c_n)), "the error is raised once, then the device works"


@pytest.mark.parametrize("flag", [True, False], ids=["tf32-on", "tf32-off"])
def test_float32_products_follow_cudnns_tf32_flag(recorded, monkeypatch, flag):
    """As nn.LSTM on CUDA: the recurrent products use TF32 unless cuDNN's flag is
    off. (The interpreter computes in full float32 either way, so this checks
    that the setting reaches the kernels.)"""
    _use_mode(monkeypatch, "persistent")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=flag):
        assert tb_plan._dot_precision(torch.float32) == ("tf32" if flag else "ieee")
        _train_once(Layer(T=2, B=2, I=3, H=5))
        _train_once(Layer(T=2, B=2, I=3, H=5), dtype=torch.bfloat16)
    fwd, bwd = recorded
    want = "tf32" if flag else "ieee"
    assert [launch["DOT_PRECISION"] for launch in fwd.launches + bwd.launches] == [want, "tf32"] * 2


@pytest.mark.skipif(not hasattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision"),
                    reason="this torch has no per-op fp32_precision API")
def test_tf32_flag_is_read_through_the_new_api():
    rnn = torch.backends.cudnn.rnn
    before = rnn.fp32_precision
    try:
        rnn.fp32_precision = "ieee"
        assert tb_plan._dot_precision(torch.float32) == "ieee"
        rnn.fp32_precision = "tf32"
        assert tb_plan._dot_precision(torch.float32) == "tf32"
    finally:
        rnn.fp32_precision = before


# ----------------------------------------------------------------------------
# The launch plan
# ----------------------------------------------------------------------------

H100 = dict(sm_count=132, smem_per_block=227 * 1024)


@pytest.mark.parametrize("training,kernel", [(False, "forward"), (True, "forward"), (True, "backward")],
                         ids=["infer", "train-forward", "train-backward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
def test_plan_is_persistent_with_weights_on_chip_up_to_1024_on_an_h100(dtype, training, kernel):
    for B in (1, 8, 16, 64, 256):
        for H in (128, 256, 512, 768, 1024):
            p = tb.launch_plan(B, H, 0, dtype, **H100, training=training, kernel=kernel)
            assert p.persistent and p.w_resident, f"B={B} H={H}: {p}"
            assert p.grid[0] <= 132 and p.grid[0] * p.block_h >= H > (p.grid[0] - 1) * p.block_h, p
            assert p.smem_bytes + tb_plan._SMEM_SLACK <= 227 * 1024 and p.num_stages == 1, p
            assert p.block_b <= max(16, B) * 2 and p.block_k >= 16, p


def test_plan_examples():
    p = tb.launch_plan(16, 768, 0, torch.bfloat16, **H100, training=True)
    assert (p.grid, p.block_h, p.smem_bytes) == ((96,), 8, 4 * 8 * 768 * 2)
    p = tb.launch_plan(16, 1024, 256, torch.float32, **H100, training=True, kernel="backward")
    assert (p.grid, p.proj_grid, p.block_h, p.block_r) == ((128,), 32, 8, 8)
    assert p.smem_bytes == (8 * 4096 + 8 * 256) * 4
    # Weights too large for shared memory are streamed, still in one launch.
    p = tb.launch_plan(16, 4096, 0, torch.float32, **H100, training=False)
    assert p.persistent and not p.w_resident and p.grid == (128,) and p.num_stages == 2
    # Exact float32 products (TF32 off) run on FMA units: weights streamed.
    p = tb.launch_plan(16, 1024, 0, torch.float32, **H100, training=True, exact_fp32=True)
    assert p.persistent and not p.w_resident and p.block_k == 32 and p.num_stages == 2
    # Without cooperative launches only a one-program grid may be persistent.
    assert not tb.launch_plan(16, 1024, 0, torch.float32, **H100, training=False, cooperative=False).persistent
    assert tb.launch_plan(4, 8, 0, torch.float32, 1, 10**6, training=False, cooperative=False).persistent
    assert "persistent: 96 programs x 8 units" in str(tb.launch_plan(16, 768, 0, torch.bfloat16, **H100,
                                                                     training=False))


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel="sideways"), "kernel must be"),
    (dict(dtype=torch.float64), "dtype must be"),
    (dict(batch=0), "batch"),
    (dict(proj=-1), "proj"),
])
def test_plan_refuses_bad_arguments(kwargs, match):
    args = dict(batch=4, hidden=8, proj=0, dtype=torch.float32, **H100, training=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tb.launch_plan(**args)
