"""The functional entry point: layers, directions, projection and packing.

`lstm` takes the same arguments as `torch._VF.lstm` (the function behind
`torch.nn.LSTM.forward`) and composes them on top of one backend's layer
primitive (see `fastlstm.backends`): one layer, one direction, time-major.

- Layers run one after another; between them, in training mode, dropout is
  applied to the layer output exactly where and how `nn.LSTM` applies it (the
  same shape and the same random stream), so seeded runs match.
- The reverse direction runs the same primitive on the input reversed in time,
  each sequence within its own length, and reverses the output back.
- Packed input is unpacked once into a zero-padded, time-major tensor in the
  PackedSequence's sorted order; its `batch_sizes` tell the primitive which
  rows are live at each step.
"""
import functools
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ops
from ._dispatch import _cell_from_layer, check_backend_name, resolve_backend, resolve_cell_backend
from .backends._common import host_to_device, sequence_lengths
from .backends.reference import lstm_cell_reference, lstm_layer_reference


def lstm(
    input: Tensor,
    hx: Tuple[Tensor, Tensor],
    weights: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool = False,
    *,
    batch_sizes: Optional[Tensor] = None,
    backend: str = "auto",
) -> Tuple[Tensor, Tensor, Tensor]:
    """A multi-layer LSTM, with the arguments of `torch._VF.lstm`.

    Args:
        input: (T, B, I), or (B, T, I) with `batch_first`; with `batch_sizes`,
            the packed data (N, I) of a PackedSequence.
        hx: (h0, c0), of shapes (L*D, B, R) and (L*D, B, H); D = 2 if
            bidirectional, R = proj_size or H. With `batch_sizes`, B is the
            largest batch and rows are in the PackedSequence's sorted order.
        weights: per layer and direction, in `nn.LSTM._flat_weights` order:
            w_ih (4H, I), w_hh (4H, R), [b_ih (4H,), b_hh (4H,)], [w_hr (R, H)].
        batch_sizes: a PackedSequence's batch_sizes (CPU int64), or None.
        backend: "auto", "jit", "triton" or "reference".

    Returns:
        (output, h_n, c_n): output (T, B, D*R) (batch-first if asked; packed
        data (N, D*R) with `batch_sizes`), h_n (L*D, B, R), c_n (L*D, B, H).

    Example:
        >>> m = torch.nn.LSTM(3, 4)
        >>> out, h, c = lstm(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),) * 2,
        ...                  m._flat_weights, True, 1, 0.0, False, False)
    """
    num_directions = 2 if bidirectional else 1
    groups = _weight_groups(weights, has_biases, num_layers * num_directions)
    _check_lstm_args(input, hx, groups, num_directions, batch_sizes, batch_first)
    return _lstm(input, hx, groups, num_layers, dropout, train, bidirectional, batch_first, batch_sizes, backend)


def _lstm(input: Tensor, hx: Tuple[Tensor, Tensor], groups, num_layers: int, dropout: float, train: bool,
          bidirectional: bool, batch_first: bool, batch_sizes: Optional[Tensor], backend: str):
    """`lstm` on checked arguments, the weights split by `_weight_groups`:
    `fastlstm.LSTM` comes here directly, having checked its inputs as
    torch.nn does (its own weights have their shapes by construction)."""
    num_directions = 2 if bidirectional else 1
    h0, c0 = hx

    if batch_sizes is not None:
        batch_sizes = batch_sizes.to(device="cpu", dtype=torch.int64)
        live = _live_mask(batch_sizes, input.device)
        rows = _live_rows(batch_sizes, input.device)
        x = _unpack(input, live)
    else:
        live = None
        x = input.transpose(0, 1) if batch_first else input

    layer = _layer_for(backend, x)
    if x.shape[1] == 0:
        # An empty batch: nothing to fuse; the reference loop gets shapes and
        # (zero) gradients right for every backend.
        layer = lstm_layer_reference
    reverse_index = _reverse_index(batch_sizes, x.shape[0], x.shape[1], x.device) if bidirectional else None

    h_n: List[Tensor] = []
    c_n: List[Tensor] = []
    for k in range(num_layers):
        outputs = []
        for d in range(num_directions):
            idx = k * num_directions + d
            w_ih, w_hh, b_ih, b_hh, w_hr = groups[idx]
            if d == 0:
                out, h, c = layer(x, h0[idx], c0[idx], w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
            else:
                x_rev = _reverse(x, reverse_index)
                out, h, c = layer(x_rev, h0[idx], c0[idx], w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)
                out = _reverse(out, reverse_index)
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        x = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
        if dropout > 0 and train and k < num_layers - 1:
            # nn.LSTM drops on the packed data when the input is packed, so the
            # random stream lines up only if we do the same.
            if live is None:
                x = F.dropout(x, dropout, True)
            else:
                x = _unpack(F.dropout(_pack(x, rows), dropout, True), live)

    if live is not None:
        output = _pack(x, rows)
    else:
        output = x.transpose(0, 1) if batch_first else x
    if len(h_n) == 1:  # one layer, one direction: a view, no copy
        return output, h_n[0].unsqueeze(0), c_n[0].unsqueeze(0)
    return output, torch.stack(h_n), torch.stack(c_n)


def lstm_cell(
    input: Tensor,
    hx: Tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    *,
    backend: str = "auto",
) -> Tuple[Tensor, Tensor]:
    """One LSTM step, with the arguments of `torch.lstm_cell`.

    Shapes: input (B, I), hx = (h (B, H), c (B, H)), w_ih (4H, I), w_hh (4H, H),
    biases (4H,) or None. Returns (h', c'), each (B, H).

    Example:
        >>> cell = torch.nn.LSTMCell(3, 4)
        >>> h, c = lstm_cell(torch.randn(2, 3), (torch.zeros(2, 4),) * 2,
        ...                  cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    """
    groups = [(w_ih, w_hh, b_ih, b_hh, None)]
    _check_lstm_args(input.unsqueeze(0), _as_layers(hx), groups, 1, None, False, "lstm_cell")
    return _cell(input, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh, backend)


def _cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
          b_hh: Optional[Tensor], backend: str) -> Tuple[Tensor, Tensor]:
    """`lstm_cell` on arguments already checked (`LSTMCell.forward` checks its
    own, as torch.nn does): the backend's cell primitive, no sequence around it."""
    if x.shape[0] == 0:
        return lstm_cell_reference(x, h, c, w_ih, w_hh, b_ih, b_hh)  # an empty batch; see `lstm`
    if torch.compiler.is_compiling():
        return _cell_from_layer(_layer_for(backend, x), x, h, c, w_ih, w_hh, b_ih, b_hh)
    return resolve_cell_backend(backend, x)(x, h, c, w_ih, w_hh, b_ih, b_hh)


def _as_layers(hx):
    """(h, c) of shape (B, H) -> (1, B, H) each, for the shared checks."""
    if isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(t, Tensor) for t in hx):
        return tuple(t.unsqueeze(0) for t in hx)
    return hx


def _check_lstm_args(input, hx, groups, num_directions, batch_sizes, batch_first, who="lstm"):
    """Clear errors, naming the argument, for what `lstm`/`lstm_cell` cannot take.

    The modules check their inputs the way torch.nn does before they get here;
    these checks are for direct callers of the functional API, who would
    otherwise meet an IndexError or a message from deep inside a backend.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"{who}: input must be a Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{who}: input must be a floating point tensor, got {input.dtype}")
    want_dim = 2 if batch_sizes is not None else 3
    if input.dim() != want_dim:
        raise RuntimeError(f"{who}: input must have {want_dim} dimensions, got {input.dim()}")
    if batch_sizes is not None:
        T, B = len(batch_sizes), int(batch_sizes[0]) if len(batch_sizes) else 0
    elif batch_first:
        B, T = input.shape[0], input.shape[1]
    else:
        T, B = input.shape[0], input.shape[1]
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
        raise TypeError(f"{who}: hx must be a tuple (h_0, c_0) of two Tensors, got {type(hx).__name__}")
    w_hh0 = groups[0][1]
    H, R = w_hh0.shape[0] // 4, w_hh0.shape[1]
    L = len(groups)
    for name, t, size in (("h_0", hx[0], R), ("c_0", hx[1], H)):
        if tuple(t.shape) != (L, B, size):
            raise RuntimeError(f"{who}: expected {name} of shape {(L, B, size)}, got {tuple(t.shape)}")
    in_size = input.shape[-1]
    for n, (w_ih, w_hh, b_ih, b_hh, w_hr) in enumerate(groups):
        layer = n // num_directions
        expected = {
            "w_ih": (w_ih, (4 * H, in_size if layer == 0 else num_directions * R)),
            "w_hh": (w_hh, (4 * H, R)),
            "b_ih": (b_ih, (4 * H,)),
            "b_hh": (b_hh, (4 * H,)),
            "w_hr": (w_hr, (R, H)),
        }
        for name, (t, shape) in expected.items():
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"{who}: weight {name} of group {n} must be a Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                raise RuntimeError(
                    f"{who}: weight {name} of group {n} (layer {layer}) must have shape {shape}, "
                    f"got {tuple(t.shape)}"
                )
        if w_hr is None and R != H:
            raise RuntimeError(f"{who}: w_hh has {R} columns but hidden size is {H} and no w_hr was given")
    for name, t in [("h_0", hx[0]), ("c_0", hx[1])] + [
        (f"weight {k} of group {n}", w)
        for n, g in enumerate(groups)
        for k, w in zip(("w_ih", "w_hh", "b_ih", "b_hh", "w_hr"), g)
        if w is not None
    ]:
        if t.device != input.device:
            raise RuntimeError(f"{who}: {name} is on {t.device}, the input on {input.device}")
        if t.dtype != input.dtype:
            raise RuntimeError(f"{who}: {name} is {t.dtype}, the input {input.dtype}; they must match")


def _layer_for(backend: str, x: Tensor):
    """The layer primitive for `backend`; an opaque custom op while torch.compile traces."""
    if torch.compiler.is_compiling():
        if check_backend_name(backend) == "reference":
            return lstm_layer_reference
        return functools.partial(_ops.lstm_layer, backend)
    return resolve_backend(backend, x)


def _weight_groups(weights: Sequence[Tensor], has_biases: bool, count: int):
    """Split the flat weight list into (w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction."""
    weights = list(weights)
    if count <= 0 or len(weights) % count != 0:
        raise ValueError(
            f"weights: expected a multiple of {count} tensors (one group per layer and "
            f"direction), got {len(weights)}"
        )
    per = len(weights) // count
    expected = (4, 5) if has_biases else (2, 3)
    if per not in expected:
        raise ValueError(
            f"weights: expected {expected[0]} or {expected[1]} tensors per layer and "
            f"direction (has_biases={has_biases}), got {per}"
        )
    groups = []
    for n in range(count):
        g = weights[n * per:(n + 1) * per]
        w_ih, w_hh = g[0], g[1]
        b_ih, b_hh = (g[2], g[3]) if has_biases else (None, None)
        w_hr = g[-1] if per in (3, 5) else None
        groups.append((w_ih, w_hh, b_ih, b_hh, w_hr))
    return groups


def _live_mask(batch_sizes: Tensor, device: torch.device) -> Tensor:
    """(T, B) bool: row b is live at step t. Its True entries, read in row-major
    order, are the PackedSequence's data rows in order."""
    rows = torch.arange(int(batch_sizes[0]))
    return host_to_device(rows.unsqueeze(0) < batch_sizes.unsqueeze(1), device)


def _live_rows(batch_sizes: Tensor, device: torch.device) -> Tensor:
    """(N,) int64: the flat (t * B + b) indices of the live entries, in order: the
    PackedSequence's data rows. Found on the CPU from batch_sizes (which the
    host has), so packing back is a gather of known size: no read of the device
    (a boolean mask index would wait for it) and it works on meta tensors."""
    live = torch.arange(int(batch_sizes[0])).unsqueeze(0) < batch_sizes.unsqueeze(1)
    return host_to_device(live.flatten().nonzero().squeeze(1), device)


def _pack(x: Tensor, rows: Tensor) -> Tensor:
    """Zero-padded (T, B, F) -> packed data (N, F): the rows `_live_rows` names."""
    return x.reshape(-1, x.shape[-1]).index_select(0, rows)


def _unpack(data: Tensor, live: Tensor) -> Tensor:
    """Packed data (N, F) -> zero-padded (T, B, F), differentiably."""
    padded = data.new_zeros(live.shape[0], live.shape[1], data.shape[-1])
    return padded.masked_scatter(live.unsqueeze(-1), data)


def _reverse_index(batch_sizes: Optional[Tensor], T: int, B: int, device: torch.device) -> Optional[Tensor]:
    """Time index that reverses each sequence within its own length (None: plain flip)."""
    if batch_sizes is None:
        return None
    lengths = sequence_lengths(batch_sizes, B)
    t = torch.arange(T).unsqueeze(1)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # dead steps map to themselves
    return host_to_device(index, device)


def _reverse(x: Tensor, index: Optional[Tensor]) -> Tensor:
    if index is None:
        return x.flip(0)
    return x.gather(0, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
