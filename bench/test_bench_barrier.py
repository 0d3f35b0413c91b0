"""The grid barrier alone: a persistent launch whose programs only meet the
barrier, T times (`fastlstm.kernels.barrier.barrier_loop_kernel`). Its time per
step is the synchronisation floor of every persistent LSTM step; the target
for beating cuDNN's persistent fp16 kernel is about 1 us a step, barrier
included. On a GPU: CUDA, where it times the barrier, or a simulated one
(fastlstm.device, as `make gpu-check-dry` runs it), where the programs take
turns in Triton's interpreter: that checks the counting, at a few steps, and
its times are the interpreter's.

    pytest bench/test_bench_barrier.py --benchmark-only    # on a GPU machine
"""
import pytest

from fastlstm import device as _device

PROGRAMS = (16, 32, 64, 96, 128, 132)
STEPS = 10_000
SIMULATED_STEPS = 4


@pytest.mark.parametrize("programs", PROGRAMS)
def test_barrier_step(benchmark, programs, bench_env):
    if not _device.gpu_available():
        pytest.skip("the barrier microbenchmark needs a GPU (CUDA, or FASTLSTM_SIMULATE_GPU)")
    pytest.importorskip("triton")
    from fastlstm.backends.triton import barrier_loop

    device = _device.resolve("cuda")
    gpu = _device.gpu(device)
    if programs > gpu.properties.sm_count:
        pytest.skip(f"{programs} programs exceed this GPU's SMs")
    steps = SIMULATED_STEPS if gpu.simulated else STEPS
    sync = barrier_loop(programs, steps, device)  # compile, and check it counts right
    assert sync.tolist() == [programs * steps, 0], f"arrivals and error flag: {sync.tolist()}"

    def run():
        barrier_loop(programs, steps, device)
        gpu.synchronize()

    benchmark.extra_info.update(bench_env(device))
    benchmark.extra_info.update(programs=programs, steps=steps)
    benchmark(run)
    if benchmark.stats is not None:  # None under --benchmark-disable: one untimed call
        benchmark.extra_info["us_per_step"] = benchmark.stats.stats.median / steps * 1e6
