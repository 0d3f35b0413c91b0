"""fastlstm.device: the one seam between the host code and a GPU, and the
simulated GPUs that stand for one on the CPU (their stand-ins are what CI runs
of every "is this a GPU?" branch, so each is checked here for what it
claims)."""
import threading

import pytest
import torch

from fastlstm import device as dv


def test_no_gpu_on_the_cpu_unless_simulated():
    assert dv.gpu(torch.zeros(1)) is None
    assert dv.gpu("cpu") is None
    assert dv.gpu(torch.device("meta")) is None
    with dv.simulate("H100") as h100:
        assert dv.gpu(torch.zeros(1)) is h100
        assert dv.gpu("cpu") is h100
        assert dv.gpu(torch.device("meta")) is None  # shapes only: no device at all
        assert dv.gpu_available() and dv.default_device() == torch.device("cpu")
    assert dv.gpu(torch.zeros(1)) is None


@pytest.mark.parametrize("name, sms, smem, capability", [("H100", 132, 227 * 1024, (9, 0)),
                                                         ("H200", 132, 227 * 1024, (9, 0)),
                                                         ("A100", 108, 163 * 1024, (8, 0))])
def test_simulated_properties(name, sms, smem, capability):
    with dv.simulate(name) as g:
        p = g.properties
        assert (p.sm_count, p.smem_per_block, p.capability) == (sms, smem, capability)
        assert p.name.endswith("(simulated)") and name in p.name
        assert g.simulated and g.cooperative and g.torch_device == torch.device("cpu")
        assert name in repr(g)


def test_unknown_gpu_and_missing_interpreter(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown GPU 'V100'; expected one of H100, H200, A100"):
        with dv.simulate("V100"):
            pass
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1 too"):
        with dv.simulate("H100"):
            pass


def test_environment_variable_read_at_the_first_question(monkeypatch):
    monkeypatch.setattr(dv, "_simulated", dv._UNSET)
    monkeypatch.setenv(dv.SIMULATE_ENV, "A100")
    assert dv.gpu(torch.zeros(1)).properties.sm_count == 108
    monkeypatch.setattr(dv, "_simulated", dv._UNSET)
    monkeypatch.delenv(dv.SIMULATE_ENV)
    assert dv.gpu(torch.zeros(1)) is None and dv.simulated() is None


def test_resolve():
    assert dv.resolve("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda': no CUDA device here .*is_available\(\) is False"):
            dv.resolve("cuda")
    with pytest.raises(ValueError, match="device 'bogus': unknown device"):
        dv.resolve("bogus")
    with pytest.raises(ValueError, match="device 'meta': expected auto, cpu, cuda or cuda:N"):
        dv.resolve("meta")
    assert dv.resolve("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with dv.simulate("H100"):
        assert dv.resolve("cuda") == dv.resolve("cuda:0") == dv.resolve("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match=r"device .cuda:1.: the simulated H100 is one device \(cuda or cuda:0\)"):
            dv.resolve("cuda:1")


def test_streams_are_per_thread():
    with dv.simulate("H100") as g:
        default = g.current_stream()
        s = g.new_stream()
        assert g.stream_id(s) != g.stream_id(default) == g.stream_id()
        seen = {}
        with g.stream_context(s):
            assert g.current_stream() is s and g.stream_id() == s.id
            t = threading.Thread(target=lambda: seen.update(other=g.current_stream()))
            t.start()
            t.join()
        assert seen["other"] is default  # another thread has its own current stream
        assert g.current_stream() is default
        assert "stream" in repr(s)


def test_events_time_by_the_clock():
    with dv.simulate("H100") as g:
        start, end = g.event(), g.event()
        with pytest.raises(RuntimeError, match="both events must have been recorded"):
            start.elapsed_time(end)
        start.record()
        sum(range(10000))
        end.record(g.current_stream())
        end.synchronize()
        assert start.query() and end.query()
        assert 0 <= start.elapsed_time(end) < 1000


def test_pinned_copies_and_capture():
    with dv.simulate("A100") as g:
        host = g.pinned_zeros(3, torch.int32)
        assert host.dtype == torch.int32 and host.tolist() == [0, 0, 0] and not host.is_pinned()
        src = torch.arange(3)
        moved = g.to_device(src)
        assert moved.device == torch.device("cpu") and moved.tolist() == [0, 1, 2]
        assert not g.is_capturing()
        with g.capture():
            assert g.is_capturing()
            t = threading.Thread(target=lambda: seen.append(g.is_capturing()))
            seen = []
            t.start()
            t.join()
            assert seen == [False]  # capture is a property of this thread's stream
        assert not g.is_capturing()
        g.synchronize()
        g.empty_cache()
        assert g.cudnn_enabled() == torch.backends.cudnn.enabled


def test_peak_memory_counts_live_tensors():
    n = 1 << 18  # float32: 1 MiB

    def two_at_once():
        a = torch.ones(n)
        b = a * 2
        del a
        c = b + 1  # b and c live: 2 MiB, the first tensor already gone
        return c.sum()

    def one_after_another():
        for _ in range(3):
            torch.ones(n).sum()

    with dv.simulate("H100") as g:
        assert g.peak_memory(two_at_once) == pytest.approx(2 * 4 * n, abs=64)
        assert g.peak_memory(one_after_another) == pytest.approx(4 * n, abs=64)
        assert g.peak_memory(lambda: None) == 0
