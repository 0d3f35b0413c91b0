"""The GEMM floor: the matrix products of one LSTM layer, alone, against nn.LSTM.

    pytest bench/test_bench_floor.py --benchmark-only -s

For each default CPU shape, `_layer_gemms` runs only the GEMMs that the "jit"
backend runs for a layer, with the same calls (oneDNN's linear, or MKL's
addmm where jit uses it for small GEMMs), weight reorder and chunking: the
input projection, one recurrent GEMM per step and, in training, one per step
for dh plus the chunked GEMMs for dx, dW_ih and dW_hh. No gate nonlinearity,
no cell update, no autograd. Any backend built from these GEMMs plus separate
pointwise ops cannot be faster than this floor.

In inference the "step floor" adds to each step the fewest ATen ops that
can finish an LSTM step from the gate pre-activations (`_POINTWISE_STEP`:
one sigmoid over all gates, tanh of the g quarter, two ops for the cell
state, tanh of it and the output product), in place on fixed buffers, with
none of jit's bookkeeping. Where even that is slower than a target ratio
against nn.LSTM, no TorchScript backend of ATen ops reaches the target.

Each test checks the floor's products against float64 matmuls first, then times
the floor, nn.LSTM and "jit" interleaved (medians of rounds in rotated order,
as `fastlstm profile` does) and records the ratios in the benchmark's
extra_info; with -s it prints them. pytest-benchmark times the floor itself.
"""
import statistics
from typing import List, Optional, Union

import pytest
import torch
from torch import Tensor

from fastlstm import profile
from fastlstm.backends import jit
from fastlstm.backends._common import ScriptedOnce


def _layer_gemms(x: Tensor, hs: Tensor, dzs: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor,
                 chunk: int, reorder: bool, train: bool, use_mkldnn: bool, pointwise: int) -> List[Tensor]:
    """The GEMMs of one layer on inputs x (T, B, I), recurrent inputs hs
    (T, B, R) and gate gradients dzs (T, B, 4H). Returns the last product of
    each kind and the weight gradients, transposed: [x W_ih^T + b, h W_hh^T]
    and, in training, [dz W_hh, dz W_ih, dW_ih^T, dW_hh^T]; then `live`, one
    element of every per-step product summed. TorchScript unrolls loops and
    drops products that nothing reads, so each is read once (about 1 us per
    step, which makes the floor a little higher than the GEMMs alone). With
    `pointwise` 1 or 2 (inference), each step also runs the ops of
    `_POINTWISE_STEPS[pointwise]`."""
    T, B, I = x.size(0), x.size(1), x.size(2)
    R = hs.size(2)
    G4 = w_hh.size(0)
    H = G4 // 4
    ns = torch.jit.annotate(List[Optional[Union[int, float, complex]]], [])
    whh = w_hh.t()
    if use_mkldnn:
        whh = w_hh
        if reorder:
            whh = torch.ops.mkldnn._reorder_linear_weight(w_hh, B)
    xr = x.reshape(T * B, I)
    xw = xr
    g = hs[0]
    live = torch.zeros(1)
    # The step floor's buffers: gates, cell state, tanh(g), tanh(c), output.
    z = torch.zeros((B, G4))
    c = torch.zeros((B, H))
    tg = torch.zeros((B, H))
    tc = torch.zeros((B, H))
    h = torch.zeros((B, H))
    zi, zf, zg, zo = z.chunk(4, 1)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        if use_mkldnn:
            xw = torch.ops.mkldnn._linear_pointwise(xr[t0 * B:t1 * B], w_ih, bias, "none", ns, "")
        else:
            xw = torch.addmm(bias, xr[t0 * B:t1 * B], w_ih.t())
        for t in range(t0, t1):
            if use_mkldnn:
                g = torch.ops.mkldnn._linear_pointwise(hs[t], whh, None, "none", ns, "")
            else:
                g = torch.mm(hs[t], whh)
            live.add_(g[0, 0])
            if pointwise == 1:
                torch.tanh(zg, out=tg)
                z.sigmoid_()
                c.mul_(zf).addcmul_(zi, tg)
                torch.tanh(c, out=tc)
                torch.mul(zo, tc, out=h)
            elif pointwise == 2:
                z.sigmoid_()
                zg.sub_(0.5)
                c.mul_(zf).addcmul_(zi, zg, value=4.0)
                torch.sigmoid(c, out=tc)
                tc.sub_(0.5)
                torch.mul(zo, tc, out=h)
    if pointwise:
        live.add_(h[0, 0])  # the step ops feed a returned value, so none is dropped
    if not train:
        return [xw, g, live]
    dh = hs[0]
    dx = xr
    dwi = torch.zeros((I, G4))
    dwh = torch.zeros((R, G4))
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        for t in range(t1 - 1, t0 - 1, -1):
            if use_mkldnn:
                dh = torch.ops.mkldnn._linear_pointwise(dzs[t], w_hh.t(), None, "none", ns, "")
            else:
                dh = torch.mm(dzs[t], w_hh)
            live.add_(dh[0, 0])
        G = dzs[t0:t1].reshape((t1 - t0) * B, G4)
        xt = xr[t0 * B:t1 * B].t().contiguous()
        ht = hs[t0:t1].reshape((t1 - t0) * B, R).t().contiguous()
        if use_mkldnn:
            dx = torch.ops.mkldnn._linear_pointwise(G, w_ih.t(), None, "none", ns, "")
            dwi.add_(torch.ops.mkldnn._linear_pointwise(xt, G.t(), None, "none", ns, ""))
            dwh.add_(torch.ops.mkldnn._linear_pointwise(ht, G.t(), None, "none", ns, ""))
        else:
            dx = torch.mm(G, w_ih)
            dwi.addmm_(xt, G)
            dwh.addmm_(ht, G)
    return [xw, g, dh, dx, dwi, dwh, live]


# What `_layer_gemms(pointwise=k)` adds to each step: the fewest ATen ops that
# finish a step from its gate pre-activations z, in two forms. 1: tanh where
# the formulas have it (fewest ops; ATen's tanh is dear per element). 2: jit's
# form, one sigmoid for all gates with the g rows' weights doubled (tanh(z) =
# 2 sigmoid(2z) - 1) and the cell state carried doubled. The step floor is
# the faster of the two at each shape.
_POINTWISE_STEPS = {
    1: ("tanh(z_g)", "sigmoid_(z)", "c.mul_(f)", "c.addcmul_(i, tanh(z_g))", "tanh(c)", "o * tanh(c)"),
    2: ("sigmoid_(z)", "z_g.sub_(1/2)", "c.mul_(f)", "c.addcmul_(i, z_g, 4)", "sigmoid(c)", "sub_(1/2)", "o * that"),
}


_scripted = ScriptedOnce(_layer_gemms)  # scripted on first use


def _check(got: List[Tensor], x, hs, dzs, w_ih, w_hh, bias, chunk: int, train: bool) -> None:
    """The floor's products against float64 matmuls."""
    d = [t.double() for t in (x, hs, dzs, w_ih, w_hh, bias)]
    x64, hs64, dz64, wi64, wh64, b64 = d
    T, B, I = x.shape
    last = (T - 1) // chunk * chunk
    want = [x64[last:].reshape(-1, I) @ wi64.t() + b64, hs64[T - 1] @ wh64.t()]
    if train:
        G = dz64.reshape(T * B, -1)
        want += [dz64[last] @ wh64, dz64[last:].reshape(-1, dz64.shape[2]) @ wi64,
                 x64.reshape(T * B, I).t() @ G, hs64.reshape(T * B, -1).t() @ G]
    got = got[:-1]  # `live` is a checksum, not a product
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a.double(), b, atol=1e-3, rtol=1e-4,
                                   msg=lambda m: f"GEMM floor product {k}: {m}")


def test_gemm_floor(benchmark, floor_shape, bench_env, request):
    spec = floor_shape
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(spec.I, spec.H)
    x, grad_out = profile.make_inputs(spec.T, spec.B, lstm, spec.mode)
    use_mkldnn = jit._use_mkldnn(x, spec.H, spec.H)  # jit's own choice of GEMM for this shape
    train = spec.mode == "train"
    hs = torch.randn(spec.T, spec.B, spec.H)
    dzs = torch.randn(spec.T, spec.B, 4 * spec.H)
    w_ih, w_hh = lstm.weight_ih_l0.detach(), lstm.weight_hh_l0.detach()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    chunk = jit._chunk(spec.T, spec.B)
    reorder = spec.T >= jit._REORDER_MIN_STEPS
    fn = _scripted()[0]

    def floor(pointwise: int = 0):
        return fn(x.detach(), hs, dzs, w_ih, w_hh, bias, chunk, reorder, train, use_mkldnn, pointwise)

    _check(floor(), x, hs, dzs, w_ih, w_hh, bias, chunk, train)
    benchmark.group = spec.id  # beside the backends of the same shape (see conftest.py)
    benchmark.extra_info.update(bench_env(torch.device("cpu")))
    benchmark.extra_info.update(shape=spec.id, seq_len=spec.T, mode=spec.mode,
                                gemm="onednn" if use_mkldnn else "addmm")
    if not benchmark.disabled:
        steps = {"floor": floor}
        if not train:
            for k in _POINTWISE_STEPS:
                steps[f"step{k}"] = (lambda k=k: floor(k))
        for name in ("torch", "jit"):
            steps[name] = profile.make_step(profile.build_model(name, lstm), x, spec.mode, grad_out)
        inner = {name: profile.calls_per_sample(profile.warm_up(step)) for name, step in steps.items()}
        samples = profile.timed_median(steps, repeats=profile.DEFAULT_REPEATS, inner=inner)
        ms = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
        ratios = {"floor_vs_torch": ms["torch"] / ms["floor"], "jit_vs_torch": ms["torch"] / ms["jit"],
                  "jit_vs_floor": ms["floor"] / ms["jit"]}
        if not train:
            ms["step_floor"] = min(ms[f"step{k}"] for k in _POINTWISE_STEPS)
            ratios["step_floor_vs_torch"] = ms["torch"] / ms["step_floor"]
        benchmark.extra_info.update({f"{k}_ms": v for k, v in ms.items()}, **ratios)
        step_note = "" if train else ", step floor {step_floor_vs_torch:.2f}x".format(**ratios)
        print(f"\n{spec.id}: median ms " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items())
              + "; throughput vs nn.LSTM: GEMM floor {floor_vs_torch:.2f}x".format(**ratios) + step_note
              + ", jit {jit_vs_torch:.2f}x; jit vs GEMM floor {jit_vs_floor:.2f}x".format(**ratios))
    benchmark(floor)
