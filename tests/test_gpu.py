"""fastlstm on a CUDA GPU as users meet it: CUDA autocast and torch.compile.

Native only (FASTLSTM_TEST_NATIVE=1 on a machine with a CUDA GPU): under the
interpreter these are skipped, with the reason, since neither CUDA autocast
nor a CUDA compile can run there (their CPU counterparts are in
test_dtypes.py and test_compile.py). The shapes are those of
test_triton_backend.py's fixed cases (B=3, odd H), so their Triton kernels
are compiled once for both files.
"""
import os

import pytest
import torch
import torch._dynamo

import fastlstm
from fastlstm.precision import answer_tolerance

NATIVE = os.environ.get("FASTLSTM_TEST_NATIVE", "0") == "1"
pytestmark = [
    pytest.mark.skipif(not NATIVE, reason="a native GPU test: CUDA autocast and compile cannot run under the "
                                          "Triton interpreter (run with FASTLSTM_TEST_NATIVE=1 on a CUDA machine)"),
    pytest.mark.skipif(NATIVE and not torch.cuda.is_available(), reason="FASTLSTM_TEST_NATIVE=1 without a CUDA GPU"),
]


def _assert_close(got, want, dtype, what, backend):
    atol, rtol = answer_tolerance(dtype, "cuda", backend, check="module")
    torch.testing.assert_close(got.detach().double().cpu(), want.detach().double().cpu(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("backend", ["triton", "jit"])
def test_cuda_autocast_runs_the_dtype_nn_lstm_runs(backend, dtype):
    """Under torch.autocast("cuda"), fastlstm.LSTM computes in the dtype nn.LSTM
    computes in there, returns the same dtypes, and its float32 weights get
    float32 gradients, as nn.LSTM's do."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(4, 13).cuda()
    ours = fastlstm.LSTM.from_torch(ref, backend=backend)
    x = torch.randn(4, 3, 4, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        want, (wh, wc) = ref(x)
        got, (h, c) = ours(x)
    assert (got.dtype, h.dtype, c.dtype) == (want.dtype, wh.dtype, wc.dtype), "not nn.LSTM's output dtypes"
    assert got.dtype == dtype, f"nn.LSTM ran in {got.dtype} under {dtype} autocast"
    # Both against float64 on the dtype-rounded weights and input: what autocast computes.
    exact = torch.nn.LSTM(4, 13).double().cuda()
    exact.load_state_dict({k: v.to(dtype).double() for k, v in ref.state_dict().items()})
    eout, (eh, ec) = exact(x.to(dtype).double())
    for name, a, b in (("out", got, eout), ("h_n", h, eh), ("c_n", c, ec)):
        _assert_close(a, b, dtype, f"{backend} {name}", backend)
    got.float().sum().backward()
    want.float().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.dtype == q.grad.dtype == torch.float32, f"grad_{name}: {p.grad}"


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fastlstm.LSTM(5, 7, num_layers=2, bidirectional=True, backend="triton")
        self.head = torch.nn.Linear(14, 1)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.head(out).pow(2).mean() + c.sum()


def test_a_model_holding_fastlstm_compiles_fullgraph_on_cuda():
    """torch.compile(fullgraph=True) (Inductor) of a model holding a 2-layer
    bidirectional fastlstm.LSTM on its Triton kernels: one graph, no break
    (allow_rnn lets Dynamo trace an nn.LSTM subclass), and the loss and every
    gradient as in eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Model().cuda()
    x = torch.randn(4, 3, 5, device="cuda")

    def run(m):
        model.zero_grad()
        loss = m(x)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    eager = run(model)
    with torch._dynamo.config.patch(allow_rnn=True):
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, f"graph breaks: {explained.break_reasons}"
        compiled = run(torch.compile(model, fullgraph=True))
    names = ["loss"] + [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, compiled, eager):
        _assert_close(a, b, torch.float32, f"compiled {name}", "triton")


def test_concurrent_streams_keep_their_own_workspaces():
    """Two threads, each on a CUDA stream of its own, run persistent layers at
    once (the streams may overlap on the GPU): each stream's launches use that
    stream's workspace (barrier counter and flags), so each gets the answer a
    lone call gets, and no barrier times out. One workspace shared by the two
    streams would let one grid's arrivals count for the other's barrier."""
    import threading

    from fastlstm.backends.triton import raise_barrier_timeouts, workspace

    torch.manual_seed(0)
    ref = torch.nn.LSTM(16, 64).cuda()
    ours = fastlstm.LSTM.from_torch(ref, backend="triton")
    xs = [torch.randn(256, 8, 16, device="cuda") for _ in range(2)]
    with torch.no_grad():
        alone = [ours(x)[0] for x in xs]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream() for _ in xs]
    got, errors = [None, None], []
    start = threading.Barrier(2)

    def work(i):
        try:
            with torch.cuda.stream(streams[i]), torch.no_grad():
                start.wait()
                outs = [ours(xs[i])[0] for _ in range(10)]
            streams[i].synchronize()
            got[i] = outs
        except Exception as e:  # reported in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    raise_barrier_timeouts("cuda")
    keys = {key for key in workspace._WORKSPACES if key[0].type == "cuda"}
    ids = {s.cuda_stream for s in streams}
    assert ids <= {key[2] for key in keys}, f"the streams' workspaces: {keys}"
    for i in range(2):
        for out in got[i]:
            torch.testing.assert_close(out, alone[i], rtol=0, atol=0)
