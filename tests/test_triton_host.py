"""The host side of a layer call: no read from the device on any common path,
the ATen ops and Triton launches one layer call makes, the workspace the
persistent kernels share, and CUDA graphs.

Under the interpreter (the default here) the Triton launches run for real,
with the dispatch mode that watches the host paused while they run: on a GPU
a launch dispatches no ATen op. Tests marked native need
FASTLSTM_TEST_NATIVE=1 on a GPU machine.
"""
import os
from typing import List

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import fastlstm
from fastlstm.backends import jit as jb

triton = pytest.importorskip("triton")
from fastlstm.backends import triton as tb  # noqa: E402
from fastlstm.backends.triton import workspace as tb_workspace  # noqa: E402
from fastlstm.kernels import barrier as k_barrier  # noqa: E402
from fastlstm.kernels import lstm_bwd as k_bwd  # noqa: E402
from fastlstm.kernels import lstm_fwd as k_fwd  # noqa: E402

NATIVE = os.environ.get("FASTLSTM_TEST_NATIVE", "0") == "1"
DEVICE = "cuda" if NATIVE else "cpu"
aten = torch.ops.aten

# Ops that read a tensor's value on the host, so on a GPU wait for it.
SYNCING = {aten._local_scalar_dense, aten.is_nonzero, aten.nonzero, aten.equal, aten.allclose,
           aten.masked_select, aten.unique_consecutive, aten._unique2, aten.repeat_interleave}
# Ops that launch nothing: allocations (views are recognised by their schema).
NO_LAUNCH = {aten.empty, aten.empty_strided, aten.new_empty, aten.new_empty_strided}


class OpLog(TorchDispatchMode):
    """Records every ATen op dispatched (views marked with '*') and every Triton
    launch (as 'TRITON'); `fail_on_sync` raises at a syncing op instead."""

    def __init__(self, fail_on_sync: bool = False):
        super().__init__()
        self.ops: List[str] = []
        self.syncs: List[str] = []
        self.fail_on_sync = fail_on_sync

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in SYNCING:
            self.syncs.append(str(func))
            if self.fail_on_sync:
                raise AssertionError(f"{func} reads the device during a layer call")
        self.ops.append(packet.__name__ + ("*" if func.is_view else ""))
        return func(*args, **(kwargs or {}))


class _Watched:
    """Stands in for a kernel: logs each launch and runs it with the dispatch
    mode paused (the interpreter's own tensor work is not the host path's)."""

    def __init__(self, kernel, log: OpLog):
        self.kernel, self.fn, self.log = kernel, kernel.fn, log

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.log.ops.append("TRITON")
            with _disable_current_modes():
                return launch(*args, **kwargs)

        return run


@pytest.fixture
def watched(monkeypatch):
    if NATIVE:
        pytest.skip("the launches are watched under the interpreter")
    log = OpLog()
    monkeypatch.setattr(k_fwd, "lstm_fwd_kernel", _Watched(k_fwd.lstm_fwd_kernel, log))
    monkeypatch.setattr(k_bwd, "lstm_bwd_kernel", _Watched(k_bwd.lstm_bwd_kernel, log))
    return log


def _layer_inputs(T, B=2, I=3, H=5, proj=0, bias=True, grad=True):
    g = torch.Generator().manual_seed(0)
    R = proj or H

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.5).to(DEVICE).requires_grad_(grad)

    return [rnd(T, B, I), rnd(B, R), rnd(B, H), rnd(4 * H, I), rnd(4 * H, R),
            rnd(4 * H) if bias else None, rnd(4 * H) if bias else None, rnd(R, H) if proj else None]


def _call(log: OpLog, fn):
    log.ops.clear()
    with log:
        result = fn()
    return result, list(log.ops)


@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
def test_layer_forward_and_backward_read_nothing_from_the_device(watched, T, proj):
    """A Triton layer's forward and backward, persistent or one step: no op that
    reads a tensor's value (`.item()`, `bool()`, `nonzero`, ...)."""
    inputs = _layer_inputs(T, proj=proj)
    tb.lstm_layer_triton(*inputs)  # compiles (interprets) once outside the count
    log = OpLog(fail_on_sync=True)
    watched.ops, watched.syncs = log.ops, log.syncs
    with log:
        out, h, c = tb.lstm_layer_triton(*inputs)
        (out.sum() + h.sum() + c.sum()).backward()
        with torch.no_grad():
            tb.lstm_layer_triton(*inputs)
    assert log.syncs == []
    phases = 2 if proj and T == 1 else 1  # one step: launched per phase; else one persistent launch
    assert log.ops.count("TRITON") == 3 * phases


def test_module_training_step_reads_nothing_from_the_device(watched):
    """The whole module (two layers, both directions, projection) through the
    Triton backend: forward and backward."""
    m = fastlstm.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=4, backend="triton").to(DEVICE)
    x = torch.randn(6, 2, 3, device=DEVICE, requires_grad=True)
    m(x)[0].sum().backward()
    log = OpLog(fail_on_sync=True)
    watched.ops = log.ops
    with log:
        out, (h, c) = m(x)
        (out.sum() + h.sum() + c.sum()).backward()
    assert log.syncs == [] and log.ops.count("TRITON") == 8


def test_nothing_reads_the_device_while_a_cuda_graph_is_captured(watched, monkeypatch):
    """The branches taken while a CUDA graph is captured (the host then may not
    read the device, query events or copy): stood in for on the CPU by
    claiming that a capture is under way."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    inputs = _layer_inputs(6, proj=3)
    log = OpLog(fail_on_sync=True)
    watched.ops = log.ops
    with log:
        out, h, c = tb.lstm_layer_triton(*inputs)
        (out.sum() + h.sum() + c.sum()).backward()
    assert log.syncs == [] and "TRITON" in log.ops


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_ops_per_layer_call(watched, bias):
    """What one layer call launches (views and allocations aside), as the README
    states it: inference is the input GEMM and one Triton launch (plus the sum
    of the two biases when both are given); the backward is one small add
    (d_out[T-1] + d_h_n), one launch and the gradient GEMMs."""
    T = 6
    inputs = _layer_inputs(T, bias=bias)
    tb.lstm_layer_triton(*inputs)
    (out, h, c), infer = _call(watched, lambda: tb.lstm_layer_triton(*[t.detach() if t is not None else None
                                                                         for t in inputs]))
    (out, h, c), forward = _call(watched, lambda: tb.lstm_layer_triton(*inputs))
    d_out, d_h, d_c = torch.randn_like(out), torch.randn_like(h), torch.randn_like(c)
    _, backward = _call(watched, lambda: torch.autograd.backward((out, h, c), (d_out, d_h, d_c)))
    gemm = ["add", "addmm"] if bias else ["mm"]
    assert _launching(infer) == gemm + ["TRITON"], infer
    assert _launching(forward) == gemm + ["TRITON"], forward
    bias_grads = ["sum", "copy_"] if bias else []  # db, then autograd's copy of db for the second bias
    want = ["add", "TRITON", "mm", "mm", "mm", "addmm_"] + bias_grads[:1] + ["mm"] + bias_grads[1:]
    assert _launching(backward) == want, backward


def _launching(ops: List[str]) -> List[str]:
    """The ops that launch a kernel on a GPU: no views, no allocations."""
    skip = {p.__name__ for p in NO_LAUNCH}
    return [op for op in ops if not op.endswith("*") and op not in skip]


def test_workspace_is_left_at_zero_and_reused(watched):
    """A persistent launch resets its barrier counter, exit count and error flag
    at its end: the next launch finds zeros, with no host zeroing between."""
    inputs = _layer_inputs(6)
    tb.lstm_layer_triton(*inputs)
    ws = tb_workspace._workspace(torch.device(DEVICE))
    timeouts = int(ws.buf[3])  # the sticky count: what earlier tests' timeouts left (never reset)
    assert ws.buf.tolist() == [0, 0, 0, timeouts]
    (out, h, c), ops = _call(watched, lambda: tb.lstm_layer_triton(*inputs))
    assert "zeros" not in ops and "zero_" not in ops and "fill_" not in ops, ops
    assert ws.buf.tolist() == [0, 0, 0, timeouts]
    assert tb_workspace._workspace(torch.device(DEVICE)) is ws


def test_jit_off_the_cpu_checks_the_weights_range_on_the_device():
    """The jit backend's range check off the CPU (`_flag_on_device`), run on CPU
    tensors: no read of the device, outputs NaN when a weight is past the
    range, and the error at the next check, once."""
    w = torch.randn(8, 3)
    outputs = (torch.ones(2), torch.ones(3))
    log = OpLog(fail_on_sync=True)
    with log:
        same = jb._flag_on_device((w, None), outputs)
    assert all(torch.equal(a, b) for a, b in zip(same, outputs))
    jb._check_device(torch.device("cpu"))
    w[1, 1] = 1e38
    with log:
        poisoned = jb._flag_on_device((w, None), outputs)
    assert all(t.isnan().all() for t in poisoned)
    with pytest.raises(RuntimeError, match=r"backend 'jit' was given weights beyond an eighth of float32's range"):
        jb._check_device(torch.device("cpu"))
    jb._check_device(torch.device("cpu"))  # reported once


# ----------------------------------------------------------------------------
# Native: syncs and CUDA graphs
# ----------------------------------------------------------------------------

native = pytest.mark.skipif(not NATIVE, reason="needs a GPU (FASTLSTM_TEST_NATIVE=1): the interpreter runs on the "
                                               "CPU, where there is no device to wait for and no CUDA graph")


@native
@pytest.mark.parametrize("proj", [0, 4], ids=["no-proj", "proj"])
def test_native_forward_backward_under_sync_debug_mode_error(proj):
    m = fastlstm.LSTM(16, 32, num_layers=2, bidirectional=True, proj_size=proj, backend="triton").cuda()
    x = torch.randn(8, 4, 16, device="cuda", requires_grad=True)
    m(x)[0].sum().backward()  # compiles
    torch.cuda.synchronize()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([8, 5, 5, 2]))
    m(packed)[0].data.sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for T in (1, 8):
            out, (h, c) = m(x[:T])
            (out.sum() + h.sum() + c.sum()).backward()
        out, (h, c) = m(packed)  # packed: indices built on the host, copied without a sync
        (out.data.sum() + h.sum() + c.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@native
def test_native_forward_replays_from_a_cuda_graph():
    m = fastlstm.LSTM(16, 32, backend="triton").cuda()
    static_x = torch.randn(8, 4, 16, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(2):
            m(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.no_grad():
        static_out, (static_h, static_c) = m(static_x)
    for _ in range(2):
        x = torch.randn(8, 4, 16, device="cuda")
        static_x.copy_(x)
        g.replay()
        with torch.no_grad():
            want, (h, c) = m(x)
        torch.testing.assert_close(static_out, want, rtol=0, atol=0)
        torch.testing.assert_close((static_h, static_c), (h, c), rtol=0, atol=0)
    tb.raise_barrier_timeouts("cuda")


@native
def test_native_training_step_replays_from_a_cuda_graph():
    m = fastlstm.LSTM(16, 32, num_layers=2, backend="triton").cuda()
    x = torch.randn(8, 4, 16, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(m, (x,))
    for _ in range(2):
        xi = torch.randn(8, 4, 16, device="cuda", requires_grad=True)
        m.zero_grad()
        out, (h, c) = graphed(xi)
        (out.sum() + h.sum()).backward()
        got = [xi.grad.clone()] + [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        xe = xi.detach().requires_grad_()
        out_e, (h_e, c_e) = m(xe)
        (out_e.sum() + h_e.sum()).backward()
        want = [xe.grad] + [p.grad for p in m.parameters()]
        torch.testing.assert_close(out, out_e, rtol=0, atol=0)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    tb.raise_barrier_timeouts("cuda")


@native
def test_native_compile_reduce_overhead_replays():
    """torch.compile(mode="reduce-overhead") with the whole LSTM in the graph
    (allow_rnn, fullgraph: fastlstm's custom ops), forward and backward replayed
    from CUDA graphs, against eager."""
    m = fastlstm.LSTM(16, 32, backend="triton").cuda()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(m, mode="reduce-overhead", fullgraph=True)
        for _ in range(4):
            x = torch.randn(8, 4, 16, device="cuda", requires_grad=True)
            m.zero_grad()
            out, (h, c) = compiled(x)
            (out.sum() + h.sum()).backward()
            got = [out.detach().clone(), x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
            m.zero_grad()
            xe = x.detach().requires_grad_()
            out_e, (h_e, c_e) = m(xe)
            (out_e.sum() + h_e.sum()).backward()
            want = [out_e.detach(), xe.grad] + [p.grad for p in m.parameters()]
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    tb.raise_barrier_timeouts("cuda")


# What `_Workspace.launched` is told of a launch: its shape (as `_shape` gives it) and plan.
_PLAN = tb.launch_plan(2, 7, 0, torch.float32, 1, 227 * 1024, training=True)
_LAUNCH = (("forward", 3, 2, 3, 7, 7, torch.float32), _PLAN)
_LAUNCH2 = (("forward", 9, 2, 3, 7, 7, torch.float32), _PLAN)


def _cuda_workspace_on_the_cpu(monkeypatch):
    """A `_Workspace` taking its CUDA branch (pinned copy, event) with CPU tensors
    and stand-ins for the CUDA calls; `Event.done` says whether the device has
    caught up with the copy."""
    import contextlib

    class Event:
        done = True

        def record(self, stream=None):
            pass

        def query(self):
            return Event.done

    real_zeros = torch.zeros
    # The stand-in workspaces must not outlive the test in the backend's registries.
    monkeypatch.setattr(tb_workspace, "_UNCHECKED", set())
    monkeypatch.setattr(tb_workspace, "_WORKSPACES", {})
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch, "zeros", lambda *a, pin_memory=False, **k: real_zeros(*a, **k))

    def make():
        ws = tb_workspace._Workspace(torch.device("cpu"))
        ws.on_cpu, ws.flag = False, None  # the CUDA branch
        return ws

    return make, Event


def test_workspace_first_used_under_inference_mode_serves_later_calls(monkeypatch):
    """Buffers made at a first call under torch.inference_mode() (evaluation, a
    serving warm-up) must not be inference tensors: the calls after it, outside
    inference mode, update them."""
    make, _ = _cuda_workspace_on_the_cpu(monkeypatch)
    with torch.inference_mode():
        ws = make()
        ws.launched(_LAUNCH)
    assert not ws.buf.is_inference() and not ws.host.is_inference()
    ws.check()
    ws.launched(_LAUNCH)  # copies the count into the pinned buffer again
    ws.check()
    from fastlstm.backends._common import DeferredError

    with torch.inference_mode():
        deferred = DeferredError(torch.device("cpu"), "range")
    deferred.flag(torch.tensor(False))
    deferred.check()


def test_raise_barrier_timeouts_sees_a_launch_behind_a_copy_in_flight(monkeypatch):
    """Launch 1 is fine and a copy of the sticky count follows it; launch 2,
    queued while that copy is in flight, times out. After waiting for the
    device, raise_barrier_timeouts must report it (it reads the count itself)."""
    make, Event = _cuda_workspace_on_the_cpu(monkeypatch)
    ws = make()
    tb_workspace._WORKSPACES[(torch.device("cpu"), -1)] = ws
    Event.done = False
    ws.launched(_LAUNCH)
    ws.buf[k_barrier._WS_STICKY.value] += 1  # layer 2's launch times out
    ws.launched(_LAUNCH2)
    Event.done = True  # the device has caught up
    with pytest.raises(RuntimeError, match=r"timed out \(.*forward, T=9"):  # among the launches it may be
        tb.raise_barrier_timeouts("cpu")
    tb.raise_barrier_timeouts("cpu")  # reported once


def test_the_host_reads_the_sticky_count_and_never_writes_it(monkeypatch):
    """Each timeout adds one to the count on the device; the host raises when it
    sees the count grow, and writes nothing back (a write from the host could
    wipe a timeout of a launch queued after the copy it read)."""
    monkeypatch.setattr(tb_workspace, "_UNCHECKED", set())
    ws = tb_workspace._Workspace(torch.device("cpu"))
    sticky = k_barrier._WS_STICKY.value
    ws.launched(_LAUNCH)
    ws.buf[sticky] += 1
    with pytest.raises(RuntimeError, match="timed out"):
        ws.check()
    assert int(ws.buf[sticky]) == 1
    ws.launched(_LAUNCH)
    ws.check()  # nothing new
    ws.buf[sticky] += 1
    ws.launched(_LAUNCH2)
    with pytest.raises(RuntimeError, match=r"timed out \(forward, T=9"):
        ws.check()
