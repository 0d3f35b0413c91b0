"""The tables printed at the end of a profile (rich when installed, else plain text)."""
from typing import Dict, List, Optional


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return ""
    # Binary units: the figures are counted in bytes and divided by 1024.
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def shape_title(rows: List[dict]) -> str:
    """What the rows measured, in a line: workload, B, I, H, L, dtype, device and threads."""
    if not rows:
        return ""
    r = rows[0]
    batches = "/".join(str(b) for b in dict.fromkeys(x["batch"] for x in rows))
    workloads = "/".join(dict.fromkeys(x.get("workload") or "layer" for x in rows))
    return (f"{workloads}: B={batches} I={r['input']} H={r['hidden']} L={r['layers']} {r['dtype']} "
            f"on {r['device_name']} ({r['threads']} threads)")


def _torch_name(rows: List[dict]) -> str:
    return "nn.LSTMCell" if rows and all(r.get("workload") == "cell" for r in rows) else "nn.LSTM"


def print_report(rows: List[dict], console=None) -> None:
    """Print the results table and the ms-per-step-against-T table (rich, or plain text)
    of one shape's rows."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _print_plain(rows)
        return
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    table = Table(title=f"fastlstm profile, {shape_title(rows)} (median of interleaved runs)", show_lines=False)
    for col, just in (("mode", "left"), ("T", "right"), ("backend", "left"), ("ms", "right"),
                      ("ms/step", "right"), ("tokens/s", "right"), (f"vs {_torch_name(rows)}", "right"),
                      ("peak mem", "right"), ("status", "left")):
        table.add_column(col, justify=just)
    last = None
    for r in rows:
        key = (r["mode"], r["seq_len"])
        if last is not None and key != last:
            table.add_section()
        last = key
        speed = _fmt(r["speedup_vs_torch"], ".2f")
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['note']}"
        style = {"ok": None, "skipped": "dim", "failed": "bold red", "error": "red"}[r["status"]]
        table.add_row(r["mode"], str(r["seq_len"]), r["backend"], _fmt(r["ms"], ".2f"),
                      _fmt(r["ms_per_step"], ".3f"), _fmt(r["tokens_per_s"], ",.0f"),
                      f"{speed}x" if speed else "", _fmt_bytes(r["peak_mem_bytes"]), status, style=style)
    console.print(table)
    console.print(_growth_table(rows, Table))
    for line in _plan_lines(rows):
        console.print(line, highlight=False)


def _plan_lines(rows: List[dict]) -> List[str]:
    """One line per backend and mode that recorded a launch plan, and per mode the
    cuDNN algorithm nn.LSTM ran (on CUDA), naming their rows' T."""
    plans: Dict[tuple, List[int]] = {}
    for r in rows:
        if r.get("plan"):
            plans.setdefault((r["backend"], r["mode"], f"launch plan: {r['plan']}"), []).append(r["seq_len"])
        if r["backend"] == "torch" and r.get("cudnn_algo"):
            plans.setdefault(("torch", r["mode"], f"cuDNN algorithm: {r['cudnn_algo']}"), []).append(r["seq_len"])
    return [f"{backend} {mode} (T={', '.join(map(str, Ts))}) {what}" for (backend, mode, what), Ts in plans.items()]


def _growth_table(rows: List[dict], Table):
    seq_lens = sorted({r["seq_len"] for r in rows})
    t = Table(title="ms per step against T (flat = linear time; it falls at short T, where "
                    "the fixed cost per call is shared by fewer steps)")
    t.add_column("backend")
    t.add_column("mode")
    for T in seq_lens:
        t.add_column(f"T={T}", justify="right")
    t.add_column("last/first", justify="right")
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            cells = {r["seq_len"]: r["ms_per_step"] for r in rows
                     if r["backend"] == backend and r["mode"] == mode and r["ms_per_step"] is not None}
            if not cells:
                continue
            firsts = [cells[T] for T in seq_lens if T in cells]
            ratio = f"{firsts[-1] / firsts[0]:.2f}" if len(firsts) > 1 else ""
            t.add_row(backend, mode, *[_fmt(cells.get(T), ".3f") for T in seq_lens], ratio)
    return t


def _print_plain(rows: List[dict]) -> None:
    print(f"fastlstm profile, {shape_title(rows)} (median of interleaved runs)")
    print(f"{'mode':6} {'T':>6} {'backend':10} {'ms':>10} {'ms/step':>9} {'tokens/s':>12} "
          f"{'vs torch':>9} {'peak mem':>10}  status")
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['note']}"
        print(f"{r['mode']:6} {r['seq_len']:>6} {r['backend']:10} {_fmt(r['ms'], '.2f'):>10} "
              f"{_fmt(r['ms_per_step'], '.3f'):>9} {_fmt(r['tokens_per_s'], ',.0f'):>12} "
              f"{_fmt(r['speedup_vs_torch'], '.2f'):>9} {_fmt_bytes(r['peak_mem_bytes']):>10}  {status}")
    for line in _plan_lines(rows):
        print(line)
