"""`fastlstm.LSTM` and `fastlstm.LSTMCell`: drop-ins for the torch.nn modules.

Both subclass their torch.nn counterparts, so constructor arguments, defaults,
parameter names, shapes, registration order, initialisation, `state_dict`s
and `isinstance` checks are exactly torch's. Only `forward` differs: it runs
a fastlstm backend instead of torch's LSTM kernels.
"""
import contextlib
import functools
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from . import functional
from ._dispatch import check_backend_name


class LSTM(nn.LSTM):
    """A drop-in for `torch.nn.LSTM`, computed by a fastlstm backend.

    Takes the arguments of `torch.nn.LSTM` plus the keyword `backend`:
    "auto" (Triton for CUDA tensors when it can run, else "jit"), "jit"
    (TorchScript, the CPU default), "triton" or "reference" (a plain loop).
    float64 on CUDA runs on "jit" under "auto".

    Shapes: input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a
    PackedSequence; hx = (h_0 (L*D, B, R), c_0 (L*D, B, H)), optional.
    Returns output (T, B, D*R) and (h_n, c_n), as `torch.nn.LSTM` does.

    Example:
        >>> lstm = LSTM(10, 20, num_layers=2)
        >>> out, (h, c) = lstm(torch.randn(5, 3, 10))
        >>> out.shape, h.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    # A class-level default, so instances unpickled from a torch.nn.LSTM
    # checkpoint (which never ran __init__) have one.
    backend = "auto"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ) -> None:
        self.backend = check_backend_name(backend)
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            proj_size=proj_size,
            device=device,
            dtype=dtype,
        )

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    @classmethod
    def from_torch(cls, module: nn.LSTM, backend: str = "auto") -> "LSTM":
        """A fastlstm.LSTM with `module`'s settings, and its very parameters (shared, not copied).

        Example:
            >>> fast = LSTM.from_torch(torch.nn.LSTM(10, 20, batch_first=True))
        """
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"from_torch: expected a torch.nn.LSTM, got {type(module).__name__}")
        return _rebuild(cls, module, _lstm_settings(module), backend=backend)

    def to_torch(self) -> nn.LSTM:
        """A plain torch.nn.LSTM with this module's settings and parameters (shared)."""
        return _rebuild(nn.LSTM, self, _lstm_settings(self))

    def __prepare_scriptable__(self) -> nn.LSTM:
        # torch.jit.script(model) scripts this: the standard aten::lstm op,
        # which is what TorchScript consumers run.
        return self.to_torch()

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None):
        if _fx_tracing(input, hx):
            return _fx_leaf(self, input, hx)
        if _exporting():
            # Traced, exported or sent to ONNX: leave torch's own op in the graph.
            return super().forward(input, hx)
        self._update_flat_weights()  # as nn.LSTM: the parameters of this call (functional_call)
        packed = isinstance(input, PackedSequence)
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        is_batched = True
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch = int(batch_sizes[0])
            x = data
        else:
            if not isinstance(input, Tensor):
                raise TypeError(
                    f"LSTM: expected input to be a Tensor or a PackedSequence, got {type(input).__name__}"
                )
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batch_sizes = sorted_indices = unsorted_indices = None
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            x = input if is_batched else input.unsqueeze(batch_dim)
            max_batch = x.size(batch_dim)

        if hx is None:
            shape = (self.num_layers * num_directions, max_batch)
            hx = (
                torch.zeros(*shape, real_hidden_size, dtype=x.dtype, device=x.device),
                torch.zeros(*shape, self.hidden_size, dtype=x.dtype, device=x.device),
            )
        else:
            _check_hx_pair(hx, "LSTM")
            if not packed:
                want = 3 if is_batched else 2
                if hx[0].dim() != want or hx[1].dim() != want:
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    raise RuntimeError(
                        f"For {kind} input, hx and cx should also be {want}-D but got "
                        f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        self.check_forward_args(x, hx, batch_sizes)
        weights = self._flat_weights  # refreshed by _update_flat_weights, as nn.LSTM reads them
        x, hx, weights, autocast_off = _autocast_inputs(x, hx, weights, packed=packed)
        _check_devices_and_dtypes(x, hx, weights[0])
        if x.size(1 if (self.batch_first and not packed) else 0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        hx = self.permute_hidden(hx, sorted_indices)

        with autocast_off:
            output, h_n, c_n = functional._lstm(
                x,
                hx,
                functional._weight_groups(weights, self.bias, self.num_layers * num_directions),
                self.num_layers,
                float(self.dropout),
                self.training,
                self.bidirectional,
                self.batch_first,
                batch_sizes,
                self.backend,
            )
        if packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden((h_n, c_n), unsorted_indices)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)


class LSTMCell(nn.LSTMCell):
    """A drop-in for `torch.nn.LSTMCell`, computed by a fastlstm backend.

    Shapes: input (B, I) or (I,) unbatched; hx = (h (B, H), c (B, H)), optional.
    Returns (h', c') of the same batchedness.

    Example:
        >>> cell = LSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))
        >>> h.shape
        torch.Size([3, 20])
    """

    backend = "auto"  # as for LSTM

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ) -> None:
        self.backend = check_backend_name(backend)
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    @classmethod
    def from_torch(cls, module: nn.LSTMCell, backend: str = "auto") -> "LSTMCell":
        """A fastlstm.LSTMCell with `module`'s settings and parameters (shared, not copied)."""
        if not isinstance(module, nn.LSTMCell):
            raise TypeError(f"from_torch: expected a torch.nn.LSTMCell, got {type(module).__name__}")
        return _rebuild(cls, module, _cell_settings(module), backend=backend)

    def to_torch(self) -> nn.LSTMCell:
        """A plain torch.nn.LSTMCell with this module's settings and parameters (shared)."""
        return _rebuild(nn.LSTMCell, self, _cell_settings(self))

    def __prepare_scriptable__(self) -> nn.LSTMCell:
        return self.to_torch()  # see LSTM.__prepare_scriptable__

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None):
        weights = _fast_cell_weights(self, input, hx)
        if weights is not None:
            # A cell stepped from Python pays this every step: the checks that
            # keep answers right (shapes, c's dtype, no autocast) in a few
            # attribute reads. What they do not cover (devices, the weights'
            # dtype) fails inside the step, whatever the backend raises, and is
            # diagnosed by the full path below, which raises torch's error.
            try:
                return functional._cell(input, hx[0], hx[1], *weights, self.backend)
            except Exception:  # noqa: BLE001 - rediagnosed (or raised again) below
                pass
        if _fx_tracing(input, hx):
            return _fx_leaf(self, input, hx)
        if _exporting():
            return super().forward(input, hx)
        if not isinstance(input, Tensor):
            raise TypeError(f"LSTMCell: expected input to be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            _check_hx_pair(hx, "LSTMCell")
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead"
                    )
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        for idx, value in enumerate(hx):
            if value.dim() != x.dim():
                kind = "batched 2-D" if is_batched else "unbatched 1-D"
                raise RuntimeError(
                    f"LSTMCell: for {kind} input, hx[{idx}] should also be "
                    f"{'2-D' if is_batched else '1-D'}, got {value.dim() - (0 if is_batched else 1)}-D"
                )
        weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        x, hx, weights, autocast_off = _autocast_inputs(x, hx, weights, cell=True)
        if x.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected {self.input_size}")
        for idx, value in enumerate(hx):
            if value.size(0) != x.size(0):
                raise RuntimeError(
                    f"Input batch size {x.size(0)} doesn't match hidden{idx} batch size {value.size(0)}"
                )
            if value.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden{idx} has inconsistent hidden_size: got {value.size(1)}, expected {self.hidden_size}"
                )
        _check_devices_and_dtypes(x, hx, weights[0])
        with autocast_off:
            h, c = functional._cell(x, hx[0], hx[1], *weights, self.backend)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


def _fast_cell_weights(cell: "LSTMCell", input, hx) -> Optional[tuple]:
    """The cell's (w_ih, w_hh, b_ih, b_hh) when an LSTMCell call is the common
    case the fast path takes, else None. The common case: batched plain
    tensors, (h, c) given with the right shapes, c in the input's dtype, no
    autocast, tracing, export or compile, and parameters held as such (not
    reparametrised, pruned or weight-normed, which the full path reads through
    the module's attributes). Device mismatches and a bad weight dtype are
    left to the step itself, which raises on them."""
    if type(input) is not Tensor or type(hx) is not tuple or len(hx) != 2:
        return None
    # Before any shape test: under torch.jit.trace sizes are traced values, and
    # comparing them would warn (TracerWarning) and bake the shapes into the graph.
    if torch._C._get_tracing_state() is not None:
        return None
    h, c = hx
    if type(h) is not Tensor or type(c) is not Tensor or input.dim() != 2:
        return None
    B, I = input.shape
    H = cell.hidden_size
    if not (I == cell.input_size and h.shape == (B, H) and c.shape == (B, H) and c.dtype == input.dtype
            and input.is_floating_point() and not torch._C._is_any_autocast_enabled()
            and not torch.compiler.is_compiling()):
        return None
    # `_parameters` directly: nn.Module.__getattr__ costs ~0.8 us a name.
    params = cell._parameters
    try:
        return params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"]
    except KeyError:
        return None


def _exporting() -> bool:
    """Whether this call is being recorded for export: torch.jit.trace (and the
    TorchScript ONNX exporter), or torch.export (and the dynamo ONNX exporter)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.6
    return torch.jit.is_tracing() or (is_exporting is not None and is_exporting())


def _fx_tracing(input, hx) -> bool:
    return isinstance(input, torch.fx.Proxy) or (
        isinstance(hx, (tuple, list)) and any(isinstance(t, torch.fx.Proxy) for t in hx))


def _fx_leaf(module: nn.Module, input, hx):
    """Under torch.fx.symbolic_trace, record the module as one call, the way
    FX keeps torch.nn's own modules (a leaf), instead of tracing its insides."""
    proxy = input if isinstance(input, torch.fx.Proxy) else next(t for t in hx if isinstance(t, torch.fx.Proxy))
    tracer = proxy.tracer
    path = tracer.path_of_module(module)
    if not path:
        raise RuntimeError(
            f"torch.fx cannot trace a fastlstm.{type(module).__name__} as the root module (nor can it "
            f"torch.nn's); trace a model that holds it, where it stays one call_module node"
        )
    args = (input,) if hx is None else (input, hx)
    return tracer.create_proxy("call_module", path, args, {})


def _autocast_inputs(x: Tensor, hx, weights, cell: bool = False, packed: bool = False):
    """Under autocast, run in the autocast dtype, as torch.nn.LSTM does.

    float32 inputs, states and weights are cast once (differentiably, so fp32
    master weights get their gradients; other dtypes are left alone, as
    autocast does); the backend then runs with autocast off and keeps its own
    fp32 state and accumulation. Returns a context that turns autocast off (a
    no-op context when autocast is not on).

    Deliberate details: torch's CPU autocast leaves `lstm_cell` and the
    packed-input LSTM alone, so LSTMCell and packed input on the CPU stay in
    float32 as torch's modules do; on CUDA,
    nn.LSTM under autocast always runs cuDNN in float16, where fastlstm uses
    the autocast dtype (bfloat16 when asked for).
    """
    device_type = x.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return x, hx, weights, contextlib.nullcontext()
    off = torch.autocast(device_type, enabled=False)
    if (cell or packed) and device_type == "cpu":
        return x, hx, weights, off
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        return t.to(dtype) if t is not None and t.dtype == torch.float32 else t

    return cast(x), tuple(cast(t) for t in hx), [cast(w) for w in weights], off


def _check_hx_pair(hx, who: str) -> None:
    if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
        got = type(hx).__name__
        if isinstance(hx, (tuple, list)):
            got = f"{got} of {len(hx)} " + ", ".join(type(t).__name__ for t in hx)
        raise TypeError(f"{who}: hx must be a tuple (h_0, c_0) of two Tensors, got {got}")


def _check_devices_and_dtypes(x: Tensor, hx: Tuple[Tensor, Tensor], weight: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"LSTM input must be a floating point tensor, got {x.dtype}")
    if x.dtype != weight.dtype:
        # Reached when autocast is on for another device type only, or from
        # LSTMCell (torch's own message there comes from deep in a matmul).
        raise RuntimeError(
            f"input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert input: input.to({weight.dtype}), or convert model: model.to({x.dtype})"
        )
    if x.device != weight.device:
        raise RuntimeError(
            "Input and parameter tensors are not at the same device, found input tensor at "
            f"{x.device} and parameter tensor at {weight.device}"
        )
    for name, t in zip(("h_0", "c_0"), hx):
        if t.device != x.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{x.device} and hidden tensor ({name}) at {t.device}"
            )
        if t.dtype != x.dtype:
            raise RuntimeError(
                "Input and hidden tensors are not the same dtype, found input tensor with "
                f"{x.dtype} and hidden tensor ({name}) with {t.dtype}"
            )


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Turn every torch.nn.LSTM and nn.LSTMCell in `model` into fastlstm's, in place.

    Recursive. Each module keeps its identity: its class becomes fastlstm's,
    so its parameters, settings, train/eval mode, hooks and any
    reparametrisation (pruning, weight_norm, spectral_norm, torch.nn.utils
    .parametrize) carry on working. A module that is already a fastlstm one is
    left as it is. Returns `model`.

    `backend` is set on every converted module, as `fastlstm.LSTM(...,
    backend=...)` would: "auto" (the default: Triton for CUDA tensors when it
    can run, else "jit"), "jit", "triton" or "reference"; see
    `fastlstm.available_backends()`.

    A subclass of nn.LSTM / nn.LSTMCell (`class MyLSTM(nn.LSTM)`) is converted
    too: its class becomes one deriving from both the user's class and
    fastlstm's (in that order), so methods it overrides still run, its
    `super().forward(...)` reaches fastlstm's forward, `isinstance(m, MyLSTM)`
    holds and its `state_dict` is unchanged. One whose class cannot be
    combined with fastlstm's is left alone, with a warning naming it and why.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.LSTM(10, 20))
        >>> convert(model)[0]
        LSTM(10, 20)
    """
    check_backend_name(backend)
    for name, module in model.named_modules():
        _swap(module, backend, name or type(model).__name__)
    return model


def _swap(module: nn.Module, backend: str, where: str) -> None:
    if isinstance(module, (LSTM, LSTMCell)) or not isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return
    cls = type(module)
    try:
        module.__class__ = _fast_class(cls, parametrize.is_parametrized(module))
    except TypeError as e:  # a class Python cannot combine with ours (layout, metaclass, MRO, __init_subclass__)
        warnings.warn(
            f"fastlstm.convert: left {where} ({cls.__module__}.{cls.__qualname__}) as it is, running torch's "
            f"LSTM: its class cannot be combined with fastlstm's ({e})", stacklevel=3)
        return
    module.backend = backend


def _fast_class(cls: type, parametrized: bool) -> type:
    """fastlstm's counterpart of `cls`, a torch.nn.LSTM or nn.LSTMCell class or a subclass."""
    if cls is nn.LSTM:
        return LSTM
    if cls is nn.LSTMCell:
        return LSTMCell
    if parametrized:
        # torch.nn.utils.parametrize gave the module a class of its own over the
        # module's original class (one base); convert that base, then rebuild it.
        (base,) = cls.__bases__
        return _parametrized_class(cls, _fast_class(base, False))
    return _converted_subclass(cls, LSTM if issubclass(cls, nn.LSTM) else LSTMCell)


def _parametrized_class(cls: type, ours: type) -> type:
    """torch.nn.utils.parametrize gives a parametrized module a class of its
    own, a subclass of the module's class holding one property per
    parametrized tensor. The same class over fastlstm's, so that removing the
    parametrisation later leaves a fastlstm module."""
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    return type(cls.__name__, (ours,), namespace)


@functools.lru_cache(maxsize=None)
def _converted_subclass(user_cls: type, ours: type) -> type:
    """A class deriving from the user's subclass of nn.LSTM (nn.LSTMCell) and
    from fastlstm's: its MRO is [it, user_cls, ..., ours, nn.LSTM, ...], so the
    user's overrides come first and their super() calls reach fastlstm's
    forward. One class per (user_cls, ours), so converted modules share it.
    Pickling goes through `_new_converted`, since the class itself is not
    importable by name (so `torch.load` of such a whole model needs
    weights_only=False; its state_dict loads as before)."""
    namespace = {
        "__module__": user_cls.__module__,
        "__qualname__": user_cls.__qualname__,
        "__doc__": user_cls.__doc__,
        "__reduce_ex__": lambda self, protocol: (_new_converted, (user_cls, ours), self.__getstate__()),
    }
    return type(user_cls.__name__, (user_cls, ours), namespace)


def _new_converted(user_cls: type, ours: type) -> nn.Module:
    """An empty instance of `_converted_subclass(user_cls, ours)` (unpickling, deepcopy)."""
    if not (isinstance(user_cls, type) and issubclass(user_cls, (nn.LSTM, nn.LSTMCell)) and ours in (LSTM, LSTMCell)):
        raise TypeError(f"_new_converted: expected a torch.nn.LSTM/LSTMCell subclass and fastlstm's class, got "
                        f"{user_cls!r}, {ours!r}")
    cls = _converted_subclass(user_cls, ours)
    return cls.__new__(cls)


def _lstm_settings(m: nn.LSTM) -> dict:
    return dict(
        input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers, bias=m.bias,
        batch_first=m.batch_first, dropout=float(m.dropout), bidirectional=m.bidirectional,
        proj_size=m.proj_size,
    )


def _cell_settings(m: nn.LSTMCell) -> dict:
    return dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)


def _rebuild(cls, old: nn.Module, settings: dict, **extra) -> nn.Module:
    """Build `cls` on the meta device (no init cost), then adopt `old`'s parameters."""
    new = cls(**settings, device="meta", **extra)
    for name, _ in list(new.named_parameters(recurse=False)):
        value = getattr(old, name)
        if not isinstance(value, nn.Parameter):
            raise TypeError(
                f"{cls.__name__}: {type(old).__name__}.{name} is computed from other tensors (pruning, "
                f"weight_norm, spectral_norm or a parametrization), so it cannot be shared as a parameter; "
                f"use fastlstm.convert(module), which keeps the reparametrisation"
            )
        setattr(new, name, value)
    if isinstance(new, nn.LSTM):
        new._init_flat_weights()
    new.train(old.training)
    # Hooks registered on the old module keep working (and stay removable
    # through their handles): the new module shares the very dicts.
    for name in _HOOK_DICTS:
        if hasattr(old, name) and hasattr(new, name):
            setattr(new, name, getattr(old, name))
    return new


_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
    "_backward_hooks", "_state_dict_pre_hooks", "_state_dict_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)

# Whole models holding these modules load with torch.load(weights_only=True)
# (torch's default) once fastlstm is imported, as far as fastlstm's classes go.
torch.serialization.add_safe_globals([LSTM, LSTMCell])
