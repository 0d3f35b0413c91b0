"""The benchmark suite collects and runs in smoke mode (tiny shapes, timing disabled)."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_suite_runs_in_smoke_mode():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--benchmark-disable", "--bench-smoke", "-v",
         "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"pytest bench --benchmark-disable --bench-smoke failed:\n{output}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) > 0, f"no benchmark passed:\n{output}"
    assert not re.search(r"\d+ (failed|errors?)\b", output), output
    # fastlstm's CPU backend and the baselines run for real on any machine; only
    # hardware-bound backends (Triton, FlashRNN off CUDA) may be skipped.
    for name in ("torch", "jit", "tutorial", "scripted"):
        assert re.search(rf"-{name}\] PASSED", output), f"{name} did not pass in smoke mode:\n{output}"
