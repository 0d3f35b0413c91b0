"""`import fastlstm` is cheap: no Triton, no hardware probe; "auto" works without Triton."""
import os
import subprocess
import sys

CODE = r"""
import sys
import torch

def refuse(*args, **kwargs):
    raise AssertionError("fastlstm probed the hardware")

torch.cuda.is_available = refuse
torch.cuda.device_count = refuse
sys.modules["triton"] = None  # as if Triton were not installed: importing it fails

import fastlstm
loaded = [m for m in sys.modules if m.startswith(("fastlstm.kernels", "fastlstm.backends.triton"))]
assert not loaded, loaded
out, (h, c) = fastlstm.LSTM(3, 4)(torch.randn(5, 2, 3))
assert out.shape == (5, 2, 4)
print("ok", fastlstm.available_backends(out))
"""


def test_import_is_cheap_and_auto_runs_without_triton():
    # A DeprecationWarning reaching the user (torch.jit.script's) fails the run.
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ['auto', 'jit', 'reference']"), out.stdout


def test_missing_triton_names_the_extra():
    code = ("import os, sys; sys.modules['triton'] = None; os.environ['TRITON_INTERPRET'] = '1'\n"
            "import torch; from fastlstm._dispatch import triton_unavailable_reason\n"
            "print(triton_unavailable_reason(torch.empty(0)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'fastlstm[triton]'" in out.stdout, out.stdout
