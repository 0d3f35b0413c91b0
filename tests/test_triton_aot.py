"""The Triton kernels compiled ahead of time for an H100 (sm_90) and an A100
(sm_80), with no GPU: every configuration `launch_plan` picks over B in
{1, 8, 16, 64, 256}, H in {128, 256, 512, 768, 1024}, float32 (TF32 and
exact) and bfloat16 (float16 at H 256 and 1024), inference and training, plus
projected, packed and streamed-weight layers, and the step-wise variants that
one-step calls launch (for a plain and a projected layer at H 1024); and the wave step
(`LaunchPlan.step == "wave"`, not the default) over a representative subset, whose
critical path is read off the SASS (`aot.step_critical_path`). `tests/aot.py` does the
compiling, in one process per architecture without the interpreter; these
tests check what it reports.

Compiling takes minutes, so tests/conftest.py starts both processes (at low
priority) as soon as these tests are collected, and runs these tests last:
the compiles overlap the rest of the suite.
"""
import atexit
import json
import os
import subprocess
import sys
import tempfile

import pytest

pytest.importorskip("triton")
import variants as variant_list  # noqa: E402  (tests/variants.py)

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHS = ("sm_90", "sm_80")
# 64K 32-bit registers per SM on both GPUs; at most 32 resident blocks.
REGISTERS_PER_SM = 65536


_RUNS = {}  # arch -> (process, stdout file, stderr file)


def start():
    """Start the compiling processes, once (tests/conftest.py calls this at collection)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    for arch in ARCHS:
        if arch not in _RUNS:
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "aot.py"), arch], stdout=out, stderr=err,
                                    env=env, text=True, preexec_fn=lambda: os.nice(10))
            _RUNS[arch] = (proc, out, err)


@atexit.register
def _stop():
    for proc, _, _ in _RUNS.values():
        if proc.poll() is None:
            proc.kill()


def _collect(arch):
    proc, out, err = _RUNS[arch]
    proc.wait(timeout=1800)
    out.seek(0)
    err.seek(0)
    assert proc.returncode == 0, f"compiling for {arch} failed:\n{err.read()[-4000:]}"
    return [json.loads(line) for line in out.read().splitlines()]


@pytest.fixture(scope="module")
def compiled():
    start()
    return [row for arch in ARCHS for row in _collect(arch)]


@pytest.fixture(scope="module")
def variants(compiled):
    """The configurations the plan picks (not the controls)."""
    return [v for v in compiled if v["control"] is None]


def _name(v):
    return (f"{v['arch']} {v['kernel']} {v['dtype']}{'/' + v['precision'] if v['precision'] else ''} "
            f"{'train' if v['training'] else 'infer'} B={v['batch']} H={v['hidden']} proj={v['proj']} "
            f"packed={v['packed']} [{v['plan']}]")


def _failures(variants, bad):
    return [f"{_name(v)}: {why}" for v in variants for why in [bad(v)] if why]


def test_every_configuration_was_compiled(variants):
    for arch in ARCHS:
        mine = [v for v in variants if v["arch"] == arch]
        kinds = {(v["kernel"], v["dtype"], v["precision"], v["training"]) for v in mine}
        # forward (inference and training) and backward, for each of 4 dtype settings
        assert len(kinds) == 3 * 4, sorted(kinds)
        assert {v["hidden"] for v in mine} >= {128, 256, 512, 768, 1024, 2048}
        assert any(v["proj"] and v["packed"] for v in mine) and any(not v["resident"] for v in mine)
        # one-step calls: the step-wise variants, each phase on its own
        one_step = {(v["kernel"], v["flags"].get("CELL"), v["flags"].get("PROJECT", v["flags"].get("RECUR")))
                    for v in mine if not v["persistent"]}
        assert one_step == {("lstm_fwd_kernel", "True", "False"), ("lstm_fwd_kernel", "False", "True"),
                            ("lstm_bwd_kernel", "True", "False"), ("lstm_bwd_kernel", "False", "True")}, one_step
        assert len(mine) >= 100, f"{arch}: only {len(mine)} distinct variants"


def test_every_compiled_variant_is_one_the_twins_compute(variants):
    """tests/test_triton_twins.py computes, on a simulated GPU, a twin of every key
    `variant_list.compiled_keys` gives (the same enumeration this compiled,
    read in this process under the interpreter); a variant compiled here under
    another key (a layer compiled outside that enumeration, or keys read
    differently from compiled and interpreted kernels) would have none."""
    for arch in ARCHS:
        compiled = {(v["variant_key"][0], v["variant_key"][1], tuple(tuple(f) for f in v["variant_key"][2]))
                    for v in variants if v["arch"] == arch}
        computed = set(variant_list.compiled_keys(arch))
        assert compiled == computed, (f"{arch}: compiled but not computed: {sorted(compiled - computed)}; "
                                      f"computed but not compiled: {sorted(computed - compiled)}")


def test_no_spill_traffic_inside_a_step(variants, compiled):
    """No spill load or store inside the work of a step (batch tiles, K chunks,
    the barrier's spin). Some configurations do spill a few loop-invariant
    scalars (8-24 bytes at the register cap): ptxas stores them before the time
    loop and reloads them once per step, a few L1 hits against a step's
    microseconds; which configurations, and how many bytes, changes with every
    register cap tried, so this is what is asserted. (`spill_bytes` is in
    each row for the record.)"""
    bad = _failures(variants, lambda v: v["spills_inside_steps"]
                    and f"{v['spills_inside_steps']} spill loads/stores inside a step "
                        f"({v['spill_bytes']} bytes, {v['registers']} registers)")
    assert not bad, "\n".join(bad)
    # The check can fail: a forward forced to spill (64-row tiles, 64 registers) is caught.
    controls = [v for v in compiled if v["control"] == "spills"]
    assert len(controls) == len(ARCHS) and all(v["spills_inside_steps"] > 0 for v in controls), controls
    # Most configurations spill nothing at all.
    spilling = [v for v in variants if v["spill_bytes"]]
    assert len(spilling) <= len(variants) // 5, [(_name(v), v["spill_bytes"]) for v in spilling]


def test_shared_memory_within_the_per_block_limit(variants):
    bad = _failures(variants, lambda v: v["shared"] > v["gpu"]["smem_per_block"]
                    and f"{v['shared']} bytes of shared memory > {v['gpu']['smem_per_block']}")
    assert not bad, "\n".join(bad)


def _blocks_per_sm(v):
    threads = 32 * v["num_warps"]
    # registers are allocated per warp in units of 256
    regs_per_warp = -(-v["registers"] * 32 // 256) * 256
    by_regs = REGISTERS_PER_SM // (regs_per_warp * v["num_warps"])
    by_smem = v["gpu"]["smem_per_sm"] // max(v["shared"] + 1024, 1)  # 1 KiB reserved per block
    return min(by_regs, by_smem, 32, 2048 // threads)


def test_persistent_grids_are_co_resident(variants):
    def bad(v):
        fits = v["gpu"]["sm_count"] * _blocks_per_sm(v)
        if v["persistent"] and v["grid"] > fits:
            return (f"grid of {v['grid']} > {fits} co-resident programs ({v['registers']} registers, "
                    f"{v['shared']} bytes shared)")
        return None

    assert not _failures(variants, bad), "\n".join(_failures(variants, bad))
    assert all(v["persistent"] for v in variants if v["steps"] > 1 and v["hidden"] <= 1024)


def test_products_run_on_tensor_cores(variants):
    want = {"float16": "f16", "bfloat16": "bf16", "float32": "tf32"}

    def bad(v):
        if v["precision"] == "ieee":
            return None  # exact float32 products: no tensor-core format keeps 24 bits
        tag = want[v["dtype"]]
        return None if tag in v["tensor_core"] else f"no {tag} tensor-core instructions, found {v['tensor_core']}"

    assert not _failures(variants, bad), "\n".join(_failures(variants, bad))


def test_resident_weights_are_not_read_from_memory_inside_the_time_loop(variants):
    bad = _failures(variants, lambda v: v["resident"] and v["weight_loads_in_loop"]
                    and f"{v['weight_loads_in_loop']} weight loads inside the time loop")
    assert not bad, "\n".join(bad)
    # The check can fail: where the plan streams the weights, it finds the loads.
    streamed = [v for v in variants if not v["resident"]]
    assert streamed and all(v["weight_loads_in_loop"] > 0 for v in streamed), [_name(v) for v in streamed]


# ----------------------------------------------------------------------------
# The wave step (LaunchPlan.step == "wave"): its critical path, from the SASS
# ----------------------------------------------------------------------------


def _wave(variants, kernel):
    return [v for v in variants if v["step"] == "wave" and v["kernel"] == kernel]


def _chunks(v):
    """K chunks of the step's product: h[t-1] (forward), dg[t+1] (backward)."""
    return int(v["flags"]["NUM_KR" if v["kernel"] == "lstm_fwd_kernel" else "NUM_KG"])


def test_wave_step_variants_were_compiled(variants):
    for arch in ARCHS:
        wave = [v for v in variants if v["arch"] == arch and v["step"] == "wave"]
        kinds = {(v["kernel"], v["dtype"]) for v in wave}
        assert {(k, "float16") for k in ("lstm_fwd_kernel", "lstm_bwd_kernel")} <= kinds, kinds
        assert ("lstm_bwd_kernel", "float32") in kinds, kinds
        assert {v["batch"] for v in wave} >= {16, 128}
        assert all(v["persistent"] and v["resident"] and v["flags"]["STEP_WAVE"] == "True" for v in wave)
        assert all(v["critical_path"] for v in wave), [_name(v) for v in wave if not v["critical_path"]]
    # Every other variant is today's step.
    assert all(v["flags"]["STEP_WAVE"] == "False" for v in variants if v["step"] == "chunked")


def test_the_wave_forward_waits_for_one_wave_after_the_barrier(variants):
    """In every wave forward whose read of h[t-1] fits the wave (wave_k >= its
    chunks; on an H100 every size up to H = 1024, B = 128 in 16-bit and
    TF32), from the barrier to the next: one memory round trip per batch
    tile. All the loads of h[t-1] are issued before the first wait for any
    of them (xg was loaded before the barrier wait and c is in registers
    when the batch is one tile; with several tiles each tile loads its xg
    and c in the same wave as its h), and no weight is read from memory.
    (Where the A100's shared memory leaves room for fewer chunks, the read
    slides through wave_k chunks at a time: in the report, not asserted.)"""

    def bad(v):
        path = v["critical_path"]
        if path["round_trips"] != 1 or path["first_wave"] < _chunks(v) or v["weight_loads_in_loop"]:
            return f"{path}, {_chunks(v)} chunks, {v['weight_loads_in_loop']} weight loads in the time loop"
        return None

    rows = [v for v in _wave(variants, "lstm_fwd_kernel") if int(v["flags"]["WAVE_K"]) >= _chunks(v)]
    assert {(v["arch"], v["batch"]) for v in rows} >= {(a, 16) for a in ARCHS} | {("sm_90", 128)}, rows
    assert not _failures(rows, bad), "\n".join(_failures(rows, bad))


def test_the_wave_backward_waits_for_one_wave_where_its_read_fits(variants):
    """A wave backward whose batch is one 16-row tile and whose dg[t+1] read
    fits the wave (wave_k >= its chunks: fp16/bf16 up to H = 768 at B <= 16)
    waits for one round trip a step, its tile's own inputs (saved gates, c,
    dc, dout) loaded in the same wave. (With 32-row tiles the layout
    conversions of those inputs serialise their loads, and a larger read
    slides through wave_k chunks at a time: those rows are in the report,
    not asserted.)"""
    rows = [v for v in _wave(variants, "lstm_bwd_kernel")
            if int(v["flags"]["BLOCK_B"]) == 16 and int(v["flags"]["WAVE_K"]) >= _chunks(v)]

    def bad(v):
        path = v["critical_path"]
        if path["round_trips"] != 1 or path["first_wave"] < _chunks(v) or v["weight_loads_in_loop"]:
            return f"{path}, {_chunks(v)} chunks, {v['weight_loads_in_loop']} weight loads in the time loop"
        return None

    assert {v["arch"] for v in rows} == set(ARCHS), [_name(v) for v in rows]
    assert not _failures(rows, bad), "\n".join(_failures(rows, bad))


def test_the_wave_step_splits_its_products_into_four_chains(variants):
    """Each tensor-core instruction of a dot waits for the previous one on its
    accumulator: the wave step's four accumulators make the longest chain a
    quarter of the product's K steps (16 per instruction, 8 in TF32), or two
    chunks' worth: Triton folds the final sum of an accumulator that holds
    one dot alone back into a chain (dot(a, b, 0) + c -> dot(a, b, c))."""

    def bad(v):
        k_step = 8 if v["dtype"] == "float32" else 16
        most = max(2, -(-_chunks(v) // 4)) * int(v["flags"]["BLOCK_K"]) // k_step
        chain = v["critical_path"]["hmma_chain"]
        return chain > most and f"a chain of {chain} dependent HMMAs > {most}"

    rows = [v for v in variants if v["step"] == "wave"]
    assert not _failures(rows, bad), "\n".join(_failures(rows, bad))


def test_the_critical_path_check_sees_todays_chunked_step(variants):
    """The count can fail: today's step at cuDNN's case (fp16, B=16, H=768)
    waits out one round trip per 128-wide chunk of h[t-1] (6) and one more
    for xg and c in the forward, one per chunk of dg[t+1] (24) and more for
    the saved gates and c in the backward."""
    rows = [v for v in variants if v["step"] == "chunked" and v["critical_path"]]
    assert {(v["arch"], v["kernel"]) for v in rows} == {(a, k) for a in ARCHS
                                                       for k in ("lstm_fwd_kernel", "lstm_bwd_kernel")}, rows
    for v in rows:
        assert v["critical_path"]["round_trips"] > _chunks(v), (_name(v), v["critical_path"])
