"""The backends a profile times: their names, when they can run, and the modules
that compute an nn.LSTM's layer with each of them on its own weights."""
import os
from typing import List, Optional

import torch
from torch import Tensor, nn

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


def unavailable_reason(name: str, lstm: nn.LSTM, device: torch.device) -> Optional[str]:
    """Why backend `name` cannot be timed for `lstm` on `device`, or None when it can.

    Triton on the CPU runs only under the interpreter, which is orders of
    magnitude too slow to time, so it counts as unavailable there.
    """
    if name not in KNOWN_BACKENDS:
        return f"unknown backend {name!r}; expected one of {', '.join(KNOWN_BACKENDS)}"
    if name in ONE_LAYER_BACKENDS and (lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size):
        return "this baseline covers one layer, one direction only"
    if name == "triton":
        if device.type != "cuda":
            return "Triton runs on the CPU only under the interpreter, far too slow to time"
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return "TRITON_INTERPRET=1: the interpreter is far too slow to time"
        if "triton" not in available_backends(torch.empty(0, device=device)):
            return "Triton cannot run here (see fastlstm.available_backends)"
    if name == "flashrnn":
        if device.type != "cuda":
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


def triton_plan(lstm: nn.LSTM, batch: int, mode: str) -> Optional[str]:
    """The Triton backend's launch plans (forward, and backward in training) for
    every layer of `lstm` at this batch size, or None off CUDA."""
    w = lstm.weight_hh_l0
    if w.device.type != "cuda":
        return None
    from .backends.triton import plans_for

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
    """"auto" is CUDA when a GPU is there, else the CPU. Raises ValueError, with a
    one-line message, for a device that is not known or not here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {device!r}: unknown device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device here (torch {torch.__version__}, "
                             "torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    return dev


def default_backends(device: torch.device) -> List[str]:
    """fastlstm's backends that run at speed on `device`, then the baselines.

    The "reference" backend (a plain loop, the tests' oracle) is left out; name
    it in `backends` to time it.
    """
    lstm = nn.LSTM(1, 1, device="meta")
    return [b for b in ("jit", "triton") + BASELINES if unavailable_reason(b, lstm, device) is None]
