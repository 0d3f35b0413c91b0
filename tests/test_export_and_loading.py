"""Export and loading, as users take a trained model out of Python or back
into it: TorchScript (script and trace, saved and loaded), torch.fx,
torch.export, ONNX (both exporters, run by onnxruntime), and torch.load of
whole models. Exported graphs carry torch's standard LSTM op, which is what
their consumers run; their numbers must be nn.LSTM's."""
import io
import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastlstm

I, H = 4, 6


class Net(nn.Module):
    """An LSTM inside a model, used the way models use it."""

    def __init__(self, cls=fastlstm.LSTM, cell_cls=fastlstm.LSTMCell):
        super().__init__()
        self.lstm = cls(I, H, num_layers=2)
        self.cell = cell_cls(H, H)
        self.fc = nn.Linear(H, 2)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        h1, _ = self.cell(out[-1], (h[-1], c[-1]))
        return self.fc(out) + h1.sum()


class PackedNet(nn.Module):
    def __init__(self, cls=fastlstm.LSTM):
        super().__init__()
        self.lstm = cls(I, H, bidirectional=True)

    def forward(self, x: PackedSequence):
        out, (h, c) = self.lstm(x)
        return out.data, h


def _nets():
    torch.manual_seed(0)
    ours = Net()
    theirs = Net(nn.LSTM, nn.LSTMCell)
    theirs.load_state_dict(ours.state_dict())
    return ours.eval(), theirs.eval()


def _x():
    return torch.randn(5, 3, I)


def _ops(graph) -> list:
    """The aten ops a TorchScript graph runs, in order."""
    return re.findall(r"aten::[a-z_0-9]+", str(graph))


def test_script_emits_torchs_op_and_matches():
    ours, theirs = _nets()
    x = _x()
    scripted = torch.jit.script(ours)
    ops = _ops(scripted.inlined_graph)
    assert "aten::lstm" in ops and "aten::lstm_cell" in ops, ops
    assert ops == _ops(torch.jit.script(theirs).inlined_graph)
    torch.testing.assert_close(scripted(x), theirs(x))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.jit.load(buf)(x), theirs(x))


def test_script_takes_packed_input():
    torch.manual_seed(0)
    ours, theirs = PackedNet(), PackedNet(nn.LSTM)
    theirs.load_state_dict(ours.state_dict())
    packed = pack_padded_sequence(torch.randn(5, 3, I), torch.tensor([5, 3, 2]))
    for got, want in zip(torch.jit.script(ours)(packed), theirs(packed)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_trace_emits_torchs_op_passes_its_check_and_saves(grad):
    ours, theirs = _nets()
    x = _x()
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(ours, (x,))  # check_trace=True: reruns and compares
        reference = torch.jit.trace(theirs, (x,))
    ops = _ops(traced.inlined_graph)
    # the tracer records torch's LSTM op, and LSTMCell as what lstm_cell decomposes into
    assert "aten::lstm" in ops and ops == _ops(reference.inlined_graph), ops
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.jit.load(buf)(x), theirs(x))


def test_fx_keeps_the_lstm_as_a_leaf():
    ours, theirs = _nets()
    x = _x()
    traced = torch.fx.symbolic_trace(ours)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert calls == ["lstm", "cell", "fc"], calls
    torch.testing.assert_close(traced(x), theirs(x))
    # the graph module runs fastlstm's own modules
    assert isinstance(traced.lstm, fastlstm.LSTM)


def test_fx_refuses_the_lstm_as_root_clearly():
    with pytest.raises(RuntimeError, match="cannot trace a fastlstm.LSTM as the root module"):
        torch.fx.symbolic_trace(fastlstm.LSTM(I, H))


def test_torch_export_emits_torchs_op():
    ours, theirs = _nets()
    x = _x()
    exported = torch.export.export(ours, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "aten.lstm.input" in targets and not any("fastlstm" in t for t in targets), targets
    torch.testing.assert_close(exported.module()(x), theirs(x))


def test_compile_still_runs_fastlstm():
    """Only export swaps in torch's op: torch.compile keeps fastlstm's backend."""
    ours, theirs = _nets()
    x = _x()
    seen = []
    real = fastlstm.functional._lstm  # what the module calls, its inputs checked

    def spy(*args, **kwargs):
        seen.append(args[-1])  # the backend
        return real(*args, **kwargs)

    fastlstm.functional._lstm = spy
    try:
        torch.testing.assert_close(torch.compile(ours, backend="eager")(x), theirs(x))
    finally:
        fastlstm.functional._lstm = real
    assert seen, "torch.compile did not run fastlstm"


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_onnx_export_runs_in_onnxruntime(dynamo, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is in the 'export' extra")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the 'export' extra")
    if dynamo:
        pytest.importorskip("onnxscript", reason="onnxscript is in the 'export' extra")
    ours, theirs = _nets()
    x = _x()
    path = tmp_path / "model.onnx"
    if dynamo:
        torch.onnx.export(ours, (x,), dynamo=True).save(str(path))
    else:
        torch.onnx.export(ours, (x,), str(path), dynamo=False)
    model = onnx.load(str(path))
    assert "LSTM" in {n.op_type for n in model.graph.node}
    session = ort.InferenceSession(str(path))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), theirs(x).detach(), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------


def _roundtrip(obj, **load_kwargs):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, **load_kwargs)


@pytest.mark.parametrize("make", [lambda: fastlstm.LSTM(I, H, proj_size=2, backend="jit"),
                                  lambda: fastlstm.LSTMCell(I, H, backend="reference")], ids=["LSTM", "LSTMCell"])
def test_whole_module_loads_with_weights_only(make):
    m = make()
    loaded = _roundtrip(m)  # torch's default: weights_only=True
    assert type(loaded) is type(m) and loaded.backend == m.backend
    x = torch.randn(3, I)
    torch.testing.assert_close(loaded(x), m(x))


def test_model_holding_fastlstm_loads_once_torchs_own_classes_are_allowed():
    ours, _ = _nets()
    allowed = [Net, nn.Linear]
    with torch.serialization.safe_globals(allowed):
        loaded = _roundtrip(ours)
    x = _x()
    torch.testing.assert_close(loaded(x), ours(x))


def test_an_nn_lstm_pickle_loaded_into_fastlstm_has_a_backend():
    """A stock nn.LSTM's state, unpickled into fastlstm's class (no __init__
    runs): it must still work, with the default backend."""
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H)
    ours = fastlstm.LSTM.__new__(fastlstm.LSTM)
    ours.__setstate__(theirs.__getstate__())
    assert ours.backend == "auto"
    x = _x()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-6, rtol=1e-5)
