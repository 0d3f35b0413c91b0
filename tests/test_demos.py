"""The demos (`fastlstm demo ...`): losses fall, curves match torch.nn's, the CLI runs.

Curves are compared over short runs: each step agrees to ~1e-6, and the
optimisers carry that along. The toy task's plain SGD at lr 0.1 goes through a
sharp valley near iteration 25, where any difference gets amplified, so its
curves are compared before that.
"""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from fastlstm import demos

BACKENDS = ["jit", "reference"]


def _assert_curves_close(got, want, what, rtol):
    got, want = torch.tensor(got), torch.tensor(want)
    assert got.shape == want.shape, f"{what}: {got.numel()} losses, expected {want.numel()}"
    torch.testing.assert_close(got, want, atol=1e-6, rtol=rtol, msg=lambda m: f"{what}: loss curves differ: {m}")


def _falls(losses, n):
    head, tail = losses[:n], losses[-n:]
    return sum(tail) / n < 0.5 * sum(head) / n


@pytest.mark.parametrize("backend", BACKENDS)
def test_sincos_matches_torch(backend):
    ours = demos.sincos(windows=40, backend=backend, log=None)["losses"]
    theirs = demos.sincos(windows=40, use_torch=True, log=None)["losses"]
    # Measured: at most 1.3e-4 relative over 40 windows (Adam rescales small gradients).
    _assert_curves_close(ours, theirs, f"sincos, backend={backend}", rtol=1e-3)
    assert _falls(ours, 5), f"sincos, backend={backend}: loss did not fall: {ours[:5]} ... {ours[-5:]}"


def test_sincos_returns_the_plotted_series(tmp_path):
    r = demos.sincos(windows=12, steps=20, plot_windows=3, backend="reference", out=str(tmp_path), log=None)
    assert len(r["losses"]) == 12
    for name in ("t", "target", "prediction"):
        assert r[name].shape == (60,), f"{name} has shape {tuple(r[name].shape)}, expected (60,)"
    torch.testing.assert_close(r["target"], torch.cos(r["t"]))
    assert r["png"] == os.path.join(str(tmp_path), "sincos.png") and os.path.getsize(r["png"]) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_toy_matches_torch_and_falls(backend):
    ours = demos.toy(iterations=20, backend=backend, log=None)
    theirs = demos.toy(iterations=20, use_torch=True, log=None)
    # Measured: at most 1.5e-6 relative over 20 iterations.
    _assert_curves_close(ours["losses"], theirs["losses"], f"toy, backend={backend}", rtol=1e-4)
    assert ours["losses"][-1] < 0.1 * ours["losses"][0], f"toy, backend={backend}: {ours['losses']}"
    assert len(ours["predictions"]) == len(demos.TOY_TARGETS)


def test_toy_gets_close_to_its_targets():
    r = demos.toy(iterations=100, backend="reference", log=None)
    assert r["losses"][-1] < 1e-3, f"toy: final loss {r['losses'][-1]}"
    torch.testing.assert_close(torch.tensor(r["predictions"]), torch.tensor(demos.TOY_TARGETS), atol=0.02, rtol=0)


def test_charlm_small_run_learns_and_times_all_three():
    lines = []
    r = demos.charlm(text=demos.stdlib_corpus(20_000), epochs=3, hidden=64, timing_rounds=2,
                     sample_chars=30, backend="reference", log=lines.append)
    ppl = r["perplexity"]
    assert len(ppl) == 3 and ppl[-1] < 0.8 * ppl[0], f"charlm: perplexity did not fall: {ppl}"
    assert ppl[-1] < r["vocab"], f"charlm: perplexity {ppl[-1]} is no better than uniform over {r['vocab']}"
    assert set(r["tokens_per_s"]) == {"fastlstm", "torch.nn.LSTM", "tutorial loop"}
    assert all(v > 0 for v in r["tokens_per_s"].values()), r["tokens_per_s"]
    assert all(len(ts) == 2 for ts in r["step_times"].values()), r["step_times"]
    assert r["sample"].startswith("def ") and len(r["sample"]) == 4 + 30
    text = "\n".join(lines)
    assert "17,736 tokens/s" in text and "perplexity 1.3" in text, "the tutorial's reference figures are not printed"


def test_charlm_refuses_to_time_models_that_disagree():
    torch.manual_seed(0)
    a = demos._CharModel(torch.nn.LSTM(5, 8), 5)
    b = demos._wrap_like(demos.TutorialLSTM.from_lstm(a.rnn), a)
    X = torch.randint(0, 5, (3, 4))
    demos._check_agree({"a": a, "b": b}, X)
    with torch.no_grad():
        b.rnn.b_f.add_(0.1)
    with pytest.raises(RuntimeError, match="b and a disagree"):
        demos._check_agree({"a": a, "b": b}, X)


def test_charlm_sampling_is_seeded():
    kw = dict(text=demos.stdlib_corpus(5_000), epochs=1, hidden=16, timing_rounds=1, sample_chars=40,
              backend="reference", log=None)
    assert demos.charlm(**kw)["sample"] == demos.charlm(**kw)["sample"]


def test_charlm_rejects_a_too_short_text():
    with pytest.raises(ValueError, match="text: expected at least"):
        demos.charlm(text="abc", backend="reference", log=None)


def test_charlm_rejects_a_prefix_outside_the_vocabulary():
    with pytest.raises(ValueError, match="prefix"):
        demos.charlm(text="ab" * 2000, prefix="abc", backend="reference", log=None)


def test_stdlib_corpus_is_deterministic_and_capped():
    a, b = demos.stdlib_corpus(10_000), demos.stdlib_corpus(10_000)
    assert a == b and len(a) == 10_000


def test_demo_parser_wires_every_subcommand():
    parser = argparse.ArgumentParser()
    demos.add_parser(parser.add_subparsers(dest="command"))
    for name in ("sincos", "charlm", "toy"):
        args = parser.parse_args(["demo", name])
        assert args.func.__name__ == f"_run_{name}", f"demo {name}: wired to {args.func.__name__}"
    args = parser.parse_args(["demo", "charlm", "--quick", "--epochs", "2", "--backend", "reference"])
    assert args.quick and args.epochs == 2 and args.backend == "reference" and args.device == "cpu"


def test_demo_sincos_runs_in_process(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demos.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "sincos", "--windows", "10", "--backend", "reference", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert "window   10  loss" in capsys.readouterr().out
    assert (tmp_path / "sincos.png").stat().st_size > 0


def _cli(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "fastlstm", "demo", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_toy_prints_a_falling_loss(tmp_path):
    proc = _cli("toy", "--iterations", "15", "--backend", "reference", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iter")]
    assert len(lines) == 15, proc.stdout
    losses = [float(line.split()[3]) for line in lines]
    assert losses[-1] < losses[0], losses


def test_cli_sincos_writes_its_plot(tmp_path):
    out = tmp_path / "plots"
    proc = _cli("sincos", "--windows", "20", "--backend", "reference", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("loss") == 2, proc.stdout
    png = out / "sincos.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    assert sorted(os.listdir(tmp_path)) == ["plots"], "the demo wrote outside --out"


def _demo_error(argv, capsys):
    """Run `fastlstm demo ...` in this process, expecting it to refuse: (status, its one message)."""
    from fastlstm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", *argv])
    err = capsys.readouterr().err.strip()
    if isinstance(e.value.code, str):  # SystemExit("...") prints its message and exits 1
        return 1, e.value.code
    return e.value.code, err


@pytest.mark.parametrize("argv, needle", [
    (["charlm", "--device", "cuda:99"], "--device 'cuda:99'"),
    (["charlm", "--device", "tpu"], "--device 'tpu'"),
    (["charlm", "--text", "{missing}"], "--text"),
    (["charlm", "--text", "{short}", "--backend", "reference"], "text: expected at least"),
    (["charlm", "--epochs", "0"], "--epochs"),
    (["sincos", "--windows", "0"], "--windows"),
    (["sincos", "--out", "{short}/sub"], "--out"),
    (["toy", "--iterations", "-1"], "--iterations"),
    (["toy", "--lr", "0"], "--lr"),
])
def test_demo_bad_input_gets_one_line(argv, needle, tmp_path, capsys):
    (tmp_path / "short.txt").write_text("abc")
    argv = [a.replace("{missing}", str(tmp_path / "missing.txt")).replace("{short}", str(tmp_path / "short.txt"))
            for a in argv]
    code, message = _demo_error(argv, capsys)
    assert code not in (0, None), f"{argv}: exit status {code}"
    assert "\n" not in message and message.startswith("fastlstm demo"), f"{argv}: {message!r}"
    assert needle in message, f"{argv}: {message!r}"


def test_sincos_without_matplotlib_stops_before_training(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from fastlstm.cli import main; "
            "sys.exit(main(['demo', 'sincos', '--backend', 'reference', '--out', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "window" not in proc.stdout, "it trained before finding matplotlib missing"
    assert proc.stderr.strip().count("\n") == 0 and "pip install 'fastlstm[profile]'" in proc.stderr, proc.stderr
