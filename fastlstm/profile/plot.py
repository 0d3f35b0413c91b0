"""profile.png: throughput and speed-up over nn.LSTM against T."""
from typing import List

def plot(rows: List[dict], path: str) -> str:
    """Save a PNG: tokens/s against T (log x) and speed-up over nn.LSTM, one line per
    backend (solid: train, dashed: infer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, (ax_tp, ax_su) = plt.subplots(1, 2, figsize=(12, 4.8))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colors = {b: f"C{i}" for i, b in enumerate(backends)}
    for backend in backends:
        for mode, style in (("train", "-"), ("infer", "--")):
            pts = sorted((r["seq_len"], r["tokens_per_s"], r["speedup_vs_torch"]) for r in ok
                         if r["backend"] == backend and r["mode"] == mode)
            if not pts:
                continue
            ts = [p[0] for p in pts]
            label = f"{backend} ({mode})"
            ax_tp.plot(ts, [p[1] for p in pts], style, marker="o", color=colors[backend], label=label)
            if all(p[2] is not None for p in pts):
                ax_su.plot(ts, [p[2] for p in pts], style, marker="o", color=colors[backend], label=label)
    seq_lens = sorted({r["seq_len"] for r in ok})
    for ax in (ax_tp, ax_su):
        ax.set_xscale("log", base=2)
        if seq_lens:
            ax.set_xticks(seq_lens, [str(t) for t in seq_lens])
            ax.minorticks_off()
        ax.set_xlabel("sequence length T")
        ax.grid(True, which="both", alpha=0.3)
    ax_tp.set_yscale("log")
    ax_tp.set_ylabel("tokens / s (B*T per call)")
    ax_tp.set_title("throughput")
    ax_su.axhline(1.0, color="black", linewidth=0.8)
    ax_su.set_ylabel("speed-up over torch.nn.LSTM")
    ax_su.set_title("speed-up over nn.LSTM (>1: faster)")
    if ok:
        r0 = ok[0]
        fig.suptitle(f"B={r0['batch']} I={r0['input']} H={r0['hidden']} L={r0['layers']} "
                     f"{r0['dtype']} on {r0['device_name']} ({r0['threads']} threads)")
        ax_tp.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
