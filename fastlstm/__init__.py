"""fastlstm: a drop-in `torch.nn.LSTM` / `nn.LSTMCell` that computes the LSTM itself.

On CUDA it runs persistent Triton kernels: measured on an H200 (2026-12-04, commit
727ea1b; docs/gpu.md), 1.2-5.3x faster than cuDNN's standard path (bf16, fp32) at
batch 1-32 and hidden 256-1024, slower than cuDNN's persistent fp16 kernel and at
batch 64 and up. On the CPU it is a TorchScript fallback: 0.24-1.05x the speed of
nn.LSTM at hidden 256 (bench/results/).

    >>> import fastlstm, torch
    >>> lstm = fastlstm.LSTM(10, 20, num_layers=2)          # same arguments as nn.LSTM
    >>> out, (h, c) = lstm(torch.randn(5, 3, 10))
    >>> model = fastlstm.convert(torch.nn.Sequential(torch.nn.LSTM(10, 20)))  # in place
    >>> "jit" in fastlstm.available_backends()              # what backend= can be here
    True

Importing fastlstm probes no hardware and does not import Triton; the backend
is chosen in `forward` from the input's device (see `fastlstm._dispatch`).
"""
from . import functional
from ._dispatch import BACKENDS, available_backends
from .modules import LSTM, LSTMCell, convert

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMCell", "convert", "functional", "BACKENDS", "available_backends", "__version__"]
