"""The persistent launches' workspace (`_Workspace`: barrier counter, exit
count, error flag and sticky count, one per device and stream), the reporting
of barrier timeouts (`raise_barrier_timeouts`), and the cached zeros the
backward reads (`_zeros`).
"""
import threading
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from ...kernels import barrier as _barrier
from .plan import LaunchPlan

_TIMEOUT_MESSAGE = ("fastlstm: a barrier of the persistent Triton LSTM kernel timed out ({launches}); "
                    "the programs of the grid were not all resident at once. That launch wrote NaN into its "
                    "outputs (they are not valid); this error is raised at the next layer call on {device} "
                    "after it ended. Please report this with the shape and GPU")


class _Workspace:
    """The persistent kernels' int32 workspace on one (device, stream): the
    barrier counter, the exit count, the launch's error flag and the sticky
    count (`kernels.barrier._WS_*`), zeroed once here and left at zero by every
    launch except the sticky count, which a launch whose barrier timed out
    increments.

    The host reads the sticky count without waiting for the GPU and never
    writes it: on the CPU (the interpreter) straight from memory; on CUDA
    through a non-blocking copy into pinned memory, made on the workspace's own
    stream, and an event, looked at (never waited for) at the next layer call,
    which raises if the count grew past what the host has already reported. At
    most one copy is in flight per workspace; a call that finds it still
    running leaves it be, so a timeout is reported at the first call after the
    copy that follows it ends.

    While a CUDA graph is being captured, every persistent launch gets a
    workspace of its own (`captured`), zeroed by a memset node of that graph,
    so that graphs never share a barrier counter with each other or with eager
    calls, and nothing is copied, queried or allocated in pinned memory. Eager
    calls after a replay check those workspaces too; as a replay zeroes its
    workspaces when it starts, a timeout in a replay is reported only if no
    other replay of the graph runs before that check (its outputs are NaN
    either way).

    Buffers are made outside inference mode, so that a first call under
    `torch.inference_mode()` leaves buffers that later calls may update.
    """

    def __init__(self, device: torch.device, captured: bool = False):
        self.device = device
        self.stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        with torch.inference_mode(False):
            self.buf = torch.zeros(4, dtype=torch.int32, device=device)
        self.on_cpu = device.type != "cuda"
        # The sticky count as the host sees it: on the CPU the buffer itself;
        # on CUDA a pinned copy, made at the first copy.
        self.host = None
        self.flag = self.buf.numpy()[_barrier._WS_STICKY.value:] if self.on_cpu else None
        self.seen = 0  # timeouts already reported
        self.event = None  # the CUDA event after the copy in flight
        self.covered: List[tuple] = []  # (shape, plan) of the launches the copy in flight (or the CPU flag) covers
        self.pending: List[tuple] = []  # those since that copy was made
        self.captured = captured  # made for a CUDA graph: replays may set the count at any time

    def launched(self, what: tuple) -> None:
        """Note a persistent launch just enqueued (`what`: its `_shape` and plan)."""
        _UNCHECKED.add(self)
        if self.on_cpu:
            self.covered.append(what)
            return
        if what not in self.pending and len(self.pending) < 4:
            self.pending.append(what)
        self._copy()

    def _copy(self) -> None:
        if self.event is not None or torch.cuda.is_current_stream_capturing():
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream), torch.inference_mode(False):
            if self.host is None:
                self.host = torch.zeros(1, dtype=torch.int32, pin_memory=True)
                self.flag = self.host.numpy()
            self.host.copy_(self.buf[_barrier._WS_STICKY.value:], non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(self.stream)
        self.covered, self.pending = self.pending, []

    def check(self) -> None:
        """Raise if a launch covered by a finished read timed out; never waits
        for the device."""
        if self.event is not None:
            if not self.event.query():
                return
            self.event = None
        count = int(self.flag[0]) if self.flag is not None else 0
        covered, self.covered = self.covered, []
        if count != self.seen:  # grown; or, for a graph's workspace, zeroed and grown again by replays
            self.seen = count
            if count:
                self._raise(covered)
        if not self.on_cpu and (self.pending or self.captured):
            self._copy()
        if self.event is None and not self.pending and not self.captured:
            _UNCHECKED.discard(self)  # nothing left to look at until its next launch

    def check_now(self) -> None:
        """`check`, reading the device's count itself (waits for it)."""
        count = int(self.buf[_barrier._WS_STICKY.value])
        if count != self.seen:
            self.seen = count
            if count:
                covered, self.covered = self.covered + self.pending, []
                self._raise(covered)

    def _raise(self, covered: List[tuple]) -> None:
        launches = "; ".join(_describe(*what) for what in covered) or "a launch on this device"
        if self.captured:
            launches += "; or a CUDA graph's replay"
        raise RuntimeError(_TIMEOUT_MESSAGE.format(launches=launches, device=self.device))


# (device, stream) -> its _Workspace; buffer pointer -> the same _Workspace.
_WORKSPACES: Dict[Tuple[torch.device, int], _Workspace] = {}
_BY_POINTER: Dict[int, _Workspace] = {}
_WORKSPACE_LOCK = threading.Lock()
# Workspaces with a launch not yet known to be clean (most calls find none).
_UNCHECKED: set = set()
# Workspaces and zeros made while capturing CUDA graphs: the graphs use them at
# every replay, so they live as long as the process.
_CAPTURED: List[object] = []


def _workspace(device: torch.device) -> _Workspace:
    """The workspace of `device`'s current stream (made on first use), after
    raising any barrier timeout reported since the last call on `device`.

    One per stream, because a launch resets its counter only at its end: two
    persistent launches must never share one at the same time. While a CUDA
    graph is being captured, a new one for each launch (see `_Workspace`).
    """
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        ws = _Workspace(device, captured=True)
        with _WORKSPACE_LOCK:
            _BY_POINTER[ws.buf.data_ptr()] = ws
            _CAPTURED.append(ws)
        return ws
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    ws = _WORKSPACES.get(key)
    if ws is None:
        with _WORKSPACE_LOCK:
            ws = _WORKSPACES.get(key)
            if ws is None:
                ws = _Workspace(device)
                _BY_POINTER[ws.buf.data_ptr()] = ws
                _WORKSPACES[key] = ws
    if _UNCHECKED:
        _check_barriers(device)
    return ws


def _workspace_of(buf: Tensor) -> _Workspace:
    return _BY_POINTER[buf.data_ptr()]


def _check_barriers(device: torch.device) -> None:
    """Raise the named RuntimeError if a persistent launch on `device` timed out
    at a barrier and this is the first call to see it (see `_Workspace`)."""
    for ws in list(_UNCHECKED):
        if ws.device == device:
            ws.check()


def raise_barrier_timeouts(device=None) -> None:
    """Wait for `device`'s (default: the current CUDA device's) work and raise the
    barrier-timeout RuntimeError if any persistent launch on it timed out.

    Layer calls already raise it, without waiting, at the first call after the
    broken launch has ended; this is for a program that wants to know now (at
    the cost of a synchronisation).
    """
    device = torch.device(device if device is not None else "cuda")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.synchronize(device)
    for ws in [ws for ws in list(_WORKSPACES.values()) + list(_CAPTURED) if isinstance(ws, _Workspace)]:
        if ws.device == device:
            ws.check_now()


# (device, stream, shape, dtype) -> zeros that no kernel writes (the backward's dg[T]).
_ZEROS: Dict[tuple, Tensor] = {}


def _zeros(device: torch.device, shape: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A cached tensor of zeros, made once per (device, stream, shape, dtype):
    read-only for the kernels, so one per shape serves every call. Per stream,
    as the caching allocator ties a block to the stream that made it. While a
    CUDA graph is being captured, a new one each time (zeroed by the graph
    itself at every replay, and never handed to calls outside that graph)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        z = torch.zeros(shape, dtype=dtype, device=device)
        _CAPTURED.append(z)
        return z
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream, shape, dtype)
    z = _ZEROS.get(key)
    if z is None:
        with torch.inference_mode(False):
            z = _ZEROS.setdefault(key, torch.zeros(shape, dtype=dtype, device=device))
    return z


def _shape(x: Tensor, H: int, R: int, what: str) -> tuple:
    """What a launch ran, for an error message: formatted by `_describe` only when needed."""
    return (what, *x.shape, H, R, x.dtype)


def _describe(shape: tuple, plan: LaunchPlan) -> str:
    what, T, B, I, H, R, dtype = shape
    return f"{what}, T={T}, B={B}, I={I}, H={H}, R={R}, {str(dtype).replace('torch.', '')}; {plan}"
