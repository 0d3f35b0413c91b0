"""Meta tensors and FakeTensorMode: shapes and dtypes without data, as nn.LSTM
gives them (model initialisation on the meta device, shape inference).

Every backend choice gives nn.LSTM's output shapes and dtypes, forward and
backward, for the LSTM (plain, two bidirectional layers, projection,
batch_first, packed on meta) and the LSTMCell. Packed input is tested on meta
only: under FakeTensorMode `pack_padded_sequence` itself has no fake kernel
(it fails for nn.LSTM too). Triton runs under the interpreter here
(tests/conftest.py); on meta and fake tensors nothing is launched at all.
"""
import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import pack_padded_sequence

import fastlstm

BACKENDS = ("auto", "jit", "reference", "triton")
CONFIGS = {
    "plain": {},
    "bidirectional-2": dict(bidirectional=True, num_layers=2),
    "proj": dict(proj_size=3),
    "batch_first": dict(batch_first=True),
    "packed": {},
}
T, B, I, H = 4, 3, 6, 5


def _where(where: str):
    """(context, device): the meta device, or a FakeTensorMode on the CPU."""
    if where == "meta":
        return contextlib.nullcontext(), "meta"
    return FakeTensorMode(), "cpu"


def _run(cls, kwargs, where, dtype, packed):
    context, device = _where(where)
    with context:
        m = cls(I, H, **kwargs, device=device, dtype=dtype)
        x = torch.randn(T, B, I, device=device, dtype=dtype, requires_grad=True)
        inp = pack_padded_sequence(x, torch.tensor([4, 3, 1])) if packed else x
        out, (h, c) = m(inp)
        data = out.data if packed else out
        (data.sum() + h.sum() + c.sum()).backward()
        grads = [x.grad] + [p.grad for p in m.parameters()]
    return [data, h, c], grads


def _describe(tensors, where):
    kind = torch.device("meta") if where == "meta" else torch.device("cpu")
    for t in tensors:
        assert t.device == kind, f"{t.device} instead of {kind}"
    return [(tuple(t.shape), t.dtype) for t in tensors]


@pytest.mark.parametrize("config, where", [(c, w) for c in CONFIGS for w in ("meta", "fake")
                                           if (c, w) != ("packed", "fake")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_shapes_and_dtypes_like_nn_lstm(backend, config, where):
    packed = config == "packed"
    dtype = torch.bfloat16 if config == "proj" else torch.float32
    want, want_grads = _run(torch.nn.LSTM, CONFIGS[config], where, dtype, packed)
    got, got_grads = _run(lambda *a, **k: fastlstm.LSTM(*a, **k, backend=backend), CONFIGS[config], where, dtype,
                          packed)
    assert _describe(got, where) == _describe(want, where)
    assert _describe(got_grads, where) == _describe(want_grads, where)


@pytest.mark.parametrize("where", ["meta", "fake"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_cell_shapes_and_dtypes_like_nn_lstm_cell(backend, where):
    results = []
    for cls in (torch.nn.LSTMCell, lambda *a, **k: fastlstm.LSTMCell(*a, **k, backend=backend)):
        context, device = _where(where)
        with context:
            m = cls(I, H, device=device)
            x = torch.randn(B, I, device=device, requires_grad=True)
            h, c = m(x)
            (h.sum() + c.sum()).backward()
            results.append(_describe([h, c, x.grad] + [p.grad for p in m.parameters()], where))
    assert results[0] == results[1]
