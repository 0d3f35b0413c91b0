"""The grid barrier alone: a persistent launch whose programs only meet the
barrier, T times (`fastlstm.kernels.barrier.barrier_loop_kernel`). Its time per
step is the synchronisation floor of every persistent LSTM step; the target
for beating cuDNN's persistent fp16 kernel is about 1 us a step, barrier
included. CUDA only (the interpreter runs programs one after another, so a
multi-program barrier cannot work there).

    pytest bench/test_bench_barrier.py --benchmark-only    # on a GPU machine
"""
import pytest
import torch

PROGRAMS = (16, 32, 64, 96, 128, 132)
STEPS = 10_000


@pytest.mark.parametrize("programs", PROGRAMS)
def test_barrier_step(benchmark, programs, bench_env):
    if not torch.cuda.is_available():
        pytest.skip("the barrier microbenchmark needs a CUDA GPU")
    pytest.importorskip("triton")
    from fastlstm.backends.triton import barrier_loop

    device = torch.device("cuda")
    if programs > torch.cuda.get_device_properties(device).multi_processor_count:
        pytest.skip(f"{programs} programs exceed this GPU's SMs")
    sync = barrier_loop(programs, STEPS, device)  # compile, and check it counts right
    assert sync.tolist() == [programs * STEPS, 0], f"arrivals and error flag: {sync.tolist()}"

    def run():
        barrier_loop(programs, STEPS, device)
        torch.cuda.synchronize(device)

    benchmark.extra_info.update(bench_env(device))
    benchmark.extra_info.update(programs=programs, steps=STEPS)
    benchmark(run)
    benchmark.extra_info["us_per_step"] = benchmark.stats.stats.median / STEPS * 1e6
