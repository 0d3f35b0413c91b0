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
4. profile: Triton's kernels (and FlashRNN's extension) for every shape of the
   GPU grid compiled first by `--warmers` processes at once, into the disk
   caches the profile then reads; then `fastlstm profile --device cuda --grid
   gpu` (profile.json, profile.csv, profile-*.png in the profile's schema,
   results.json, profile.log, warm.json). Near its timeout the profile gets
   Ctrl-C, which keeps every row measured and plots them.

Everything goes to `--out`, by default bench/results/gpu-<date>-<commit>/ of the
checkout: that folder is what gets committed. summary.json says how each stage
ended; the exit status is 0 only if every stage passed.

`--dry` runs the same stages on the CPU under Triton's interpreter, with tiny
shapes (a few Triton tests, the barrier benchmark skipping itself off CUDA, the
`gpu-dry` grid) and a temporary folder by default: CI runs it
(tests/test_gpu_check.py), so this command cannot rot between GPU runs.

Time on an H100-class GPU (estimates, not yet measured; the stage timeouts
bound them): env ~5 s; native ~105 kernel variants at 2-4 s each, ~1.5-2 min on
4 processes; barrier ~20 s; warm-up ~170 kernel variants on 14 processes,
~40-60 s; profile ~3 min (`grids.gpu_time_estimate`). About 7-8 minutes in
all; the timeouts (30 + 200 + 60 + 290 s) cap it at 9m40s.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The test files whose cases run the compiled kernels on the GPU natively.
NATIVE_TESTS = ("tests/test_triton_backend.py", "tests/test_lstm_module.py", "tests/test_gpu.py")
# Under --dry (the interpreter, in CI): a few cases of each, so that every part of
# the stage runs (shards, junit files, the summary, native-only skips).
DRY_TEST_FILTER = "tf32_off or some_inputs or dropout or test_gpu"

# Seconds per stage (each bounded; 580 s in all, inside a 10-minute device call).
TIMEOUTS = {"env": 30, "native": 200, "barrier": 60, "profile": 290}
DRY_TIMEOUTS = {"env": 60, "native": 300, "barrier": 120, "profile": 300}
# The warm-up's share of the profile stage, at most.
WARM_SHARE = 0.4
STAGES = ("env", "native", "barrier", "profile")


# ----------------------------------------------------------------------------
# Running a stage's processes
# ----------------------------------------------------------------------------


def _python() -> str:
    return sys.executable or "python3"


def _start(cmd: Sequence[str], log: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """Start `cmd` in its own process group (so a timeout ends all of it), its
    output going to `log` as it comes."""
    f = open(log, "w")
    proc = subprocess.Popen(list(cmd), cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    proc.log_file = f  # closed by _wait
    return proc


def _wait(procs: List[subprocess.Popen], deadline: float, interrupt_before: float = 0.0) -> bool:
    """Wait for `procs` until `deadline` (time.monotonic()); past it, end them
    (their whole process groups). With `interrupt_before`, send Ctrl-C (SIGINT)
    that many seconds before the deadline first, so a profile keeps its rows.
    Returns False when anything had to be ended."""
    interrupted, clean = False, True
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if interrupt_before and not interrupted and now >= deadline - interrupt_before:
            for p in procs:
                _signal(p, signal.SIGINT)
            interrupted, clean = True, False
        if now >= deadline:
            for p in procs:
                _signal(p, signal.SIGKILL)
            clean = False
            break
        time.sleep(0.2)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        p.log_file.close()
    return clean


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


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

    from .. import precision
    from .env import git_commit

    rec = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "triton": _version("triton"),
        "cuda_runtime": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "flashrnn": _version("flashrnn"), "driver": None, "gpus": [],
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if smi.returncode == 0 and smi.stdout.strip():
            rec["nvidia_smi"] = smi.stdout.strip().splitlines()
            rec["driver"] = rec["nvidia_smi"][0].split(",")[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rec["gpus"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                "sm_count": p.multi_processor_count, "memory_bytes": p.total_memory,
                                "smem_per_block_optin": getattr(p, "shared_memory_per_block_optin", None)})
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
            env.pop("FASTLSTM_TEST_NATIVE", None)
        else:
            env["FASTLSTM_TEST_NATIVE"] = "1"
        cmd = [_python(), "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
               f"--junitxml={os.path.join(out, f'native-{i}.xml')}", *NATIVE_TESTS]
        if dry:
            cmd += ["-k", DRY_TEST_FILTER]
        procs.append(_start(cmd, os.path.join(out, f"native-{i}.log"), env))
    clean = _wait(procs, time.monotonic() + timeout)
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
    cmd += ["--benchmark-disable"] if dry else ["--benchmark-only", f"--benchmark-json={os.path.join(out, 'barrier.json')}"]
    proc = _start(cmd, os.path.join(out, "barrier.log"), dict(os.environ, PYTHONUNBUFFERED="1"))
    clean = _wait([proc], time.monotonic() + timeout)
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

# Backends whose compiled kernels outlive a process (Triton's cache on disk,
# FlashRNN's torch extension): worth compiling in parallel before the profile.
_CACHED = ("triton", "flashrnn")


def warm_jobs(grid: dict, dry: bool = False) -> List[Tuple]:
    """The calls that compile every kernel a grid's profile needs: (backend, dtype,
    batch, hidden, layers, bidirectional, packed, T), one per shape class. A Triton
    kernel does not depend on T beyond T=1 (one step runs without the barrier),
    so T is 1 and 2; FlashRNN is warmed at its sweep's own T. Under `dry`, jit
    stands in for Triton (on the CPU)."""
    cached = ("jit",) if dry else _CACHED
    jobs = []

    def add(backends, dtype, batch, hidden, seq_lens, layers=1, bidirectional=False, packed=False):
        for b in backends or ():
            if b not in cached:
                continue
            Ts = sorted(set(seq_lens)) if b == "flashrnn" else sorted({min(T, 2) for T in seq_lens})
            jobs.extend((b, dtype, batch, hidden, layers, bidirectional, packed, T) for T in Ts)

    for dtype in grid["dtype"]:
        for hidden in grid["hidden"]:
            for batch in grid["batch"]:
                add(grid["backends"], dtype, batch, hidden, grid["seq_lens"])
    for s in grid.get("extras", []):
        add(s.backends or (("jit",) if dry else _CACHED), s.dtype, s.batch, s.hidden, s.seq_lens, s.layers,
            s.bidirectional, s.packed)
    return list(dict.fromkeys(jobs))


def _shard_jobs(jobs: List[Tuple], n: int) -> List[List[Tuple]]:
    """Split jobs over n processes, keeping those likely to share a kernel (same
    backend, dtype, hidden, T, and batch class as Triton's plan sees it) together."""
    def key(job):
        b, dtype, batch, hidden, layers, bidir, packed, T = job
        return (b, dtype, hidden, T, 1 if batch == 1 else 16 if batch <= 16 else 32, layers, bidir, packed)

    groups: Dict[tuple, List[Tuple]] = {}
    for job in jobs:
        groups.setdefault(key(job), []).append(job)
    shards: List[List[Tuple]] = [[] for _ in range(max(1, n))]
    for group in sorted(groups.values(), key=len, reverse=True):
        min(shards, key=len).extend(group)
    return [s for s in shards if s]


def run_warm_jobs(jobs: List[Tuple], device: str) -> List[dict]:
    """Run each job once in inference and once in training (compiling what it
    needs); one record per job."""
    import torch

    from .models import DTYPES, build_model, unavailable_reason
    from .workloads import make_inputs, make_reference_module, make_step

    records = []
    dev = torch.device(device)
    for backend, dtype, batch, hidden, layers, bidir, packed, T in jobs:
        rec = dict(backend=backend, dtype=dtype, batch=batch, hidden=hidden, layers=layers, bidirectional=bidir,
                   packed=packed, seq_len=T)
        t0 = time.monotonic()
        try:
            ref = make_reference_module("layer", hidden, hidden, layers, DTYPES[dtype], dev, 0, bidir)
            why = unavailable_reason(backend, ref, dev, packed)
            if why:
                rec.update(status="skipped", note=why)
            else:
                model = build_model(backend, ref)
                for mode in ("infer", "train"):
                    x, grad_out = make_inputs(T, batch, ref, mode, 0, packed)
                    make_step(model, x, mode, grad_out)()
                rec.update(status="ok")
        except Exception as e:  # report, go on: the profile then shows the same error with its row
            rec.update(status="error", note=f"{type(e).__name__}: {e}"[:500])
        rec["seconds"] = round(time.monotonic() - t0, 2)
        records.append(rec)
        print(json.dumps(rec), flush=True)
    return records


def _profile(out: str, dry: bool, warmers: int, timeout: float) -> dict:
    from .cli import GRID_PRESETS

    grid_name = "gpu-dry" if dry else "gpu"
    device = "cpu" if dry else "cuda"
    start = time.monotonic()
    # 1. Compile in parallel.
    jobs = warm_jobs(GRID_PRESETS[grid_name], dry)
    shards = _shard_jobs(jobs, warmers)
    procs = []
    for i, shard in enumerate(shards):
        spec = os.path.join(out, f"warm-{i}.json")
        _write_json([list(j) for j in shard], spec)
        procs.append(_start([_python(), "-m", "fastlstm.profile.gpu_check", "--warm-jobs", spec, "--device", device],
                            os.path.join(out, f"warm-{i}.log"), dict(os.environ, PYTHONUNBUFFERED="1")))
    warm_clean = _wait(procs, start + WARM_SHARE * timeout)
    warmed = []
    for i in range(len(shards)):
        with open(os.path.join(out, f"warm-{i}.log"), errors="replace") as f:
            warmed += [json.loads(line) for line in f if line.startswith("{")]
        os.remove(os.path.join(out, f"warm-{i}.json"))
    _write_json(warmed, os.path.join(out, "warm.json"))
    for i in range(len(shards)):
        os.remove(os.path.join(out, f"warm-{i}.log"))
    warm_note = (f"warm-up: {len(warmed)} of {len(jobs)} shape classes in {len(shards)} processes, "
                 f"{time.monotonic() - start:.0f} s" + ("" if warm_clean else " (stopped at its time share)"))
    # 2. The profile itself, with what is left.
    cmd = [_python(), "-m", "fastlstm", "profile", "--device", device, "--grid", grid_name, "--out", out,
           "--results", os.path.join(out, "results.json")]
    if dry:
        cmd.append("--no-memory")
    proc = _start(cmd, os.path.join(out, "profile.log"), dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="160"))
    clean = _wait([proc], start + timeout, interrupt_before=20)
    result = {"warm": warm_note, "returncode": proc.returncode}
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
            proc = _start([_python(), "-m", "fastlstm.profile.gpu_check", "--env-only",
                           os.path.join(out, "environment.json")], os.path.join(out, "env.log"))
            clean = _wait([proc], time.monotonic() + timeout)
            ok = clean and proc.returncode == 0
            if ok and not dry:
                with open(os.path.join(out, "environment.json")) as f:
                    if not json.load(f)["cuda_available"]:
                        ok = False
            result = {"status": "passed" if ok else "timeout" if not clean else "failed",
                      "note": "" if ok else ("no CUDA GPU seen by torch" if clean and proc.returncode == 0
                                             else f"exit status {proc.returncode}")}
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
    p.add_argument("--warm-jobs", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.env_only:
        rec = environment_record()
        _write_json(rec, args.env_only)
        print(json.dumps(rec, indent=1, default=str))
        return 0
    if args.warm_jobs:
        with open(args.warm_jobs) as f:
            run_warm_jobs([tuple(j) for j in json.load(f)], args.device)
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
