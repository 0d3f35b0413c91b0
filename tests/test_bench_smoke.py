"""The benchmark suite runs in smoke mode (tiny shapes, one short round each), through
the exact command line `make bench` runs, report and grouping included."""
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_bench_args():
    if shutil.which("make") is None:
        pytest.fail("make is not installed; `make bench` cannot be checked")
    proc = subprocess.run(["make", "-s", "--no-print-directory", "bench-args"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_make_bench_command_runs_in_smoke_mode():
    args = _make_bench_args()
    assert args[:3] == ["-m", "pytest", "bench"], f"make bench runs: {args}"
    # Timing stays on (as in `make bench`), so pytest-benchmark groups and prints its tables.
    env = {**os.environ, "FASTLSTM_BENCH_SMOKE": "1"}
    proc = subprocess.run([sys.executable, *args, "-v", "-p", "no:cacheprovider"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} (smoke) failed:\n{output}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) > 0, f"no benchmark passed:\n{output}"
    assert not re.search(r"\d+ (failed|errors?)\b", output), output
    # fastlstm's CPU backend and the baselines run for real on any machine; only
    # hardware-bound backends (Triton, FlashRNN off CUDA) may be skipped.
    for name in ("torch", "jit", "tutorial", "scripted"):
        assert re.search(rf"test_lstm\[.*-{name}\] PASSED", output), f"{name} did not pass in smoke mode:\n{output}"
    for name in ("torch", "jit", "reference"):
        for mode in ("infer", "train"):
            assert re.search(rf"test_cell_loop\[cell-.*-{mode}-{name}\] PASSED", output), \
                f"the cell loop ({name}, {mode}) did not pass in smoke mode:\n{output}"
    assert re.search(r"test_gemm_floor\[.*\] PASSED", output), f"the GEMM floor did not pass:\n{output}"
    # One table per shape, the floor beside the backends.
    table = re.search(r"benchmark 'T8-B2-I3-H5-f32-train': (\d+) tests", output)
    assert table and int(table.group(1)) >= 5, f"no table grouped by shape:\n{output[-3000:]}"


def test_bench_without_pytest_benchmark_says_what_to_install():
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench", "-p", "no:benchmark", "--benchmark-only",
                           "--benchmark-group-by=group", "-p", "no:cacheprovider"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "pytest-benchmark" in output and "fastlstm[test]" in output, output
    assert "unrecognized arguments" not in output and "Traceback" not in output, output
