"""profile.png: throughput and speed-up over torch against T, one row of panels per
workload and batch, with the spread of the interleaved repeats."""
from typing import List


def plot(rows: List[dict], path: str) -> str:
    """Save `figure(rows)` as a PNG at `path`; returns `path`.

    Example:
        >>> from fastlstm.profile import run_profile
        >>> import tempfile, os
        >>> rows = run_profile(batch=2, input_size=3, hidden_size=4, seq_lens=[2, 4], repeats=2, memory=False,
        ...                    backends=["jit"])
        >>> os.path.exists(plot(rows, os.path.join(tempfile.mkdtemp(), "p.png")))
        True
    """
    fig = figure(rows)
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight" keeps the legend right of the panels
    plt.close(fig)
    return path


def figure(rows: List[dict]):
    """A matplotlib Figure of `rows` (one dtype and hidden size; any workloads and batches).

    Each (workload, batch) gets a row of two panels: tokens/s against T (log
    axes), with a band from the slowest to the fastest of the interleaved
    repeats around each median line, and the speed-up of the median over
    torch's (nn.LSTM, or nn.LSTMCell for the cell workload). Colour: backend;
    solid: train; dashed: infer. The legend sits right of the panels, off the
    data, and says so.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ok = [r for r in rows if r["status"] == "ok"]
    panels = list(dict.fromkeys((r.get("workload") or "layer", r["batch"]) for r in rows))
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 3.9 * len(panels)), squeeze=False)
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colors = {b: f"C{i}" for i, b in enumerate(backends)}
    styles = (("train", "-"), ("infer", "--"))
    seq_lens = sorted({r["seq_len"] for r in ok})
    for (workload, batch), (ax_tp, ax_su) in zip(panels, axes):
        torch_name = "nn.LSTMCell" if workload == "cell" else "nn.LSTM"
        here = [r for r in ok if (r.get("workload") or "layer") == workload and r["batch"] == batch]
        for backend in backends:
            for mode, style in styles:
                pts = sorted((r["seq_len"], r) for r in here if r["backend"] == backend and r["mode"] == mode)
                if not pts:
                    continue
                ts = [t for t, _ in pts]
                color = colors[backend]
                ax_tp.plot(ts, [r["tokens_per_s"] for _, r in pts], style, marker="o", color=color)
                # tokens/s of the slowest and the fastest repeat
                low = [r["batch"] * t / (r["ms_max"] / 1e3) for t, r in pts]
                high = [r["batch"] * t / (r["ms_min"] / 1e3) for t, r in pts]
                ax_tp.fill_between(ts, low, high, color=color, alpha=0.18, linewidth=0)
                if all(r["speedup_vs_torch"] is not None for _, r in pts):
                    ax_su.plot(ts, [r["speedup_vs_torch"] for _, r in pts], style, marker="o", color=color)
        for ax in (ax_tp, ax_su):
            ax.set_xscale("log", base=2)
            if seq_lens:
                ax.set_xticks(seq_lens, [str(t) for t in seq_lens])
                ax.minorticks_off()
            ax.set_xlabel("sequence length T")
            ax.grid(True, which="both", alpha=0.3)
        ax_tp.set_yscale("log")
        ax_tp.set_ylabel("tokens / s (B*T per call)")
        ax_tp.set_title(f"{workload}, B={batch}: throughput")
        ax_su.axhline(1.0, color="black", linewidth=0.8)
        ax_su.set_ylabel(f"speed-up over {torch_name} (median)")
        ax_su.set_title(f"{workload}, B={batch}: speed-up over {torch_name} (>1: faster)")

    handles = [Line2D([], [], color=colors[b], marker="o", label=b) for b in backends]
    handles += [Line2D([], [], color="gray", linestyle=s, label=m) for m, s in styles]
    repeats = sorted({r["repeats"] for r in ok if r.get("repeats")})
    spread = f"the {'/'.join(map(str, repeats))} interleaved\nrepeats" if repeats else "the interleaved\nrepeats"
    handles.append(Patch(color="gray", alpha=0.3, label=f"min to max of\n{spread}"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.855, 0.97), fontsize=9,
               title="colour: backend\nstyle: mode\nband: spread", title_fontsize=9)
    if rows:
        r0 = rows[0]
        fig.suptitle(f"fastlstm profile: I={r0['input']} H={r0['hidden']} L={r0['layers']} {r0['dtype']} "
                     f"on {r0['device_name']} ({r0['threads']} threads); lines: medians")
    fig.tight_layout(rect=(0, 0, 0.85, 0.97))
    return fig
