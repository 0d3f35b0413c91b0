"""The precision in force and its answer tolerances (fastlstm.precision), proven
on the CPU by forcing the rule's inputs: the device type and torch's TF32
settings (cuDNN's RNN setting, and torch.backends.cuda.matmul)."""
import contextlib

import pytest
import torch

from fastlstm import precision
from fastlstm.profile import compare

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16


@contextlib.contextmanager
def settings(cudnn: bool, matmul: bool):
    """cuDNN's TF32 setting and the CUDA matmul one, for the duration."""
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=cudnn):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("cudnn", [True, False], ids=["cudnn-tf32", "cudnn-ieee"])
@pytest.mark.parametrize("matmul", [True, False], ids=["matmul-tf32", "matmul-ieee"])
def test_float32_on_cuda_is_tf32_exactly_where_a_setting_it_follows_allows(cudnn, matmul):
    with settings(cudnn, matmul):
        assert precision.tf32_in_force("cuda", ["cudnn"]) is cudnn
        assert precision.tf32_in_force("cuda:0", ["matmul"]) is matmul
        assert precision.tf32_in_force(torch.device("cuda"), ["cudnn", "matmul"]) is (cudnn or matmul)
        # nn.LSTM follows cuDNN's setting; the Triton backend both (kernels, host GEMMs);
        # the others (jit, the loop baselines, nn.LSTMCell) torch's GEMMs.
        want = {"torch": cudnn, "triton": cudnn or matmul, "jit": matmul, "scripted": matmul, None: cudnn or matmul}
        for backend, tf32 in want.items():
            got = precision.precision_in_force(F32, "cuda", backend)
            assert got == ("tf32" if tf32 else "float32"), f"{backend}: {got}"
        assert precision.precision_in_force(F32, "cuda", "torch", workload="cell") == ("tf32" if matmul else "float32")
        for check in precision.CHECKS:
            tol = precision.answer_tolerance(F32, "cuda", "triton", check=check)
            assert tol == precision.TOLERANCES[check]["tf32" if cudnn or matmul else "float32"], check


@pytest.mark.parametrize("check", precision.CHECKS)
def test_tf32_off_keeps_the_tight_float32_tolerance(check):
    with settings(cudnn=False, matmul=False):
        assert precision.answer_tolerance(F32, "cuda", "triton", check=check) == \
            precision.answer_tolerance(F32, "cpu", check=check) == precision.TOLERANCES[check]["float32"]
    with settings(cudnn=True, matmul=True):
        assert precision.answer_tolerance(F32, "cuda", check=check) == precision.TOLERANCES[check]["tf32"]


@pytest.mark.parametrize("check", precision.CHECKS)
def test_the_cpu_float64_and_16_bit_dtypes_ignore_the_tf32_settings(check):
    with settings(cudnn=True, matmul=True):
        assert not precision.tf32_in_force("cpu")
        assert precision.answer_tolerance(F32, "cpu", "triton", check=check) == precision.TOLERANCES[check]["float32"]
        for dtype, name in ((F64, "float64"), (BF16, "bfloat16"), (F16, "float16")):
            for device in ("cpu", "cuda"):
                assert precision.answer_tolerance(dtype, device, check=check) == precision.TOLERANCES[check][name]


def test_forcing_tf32_overrides_the_settings():
    with settings(cudnn=False, matmul=False):
        assert precision.answer_tolerance(F32, "cuda", tf32=True) == precision.TOLERANCES["profile"]["tf32"]
    with settings(cudnn=True, matmul=True):
        assert precision.answer_tolerance(F32, "cuda", tf32=False) == precision.TOLERANCES["profile"]["float32"]
        assert precision.answer_tolerance(F32, "cpu", tf32=True) == precision.TOLERANCES["profile"]["float32"]


@pytest.mark.parametrize("check", precision.CHECKS)
def test_tolerances_grow_with_the_unit_roundoff(check):
    """float64 < float32 < TF32 (2**-11 in the products only) <= float16 (2**-11
    everywhere) <= bfloat16 (2**-8); TF32's is at least twice the worst relative
    error measured on the H200 (9e-4) and at most 20 TF32 roundoffs."""
    t = precision.TOLERANCES[check]
    order = [t[n] for n in ("float64", "float32", "tf32", "float16", "bfloat16")]
    assert all(a < b for a, b in zip(order[0], order[1])) and all(a < b for a, b in zip(order[1], order[2]))
    assert all(a <= b for x, y in zip(order[2:], order[3:]) for a, b in zip(x, y)), order
    assert 2 * 9e-4 <= t["tf32"][1] <= 20 * 2**-11, t["tf32"]


def test_the_rnn_rule_is_the_triton_backends():
    pytest.importorskip("triton")
    from fastlstm.backends.triton.plan import _dot_precision

    for flag in (True, False):
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=flag):
            assert precision.cudnn_tf32() is flag
            assert (_dot_precision(F32) == "tf32") is flag


@pytest.mark.skipif(not hasattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision"),
                    reason="this torch has no per-op fp32_precision API")
def test_the_new_style_rnn_setting_is_followed():
    rnn = torch.backends.cudnn.rnn
    before = rnn.fp32_precision
    try:
        rnn.fp32_precision = "ieee"
        assert precision.precision_in_force(F32, "cuda", "torch") == "float32"
        rnn.fp32_precision = "tf32"
        assert precision.precision_in_force(F32, "cuda", "torch") == "tf32"
    finally:
        rnn.fp32_precision = before


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="check must be"):
        precision.answer_tolerance(F32, "cpu", check="sloppy")
    with pytest.raises(ValueError, match="dtype must be"):
        precision.answer_tolerance(torch.int32, "cpu")
    with pytest.raises(ValueError, match="settings must be"):
        precision.tf32_in_force("cuda", ["cublaslt"])


def test_the_profiles_check_follows_the_precision_in_force():
    """An error of 3e-3, a few TF32 roundoffs: a wrong answer for float32, a right one
    where TF32 is in force for the backend; the check reads the device from the
    results unless told."""
    want = {"out": torch.ones(4, 2, 3, dtype=F64)}
    got = {"out": torch.full((4, 2, 3), 1 + 3e-3, dtype=F32)}
    assert not compare(got, want, F32)[0]  # CPU results: float32
    with settings(cudnn=True, matmul=False):
        assert compare(got, want, F32, "cuda", "torch")[0]
        assert compare(got, want, F32, "cuda", "triton")[0]
        assert not compare(got, want, F32, "cuda", "jit")[0]  # jit's torch GEMMs: full float32
    with settings(cudnn=False, matmul=False):
        ok, err, msg = compare(got, want, F32, "cuda", "torch")
        assert not ok and "atol 0.0001" in msg
