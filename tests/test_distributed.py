"""fastlstm.LSTM inside DistributedDataParallel: gloo, two CPU processes over loopback.

Each rank takes half the batch; DDP averages the gradients, which must equal
the gradients of one process on the whole batch.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastlstm

WORLD = 2
T, B, I, H = 6, 4, 5, 7


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fastlstm.LSTM(I, H, num_layers=2, backend="jit")
        self.head = torch.nn.Linear(H, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out).mean()


def _data():
    g = torch.Generator().manual_seed(7)
    return torch.randn(T, B, I, generator=g, dtype=torch.float64)


def _model():
    torch.manual_seed(3)
    return Model().double()


def _worker(rank: int, port: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        shard = _data().chunk(WORLD, dim=1)[rank]
        model(shard).backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, path)
    finally:
        dist.destroy_process_group()
    # With torch 2.13 and gloo, a worker sometimes aborts in C++ teardown after this
    # point ("terminate called without an active exception"); a plain nn.LSTM under DDP
    # does it too (1 spawn in 12). The work is done and saved, so skip the teardown.
    # Only reached on success: an exception above still fails the worker.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_ddp_gradients_equal_single_process(tmp_path):
    path = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=WORLD, join=True)
    got = torch.load(path)

    single = _model()
    shards = _data().chunk(WORLD, dim=1)
    (sum(single(s) for s in shards) / WORLD).backward()
    for name, p in single.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-12, rtol=1e-10, msg=lambda m: f"{name}: {m}")
