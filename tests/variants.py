"""The kernel variants the Triton backend launches on an H100 (sm_90) and an A100
(sm_80), enumerated without compiling or running anything.

- `configs(arch)`: the layers whose launches are checked, over a grid of
  shapes, dtypes and modes (below).
- `launch_arguments(config, arch)`: the launches of one of them, as the
  backend builds them: its own host code (`_lstm_fwd`, `_lstm_bwd`) on the
  GPU's plan (`launch_plan` with the GPU's properties,
  `fastlstm.device.SIMULATED_GPUS`), with the launches recorded where they
  all pass (`launch._kernel_launch`) instead of run.
- `variant_key(kernel, dtype, kwargs)`: what makes two launches the same code
  apart from sizes: the kernel, the dtype and every compile-time flag, block
  sizes, chunk counts and launch options (warps, register caps) aside; for the
  wave step, whether its window slides.

tests/aot.py compiles every distinct variant (in a process without Triton's
interpreter); tests/test_triton_twins.py computes a twin of every variant key
under a simulated GPU.
"""
import contextlib
import functools
import inspect
from typing import Dict, Iterator, List, Tuple

import torch

from fastlstm.backends.triton import launch, layer
from fastlstm.backends.triton.plan import launch_plan
from fastlstm.device import SIMULATED_GPUS

# The GPU each architecture is checked on.
ARCHS = {"sm_90": "H100", "sm_80": "A100"}
# Largest first: batches that share a plan compile once, at the largest of them.
BATCHES = (256, 64, 16, 8, 1)
HIDDENS = (128, 256, 512, 768, 1024)
# float32 twice: TF32 products (nn.LSTM's default on CUDA) and exact ones.
DTYPES = (("float32", "tf32"), ("float32", "ieee"), ("float16", None), ("bfloat16", None))
# Beyond the plain grid: projection and packing, in both kernels.
EXTRA = ((16, 1024, 256, True), (64, 768, 128, False), (16, 256, 64, True))
# The streamed-weights control: a layer whose weights cannot stay on chip.
STREAMED = (16, 2048, 0, False)
# One-step calls launch the same kernels step-wise (no barrier; one phase per
# launch): compiled for these layers (the largest plain one, and a projected one).
ONE_STEP = ((16, 1024, 0, False), (16, 1024, 256, True))
# float16 compiles to bfloat16's code but for the tensor-core instruction's
# element type; it is checked at these sizes only, to keep the run short.
FLOAT16_HIDDENS = (256, 1024)
# The wave step (`LaunchPlan.step == "wave"`, not the default): a
# representative subset of training layers (their forward and backward), in
# float16 at one-tile and many-tile batches and the sizes cuDNN's persistent
# kernel covers, bfloat16 and TF32 at the largest of them; plus the
# inference forward of cuDNN's case. sm_80, where shared memory is tightest,
# compiles the extremes only. (batch, hidden, dtype, precision, training)
WAVE = {
    "sm_90": [(b, h, "float16", None, True) for b in (16, 128) for h in (256, 768, 1024)]
    + [(b, h, d, p, True) for d, p in (("bfloat16", None), ("float32", "tf32"))
       for b, h in ((16, 768), (16, 1024), (128, 1024))]
    + [(16, 768, "float16", None, False)],
    "sm_80": [(16, 768, "float16", None, True), (128, 1024, "float16", None, True),
              (16, 768, "float32", "tf32", True), (128, 768, "float32", "tf32", True)],
}

# (batch, hidden, proj, packed, dtype, precision, training, steps, step), and
# optionally units: the fewest hidden units a program owns (launch_plan's
# `units`; 0 or absent: the plan's own choice).
Config = Tuple


def configs(arch: str) -> Iterator[Config]:
    """The layers whose launches are compiled (and computed) for `arch`."""
    for dtype, precision in DTYPES:
        for training in (False, True):
            for batch in BATCHES:
                for hidden in FLOAT16_HIDDENS if dtype == "float16" else HIDDENS:
                    yield batch, hidden, 0, False, dtype, precision, training, 2, "chunked"
            for batch, hidden, proj, packed in (() if dtype == "float16" else EXTRA) + (STREAMED,):
                yield batch, hidden, proj, packed, dtype, precision, training, 2, "chunked"
            for batch, hidden, proj, packed in ONE_STEP:
                yield batch, hidden, proj, packed, dtype, precision, training, 1, "chunked"
    # Today's step at cuDNN's case, for the critical-path comparison.
    yield 16, 768, 0, False, "float16", None, True, 2, "chunked"
    for batch, hidden, dtype, precision, training in WAVE[arch]:
        yield batch, hidden, 0, False, dtype, precision, training, 2, "wave"


def gpu_limits(arch: str) -> Dict[str, int]:
    props = SIMULATED_GPUS[ARCHS[arch]]
    return dict(sm_count=props.sm_count, smem_per_block=props.smem_per_block)


def plans(config: Config, arch: str):
    """The (forward, backward) plans of `config` on `arch`'s GPU."""
    batch, hidden, proj, packed, dtype, precision, training, steps, step = config[:9]
    limits = gpu_limits(arch)
    return tuple(launch_plan(batch, hidden, proj, getattr(torch, dtype), limits["sm_count"],
                             limits["smem_per_block"], training, kernel=k, exact_fp32=precision == "ieee",
                             step=step, units=config[9] if len(config) > 9 else 0)
                 for k in ("forward", "backward"))


@contextlib.contextmanager
def _recording() -> Iterator[List[tuple]]:
    """Every launch of the backend recorded as (kernel, grid, kwargs), none run."""
    seen: List[tuple] = []
    real = launch._kernel_launch
    launch._kernel_launch = lambda kernel, grid, kwargs, cooperative, device: seen.append(
        (kernel, tuple(grid), dict(kwargs)))
    try:
        yield seen
    finally:
        launch._kernel_launch = real


def launch_arguments(config: Config, arch: str) -> List[tuple]:
    """[(kernel, plan, grid, kwargs)] for one layer call of `config` on `arch`'s GPU,
    as the backend builds them."""
    batch, hidden, proj, packed, dtype, precision, training, steps, step = config[:9]
    dt = getattr(torch, dtype)
    T, B, H, R = steps, batch, hidden, proj or hidden
    fwd_plan, bwd_plan = plans(config, arch)
    z = lambda *shape: torch.zeros(*shape, dtype=dt)  # noqa: E731
    lens = torch.full((B,), T, dtype=torch.int32) if packed else None
    # One input feature: the input size changes only the host GEMMs, not the kernels.
    x, h0, c0, w_ih, w_hh = z(T, B, 1), z(B, R), z(B, H), z(4 * H, 1), z(4 * H, R)
    w_hr = z(R, H) if proj else None
    with _recording() as seen, torch.backends.cudnn.flags(enabled=True, allow_tf32=precision != "ieee"):
        out, hs, cs, gates, hc, _, _ = layer._lstm_fwd(x, h0, c0, w_ih, w_hh, z(4 * H), w_hr, lens, training,
                                                       fwd_plan)
        n_fwd = len(seen)
        if training:
            layer._lstm_bwd(z(T, B, R), z(B, R), z(B, H), x, h0, w_ih, w_hh, w_hr, hs, cs, gates, hc, lens,
                            (True,) * 7, bwd_plan)
    return [(kernel, fwd_plan if i < n_fwd else bwd_plan, grid, kwargs)
            for i, (kernel, grid, kwargs) in enumerate(seen)]


def constexpr_names(kernel) -> set:
    """A kernel's compile-time parameters: a compiled kernel's `params`, or, under
    the interpreter, the parameters annotated `tl.constexpr`."""
    if hasattr(kernel, "params"):
        return {p.name for p in kernel.params if p.is_constexpr}
    return {name for name, p in inspect.signature(kernel.fn).parameters.items() if "constexpr" in str(p.annotation)}


# Compile-time constants that are sizes, not code paths; and the interpreter's
# own bfloat16 workaround (tests/aot.py compiles with it off).
_SIZES = ("BLOCK_B", "BLOCK_H", "BLOCK_R", "BLOCK_K", "NUM_KR", "NUM_KH", "NUM_KG", "WAVE_K", "UPCAST_DOT")


def variant_key(kernel, dtype: str, kwargs: Dict[str, object]) -> tuple:
    """(kernel name, dtype, flags): the code a launch runs, sizes aside (see the module doc)."""
    names = constexpr_names(kernel)
    flags = {k: str(v) for k, v in kwargs.items() if k in names and k not in _SIZES}
    if kwargs.get("STEP_WAVE"):
        chunks = max(int(kwargs[k]) for k in ("NUM_KR", "NUM_KH", "NUM_KG") if k in kwargs)
        flags["WAVE_SLIDES"] = str(int(kwargs["WAVE_K"]) < chunks)
    name = getattr(kernel, "__name__", None) or kernel.fn.__name__
    return name, dtype, tuple(sorted(flags.items()))


@functools.lru_cache(maxsize=None)
def compiled_keys(arch: str) -> Dict[tuple, Config]:
    """Every variant key `arch`'s launches give, with the first config that gives it."""
    keys: Dict[tuple, Config] = {}
    for config in configs(arch):
        for kernel, _, _, kwargs in launch_arguments(config, arch):
            keys.setdefault(variant_key(kernel, config[4], kwargs), config)
    return keys
