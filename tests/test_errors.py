"""Bad input raises what torch.nn raises: same exception type, same message.

Where torch.nn's own error is unhelpful (an IndexError, a message from deep in
a kernel), fastlstm raises a clear error naming the argument instead, and the
test says so.
"""
import os
import subprocess
import sys

import pytest
import torch

import fastlstm

I, H = 10, 20


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the point is to capture any exception
        return type(e), str(e)
    return None, None


# Each case builds a module from the given class and calls it badly.
LSTM_CASES = {
    "rank 4": lambda cls: cls(I, H)(torch.randn(2, 3, 4, I)),
    "rank 1": lambda cls: cls(I, H)(torch.randn(I)),
    "feature size": lambda cls: cls(I, H)(torch.randn(5, 3, I + 1)),
    "unbatched feature size": lambda cls: cls(I, H)(torch.randn(5, I - 1)),
    "h0 batch": lambda cls: cls(I, H)(torch.randn(5, 3, I), (torch.zeros(1, 2, H), torch.zeros(1, 3, H))),
    "c0 batch": lambda cls: cls(I, H)(torch.randn(5, 3, I), (torch.zeros(1, 3, H), torch.zeros(1, 2, H))),
    "h0 size": lambda cls: cls(I, H)(torch.randn(5, 3, I), (torch.zeros(1, 3, H + 1), torch.zeros(1, 3, H))),
    "h0 layers": lambda cls: cls(I, H, num_layers=2)(torch.randn(5, 3, I), (torch.zeros(1, 3, H),) * 2),
    "proj h0 size": lambda cls: cls(I, H, proj_size=4)(torch.randn(5, 3, I), (torch.zeros(1, 3, H), torch.zeros(1, 3, H))),
    "batched input, 2-D hx": lambda cls: cls(I, H)(torch.randn(5, 3, I), (torch.zeros(3, H),) * 2),
    "unbatched input, 3-D hx": lambda cls: cls(I, H)(torch.randn(5, I), (torch.zeros(1, 1, H),) * 2),
    "input dtype": lambda cls: cls(I, H)(torch.randn(5, 3, I, dtype=torch.float64)),
    "integer input": lambda cls: cls(I, H)(torch.ones(5, 3, I, dtype=torch.int64)),
    "batch_first feature size": lambda cls: cls(I, H, batch_first=True)(torch.randn(3, 5, I + 2)),
    "empty sequence": lambda cls: cls(I, H)(torch.randn(0, 3, I)),
    "dropout > 1": lambda cls: cls(I, H, dropout=1.5),
    "negative proj_size": lambda cls: cls(I, H, proj_size=-1),
    "proj_size >= hidden": lambda cls: cls(I, H, proj_size=H),
    "zero hidden": lambda cls: cls(I, 0),
    "zero layers": lambda cls: cls(I, H, num_layers=0),
    "float hidden": lambda cls: cls(I, 2.5),
}

CELL_CASES = {
    "rank 3": lambda cls: cls(I, H)(torch.randn(2, 3, I)),
    "feature size": lambda cls: cls(I, H)(torch.randn(3, I + 1)),
    "hx batch": lambda cls: cls(I, H)(torch.randn(3, I), (torch.zeros(2, H), torch.zeros(2, H))),
    "h size": lambda cls: cls(I, H)(torch.randn(3, I), (torch.zeros(3, 5), torch.zeros(3, H))),
    "c size": lambda cls: cls(I, H)(torch.randn(3, I), (torch.zeros(3, H), torch.zeros(3, 5))),
    "hx rank 3": lambda cls: cls(I, H)(torch.randn(3, I), (torch.zeros(1, 3, H),) * 2),
}


ALL_CASES = [(torch.nn.LSTM, fastlstm.LSTM, name, LSTM_CASES[name]) for name in LSTM_CASES] + [
    (torch.nn.LSTMCell, fastlstm.LSTMCell, name, CELL_CASES[name]) for name in CELL_CASES
]


@pytest.mark.parametrize(
    "theirs, ours, case, call", ALL_CASES, ids=[f"{t.__name__}-{name}" for t, _, name, _ in ALL_CASES]
)
def test_errors_match_torch(theirs, ours, case, call):
    want = _raised(lambda: call(theirs))
    got = _raised(lambda: call(ours))
    assert want[0] is not None, f"{case}: torch.nn.{theirs.__name__} accepted it"
    assert got == want, f"{case}: fastlstm raised {got}, torch raised {want}"


@pytest.mark.parametrize(
    "hx, fragment",
    [
        (torch.zeros(1, 3, H), "got Tensor"),
        ([torch.zeros(1, 3, H)], "got list of 1 Tensor"),
        ((torch.zeros(1, 3, H), None), "got tuple of 2 Tensor, NoneType"),
    ],
    ids=["tensor", "list of one", "None inside"],
)
def test_hx_not_a_pair_is_a_clear_type_error(hx, fragment):
    # torch.nn.LSTM raises IndexError here; fastlstm names the argument.
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)") as info:
        fastlstm.LSTM(I, H)(torch.randn(5, 3, I), hx)
    assert fragment in str(info.value)


def test_hx_dtype_mismatch_is_named():
    # torch.nn.LSTM fails inside oneDNN ("get_mkldnn_dtype: unsupported data type").
    with pytest.raises(RuntimeError, match=r"hidden tensor \(h_0\) with torch.float64"):
        fastlstm.LSTM(I, H)(torch.randn(5, 3, I), (torch.zeros(1, 3, H, dtype=torch.float64), torch.zeros(1, 3, H)))


def test_device_mismatch_is_named():
    m = fastlstm.LSTM(I, H)
    with pytest.raises(RuntimeError, match="not at the same device"):
        m(torch.randn(5, 3, I), (torch.zeros(1, 3, H, device="meta"), torch.zeros(1, 3, H)))
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device"):
        m(torch.randn(5, 3, I, device="meta"))


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'cudnn'.*'auto', 'jit', 'triton', 'reference'"):
        fastlstm.LSTM(I, H, backend="cudnn")
    with pytest.raises(ValueError, match="unknown backend"):
        fastlstm.LSTMCell(I, H, backend=None)
    with pytest.raises(ValueError, match="unknown backend"):
        fastlstm.functional.lstm_cell(
            torch.randn(2, I), (torch.zeros(2, H),) * 2, torch.randn(4 * H, I), torch.randn(4 * H, H), backend="x"
        )


def test_triton_on_cpu_without_interpreter_says_why():
    code = (
        "import torch, fastlstm\n"
        "m = fastlstm.LSTM(3, 4, backend='triton')\n"
        "try:\n"
        "    m(torch.randn(2, 1, 3))\n"
        "except RuntimeError as e:\n"
        "    print('RAISED', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "RAISED backend 'triton' cannot run here" in out.stdout, out.stdout + out.stderr
    assert "TRITON_INTERPRET=1" in out.stdout and "'jit'" in out.stdout


def _functional_args(**over):
    m = torch.nn.LSTM(I, H, num_layers=2)
    args = dict(
        input=torch.randn(5, 3, I),
        hx=(torch.zeros(2, 3, H), torch.zeros(2, 3, H)),
        weights=list(m._flat_weights),
        has_biases=True, num_layers=2, dropout=0.0, train=False, bidirectional=False,
    )
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over, error, fragment",
    [
        (dict(hx=(torch.zeros(1, 3, H), torch.zeros(1, 3, H))), RuntimeError, r"h_0 of shape \(2, 3, 20\)"),
        (dict(input=torch.randn(5, I)), RuntimeError, "input must have 3 dimensions, got 2"),
        (dict(input=torch.randn(5, 3, I + 1)), RuntimeError, r"w_ih of group 0 \(layer 0\) must have shape"),
        (dict(input=torch.randn(0, 3, I)), RuntimeError, "sequence length to be larger than 0"),
        (dict(hx=torch.zeros(2, 3, H)), TypeError, "hx must be a tuple"),
        (dict(input=torch.randn(5, 3, I, dtype=torch.float64)), RuntimeError, "h_0 is torch.float32, the input torch.float64"),
        (dict(num_layers=3), ValueError, "expected a multiple of 3 tensors"),
    ],
    ids=["hx layers", "rank", "feature size", "empty sequence", "hx tensor", "dtype", "layer count"],
)
@pytest.mark.parametrize("backend", ["jit", "reference"])
def test_functional_api_names_the_problem(backend, over, error, fragment):
    with pytest.raises(error, match=fragment):
        fastlstm.functional.lstm(**_functional_args(**over), backend=backend)


def test_functional_cell_names_the_problem():
    with pytest.raises(RuntimeError, match=r"w_ih of group 0 \(layer 0\) must have shape \(80, 10\)"):
        fastlstm.functional.lstm_cell(
            torch.randn(2, I), (torch.zeros(2, H),) * 2, torch.randn(4 * H, I + 1), torch.randn(4 * H, H)
        )


def test_cell_hx_batchedness_must_match_input():
    cell = fastlstm.LSTMCell(I, H)
    with pytest.raises(RuntimeError, match="for batched 2-D input, hx\\[0\\] should also be 2-D, got 1-D"):
        cell(torch.randn(3, I), (torch.zeros(H), torch.zeros(H)))
    with pytest.raises(RuntimeError, match="for unbatched 1-D input, hx\\[0\\] should also be 1-D, got 2-D"):
        cell(torch.randn(I), (torch.zeros(1, H), torch.zeros(1, H)))
    with pytest.raises(RuntimeError, match=r"input dtype \(torch.float64\) does not match weight dtype"):
        cell(torch.randn(3, I, dtype=torch.float64))
