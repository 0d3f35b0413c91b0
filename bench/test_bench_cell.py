"""The cell loop: an LSTMCell stepped from Python over T steps, `h, c = cell(x[t], (h, c))`,
the outputs stacked (as pytorch/examples' time-sequence predictor does); infer under
no_grad, train with the backward of a random gradient of the stacked outputs.
fastlstm.LSTMCell against torch.nn.LSTMCell on the same weights; see conftest.py for
the shapes (`cell_shape`) and backends.

    pytest bench/test_bench_cell.py --benchmark-only

Each benchmark first checks the loop's outputs, final state and (in training) input
gradient against a float64 nn.LSTMCell loop; a wrong answer fails and records nothing.
"""
import pytest
import torch

from fastlstm.profile import compare, make_step, warm_up, workloads


def test_cell_loop(benchmark, backend, cell_shape, shape_data, bench_env):
    spec = cell_shape
    device = torch.device(spec.device)
    cell, x, grad_out, want = shape_data(spec)
    reason = workloads.workload_unavailable_reason("cell", backend, cell, device)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    step = make_step(workloads.build_workload_model("cell", backend, cell), x, spec.mode, grad_out)
    ok, err, msg = compare(step(), want, spec.torch_dtype)
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
