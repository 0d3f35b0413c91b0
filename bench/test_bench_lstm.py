"""One benchmark per (backend, shape): see bench/conftest.py for the grids and options.

Each benchmark first checks the backend's output (and in training its input
gradient) against a float64 torch.nn.LSTM with the same weights; a wrong
answer fails the test and records no figure. The timed call synchronises
CUDA, so it times the work, not the launch.
"""
import pytest
import torch

from fastlstm import profile

# The tutorial loop takes seconds per round past this T, and adds nothing there
# that `fastlstm profile`'s sweep does not show.
_SLOW_MAX_T = 1024


def test_lstm(benchmark, backend, shape, shape_spec, shape_data, bench_env):
    spec = shape_spec
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend == "tutorial" and spec.T > _SLOW_MAX_T:
        pytest.skip(f"tutorial past T={_SLOW_MAX_T} takes seconds per round; see `fastlstm profile`")
    lstm, x, grad_out, want = shape_data(spec)
    reason = profile.unavailable_reason(backend, lstm, device)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")

    try:
        model = profile.build_model(backend, lstm)
        step = profile.make_step(model, x, spec.mode, grad_out)
        got = step()  # fastlstm imports a backend on its first forward
    except ImportError as e:
        if backend != "flashrnn":
            raise  # fastlstm's own backends and baselines must import; a skip would hide it
        pytest.skip(f"{backend} does not import: {e}")
    ok, err, msg = profile.compare(got, want, spec.torch_dtype, device, backend)
    if not ok:
        pytest.fail(f"{backend} at {spec.id}: wrong answer against nn.LSTM, no figure recorded: {msg}",
                    pytrace=False)
    profile.warm_up(step)

    benchmark.group = spec.id  # the backends of one shape side by side (see conftest.py)
    benchmark.extra_info.update(bench_env(device))
    benchmark.extra_info.update(
        backend=backend, shape=spec.id, seq_len=spec.T, batch=spec.B, input=spec.I, hidden=spec.H,
        dtype=str(spec.torch_dtype).replace("torch.", ""), mode=spec.mode,
        tokens_per_call=spec.T * spec.B, max_abs_err=err,
    )
    benchmark(step)
