"""Set-up: the Python range pyproject.toml states is the one the Makefile enforces, and
the one this interpreter is in; `make` refuses an older Python with one line."""
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def test_requires_python_matches_the_makefile_and_this_interpreter():
    required = re.search(r'^requires-python = ">=(\d+)\.(\d+)"', _read("pyproject.toml"), re.M)
    checked = re.search(r"^MIN_PYTHON := (\d+)\.(\d+)$", _read("Makefile"), re.M)
    assert required and checked, "requires-python or MIN_PYTHON not found"
    assert required.groups() == checked.groups(), f"pyproject {required.groups()} vs Makefile {checked.groups()}"
    assert sys.version_info[:2] >= tuple(map(int, required.groups()))


def test_make_refuses_an_older_python(tmp_path):
    if shutil.which("make") is None:
        pytest.fail("make is not installed; the set-up check cannot be tested")
    # A stand-in "python" that reports 3.9, so the check fails before any venv is made.
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\n"
                    "if [ \"$1\" = -V ]; then echo 'Python 3.9.0'; exit 0; fi\n"
                    f"exec {sys.executable} -c 'import sys; sys.exit(1)'\n")
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "-s", "--no-print-directory", "venv", f"PYTHON={fake}", f"VENV={venv}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "needs Python 3.11 or newer" in proc.stdout + proc.stderr and "Python 3.9.0" in proc.stdout, proc.stdout
    assert not venv.exists(), "a venv was made despite the old Python"
