"""Ahead-of-time compilation of the Triton kernels for a GPU that is not here.

`tests/test_triton_aot.py` runs this file as a script, in a process without
TRITON_INTERPRET (the interpreter replaces the kernels with Python functions
that cannot be compiled):

    python tests/aot.py sm_90      # one JSON object per compiled variant, one per line

For every kernel configuration `launch_plan` picks on that GPU over a grid of
shapes, dtypes and modes, it builds the launch arguments with the backend's
own host code (`_lstm_fwd` / `_lstm_bwd`, with the kernels swapped for a
recorder that launches nothing), compiles each distinct variant through
Triton's own dispatch path (`warmup`, with a stand-in driver that names the
target), and reports what the compiled code uses: registers and spills (the wheel's
`cuobjdump`, and where in the loops the spill instructions sit), shared
memory, tensor-core instructions, whether the time loop loads the weights
from global memory, and, for the wave step's variants and today's step at
cuDNN's persistent case, the step's critical path read off the SASS
(`step_critical_path`: memory round trips after the barrier, CTA barriers,
the longest chain of dependent tensor-core instructions). Each row also
carries `sass_sha256`, a digest of the SASS instructions alone
(`sass_digest`), so that two runs can be compared variant by variant: a
refactoring that should leave the compiled code alone must leave every
digest unchanged.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its default

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from fastlstm.backends.triton import launch, layer  # noqa: E402
from fastlstm.backends.triton.plan import launch_plan  # noqa: E402
from fastlstm.kernels import lstm_bwd, lstm_fwd  # noqa: E402

# What a plan needs to know of each GPU (opt-in shared memory per block, per SM).
GPUS = {
    "sm_90": dict(cc=90, name="H100", sm_count=132, smem_per_block=227 * 1024, smem_per_sm=228 * 1024),
    "sm_80": dict(cc=80, name="A100", sm_count=108, smem_per_block=163 * 1024, smem_per_sm=164 * 1024),
}
# Largest first: batches that share a plan compile once, at the largest of them.
BATCHES = (256, 64, 16, 8, 1)
HIDDENS = (128, 256, 512, 768, 1024)
# float32 twice: TF32 products (nn.LSTM's default on CUDA) and exact ones.
DTYPES = (("float32", "tf32"), ("float32", "ieee"), ("float16", None), ("bfloat16", None))
# Beyond the plain grid: projection and packing, in both kernels.
EXTRA = ((16, 1024, 256, True), (64, 768, 128, False), (16, 256, 64, True))
# The streamed-weights control: a layer whose weights cannot stay on chip.
STREAMED = (16, 2048, 0, False)
# The spill-location control: a forward forced into heavy spilling (64-row
# batch tiles, 64 registers), so the check is seen to catch spills in a step.
SPILL_CONTROL = dict(batch=256, hidden=1024, dtype="bfloat16", precision=None, BLOCK_B=64, maxnreg=64)
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


class _Target:
    """Stands in for Triton's CUDA driver: the target to compile for, no device."""

    def __init__(self, cc):
        self.target = GPUTarget("cuda", cc, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


class _Recorder:
    """Takes the place of a kernel in the backend: records each launch's arguments."""

    def __init__(self, kernel):
        self.kernel, self.fn, self.launches = kernel, kernel.fn, []

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.launches.append((grid, dict(zip(launch._param_names(self.kernel), args), **kwargs)))

        return record


def _launch_arguments(batch, hidden, proj, packed, dtype, precision, training, gpu, steps=2, step="chunked"):
    """[(kernel, plan, grid, kwargs)] for one layer call on `gpu`, as the backend builds them
    (`step`: the plan's step body, "chunked" or "wave")."""
    fwd_rec, bwd_rec = _Recorder(lstm_fwd.lstm_fwd_kernel), _Recorder(lstm_bwd.lstm_bwd_kernel)
    real = lstm_fwd.lstm_fwd_kernel, lstm_bwd.lstm_bwd_kernel
    lstm_fwd.lstm_fwd_kernel, lstm_bwd.lstm_bwd_kernel = fwd_rec, bwd_rec
    try:
        dt = getattr(torch, dtype)
        T, B, H, R = steps, batch, hidden, proj or hidden
        fwd_plan, bwd_plan = (launch_plan(B, H, proj, dt, gpu["sm_count"], gpu["smem_per_block"], training,
                                          kernel=k, exact_fp32=precision == "ieee", step=step)
                              for k in ("forward", "backward"))
        z = lambda *shape: torch.zeros(*shape, dtype=dt)  # noqa: E731
        lens = torch.full((B,), T, dtype=torch.int32) if packed else None
        x, h0, c0, w_ih, w_hh = z(T, B, H), z(B, R), z(B, H), z(4 * H, H), z(4 * H, R)
        w_hr = z(R, H) if proj else None
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=precision != "ieee"):
            out, hs, cs, gates, hc, _, _ = layer._lstm_fwd(x, h0, c0, w_ih, w_hh, z(4 * H), w_hr, lens, training,
                                                           fwd_plan)
            if training:
                layer._lstm_bwd(z(T, B, R), z(B, R), z(B, H), x, h0, w_ih, w_hh, w_hr, hs, cs, gates, hc, lens,
                                (True,) * 7, bwd_plan)
    finally:
        lstm_fwd.lstm_fwd_kernel, lstm_bwd.lstm_bwd_kernel = real
    result = [(real[0], fwd_plan, *launch) for launch in fwd_rec.launches]
    result += [(real[1], bwd_plan, *launch) for launch in bwd_rec.launches]
    for _, plan, _, kwargs in result:
        if kwargs.get("PERSISTENT"):
            kwargs["launch_cooperative_grid"] = True  # as on a GPU (the recorder saw CPU tensors)
    return result


def _configs(arch):
    """(batch, hidden, proj, packed, dtype, precision, training, steps, step) to compile."""
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


_OPTIONS = ("num_warps", "num_stages", "maxnreg", "launch_cooperative_grid")


def _resource_usage(cubin: bytes):
    """(registers, stack bytes) of the compiled kernel, from the wheel's cuobjdump.
    The kernels have no local arrays, so any stack is register spills."""
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = os.path.join(os.path.dirname(get_ptxas(90).path), "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        r = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"cuobjdump failed: {r.stderr}")
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", r.stdout))
    return int(usage["REG"]), int(usage["STACK"]) + int(usage["LOCAL"])


def _sass(cubin: bytes) -> str:
    """The SASS of a cubin, from the wheel's cuobjdump."""
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = os.path.join(os.path.dirname(get_ptxas(90).path), "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True, check=True).stdout


_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+[^;]*;")


def sass_digest(cubin: bytes) -> str:
    """The SHA-256 of a cubin's SASS instructions, each as its `/*address*/ INSTR ;`
    text with runs of blanks made one, one a line: no header lines (the
    function's name, sections) and no encodings. Equal digests mean the same
    code, instruction for instruction."""
    text = "\n".join(" ".join(m.group(0).split()) for m in _INSTRUCTION.finditer(_sass(cubin)))
    return hashlib.sha256(text.encode()).hexdigest()


def spills_inside_steps(cubin: bytes) -> int:
    """Spill loads and stores (LDL/STL; the kernels have no local arrays) that sit
    inside a loop nested in another loop, in the SASS: inside the work of a
    step (batch tiles, K chunks, the barrier's spin), as opposed to before the
    time loop or once per step. Loops are read off the backward branches."""
    sass = _sass(cubin)
    code = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for addr, op in code:
        m = re.search(r"\bBRA\b[^0-9]*?(0x[0-9a-f]+)", op)
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    return sum(1 for addr, op in code if re.search(r"\b(?:LDL|STL)\b", op)
               and sum(start <= addr <= end for start, end in loops) >= 2)


def sass_instructions(sass: str):
    """[(address, instruction text, wait mask, write scoreboard)] from cuobjdump's
    SASS of a Volta-or-newer GPU. Each 128-bit instruction is printed as two
    64-bit words; the high word's top 23 bits are its control bits (the
    layout documented by the maxas/CuAssembler projects): stall (4 bits),
    yield (1), the scoreboard it sets when its result lands (3; 7 = none),
    the one it sets when its operands are read (3), and the mask of
    scoreboards it waits for before issuing (6)."""
    lines = sass.splitlines()
    code = []
    for i, line in enumerate(lines):
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+([^;]*);\s*/\* 0x[0-9a-f]{16} \*/", line)
        if not m:
            continue
        hi = re.search(r"/\* 0x([0-9a-f]{16}) \*/", lines[i + 1])
        ctrl = int(hi.group(1), 16) >> 41
        code.append((int(m.group(1), 16), m.group(2).strip(), (ctrl >> 11) & 0x3F, (ctrl >> 5) & 7))
    return code


_LDG = re.compile(r"\bLDG\.")
_POLL_FENCE = re.compile(r"\bCCTL\.IVALL\b")


def _is_poll(code, i: int) -> bool:
    """Whether the global load at code[i] is the barrier's acquire poll: the next
    global load or L1 invalidation within a few instructions is CCTL.IVALL."""
    after = [o for _, o, _, _ in code[i + 1:i + 9] if _LDG.search(o) or _POLL_FENCE.search(o)]
    return bool(after) and bool(_POLL_FENCE.search(after[0]))


def step_critical_path(cubin: bytes) -> dict:
    """What the SASS of a persistent kernel waits for in one step of its time loop.

    The time loop is the backward branch around the barrier's poll that spans
    the most code. Its body is
    walked in order, as straight-line code (an inner loop's body once: one
    batch tile, one poll of the barrier), twice over, counting the second
    pass, so that loads issued in one step (a prefetch) and waited for in the
    next are seen as such. Global loads are `LDG`s; an `LDG` followed by
    `CCTL.IVALL` (before any other `LDG`) is the barrier's acquire poll. A wait is an instruction
    whose wait mask names a scoreboard that pending loads set (or a `DEPBAR`
    on it). A wait is a new memory round trip when some load it waits for was
    issued after the previous round trip (or the barrier) was waited out;
    loads issued before that were in flight during it.

    Returns: round_trips (per step, after the barrier; the barrier's own
    poll not counted), first_wave (global loads issued after the barrier
    before the first wait for any of them), loads (global loads per step,
    the poll not counted), cta_barriers (BAR.SYNC per step), hmma_chain (the
    longest chain of dependent tensor-core instructions)."""
    code = sass_instructions(_sass(cubin))
    loops = []
    for i, (addr, op, _, _) in enumerate(code):
        m = re.search(r"\bBRA\b[^0-9]*?(0x[0-9a-f]+)", op)
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    # Only a loop around the barrier's poll can be the time loop: the kernels'
    # other loops (the initial and final copies, the NaN fill of a launch that
    # timed out) meet no barrier, and some of them span more code.
    poll_at = [addr for i, (addr, op, _, _) in enumerate(code) if _LDG.search(op) and _is_poll(code, i)]
    loops = [lp for lp in loops if any(lp[0] <= a <= lp[1] for a in poll_at)]
    if not loops:
        return None
    start, end = max(loops, key=lambda lp: lp[1] - lp[0])
    body = [ins for ins in code if start <= ins[0] <= end]
    polls = {i for i, (_, op, _, _) in enumerate(body) if _LDG.search(op) and _is_poll(body, i)}
    pending = {sb: [] for sb in range(6)}  # scoreboard -> [(issue position, is a poll)]
    result = {}
    trips, last_wait, issued_ahead, first_wave, at = 0, -1, 0, None, []
    for rnd in range(2):
        loads, bars = 0, 0
        for i, (addr, op, wait, wr) in enumerate(body):
            pos = rnd * len(body) + i
            done = []
            for sb in range(6):
                if wait >> sb & 1:
                    done += pending[sb]
                    pending[sb] = []
            m = re.match(r"(?:@!?U?P\w+\s+)?DEPBAR\.LE\s+SB(\d),\s*(0x[0-9a-f]+|\d+)", op)
            if m:
                sb, keep = int(m.group(1)), int(m.group(2), 0)
                cut = max(0, len(pending[sb]) - keep)
                done += pending[sb][:cut]
                pending[sb] = pending[sb][cut:]
            if any(is_poll for _, is_poll in done):
                # the barrier: one step ends and the next one's loads start here
                if rnd and not result:
                    result = dict(round_trips=trips, first_wave=first_wave or 0, waits_at=at)
                last_wait, issued_ahead, first_wave, trips, at = pos, 0, None, 0, []
            elif any(issued > last_wait for issued, _ in done):
                trips += 1
                last_wait = pos
                at.append(hex(addr))
                if first_wave is None:
                    first_wave = issued_ahead
            if _LDG.search(op) and wr < 6:
                pending[wr].append((pos, i in polls))
                if i not in polls:
                    loads += 1
                    issued_ahead += 1
            bars += bool(re.search(r"\bBAR\.SYNC\b", op))
    if not result:  # no barrier in the loop
        result = dict(round_trips=trips, first_wave=first_wave or 0, waits_at=at)
    result.update(loads=loads, cta_barriers=bars)
    chain, longest = {}, 0
    for _, op, _, _ in body:
        m = re.search(r"\bHMMA\.\w+(?:\.\w+)*\s+(R\d+),\s*R\d+,\s*R\d+,\s*(R\w+)", op)
        if m:
            chain[m.group(1)] = 1 if m.group(2) == "RZ" else chain.get(m.group(2), 0) + 1
            longest = max(longest, chain[m.group(1)])
    result["hmma_chain"] = longest
    return result


_TENSOR_CORE = re.compile(r"\b(?:mma\.sync\.aligned|wgmma\.mma_async\.sync\.aligned)\.[\w.]*?\.(bf16|f16|tf32)\b")


_GLOBAL_READ = re.compile(r"\b(?:tt\.load|tt\.descriptor_load|ttg\.async_copy_global_to_local)\b")


def weight_loads_in_time_loop(ttgir: str, weights=("%p_w", "%p_wr")) -> int:
    """How many global-memory reads inside the kernel's time loop (its
    outermost scf.for) go through a pointer derived from a weight argument:
    plain loads, and the asynchronous copies the software pipeliner turns
    them into. Follows SSA definitions back to the function arguments (a
    loop's iter_args back to their initial values)."""
    defs = {}
    ssa = re.compile(r"%[\w.$-]+")
    lines = ttgir.splitlines()
    for line in lines:
        m = re.match(r"\s*(%[\w.$-]+(?::\d+)?(?:\s*,\s*%[\w.$-]+)*)\s*=\s*(.*)$", line)
        if not m:
            continue
        body = m.group(2).split(" loc(")[0]
        used = [u.split("#")[0] for u in ssa.findall(body.split(" : ")[0] if " : " in body else body)]
        for name in re.findall(r"%[\w.$-]+", m.group(1)):
            defs[name] = used
        for arg, init in re.findall(r"(%[\w.$-]+) = (%[\w.$-]+)", body.split("iter_args(")[-1]) \
                if "iter_args(" in body else ():
            defs[arg] = [init]

    def from_weight(name, seen):
        if name in weights:
            return True
        if name in seen:
            return False
        seen.add(name)
        return any(from_weight(u, seen) for u in defs.get(name, ()))

    depth, loop_depth, count = 0, None, 0
    for line in lines:
        if loop_depth is None and depth == 2 and re.search(r"\bscf\.for\b", line):
            loop_depth = depth
        elif loop_depth is not None and depth > loop_depth and _GLOBAL_READ.search(line):
            ptr = ssa.findall(_GLOBAL_READ.split(line, 1)[1])[0].split("#")[0]
            count += from_weight(ptr, set())
        depth += line.count("{") - line.count("}")
        if loop_depth is not None and depth <= loop_depth:
            break
    return count


def _compile(kernel, plan, grid, kwargs, arch, gpu, config):
    start = time.perf_counter()
    compiled = kernel.warmup(grid=grid, **kwargs)
    seconds = time.perf_counter() - start
    ptx = compiled.asm["ptx"]
    regs, spills = _resource_usage(compiled.asm["cubin"])
    batch, hidden, proj, packed, dtype, precision, training, steps, step = config
    path = None
    if kwargs["PERSISTENT"] and plan.w_resident and (plan.step == "wave" or (dtype == "float16" and hidden == 768)):
        path = step_critical_path(compiled.asm["cubin"])
    constexprs = {p.name for p in kernel.params if p.is_constexpr}
    return {
        "arch": arch, "gpu": gpu, "kernel": kernel.fn.__name__, "batch": batch, "hidden": hidden,
        "proj": proj, "packed": packed, "dtype": dtype, "precision": precision, "training": training,
        "steps": steps, "step": plan.step, "critical_path": path,
        "plan": str(plan), "grid": grid[0], "persistent": bool(kwargs["PERSISTENT"]), "resident": plan.w_resident,
        "num_warps": kwargs["num_warps"], "maxnreg": kwargs.get("maxnreg"),
        "flags": {k: str(v) for k, v in kwargs.items() if k in constexprs or k in _OPTIONS},
        "registers": regs, "spill_bytes": spills,
        "spills_inside_steps": spills_inside_steps(compiled.asm["cubin"]) if spills else 0,
        "shared": compiled.metadata.shared, "tensor_core": sorted(set(_TENSOR_CORE.findall(ptx))),
        "weight_loads_in_loop": weight_loads_in_time_loop(compiled.asm["ttgir"]),
        "sass_sha256": sass_digest(compiled.asm["cubin"]),
        "compile_seconds": round(seconds, 2), "control": None,
    }


def compile_all(arch: str):
    gpu = GPUS[arch]
    driver.set_active(_Target(gpu["cc"]))
    seen = set()
    for config in _configs(arch):
        for kernel, plan, grid, kwargs in _launch_arguments(*config[:7], gpu, steps=config[7], step=config[8]):
            kwargs = dict(kwargs, UPCAST_DOT=False)
            constexprs = {p.name for p in kernel.params if p.is_constexpr}
            flags = {k: v for k, v in kwargs.items() if k in constexprs or k in _OPTIONS}
            # The grid does not change the compiled code (nor, for streamed
            # weights, does the size): one compile per distinct kernel.
            key = (kernel.fn.__name__, config[4], tuple(sorted(flags.items())))
            if key not in seen:
                seen.add(key)
                yield _compile(kernel, plan, grid, kwargs, arch, gpu, config)
    c = SPILL_CONTROL
    config = (c["batch"], c["hidden"], 0, False, c["dtype"], c["precision"], False, 2, "chunked")
    kernel, plan, grid, kwargs = _launch_arguments(*config[:7], gpu)[0]
    row = _compile(kernel, plan, grid, dict(kwargs, UPCAST_DOT=False, BLOCK_B=c["BLOCK_B"], maxnreg=c["maxnreg"]),
                   arch, gpu, config)
    yield dict(row, control="spills")


if __name__ == "__main__":
    for row in compile_all(sys.argv[1]):
        print(json.dumps(row), flush=True)
