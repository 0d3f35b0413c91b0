"""Helpers shared by the backends and the functional layer above them."""
import threading
import warnings

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from ..device import gpu


def script_quietly(fn):
    """torch.jit.script(fn) without the deprecation warning torch 2.13 gives
    for it, which users must not see. `warnings.catch_warnings` is not
    thread-safe: callers that may race script under a lock."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(fn)


class ScriptedOnce:
    """Functions scripted together (with `script_quietly`) on the first call,
    once, under a lock; every call returns the same tuple of ScriptFunctions.
    `functions` is None until then, so nothing is scripted at import.

    Example:
        >>> _scripted = ScriptedOnce(_forward, _backward)
        >>> forward, backward = _scripted()
    """

    def __init__(self, *fns):
        self._fns = fns
        self._lock = threading.Lock()
        self.functions = None

    def __call__(self) -> tuple:
        if self.functions is None:
            with self._lock:
                if self.functions is None:
                    self.functions = tuple(script_quietly(fn) for fn in self._fns)
        return self.functions


class FunctionCtx:
    """Stands in for autograd's ctx when a backend's autograd.Function runs its
    forward (or backward) as a plain call, outside autograd."""

    def __init__(self, args):
        self.needs_input_grad = tuple(isinstance(a, Tensor) and a.is_floating_point() for a in args)
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        pass


def needs_autograd(*tensors) -> bool:
    """Whether a call on these tensors (None allowed) is recorded by autograd,
    so that a backend must save what its backward needs."""
    if torch.is_grad_enabled():
        for t in tensors:  # a plain loop: this runs at every LSTMCell step
            if t is not None and t.requires_grad:
                return True
    return False


def transforms_active(*tensors) -> bool:
    """Whether these tensors (None allowed) are seen through a torch.func
    transform (grad, vjp, jacrev, vmap, jvp, ...) or carry forward-mode
    tangents. The fast backends then hand the layer to the reference loop:
    plain torch ops, which every transform and forward-mode AD support."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    # autograd.functional.jacobian/hessian(vectorize=True) batch with the older vmap
    is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
    for t in tensors:  # a plain loop: this runs at every LSTMCell step
        if t is not None and is_legacy_batched(t):
            return True
    if forward_ad._current_level >= 0:
        return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)
    return False


def differentiable_backward(grads) -> bool:
    """Whether a hand-written backward must itself be differentiable: under
    `create_graph=True` (grad mode is on inside the backward) or when the
    incoming gradients are batched or wrapped by torch.func (jacobian with
    vectorize=True, jacrev)."""
    return torch.is_grad_enabled() or transforms_active(*grads)


def reference_grads(inputs, batch_sizes, grads, needs, create_graph=True):
    """The layer's input gradients, recomputed with the reference loop under
    autograd; with `create_graph`, as differentiable functions of `inputs`
    and `grads`.

    `inputs` are the saved (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) (None
    allowed), which under create_graph carry their own history; `needs` says
    which gradients to return (the rest are None). What a hand-written
    backward gives for higher-order gradients: the fast path is for first
    derivatives, this one for everything past them.
    """
    from .reference import lstm_layer_reference

    wanted = [k for k, t in enumerate(inputs) if t is not None and needs[k]]
    result = [None] * len(inputs)
    if not wanted:
        return result
    with torch.enable_grad():
        # Saved inputs keep their history under create_graph, so what comes
        # back is differentiable with respect to the originals too. Each slot
        # gets its own view: one tensor passed in two slots (h and c, tied
        # weights) must get each slot's share, not its total twice.
        args = [t if t is None or k not in wanted else (t.view_as(t) if t.requires_grad else
                                                           t.detach().requires_grad_())
                for k, t in enumerate(inputs)]
        outputs = lstm_layer_reference(*args, batch_sizes)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
        found = torch.autograd.grad([o for o, _ in pairs], [args[k] for k in wanted],
                                    [g for _, g in pairs], create_graph=create_graph, allow_unused=True)
    for k, g in zip(wanted, found):
        result[k] = torch.zeros_like(inputs[k]) if g is None else g
    return result


def sequence_lengths(batch_sizes: Tensor, batch: int) -> Tensor:
    """(B,) int64 on the CPU: each row's length, from a PackedSequence's batch_sizes
    (row b is live at step t while b < batch_sizes[t])."""
    return (batch_sizes.unsqueeze(1) > torch.arange(batch).unsqueeze(0)).sum(0)


def host_to_device(t: Tensor, device: torch.device) -> Tensor:
    """A small CPU tensor (indices, lengths) on `device` without waiting: on CUDA
    through pinned memory and a non-blocking copy (a copy from pageable memory
    synchronises the stream). The caching host allocator keeps the pinned block
    until the copy has run."""
    g = gpu(device)
    return g.to_device(t) if g is not None else t.to(device)


def on_host(t: Tensor) -> bool:
    """Whether `t` lives in host memory with no device to wait for: a CPU
    tensor, unless a GPU is simulated there (then it is that GPU's, and the
    host code takes the GPU's paths; see fastlstm.device)."""
    return t.device.type == "cpu" and gpu(t) is None


def has_no_data(t: Tensor) -> bool:
    """Whether `t` carries shapes but no data: a meta tensor, or a FakeTensor
    (FakeTensorMode: shape inference, torch.compile's tracing). Backends then
    give outputs of the right shapes and dtypes without computing, as
    nn.LSTM's meta kernels do."""
    if type(t) is Tensor or type(t) is torch.nn.Parameter:
        return t.is_meta  # the common case, without importing anything
    from torch._subclasses.fake_tensor import is_fake

    return t.is_meta or is_fake(t)


class DeferredError:
    """An error found on a device, reported without waiting for the device.

    `flag(bad)` adds a 0-dim bool device tensor into a per-device int32
    accumulator (one small kernel); a non-blocking copy of the accumulator to
    pinned memory, with an event after it, lets `check()` at a later call raise
    once the copy has landed, never waiting for it. One copy is in flight at a
    time. On the CPU there is no device to wait for, so callers check there
    directly instead.
    """

    def __init__(self, device: torch.device, message: str):
        self.device, self.message = device, message
        self.gpu = gpu(device)  # None: the CPU, nothing to wait for
        # Outside inference mode, so that a first call under it leaves a buffer later calls may update.
        with torch.inference_mode(False):
            self.acc = torch.zeros(1, dtype=torch.int32, device=device)
        self.host = None  # pinned, made at the first copy (never while a CUDA graph is captured)
        self.event = None
        self.dirty = False

    def flag(self, bad: Tensor) -> None:
        self.acc.add_(bad)
        self.dirty = True
        self._copy()

    def _copy(self) -> None:
        g = self.gpu
        if self.event is not None or not self.dirty or g is None or g.is_capturing():
            return
        if self.host is None:
            with torch.inference_mode(False):
                self.host = g.pinned_zeros(1, torch.int32)
        self.host.copy_(self.acc, non_blocking=True)
        self.event = g.event()
        self.event.record()
        self.dirty = False

    def check(self) -> None:
        """Raise the error if a finished copy saw it set (then clear it). On the
        CPU the accumulator itself is read (it is host memory)."""
        g = self.gpu
        if g is None:
            seen = self.acc.numpy()
        else:
            if self.event is None or g.is_capturing() or not self.event.query():
                return
            self.event = None
            seen = self.host.numpy()
        if int(seen[0]):
            seen[0] = 0
            self.acc.zero_()
            raise RuntimeError(self.message)
        self._copy()
