"""Compile a profile's kernels before it is timed, in several processes at once.

Triton compiles a kernel variant in 2-4 s on an H100 host, on one CPU core;
the GPU grid needs many of them (dtype x hidden size x batch tile x
T=1 or longer x forward, forward-for-training and backward, plus the
bidirectional and packed sweeps: about 180). Compiled one after another inside the
profile that would be ~8 minutes; Triton keeps what it compiles in its disk
cache (as FlashRNN's torch extension does in its own), so `warm_in_parallel`
compiles them first in many processes, each running one call per shape
class, and the profile then only loads them. (The profile still warms every
backend itself before timing it: this only moves the compiling off its
critical path.)

    python3 -m fastlstm.profile.warm JOBS.json --device cuda   # one warm-up process
"""
import json
import os
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Backends whose compiled kernels outlive a process (Triton's cache on disk,
# FlashRNN's torch extension): worth compiling in other processes first.
CACHED = ("triton", "flashrnn")

# A FlashRNN job counts as this many Triton ones when sharing out the jobs.
_FLASHRNN_COST = 20

# (backend, dtype, batch, hidden, layers, bidirectional, packed, T)
Job = Tuple[str, str, int, int, int, bool, bool, int]


# ----------------------------------------------------------------------------
# Processes with a log and a deadline
# ----------------------------------------------------------------------------


def start_logged(cmd: Sequence[str], log: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """Start `cmd` (in the checkout) in its own process group, so that a timeout
    ends all of it, its output going to the file `log` as it comes."""
    f = open(log, "w")
    proc = subprocess.Popen(list(cmd), cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    proc.log_file = f  # closed by wait_all
    return proc


def wait_all(procs: List[subprocess.Popen], deadline: float, interrupt_before: float = 0.0) -> bool:
    """Wait for `procs` until `deadline` (time.monotonic()); past it, end them
    (their whole process groups). With `interrupt_before`, send Ctrl-C (SIGINT)
    that many seconds before the deadline first, so that a profile keeps and
    plots its rows. Returns False when anything had to be stopped."""
    import signal

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


# ----------------------------------------------------------------------------
# The jobs
# ----------------------------------------------------------------------------


def warm_jobs(dtypes: Iterable[str], hiddens: Iterable[int], batches: Iterable[int], seq_lens: Iterable[int],
              backends: Iterable[str], extras: Iterable = (), stand_in: Optional[str] = None, layers: int = 1,
              bidirectional: bool = False, packed: bool = False) -> List[Job]:
    """The calls that compile every kernel a profile needs, one per shape class:
    the main sweep (every dtype x hidden x batch, `backends`, `layers`,
    `bidirectional`, `packed`) and the `extras`
    (`grids.Sweep`s; one naming no backends means the device's defaults). A
    Triton kernel does not depend on T beyond T=1 (a single step runs without
    the barrier), so its T is 1 and 2; FlashRNN is warmed at its sweep's own T.
    `stand_in` (the CPU rehearsal's "jit") replaces the cached backends."""
    cached = (stand_in,) if stand_in else CACHED
    seq_lens = list(seq_lens)
    jobs: List[Job] = []

    def add(names, dtype, batch, hidden, Ts, layers=1, bidirectional=False, packed=False):
        for b in names:
            b = stand_in if stand_in and b in CACHED else b
            if b not in cached:
                continue
            for T in (sorted(set(Ts)) if b == "flashrnn" else sorted({min(T, 2) for T in Ts})):
                jobs.append((b, dtype, batch, hidden, layers, bidirectional, packed, T))

    for dtype in dtypes:
        for hidden in hiddens:
            for batch in batches:
                add(backends, dtype, batch, hidden, seq_lens, layers, bidirectional, packed)
    for s in extras:
        add(s.backends or CACHED, s.dtype, s.batch, s.hidden, s.seq_lens, s.layers, s.bidirectional, s.packed)
    return list(dict.fromkeys(jobs))


def shard_jobs(jobs: List[Job], n: int) -> List[List[Job]]:
    """Split `jobs` over up to n processes, keeping together those likely to share
    a kernel (same backend, dtype, hidden size, T, layout, and batch tile as
    Triton's plan sees it: 1, up to 16, more)."""
    def key(job: Job):
        b, dtype, batch, hidden, layers, bidir, packed, T = job
        return (b, dtype, hidden, T, 1 if batch == 1 else 16 if batch <= 16 else 32, layers, bidir, packed)

    def cost(group: List[Job]) -> int:
        # FlashRNN builds a CUDA extension with nvcc (a minute or more): its own process.
        return sum(_FLASHRNN_COST if job[0] == "flashrnn" else 1 for job in group)

    groups: Dict[tuple, List[Job]] = {}
    for job in jobs:
        groups.setdefault(key(job), []).append(job)
    shards: List[List[Job]] = [[] for _ in range(max(1, n))]
    for group in sorted(groups.values(), key=cost, reverse=True):
        min(shards, key=cost).extend(group)
    return [s for s in shards if s]


def run_jobs(jobs: Iterable[Job], device: str) -> List[dict]:
    """Run each job once in inference and once in training (compiling what it
    needs), printing one JSON record per job as it ends."""
    from ..device import resolve
    from .models import DTYPES, build_model, unavailable_reason
    from .workloads import make_inputs, make_reference_module, make_step

    records = []
    dev = resolve(device)  # "cuda" names the CPU a simulated GPU stands on (fastlstm.device)
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
        except Exception as e:  # report and go on: the profile shows the same error in its row
            rec.update(status="error", note=f"{type(e).__name__}: {e}"[:500])
        rec["seconds"] = round(time.monotonic() - t0, 2)
        records.append(rec)
        print(json.dumps(rec), flush=True)
    return records


def warm_in_parallel(jobs: List[Job], device: str, workers: int, timeout: float, folder: str) -> List[dict]:
    """Run `jobs` in up to `workers` processes at once (job lists and logs in
    `folder`, removed after), each stopped at `timeout` seconds; returns the
    records of the jobs that ended."""
    shards = shard_jobs(jobs, workers)
    procs, specs, logs = [], [], []
    for i, shard in enumerate(shards):
        spec, log = os.path.join(folder, f".warm-{i}.json"), os.path.join(folder, f".warm-{i}.log")
        with open(spec, "w") as f:
            json.dump([list(j) for j in shard], f)
        specs.append(spec)
        logs.append(log)
        procs.append(start_logged([sys.executable or "python3", "-m", "fastlstm.profile.warm", spec,
                                   "--device", device], log, dict(os.environ, PYTHONUNBUFFERED="1")))
    wait_all(procs, time.monotonic() + timeout)
    records = []
    for spec, log in zip(specs, logs):
        with open(log, errors="replace") as f:
            records += [json.loads(line) for line in f if line.startswith("{")]
        os.remove(spec)
        os.remove(log)
    return records


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python3 -m fastlstm.profile.warm", description=__doc__.split("\n\n")[0])
    p.add_argument("jobs", help="a JSON list of jobs: [backend, dtype, batch, hidden, layers, bidirectional, "
                                "packed, T]")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    with open(args.jobs) as f:
        run_jobs([tuple(j) for j in json.load(f)], args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
