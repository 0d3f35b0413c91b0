"""The backends a profile times: their names, when they can run, and the modules
that compute an nn.LSTM's layer with each of them on its own weights."""
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import device as _device
from .._dispatch import available_backends
from ..baselines import ScriptedCellLSTM, TutorialLSTM
from ..modules import LSTM

# fastlstm's own backends that a profile can time ("auto" only picks one of these).
FASTLSTM_BACKENDS = ("jit", "triton", "reference")
# What fastlstm is compared with. "flashrnn" (NX-AI's PyPI package) runs only on CUDA.
BASELINES = ("torch", "tutorial", "scripted", "flashrnn")
KNOWN_BACKENDS = FASTLSTM_BACKENDS + BASELINES
# Python loops with many small ops per step: capped by `slow_max_seq_len`.
SLOW_BACKENDS = ("tutorial", "reference")
# Baselines written for one layer, one direction.
ONE_LAYER_BACKENDS = ("tutorial", "scripted", "flashrnn")

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _flashrnn_importable() -> bool:
    try:
        import flashrnn  # noqa: F401
    except Exception:  # any failure to import means "not available here"
        return False
    return True


def unavailable_reason(name: str, lstm: nn.LSTM, device: torch.device, packed: bool = False) -> Optional[str]:
    """Why backend `name` cannot be timed for `lstm` on `device` (on packed input
    with `packed`), or None when it can.

    Triton on the CPU runs only under the interpreter, which is orders of
    magnitude too slow to time, so it counts as unavailable there, except on
    a simulated GPU (fastlstm.device), whose point is to run the GPU's paths:
    its times are the interpreter's.
    """
    if name not in KNOWN_BACKENDS:
        return f"unknown backend {name!r}; expected one of {', '.join(KNOWN_BACKENDS)}"
    if name in ONE_LAYER_BACKENDS and (lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size):
        return "this baseline covers one layer, one direction only"
    if name in ONE_LAYER_BACKENDS and packed:
        return "this baseline takes no packed input"
    gpu = _device.gpu(device)
    if name == "triton":
        if gpu is None:
            return "Triton runs on the CPU only under the interpreter, far too slow to time"
        if os.environ.get("TRITON_INTERPRET", "0") == "1" and not gpu.simulated:
            return "TRITON_INTERPRET=1: the interpreter is far too slow to time"
        if "triton" not in available_backends(torch.empty(0, device=device)):
            return "Triton cannot run here (see fastlstm.available_backends)"
    if name == "flashrnn":
        if gpu is None or gpu.simulated:
            return "FlashRNN needs a CUDA GPU"
        if not _flashrnn_importable():
            return "the 'flashrnn' package does not import"
    return None


class _FlashRNNLSTM(nn.Module):
    """NX-AI's FlashRNN ("lstm", fused CUDA kernel) on an nn.LSTM's weights.

    FlashRNN takes the input projection Wx (B, T, G, heads, D), the recurrent
    matrix R (G, heads, D, D_prev) and one bias (G, heads, D); its gate order
    (i, f, z, o) is torch's. One head of size H is an nn.LSTM of hidden H.
    """

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.lstm = lstm

    def forward(self, x: Tensor, hx=None):
        from flashrnn import flashrnn

        m = self.lstm
        T, B, _ = x.shape
        H = m.hidden_size
        wx = nn.functional.linear(x, m.weight_ih_l0).transpose(0, 1).reshape(B, T, 4, 1, H)
        r = m.weight_hh_l0.view(4, 1, H, H)
        b = (m.bias_ih_l0 + m.bias_hh_l0).view(4, 1, H)
        dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[x.dtype]
        states, last = flashrnn(wx, r, b, function="lstm", backend="cuda_fused", dtype=dtype)
        # states (S, B, T, heads, H) with S = (h, c); last (S, B, 1, heads, H)
        out = states[0, :, :, 0].transpose(0, 1)
        return out, (last[0, :, 0, 0].unsqueeze(0), last[1, :, 0, 0].unsqueeze(0))


# cuDNN's RNN algorithms as PyTorch picks them (`cudnn_algo`).
CUDNN_ALGOS = ("standard", "persistent", "persistent-small-h")


def cudnn_algo(dtype: torch.dtype, input_size: int, hidden_size: int, batch: int, layers: int = 1,
               bidirectional: bool = False, proj_size: int = 0, packed: bool = False,
               capability: Tuple[int, int] = (9, 0), sm_count: int = 132, forward: bool = True,
               seq_len: int = 1024) -> str:
    """The cuDNN algorithm nn.LSTM runs on CUDA for this shape, by PyTorch's rule
    (`get_algo` in aten/src/ATen/native/cudnn/RNN.cpp, torch 2.x; pure: no device
    access): "persistent-small-h", "persistent" or "standard".

    - A projection, packed input or float64: standard.
    - Small hidden sizes (H <= 192 forward, <= 128 backward), on compute
      capability 6 or newer: the small-H persistent kernel.
    - float16 only, one layer, one direction, H <= 1024, H and I multiples of
      128, and a device rule: on capability 8.x/9.x with at least 98 SMs (not
      x.6) B % 8 == 0 and B <= 128; on 7.0/7.2 (not 7.5) B a multiple of 16
      other than 80 and 112, or 8, with B <= 32 (T >= 10), 96 (T >= 20) or 128
      (T >= 40): the persistent kernel.
    - Everything else (bf16 and float32 at any size included): standard.

    `forward` False gives the backward's choice (the small-H bound differs).

    Example:
        >>> cudnn_algo(torch.float16, 768, 768, 16), cudnn_algo(torch.bfloat16, 768, 768, 16)
        ('persistent', 'standard')
    """
    if proj_size or packed or dtype == torch.float64:
        return "standard"
    major, minor = capability
    if major >= 6 and hidden_size <= (192 if forward else 128):
        return "persistent-small-h"
    if dtype != torch.float16:
        return "standard"
    common = (layers == 1 and not bidirectional and hidden_size <= 1024 and hidden_size % 128 == 0
              and input_size % 128 == 0)
    if major == 7:
        device_ok = minor != 5 and ((batch % 16 == 0 and batch not in (80, 112)) or batch == 8) and (
            (seq_len >= 40 and batch <= 128) or (seq_len >= 20 and batch <= 96) or (seq_len >= 10 and batch <= 32))
    else:
        device_ok = major >= 8 and sm_count >= 98 and minor != 6 and batch % 8 == 0 and batch <= 128
    return "persistent" if common and device_ok else "standard"


def cudnn_algo_for(lstm: nn.LSTM, batch: int, seq_len: int, mode: str, packed: bool = False) -> Optional[str]:
    """`cudnn_algo` for an nn.LSTM on its GPU (CUDA, or simulated): the forward's choice,
    and in training "forward / backward" where they differ; None off a GPU or without cuDNN."""
    w = lstm.weight_hh_l0
    gpu = _device.gpu(w.device)
    if gpu is None or not gpu.cudnn_enabled():
        return None
    props = gpu.properties
    args = (w.dtype, lstm.input_size, lstm.hidden_size, batch, lstm.num_layers, lstm.bidirectional,
            lstm.proj_size, packed, props.capability, props.sm_count)
    fwd = cudnn_algo(*args, seq_len=seq_len)
    bwd = cudnn_algo(*args, forward=False, seq_len=seq_len) if mode == "train" else fwd
    return fwd if fwd == bwd else f"{fwd} / {bwd}"


def triton_plan(lstm: nn.LSTM, batch: int, mode: str) -> Optional[str]:
    """The Triton backend's launch plans (forward, and backward in training) for
    every layer of `lstm` at this batch size, or None off a GPU (CUDA, or simulated)."""
    w = lstm.weight_hh_l0
    if _device.gpu(w.device) is None:
        return None
    from ..backends.triton import plans_for

    x = torch.empty(1, batch, 1, dtype=w.dtype, device=w.device)
    plans = plans_for(x, lstm.hidden_size, lstm.proj_size, training=mode == "train")
    return "; ".join(str(p) for p in plans if p is not None)


def build_model(name: str, lstm: nn.LSTM) -> nn.Module:
    """A module computing `lstm` with backend `name`, on `lstm`'s weights.

    fastlstm backends and "scripted" share `lstm`'s parameters; "tutorial"
    copies them into per-gate matrices; "torch" is `lstm` itself.

    Example:
        >>> ref = nn.LSTM(4, 8)
        >>> build_model("jit", ref).weight_hh_l0 is ref.weight_hh_l0
        True
    """
    if name == "torch":
        return lstm
    if name in FASTLSTM_BACKENDS:
        return LSTM.from_torch(lstm, backend=name)
    if name == "tutorial":
        return TutorialLSTM.from_lstm(lstm)
    if name == "scripted":
        return ScriptedCellLSTM.from_lstm(lstm)
    if name == "flashrnn":
        return _FlashRNNLSTM(lstm)
    raise ValueError(f"build_model: unknown backend {name!r}; expected one of {', '.join(KNOWN_BACKENDS)}")


def resolve_device(device: str) -> torch.device:
    """"auto" is CUDA when a GPU is there, else the CPU (see `fastlstm.device.resolve`,
    which also maps "cuda" to the CPU a simulated GPU stands on). Raises
    ValueError, with a one-line message, for a device that is not known or not here."""
    return _device.resolve(device)


def default_backends(device: torch.device) -> List[str]:
    """fastlstm's backends that run at speed on `device`, then the baselines.

    The "reference" backend (a plain loop, the tests' oracle) is left out; name
    it in `backends` to time it.
    """
    lstm = nn.LSTM(1, 1, device="meta")
    return [b for b in ("jit", "triton") + BASELINES if unavailable_reason(b, lstm, device) is None]
