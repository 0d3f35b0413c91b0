"""The wave step (`LaunchPlan.step == "wave"`) against the float64 reference
loop, and how the plan and the environment choose it.

The wave step is the second step body of the same kernels (`STEP_WAVE`): the
whole read of h[t-1] (dg[t+1] in the backward) issued before the first
product, xg and c loaded before the barrier wait (c kept in registers when the
batch is one tile), and the barrier split into arrive and wait around the
next step's input loads. Today's "chunked" step stays the default; both run
here in the launch modes of tests/test_triton_backend.py, whose helpers this
file reuses:
- "wave": persistent (under the interpreter, one program running every step
  and barrier), 16-wide K chunks so that a product has several, all in one
  wave;
- "wave-window": the same with two chunks in flight (the sliding window a
  large product gets when one wave would not fit);
- "wave-per-step": many small programs, one launch per step and phase (the
  multi-program grid the interpreter can run).
"""
import pytest
import torch

from test_triton_backend import (  # noqa: F401  (fixtures: _nan_buffers, autouse; recorded)
    DEVICE, GRID, INTERPRETED, H100, Layer, _check_layer, _nan_buffers, _train_once, _use_mode, recorded,
)

triton = pytest.importorskip("triton")
from fastlstm.backends import triton as tb  # noqa: E402
from fastlstm.backends.triton import launch as tb_launch  # noqa: E402
from fastlstm.backends.triton import layer as tb_layer  # noqa: E402
from fastlstm.backends.triton import plan as tb_plan  # noqa: E402

WAVE_MODES = {
    "wave": ("persistent", dict(step="wave", block_k=16, wave_k=64)),
    "wave-window": ("persistent", dict(step="wave", block_k=16, wave_k=2)),
    "wave-per-step": ("per-step", dict(step="wave", wave_k=64)),
}


@pytest.fixture(params=list(WAVE_MODES))
def wave_mode(request, monkeypatch):
    base, changes = WAVE_MODES[request.param]
    _use_mode(monkeypatch, base, **changes)
    return request.param


def _use_wave_mode(monkeypatch, mode: str) -> None:
    base, changes = WAVE_MODES[mode]
    _use_mode(monkeypatch, base, **changes)


# The conformance grid of tests/test_triton_backend.py, less its two
# single-step cases (no barrier, nothing carried between steps); the
# per-step mode, the slowest under the interpreter (a launch per step and
# phase), runs every other layer of it, packed and projected ones included.
WAVE_GRID = [layer for layer in GRID if layer.T > 1 or layer.packed]
PER_STEP_GRID = WAVE_GRID[::2]
assert any(layer.proj for layer in PER_STEP_GRID) and any(layer.packed for layer in PER_STEP_GRID)


@pytest.mark.parametrize("mode,layer", [(m, layer) for m in WAVE_MODES for layer in WAVE_GRID
                                        if m != "wave-per-step" or layer in PER_STEP_GRID],
                         ids=lambda v: str(v))
def test_float32_matches_reference(mode, layer, monkeypatch):
    _use_wave_mode(monkeypatch, mode)
    _check_layer(layer, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layer", [
    Layer(T=4, B=3, I=4, H=13),
    Layer(T=5, B=4, I=3, H=7, proj=5, packed=True),
], ids=str)
def test_half_matches_reference(layer, dtype, wave_mode):
    _check_layer(layer, dtype)


SEVERAL_TILES = [
    (Layer(T=3, B=37, I=3, H=35), torch.float32),
    (Layer(T=4, B=37, I=2, H=36, proj=33, packed=True), torch.float32),
    (Layer(T=3, B=67, I=2, H=35, packed=True), torch.bfloat16),
]


@pytest.mark.parametrize("wave_mode,layer,dtype", [(m, *case) for m in WAVE_MODES for case in SEVERAL_TILES
                                                   if m != "wave-per-step" or case is SEVERAL_TILES[0]],
                         ids=lambda v: str(v) if isinstance(v, (Layer, str)) else str(v)[6:])
def test_several_batch_tiles_and_k_chunks(wave_mode, layer, dtype, monkeypatch):
    """More than one batch tile a step (xg and c are then loaded per tile, not
    carried across the barrier) and several K chunks a product (the per-step
    mode: its first layer only, for time)."""
    _use_wave_mode(monkeypatch, wave_mode)
    fwd, bwd = tb_layer.plans_for(torch.empty(layer.T, layer.B, layer.I, dtype=dtype), layer.H, layer.proj,
                                  True)
    assert fwd.step == bwd.step == "wave", fwd
    assert -(-layer.B // fwd.block_b) > 1, f"one batch tile only: {fwd}"
    R = layer.proj or layer.H
    assert -(-R // fwd.block_k) > fwd.wave_k or wave_mode != "wave-window", f"one wave only: {fwd}"
    _check_layer(layer, dtype)


@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_no_grad_forward_matches(packed, proj, wave_mode):
    """Inference: one cell tile updated in place, c carried in registers."""
    from fastlstm.backends.reference import lstm_layer_reference

    layer = Layer(T=5, B=3, I=3, H=7, proj=proj, packed=packed)
    inputs = {k: (v.float().to(DEVICE) if v is not None else None) for k, v in layer.inputs().items()}
    bs = layer.batch_sizes()
    with torch.no_grad():
        got = tb.lstm_layer_triton(*inputs.values(), batch_sizes=bs)
    want = lstm_layer_reference(*(v.double() if v is not None else None for v in inputs.values()), batch_sizes=bs)
    for name, a, b in zip(("out", "h_n", "c_n"), got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
def test_wave_launch_count_does_not_grow_with_T(recorded, monkeypatch, proj):
    monkeypatch.setenv(tb_plan._STEP_ENV, "wave")
    _use_mode(monkeypatch, "persistent")
    fwd, bwd = recorded
    counts = []
    for T in (4, 16):
        fwd.launches.clear()
        bwd.launches.clear()
        _train_once(Layer(T=T, B=2, I=3, H=5, proj=proj, packed=True))
        launches = fwd.launches + bwd.launches
        assert all(launch["PERSISTENT"] and launch["STEP_WAVE"] and launch["ONE_TILE"] for launch in launches)
        counts.append((len(fwd.launches), len(bwd.launches)))
    assert counts == [(1, 1), (1, 1)], f"(forward, backward) launches at T=4 and T=16: {counts}"


def test_the_environment_chooses_the_step(recorded, monkeypatch):
    """FASTLSTM_TRITON_STEP reaches the kernels; unset, today's step runs."""
    fwd, bwd = recorded
    _use_mode(monkeypatch, "persistent")
    seen = []
    for value in (None, "chunked", "wave"):
        if value is None:
            monkeypatch.delenv(tb_plan._STEP_ENV, raising=False)
        else:
            monkeypatch.setenv(tb_plan._STEP_ENV, value)
        fwd.launches.clear()
        bwd.launches.clear()
        _train_once(Layer(T=3, B=2, I=3, H=5))
        seen.append({(launch["STEP_WAVE"], launch["ONE_TILE"]) for launch in fwd.launches + bwd.launches})
    assert seen == [{(False, False)}, {(False, False)}, {(True, True)}], seen
    monkeypatch.setenv(tb_plan._STEP_ENV, "fast")
    with pytest.raises(ValueError, match="FASTLSTM_TRITON_STEP must be 'chunked' or 'wave', got 'fast'"):
        _train_once(Layer(T=3, B=2, I=3, H=5))


# ----------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------


def test_the_plan_keeps_todays_step_by_default():
    for kernel in ("forward", "backward"):
        p = tb.launch_plan(16, 768, 0, torch.float16, **H100, training=True, kernel=kernel)
        assert (p.step, p.wave_k, p.maxnreg) == ("chunked", 0, tb_plan._MAXNREG_RESIDENT), p


def test_wave_plan_examples():
    # fp16, B=16, H=768 (cuDNN's persistent case): the forward's read of h
    # (6 chunks of 128) and the backward's of dg (24 chunks) are one wave each.
    f = tb.launch_plan(16, 768, 0, torch.float16, **H100, training=True, step="wave")
    b = tb.launch_plan(16, 768, 0, torch.float16, **H100, training=True, kernel="backward", step="wave")
    assert (f.grid, f.block_h, f.block_b, f.block_k) == ((96,), 8, 16, 128)
    assert f.wave_k >= 6 and b.wave_k >= 24, (f, b)
    assert f.maxnreg == b.maxnreg == tb_plan._MAXNREG_WAVE
    assert "wave step (24 chunks in flight)" in str(b)
    # The wave backward runs 16-row tiles (a 32-row tile's pointwise inputs
    # load one after another); the forward keeps 32.
    p = tb.launch_plan(128, 768, 0, torch.float16, **H100, training=True, kernel="backward", step="wave")
    assert p.block_b == 16 and p.wave_k >= 24, p
    assert tb.launch_plan(128, 1024, 0, torch.float16, **H100, training=True, step="wave").block_b == 32
    # 4-byte elements: a sliding window of chunks in flight.
    p = tb.launch_plan(128, 1024, 0, torch.float32, **H100, training=True, kernel="backward", step="wave")
    assert 1 <= p.wave_k < 4096 // 128, p
    # The wave bytes fit beside the weights in shared memory.
    a100 = dict(sm_count=108, smem_per_block=163 * 1024)
    p = tb.launch_plan(32, 1024, 0, torch.float16, **a100, training=True, kernel="backward", step="wave")
    assert p.smem_bytes + tb_plan._SMEM_SLACK + p.wave_k * p.block_b * p.block_k * 2 <= 163 * 1024, p
    # Streamed weights have no resident tiles to multiply: the plan keeps today's step.
    p = tb.launch_plan(16, 4096, 0, torch.float32, **H100, training=False, step="wave")
    assert not p.w_resident and (p.step, p.wave_k) == ("chunked", 0), p


def test_plan_refuses_an_unknown_step():
    with pytest.raises(ValueError, match="step must be 'chunked' or 'wave', got 'fast'"):
        tb.launch_plan(4, 8, 0, torch.float32, **H100, training=False, step="fast")


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_wave_barrier_timeout_gives_nan_and_the_named_error(monkeypatch, which):
    """The split barrier keeps the bounded spin and the error flag: a
    two-program persistent grid under the interpreter (programs run one after
    another) waits in vain and gives up; the broken launch's results are NaN
    and the host raises the named error (here asked for at once)."""
    if not INTERPRETED:
        pytest.skip("on a GPU the persistent grid is co-resident; the interpreter is not")
    monkeypatch.setattr(tb_launch, "_MAX_SPIN", 20)
    monkeypatch.setattr(tb_plan, "_MIN_UNITS", 4)
    real = tb_layer.plans_for

    def plans_for(x, hidden, proj, training):
        args = (x.shape[1], hidden, proj, x.dtype, 10_000, 227 * 1024, training)
        bad = [tb.launch_plan(*args, kernel=k, cooperative=True, step="wave") for k in ("forward", "backward")]
        assert all(p.persistent and p.grid[0] > 1 and p.step == "wave" for p in bad)
        good = real(x, hidden, proj, training)
        return (bad[0], bad[1]) if which == "forward" else (good[0], bad[1])

    monkeypatch.setattr(tb_layer, "plans_for", plans_for)
    # Buffers start as zeros here, not NaN: the NaN must be the kernel's.
    monkeypatch.setattr(tb_layer, "_empty", lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device))
    inputs = {k: (v.to(device=DEVICE, dtype=torch.float32).requires_grad_() if v is not None else None)
              for k, v in Layer(T=3, B=2, I=3, H=7).inputs().items()}
    out, h_n, c_n = tb.lstm_layer_triton(*inputs.values())
    if which == "forward":
        assert all(t.isnan().all() for t in (out, h_n, c_n)), "a broken forward's outputs must all be NaN"
    else:
        (out.sum() + h_n.sum() + c_n.sum()).backward()
        assert all(v.grad.isnan().all() for v in inputs.values() if v is not None), "gradients must all be NaN"
    with pytest.raises(RuntimeError, match=rf"barrier .*timed out \({which}, T=3, B=2, I=3, H=7, R=7, float32"):
        tb.raise_barrier_timeouts(DEVICE)


def test_units_per_program_can_be_asked_for(monkeypatch):
    """Fewer, wider programs (each reads all of h[t-1] or dg[t+1]: less L2
    traffic a step), for a GPU run to tune: by argument or environment."""
    p = tb.launch_plan(16, 768, 0, torch.float16, **H100, training=True, kernel="backward", step="wave", units=12)
    assert (p.grid, p.block_h, p.smem_bytes) == ((48,), 16, 16 * 4 * 768 * 2), p
    assert tb.launch_plan(16, 768, 0, torch.float16, **H100, training=True, units=0).block_h == 8
    with pytest.raises(ValueError, match="units must be >= 0"):
        tb.launch_plan(16, 768, 0, torch.float16, **H100, training=True, units=-1)
    x = torch.empty(3, 2, 4)
    monkeypatch.setenv(tb_plan._UNITS_ENV, "64")  # the interpreter's plan alone gives 32 at H = 20
    assert all(p.block_h == 64 for p in tb.plans_for(x, 20, 0, True))
    monkeypatch.setenv(tb_plan._UNITS_ENV, "wide")
    with pytest.raises(ValueError, match="FASTLSTM_TRITON_UNITS must be a whole number"):
        tb.plans_for(x, 40, 0, True)
