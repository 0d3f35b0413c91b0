"""Production hardening: odd inputs, grad modes, determinism, long sequences, precision."""
import pytest
import torch

import fastlstm
from helpers import INTERPRETED, triton_can_run_here

BACKENDS = ["jit", "reference"] + (["triton"] if INTERPRETED and triton_can_run_here() else [])
I, H = 5, 6


def _pair(backend, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H, **kw).to(dtype)
    ours = fastlstm.LSTM(I, H, **kw, backend=backend).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _dtype_for(backend):
    return torch.float32 if backend == "triton" else torch.float64


def _tol(dtype):
    """(atol, rtol): tight for float64 runs, float32's for Triton."""
    return {"atol": 1e-10, "rtol": 1e-9} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_inputs_propagate_like_torch(backend):
    dtype = _dtype_for(backend)
    ours, theirs = _pair(backend, dtype, num_layers=2)
    x = torch.randn(4, 3, I, dtype=dtype)
    x[1, 0, 0] = float("nan")
    x[2, 1, 2] = float("inf")
    x[0, 2, 1] = -float("inf")
    got, want = ours(x), theirs(x)
    for name, a, b in (("out", got[0], want[0]), ("h_n", got[1][0], want[1][0]), ("c_n", got[1][1], want[1][1])):
        assert torch.equal(a.isnan(), b.isnan()), f"{name}: NaNs differ from nn.LSTM"
        torch.testing.assert_close(a, b, equal_nan=True, **_tol(dtype), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_finite_inputs_stay_finite_and_match(backend):
    dtype = _dtype_for(backend)
    ours, theirs = _pair(backend, dtype)
    x = torch.randn(4, 3, I, dtype=dtype) * 1e4
    (out, (h, c)), (want, (wh, wc)) = ours(x), theirs(x)
    assert out.isfinite().all() and h.isfinite().all() and c.isfinite().all()
    torch.testing.assert_close(out, want, **_tol(dtype))
    torch.testing.assert_close(h, wh, **_tol(dtype))
    torch.testing.assert_close(c, wc, **_tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_expanded_transposed_inputs(backend):
    dtype = _dtype_for(backend)
    ours, theirs = _pair(backend, dtype, num_layers=2, batch_first=True)
    x = torch.randn(I, 4, 3, dtype=dtype).permute(2, 1, 0)  # (B=3, T=4, I), no unit stride on I
    h0 = torch.randn(2, 1, H, dtype=dtype).expand(2, 3, H)
    c0 = torch.randn(2, 3, H * 2, dtype=dtype)[..., ::2]
    assert not x.is_contiguous() and not h0.is_contiguous() and not c0.is_contiguous()
    got, want = ours(x, (h0, c0)), theirs(x.contiguous(), (h0.contiguous(), c0.contiguous()))
    torch.testing.assert_close(got[0], want[0], **_tol(dtype))
    torch.testing.assert_close(got[1][1], want[1][1], **_tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_single_step(backend):
    ours, theirs = _pair(backend, _dtype_for(backend), bidirectional=True)
    dtype = _dtype_for(backend)
    out, (h, c) = ours(torch.randn(5, 0, I, dtype=dtype))
    assert out.shape == (5, 0, 2 * H) and h.shape == (2, 0, H) and c.shape == (2, 0, H)
    x = torch.randn(1, 3, I, dtype=dtype)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **_tol(dtype))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_saved_for_backward_without_grad(backend, mode):
    ours, _ = _pair(backend, _dtype_for(backend))
    x = torch.randn(6, 2, I, dtype=_dtype_for(backend))
    saved = []
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), context:
        out, _ = ours(x)
    assert saved == [], f"{len(saved)} tensors were saved for backward under {mode}"
    assert out.grad_fn is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_wrt_input_only(backend):
    dtype = _dtype_for(backend)
    ours, theirs = _pair(backend, dtype)
    for m in (ours, theirs):
        m.requires_grad_(False)
    x = torch.randn(4, 2, I, dtype=dtype)
    grads = []
    for m in (ours, theirs):
        leaf = x.clone().requires_grad_(True)
        m(leaf)[0].pow(2).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], **_tol(dtype))
    assert all(p.grad is None for p in ours.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["linear", "square"])
def test_double_backward_matches_torch(backend, loss):
    # After a linear loss the incoming gradients need no grad; the second
    # derivative must still be nn.LSTM's, not a silently detached zero.
    dtype = _dtype_for(backend)
    ours, theirs = _pair(backend, dtype, num_layers=2)
    x0 = torch.randn(3, 2, I, dtype=dtype)
    results = []
    for m in (ours, theirs):
        x = x0.clone().requires_grad_(True)
        out = m(x)[0]
        (g,) = torch.autograd.grad(out.sum() if loss == "linear" else out.pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(g.pow(2).sum(), [x, m.weight_hh_l0, m.weight_ih_l1]))
    for name, a, b in zip(("x", "weight_hh_l0", "weight_ih_l1"), *results):
        torch.testing.assert_close(a, b, **_tol(dtype), msg=lambda m: f"d2/d{name}: {m}")


@pytest.mark.parametrize("backend", ["jit", "reference"])
def test_bitwise_deterministic(backend):
    def once():
        ours, _ = _pair(backend, torch.float32, num_layers=2, bidirectional=True)
        x = torch.randn(7, 3, I, generator=torch.Generator().manual_seed(1), requires_grad=True)
        out, (h, c) = ours(x)
        (out.sum() + h.pow(2).sum() + c.sum()).backward()
        return [out, h, c, x.grad] + [p.grad for p in ours.parameters()]

    first, second = once(), once()
    for k, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"tensor {k} differs between two identical runs"


def _stored_bytes(module, T, B=2):
    """Bytes kept alive for backward by one training forward: every tensor the
    autograd graph saves, counted once per storage."""
    x = torch.randn(T, B, I, requires_grad=True)
    out, _ = module(x)
    storages = {}
    seen = set()
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for t in getattr(node, "saved_tensors", ()):
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                storages[s.data_ptr()] = s.nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    # The input, the output and the parameters exist anyway; count what training adds.
    for t in (x, out, *module.parameters()):
        storages.pop(t.untyped_storage().data_ptr(), None)
    return sum(storages.values())


def test_training_memory_is_linear_in_T():
    ours, _ = _pair("jit", torch.float32)
    a, b = _stored_bytes(ours, 512), _stored_bytes(ours, 1024)
    assert 1.9 < b / a < 2.1, f"stored bytes grew {b / a:.2f}x when T doubled"
    # What the README documents: 7H floats per batch row and step without
    # projection (6H of activations, and its own copy of the output).
    per_step = (b - a) / 512 / 2
    assert per_step == 7 * H * 4, f"{per_step} bytes per step and row, expected {7 * H * 4}"


def test_ten_thousand_steps_forward_and_backward():
    torch.manual_seed(0)
    lstm = fastlstm.LSTM(4, 8, backend="jit")
    x = torch.randn(10_000, 2, 4, requires_grad=True)
    out, (h, c) = lstm(x)
    (out.mean() + h.sum()).backward()
    assert out.shape == (10_000, 2, 8) and x.grad.shape == x.shape
    assert x.grad.isfinite().all() and all(p.grad.isfinite().all() for p in lstm.parameters())


def test_empty_batch_cell_forward_and_backward():
    cell = fastlstm.LSTMCell(I, H)
    x = torch.randn(0, I, requires_grad=True)
    h, c = cell(x)
    (h.sum() + c.sum()).backward()
    assert h.shape == (0, H) and x.grad.shape == (0, I)
    assert all(p.grad is not None and not p.grad.any() for p in cell.parameters())


def test_float64_is_left_alone_by_autocast():
    ours, theirs = _pair("jit", torch.float64)
    x = torch.randn(4, 2, I, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x), theirs(x)
    assert got[0].dtype == want[0].dtype == torch.float64
    torch.testing.assert_close(got[0], want[0], **_tol(torch.float64))


def test_cell_under_cpu_autocast_stays_float32_like_torch():
    torch.manual_seed(0)
    theirs = torch.nn.LSTMCell(I, H)
    ours = fastlstm.LSTMCell.from_torch(theirs)
    x = torch.randn(3, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (h, c), (wh, wc) = ours(x), theirs(x)
    assert h.dtype == wh.dtype == torch.float32 and c.dtype == wc.dtype
    # torch runs the cell's matmuls in bf16 and returns float32; fastlstm
    # keeps float32 throughout, so it equals the cell without autocast.
    torch.testing.assert_close(h, theirs(x)[0], atol=1e-6, rtol=1e-5)
