"""The profile's cell workload (an LSTMCell stepped from Python) and several batch sizes
in one run: rows are checked against float64 torch, named, and reported per batch."""
import importlib
import io
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from fastlstm import profile
from fastlstm.profile import env, progress, report, workloads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cell_rows_are_checked_and_named():
    rows = profile.run_profile(batch=2, input_size=3, hidden_size=5, seq_lens=[1, 4], backends=["jit", "reference"],
                               repeats=1, memory=False, workload="cell")
    assert {r["workload"] for r in rows} == {"cell"}
    by_key = {(r["backend"], r["mode"], r["seq_len"]): r for r in rows}
    assert len(by_key) == len(rows) == 3 * 2 * 2, sorted(by_key)
    for (backend, mode, T), r in by_key.items():
        assert r["status"] == "ok", f"{backend} {mode} T={T}: {r['status']} {r['note']}"
        assert r["max_abs_err"] < 1e-5, f"{backend} {mode} T={T}: error {r['max_abs_err']}"
        assert r["ms"] > 0 and r["batch"] == 2
    assert by_key[("torch", "train", 4)]["speedup_vs_torch"] == 1.0


def test_cell_step_loops_over_time_and_matches_a_float64_cell_loop():
    torch.manual_seed(0)
    ref = workloads.make_reference_module("cell", 3, 4, 1, torch.float32, torch.device("cpu"), seed=0)
    x, g = workloads.make_inputs(6, 2, ref, "train")
    want = workloads.reference_result(ref, x, "train", g)
    assert want["out"].shape == (6, 2, 4) and want["h_n"].shape == (1, 2, 4) and want["grad_input"].shape == (6, 2, 3)
    # The stacked outputs are the hidden states of an nn.LSTM with the same weights.
    lstm = nn.LSTM(3, 4).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(lstm, f"{name}_l0").copy_(getattr(ref, name))
    out, (h, c) = lstm(x.detach().double())
    torch.testing.assert_close(want["out"], out.detach(), msg=lambda m: f"cell loop vs nn.LSTM: {m}")
    torch.testing.assert_close(want["c_n"], c.detach())
    for backend in ("jit", "reference", "torch"):
        model = workloads.build_workload_model("cell", backend, ref)
        ok, err, msg = profile.compare(workloads.make_step(model, x, "train", g)(), want, torch.float32)
        assert ok, f"{backend}: {msg}"


def test_a_wrong_cell_is_marked_failed():
    class Wrong(nn.LSTMCell):  # make_step steps any nn.LSTMCell in a loop
        def __init__(self, ref):
            super().__init__(ref.input_size, ref.hidden_size)
            self.load_state_dict(ref.state_dict())

        def forward(self, x, hx):
            return super().forward(x, (hx[0], torch.zeros_like(hx[1])))

    rows = profile.run_profile(batch=2, input_size=3, hidden_size=5, seq_lens=[3], backends=["torch"], repeats=1,
                               memory=False, workload="cell", extra_models={"wrong": Wrong})
    bad = [r for r in rows if r["backend"] == "wrong"]
    assert len(bad) == 2 and all(r["status"] == "failed" and "wrong answer vs nn.LSTMCell" in r["note"]
                                 and r["ms"] is None for r in bad), bad


def test_cell_workload_runs_only_backends_with_a_cell():
    rows = profile.run_profile(batch=2, input_size=3, hidden_size=5, seq_lens=[2], modes=["infer"], repeats=1,
                               memory=False, workload="cell", backends=["jit", "tutorial", "scripted"])
    assert sorted(r["backend"] for r in rows) == ["jit", "torch"]
    reason = workloads.workload_unavailable_reason("cell", "tutorial", None, torch.device("cpu"))
    assert reason and "no LSTMCell" in reason


def test_cell_memory_is_measured_in_the_subprocess():
    if not sys.platform.startswith("linux"):
        pytest.skip("CPU peak memory is measured on Linux only")
    rows = profile.run_profile(batch=2, input_size=3, hidden_size=5, seq_lens=[3], modes=["train"], repeats=1,
                               backends=["jit"], workload="cell")
    for r in rows:
        assert isinstance(r["peak_mem_bytes"], int) and r["peak_mem_bytes"] >= 0, r


@pytest.fixture(scope="module")
def two_batches(tmp_path_factory):
    out = tmp_path_factory.mktemp("batches")
    proc = subprocess.run(
        [sys.executable, "-m", "fastlstm", "profile", "--out", str(out), "--batch", "1,3", "--workload", "layer,cell",
         "--seq-lens", "2,3", "--hidden", "8", "--input", "4", "--repeats", "2", "--backends", "jit,torch",
         "--no-memory"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"fastlstm profile failed:\n{proc.stdout}\n{proc.stderr}"
    return out, proc


def test_several_batches_and_both_workloads_in_one_run(two_batches):
    out, proc = two_batches
    rows = json.loads((out / "profile.json").read_text())
    keys = [(r["workload"], r["batch"], r["backend"], r["mode"], r["seq_len"]) for r in rows]
    expected = {(w, b, n, m, t) for w in ("layer", "cell") for b in (1, 3) for n in ("jit", "torch")
                for m in ("infer", "train") for t in (2, 3)}
    assert sorted(keys) == sorted(expected), "expected one row per workload x batch x backend x mode x T"
    assert all(r["status"] == "ok" for r in rows), [(k, r["note"]) for k, r in zip(keys, rows) if r["status"] != "ok"]
    for r in rows:
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * r["seq_len"] / (r["ms"] / 1e3), rel=1e-9)
    # One table per workload and batch, each naming its shape; one plot with a panel row each.
    for title in ("layer: B=1 ", "layer: B=3 ", "cell: B=1 ", "cell: B=3 "):
        assert title in proc.stdout, f"no table for {title!r}"
    assert "vs nn.LSTMCell" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["profile.csv", "profile.json", "profile.png"]


def test_results_rows_leave_out_the_cell_workload(two_batches):
    out, _ = two_batches
    rows = json.loads((out / "profile.json").read_text())
    got = profile.result_rows(rows, "onednn")
    assert len(got) == 2 * 2 * 2 and all(r["backend"] == "jit" for r in got), got


def test_progress_line_estimates_the_time_left():
    stream = io.StringIO()
    with progress.ProgressLine(total_rows=4, total_work=10, stream=stream, use_rich=False) as p:
        assert p.left() is None
        p.update("layer infer T=16 B=32: done", 5, 2)
        assert p.left() == pytest.approx(p.elapsed(), rel=0.05, abs=0.05)
        p.update("layer infer T=64 B=32: timing jit", 1, 0)  # within 10 s of the last line: not printed
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[2/4 rows] layer infer T=16 B=32: done | 0:00 elapsed, about")


def test_busy_means_more_runnable_than_our_threads():
    assert env.busy(3.0, threads=2) and not env.busy(2.5, threads=2) and not env.busy(None, threads=1)
    with env.LoadMonitor(interval_s=0.01) as load:
        load.new_window()
        peak = load.window_max()
    if hasattr(os, "getloadavg"):
        assert peak is not None and load.run_max >= peak


def test_busy_notes_name_what_was_seen():
    from fastlstm.profile import cli

    cpu = torch.device("cpu")
    assert cli._load_note(cpu, 0.1, 1.9, threads=2).startswith("Load average at most 1.90")
    assert "1.20 cores in use before the run" in cli._load_note(cpu, 1.2, 1.9, threads=2)
    note = cli._load_note(cpu, None, 3.5, threads=2)
    assert note.startswith("The machine was busy: a load average of at most 3.50 during it,"), note
    if sys.platform.startswith("linux"):
        used = env.cores_in_use(0.05)
        assert used is not None and 0 <= used <= os.cpu_count()


def test_memory_is_reported_in_binary_units():
    assert report._fmt_bytes(512) == "512 B"
    assert report._fmt_bytes(3 * 1024 * 1024) == "3.0 MiB"
    assert report._fmt_bytes(1536) == "1.5 KiB"


def test_plot_keeps_the_legend_off_the_panels_and_labels_every_axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    # The module, not the function `fastlstm.profile.plot` that the package exports.
    plot_module = importlib.import_module("fastlstm.profile.plot")

    rows = profile.run_profile(batch=2, input_size=3, hidden_size=4, seq_lens=[2, 4], repeats=2, memory=False,
                               backends=["jit"])
    rows += profile.run_profile(batch=3, input_size=3, hidden_size=4, seq_lens=[2, 4], repeats=2, memory=False,
                                backends=["jit"], workload="cell")
    fig = plot_module.figure(rows)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert len(fig.axes) == 4, "a row of two panels per (workload, batch)"
        legend = fig.legends[0]
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), f"the legend covers {ax.get_title()!r}"
            assert ax.get_xlabel() and ax.get_ylabel(), f"{ax.get_title()!r}: an axis without a label"
        labels = [t.get_text() for t in legend.get_texts()]
        assert {"jit", "torch", "train", "infer"} <= set(labels) and any("min to max" in t for t in labels), labels
        for ax in fig.axes[::2]:  # throughput panels: one min-max band per backend and mode
            assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 4, ax.get_title()
    finally:
        plt.close(fig)


def test_warm_up_waits_until_a_compile_is_over(monkeypatch):
    """A step whose first calls compile (slow, as TorchScript's optimisation on a
    GPU was: 0.9 s a call) is warmed until two calls in a row agree, however long
    the slow calls took; a step that is fast from the start stops at max_calls."""
    from fastlstm.profile import timing

    class Clock:  # each call of the step takes the seconds it is told, exactly
        now = 0.0

        def perf_counter(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(timing, "time", clock)

    def step_taking(seconds):
        calls = []

        def step():
            clock.now += seconds[len(calls)]
            calls.append(1)
        return step, calls

    step, calls = step_taking([0.9, 0.5, 0.05, 0.05] + [0.05] * 30)
    assert timing.warm_up(step, max_calls=3, budget_s=0.5) == pytest.approx(0.05)
    assert len(calls) == 4, f"{len(calls)} warm-up calls: stopped while still compiling"
    step, calls = step_taking([0.01] * 30)
    timing.warm_up(step, max_calls=3)
    assert len(calls) == 3
    step, calls = step_taking([2.0, 1.0] * 30)  # never settles: stops at the time limit
    timing.warm_up(step, limit_s=10.0)
    assert len(calls) == 7


def test_packed_and_bidirectional_rows_are_checked_and_named():
    """Packed input (a PackedSequence of unsorted lengths) and a bidirectional
    two-layer nn.LSTM: checked against float64, with the loop baselines skipped."""
    rows = profile.run_profile(batch=3, input_size=3, hidden_size=4, layers=2, seq_lens=[5], repeats=1, memory=False,
                       backends=["jit", "tutorial"], bidirectional=True, packed=True)
    by = {(r["backend"], r["mode"]): r for r in rows}
    for mode in ("infer", "train"):
        assert by[("jit", mode)]["status"] == "ok" and by[("torch", mode)]["status"] == "ok", by
        assert by[("tutorial", mode)]["status"] == "skipped"
        assert all(r["bidirectional"] and r["packed"] and r["layers"] == 2 for r in rows)
        assert by[("jit", mode)]["cudnn_algo"] is None  # off CUDA


@pytest.mark.parametrize("kwargs,want", [
    # The headline shape: fp16 persistent (B % 8, H and I % 128), bf16 and fp32 standard.
    (dict(dtype=torch.float16, input_size=768, hidden_size=768, batch=16), "persistent"),
    (dict(dtype=torch.bfloat16, input_size=768, hidden_size=768, batch=16), "standard"),
    (dict(dtype=torch.float32, input_size=1024, hidden_size=1024, batch=64), "standard"),
    # What takes fp16 off the persistent kernel.
    (dict(dtype=torch.float16, input_size=768, hidden_size=768, batch=4), "standard"),  # B % 8
    (dict(dtype=torch.float16, input_size=768, hidden_size=768, batch=136), "standard"),  # B > 128
    (dict(dtype=torch.float16, input_size=768, hidden_size=1536, batch=16), "standard"),  # H > 1024
    (dict(dtype=torch.float16, input_size=100, hidden_size=768, batch=16), "standard"),  # I % 128
    (dict(dtype=torch.float16, input_size=768, hidden_size=768, batch=16, layers=2), "standard"),
    (dict(dtype=torch.float16, input_size=768, hidden_size=768, batch=16, bidirectional=True), "standard"),
    (dict(dtype=torch.float16, input_size=768, hidden_size=768, batch=16, packed=True), "standard"),
    (dict(dtype=torch.float16, input_size=768, hidden_size=768, batch=16, proj_size=256), "standard"),
    (dict(dtype=torch.float16, input_size=768, hidden_size=768, batch=16, sm_count=84), "standard"),  # A10-like
    (dict(dtype=torch.float16, input_size=768, hidden_size=768, batch=16, capability=(8, 6)), "standard"),
    # The small-H kernel, any 16/32-bit dtype, and its smaller bound in the backward.
    (dict(dtype=torch.bfloat16, input_size=64, hidden_size=128, batch=3), "persistent-small-h"),
    (dict(dtype=torch.float32, input_size=64, hidden_size=192, batch=3), "persistent-small-h"),
    (dict(dtype=torch.float32, input_size=64, hidden_size=192, batch=3, forward=False), "standard"),
    (dict(dtype=torch.float64, input_size=64, hidden_size=128, batch=3), "standard"),
    (dict(dtype=torch.float32, input_size=64, hidden_size=128, batch=3, capability=(5, 2)), "standard"),
    # Volta's rule depends on T.
    (dict(dtype=torch.float16, input_size=256, hidden_size=256, batch=64, capability=(7, 0), seq_len=64),
     "persistent"),
    (dict(dtype=torch.float16, input_size=256, hidden_size=256, batch=64, capability=(7, 0), seq_len=16),
     "standard"),
    (dict(dtype=torch.float16, input_size=256, hidden_size=256, batch=16, capability=(7, 0), seq_len=16),
     "persistent"),
    (dict(dtype=torch.float16, input_size=256, hidden_size=256, batch=80, capability=(7, 0), seq_len=64),
     "standard"),
    (dict(dtype=torch.float16, input_size=256, hidden_size=256, batch=64, capability=(7, 5), seq_len=64),
     "standard"),
])
def test_cudnn_algo_follows_pytorchs_rule(kwargs, want):
    from fastlstm.profile.models import cudnn_algo

    assert cudnn_algo(**kwargs) == want
