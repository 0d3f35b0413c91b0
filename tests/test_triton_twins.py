"""Every kernel variant an H100 or an A100 can pick is also computed on the CPU.

tests/aot.py compiles the variants `launch_plan` picks for sm_90 and sm_80
over a grid of layers (tests/variants.py). For each distinct variant key among
them (the kernel, the dtype and every compile-time flag; block sizes, chunk
counts and warps aside: `variants.variant_key`), this runs a layer on the
simulated GPU of that architecture (fastlstm.device) that launches a variant
of the same key, through the backend's own path, and checks its outputs,
final states and every gradient against a float64 reference. A key that is
compiled but that no layer computes fails here, and tests/test_triton_aot.py
checks that every compiled row's key is one of these.

The twin of a key is the cheapest layer found to launch it (the
interpreter's cost is programs x steps x tiles x chunks): the same dtype,
precision, mode, packing, step body and steps as a layer that gives it, at
the smallest batch, hidden and projection sizes that still give it.
"""
import functools
from typing import Dict, List, Optional, Tuple

import pytest
import torch

from fastlstm.device import simulate
from fastlstm.precision import answer_tolerance
from helpers import INTERPRETED, KernelLaunches

triton = pytest.importorskip("triton")
import variants  # noqa: E402
from fastlstm.backends import triton as tb  # noqa: E402
from fastlstm.backends.reference import lstm_layer_reference  # noqa: E402
from fastlstm.backends.triton import plan as tb_plan  # noqa: E402

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="twins are computed on a simulated GPU (the interpreter)")

# sm_90 first: its twins serve the keys of sm_80 that are the same.
ARCHS = sorted(variants.ARCHS, reverse=True)

# The sizes a twin is looked for at. Batches: one row, one 32-row tile (two of
# 16), two 32-row tiles. Hidden sizes whose K chunk divides them (16, 128 and
# up) and ones it does not (8, 24). Units a program: the plan's, and wider.
_BATCHES = (1, 17, 33)
_HIDDENS = (8, 16, 24, 128, 256, 512, 768, 1024)
_UNITS = (0, 32, 128)


def _cost(config: variants.Config, arch: str) -> int:
    """Work the interpreter does for a layer: over both kernels, programs x tiles x
    K chunks x steps."""
    batch, hidden, proj, _, _, _, training, steps, _ = config[:9]
    total = 0
    for plan, k in zip(variants.plans(config, arch), (proj or hidden, 4 * hidden)):
        if plan.kernel == "backward" and not training:
            continue
        total += plan.grid[0] * -(-batch // plan.block_b) * -(-k // plan.block_k) * steps
    return total


def _candidates(config: variants.Config) -> List[variants.Config]:
    """Layers like `config` but for the sizes, among them wider programs (more
    units each: fewer programs, the weights off chip or the wave's window
    sliding at a smaller hidden size)."""
    batch, hidden, proj, packed, dtype, precision, training, steps, step = config[:9]
    found = set()
    for b in sorted(set(_BATCHES) | {min(batch, 64)}):
        for h in sorted(set(_HIDDENS) | {hidden}):
            for p in ({0} if not proj else {q for q in (8, 16, 24, proj) if q < h}):
                for units in _UNITS:
                    found.add((b, h, p, packed, dtype, precision, training, steps, step, units))
    return list(found)


@functools.lru_cache(maxsize=None)
def _keys_of(config: variants.Config, arch: str) -> frozenset:
    return frozenset(variants.variant_key(kernel, config[4], kwargs)
                     for kernel, _, _, kwargs in variants.launch_arguments(config, arch))


@functools.lru_cache(maxsize=None)
def twins() -> Dict[tuple, Tuple[str, Optional[variants.Config]]]:
    """Each compiled key, the architecture whose simulated GPU computes it, and the
    cheapest layer that launches it there (None: not found). A key that sm_90
    and sm_80 share is computed once, on the first (the same code: only sizes
    differ)."""
    result = {}
    for arch in ARCHS:
        for key, config in variants.compiled_keys(arch).items():
            if key in result:
                continue
            result[key] = arch, next((c for c in sorted(_candidates(config), key=lambda c: (_cost(c, arch), c))
                                      if key in _keys_of(c, arch)), None)
    return result


def _inputs(config: variants.Config, seed: int = 0) -> Tuple[Dict[str, Optional[torch.Tensor]], Optional[torch.Tensor]]:
    batch, hidden, proj, packed, _, _, _, steps, _ = config[:9]
    g = torch.Generator().manual_seed(seed)
    T, B, I, H, R = steps, batch, 3, hidden, proj or hidden
    k = 1.5 / H ** 0.5

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    inputs = {"x": rnd(T, B, I), "h0": rnd(B, R, scale=0.5), "c0": rnd(B, H), "w_ih": rnd(4 * H, I, scale=k),
              "w_hh": rnd(4 * H, R, scale=k), "b_ih": rnd(4 * H, scale=0.5), "b_hh": rnd(4 * H, scale=0.5),
              "w_hr": rnd(R, H, scale=k) if proj else None}
    batch_sizes = None
    if packed:
        lengths = torch.randint(1, T + 1, (B,), generator=g).sort(descending=True).values
        lengths[0] = T
        batch_sizes = (lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)).sum(1)
    return inputs, batch_sizes


def _results(fn, inputs, batch_sizes, dtype, training: bool, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Outputs and final states, and in training every input's gradient under
    seeded random output gradients; float64 CPU, by name."""
    leaves = {k: (v.to(dtype).requires_grad_(training) if v is not None else None) for k, v in inputs.items()}
    with torch.set_grad_enabled(training):
        out, h_n, c_n = fn(*leaves.values(), batch_sizes=batch_sizes)
    result = {"out": out, "h_n": h_n, "c_n": c_n}
    if training:
        g = torch.Generator().manual_seed(seed + 2)
        grads = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in (out, h_n, c_n)]
        torch.autograd.backward((out, h_n, c_n), grads)
        result.update({f"grad_{k}": v.grad for k, v in leaves.items() if v is not None})
    return {k: v.detach().double() for k, v in result.items()}


def compute_twin(config: variants.Config, arch: str, key: tuple, monkeypatch) -> None:
    """Run `config` on `arch`'s simulated GPU; check that it launches `key` and
    matches the float64 reference."""
    _, _, _, _, dtype_name, precision, training, _, step, units = config
    dtype = getattr(torch, dtype_name)
    inputs, batch_sizes = _inputs(config)
    rounded = {k: (v.to(dtype).double() if v is not None else None) for k, v in inputs.items()}
    want = _results(lstm_layer_reference, rounded, batch_sizes, torch.float64, training)
    with monkeypatch.context() as mp, simulate(variants.ARCHS[arch]), \
            torch.backends.cudnn.flags(enabled=True, allow_tf32=precision != "ieee"):
        mp.setenv(tb_plan._STEP_ENV, step)
        mp.setenv(tb_plan._UNITS_ENV, str(units))
        spy = KernelLaunches(mp)
        got = _results(tb.lstm_layer_triton, inputs, batch_sizes, dtype, training)
    launched = {variants.variant_key(launch["kernel_fn"], dtype_name, launch) for launch in spy.all()}
    assert key in launched, f"{config} on {arch} launched {sorted(launched)}, not {key}"
    atol, rtol = answer_tolerance(dtype, "cpu", "triton", check="kernel")
    for name, b in want.items():
        a = got[name]
        assert a.shape == b.shape and torch.isfinite(a).all(), f"{config}: {name}"
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        err = (a - b).abs()
        assert not (err > atol * scale + rtol * b.abs()).any(), \
            f"{config} on {arch}: {name}: max abs error {err.max().item():.3g} (scale {scale:.3g}, atol {atol})"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_compiled_variant_has_a_twin(arch):
    found = twins()
    missing = [key for key in variants.compiled_keys(arch) if found[key][1] is None]
    assert not missing, f"{arch}: no small layer launches these compiled variants: {missing}"


_PARTS = 4


@pytest.mark.parametrize("arch, part", [pytest.param(arch, part, id=f"{arch}-{part}") for arch in ARCHS
                                        for part in range(_PARTS)])
def test_twins_match_float64(arch, part, monkeypatch):
    """The twins computed on `arch`'s simulated GPU, in a few parts (each a test)."""
    mine = sorted((key, twin) for key, (where, twin) in twins().items() if where == arch and twin is not None)
    failures = []
    for key, config in mine[part::_PARTS]:
        try:
            compute_twin(config, arch, key, monkeypatch)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)
