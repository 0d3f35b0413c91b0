"""The layer primitive as `torch.library` custom ops, for torch.compile.

Dynamo cannot trace into TorchScript functions or Triton launchers without
breaking the graph, so while torch.compile traces, `fastlstm.functional`
calls the "jit" and "triton" backends through the opaque op
`fastlstm::lstm_layer`. Its fake (meta) implementation gives the output
shapes, so the graph stays whole. ("reference" is plain torch and is traced
directly.)

The gradient is a second op, `fastlstm::lstm_layer_backward`. It runs the
backend's own `autograd.Function` forward (saving what its backward needs) and
then that Function's backward, both called directly with a stand-in ctx:
one code path with eager mode, at the price of one extra forward per training
step under torch.compile. Eager mode never comes here.

Each such backend module provides `_function_and_args(x, h0, c0, w_ih, w_hh,
b_ih, b_hh, w_hr, batch_sizes, save) -> (Function, args)`.
"""
import importlib
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ._dispatch import resolve_backend
from .backends._common import FunctionCtx


def _function_and_args(backend: str, inputs, batch_sizes, save: bool):
    layer = resolve_backend(backend, inputs[0])
    module = importlib.import_module(layer.__module__)
    return module._function_and_args(*inputs, batch_sizes, save)


@torch.library.custom_op("fastlstm::lstm_layer", mutates_args=())
def lstm_layer(
    backend: str,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hr: Optional[Tensor],
    batch_sizes: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor]:
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    fn, args = _function_and_args(backend, inputs, batch_sizes, save=False)
    with torch.no_grad():
        outputs = fn.forward(FunctionCtx(args), *args)
    return tuple(_unaliased(list(outputs), [t for t in inputs if t is not None]))


def _unaliased(outputs: List[Tensor], inputs: List[Tensor]) -> List[Tensor]:
    """Clone outputs that share memory with an input or an earlier output:
    a custom op's results may alias nothing."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t is not None and t.numel()}
    result = []
    for t in outputs:
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        result.append(t)
    return result


@lstm_layer.register_fake
def _lstm_layer_fake(backend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
    return x.new_empty(x.shape[0], x.shape[1], h0.shape[1]), h0.new_empty(h0.shape), c0.new_empty(c0.shape)


@torch.library.custom_op("fastlstm::lstm_layer_backward", mutates_args=())
def lstm_layer_backward(
    backend: str,
    inputs: List[Optional[Tensor]],
    batch_sizes: Optional[Tensor],
    grad_out: Tensor,
    grad_h: Tensor,
    grad_c: Tensor,
) -> List[Tensor]:
    fn, args = _function_and_args(backend, inputs, batch_sizes, save=True)
    ctx = FunctionCtx(args)
    with torch.no_grad():
        fn.forward(ctx, *args)
        grads = fn.backward(ctx, grad_out, grad_h, grad_c)
    result = []
    for t, g in zip(inputs, grads):
        if t is None:
            result.append(grad_out.new_empty(0))
        else:
            result.append(torch.zeros_like(t) if g is None else g)
    return _unaliased(result, [grad_out, grad_h, grad_c, *inputs])


@lstm_layer_backward.register_fake
def _lstm_layer_backward_fake(backend, inputs, batch_sizes, grad_out, grad_h, grad_c):
    return [grad_out.new_empty(0) if t is None else t.new_empty(t.shape) for t in inputs]


def _setup_context(ctx, inputs, output):
    ctx.backend = inputs[0]
    ctx.batch_sizes = inputs[-1]
    ctx.present = [t is not None for t in inputs[1:-1]]
    ctx.save_for_backward(*[t for t in inputs[1:-1] if t is not None])


def _backward(ctx, grad_out, grad_h, grad_c):
    saved = iter(ctx.saved_tensors)
    inputs = [next(saved) if present else None for present in ctx.present]
    grads = lstm_layer_backward(ctx.backend, inputs, ctx.batch_sizes, grad_out, grad_h, grad_c)
    grads = [g if present else None for g, present in zip(grads, ctx.present)]
    return (None, *grads, None)


lstm_layer.register_autograd(_backward, setup_context=_setup_context)
