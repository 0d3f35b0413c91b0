"""The GPU as fastlstm's host code sees it: one small interface, with a CUDA side
and a simulated side that runs on the CPU.

Every host branch that asks "is this a GPU?" asks `gpu(device)` (a tensor, a
`torch.device` or a string), which gives a `GPU` or None. Everything a GPU
does that a CPU cannot sits behind that object, each part with a CPU
stand-in, all of them here:

    part                  CUDA (`_CudaGPU`)                     simulated (`SimulatedGPU`), on the CPU
    properties            torch.cuda.get_device_properties      the named GPU's published figures (`SIMULATED_GPUS`)
    cooperative launch    Triton >= 3.3 (launch_cooperative_grid)  the programs run as turn-taking threads
                                                                (fastlstm.backends.triton.interpreter)
    device guard          torch.cuda.device                     nothing to select
    streams               torch.cuda streams                    `_SimStream`s, one current per thread
    events                torch.cuda.Event                      `_SimEvent`: CPU work is done when the call
                                                                returns, so query() is True; times by the clock
    pinned memory         pin_memory=True, non_blocking copies  plain CPU tensors, plain copies
    graph capture         torch.cuda.is_current_stream_capturing  `SimulatedGPU.capture()` (nothing replays)
    synchronize           torch.cuda.synchronize                nothing to wait for
    peak memory           torch.cuda.max_memory_allocated       tensors the call creates, live at once, counted
                                                                at op boundaries (`_LiveTensorBytes`)
    cuDNN                 torch.backends.cudnn.is_available     the cuDNN flag alone: the algorithm is
                                                                PyTorch's rule on these properties
                                                                (fastlstm.profile.models.cudnn_algo)

A simulated GPU (`FASTLSTM_SIMULATE_GPU=H100`, or A100, H200; with
TRITON_INTERPRET=1, since its kernels run in Triton's interpreter) treats
CPU tensors as that GPU's: the Triton backend plans as on it (its SM count,
shared memory, cooperative launch) and runs those plans through the
interpreter, with the same kernels, compile-time flags, block sizes and grid;
`resolve("cuda")` gives the CPU device it stands on. CUDA tensors always go
to the real GPU. Tests switch it with `simulate(name)`.

What the simulation cannot show: the timings (CPU seconds), TF32 rounding
(the interpreter's products are full float32, see fastlstm.precision), the
compiled code (tests/aot.py compiles it for sm_90 and sm_80), and graph
replays. The CUDA side is listed, line for line, as the code only a GPU
runs (tests/gpu_only.toml).

Nothing here runs at import: no hardware is probed until a GPU is asked for.
"""
import contextlib
import dataclasses
import os
import threading
import time
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

SIMULATE_ENV = "FASTLSTM_SIMULATE_GPU"


@dataclasses.dataclass(frozen=True)
class GPUProperties:
    """What plans and reports need to know of a GPU.

    name            as torch.cuda.get_device_name says it
    capability      (major, minor) compute capability
    sm_count        streaming multiprocessors
    smem_per_block  shared memory one program may use (the opt-in limit), bytes
    total_memory    bytes of device memory
    """

    name: str
    capability: Tuple[int, int]
    sm_count: int
    smem_per_block: int
    total_memory: int


# Published figures of the GPUs a simulation can stand for (NVIDIA's data
# sheets and CUDA's occupancy tables; the SM counts and shared memory are the
# ones torch reports on these GPUs).
SIMULATED_GPUS: Dict[str, GPUProperties] = {
    "H100": GPUProperties("NVIDIA H100 80GB HBM3", (9, 0), 132, 227 * 1024, 80 * 2**30),
    "H200": GPUProperties("NVIDIA H200", (9, 0), 132, 227 * 1024, 141 * 10**9),
    "A100": GPUProperties("NVIDIA A100-SXM4-80GB", (8, 0), 108, 163 * 1024, 80 * 2**30),
}

DeviceLike = Union[Tensor, torch.device, str]


class GPU:
    """The interface: what fastlstm's host code asks of one GPU (see the module doc)."""

    simulated = False
    # The torch device its tensors live on (for a simulated GPU, the CPU).
    torch_device: torch.device

    @property
    def properties(self) -> GPUProperties:
        raise NotImplementedError

    @property
    def cooperative(self) -> bool:
        """Whether a grid can be launched co-resident (a cooperative launch)."""
        raise NotImplementedError

    def device_context(self):
        """Make this the current device, for launches that go to the current one."""
        raise NotImplementedError

    def current_stream(self):
        raise NotImplementedError

    def stream_id(self, stream=None) -> int:
        """A number naming `stream` (default: the current one), to key per-stream state."""
        raise NotImplementedError

    def stream_context(self, stream):
        raise NotImplementedError

    def new_stream(self):
        raise NotImplementedError

    def event(self):
        """An event: record(stream=None), query(), synchronize(), elapsed_time(end) in ms."""
        raise NotImplementedError

    def pinned_zeros(self, shape, dtype: torch.dtype) -> Tensor:
        """Host memory the device can copy into without waiting (page-locked)."""
        raise NotImplementedError

    def to_device(self, t: Tensor) -> Tensor:
        """A small CPU tensor on this device without waiting for the stream."""
        raise NotImplementedError

    def is_capturing(self) -> bool:
        """Whether the current stream is capturing a CUDA graph."""
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    def empty_cache(self) -> None:
        raise NotImplementedError

    def peak_memory(self, step: Callable[[], object]) -> int:
        """Peak growth of memory in use during one `step()`, in bytes."""
        raise NotImplementedError

    def cudnn_enabled(self) -> bool:
        """Whether nn.LSTM runs on cuDNN here."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.properties.name}>"


class _CudaGPU(GPU):
    """A real CUDA device: torch.cuda, and nothing else."""

    def __init__(self, index: int):
        self.index = index
        self.torch_device = torch.device("cuda", index)
        self._properties = None

    @property
    def properties(self) -> GPUProperties:
        if self._properties is None:
            p = torch.cuda.get_device_properties(self.index)
            smem = getattr(p, "shared_memory_per_block_optin", 0) or 48 * 1024
            self._properties = GPUProperties(p.name, (p.major, p.minor), p.multi_processor_count, smem,
                                             p.total_memory)
        return self._properties

    @property
    def cooperative(self) -> bool:
        return _triton_has_cooperative_launch()

    def device_context(self):
        return torch.cuda.device(self.index)

    def current_stream(self):
        return torch.cuda.current_stream(self.index)

    def stream_id(self, stream=None) -> int:
        return (stream or torch.cuda.current_stream(self.index)).cuda_stream

    def stream_context(self, stream):
        return torch.cuda.stream(stream)

    def new_stream(self):
        return torch.cuda.Stream(self.index)

    def event(self):
        return torch.cuda.Event(enable_timing=True)

    def pinned_zeros(self, shape, dtype: torch.dtype) -> Tensor:
        return torch.zeros(shape, dtype=dtype, pin_memory=True)

    def to_device(self, t: Tensor) -> Tensor:
        return t.pin_memory().to(self.torch_device, non_blocking=True)

    def is_capturing(self) -> bool:
        return torch.cuda.is_current_stream_capturing()

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.index)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def peak_memory(self, step: Callable[[], object]) -> int:
        torch.cuda.synchronize(self.index)
        torch.cuda.reset_peak_memory_stats(self.index)
        before = torch.cuda.memory_allocated(self.index)
        step()
        return int(torch.cuda.max_memory_allocated(self.index) - before)

    def cudnn_enabled(self) -> bool:
        return torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled


def _triton_has_cooperative_launch() -> bool:
    import triton

    major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    return (major, minor) >= (3, 3)


class _SimStream:
    """A stream of the simulated GPU: a name, nothing to order (CPU work is in order)."""

    _ids = iter(range(1, 1 << 62))

    def __init__(self, sid: Optional[int] = None):
        self.id = next(self._ids) if sid is None else sid

    def __repr__(self) -> str:
        return f"<simulated stream {self.id}>"


class _SimEvent:
    """An event of the simulated GPU. CPU work is finished when the call that
    queued it returns, so an event is complete as soon as it is recorded."""

    def __init__(self):
        self.time: Optional[float] = None

    def record(self, stream=None) -> None:
        self.time = time.perf_counter()

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "_SimEvent") -> float:
        if self.time is None or end.time is None:
            raise RuntimeError("elapsed_time: both events must have been recorded")
        return (end.time - self.time) * 1e3


class _LiveTensorBytes:
    """The simulated GPU's peak memory: the bytes of the storages that torch ops
    create during a call and that are alive at once, counted after each op
    (TorchDispatchMode). Like max_memory_allocated it counts tensors, not the
    process; unlike it, memory an op frees before it returns is not seen."""

    def measure(self, step: Callable[[], object]) -> int:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        live: Dict[int, Tuple[StorageWeakRef, int]] = {}
        peak = [0]

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, Tensor) and t.device.type == "cpu":
                        s = t.untyped_storage()
                        if s.data_ptr() not in live:
                            live[s.data_ptr()] = (StorageWeakRef(s), s.nbytes())
                for key in [k for k, (ref, _) in live.items() if ref.expired()]:
                    del live[key]
                peak[0] = max(peak[0], sum(n for _, n in live.values()))
                return out

        with Mode():
            step()
        return peak[0]


class SimulatedGPU(GPU):
    """One of `SIMULATED_GPUS`, standing on the CPU (see the module doc)."""

    simulated = True
    torch_device = torch.device("cpu")
    # At most this many programs of a persistent launch run at once; None: all
    # of them, as a cooperative launch guarantees. A number makes the grid one
    # that is not co-resident, whose barrier times out (as a GPU's would).
    resident: Optional[int] = None

    def __init__(self, name: str):
        if name not in SIMULATED_GPUS:
            raise ValueError(f"{SIMULATE_ENV}: unknown GPU {name!r}; expected one of {', '.join(SIMULATED_GPUS)}")
        self.name = name
        self._properties = dataclasses.replace(SIMULATED_GPUS[name], name=SIMULATED_GPUS[name].name + " (simulated)")
        self._default = _SimStream(0)
        self._local = threading.local()

    @property
    def properties(self) -> GPUProperties:
        return self._properties

    @property
    def cooperative(self) -> bool:
        return True

    def device_context(self):
        return contextlib.nullcontext()

    def current_stream(self):
        return getattr(self._local, "stream", self._default)

    def stream_id(self, stream=None) -> int:
        return (stream or self.current_stream()).id

    @contextlib.contextmanager
    def stream_context(self, stream):
        previous = self.current_stream()
        self._local.stream = stream
        try:
            yield stream
        finally:
            self._local.stream = previous

    def new_stream(self):
        return _SimStream()

    def event(self):
        return _SimEvent()

    def pinned_zeros(self, shape, dtype: torch.dtype) -> Tensor:
        return torch.zeros(shape, dtype=dtype)

    def to_device(self, t: Tensor) -> Tensor:
        return t.to(self.torch_device)

    def is_capturing(self) -> bool:
        return getattr(self._local, "capturing", False)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Run the host code's graph-capture branches (nothing is recorded or replayed)."""
        previous = self.is_capturing()
        self._local.capturing = True
        try:
            yield
        finally:
            self._local.capturing = previous

    def synchronize(self) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def peak_memory(self, step: Callable[[], object]) -> int:
        return _LiveTensorBytes().measure(step)

    def cudnn_enabled(self) -> bool:
        return torch.backends.cudnn.enabled


# The simulated GPU in force: unset (not yet read from the environment), None or a SimulatedGPU.
_UNSET = object()
_simulated = _UNSET
_CUDA: Dict[int, _CudaGPU] = {}


def simulated() -> Optional[SimulatedGPU]:
    """The simulated GPU in force (FASTLSTM_SIMULATE_GPU, read at the first
    question, or `simulate`), or None."""
    global _simulated
    if _simulated is _UNSET:
        name = os.environ.get(SIMULATE_ENV, "")
        _simulated = _new_simulation(name) if name else None
    return _simulated


def _new_simulation(name: str) -> SimulatedGPU:
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(f"{SIMULATE_ENV}={name}: a simulated GPU runs its kernels in Triton's interpreter; "
                           "set TRITON_INTERPRET=1 too (before fastlstm is imported)")
    return SimulatedGPU(name)


@contextlib.contextmanager
def simulate(name: Optional[str]) -> Iterator[Optional[SimulatedGPU]]:
    """Within the block, CPU tensors are on the simulated GPU `name` (None: no
    simulation), as FASTLSTM_SIMULATE_GPU would make them.

    Example:
        >>> with simulate("H100") as h100:     # needs TRITON_INTERPRET=1
        ...     gpu(torch.zeros(1)).properties.sm_count
        132
    """
    global _simulated
    previous = _simulated
    _simulated = _new_simulation(name) if name else None
    try:
        yield _simulated
    finally:
        _simulated = previous


def gpu(x: DeviceLike) -> Optional[GPU]:
    """The GPU that runs tensors like `x` (a tensor, device or device string), or
    None: a CUDA device, or the CPU while a GPU is simulated."""
    device = x.device if isinstance(x, Tensor) else x if isinstance(x, torch.device) else torch.device(x)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        found = _CUDA.get(index)
        if found is None:
            found = _CUDA.setdefault(index, _CudaGPU(index))
        return found
    if device.type == "cpu" and _simulated is not None:
        return simulated()
    return None


def _check_cuda_index(name: str, dev: torch.device) -> None:
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: there are {torch.cuda.device_count()} CUDA device(s)")


def gpu_available() -> bool:
    """Whether there is a GPU to run on: CUDA, or a simulated one."""
    return simulated() is not None or torch.cuda.is_available()


def default_device() -> torch.device:
    """This machine's usual device: the GPU's (the CPU for a simulated one), else the CPU."""
    if simulated() is not None:
        return simulated().torch_device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve(name: str) -> torch.device:
    """The torch device for a device name a user gives ("auto", "cpu", "cuda",
    "cuda:N"): while a GPU is simulated, "cuda" is the CPU it stands on.
    Raises ValueError, with a one-line message, for a device that is not known
    or not here."""
    if name == "auto":
        return default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {name!r}: unknown device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        sim = simulated()
        if sim is not None:
            if dev.index not in (None, 0):
                raise ValueError(f"device {name!r}: the simulated {sim.name} is one device (cuda or cuda:0)")
            return sim.torch_device
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA device here (torch {torch.__version__}, "
                             "torch.cuda.is_available() is False)")
        _check_cuda_index(name, dev)
    elif dev.type != "cpu":
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return dev
