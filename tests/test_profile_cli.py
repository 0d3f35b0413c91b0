"""`fastlstm profile`: the command writes JSON, CSV and PNG with the documented fields,
and the sweep refuses to time a backend that computes the wrong thing."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from fastlstm import profile
from fastlstm.device import simulate
from fastlstm.profile import cli as profile_cli, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--seq-lens", "2,4", "--hidden", "8", "--batch", "2", "--input", "4", "--repeats", "1"]
REQUIRED = ("backend", "seq_len", "mode", "device", "dtype", "batch", "hidden", "input", "layers", "ms",
            "ms_per_step", "tokens_per_s", "speedup_vs_torch", "peak_mem_bytes", "torch_version",
            "triton_version", "git_commit", "status", "note")


def _profile(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fastlstm", "profile", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    # --slow-max-seq-len 2: the tutorial loop runs at T=2 and is skipped at T=4.
    proc = _profile("--quick", "--out", str(out), *TINY, "--slow-max-seq-len", "2")
    assert proc.returncode == 0, f"fastlstm profile failed:\n{proc.stdout}\n{proc.stderr}"
    return out, proc


def test_quick_run_writes_json_with_the_fields(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "profile.json").read_text())
    assert isinstance(rows, list) and rows, "profile.json: expected a non-empty list of rows"
    for row in rows:
        missing = [f for f in REQUIRED if f not in row]
        assert not missing, f"row {row['backend']} T={row['seq_len']}: missing fields {missing}"
    # One row per backend, mode and T: 2 modes x 2 lengths x each backend.
    keys = [(r["backend"], r["mode"], r["seq_len"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate (backend, mode, seq_len) rows"
    assert {r["mode"] for r in rows} == {"infer", "train"}
    assert {r["seq_len"] for r in rows} == {2, 4}
    backends = {r["backend"] for r in rows}
    assert {"torch", "tutorial", "scripted"} <= backends, f"baselines missing: {backends}"
    assert len(rows) == 2 * 2 * len(backends)


def test_quick_run_figures_are_consistent(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "profile.json").read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    assert any(r["backend"] == "torch" for r in ok), "nn.LSTM itself did not run"
    for r in ok:
        what = f"{r['backend']} {r['mode']} T={r['seq_len']}"
        assert r["ms"] > 0, what
        assert math.isclose(r["ms_per_step"] * r["seq_len"], r["ms"], rel_tol=1e-9), what
        assert math.isclose(r["tokens_per_s"], r["batch"] * r["seq_len"] / (r["ms"] / 1e3), rel_tol=1e-9), what
        assert r["speedup_vs_torch"] > 0, what
        assert r["max_abs_err"] is not None and r["max_abs_err"] < 1e-3, what
        if sys.platform.startswith("linux"):
            assert isinstance(r["peak_mem_bytes"], int) and r["peak_mem_bytes"] >= 0, what
        if r["backend"] == "torch":
            assert r["speedup_vs_torch"] == 1.0, what
    for r in rows:
        if r["status"] != "ok":
            assert r["ms"] is None and r["tokens_per_s"] is None, f"{r['backend']}: a figure without a pass"
            assert r["note"], f"{r['backend']} T={r['seq_len']}: status {r['status']} without a reason"
    tutorial = {r["seq_len"]: r for r in rows if r["backend"] == "tutorial" and r["mode"] == "infer"}
    assert tutorial[2]["status"] == "ok"
    assert tutorial[4]["status"] == "skipped" and "T > 2" in tutorial[4]["note"]
    assert all(r["status"] in ("ok", "skipped") for r in rows), [
        (r["backend"], r["status"], r["note"]) for r in rows if r["status"] not in ("ok", "skipped")]


def test_quick_run_writes_csv_with_the_same_rows(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "profile.json").read_text())
    with open(out / "profile.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    for got, want in zip(table, rows):
        for field in profile.FIELDS:
            expected = "" if want[field] is None else str(want[field])
            assert got[field] == expected, f"CSV {field} of {want['backend']} T={want['seq_len']}"


def test_quick_run_writes_a_png(quick_run):
    out, _ = quick_run
    data = (out / "profile.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "profile.png is not a PNG"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = plt.imread(out / "profile.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_quick_run_prints_the_table(quick_run):
    _, proc = quick_run
    for text in ("tokens/s", "ms/step", "vs nn.LSTM", "peak mem", "ms per step against T", "profile.png"):
        assert text in proc.stdout, f"{text!r} not in the output"


def test_quick_run_shows_progress_with_rows_and_time_left(quick_run):
    _, proc = quick_run
    # Not a terminal: plain lines, one per finished group of rows.
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[") and " rows] " in line]
    assert lines, f"no progress line:\n{proc.stdout}"
    total = int(lines[-1].split("/")[1].split()[0])
    assert lines[-1].startswith(f"[{total}/{total} rows]"), lines[-1]
    assert all("elapsed" in line and " left" in line for line in lines), lines


def test_quick_run_records_the_load_and_says_how_to_run_the_full_profile(quick_run):
    out, proc = quick_run
    rows = json.loads((out / "profile.json").read_text())
    if hasattr(os, "getloadavg"):
        assert all(r["load_avg_1m_max"] is not None and r["load_avg_1m_max"] >= 0 for r in rows)
        assert "Load average at most" in proc.stdout or "The machine was busy" in proc.stdout, proc.stdout
    assert "fastlstm profile --full" in proc.stdout, proc.stdout


def _main(*argv):
    """fastlstm's command line in this process; returns its exit status."""
    from fastlstm.cli import main

    try:
        return main(list(argv))
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("args, needle", [
    (["--seq-lens", "0,4"], "--seq-lens"),
    (["--seq-lens", "a"], "--seq-lens"),
    (["--backends", "torch,nope"], "--backends"),
    (["--hidden", "0"], "--hidden"),
    (["--grid", "batch=0/2"], "--grid"),
    (["--grid", "depth=2"], "--grid"),
    (["--grid", "dtype=fp8"], "--grid"),
    (["--threads", "0"], "--threads"),
    (["--repeats", "0"], "--repeats"),
    (["--slow-max-seq-len", "-5"], "--slow-max-seq-len"),
    (["--batch", "8,0"], "--batch"),
    (["--workload", "loop"], "--workload"),
    (["--workload", "cell", "--layers", "2"], "--layers"),
    (["--quick", "--full"], "--full"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--device", "cuda:99"], "--device 'cuda:99'"),
    (["--device", "cpu", "--backends", "triton"], "triton"),
    (["--out", "{file}/sub"], "--out"),
    (["--results", "{file}/sub/r.json"], "--results"),
])
def test_bad_arguments_get_one_line_naming_them(args, needle, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    args = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code = _main("profile", *args)
    captured = capsys.readouterr()
    assert code not in (0, None), f"{args}: exit status {code}"
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("fastlstm profile: error: "), f"{args}: {captured.err!r}"
    assert needle in err, f"{args}: {err!r}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "measured despite the error"


def test_version(capsys):
    import fastlstm

    code = _main("--version")
    assert code == 0 and capsys.readouterr().out.startswith(f"fastlstm {fastlstm.__version__} ")


def test_a_request_whose_every_backend_was_skipped_is_an_error(tmp_path):
    # The tutorial loop can run here, but the cap leaves it no T.
    proc = _profile("--out", str(tmp_path), *TINY, "--backends", "tutorial", "--slow-max-seq-len", "1",
                    "--no-memory")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no backend asked for was timed (tutorial)" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_ctrl_c_keeps_the_rows_measured(tmp_path):
    # SIGINT may be ignored in a background CI job; the child restores Python's handler.
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from fastlstm.cli import main; sys.exit(main(sys.argv[1:]))")
    args = ["profile", "--out", str(tmp_path), "--seq-lens", "2,3,4,5,6,7,8,9,10,11,12,13", "--repeats", "25",
            "--hidden", "8", "--batch", "2", "--input", "4", "--backends", "jit,torch", "--no-memory"]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    json_path = tmp_path / "profile.json"
    deadline = time.monotonic() + 120
    measured = []
    while time.monotonic() < deadline and proc.poll() is None:
        if json_path.exists():
            measured = json.loads(json_path.read_text())  # replaced whole, never half-written
            if len(measured) >= 4:
                break
        time.sleep(0.05)
    assert proc.poll() is None and len(measured) >= 4, "the run ended (or wrote nothing) before it could be stopped"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"exit status {proc.returncode}:\n{out}\n{err}"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    summary = [line for line in out.splitlines() if line.startswith("Interrupted")]
    assert len(summary) == 1 and "profile.json" in summary[0] and "profile.csv" in summary[0], out
    rows = json.loads(json_path.read_text())
    assert len(rows) >= len(measured) and len(rows) < 2 * 2 * 12, "expected part of the run"
    with open(tmp_path / "profile.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows), "the CSV and the JSON hold different rows"
    # Whole groups only: both backends of each (mode, T) measured, with their figures.
    groups = {}
    for r in rows:
        groups.setdefault((r["mode"], r["seq_len"]), []).append(r)
        assert r["status"] == "ok" and r["ms"] > 0, r
    assert all(sorted(r["backend"] for r in g) == ["jit", "torch"] for g in groups.values()), groups.keys()


class _WrongGateOrder(nn.Module):
    """nn.LSTM with two gates swapped: close enough to run, wrong enough to catch."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        H = lstm.hidden_size
        self.inner = nn.LSTM(lstm.input_size, H)
        with torch.no_grad():
            for name, p in self.inner.named_parameters():
                src = getattr(lstm, name)
                p.copy_(torch.cat([src[H:2 * H], src[:H], src[2 * H:]]))

    def forward(self, x, hx=None):
        return self.inner(x, hx)


def test_a_wrong_backend_is_marked_failed_and_not_timed():
    rows = profile.run_profile(batch=2, input_size=3, hidden_size=5, seq_lens=[3], backends=["torch"],
                                repeats=1, memory=False, extra_models={"wrong": _WrongGateOrder})
    by_key = {(r["backend"], r["mode"]): r for r in rows}
    for mode in ("infer", "train"):
        bad = by_key[("wrong", mode)]
        assert bad["status"] == "failed", f"{mode}: {bad['status']} {bad['note']}"
        assert "wrong answer" in bad["note"]
        assert bad["ms"] is None and bad["speedup_vs_torch"] is None
        assert by_key[("torch", mode)]["status"] == "ok"


def test_multi_layer_runs_fastlstm_and_skips_one_layer_baselines():
    rows = profile.run_profile(batch=2, input_size=3, hidden_size=5, layers=2, seq_lens=[3], modes=["train"],
                                backends=["reference", "tutorial"], repeats=1, memory=False)
    by_name = {r["backend"]: r for r in rows}
    assert by_name["reference"]["status"] == "ok", by_name["reference"]["note"]
    assert by_name["tutorial"]["status"] == "skipped" and "one layer" in by_name["tutorial"]["note"]


def test_grid_results_file_has_one_paired_row_per_shape_and_mode(tmp_path):
    results = tmp_path / "results" / "cpu.json"
    proc = _profile("--grid", "batch=2/3,dtype=fp32/bf16", "--hidden", "8", "--seq-lens", "2,3", "--repeats", "1",
                    "--backends", "jit,torch", "--no-memory", "--out", str(tmp_path), "--results", str(results))
    assert proc.returncode == 0, f"fastlstm profile --grid failed:\n{proc.stdout}\n{proc.stderr}"
    rows = json.loads(results.read_text())
    for r in rows:
        assert tuple(r) == profile.RESULT_FIELDS, f"keys {list(r)}"
        what = f"{r['dtype']} B={r['batch']} T={r['seq_len']} {r['mode']}"
        assert r["backend"] == "jit" and r["baseline"] == "onednn", what
        assert r["hidden"] == 8 and r["input"] == 8, f"{what}: the input size follows the hidden size"
        assert r["ms"] > 0 and r["baseline_ms"] > 0, what
        assert math.isclose(r["speedup"], r["baseline_ms"] / r["ms"], rel_tol=1e-9), what
        assert r["device"] == profile.device_name(torch.device("cpu")) and r["torch"] == torch.__version__
        assert "commit" in r and "triton" in r
    shapes = [(r["dtype"], r["batch"], r["seq_len"], r["mode"]) for r in rows]
    expected = {(d, b, t, m) for d in ("float32", "bfloat16") for b in (2, 3) for t in (2, 3)
                for m in ("infer", "train")}
    assert sorted(shapes) == sorted(expected), "expected exactly one row per shape x mode"
    # The full outputs cover every shape, with the nn.LSTM baseline the results were paired with.
    full = json.loads((tmp_path / "profile.json").read_text())
    baseline = {(r["dtype"], r["batch"], r["seq_len"], r["mode"]): r["ms"] for r in full if r["backend"] == "torch"}
    assert all(baseline[s] == r["baseline_ms"] for s, r in zip(shapes, rows))
    pngs = sorted(p.name for p in tmp_path.glob("profile-*.png"))
    assert pngs == ["profile-bfloat16-H8.png", "profile-float32-H8.png"], f"one plot per dtype x hidden: {pngs}"


def test_results_leave_out_failures_and_keep_other_shapes(tmp_path):
    path = tmp_path / "r.json"
    other = dict.fromkeys(profile.RESULT_FIELDS, 1.0)
    other.update(device="elsewhere", backend="triton")
    path.write_text(json.dumps([other]))
    rows = profile.run_profile(batch=2, input_size=3, hidden_size=5, seq_lens=[2, 3], modes=["infer"],
                                backends=["jit"], repeats=1, memory=False)
    assert profile.write_results(rows, str(path), "onednn") == 2
    broken = next(r for r in rows if r["backend"] == "jit" and r["seq_len"] == 3)
    broken.update(status="failed", ms=None, note="wrong answer vs nn.LSTM: (made up)")
    assert profile.write_results(rows, str(path), "onednn") == 1
    kept = json.loads(path.read_text())
    # The failed shape's earlier row is dropped, not left standing; another device's row stays.
    assert sorted((r["device"], r["seq_len"]) for r in kept) == sorted(
        [("elsewhere", 1.0), (profile.device_name(torch.device("cpu")), 2)])


def test_grid_preset_gpu():
    grid = profile_cli._grid("gpu")
    assert {k: grid[k] for k in ("batch", "hidden", "dtype", "seq_lens", "repeats", "backends")} == {
        "batch": [1, 16, 64, 256], "hidden": [256, 768, 1024], "dtype": ["float16", "bfloat16", "float32"],
        "seq_lens": [1, 16, 64, 256, 1024], "repeats": 3, "backends": ["triton", "torch"]}
    extras = {(e.tag, e.dtype): e for e in grid["extras"]}
    assert {tag for tag, _ in extras} == {"all-backends", "bidir-2layers", "packed", "flashrnn"}
    assert set(extras[("all-backends", "float16")].backends) == {"jit", "triton", "tutorial", "scripted", "torch"}
    assert extras[("bidir-2layers", "float32")].layers == 2 and extras[("bidir-2layers", "float32")].bidirectional
    assert extras[("packed", "bfloat16")].packed
    head = extras[("flashrnn", "bfloat16")]
    assert (head.batch, head.hidden, head.seq_lens, "flashrnn" in head.backends) == (16, 768, (1024,), True)
    assert ("flashrnn", "float16") in extras
    assert profile_cli._grid("gpu,dtype=bf16,batch=4")["dtype"] == ["bfloat16"]
    assert profile_cli._grid("gpu,batch=4")["batch"] == [4]


def test_the_gpu_grid_is_the_default_on_cuda_and_fits_its_time():
    """On a GPU (here a simulated H100), `fastlstm profile` with no size, grid or
    shape flag sweeps the GPU grid; the estimate from the H200's per-step
    figures keeps it under 4 minutes."""
    from fastlstm.profile.grids import gpu_time_estimate

    parser = profile_cli.argparse.ArgumentParser()
    profile_cli.add_parser(parser.add_subparsers())
    with simulate("H100"):
        st = profile_cli._settings(parser.parse_args(["profile", "--device", "cuda"]))
        assert st["batches"] == [1, 16, 64, 256] and st["repeats"] == 3 and st["backends"] == ["triton", "torch"]
        assert len(st["extras"]) == 11
        for flags in (["--device", "cuda", "--quick"], ["--device", "cuda", "--batch", "8"]):
            st = profile_cli._settings(parser.parse_args(["profile", *flags]))
            assert st["extras"] == [] and st["backends"] is None, flags
    st = profile_cli._settings(parser.parse_args(["profile", "--device", "cpu"]))
    assert st["extras"] == [] and st["backends"] is None
    assert gpu_time_estimate()["total_s"] <= 240


def test_each_triton_row_names_its_launch_plan():
    rows = [dict(backend="triton", mode="infer", seq_len=T, plan="forward persistent: 96 programs") for T in (64, 256)]
    rows += [dict(backend="triton", mode="train", seq_len=64, plan="forward ...; backward ..."),
             dict(backend="torch", mode="infer", seq_len=64, plan=None),
             dict(backend="torch", mode="train", seq_len=64, plan=None, cudnn_algo="standard")]
    assert report._plan_lines(rows) == [
        "triton infer (T=64, 256) launch plan: forward persistent: 96 programs",
        "triton train (T=64) launch plan: forward ...; backward ...",
        "torch train (T=64) cuDNN algorithm: standard",
    ]
    assert profile.triton_plan(nn.LSTM(3, 4), batch=2, mode="train") is None, "no plan off a GPU"


def test_triton_plan_names_the_gpus_plans():
    """On a GPU (here a simulated H100) a triton row records the backend's launch
    plans. This line of the profile crashed every CUDA run until 2026-12-07
    (ModuleNotFoundError: it imported fastlstm.profile.backends), hidden only
    because every row before it failed its answer check."""
    with simulate("H100"):
        plan = profile.triton_plan(nn.LSTM(3, 24), batch=2, mode="train")
        infer = profile.triton_plan(nn.LSTM(3, 1024), batch=16, mode="infer")
    assert plan.startswith("forward persistent: 3 programs x 8 units") and "; backward persistent: 3 programs" in plan
    assert infer.startswith("forward persistent: 128 programs x 8 units, W on chip") and "backward" not in infer
