"""What a newcomer meets first: plain `fastlstm`, `available_backends()`, tracing an
LSTMCell, where the profile's sizes write, and `convert` on subclasses."""
import copy
import inspect
import io
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import fastlstm
from fastlstm.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


# --- plain `fastlstm` -----------------------------------------------------------------

def test_plain_fastlstm_prints_its_help_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "fastlstm"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: fastlstm"), proc.stdout
    for text in ("profile", "demo", "drop-in torch.nn.LSTM", "Without a command, fastlstm prints this help"):
        assert text in proc.stdout, f"{text!r} not in the help:\n{proc.stdout}"
    assert proc.stderr == ""


def test_fastlstm_demo_alone_prints_the_demos(capsys):
    assert _main(["demo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastlstm demo") and all(name in out for name in ("sincos", "charlm", "toy")), out


def test_an_unknown_command_is_still_an_error(capsys):
    assert _main(["bogus"]) == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


# --- the one-line descriptions say where fastlstm is faster and where it is not ------------

def test_descriptions_say_where_it_is_faster_and_where_it_is_the_fallback():
    from fastlstm.cli import DESCRIPTION

    with open(os.path.join(REPO, "pyproject.toml")) as f:
        pyproject = next(line for line in f if line.startswith("description = "))
    with open(os.path.join(REPO, "README.md")) as f:
        opening = f.read().split("\n## ")[0]
    for where, text in [("fastlstm --help", DESCRIPTION), ("pyproject.toml", pyproject),
                        ("fastlstm.__doc__", fastlstm.__doc__), ("README's opening", opening)]:
        flat = " ".join(text.split())
        assert "faster drop-in" not in flat, where
        for needle in ("H200", "cuDNN", "fp16", "CPU", "fallback", "1.05x"):
            assert needle in flat, f"{where}: {needle!r} not said: {flat}"


# --- available_backends -------------------------------------------------------------------

def test_available_backends_needs_no_argument(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert fastlstm.available_backends() == ["auto", "jit", "reference"]
    assert fastlstm.available_backends("cpu") == ["auto", "jit", "reference"]
    assert fastlstm.available_backends(torch.device("cpu")) == ["auto", "jit", "reference"]
    assert fastlstm.available_backends(torch.zeros(1)) == ["auto", "jit", "reference"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's interpreter runs CPU tensors
    assert fastlstm.available_backends() == ["auto", "jit", "triton", "reference"]
    assert "available_backends" in fastlstm.__all__
    assert inspect.signature(fastlstm.available_backends).parameters["x"].default is None
    doc = fastlstm.available_backends.__doc__
    assert "backend=" in doc and "None" in doc


def test_every_backend_listed_runs():
    x = torch.randn(3, 2, 4)
    for name in fastlstm.available_backends():
        lstm = fastlstm.LSTM(4, 5, backend=name)
        torch.testing.assert_close(lstm(x)[0], lstm.to_torch()(x)[0], atol=1e-5, rtol=1e-4)


def test_available_backends_asks_cuda_only_when_called(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: asked.append(1) or False)
    fastlstm.available_backends("cpu")
    assert asked == []
    fastlstm.available_backends()
    assert asked == [1]


# --- tracing an LSTMCell ----------------------------------------------------------------------

def _tracer_warnings(module, args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(module, args)
    return traced, [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no_hx"])
def test_tracing_an_lstm_cell_warns_no_more_than_torchs(with_state):
    torch.manual_seed(0)
    ours = fastlstm.LSTMCell(4, 5)
    theirs = nn.LSTMCell(4, 5)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4)
    args = (x, (torch.randn(3, 5), torch.randn(3, 5))) if with_state else (x,)
    traced, ours_warned = _tracer_warnings(ours, args)
    reference, theirs_warned = _tracer_warnings(theirs, args)
    assert len(ours_warned) <= len(theirs_warned), [str(w.message)[:80] + f" ({w.filename}:{w.lineno})"
                                                    for w in ours_warned]
    kinds = [n.kind() for n in traced.inlined_graph.nodes()]
    # torch's lstm_cell decomposes when traced: the graph is nn.LSTMCell's, op for op
    assert kinds == [n.kind() for n in reference.inlined_graph.nodes()], kinds
    other = torch.randn(6, 4)  # another batch size: nothing about the shape was baked in
    other_args = (other, (torch.randn(6, 5), torch.randn(6, 5))) if with_state else (other,)
    for inputs in (args, other_args):
        for got, want in zip(traced(*inputs), theirs(*inputs)):
            torch.testing.assert_close(got, want, atol=0, rtol=0)


# --- where the profile's sizes write --------------------------------------------------------

TINY = ["--seq-lens", "2", "--hidden", "4", "--input", "3", "--batch", "2", "--repeats", "1", "--backends", "torch",
        "--no-memory", "--mode", "infer"]


@pytest.mark.parametrize("size, folder", [(None, "profile-out"), ("--quick", "profile-out-quick"),
                                          ("--full", "profile-out-full")])
def test_each_size_of_profile_writes_to_its_own_folder(size, folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["profile", *([size] if size else []), *TINY]
    assert _main(argv) == 0, capsys.readouterr()
    assert sorted(os.listdir(tmp_path)) == [folder]
    rows = json.loads((tmp_path / folder / "profile.json").read_text())
    assert rows and all(r["seq_len"] == 2 for r in rows)
    assert f"writing to {folder}/" in capsys.readouterr().out
    # --out still wins
    assert _main([*argv, "--out", "mine"]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted([folder, "mine"])


def test_profile_help_says_where_each_size_writes(capsys):
    with pytest.raises(SystemExit):
        main(["profile", "-h"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "profile-out-quick/" in flat and "profile-out-full/" in flat and "overwritten" in flat


def test_gitignore_covers_the_default_folders():
    with open(os.path.join(REPO, ".gitignore")) as f:
        ignored = f.read().split()
    from fastlstm.profile.cli import DEFAULT_OUTS

    for folder in DEFAULT_OUTS.values():
        assert f"/{folder}/" in ignored, folder


# --- convert on subclasses -----------------------------------------------------------------

class DoubledLSTM(nn.LSTM):
    """A user's subclass that overrides forward and calls super()."""

    calls = 0

    def forward(self, x, hx=None):
        DoubledLSTM.calls += 1
        out, state = super().forward(x, hx)
        return 2 * out, state

    def extra(self):
        return "mine"


class ScaledCell(nn.LSTMCell):
    def forward(self, x, hx=None):
        h, c = super().forward(x, hx)
        return 3 * h, c


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = DoubledLSTM(3, 4, num_layers=2)
        self.cell = ScaledCell(4, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.cell(out[-1])[0]


def test_convert_turns_a_subclass_into_one_that_keeps_its_behaviour(monkeypatch):
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(5, 2, 3)
    want = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model.rnn.weight_ih_l0
    fastlstm.convert(model, backend="reference")
    for m, user_cls, ours in ((model.rnn, DoubledLSTM, fastlstm.LSTM), (model.cell, ScaledCell, fastlstm.LSTMCell)):
        assert isinstance(m, user_cls) and isinstance(m, ours), type(m).__mro__
        assert type(m).__mro__[1:3] == (user_cls, ours), type(m).__mro__
        assert m.backend == "reference" and type(m).__name__ == user_cls.__name__
    assert model.rnn.extra() == "mine" and model.rnn.weight_ih_l0 is weight
    assert model.state_dict().keys() == state.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    # The user's forward runs, and its super().forward reaches fastlstm's backend.
    seen = []
    import fastlstm.functional as functional

    # The module's entry into the layers (past its argument checks).
    real = functional._lstm
    monkeypatch.setattr(functional, "_lstm", lambda *a, **k: seen.append(a[-1]) or real(*a, **k))
    before = DoubledLSTM.calls
    got = model(x)
    assert DoubledLSTM.calls == before + 1 and seen == ["reference"]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # Two instances share one converted class; converting again changes nothing.
    other = fastlstm.convert(DoubledLSTM(3, 4))
    assert type(other) is type(model.rnn)
    cls = type(model.rnn)
    fastlstm.convert(model)
    assert type(model.rnn) is cls and model.rnn.backend == "reference"


def test_a_converted_subclass_pickles_and_copies():
    model = fastlstm.convert(nn.Sequential(DoubledLSTM(3, 4)))
    x = torch.randn(2, 1, 3)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded[0]) is type(model[0]) and isinstance(loaded[0], fastlstm.LSTM)
    torch.testing.assert_close(loaded(x), model(x))
    copied = copy.deepcopy(model)
    assert type(copied[0]) is type(model[0])
    torch.testing.assert_close(copied(x), model(x))


def test_a_parametrized_subclass_converts_and_keeps_its_parametrization():
    from torch.nn.utils import parametrize

    class Half(nn.Module):
        def forward(self, w):
            return w / 2

    m = DoubledLSTM(3, 4)
    parametrize.register_parametrization(m, "weight_hh_l0", Half())
    x = torch.randn(2, 1, 3)
    want = m(x)[0]
    fastlstm.convert(m)
    assert isinstance(m, DoubledLSTM) and isinstance(m, fastlstm.LSTM) and parametrize.is_parametrized(m)
    torch.testing.assert_close(m(x)[0], want, atol=1e-6, rtol=1e-5)
    parametrize.remove_parametrizations(m, "weight_hh_l0")
    assert isinstance(m, DoubledLSTM) and isinstance(m, fastlstm.LSTM)


def test_a_subclass_that_cannot_be_combined_is_named_in_a_warning():
    class Final(nn.LSTM):
        def __init_subclass__(cls, **kwargs):
            raise TypeError("Final is not meant to be subclassed")

    model = nn.Sequential(nn.LSTM(3, 4), Final(3, 4))
    with pytest.warns(UserWarning, match=r"left 1 \(.*Final\) as it is.*Final is not meant to be subclassed"):
        fastlstm.convert(model)
    assert type(model[0]) is fastlstm.LSTM and type(model[1]) is Final


# --- a long demo shows its progress ----------------------------------------------------------

def test_charlm_shows_progress_like_the_profile(capsys):
    from fastlstm import demos

    lines = []
    text = demos.stdlib_corpus(1000)
    demos.charlm(text=text, epochs=3, hidden=8, batch=4, steps=10, timing_rounds=1, sample_chars=5,
                 backend="reference", log=lines.append, show_progress=True)
    epochs = [line for line in lines if line.startswith("epoch")]
    assert len(epochs) == 3, lines
    for line in epochs:
        # "epoch   2  perplexity ...  tokens/s  | 0:01 elapsed, about 0:02 left"
        assert "| " in line and " elapsed, about " in line and line.endswith(" left"), line
    # Not a terminal here: no bar; plain lines only while an epoch runs (at least 10 s
    # apart), none repeating an epoch's end, which its own line carries.
    printed = capsys.readouterr().out.splitlines()
    assert all(line.startswith("[") and " epochs] " in line and ": done" not in line for line in printed), printed


def test_the_demo_command_turns_progress_on(monkeypatch):
    from fastlstm import demos

    seen = {}
    monkeypatch.setattr(demos, "charlm", lambda **kwargs: seen.update(kwargs))
    assert _main(["demo", "charlm", "--quick"]) == 0
    assert seen["show_progress"] is True
