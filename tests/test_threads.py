"""One module called from several threads at once gives each thread nn.LSTM's
answer, on every backend: the TorchScript one, the reference loop, and the
Triton kernels in the interpreter, plain and on a simulated H100 (whose
launches are serialised by fastlstm.backends.interpreter's lock, and whose
persistent grids run as turn-taking threads inside it). On a GPU the
workspaces are per stream (tests/test_gpu.py runs concurrent streams)."""
import copy
import threading

import pytest
import torch
from torch import nn

import fastlstm
from fastlstm.device import simulate
from helpers import TOLERANCES, triton_can_run_here

THREADS = 4


def _backends():
    names = ["jit", "reference"]
    if triton_can_run_here():
        names += ["triton", "triton-H100"]
    return names


def _in_threads(fn, n: int):
    """Run fn(i) for i < n in n threads released at once; their results by i."""
    start = threading.Barrier(n)
    results, errors = {}, []

    def work(i):
        try:
            start.wait()
            results[i] = fn(i)
        except BaseException as e:  # reported in the test's own thread
            errors.append((i, e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, f"threads raised: {errors}"
    return results


@pytest.mark.parametrize("backend", _backends())
def test_threads_get_nn_lstm_answers(backend):
    torch.manual_seed(0)
    ref = nn.LSTM(3, 24, num_layers=2, bidirectional=True).double()  # 3 programs on an H100
    name, _, gpu = backend.partition("-")
    dtype = torch.float32
    model = fastlstm.LSTM.from_torch(copy.deepcopy(ref), backend=name).to(dtype)
    xs = [torch.randn(3 + i, 2 + i, 3, dtype=torch.float64) for i in range(THREADS)]
    want = []
    for x in xs:
        xr = x.clone().requires_grad_(True)
        out, (h, c) = ref(xr)
        (dx,) = torch.autograd.grad(out.sum() + h.sum(), xr)
        want.append((out, h, c, dx))

    def call(i):
        x = xs[i].to(dtype).requires_grad_(True)
        results = []
        for _ in range(2):  # twice, so that calls of different threads interleave
            out, (h, c) = model(x)
            (dx,) = torch.autograd.grad(out.sum() + h.sum(), x)
            results.append((out, h, c, dx))
        return results

    with simulate(gpu or None):
        got = _in_threads(call, THREADS)
    atol, rtol = TOLERANCES[dtype]
    for i in range(THREADS):
        for results in got[i]:
            for what, a, b in zip(("out", "h_n", "c_n", "grad_input"), results, want[i]):
                torch.testing.assert_close(a.double(), b.detach(), atol=atol, rtol=rtol,
                                           msg=lambda m: f"{backend}, thread {i}: {what}: {m}")
