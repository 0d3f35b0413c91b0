"""`fastlstm profile`: the command line.

Three sizes of run, each flag given on the command line winning over them:
- the default: fastlstm's backends for the device against nn.LSTM and the two
  baselines, B in 1, 32, T in 16, 64, 256, 1024, 5 interleaved repeats, the slow
  loops up to T=64, the layer workload (97 s measured on two idle CPU cores);
- `--quick`: T in 16, 64, 2 repeats, the slow loops at T=16 only;
- `--full`: T to 1024, 7 repeats, the slow loops to T=1024, B in 1, 8, 32 and
  both workloads (layer and cell).
On CUDA the default is the GPU grid instead (`--grid gpu`, see `grids.py`).
"""
import argparse
import importlib.util
import json
import os
import time
from typing import Callable, Dict, List

import torch
from torch import nn

from ..device import gpu
from .env import LoadMonitor, busy, cores_in_use, device_name
from .files import RESULT_FIELDS, ProfileFiles, baseline_name, write_results
from .grids import GPU_AXES, GPU_BACKENDS, GPU_DRY_AXES, GPU_DRY_BACKENDS, GPU_DRY_EXTRAS, GPU_EXTRAS, GPU_REPEATS, \
    Sweep
from .models import DTYPES, KNOWN_BACKENDS, SLOW_BACKENDS, default_backends, resolve_device
from .plot import plot
from .progress import ProgressLine, profile_plan
from .report import print_report
from .run import count_work, run_profile
from .warm import warm_in_parallel, warm_jobs
from .workloads import WORKLOADS, backends_for, workload_unavailable_reason

DEFAULT_OUT = "profile-out"
# Each size of run has its own default folder, so a --quick run never overwrites
# the default run's files (nor --full's).
DEFAULT_OUTS = {"default": DEFAULT_OUT, "quick": f"{DEFAULT_OUT}-quick", "full": f"{DEFAULT_OUT}-full"}
DEFAULT_INPUT = 128
DEFAULT_HIDDEN = 256
# What each size of run measures unless a flag says otherwise.
PRESETS = {
    "quick": dict(seq_lens=[16, 64], repeats=2, slow_max_seq_len=16, batch=[32], workload=["layer"]),
    "default": dict(seq_lens=[16, 64, 256, 1024], repeats=5, slow_max_seq_len=64, batch=[1, 32], workload=["layer"]),
    "full": dict(seq_lens=[16, 64, 256, 1024], repeats=7, slow_max_seq_len=1024, batch=[1, 8, 32],
                 workload=["layer", "cell"]),
}
# `--grid` presets: the axes they set (a given --seq-lens wins over a preset's).
GRID_AXES = ("batch", "hidden", "dtype")
# A preset may also set the repeats, the backends (unless --backends is given)
# and extra sweeps (see grids.py).
GRID_PRESETS = {
    "gpu": dict(GPU_AXES, repeats=GPU_REPEATS, backends=list(GPU_BACKENDS), extras=list(GPU_EXTRAS)),
    "gpu-dry": dict(GPU_DRY_AXES, repeats=1, backends=list(GPU_DRY_BACKENDS), extras=list(GPU_DRY_EXTRAS)),
}
_DTYPE_ALIASES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}
# The parallel compile before a grid's profile stops after this long; what is
# left compiles inside the profile (still before timing).
WARM_TIMEOUT_S = 180
_PREFIX = "fastlstm profile"


def _positive_ints(text: str, sep: str = ",") -> List[int]:
    values = [int(v) for v in text.split(sep) if v.strip()]  # ValueError on a non-integer
    if not values or any(v <= 0 for v in values):
        raise ValueError(text)
    return values


def _int_list() -> Callable:
    def parse(text: str) -> List[int]:
        try:
            return _positive_ints(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return parse


def _count(minimum: int = 1) -> Callable:
    """An argparse type: an integer of at least `minimum` (argparse names the flag in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


def _workloads(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names or any(n not in WORKLOADS for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(WORKLOADS)}, got {text!r}")
    return list(dict.fromkeys(names))


def _grid(text: str) -> Dict[str, list]:
    """--grid: a comma list of preset names and AXIS=V1/V2/... items (AXIS in GRID_AXES),
    later items overriding earlier ones, e.g. "gpu" or "batch=1/16,hidden=256,dtype=bf16/fp32"."""
    grid: Dict[str, list] = {}
    for item in (v.strip() for v in text.split(",")):
        if item in GRID_PRESETS:
            grid.update(GRID_PRESETS[item])
            continue
        axis, _, values = item.partition("=")
        try:
            if axis not in GRID_AXES:
                raise ValueError(item)
            if axis == "dtype":
                grid[axis] = [_DTYPE_ALIASES.get(v, v) for v in values.split("/")]
                if any(v not in DTYPES for v in grid[axis]):
                    raise ValueError(item)
            else:
                grid[axis] = _positive_ints(values, "/")
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma list of presets ({', '.join(GRID_PRESETS)}) and AXIS=V1/V2/... "
                f"with AXIS one of {', '.join(GRID_AXES)}, got {text!r} (bad item {item!r})")
    return grid


def _name_list(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in KNOWN_BACKENDS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(KNOWN_BACKENDS)}, got {text!r}")
    return names


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `fastlstm profile` on an argparse subparsers object.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> _ = add_parser(sub)
    """
    d, q, f = PRESETS["default"], PRESETS["quick"], PRESETS["full"]

    def preset_help(key, fmt=lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v)):
        return f"default {fmt(d[key])}; --quick: {fmt(q[key])}; --full: {fmt(f[key])}"

    p = subparsers.add_parser(
        "profile",
        help="time fastlstm's backends against torch.nn.LSTM and baselines over sequence lengths",
        description=(
            "Sweep sequence lengths for fastlstm's backends and the baselines (torch.nn.LSTM, a "
            "tutorial-style loop, a scripted cell loop), interleaving them so ratios are fair on a "
            "noisy machine. Each backend is checked against a float64 nn.LSTM before it is timed. "
            "Writes profile.json and profile.csv to --out as rows are measured (Ctrl-C keeps them), "
            "and profile.png at the end. The default run takes about two minutes on two idle CPU "
            "cores; --full measures more (each flag below says what each size of run sets it to). With "
            "--grid, the sweep repeats for every batch x hidden x dtype (one PNG per dtype x hidden), and "
            "--results writes one compact row per fastlstm backend x shape x mode with its interleaved "
            "nn.LSTM baseline."
        ),
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a short run: under a minute on 2 idle CPU cores")
    size.add_argument("--full", action="store_true",
                      help="the full profile: T to 1024, 7 repeats, slow loops to T=1024, B in 1, 8, 32, layer "
                           "and cell workloads (many times the default's two minutes)")
    p.add_argument("--batch", type=_int_list(), default=None,
                   help="comma list of batch sizes B, one sweep each (" + preset_help("batch") + ")")
    p.add_argument("--workload", type=_workloads, default=None,
                   help="comma list of layer (one nn.LSTM call on the sequence) and cell (an LSTMCell stepped "
                        "over it in a Python loop, against nn.LSTMCell) (" + preset_help("workload") + ")")
    p.add_argument("--input", type=_count(), default=None,
                   help=f"input size I (default {DEFAULT_INPUT}; with --grid: the hidden size)")
    p.add_argument("--hidden", type=_count(), default=DEFAULT_HIDDEN,
                   help=f"hidden size H (default {DEFAULT_HIDDEN})")
    p.add_argument("--layers", type=_count(), default=1, help="stacked layers (default 1)")
    p.add_argument("--bidirectional", action="store_true", help="a bidirectional nn.LSTM (layer workload)")
    p.add_argument("--packed", action="store_true",
                   help="packed input: a PackedSequence of sequences from T down to T/2 long, unsorted "
                        "(layer workload)")
    p.add_argument("--seq-lens", type=_int_list(), default=None,
                   help="comma list of T (" + preset_help("seq_lens") + ")")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--mode", choices=["infer", "train", "both"], default="both",
                   help="infer: forward under no_grad; train: forward + backward (default both)")
    p.add_argument("--backends", type=_name_list, default=None,
                   help="comma list of " + ", ".join(KNOWN_BACKENDS) +
                        " (default: fastlstm's fast backends for the device, and the baselines)")
    p.add_argument("--repeats", type=_count(), default=None,
                   help="timed runs per backend and shape (" + preset_help("repeats") + ")")
    p.add_argument("--slow-max-seq-len", type=_count(0), default=None,
                   help=f"longest T for the slow loops ({', '.join(SLOW_BACKENDS)}); 0: no cap "
                        "(" + preset_help("slow_max_seq_len") + ")")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--compile-workers", type=_count(0), default=None, metavar="N",
                   help="compile the Triton (and FlashRNN) kernels of every shape first, in N processes at once, "
                        "into their disk caches (default on CUDA with --grid: CPU cores - 2, at most 14; else 0: "
                        "each backend compiles in the run, before it is timed). On the CPU, jit stands in (a "
                        "rehearsal: its compiles are not cached)")
    p.add_argument("--threads", type=_count(), default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help=f"output folder; files there are overwritten (default {DEFAULT_OUTS['default']}/; --quick: "
                        f"{DEFAULT_OUTS['quick']}/; --full: {DEFAULT_OUTS['full']}/)")
    preset = ", ".join(f"{name}: batch {'/'.join(map(str, g['batch']))}, hidden {'/'.join(map(str, g['hidden']))}, "
                       f"dtype {'/'.join(g['dtype'])}, T {','.join(map(str, g['seq_lens']))}, "
                       f"{g['repeats']} repeats, backends {','.join(g['backends'])}, plus "
                       + "/".join(dict.fromkeys(e.tag for e in g["extras"])) + " sweeps"
                       for name, g in GRID_PRESETS.items())
    p.add_argument("--grid", type=_grid, default=None, metavar="SPEC",
                   help="sweep batch x hidden x dtype, --seq-lens giving T: a comma list of presets and "
                        "AXIS=V1/V2/... (AXIS: batch, hidden, dtype; dtype also bf16, fp32, fp16, fp64), later "
                        "items winning, e.g. 'gpu' or 'batch=1/16,hidden=256/768,dtype=bf16/fp32'; axes left out "
                        f"come from --batch, --hidden, --dtype; the input size is the hidden size unless --input "
                        f"is given. Preset {preset} (its T, repeats and backends only where --seq-lens, --repeats "
                        f"and --backends are not given; the default on CUDA)")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="also write FILE, a JSON list with one row per fastlstm backend x shape x mode of the "
                        "layer workload: " + ", ".join(RESULT_FIELDS) + " (device: GPU/CPU name; baseline: "
                        "nn.LSTM's library, cudnn on CUDA, onednn on CPU, timed interleaved in the same run; "
                        "speedup = baseline_ms / ms). Rows that failed the answer check are left out (the command "
                        "then exits non-zero); rows of an existing FILE for other shapes or backends are kept")
    p.set_defaults(func=_run_cli)
    return p


def _fail(message: str) -> SystemExit:
    """A one-line error on stderr and exit status 2."""
    import sys

    print(f"{_PREFIX}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def _gpu_default(args) -> bool:
    """The GPU grid is the default on CUDA: no size, grid or shape flag given."""
    if args.full or args.quick or args.grid is not None or args.batch or args.seq_lens:
        return False
    try:
        return gpu(resolve_device(args.device)) is not None
    except ValueError:
        return False  # _prepare reports it


def _settings(args) -> dict:
    """The run's settings: flags first, then --grid, then the size's preset."""
    name = "full" if args.full else "quick" if args.quick else "default"
    if _gpu_default(args):
        args.grid = _grid("gpu")
    preset, grid = PRESETS[name], args.grid or {}
    slow = args.slow_max_seq_len if args.slow_max_seq_len is not None else preset["slow_max_seq_len"]
    return dict(
        size=name,
        seq_lens=args.seq_lens or grid.get("seq_lens") or list(preset["seq_lens"]),
        repeats=args.repeats or grid.get("repeats") or preset["repeats"],
        backends=args.backends or grid.get("backends"),
        extras=[] if args.workload == ["cell"] else list(grid.get("extras", [])),
        slow_max_seq_len=slow,
        batches=grid.get("batch") or args.batch or list(preset["batch"]),
        workloads=args.workload or list(preset["workload"]),
        dtypes=grid.get("dtype", [args.dtype]),
        hiddens=grid.get("hidden", [args.hidden]),
        modes=["infer", "train"] if args.mode == "both" else [args.mode],
    )


def _check_backends(asked: List[str], workloads: List[str], layers: int, device: torch.device) -> None:
    """Refuse a request whose every backend (other than nn.LSTM, always timed) cannot run."""
    wanted = [n for n in asked if n != "torch"]
    if not wanted:
        return
    ref = nn.LSTM(1, 1, num_layers=layers, device="meta")
    reasons = {}
    for name in wanted:
        why = [workload_unavailable_reason(w, name, ref, device) for w in workloads]
        if all(why):
            reasons[name] = why[0]
        else:
            return
    raise _fail("none of the backends asked for can run here: "
                + "; ".join(f"{name}: {why}" for name, why in reasons.items()))


def _run_cli(args) -> int:
    st = _settings(args)
    if args.out is None:
        args.out = DEFAULT_OUTS[st["size"]]
    device, asked, files = _prepare(args, st)
    names = asked + ([] if "torch" in asked else ["torch"])
    threads = torch.get_num_threads()
    can_plot = importlib.util.find_spec("matplotlib") is not None
    memory_on_cpu = not args.no_memory and device.type == "cpu"
    # One sweep per (dtype, hidden, workload, batch); one plot per (dtype, hidden).
    groups = [(dtype, hidden) for dtype in st["dtypes"] for hidden in st["hiddens"]]
    shapes = [(dtype, hidden, workload, batch) for dtype, hidden in groups
              for workload in st["workloads"] for batch in st["batches"]]
    extras = [(sweep, _sweep_backends(sweep, device)) for sweep in st["extras"]]
    total_rows = sum(len(st["modes"]) * len(st["seq_lens"]) * len(backends_for(w, names)) for _, _, w, _ in shapes)
    total_rows += sum(len(st["modes"]) * len(sweep.seq_lens) * len(n) for sweep, n in extras)
    total_work = sum(count_work(st["modes"], st["seq_lens"], b, len(backends_for(w, names)), st["repeats"],
                                memory_on_cpu) for _, _, w, b in shapes)
    total_work += sum(count_work(st["modes"], sweep.seq_lens, sweep.batch, len(n), st["repeats"], memory_on_cpu)
                      for sweep, n in extras)
    # What others use now, before this run starts its threads.
    busy_before = cores_in_use()
    if busy_before is None:
        busy_before = LoadMonitor().sample()
    print(f"{_PREFIX} ({st['size']}): {', '.join(st['workloads'])} workload; B in {st['batches']}; "
          f"H in {st['hiddens']}; {', '.join(st['dtypes'])}; L={args.layers}; on {device} ({device_name(device)}, "
          f"{threads} threads); T in {st['seq_lens']}; {', '.join(st['modes'])}; backends {', '.join(names)}; "
          f"{st['repeats']} interleaved repeats; slow loops up to T={st['slow_max_seq_len'] or 'any'}; "
          + (f"after {len(extras)} extra sweeps ({', '.join(dict.fromkeys(s.tag for s, _ in extras))}); "
             if extras else "") + f"{total_rows} rows; writing to {args.out}/", flush=True)
    if device.type == "cpu" and threads > 1 and busy_before is not None and busy_before >= 0.5:
        print(f"warning: the CPU is busy ({busy_before:.2f} cores in use); with {threads} torch threads on "
              f"{os.cpu_count()} cores times may be inflated many-fold; try --threads 1", flush=True)
    if not can_plot:
        print("matplotlib is not installed: no profile.png (pip install 'fastlstm[profile]')", flush=True)

    _compile_first(args, st, device, names, extras)
    pngs: List[str] = []
    with LoadMonitor() as load:
        try:
            # The per-group estimate knows the main sweep's groups; with extra
            # sweeps in front of them it falls back to the work-weighted one.
            plan = None if extras else profile_plan(shapes, st["modes"], st["seq_lens"], names,
                                                    st["slow_max_seq_len"])
            with ProgressLine(total_rows, total_work, plan=plan) as bar:
                # The extra sweeps first: few and short, and some (FlashRNN beside
                # Triton and cuDNN) are measured nowhere else.
                for sweep, sweep_names in extras:
                    rows = run_profile(
                        batch=sweep.batch, input_size=args.input or sweep.hidden, hidden_size=sweep.hidden,
                        layers=sweep.layers, bidirectional=sweep.bidirectional, packed=sweep.packed,
                        seq_lens=list(sweep.seq_lens), dtype=DTYPES[sweep.dtype], device=str(device),
                        modes=st["modes"], backends=sweep_names, repeats=st["repeats"],
                        slow_max_seq_len=st["slow_max_seq_len"] or None, memory=not args.no_memory, seed=args.seed,
                        workload="layer", on_rows=files.add, progress=bar.update, load=load)
                    print_report(rows)
                    if can_plot:
                        pngs.append(plot(rows, os.path.join(args.out, f"profile-{sweep.tag}-{sweep.dtype}.png")))
                for dtype, hidden in groups:
                    group_rows: List[dict] = []
                    for _, _, workload, batch in [s for s in shapes if s[:2] == (dtype, hidden)]:
                        rows = run_profile(
                            batch=batch, input_size=args.input or (hidden if args.grid else DEFAULT_INPUT),
                            hidden_size=hidden, layers=args.layers, bidirectional=args.bidirectional,
                            packed=args.packed, seq_lens=st["seq_lens"], dtype=DTYPES[dtype],
                            device=str(device), modes=st["modes"], backends=names, repeats=st["repeats"],
                            slow_max_seq_len=st["slow_max_seq_len"] or None, memory=not args.no_memory,
                            seed=args.seed, workload=workload, on_rows=files.add, progress=bar.update, load=load)
                        print_report(rows)
                        group_rows += rows
                    if can_plot:
                        pngs.append(plot(group_rows, _png_path(args.out, groups, dtype, hidden)))
        except KeyboardInterrupt:
            return _interrupted(files, can_plot, groups, args.out)
    load_note = _load_note(device, busy_before, load.run_max, threads)
    return _summarize(args, st, device, asked, files, pngs, load_note)


def _prepare(args, st: dict):
    """Check what can be checked before measuring: (device, backends asked for, ProfileFiles);
    a one-line error otherwise."""
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise _fail(f"--{e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if "cell" in st["workloads"] and args.layers != 1:
        raise _fail(f"--workload cell steps one LSTMCell; --layers must be 1, got {args.layers}")
    if "cell" in st["workloads"] and (args.bidirectional or args.packed):
        raise _fail("--workload cell steps one LSTMCell in one direction on a tensor: --bidirectional and "
                    "--packed are for the layer workload")
    asked = st["backends"] or default_backends(device)
    _check_backends(asked, st["workloads"], args.layers, device)
    if args.results:
        folder = os.path.dirname(os.path.abspath(args.results))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise _fail(f"--results {args.results}: cannot write there ({e.strerror or e})")
        if os.path.isdir(args.results) or not os.access(folder, os.W_OK):
            raise _fail(f"--results {args.results}: cannot write there (a folder, or not writable)")
    try:
        files = ProfileFiles(args.out)
    except OSError as e:
        raise _fail(f"--out {args.out}: cannot write there ({e.strerror or e})")
    return device, asked, files


def _compile_first(args, st: dict, device: torch.device, names: List[str], extras) -> None:
    """--compile-workers: the kernels of every shape compiled in parallel processes
    (see warm.py); their records go to warm.json in --out."""
    workers = args.compile_workers
    if workers is None:
        workers = min(14, max(1, (os.cpu_count() or 1) - 2)) if gpu(device) is not None and args.grid else 0
    if workers <= 0:
        return
    if "layer" not in st["workloads"]:
        return
    jobs = warm_jobs(st["dtypes"], st["hiddens"], st["batches"], st["seq_lens"], names,
                     [sweep for sweep, _ in extras], stand_in=None if gpu(device) is not None else "jit",
                     layers=args.layers, bidirectional=args.bidirectional, packed=args.packed)
    if not jobs:
        return
    print(f"compiling the kernels of {len(jobs)} shapes in {min(workers, len(jobs))} processes first "
          f"(at most {WARM_TIMEOUT_S} s)...", flush=True)
    t0 = time.monotonic()
    records = warm_in_parallel(jobs, str(device), workers, WARM_TIMEOUT_S, args.out)
    with open(os.path.join(args.out, "warm.json"), "w") as f:
        json.dump(records, f, indent=1)
    bad = [r for r in records if r["status"] == "error"]
    print(f"compiled: {len(records)} of {len(jobs)} shapes in {time.monotonic() - t0:.0f} s"
          + (f"; {len(bad)} raised (their rows will say why)" if bad else ""), flush=True)


def _sweep_backends(sweep: Sweep, device: torch.device) -> List[str]:
    """An extra sweep's backends (the device's defaults where it names none), nn.LSTM included."""
    names = list(sweep.backends) if sweep.backends else default_backends(device)
    return names + ([] if "torch" in names else ["torch"])


def _png_path(out: str, groups: list, dtype: str, hidden: int) -> str:
    return os.path.join(out, "profile.png" if len(groups) == 1 else f"profile-{dtype}-H{hidden}.png")


def _load_note(device: torch.device, before, run_max, threads: int) -> str:
    """A line on the load: whether others ran before (`before`: cores in use) or during the run."""
    if (gpu(device) is None and before is not None and before >= 0.5) or busy(run_max, threads):
        said = [f"{before:.2f} cores in use before the run" if before is not None else "",
                f"a load average of at most {run_max:.2f} during it" if run_max is not None else ""]
        return (f"The machine was busy: {' and '.join(w for w in said if w)}, with {threads} torch threads on "
                f"{os.cpu_count()} cores; times may be inflated (rows record load_avg_1m and load_avg_1m_max); "
                "rerun on an idle machine, or with --threads 1.")
    if run_max is None:
        return ""
    return f"Load average at most {run_max:.2f} during the run ({threads} torch threads, {os.cpu_count()} cores)."


def _summarize(args, st: dict, device: torch.device, asked: List[str], files: ProfileFiles, pngs: List[str],
               load_note: str) -> int:
    """The lines after the tables, --results, and the exit status."""
    rows = files.rows
    paths = [files.json_path, files.csv_path] + (pngs if len(pngs) <= 3 else [os.path.join(args.out, "profile-*.png")])
    bad = [r for r in rows if r["status"] in ("failed", "error")]
    written = None
    if args.results:
        try:
            written = write_results(rows, args.results, baseline_name(device))
        except (OSError, ValueError) as e:  # gone meanwhile, or an existing file that is not a JSON list
            raise _fail(f"--results {args.results}: could not update it ({e}); the rows are in {files.json_path}")
        paths.append(f"{args.results} ({written} rows)")
    print("Peak memory: growth during one call over what was in use before it "
          + ("(torch.cuda.max_memory_allocated; on a simulated GPU the tensors alive at once)."
             if gpu(device) is not None else
             "(peak resident set of a subprocess, glibc returning freed memory; see fastlstm/profile/memory.py)."))
    print("Times are medians of interleaved runs; on a shared machine read the ratios, not the absolutes.")
    print("Wrote " + ", ".join(paths))
    if load_note:
        print(load_note)
    if st["size"] != "full":
        print(f"This was the {st['size']} profile. The full one (many times longer): fastlstm profile "
              "--full, i.e. --seq-lens 16,64,256,1024 --repeats 7 --slow-max-seq-len 1024 --batch 1,8,32 "
              "--workload layer,cell; each flag can also be given alone.")
    if bad:
        print(f"{len(bad)} row(s) failed or raised (left out of --results): " + "; ".join(
            f"{r['workload']} {r['backend']} {r['mode']} {r['dtype']} B={r['batch']} H={r['hidden']} "
            f"T={r['seq_len']}: {r['note']}" for r in bad[:10]) + (" ..." if len(bad) > 10 else ""))
    if written == 0:
        print(f"--results: no fastlstm backend passed, so {args.results} got no rows")
    wanted = [n for n in asked if n != "torch"]
    if wanted and not any(r["backend"] in wanted and r["status"] == "ok" for r in rows):
        print(f"{_PREFIX}: error: no backend asked for was timed ({', '.join(wanted)}): every row was skipped "
              "or failed")
        return 1
    return 1 if bad or written == 0 else 0


def _interrupted(files: ProfileFiles, can_plot: bool, groups, out: str) -> int:
    """Ctrl-C: the rows measured are already in the files; add a plot of them, say where, exit 130."""
    written = [files.json_path, files.csv_path]
    if can_plot and files.rows:
        try:
            for dtype, hidden in groups:
                rows = [r for r in files.rows if r["dtype"] == dtype and r["hidden"] == hidden]
                if rows:
                    written.append(plot(rows, _png_path(out, groups, dtype, hidden)))
        except KeyboardInterrupt:
            pass
    print(f"\nInterrupted: kept the {len(files.rows)} row(s) measured so far in {', '.join(written)}")
    return 130
