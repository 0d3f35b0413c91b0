"""Test set-up shared by every test file.

TRITON_INTERPRET must be set before any `@triton.jit` function is defined,
that is before `fastlstm.kernels` is first imported, so it is set here, at
collection time. On a machine with a GPU, run with FASTLSTM_TEST_NATIVE=1 to
test the compiled kernels instead of the interpreter: test_triton_backend.py
and test_lstm_module.py then put the Triton cases on the GPU (drawing their
shapes from fixed lists, since each new shape is a kernel compile there), and
test_gpu.py runs (CUDA autocast, torch.compile), while the hardening, dtype and
compile tests keep their Triton cases to the interpreter (they build CPU
tensors). `make gpu-check` runs those native tests (see
fastlstm/profile/gpu_check.py).
"""
import os

if os.environ.get("FASTLSTM_TEST_NATIVE", "0") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(session, config, items):
    """Ahead-of-time compiling (tests/test_triton_aot.py) takes minutes: start it
    in the background now and run its tests last, so it overlaps the others.

    FASTLSTM_TEST_SHARD=i/n keeps the i-th of n contiguous slices of the tests
    (i from 0): `fastlstm.profile.gpu_check` runs the native suite as n
    processes at once, since compiling the kernels (seconds each, on the CPU)
    is most of its time. Contiguous, so that the cases of one test, which share
    kernels, mostly compile in one process."""
    shard = os.environ.get("FASTLSTM_TEST_SHARD")
    if shard:
        try:
            i, n = (int(v) for v in shard.split("/"))
            if not 0 <= i < n:
                raise ValueError(shard)
        except ValueError:
            raise pytest.UsageError(f"FASTLSTM_TEST_SHARD: expected i/n with 0 <= i < n, got {shard!r}") from None
        lo, hi = len(items) * i // n, len(items) * (i + 1) // n
        config.hook.pytest_deselected(items=items[:lo] + items[hi:])
        items[:] = items[lo:hi]
    aot = [item for item in items if item.module.__name__ == "test_triton_aot"]
    if aot:
        aot[0].module.start()
        items[:] = [item for item in items if item not in aot] + aot


def pytest_report_header(config):
    mode = "interpreter on the CPU" if os.environ.get("TRITON_INTERPRET") == "1" else "native (GPU)"
    return f"fastlstm: Triton kernels run {mode}; set FASTLSTM_TEST_NATIVE=1 on a GPU machine to compile them"
