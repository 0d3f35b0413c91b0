"""`fastlstm profile`: the command line."""
import argparse
import os
from typing import Dict, List, Optional

import torch

from .env import _load_average, device_name
from .files import RESULT_FIELDS, baseline_name, write_csv, write_json, write_results
from .models import DTYPES, KNOWN_BACKENDS, SLOW_BACKENDS, default_backends, resolve_device
from .plot import plot
from .report import print_report
from .run import DEFAULT_REPEATS, DEFAULT_SEQ_LENS, DEFAULT_SLOW_MAX_SEQ_LEN, QUICK_REPEATS, QUICK_SEQ_LENS, \
    QUICK_SLOW_MAX_SEQ_LEN, count_work, run_profile

DEFAULT_OUT = "profile-out"
DEFAULT_INPUT = 128
# `--grid` presets: the axes they set (a given --seq-lens wins over a preset's).
GRID_AXES = ("batch", "hidden", "dtype")
GRID_PRESETS = {
    "gpu": {"batch": [1, 16, 64, 256], "hidden": [256, 768, 1024], "dtype": ["bfloat16", "float32"],
            "seq_lens": [64, 256, 1024, 4096]},
}
_DTYPE_ALIASES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}


def _positive_ints(text: str, sep: str = ",") -> List[int]:
    values = [int(v) for v in text.split(sep) if v.strip()]  # ValueError on a non-integer
    if not values or any(v <= 0 for v in values):
        raise ValueError(text)
    return values


def _int_list(text: str) -> List[int]:
    try:
        return _positive_ints(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seq-lens: expected a comma list of positive integers, got {text!r}")


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
                f"--grid: expected a comma list of presets ({', '.join(GRID_PRESETS)}) and AXIS=V1/V2/... "
                f"with AXIS one of {', '.join(GRID_AXES)}, got {text!r} (bad item {item!r})")
    return grid


def _name_list(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in KNOWN_BACKENDS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"--backends: expected a comma list of {', '.join(KNOWN_BACKENDS)}, got {text!r}")
    return names


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `fastlstm profile` on an argparse subparsers object.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> _ = add_parser(sub)
    """
    p = subparsers.add_parser(
        "profile",
        help="time fastlstm's backends against torch.nn.LSTM and baselines over sequence lengths",
        description=(
            "Sweep sequence lengths for fastlstm's backends and the baselines (torch.nn.LSTM, a "
            "tutorial-style loop, a scripted cell loop), interleaving them so ratios are fair on a "
            "noisy machine. Each backend is checked against nn.LSTM before it is timed. Writes "
            "profile.json, profile.csv and profile.png to --out; with --grid, the sweep repeats for "
            "every batch x hidden x dtype (one PNG per shape), and --results writes one compact row per "
            "fastlstm backend x shape x mode with its interleaved nn.LSTM baseline."
        ),
    )
    p.add_argument("--batch", type=int, default=32, help="batch size B (default 32)")
    p.add_argument("--input", type=int, default=None,
                   help=f"input size I (default {DEFAULT_INPUT}; with --grid: the hidden size)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size H (default 256)")
    p.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    p.add_argument("--seq-lens", type=_int_list, default=None,
                   help=f"comma list of T (default {','.join(map(str, DEFAULT_SEQ_LENS))}; "
                        f"--quick: {','.join(map(str, QUICK_SEQ_LENS))})")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--mode", choices=["infer", "train", "both"], default="both",
                   help="infer: forward under no_grad; train: forward + backward (default both)")
    p.add_argument("--backends", type=_name_list, default=None,
                   help="comma list of " + ", ".join(KNOWN_BACKENDS) +
                        " (default: fastlstm's fast backends for the device, and the baselines)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed runs per backend and shape (default {DEFAULT_REPEATS}; --quick: {QUICK_REPEATS})")
    p.add_argument("--slow-max-seq-len", type=int, default=None,
                   help=f"longest T for the slow loops ({', '.join(SLOW_BACKENDS)}); 0: no cap "
                        f"(default {DEFAULT_SLOW_MAX_SEQ_LEN}; --quick: {QUICK_SLOW_MAX_SEQ_LEN})")
    p.add_argument("--quick", action="store_true", help="a short run (well under a minute on 2 CPU cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    preset = ", ".join(f"{name}: batch {'/'.join(map(str, g['batch']))}, hidden {'/'.join(map(str, g['hidden']))}, "
                       f"dtype {'/'.join(g['dtype'])}, T {','.join(map(str, g['seq_lens']))}"
                       for name, g in GRID_PRESETS.items())
    p.add_argument("--grid", type=_grid, default=None, metavar="SPEC",
                   help="sweep batch x hidden x dtype, --seq-lens giving T: a comma list of presets and "
                        "AXIS=V1/V2/... (AXIS: batch, hidden, dtype; dtype also bf16, fp32, fp16, fp64), later "
                        "items winning, e.g. 'gpu' or 'batch=1/16,hidden=256/768,dtype=bf16/fp32'; axes left out "
                        f"come from --batch, --hidden, --dtype; the input size is the hidden size unless --input "
                        f"is given. Preset {preset} (its T only when --seq-lens is not given)")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="also write FILE, a JSON list with one row per fastlstm backend x shape x mode: "
                        + ", ".join(RESULT_FIELDS) + " (device: GPU/CPU name; baseline: nn.LSTM's library, "
                        "cudnn on CUDA, onednn on CPU, timed interleaved in the same run; speedup = "
                        "baseline_ms / ms). Rows that failed the answer check are left out (the command then "
                        "exits non-zero); rows of an existing FILE for other shapes or backends are kept")
    p.set_defaults(func=_run_cli)
    return p


def _run_cli(args) -> int:
    grid = args.grid or {}
    seq_lens = args.seq_lens or grid.get("seq_lens") or list(QUICK_SEQ_LENS if args.quick else DEFAULT_SEQ_LENS)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    slow_cap = args.slow_max_seq_len
    if slow_cap is None:
        slow_cap = QUICK_SLOW_MAX_SEQ_LEN if args.quick else DEFAULT_SLOW_MAX_SEQ_LEN
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    for flag, value in (("--batch", args.batch), ("--input", args.input), ("--hidden", args.hidden),
                        ("--layers", args.layers), ("--repeats", repeats)):
        if value is not None and value <= 0:
            raise SystemExit(f"fastlstm profile: {flag} must be a positive integer, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    backends = args.backends or default_backends(device)
    if "torch" not in backends:
        backends = backends + ["torch"]
    os.makedirs(args.out, exist_ok=True)
    # One shape per (dtype, batch, hidden); without --grid, just the one given.
    shapes = [(dtype, batch, hidden) for dtype in grid.get("dtype", [args.dtype])
              for batch in grid.get("batch", [args.batch]) for hidden in grid.get("hidden", [args.hidden])]

    load = _load_average()
    if device.type == "cpu" and torch.get_num_threads() > 1 and load is not None and load >= 1.0:
        # With another process running (1-min load of 1 or more), an OpenMP thread that loses its core stalls the
        # others at each barrier: times inflate many-fold, and unevenly.
        print(f"warning: the CPU is busy (load average {load:.2f}); with {torch.get_num_threads()} torch "
              f"threads on {os.cpu_count()} cores times may be inflated many-fold; try --threads 1")
    rows: List[dict] = []
    pngs: Optional[List[str]] = []  # None once matplotlib turns out to be missing
    for i, (dtype, batch, hidden) in enumerate(shapes, 1):
        input_size = args.input or (hidden if args.grid else DEFAULT_INPUT)
        kwargs = dict(batch=batch, input_size=input_size, hidden_size=hidden, layers=args.layers,
                      seq_lens=seq_lens, dtype=DTYPES[dtype], device=str(device), modes=modes,
                      backends=backends, repeats=repeats, slow_max_seq_len=slow_cap or None,
                      memory=not args.no_memory, seed=args.seed)
        print(f"fastlstm profile: B={batch} I={input_size} H={hidden} L={args.layers} {dtype} "
              f"on {device} ({device_name(device)}, {torch.get_num_threads()} threads); T in {seq_lens}; "
              f"{', '.join(modes)}; backends {', '.join(backends)}; {repeats} interleaved repeats"
              + (f" [shape {i} of {len(shapes)}]" if len(shapes) > 1 else ""))
        total = count_work(len(modes), len(seq_lens), len(backends), repeats,
                           memory_on_cpu=not args.no_memory and device.type == "cpu")
        shape_rows = _run_with_progress(kwargs, total)
        print_report(shape_rows)
        rows += shape_rows
        name = "profile.png" if len(shapes) == 1 else f"profile-{dtype}-B{batch}-H{hidden}.png"
        if pngs is not None:
            try:
                pngs.append(plot(shape_rows, os.path.join(args.out, name)))
            except ImportError:
                pngs = None

    paths = [write_json(rows, os.path.join(args.out, "profile.json")),
             write_csv(rows, os.path.join(args.out, "profile.csv"))]
    if pngs is not None:
        paths += pngs if len(pngs) <= 3 else [os.path.join(args.out, "profile-*.png")]
    else:
        print("matplotlib is not installed: no plot (pip install 'fastlstm[profile]')")
    bad = [r for r in rows if r["status"] in ("failed", "error")]
    written = None
    if args.results:
        written = write_results(rows, args.results, baseline_name(device))
        paths.append(f"{args.results} ({written} rows)")
    print("Peak memory: growth during one call over what was in use before it "
          + ("(torch.cuda.max_memory_allocated)." if device.type == "cuda" else
             "(peak resident set of a fresh subprocess, glibc returning freed memory; see fastlstm.profile.memory)."))
    print("Times are medians of interleaved runs; on a shared machine read the ratios, not the absolutes.")
    print("Wrote " + ", ".join(paths))
    if bad:
        print(f"{len(bad)} row(s) failed or raised (left out of --results): " + "; ".join(
            f"{r['backend']} {r['mode']} {r['dtype']} B={r['batch']} H={r['hidden']} T={r['seq_len']}: {r['note']}"
            for r in bad[:10]) + (" ..." if len(bad) > 10 else ""))
    if written == 0:
        print(f"--results: no fastlstm backend passed, so {args.results} got no rows")
    return 1 if bad or written == 0 else 0


def _run_with_progress(kwargs: dict, total: int) -> List[dict]:
    """`run_profile(**kwargs)` under a rich progress bar (plain when rich is missing)."""
    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        return run_profile(**kwargs)
    with Progress(TextColumn("{task.description:<34}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("profiling", total=total)
        rows = run_profile(**kwargs, progress=lambda what, n: bar.update(task, advance=n, description=what))
        bar.update(task, completed=total, description="done")
    return rows
