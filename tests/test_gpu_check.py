"""`make gpu-check` rehearsed on the CPU (`make gpu-check-dry`): the same four stages
under the interpreter with tiny shapes, so the GPU command cannot rot between GPU
runs; and the driver's parts (stage failures recorded, junit summaries, the
warm-up's jobs) on their own."""
import json
import os
import subprocess
import sys

import pytest

from fastlstm.profile import gpu_check, warm
from fastlstm.profile.cli import GRID_PRESETS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_check(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "fastlstm.profile.gpu_check", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-dry")
    proc = _gpu_check("--dry", "--out", str(out))
    assert proc.returncode == 0, f"gpu-check --dry failed:\n{proc.stdout}\n{proc.stderr}"
    return out, proc


def test_dry_run_passes_every_stage_and_writes_as_documented(dry):
    out, proc = dry
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and list(summary["stages"]) == list(gpu_check.STAGES)
    assert all(r["status"] == "passed" and r["seconds"] <= r["timeout_s"] for r in summary["stages"].values())
    for name in ("environment.json", "tests.json", "native-0.xml", "native-1.xml", "barrier.xml", "profile.json",
                 "profile.csv", "results.json", "warm.json", "profile.log"):
        assert (out / name).is_file(), f"{name} missing: {sorted(os.listdir(out))}"
    env = json.loads((out / "environment.json").read_text())
    assert {"torch", "triton", "cudnn", "driver", "gpus", "commit", "cuda_runtime"} <= set(env)
    assert env["simulated_gpu"] == "H100" and env["gpus"][0]["sm_count"] == 132 and env["tf32"]
    assert "all stages passed" in proc.stdout


def test_dry_native_stage_runs_the_native_files_in_shards_and_skips_gpu_only_tests_with_a_reason(dry):
    tests = json.loads((dry[0] / "tests.json").read_text())
    assert tests["passed"] >= 4 and tests["failed"] == tests["errors"] == 0
    assert [s["shard"] for s in tests["shards"]] == ["0/2", "1/2"]
    assert any("FASTLSTM_TEST_NATIVE=1" in reason for reason in tests["skip_reasons"]), tests["skip_reasons"]


def test_dry_profile_covers_the_gpu_grids_parts(dry):
    """The gpu-dry grid on the simulated H100: the main sweep in three dtypes,
    every extra sweep (FlashRNN skipped off CUDA, with the reason), warmed first;
    and the rows of the GPU's paths: the device named, Triton's launch plans,
    cuDNN's algorithm, peak memory, times from the GPU's events."""
    out = dry[0]
    rows = json.loads((out / "profile.json").read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["dtype"] for r in ok} == {"float16", "bfloat16", "float32"}
    assert any(r["bidirectional"] and r["layers"] == 2 for r in ok)
    assert any(r["packed"] for r in ok)
    assert {r["backend"] for r in ok} == {"triton", "jit", "torch", "tutorial", "scripted"}
    flash = [r for r in rows if r["backend"] == "flashrnn"]
    assert flash and all(r["status"] == "skipped" and "CUDA" in r["note"] for r in flash)
    assert all(r["device_name"] == "NVIDIA H100 80GB HBM3 (simulated)" for r in rows)
    triton = [r for r in ok if r["backend"] == "triton"]
    assert triton and all(r["plan"].startswith("forward") for r in triton), [r["plan"] for r in triton]
    assert any("2 programs" in r["plan"] and "persistent" in r["plan"] for r in triton)
    assert all(r["cudnn_algo"] in ("standard", "persistent", "persistent-small-h", "persistent-small-h / standard")
               for r in ok if r["workload"] == "layer"), {r["cudnn_algo"] for r in ok}
    assert all(r["peak_mem_bytes"] and r["peak_mem_bytes"] > 0 for r in ok), [r["peak_mem_bytes"] for r in ok]
    assert all(r["ms"] > 0 for r in ok)
    assert len(list(out.glob("profile-*.png"))) == 3 + 4
    warmed = json.loads((out / "warm.json").read_text())
    assert {w["backend"] for w in warmed} == {"triton", "flashrnn"}
    assert all(w["status"] == "ok" for w in warmed if w["backend"] == "triton")
    assert all(w["status"] == "skipped" and "CUDA" in w["note"] for w in warmed if w["backend"] == "flashrnn")


def test_a_stage_that_times_out_is_recorded_and_the_next_still_runs(tmp_path):
    proc = _gpu_check("--dry", "--out", str(tmp_path), "--stages", "barrier,env", "--timeouts", "barrier=0.5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    stages = json.loads((tmp_path / "summary.json").read_text())["stages"]
    assert stages["barrier"]["status"] == "timeout" and stages["env"]["status"] == "passed"
    assert "NOT all stages passed" in proc.stdout


@pytest.mark.parametrize("args,needle", [
    (["--stages", "env,bake"], "--stages"), (["--timeouts", "env=-1"], "--timeouts"),
    (["--timeouts", "lunch=3"], "--timeouts"), (["--shards", "0"], "--shards"),
])
def test_bad_arguments_are_refused(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--dry", "--out", str(tmp_path), *args])
    assert exit_.value.code == 2 and needle in capsys.readouterr().err
    assert not os.listdir(tmp_path), "nothing run"


def test_junit_summary_counts_and_names_failures(tmp_path):
    (tmp_path / "a.xml").write_text(
        '<testsuites><testsuite><testcase classname="t" name="ok" time="1.5"/>'
        '<testcase classname="t" name="bad" time="0.5"><failure message="boom"/></testcase>'
        '<testcase classname="t" name="gpu"><skipped message="needs a GPU"/></testcase>'
        '</testsuite></testsuites>')
    s = gpu_check.junit_summary([str(tmp_path / "a.xml"), str(tmp_path / "missing.xml")])
    assert (s["passed"], s["failed"], s["skipped"], s["errors"], s["seconds"]) == (1, 1, 1, 1, 2.0)
    assert s["failures"][0] == {"test": "t::bad", "message": "boom"} and s["skip_reasons"] == {"needs a GPU": 1}


def _gpu_jobs():
    g = GRID_PRESETS["gpu"]
    return warm.warm_jobs(g["dtype"], g["hidden"], g["batch"], g["seq_lens"], g["backends"], g["extras"])


def test_the_warm_up_compiles_each_kernel_class_of_the_gpu_grid_once_and_keeps_classes_together():
    jobs = _gpu_jobs()
    assert ("triton", "float16", 16, 768, 1, False, False, 1) in jobs  # T=1 runs without the barrier
    assert ("triton", "float16", 16, 768, 1, False, False, 2) in jobs  # any longer T: one persistent kernel
    assert not any(j[0] == "triton" and j[-1] > 2 for j in jobs)
    assert ("flashrnn", "bfloat16", 16, 768, 1, False, False, 1024) in jobs
    assert any(j[5] for j in jobs) and any(j[6] for j in jobs), "the bidirectional and packed sweeps"
    assert len(jobs) == len(set(jobs))
    shards = warm.shard_jobs(jobs, 14)
    assert sorted(j for s in shards for j in s) == sorted(jobs) and len(shards) == 14
    flash = [s for s in shards if any(j[0] == "flashrnn" for j in s)]
    assert flash and all(len(s) == 1 for s in flash), "FlashRNN's extension builds alone, it takes longest"
    where = {j: i for i, s in enumerate(shards) for j in s}
    # B=64 and B=256 share Triton's batch tile (32 rows): one process compiles both.
    assert where[("triton", "bfloat16", 64, 1024, 1, False, False, 2)] == \
        where[("triton", "bfloat16", 256, 1024, 1, False, False, 2)]


def test_the_cpu_rehearsal_warms_jit_in_the_cached_backends_place():
    g = GRID_PRESETS["gpu-dry"]
    jobs = warm.warm_jobs(g["dtype"], g["hidden"], g["batch"], g["seq_lens"], ["triton", "torch"], g["extras"],
                          stand_in="jit")
    assert jobs and {j[0] for j in jobs} == {"jit"}
