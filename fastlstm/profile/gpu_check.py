"""`make gpu-check`: everything a GPU machine is for, in one command, within ten minutes.

    python3 -m fastlstm.profile.gpu_check                 # on a GPU machine (make gpu-check)
    python3 -m fastlstm.profile.gpu_check --dry --out D   # the same stages on the CPU (make gpu-check-dry)

It targets a machine with a CUDA GPU and no network, using the torch installed
there (`python3 -m pip install --no-deps --no-build-isolation -e .` from the
checkout). Stages, in order, each in its own processes under its own timeout;
a stage that fails or times out is recorded and the next one still runs:

1. env: GPU, driver, torch, triton, CUDA, cuDNN, TF32 settings, FlashRNN, commit
   (environment.json).
2. native: the test files that run the compiled kernels
   (`NATIVE_TESTS`, with FASTLSTM_TEST_NATIVE=1) as `--shards` pytest
   processes at once, since compiling the kernels is most of its time
   (native-<i>.xml, native-<i>.log, tests.json).
3. barrier: the grid barrier's microbenchmark, bench/test_bench_barrier.py
   (barrier.json from pytest-benchmark, barrier.log).
4. profile: `fastlstm profile --device cuda --grid gpu --compile-workers
   <warmers>`, which compiles the Triton kernels (and FlashRNN's extension)
   of every shape in that many processes at once before it times anything
   (`warm.py`) (profile.json, profile.csv, profile-*.png in the profile's
   schema, results.json, warm.json, profile.log). Near its timeout the profile
   gets Ctrl-C, which keeps every row measured and plots them.

Everything goes to `--out`, by default bench/results/gpu-<date>-<commit>/ of the
checkout: that folder is what gets committed. summary.json says how each stage
ended; the exit status is 0 only if every stage passed.

`--dry` runs the same stages on the CPU, on a simulated H100
(FASTLSTM_SIMULATE_GPU=H100 under Triton's interpreter, unless the environment
names another GPU; see fastlstm.device), with tiny shapes (a few Triton tests,
the barrier benchmark for a few steps, the `gpu-dry` grid) and a temporary
folder by default: every stage takes its GPU paths, and CI runs it
(tests/test_gpu_check.py), so this command cannot rot between GPU runs.

Time on an H100-class GPU (estimates from the H200's figures, not yet
measured; the stage timeouts bound them):
- env: ~5 s.
- native: about 105 distinct Triton kernel variants (counted from the launch
  plans of the fixed cases, by dtype, batch tile, sizes of 1 or multiples of
  16, projection, packing, training, T=1 and mode; the property tests reuse
  them), one Inductor graph and two TorchScript fusions, at 2-4 s each: ~5
  minutes on one process, ~1.5-2 minutes on 4 (some variants compile in two
  shards).
- barrier: 6 benchmarks of ~1 s plus one compile: ~20 s.
- profile: 83 warm-up jobs (~180 kernel variants) on 14 processes, ~40-60 s;
  then the grid, ~3 minutes (`grids.gpu_time_estimate`).
About 6-7 minutes in all; the timeouts (30 + 200 + 50 + 280 s) cap it at 9m20s.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence

from ..device import SIMULATE_ENV
from .warm import REPO, start_logged, wait_all

# The tests whose cases run the compiled kernels on the GPU natively (the rest of
# the suite is CPU work, which CI does).
NATIVE_TESTS = ("tests/test_triton_backend.py", "tests/test_lstm_module.py::test_lstm_matches_torch_triton",
                "tests/test_lstm_module.py::test_dropout_on_the_device", "tests/test_gpu.py")
# Under --dry (the interpreter, in CI): a few cases of each, so that every part of
# the stage runs (shards, junit files, the summary, native-only skips).
DRY_TEST_FILTER = "tf32_off or some_inputs or dropout or test_gpu"

# Seconds per stage (each bounded; 560 s in all, so that the install and the
# whole command fit a 10-minute call on a lent GPU machine).
TIMEOUTS = {"env": 30, "native": 200, "barrier": 50, "profile": 280}
DRY_TIMEOUTS = {"env": 60, "native": 300, "barrier": 120, "profile": 300}
STAGES = ("env", "native", "barrier", "profile")


# ----------------------------------------------------------------------------
# Running a stage's processes
# ----------------------------------------------------------------------------


def _python() -> str:
    return sys.executable or "python3"


def _tail(path: str, lines: int = 12) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------
# Stage 1: the environment
# ----------------------------------------------------------------------------


def _version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_record() -> dict:
    """What the figures depend on: the GPU(s), driver, torch, triton, CUDA, cuDNN,
    the TF32 settings, FlashRNN, Python and the commit."""
    import torch

    from .. import device, precision
    from .env import git_commit

    rec = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "triton": _version("triton"),
        "cuda_runtime": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "flashrnn": _version("flashrnn"), "driver": None, "gpus": [],
        "simulated_gpu": device.simulated().name if device.simulated() is not None else None,
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if smi.returncode == 0 and smi.stdout.strip():
            rec["nvidia_smi"] = smi.stdout.strip().splitlines()
            rec["driver"] = rec["nvidia_smi"][0].split(",")[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    gpus = [device.gpu(f"cuda:{i}") for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else [device.simulated()] if device.simulated() is not None else []
    for g in gpus:
        p = g.properties
        rec["gpus"].append({"name": p.name, "capability": "{}.{}".format(*p.capability), "sm_count": p.sm_count,
                            "memory_bytes": p.total_memory, "smem_per_block_optin": p.smem_per_block})
    if gpus:
        rec["tf32"] = {"cudnn": precision.cudnn_tf32() if rec["triton"] else None,
                       "matmul": precision.matmul_tf32()}
    return rec


# ----------------------------------------------------------------------------
# Stage 2: the native suite
# ----------------------------------------------------------------------------


def _native(out: str, dry: bool, shards: int, timeout: float) -> dict:
    if not os.path.isdir(os.path.join(REPO, "tests")):
        return {"status": "failed", "note": f"no tests/ beside the package ({REPO}): run from a checkout "
                                            "installed with pip install -e ."}
    procs = []
    for i in range(shards):
        env = dict(os.environ, FASTLSTM_TEST_SHARD=f"{i}/{shards}", PYTHONUNBUFFERED="1")
        env.pop("TRITON_INTERPRET", None)
        if dry:
            env.pop("FASTLSTM_TEST_NATIVE", None)  # the interpreter (tests/conftest.py), on the simulated GPU
        else:
            env["FASTLSTM_TEST_NATIVE"] = "1"
            env.pop(SIMULATE_ENV, None)
        cmd = [_python(), "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
               f"--junitxml={os.path.join(out, f'native-{i}.xml')}", *NATIVE_TESTS]
        if dry:
            cmd += ["-k", DRY_TEST_FILTER]
        procs.append(start_logged(cmd, os.path.join(out, f"native-{i}.log"), env))
    clean = wait_all(procs, time.monotonic() + timeout)
    summary = junit_summary([os.path.join(out, f"native-{i}.xml") for i in range(shards)])
    summary["shards"] = [{"shard": f"{i}/{shards}", "returncode": p.returncode} for i, p in enumerate(procs)]
    _write_json(summary, os.path.join(out, "tests.json"))
    if not clean:
        summary.update(status="timeout", note=f"the native suite ran past {timeout:.0f} s")
    elif summary["failed"] or summary["errors"] or any(p.returncode not in (0,) for p in procs):
        summary.update(status="failed", note=f"{summary['failed']} failed, {summary['errors']} errors")
    elif not summary["passed"]:
        summary.update(status="failed", note="no test passed")
    else:
        summary.update(status="passed", note=f"{summary['passed']} passed, {summary['skipped']} skipped")
    return summary


def junit_summary(paths: Sequence[str]) -> dict:
    """Counts and the failures (test id and message) of pytest's junit files;
    a missing file (a shard that never finished) counts as one error."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "seconds": 0.0}
    failures, skips = [], {}
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as e:
            counts["errors"] += 1
            failures.append({"test": os.path.basename(path), "message": f"no junit file: {e}"})
            continue
        for case in root.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            counts["seconds"] += float(case.get("time") or 0)
            kinds = {child.tag: child for child in case}
            if "failure" in kinds or "error" in kinds:
                bad = kinds.get("failure", kinds.get("error"))
                counts["failed" if "failure" in kinds else "errors"] += 1
                failures.append({"test": name, "message": (bad.get("message") or "")[:500]})
            elif "skipped" in kinds:
                counts["skipped"] += 1
                reason = (kinds["skipped"].get("message") or "")[:200]
                skips[reason] = skips.get(reason, 0) + 1
            else:
                counts["passed"] += 1
    counts["seconds"] = round(counts["seconds"], 1)
    return dict(counts, failures=failures, skip_reasons=skips)


# ----------------------------------------------------------------------------
# Stage 3: the barrier microbenchmark
# ----------------------------------------------------------------------------


def _barrier(out: str, dry: bool, timeout: float) -> dict:
    cmd = [_python(), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "bench/test_bench_barrier.py",
           f"--junitxml={os.path.join(out, 'barrier.xml')}"]
    if dry:
        cmd.append("--benchmark-disable")
    else:
        cmd += ["--benchmark-only", f"--benchmark-json={os.path.join(out, 'barrier.json')}"]
    proc = start_logged(cmd, os.path.join(out, "barrier.log"), dict(os.environ, PYTHONUNBUFFERED="1"))
    clean = wait_all([proc], time.monotonic() + timeout)
    result = junit_summary([os.path.join(out, "barrier.xml")])
    try:
        with open(os.path.join(out, "barrier.json")) as f:
            result["us_per_step"] = {str(b["extra_info"].get("programs")): b["extra_info"].get("us_per_step")
                                     for b in json.load(f)["benchmarks"]}
    except (OSError, ValueError, KeyError):
        pass
    if not clean:
        result.update(status="timeout", note=f"ran past {timeout:.0f} s")
    elif proc.returncode != 0:
        result.update(status="failed", note=f"pytest exit status {proc.returncode}")
    else:
        result.update(status="passed", note=f"{result['passed']} timed, {result['skipped']} skipped")
    return result


# ----------------------------------------------------------------------------
# Stage 4: the profile, after a parallel warm-up of the compiled kernels
# ----------------------------------------------------------------------------


def _profile(out: str, dry: bool, warmers: int, timeout: float) -> dict:
    """`fastlstm profile --grid gpu` (gpu-dry under --dry), compiling its kernels
    in `warmers` processes first; Ctrl-C 20 s before the timeout keeps its rows."""
    start = time.monotonic()
    cmd = [_python(), "-m", "fastlstm", "profile", "--device", "cuda", "--grid", "gpu-dry" if dry else "gpu",
           "--out", out, "--results", os.path.join(out, "results.json"), "--compile-workers", str(warmers)]
    proc = start_logged(cmd, os.path.join(out, "profile.log"), dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="160"))
    clean = wait_all([proc], start + timeout, interrupt_before=20)
    result = {"returncode": proc.returncode}
    try:
        with open(os.path.join(out, "warm.json")) as f:
            warmed = json.load(f)
        warm_note = f"{len(warmed)} shapes compiled first, {sum(r['status'] == 'error' for r in warmed)} raised"
    except (OSError, ValueError):
        warm_note = "no warm.json"
    result["warm"] = warm_note
    try:
        with open(os.path.join(out, "profile.json")) as f:
            rows = json.load(f)
        counts: Dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        result["rows"] = counts
        result["bad_rows"] = [f"{r['backend']} {r['mode']} {r['dtype']} B={r['batch']} H={r['hidden']} "
                              f"T={r['seq_len']}: {r['note']}" for r in rows if r["status"] in ("failed", "error")][:20]
    except (OSError, ValueError) as e:
        result["rows"] = {}
        result["bad_rows"] = [f"no profile.json: {e}"]
    if not clean:
        result.update(status="timeout", note=f"{warm_note}; the profile ran past {timeout:.0f} s and was interrupted "
                                              f"(the rows measured are kept)")
    elif proc.returncode != 0:
        result.update(status="failed", note=f"{warm_note}; fastlstm profile exit status {proc.returncode}")
    else:
        result.update(status="passed", note=f"{warm_note}; {result['rows'].get('ok', 0)} rows timed")
    return result


# ----------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------


def _write_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def default_out(dry: bool) -> str:
    """bench/results/gpu-<date>-<commit>/ of the checkout (a new temporary folder under --dry)."""
    if dry:
        return tempfile.mkdtemp(prefix="fastlstm-gpu-check-dry-")
    from .env import git_commit

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return os.path.join(REPO, "bench", "results", f"gpu-{date}-{git_commit() or 'nocommit'}")


def run_stage(name: str, out: str, dry: bool, timeout: float, shards: int, warmers: int) -> dict:
    t0 = time.monotonic()
    try:
        if name == "env":
            proc = start_logged([_python(), "-m", "fastlstm.profile.gpu_check", "--env-only",
                           os.path.join(out, "environment.json")], os.path.join(out, "env.log"))
            clean = wait_all([proc], time.monotonic() + timeout)
            ok = clean and proc.returncode == 0
            if ok:
                with open(os.path.join(out, "environment.json")) as f:
                    rec = json.load(f)
                ok = bool(rec["gpus"]) and (dry or rec["cuda_available"])
            result = {"status": "passed" if ok else "timeout" if not clean else "failed",
                      "note": "" if ok else (("no simulated GPU" if dry else "no CUDA GPU seen by torch")
                                             if clean and proc.returncode == 0 else f"exit status {proc.returncode}")}
        elif name == "native":
            result = _native(out, dry, shards, timeout)
        elif name == "barrier":
            result = _barrier(out, dry, timeout)
        else:
            result = _profile(out, dry, warmers, timeout)
    except Exception as e:  # the driver itself broke in this stage: record it, go on
        result = {"status": "failed", "note": f"gpu_check: {type(e).__name__}: {e}"}
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["timeout_s"] = timeout
    return result


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m fastlstm.profile.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true", help="the same stages on the CPU, under the interpreter, tiny shapes")
    p.add_argument("--out", default=None, help="results folder (default bench/results/gpu-<date>-<commit>/; "
                                               "under --dry a temporary folder)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)} (default all)")
    p.add_argument("--timeouts", default=None, metavar="STAGE=S,...",
                   help="seconds per stage (default " + ",".join(f"{k}={v}" for k, v in TIMEOUTS.items()) + ")")
    p.add_argument("--shards", type=int, default=None, help="pytest processes for the native suite (default 4; dry 2)")
    p.add_argument("--warmers", type=int, default=None,
                   help="processes compiling the grid's kernels before the profile (default 14; dry 2)")
    p.add_argument("--env-only", metavar="FILE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.env_only:
        rec = environment_record()
        _write_json(rec, args.env_only)
        print(json.dumps(rec, indent=1, default=str))
        return 0

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        p.error(f"--stages: expected a comma list of {', '.join(STAGES)}, got {args.stages!r}")
    timeouts = dict(DRY_TIMEOUTS if args.dry else TIMEOUTS)
    for item in (args.timeouts or "").split(","):
        if item.strip():
            key, _, value = item.partition("=")
            try:
                if key not in TIMEOUTS or float(value) <= 0:
                    raise ValueError(item)
                timeouts[key] = float(value)
            except ValueError:
                p.error(f"--timeouts: expected STAGE=SECONDS items with STAGE one of {', '.join(STAGES)}, "
                        f"got {item!r}")
    shards = args.shards if args.shards is not None else 2 if args.dry else 4
    warmers = args.warmers if args.warmers is not None else 2 if args.dry else 14
    if shards < 1 or warmers < 1:
        p.error("--shards and --warmers must be at least 1")
    if args.dry:
        # Every stage's processes inherit the simulated GPU (and the interpreter it runs on).
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault(SIMULATE_ENV, "H100")
    out = os.path.abspath(args.out or default_out(args.dry))
    os.makedirs(out, exist_ok=True)
    summary = {"dry": args.dry, "out": out, "stages": {}}
    print(f"gpu-check{' (dry, on the CPU)' if args.dry else ''}: stages {', '.join(stages)}; writing to {out}",
          flush=True)
    t0 = time.monotonic()
    for name in stages:
        print(f"== {name} (timeout {timeouts[name]:.0f} s)", flush=True)
        result = run_stage(name, out, args.dry, timeouts[name], shards, warmers)
        summary["stages"][name] = result
        summary["seconds"] = round(time.monotonic() - t0, 1)
        summary["passed"] = all(r["status"] == "passed" for r in summary["stages"].values())
        _write_json(summary, os.path.join(out, "summary.json"))
        print(f"{name}: {result['status']} in {result['seconds']} s. {result.get('note', '')}", flush=True)
        for failure in result.get("failures", [])[:10]:
            print(f"  FAILED {failure['test']}: {failure['message'][:300]}", flush=True)
        for row in result.get("bad_rows", [])[:10]:
            print(f"  {row}", flush=True)
    print(f"gpu-check: {'all stages passed' if summary['passed'] else 'NOT all stages passed'} in "
          f"{summary['seconds']} s; results in {out} (summary.json)", flush=True)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
