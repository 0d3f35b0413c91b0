"""fastlstm: a faster, drop-in `torch.nn.LSTM`.

    >>> import fastlstm, torch
    >>> lstm = fastlstm.LSTM(10, 20, num_layers=2)          # same arguments as nn.LSTM
    >>> out, (h, c) = lstm(torch.randn(5, 3, 10))

Importing fastlstm probes no hardware and does not import Triton; the backend
is chosen in `forward` from the input's device (see `fastlstm._dispatch`).
"""
from . import functional
from ._dispatch import BACKENDS, available_backends
from .modules import LSTM, LSTMCell, convert

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMCell", "convert", "functional", "BACKENDS", "available_backends", "__version__"]
