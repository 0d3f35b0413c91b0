"""The jit backend's LSTMCell path (fastlstm/backends/jit_cell.py).

`fastlstm.LSTMCell` runs one step through `lstm_cell_jit`, not the sequence
machinery with T = 1. These tests pin what that path promises: it is
TorchScript with a hand-written backward, it reads the parameters' current
values at every call (however they were edited), it matches nn.LSTMCell
where only some tensors need gradients, and the module's fast path hands
anything unusual to the full path, which raises torch's errors.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import parametrize

import fastlstm
from fastlstm.backends import jit_cell

I, H = 5, 7


def _pair(bias=True, dtype=torch.float64, I=I, H=H):
    theirs = torch.nn.LSTMCell(I, H, bias=bias).to(dtype)
    ours = fastlstm.LSTMCell.from_torch(theirs, backend="jit")
    return ours, theirs


def _inputs(B=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, generator=g, dtype=dtype) for n in (I, H, H)]


def test_cell_functions_are_script_functions_and_are_the_path_taken(monkeypatch):
    fwd, bwd = jit_cell._scripted()
    assert isinstance(fwd, torch.jit.ScriptFunction), type(fwd)
    assert isinstance(bwd, torch.jit.ScriptFunction), type(bwd)
    assert jit_cell._scripted() == (fwd, bwd), "scripting must happen once"
    calls = {"forward": 0, "backward": 0}

    def counted(name, fn):
        def run(*args):
            calls[name] += 1
            return fn(*args)
        return run

    monkeypatch.setattr(jit_cell._scripted, "functions", (counted("forward", fwd), counted("backward", bwd)))
    ours, _ = _pair()
    x, h, c = (t.requires_grad_() for t in _inputs())
    h1, c1 = ours(x, (h, c))
    assert type(h1.grad_fn).__name__ == "LSTMCellJitFunctionBackward", type(h1.grad_fn)
    (h1.sum() + c1.sum()).backward()
    with torch.no_grad():
        ours(x, (h, c))
    assert calls == {"forward": 2, "backward": 1}, calls


def test_no_grad_and_inference_mode_save_nothing():
    ours, theirs = _pair()
    x, h, c = _inputs()
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            got, want = ours(x, (h, c)), theirs(x, (h, c))
        assert got[0].grad_fn is None and got[1].grad_fn is None
        for name, a, b in zip(("h", "c"), got, want):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=lambda m: f"{ctx.__name__} {name}: {m}")


@settings(max_examples=30)
@given(
    B=st.sampled_from([1, 3, 7]), I_=st.sampled_from([1, 6]), H_=st.sampled_from([1, 4, 13]), bias=st.booleans(),
    grads=st.sampled_from(["all", "weights", "input", "state", "none"]),
    use_c=st.booleans(), seed=st.integers(0, 2**16),
)
def test_cell_gradients_match_torch_for_any_subset(B, I_, H_, bias, grads, use_c, seed):
    """float64 against nn.LSTMCell: only the tensors that require grad get one,
    and the loss may ignore c' (its gradient then arrives as None/zeros)."""
    theirs = torch.nn.LSTMCell(I_, H_, bias=bias).double()
    ours = fastlstm.LSTMCell.from_torch(theirs, backend="jit")
    g = torch.Generator().manual_seed(seed)
    x0, h0, c0, gh, gc = [torch.randn(B, n, generator=g, dtype=torch.float64) for n in (I_, H_, H_, H_, H_)]

    def go(m):
        m.zero_grad()
        for p in m.parameters():
            p.requires_grad_(grads in ("all", "weights"))
        x = x0.clone().requires_grad_(grads in ("all", "input"))
        h, c = (t.clone().requires_grad_(grads in ("all", "state")) for t in (h0, c0))
        h1, c1 = m(x, (h, c))
        loss = (h1 * gh).sum() + ((c1 * gc).sum() if use_c else 0)
        result = {"h": h1.detach(), "c": c1.detach()}
        if loss.requires_grad:
            loss.backward()
        for name, t in [("x", x), ("h0", h), ("c0", c)] + list(m.named_parameters()):
            result[f"grad_{name}"] = t.grad
        return result

    got, want = go(ours), go(theirs)
    for name in want:
        if want[name] is None:
            assert got[name] is None, f"{name}: got a gradient where nn.LSTMCell has none"
            continue
        assert got[name] is not None, f"{name}: missing"
        torch.testing.assert_close(got[name], want[name], atol=1e-12, rtol=1e-12,
                                   msg=lambda m: f"{grads}, use_c={use_c}: {name}: {m}")


def _edits():
    """Ways users change a cell's weights between calls; each returns a description."""
    def data_copy(m):
        m.weight_hh.data.copy_(torch.randn_like(m.weight_hh))
    def data_inplace(m):
        m.bias_ih.data[H:2 * H].fill_(1.0)  # the forget-gate initialisation tutorials use
    def data_assign(m):
        m.weight_ih.data = torch.randn_like(m.weight_ih)
    def copy_no_grad(m):
        with torch.no_grad():
            m.weight_hh.copy_(m.weight_hh * 0.5)
    def load_state(m):
        m.load_state_dict({k: v * 1.5 for k, v in m.state_dict().items()})
    return [data_copy, data_inplace, data_assign, copy_no_grad, load_state]


@pytest.mark.parametrize("edit", _edits(), ids=lambda f: f.__name__)
def test_every_call_reads_the_current_weights(edit):
    ours, _ = _pair()
    x, h, c = _inputs()
    ours(x, (h, c))  # a first call, so anything cached would be stale after the edit
    edit(ours)
    want = ours.to_torch()(x, (h, c))  # shares the edited parameters
    got = ours(x, (h, c))
    for name, a, b in zip(("h", "c"), got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=lambda m: f"{edit.__name__}: {name}: {m}")


def test_optimizer_steps_between_calls_match_torch():
    theirs = torch.nn.LSTMCell(I, H).double()
    ours = fastlstm.LSTMCell(I, H, backend="jit").double()
    ours.load_state_dict(theirs.state_dict())  # own copies: each optimizer steps its own
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.3)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.3)
    x, h, c = _inputs()
    for step in range(3):
        for m, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            h1, c1 = m(x, (h, c))
            (h1.pow(2).sum() + c1.sum()).backward()
            opt.step()
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=lambda m: f"step {step}: {name}: {m}")


def test_reparametrised_cell_takes_the_full_path():
    """parametrize moves weight_hh out of _parameters; the cell must read the
    parametrised value, not skip it."""
    class Scale(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w

    theirs = torch.nn.LSTMCell(I, H).double()
    ours = fastlstm.LSTMCell(I, H, backend="jit").double()
    ours.load_state_dict(theirs.state_dict())  # own copies: only ours is parametrised
    parametrize.register_parametrization(ours, "weight_hh", Scale())
    with torch.no_grad():
        theirs.weight_hh.mul_(0.5)
    x, h, c = _inputs()
    for name, a, b in zip(("h", "c"), ours(x, (h, c)), theirs(x, (h, c))):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=lambda m: f"{name}: {m}")


def test_fast_path_leaves_errors_to_the_full_path():
    ours = fastlstm.LSTMCell(I, H)  # float32
    x, h, c = _inputs(dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"input dtype \(torch.float64\) does not match weight dtype"):
        ours(x, (h, c))
    x, h, c = _inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not the same dtype"):
        ours(x, (h, c.double()))
    with pytest.raises(RuntimeError, match="Input batch size 3 doesn't match hidden1 batch size 1"):
        ours(x, (h, c[:1]))  # would broadcast inside the step
