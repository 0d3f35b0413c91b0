"""torch.compile: a model holding fastlstm.LSTM compiles and matches eager.

Dynamo refuses to trace any subclass of torch.nn.LSTM unless
`torch._dynamo.config.allow_rnn` is set; fastlstm.LSTM stays a subclass (so
`isinstance(m, nn.LSTM)` holds), so the default mode breaks the graph around
it and runs it eagerly, and `fullgraph=True` needs allow_rnn. With it, the
backends run as the custom ops in `fastlstm._ops`, with no graph break.
"""
import pytest
import torch
import torch._dynamo

import fastlstm
from helpers import INTERPRETED, triton_can_run_here

BACKENDS = ["jit", "reference"] + (["triton"] if INTERPRETED and triton_can_run_here() else [])


class Model(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.lstm = fastlstm.LSTM(5, 7, num_layers=2, bidirectional=True, backend=backend)
        self.head = torch.nn.Linear(14, 1)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.head(out).pow(2).mean() + c.sum()


def _run(model, x):
    model.zero_grad()
    loss = model(x)
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters()]


def _check(compiled, eager):
    names = ["loss"] + [n for n, _ in Model("reference").named_parameters()]
    for name, a, b in zip(names, compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Model(backend)
    x = torch.randn(4, 3, 5)
    eager = _run(model, x)
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        _check(_run(compiled, x), eager)


def test_default_mode_with_inductor_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Model("jit")
    x = torch.randn(4, 3, 5)
    eager = _run(model, x)
    compiled = torch.compile(model)
    _check(_run(compiled, x), eager)


def test_custom_op_passes_torch_opcheck():
    torch.manual_seed(0)
    x, h0, c0 = torch.randn(3, 2, 4), torch.randn(2, 5), torch.randn(2, 5)
    w_ih, w_hh, b = torch.randn(20, 4), torch.randn(20, 5), torch.randn(20)
    args = ("jit", x, h0, c0, w_ih, w_hh, b, b.clone(), None, None)
    args = tuple(a.requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(fastlstm._ops.lstm_layer, args)
