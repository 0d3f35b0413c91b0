"""The cell loop: an LSTMCell stepped from Python over T steps, `h, c = cell(x[t], (h, c))`,
the outputs stacked (as pytorch/examples' time-sequence predictor does); infer under
no_grad, train with the backward of a random gradient of the stacked outputs.
fastlstm.LSTMCell against torch.nn.LSTMCell on the same weights; see conftest.py for
the shapes (`cell_shape`) and backends.

    pytest bench/test_bench_cell.py --benchmark-only

Each benchmark first checks the loop's outputs, final state and (in training) input
gradient against a float64 nn.LSTMCell loop; a wrong answer fails and records nothing.
`test_cell_step_floor` times jit's scripted step alone against nn.LSTMCell: see it.
"""
import statistics

import pytest
import torch

import fastlstm
from fastlstm.profile import DEFAULT_REPEATS, calls_per_sample, compare, make_step, timed_median, warm_up, workloads


def test_cell_loop(benchmark, backend, cell_shape, shape_data, bench_env):
    spec = cell_shape
    device = torch.device(spec.device)
    cell, x, grad_out, want = shape_data(spec)
    reason = workloads.workload_unavailable_reason("cell", backend, cell, device)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    step = make_step(workloads.build_workload_model("cell", backend, cell), x, spec.mode, grad_out)
    ok, err, msg = compare(step(), want, spec.torch_dtype, device, backend, "cell")
    if not ok:
        pytest.fail(f"{backend} at {spec.id}: wrong answer against nn.LSTMCell, no figure recorded: {msg}",
                    pytrace=False)
    warm_up(step)

    benchmark.group = spec.id  # the backends of one shape side by side (see conftest.py)
    benchmark.extra_info.update(bench_env(device))
    benchmark.extra_info.update(
        workload="cell", backend=backend, shape=spec.id, seq_len=spec.T, batch=spec.B, input=spec.I,
        hidden=spec.H, dtype=str(spec.torch_dtype).replace("torch.", ""), mode=spec.mode,
        tokens_per_call=spec.T * spec.B, max_abs_err=err,
    )
    benchmark(step)


def test_cell_step_floor(benchmark, cell_shape, bench_env):
    """The floor of a TorchScript LSTMCell: jit's scripted step alone, called
    directly on prepared tensors (no module, no checks, no dispatch, no
    autograd), against nn.LSTMCell's whole call, interleaved, in inference.
    Where this step alone is no faster than nn.LSTMCell, no fastlstm.LSTMCell
    built on it can be: what it adds (the module call and its checks) only
    costs. The ratios go to extra_info and, with -s, are printed."""
    spec = cell_shape
    if spec.mode != "infer":
        pytest.skip("the step floor is an inference measurement")
    from fastlstm.backends import jit_cell

    torch.manual_seed(0)
    dtype = spec.torch_dtype
    theirs = torch.nn.LSTMCell(spec.I, spec.H).to(dtype)
    ours = fastlstm.LSTMCell.from_torch(theirs, backend="jit")
    x, h, c = (torch.randn(spec.B, n, dtype=dtype) for n in (spec.I, spec.H, spec.H))
    weights = (theirs.weight_ih, theirs.weight_hh, theirs.bias_ih, theirs.bias_hh)
    step = jit_cell._scripted()[0]
    with torch.no_grad():
        got, want = step(x, h, c, *weights, False)[:2], theirs(x, (h, c))
    for name, a, b in zip(("h", "c"), got, want):
        torch.testing.assert_close(a, b, msg=lambda m: f"step floor {name} against nn.LSTMCell: {m}")

    def floor():
        with torch.no_grad():
            return step(x, h, c, *weights, False)

    benchmark.group = spec.id
    benchmark.extra_info.update(bench_env(torch.device(spec.device)))
    benchmark.extra_info.update(workload="cell", shape=spec.id, batch=spec.B, input=spec.I, hidden=spec.H)
    if not benchmark.disabled:
        calls = {"floor": floor}
        for name, m in (("torch", theirs), ("jit", ours)):
            calls[name] = (lambda m=m: _no_grad_call(m, x, h, c))
        inner = {name: calls_per_sample(warm_up(fn)) for name, fn in calls.items()}
        samples = timed_median(calls, repeats=DEFAULT_REPEATS, inner=inner)
        us = {name: statistics.median(v) * 1e6 for name, v in samples.items()}
        ratios = {"floor_vs_torch": us["torch"] / us["floor"], "jit_vs_torch": us["torch"] / us["jit"]}
        benchmark.extra_info.update({f"{k}_us": v for k, v in us.items()}, **ratios)
        print(f"\n{spec.id}: median us per call " + ", ".join(f"{k} {v:.1f}" for k, v in us.items())
              + "; vs nn.LSTMCell: step floor {floor_vs_torch:.2f}x, jit {jit_vs_torch:.2f}x".format(**ratios))
    benchmark(floor)


def _no_grad_call(cell, x, h, c):
    with torch.no_grad():
        return cell(x, (h, c))
