"""The GEMM floor: the matrix products of one LSTM layer, alone, against nn.LSTM.

    pytest bench/test_bench_floor.py --benchmark-only -s

For each default CPU shape, `_layer_gemms` runs only the GEMMs that the "jit"
backend runs for a layer, with the same oneDNN calls, weight reorder and
chunking: the input projection, one recurrent GEMM per step and, in training,
one per step for dh plus the chunked GEMMs for dx, dW_ih and dW_hh. No gate
nonlinearity, no cell update, no autograd. Any backend built from these GEMMs
plus separate pointwise ops cannot be faster than this floor.

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
from fastlstm.backends._common import script_quietly


def _layer_gemms(x: Tensor, hs: Tensor, dzs: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor,
                 chunk: int, reorder: bool, train: bool) -> List[Tensor]:
    """The GEMMs of one layer on inputs x (T, B, I), recurrent inputs hs
    (T, B, R) and gate gradients dzs (T, B, 4H). Returns the last product of
    each kind and the weight gradients, transposed: [x W_ih^T + b, h W_hh^T]
    and, in training, [dz W_hh, dz W_ih, dW_ih^T, dW_hh^T]; then `live`, one
    element of every per-step product summed. TorchScript unrolls loops and
    drops products that nothing reads, so each is read once (about 1 us per
    step, which makes the floor a little higher than the GEMMs alone)."""
    T, B, I = x.size(0), x.size(1), x.size(2)
    R = hs.size(2)
    G4 = w_hh.size(0)
    ns = torch.jit.annotate(List[Optional[Union[int, float, complex]]], [])
    whh = w_hh
    if reorder:
        whh = torch.ops.mkldnn._reorder_linear_weight(w_hh, B)
    xr = x.reshape(T * B, I)
    xw = xr
    g = hs[0]
    live = torch.zeros(1)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        xw = torch.ops.mkldnn._linear_pointwise(xr[t0 * B:t1 * B], w_ih, bias, "none", ns, "")
        for t in range(t0, t1):
            g = torch.ops.mkldnn._linear_pointwise(hs[t], whh, None, "none", ns, "")
            live.add_(g[0, 0])
    if not train:
        return [xw, g, live]
    dh = hs[0]
    dx = xr
    dwi = torch.zeros((I, G4))
    dwh = torch.zeros((R, G4))
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        for t in range(t1 - 1, t0 - 1, -1):
            dh = torch.ops.mkldnn._linear_pointwise(dzs[t], w_hh.t(), None, "none", ns, "")
            live.add_(dh[0, 0])
        G = dzs[t0:t1].reshape((t1 - t0) * B, G4)
        dx = torch.ops.mkldnn._linear_pointwise(G, w_ih.t(), None, "none", ns, "")
        xt = xr[t0 * B:t1 * B].t().contiguous()
        ht = hs[t0:t1].reshape((t1 - t0) * B, R).t().contiguous()
        dwi.add_(torch.ops.mkldnn._linear_pointwise(xt, G.t(), None, "none", ns, ""))
        dwh.add_(torch.ops.mkldnn._linear_pointwise(ht, G.t(), None, "none", ns, ""))
    return [xw, g, dh, dx, dwi, dwh, live]


_SCRIPTED = None


def _scripted():
    global _SCRIPTED
    if _SCRIPTED is None:
        _SCRIPTED = script_quietly(_layer_gemms)
    return _SCRIPTED


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
    if not (torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()):
        pytest.skip("the floor times oneDNN's GEMMs, which this torch build does not have")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(spec.I, spec.H)
    x, grad_out = profile.make_inputs(spec.T, spec.B, lstm, spec.mode)
    # Smoke shapes are tiny but still run the floor, to test it.
    if not jit._use_mkldnn(x, spec.H, spec.H) and not request.config.getoption("--bench-smoke"):
        pytest.skip("jit runs this shape's small GEMMs with MKL's addmm, not the oneDNN calls timed here")
    train = spec.mode == "train"
    hs = torch.randn(spec.T, spec.B, spec.H)
    dzs = torch.randn(spec.T, spec.B, 4 * spec.H)
    w_ih, w_hh = lstm.weight_ih_l0.detach(), lstm.weight_hh_l0.detach()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    chunk = jit._chunk(spec.T, spec.B)
    reorder = spec.T >= jit._REORDER_MIN_STEPS
    fn = _scripted()

    def floor():
        return fn(x.detach(), hs, dzs, w_ih, w_hh, bias, chunk, reorder, train)

    _check(floor(), x, hs, dzs, w_ih, w_hh, bias, chunk, train)
    benchmark.group = spec.id  # beside the backends of the same shape (see conftest.py)
    benchmark.extra_info.update(bench_env(torch.device("cpu")))
    benchmark.extra_info.update(shape=spec.id, seq_len=spec.T, mode=spec.mode)
    if not benchmark.disabled:
        steps = {"floor": floor}
        for name in ("torch", "jit"):
            steps[name] = profile.make_step(profile.build_model(name, lstm), x, spec.mode, grad_out)
        inner = {name: profile.calls_per_sample(profile.warm_up(step)) for name, step in steps.items()}
        samples = profile.timed_median(steps, repeats=profile.DEFAULT_REPEATS, inner=inner)
        ms = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
        ratios = {"floor_vs_torch": ms["torch"] / ms["floor"], "jit_vs_torch": ms["torch"] / ms["jit"],
                  "jit_vs_floor": ms["floor"] / ms["jit"]}
        benchmark.extra_info.update({f"{k}_ms": v for k, v in ms.items()}, **ratios)
        print(f"\n{spec.id}: median ms " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items())
              + "; throughput vs nn.LSTM: floor {floor_vs_torch:.2f}x, jit {jit_vs_torch:.2f}x;"
                " jit vs floor {jit_vs_floor:.2f}x".format(**ratios))
    benchmark(floor)
