"""Model conversion: fastlstm.convert, LSTM.from_torch / to_torch."""
import pytest
import torch
from torch import nn

import fastlstm


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LSTMCell(16, 5))])
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        out, _ = self.encoder(x)
        h, _ = self.blocks[0][0](out[:, -1])
        return self.head(h)


def test_convert_replaces_every_lstm_in_place_and_keeps_numbers():
    torch.manual_seed(0)
    model = Tagger().eval()
    x = torch.randn(3, 7, 6)
    want = model(x)
    weight = model.encoder.weight_ih_l0
    same = fastlstm.convert(model, backend="reference")
    assert same is model
    assert type(model.encoder) is fastlstm.LSTM and model.encoder.backend == "reference"
    assert type(model.blocks[0][0]) is fastlstm.LSTMCell
    assert model.encoder.weight_ih_l0 is weight, "parameters should be shared, not copied"
    assert model.encoder.dropout == 0.25 and model.encoder.batch_first and not model.encoder.training
    torch.testing.assert_close(model(x), want, atol=1e-6, rtol=1e-5)
    # Converting again changes nothing.
    encoder = model.encoder
    fastlstm.convert(model)
    assert model.encoder is encoder


def test_convert_a_bare_lstm_returns_the_replacement():
    m = nn.LSTM(3, 4, proj_size=2)
    new = fastlstm.convert(m)
    assert type(new) is fastlstm.LSTM and new.proj_size == 2 and new.weight_hr_l0 is m.weight_hr_l0


def test_round_trip_to_torch():
    torch.manual_seed(0)
    m = nn.LSTM(3, 4, num_layers=2, bias=False)
    fast = fastlstm.LSTM.from_torch(m, backend="reference")
    back = fast.to_torch()
    assert type(back) is nn.LSTM and back.bias is False and back.num_layers == 2
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(fast(x)[0], m(x)[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(back(x)[0], m(x)[0], atol=0, rtol=0)
    cell = fastlstm.LSTMCell.from_torch(nn.LSTMCell(3, 4))
    assert type(cell.to_torch()) is nn.LSTMCell


def test_conversion_refuses_the_wrong_module():
    with pytest.raises(TypeError, match="expected a torch.nn.LSTM, got GRU"):
        fastlstm.LSTM.from_torch(nn.GRU(3, 4))
    with pytest.raises(ValueError, match="unknown backend"):
        fastlstm.convert(nn.LSTM(3, 4), backend="cudnn")


def test_conversion_keeps_hooks():
    m = nn.Sequential(nn.LSTM(3, 4))
    seen = []
    handle = m[0].register_forward_hook(lambda mod, inp, out: seen.append(type(mod).__name__))
    fastlstm.convert(m)
    m(torch.randn(2, 1, 3))
    assert seen == ["LSTM"] and type(m[0]) is fastlstm.LSTM
    handle.remove()
    m(torch.randn(2, 1, 3))
    assert len(seen) == 1, "the old handle should remove the hook from the new module"
