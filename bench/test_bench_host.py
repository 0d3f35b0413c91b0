"""The host cost of one fastlstm layer call: the Triton backend's whole call
(module, checks, dispatch, plan, allocations, launch arguments) with the
kernel launches stubbed out, against nn.LSTM's whole call on the same tiny
layer on the CPU (T=1, B=2, I=H=8, float32), forward (under no_grad) and
forward+backward, interleaved, medians.

    pytest bench/test_bench_host.py --benchmark-only -s

On a GPU the launches are asynchronous, so what the host spends around them
is what a short sequence costs (issue 21). The stub stands in for the launch
only: everything the host does is timed. Ratios (nn.LSTM's time / ours, above
1: ours cheaper) go to extra_info and, with -s, are printed.

The answer is checked first with the launches real: under Triton's
interpreter on a machine without CUDA (the kernels are then imported
interpreted here, before any other benchmark imports them), else on the GPU.
"""
import importlib.util
import os
import statistics
import sys

import pytest
import torch

import fastlstm
from fastlstm.profile import DEFAULT_REPEATS, calls_per_sample, timed_median, warm_up

T, B, I, H = 1, 2, 8, 8  # noqa: E741


def _triton_backend():
    """fastlstm's Triton backend module, or None without triton. Without CUDA,
    and if nothing imported them yet, its kernels are imported interpreted, so
    that the CPU can check the answer."""
    # Not `import triton` here: the interpreter must be on before triton.language is first imported.
    if importlib.util.find_spec("triton") is None:
        return None
    if not any(m.startswith("fastlstm.kernels.") for m in sys.modules) and not torch.cuda.is_available():
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            from fastlstm.backends import triton as tb
        finally:
            if old is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = old
    from fastlstm.backends import triton as tb

    return tb


_TB = _triton_backend()


def _interpreted(kernel) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def _no_launch(kernel, grid, kwargs, cooperative, device):
    """Stands in for the backend's one launch point: takes the launch and does nothing."""
    return None


def _call(m, x, mode):
    if mode == "infer":
        with torch.no_grad():
            return m(x)
    out, (h, c) = m(x)
    (out.sum() + h.sum() + c.sum()).backward()
    return out, (h, c)


def _check_answer(ours, theirs, x, mode, device):
    ours, theirs = [type(m).from_torch(m, backend="triton") if m is ours else m for m in (ours, theirs)]
    ours, theirs, x = ours.to(device), theirs.to(device), x.to(device)
    xs = [x.clone().requires_grad_(mode == "train") for _ in range(2)]
    got, want = _call(ours, xs[0], mode), _call(theirs, xs[1], mode)
    pairs = [(got[0], want[0]), (got[1][0], want[1][0]), (got[1][1], want[1][1])]
    if mode == "train":
        pairs += [(xs[0].grad, xs[1].grad)] + [(a.grad, b.grad) for a, b in zip(ours.parameters(),
                                                                                 theirs.parameters())]
    for a, b in pairs:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_layer_call_host_cost(benchmark, request, monkeypatch, mode):
    if _TB is None:
        pytest.skip("triton is not installed")
    from fastlstm.kernels import lstm_fwd as k_fwd

    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H)
    ours = fastlstm.LSTM.from_torch(theirs, backend="triton")
    x = torch.randn(T, B, I, requires_grad=mode == "train")
    if _interpreted(k_fwd.lstm_fwd_kernel):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        _check_answer(ours, theirs, x, mode, torch.device("cpu"))
    elif torch.cuda.is_available():
        _check_answer(ours, theirs, x, mode, torch.device("cuda"))
    else:
        pytest.skip("fastlstm's kernels were imported compiled and there is no GPU to check the answer on")
    # The timed calls: CPU tensors through the interpreter's host path, launches stubbed.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from fastlstm.backends.triton import launch

    monkeypatch.setattr(launch, "_kernel_launch", _no_launch)
    calls = {"torch": lambda: _call(theirs, x, mode), "fastlstm": lambda: _call(ours, x, mode)}

    benchmark.group = f"host-T{T}-B{B}-I{I}-H{H}-f32-{mode}"
    benchmark.extra_info.update(workload="layer host cost (launch stubbed)", mode=mode, seq_len=T, batch=B,
                                input=I, hidden=H, threads=torch.get_num_threads())
    if not benchmark.disabled:
        smoke = request.config.getoption("--bench-smoke")
        inner = {name: calls_per_sample(warm_up(fn)) for name, fn in calls.items()}
        samples = timed_median(calls, repeats=1 if smoke else max(DEFAULT_REPEATS, 41), inner=inner)
        us = {name: statistics.median(v) * 1e6 for name, v in samples.items()}
        # Rounds time both calls back to back: the median of each round's ratio
        # follows a shared machine's changing load better than a ratio of medians.
        ratio = statistics.median(a / b for a, b in zip(samples["torch"], samples["fastlstm"]))
        benchmark.extra_info.update(torch_us=us["torch"], fastlstm_us=us["fastlstm"], torch_over_fastlstm=ratio)
        print(f"\nhost cost, {mode}, T={T} B={B} I={I} H={H}: median us per call: nn.LSTM {us['torch']:.1f}, "
              f"fastlstm (launch stubbed) {us['fastlstm']:.1f}; nn.LSTM / fastlstm (median of rounds) {ratio:.2f}")
    benchmark(calls["fastlstm"])
