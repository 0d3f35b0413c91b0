"""The Triton kernels' two step bodies side by side on a GPU: today's "chunked"
step and the "wave" step (`LaunchPlan.step`, chosen per call by
FASTLSTM_TRITON_STEP), with cuDNN's nn.LSTM, on the shapes where cuDNN runs its
persistent fp16 kernel (one layer, H % 128 == 0, B % 8 == 0, B <= 128). CUDA only.

Each variant's output (and in training its input gradient) is first checked
against a float64 nn.LSTM with the same weights. Then the three run
interleaved, round after round, and each one's median is recorded in
`extra_info` (ms per call, and cuDNN's median over it); the benchmark's own
statistics time the wave step. The per-step cost is the slope between the
two sequence lengths of a shape (the fixed cost of a call cancels):

    pytest bench/test_bench_step.py --benchmark-only    # on a GPU machine
"""
import os
import statistics
import time

import pytest
import torch

from fastlstm import profile
from fastlstm.profile import workloads

# (B, I = H, T): cuDNN's persistent fp16 cases measured in ../shared/GPU_DESIGN.md.
SHAPES = [(16, 768, 128), (16, 768, 1024), (32, 512, 1024), (64, 256, 1024), (128, 512, 1024)]
ROUNDS = 15
STEP_ENV = "FASTLSTM_TRITON_STEP"


def _timed(step) -> float:
    start = time.perf_counter()
    step()  # make_step's steps wait for the GPU before they return
    return time.perf_counter() - start


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("step_shape", SHAPES, ids=lambda s: f"B{s[0]}-H{s[1]}-T{s[2]}")
def test_step_bodies_against_cudnn(benchmark, step_shape, mode, bench_env, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("the step bodies' benchmark needs a CUDA GPU")
    pytest.importorskip("triton")
    B, H, T = step_shape
    device = torch.device("cuda")
    lstm = workloads.make_reference_module("layer", H, H, 1, torch.float16, device, seed=0)
    x, grad_out = profile.make_inputs(T, B, lstm, mode)
    want = profile.reference_result(lstm, x, mode, grad_out)
    model = profile.build_model("triton", lstm)
    triton_step = profile.make_step(model, x, mode, grad_out)

    def with_step(name):
        def run():
            os.environ[STEP_ENV] = name  # read by the backend at each call
            return triton_step()
        return run

    monkeypatch.setenv(STEP_ENV, "chunked")  # restored after the test
    steps = {"chunked": with_step("chunked"), "wave": with_step("wave"),
             "cudnn": profile.make_step(profile.build_model("torch", lstm), x, mode, grad_out)}
    for name, step in steps.items():
        ok, err, msg = profile.compare(step(), want, torch.float16)
        if not ok:
            pytest.fail(f"{name} at {step_shape} {mode}: wrong answer against nn.LSTM, no figure recorded: {msg}",
                        pytrace=False)
        profile.warm_up(step)

    times = {name: [] for name in steps}
    names = list(steps)
    for r in range(ROUNDS):
        for name in names[r % 3:] + names[:r % 3]:  # rotate who goes first
            times[name].append(_timed(steps[name]))
    medians = {name: statistics.median(ts) for name, ts in times.items()}

    benchmark.group = f"step-B{B}-H{H}-T{T}-{mode}"
    benchmark.extra_info.update(bench_env(device))
    benchmark.extra_info.update(batch=B, hidden=H, input=H, seq_len=T, mode=mode, dtype="float16", rounds=ROUNDS)
    benchmark.extra_info.update({f"{name}_ms": round(m * 1e3, 4) for name, m in medians.items()})
    benchmark.extra_info.update({f"cudnn_over_{name}": round(medians["cudnn"] / medians[name], 3)
                                 for name in ("chunked", "wave")})
    benchmark(steps["wave"])
