"""The programs people learn LSTMs from, run with fastlstm in place of torch.nn."""
import pytest
import torch

import fastlstm

BACKENDS = ["jit", "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_layer_last_output_is_last_hidden(backend):
    # The PyTorch docs' example: the top layer's last output is h_n of that layer.
    lstm = fastlstm.LSTM(100, 20, num_layers=4, backend=backend)
    out, (h_n, c_n) = lstm(torch.randn(10, 3, 100))
    assert out.shape == (10, 3, 20) and h_n.shape == (4, 3, 20) and c_n.shape == (4, 3, 20)
    assert torch.equal(out[-1], h_n[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_stacked_cells_in_a_loop(backend):
    ours = [fastlstm.LSTMCell(100, 30, backend=backend), fastlstm.LSTMCell(30, 20, backend=backend)]
    theirs = [torch.nn.LSTMCell(100, 30), torch.nn.LSTMCell(30, 20)]
    for a, b in zip(ours, theirs):
        a.load_state_dict(b.state_dict())
    x = torch.randn(6, 3, 100)

    def unroll(cells):
        states = [None, None]
        outputs = []
        for x_t in x:
            inp = x_t
            for k, cell in enumerate(cells):
                states[k] = cell(inp, states[k])
                inp = states[k][0]
            outputs.append(inp)
        return torch.stack(outputs)

    got, want = unroll(ours), unroll(theirs)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    got.sum().backward()
    want.sum().backward()
    for (name, p), q in zip(ours[0].named_parameters(), theirs[0].parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=2e-5, rtol=1e-4, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_first_model_with_initial_states(backend):
    class Model(torch.nn.Module):
        def __init__(self, lstm_cls, **kw):
            super().__init__()
            self.lstm = lstm_cls(8, 16, num_layers=2, batch_first=True, **kw)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x, state):
            out, state = self.lstm(x, state)
            return self.head(out[:, -1]), state

    torch.manual_seed(1)
    theirs = Model(torch.nn.LSTM)
    ours = Model(fastlstm.LSTM, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 9, 8)
    state = (torch.randn(2, 4, 16), torch.randn(2, 4, 16))
    (y1, (h1, c1)), (y2, (h2, c2)) = ours(x, state), theirs(x, state)
    for name, a, b in (("y", y1, y2), ("h_n", h1, h2), ("c_n", c1, c2)):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_state_dicts_load_both_ways():
    kw = dict(num_layers=2, bidirectional=True, proj_size=3)
    theirs = torch.nn.LSTM(5, 7, **kw)
    ours = fastlstm.LSTM(5, 7, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    cell = fastlstm.LSTMCell(5, 7, bias=False)
    torch.nn.LSTMCell(5, 7, bias=False).load_state_dict(cell.state_dict(), strict=True)
    assert isinstance(ours, torch.nn.LSTM) and isinstance(cell, torch.nn.LSTMCell)


def test_initialisation_matches_torch():
    torch.manual_seed(3)
    theirs = torch.nn.LSTM(5, 7, num_layers=2)
    torch.manual_seed(3)
    ours = fastlstm.LSTM(5, 7, num_layers=2)
    for (n, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), n
