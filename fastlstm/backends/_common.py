"""Helpers shared by the backends and the functional layer above them."""
import functools
import warnings

import torch
from torch import Tensor

_DOUBLE_BACKWARD_ERROR = (
    b"trying to differentiate twice a function that was marked with @once_differentiable: "
    b"fastlstm's jit and triton backends have hand-written backwards; use "
    b"backend='reference' for double backward"
)


def script_quietly(fn):
    """torch.jit.script(fn) without the deprecation warning torch 2.13 gives
    for it, which users must not see. `warnings.catch_warnings` is not
    thread-safe: callers that may race script under a lock."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(fn)


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
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def refuse_double_backward(backward):
    """With create_graph=True, make every gradient raise a clear error if it is
    differentiated again. `once_differentiable` alone does so only when the
    incoming gradients require grad; after a linear loss they do not, and
    the gradient would come back silently detached."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return outputs
        delayed = [i for i, g in enumerate(outputs) if isinstance(g, Tensor) and not g.requires_grad]
        if not delayed:
            return outputs
        err_fn = torch._C._functions.DelayedError(_DOUBLE_BACKWARD_ERROR, len(delayed))
        wrapped = err_fn(*[outputs[i].detach().requires_grad_() for i in delayed])
        if isinstance(wrapped, Tensor):
            wrapped = (wrapped,)
        result = list(outputs)
        for i, g in zip(delayed, wrapped):
            result[i] = g
        return tuple(result)

    return wrapper


def sequence_lengths(batch_sizes: Tensor, batch: int) -> Tensor:
    """(B,) int64 on the CPU: each row's length, from a PackedSequence's batch_sizes
    (row b is live at step t while b < batch_sizes[t])."""
    return (batch_sizes.unsqueeze(1) > torch.arange(batch).unsqueeze(0)).sum(0)
