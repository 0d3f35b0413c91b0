"""Where users take a model past plain forward and backward: higher-order
gradients, torch.func, saved-tensor hooks and checkpointing, in-place ops on
outputs, functional_call, and the reparametrised modules `convert` takes.
Every case is checked against nn.LSTM (or nn.LSTMCell) on the same numbers,
on every backend: jit and reference in float64, Triton (under the
interpreter) in float32."""
import gc

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap, vjp
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn.utils import parametrize, prune
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

import fastlstm
from helpers import INTERPRETED, triton_can_run_here

# nn.LSTM in float32 on the CPU runs oneDNN, which has no forward-mode AD and
# saves its output (so in-place edits of it break its backward): the float32
# comparisons for Triton use torch's native kernels instead.
pytestmark = pytest.mark.usefixtures("_no_onednn")


@pytest.fixture
def _no_onednn():
    with torch.backends.mkldnn.flags(enabled=False):
        yield


BACKENDS = ["jit", "reference"] + (["triton"] if INTERPRETED and triton_can_run_here() else [])
I, H = 3, 4


def _dtype(backend):
    return torch.float32 if backend == "triton" else torch.float64


def _tol(dtype):
    return dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-4)


def _pair(backend, cls=fastlstm.LSTM, **kw):
    """(ours, torch's) with the same parameters, in the backend's dtype."""
    dtype = _dtype(backend)
    torch.manual_seed(0)
    theirs = cls.__bases__[0](I, H, **kw).to(dtype)
    ours = cls(I, H, **kw, backend=backend).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _x(backend, T=3, B=2):
    return torch.randn(T, B, I, dtype=_dtype(backend))


def _close(got, want, dtype, name):
    torch.testing.assert_close(got, want, **_tol(dtype), msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------
# higher-order gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, proj_size=2), dict(bidirectional=True)],
                         ids=["plain", "2layers-proj", "bidir"])
def test_second_derivatives_match_torch(backend, kw):
    """Hessian-vector products through the input and the weights, as
    second-order MAML and gradient penalties take them."""
    ours, theirs = _pair(backend, **kw)
    dtype = _dtype(backend)
    x0 = _x(backend)
    results = []
    for m in (ours, theirs):
        x = x0.clone().requires_grad_()
        params = list(m.parameters())
        out, (h, c) = m(x)
        loss = out.pow(2).sum() + h.sum() * c.sum()
        gs = torch.autograd.grad(loss, [x] + params, create_graph=True)
        penalty = sum(g.pow(2).sum() for g in gs)
        results.append(torch.autograd.grad(penalty, [x] + params))
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, *results):
        _close(a, b, dtype, f"d(penalty)/d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hessian_after_a_linear_loss_is_not_silently_zero(backend):
    """The issue's repro: a Hessian whose first backward gets gradients that
    need no grad. It was 0.0 before; nn.LSTM's is not."""
    ours, theirs = _pair(backend)
    x = torch.rand(1, 3, I, dtype=_dtype(backend))
    got = torch.autograd.functional.hessian(lambda x: ours(x)[0].pow(2).sum(), x)
    want = torch.autograd.functional.hessian(lambda x: theirs(x)[0].pow(2).sum(), x)
    assert want.abs().max() > 0.01
    _close(got, want, _dtype(backend), "hessian")


@pytest.mark.parametrize("backend", ["jit", "reference"])
def test_gradgradcheck_lstm(backend):
    torch.manual_seed(0)
    m = fastlstm.LSTM(I, H, proj_size=2, backend=backend).double()
    x = torch.randn(3, 2, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, 2, H, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, h0, c0, *params):
        out, (h, c) = functional_call(m, dict(zip(names, params)), (x, (h0, c0)))
        return out, h, c

    inputs = (x, h0, c0, *[p.detach().requires_grad_() for p in m.parameters()])
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("backend", ["jit", "reference"])
def test_gradgradcheck_lstm_cell(backend):
    torch.manual_seed(0)
    cell = fastlstm.LSTMCell(I, H, backend=backend).double()
    x = torch.randn(2, I, dtype=torch.float64, requires_grad=True)
    hx = [torch.randn(2, H, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    names = [n for n, _ in cell.named_parameters()]

    def f(x, h, c, *params):
        return functional_call(cell, dict(zip(names, params)), (x, (h, c)))

    inputs = (x, *hx, *[p.detach().requires_grad_() for p in cell.parameters()])
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_derivatives_with_packed_input(backend):
    ours, theirs = _pair(backend)
    x0 = _x(backend, T=4, B=3)
    results = []
    for m in (ours, theirs):
        x = x0.clone().requires_grad_()
        packed = pack_padded_sequence(x, torch.tensor([4, 2, 1]), enforce_sorted=False)
        out, (h, c) = m(packed)
        (g,) = torch.autograd.grad(out.data.pow(2).sum() + h.sum(), x, create_graph=True)
        results.append(torch.autograd.grad(g.pow(2).sum(), [x, m.weight_hh_l0]))
    for name, a, b in zip(("x", "weight_hh_l0"), *results):
        _close(a, b, _dtype(backend), name)


# ----------------------------------------------------------------------------
# torch.func and forward-mode AD
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_func_grad_of_functional_call(backend):
    ours, theirs = _pair(backend)
    x = _x(backend)
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(p, m):
        out, (h, _) = functional_call(m, p, (x,))
        return out.pow(2).sum() + h.sum()

    got, want = grad(loss)(params, ours), grad(loss)(params, theirs)
    for name in params:
        _close(got[name], want[name], _dtype(backend), name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_func_jacobians_jvp_vjp_and_dual_tensors(backend):
    ours, theirs = _pair(backend)
    x, tangent = _x(backend), _x(backend)
    dtype = _dtype(backend)
    _close(jacrev(lambda x: ours(x)[0])(x), jacrev(lambda x: theirs(x)[0])(x), dtype, "jacrev")
    _close(jacfwd(lambda x: ours(x)[1][1])(x), jacfwd(lambda x: theirs(x)[1][1])(x), dtype, "jacfwd")
    cotangent = torch.randn(3, 2, H, dtype=dtype)
    _close(vjp(lambda x: ours(x)[0], x)[1](cotangent)[0], vjp(lambda x: theirs(x)[0], x)[1](cotangent)[0],
           dtype, "vjp")
    _close(jvp(lambda x: ours(x)[0], (x,), (tangent,))[1], jvp(lambda x: theirs(x)[0], (x,), (tangent,))[1],
           dtype, "jvp")
    with fwAD.dual_level():
        got = fwAD.unpack_dual(ours(fwAD.make_dual(x, tangent))[0]).tangent
        want = fwAD.unpack_dual(theirs(fwAD.make_dual(x, tangent))[0]).tangent
    _close(got, want, dtype, "forward-mode tangent")
    xg = x.clone().requires_grad_()
    _close(torch.autograd.functional.jacobian(lambda x: ours(x)[0], xg, vectorize=True),
           torch.autograd.functional.jacobian(lambda x: theirs(x)[0], xg), dtype, "jacobian(vectorize=True)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_func_vmap_over_inputs_and_parameters(backend):
    """vmap over a batch of inputs and over stacked parameters (model
    ensembling). nn.LSTM has no batching rule, so the reference is a loop."""
    ours, theirs = _pair(backend)
    xs = torch.stack([_x(backend) for _ in range(3)])
    want = torch.stack([theirs(x)[0] for x in xs])
    _close(vmap(lambda x: ours(x)[0])(xs), want, _dtype(backend), "vmap over inputs")
    stacked = {k: torch.stack([v.detach() * s for s in (1.0, 0.5)]) for k, v in ours.named_parameters()}
    got = vmap(lambda p: functional_call(ours, p, (xs[0],))[0])(stacked)
    for k, scale in enumerate((1.0, 0.5)):
        want = functional_call(theirs, {n: v[k] for n, v in stacked.items()}, (xs[0],))[0]
        _close(got[k], want, _dtype(backend), f"ensemble member {k}")


# ----------------------------------------------------------------------------
# saved tensors: hooks, checkpointing, aliasing
# ----------------------------------------------------------------------------


class _LiveStorages(TorchDispatchMode):
    """Records every storage an op creates, to count the bytes still alive later."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, torch.Tensor) and not t.is_mkldnn:  # oneDNN's opaque weights have no storage
                s = t.untyped_storage()
                self.made.append((StorageWeakRef(s), s.nbytes()))
        return result

    def alive_bytes(self):
        seen, total = set(), 0
        for ref, nbytes in self.made:
            if not ref.expired() and ref.cdata not in seen:
                seen.add(ref.cdata)
                total += nbytes
        return total


def _held_under_checkpoint(m, x):
    """Bytes alive after a checkpointed forward (outputs included)."""
    with _LiveStorages() as mode:
        out, (h, c) = checkpoint(m, x, use_reentrant=False)
    gc.collect()  # Triton's interpreter leaves reference cycles behind
    held = mode.alive_bytes()
    (out.sum() + h.sum() + c.sum()).backward()
    return held


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_holds_what_nn_lstm_holds(backend):
    ours, theirs = _pair(backend, num_layers=2)
    x = _x(backend, T=40, B=8).requires_grad_()
    mine, torchs = _held_under_checkpoint(ours, x), _held_under_checkpoint(theirs, x)
    assert mine <= 1.5 * torchs, f"{mine} bytes held under checkpoint, nn.LSTM {torchs}"
    # without checkpointing the activations are held, so the measure is not blind
    with _LiveStorages() as mode:
        out, _ = ours(x)
    assert mode.alive_bytes() > 3 * mine


def test_checkpoint_memory_at_the_reported_shape():
    """float32 jit with oneDNN on, where 21.9 MiB was held against nn.LSTM's 3.2 MiB."""
    with torch.backends.mkldnn.flags(enabled=True):
        torch.manual_seed(0)
        theirs = nn.LSTM(16, 128)
        ours = fastlstm.LSTM(16, 128, backend="jit")
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(200, 32, 16, requires_grad=True)
        mine, torchs = _held_under_checkpoint(ours, x), _held_under_checkpoint(theirs, x)
    assert mine <= 1.5 * torchs, f"{mine / 2**20:.1f} MiB held under checkpoint, nn.LSTM {torchs / 2**20:.1f} MiB"


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_tensor_hooks_see_every_activation(backend):
    """Offloading through saved-tensor hooks: every tensor the backward reads
    is packed (here: moved into a side store and replaced by a key), and the
    gradients still match."""
    ours, theirs = _pair(backend)
    x0 = _x(backend, T=6)
    store = {}

    def pack(t):
        store[len(store)] = t.clone()
        return len(store) - 1

    results = []
    for m, hooked in ((ours, True), (theirs, False)):
        x = x0.clone().requires_grad_()
        if hooked:
            with torch.autograd.graph.saved_tensors_hooks(pack, store.__getitem__):
                out, _ = m(x)
        else:
            out, _ = m(x)
        out.pow(2).sum().backward()
        results.append([x.grad] + [p.grad for p in m.parameters()])
    packed = sum(t.numel() for t in store.values())
    assert packed >= 6 * 2 * 4 * H, f"only {packed} elements went through the hooks"
    for k, (a, b) in enumerate(zip(*results)):
        _close(a, b, _dtype(backend), f"gradient {k}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(proj_size=2)], ids=["plain", "proj"])
def test_in_place_on_outputs_then_backward(backend, kw):
    ours, theirs = _pair(backend, **kw)
    x0 = _x(backend)
    results = []
    for m in (ours, theirs):
        x = x0.clone().requires_grad_()
        out, (h, c) = m(x)
        out.relu_()
        h.mul_(2)
        c.add_(1)
        (out.sum() + h.pow(2).sum() + c.pow(2).sum()).backward()
        results.append([x.grad] + [p.grad for p in m.parameters()])
    for k, (a, b) in enumerate(zip(*results)):
        _close(a, b, _dtype(backend), f"gradient {k}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_call_with_parameters_of_another_dtype(backend):
    """forward reads the parameters of the call, as nn.LSTM does, not a stale list."""
    ours, theirs = _pair(backend)
    ours.double(), theirs.double()
    params = {k: v.float() for k, v in ours.named_parameters()}
    x = torch.randn(3, 2, I)
    got = functional_call(ours, params, (x,))[0]
    assert got.dtype == torch.float32
    _close(got, functional_call(theirs, params, (x,))[0], torch.float32, "out")


# ----------------------------------------------------------------------------
# conversion of reparametrised modules
# ----------------------------------------------------------------------------


def _reparametrise(kind, m):
    if kind == "pruned":
        prune.l1_unstructured(m, "weight_hh_l0", amount=0.5)
    elif kind == "weight_norm":
        torch.nn.utils.weight_norm(m, "weight_hh_l0")
    elif kind == "spectral_norm":
        torch.nn.utils.spectral_norm(m, "weight_ih_l0")
    elif kind == "parametrize":
        torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")
        parametrize.register_parametrization(m, "weight_ih_l0", _Scale())
    return m


class _Scale(nn.Module):
    def forward(self, w):
        return 0.5 * w


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["pruned", "weight_norm", "spectral_norm", "parametrize"])
def test_convert_keeps_reparametrisations(backend, kind):
    dtype = _dtype(backend)
    torch.manual_seed(0)
    theirs = _reparametrise(kind, nn.LSTM(I, H).to(dtype))
    torch.manual_seed(0)
    mine = _reparametrise(kind, nn.LSTM(I, H).to(dtype))
    model = nn.Sequential(mine)
    fastlstm.convert(model, backend=backend)
    assert isinstance(model[0], fastlstm.LSTM) and model[0] is mine and mine.backend == backend
    x0 = _x(backend)
    results = []
    for m in (mine, theirs):
        m.eval()  # spectral_norm's power iteration then stays put, so both see one weight
        x = x0.clone().requires_grad_()
        out, _ = m(x)
        out.pow(2).sum().backward()
        results.append([out, x.grad] + [p.grad for p in m.parameters()])
    assert len(results[0]) > 3
    for k, (a, b) in enumerate(zip(*results)):
        _close(a, b, dtype, f"tensor {k}")
    if kind == "parametrize":
        parametrize.remove_parametrizations(mine, "weight_ih_l0")
        parametrize.remove_parametrizations(mine, "weight_hh_l0")
        assert type(mine) is fastlstm.LSTM


def test_from_torch_refuses_a_reparametrised_module_clearly():
    m = _reparametrise("pruned", nn.LSTM(I, H))
    with pytest.raises(TypeError, match="weight_hh_l0 is computed from other tensors.*fastlstm.convert"):
        fastlstm.LSTM.from_torch(m)


# ----------------------------------------------------------------------------
# the smaller differences
# ----------------------------------------------------------------------------


def test_packed_input_under_cpu_autocast_keeps_torchs_dtype():
    """CPU autocast leaves the packed-input LSTM in float32. (nn.LSTM's matmuls
    inside it still drop to bfloat16; fastlstm's stay float32, so its numbers
    are float32's.)"""
    ours, theirs = _pair("jit")
    ours.float(), theirs.float()
    packed = pack_padded_sequence(torch.randn(4, 3, I), torch.tensor([4, 2, 1]))
    exact = [t.detach() for t in (lambda o: (o[0].data, *o[1]))(theirs(packed))]
    results = []
    for m in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, (h, c) = m(packed)
        results.append((out.data, h, c))
    for name, a, b, e in zip(("out", "h_n", "c_n"), *results, exact):
        assert a.dtype == b.dtype == torch.float32, f"{name}: {a.dtype}, nn.LSTM {b.dtype}"
        _close(a, e, torch.float32, name)
        torch.testing.assert_close(b, e, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("where", ["weight_hh_l0", "weight_ih_l0", "bias_hh_l0"])
def test_jit_stays_finite_where_nn_lstm_does(where):
    """A float32 entry of 1e38 in the g gate: the jit's power-of-two scalings
    would overflow it; it must give nn.LSTM's finite answer."""
    ours, theirs = _pair("jit")
    ours.float(), theirs.float()
    with torch.no_grad():
        for m in (ours, theirs):
            getattr(m, where)[2 * H] = 1e38
    x = torch.randn(3, 2, I)
    got, want = ours(x)[0], theirs(x)[0]
    assert torch.isfinite(want).all()
    assert torch.isfinite(got).all(), "jit overflowed where nn.LSTM stays finite"
    _close(got, want, torch.float32, "out")


def test_jit_overflowed_scaling_that_stays_finite():
    """A g-gate weight past half the float32 range times a tiny input: the
    doubled weight is inf, the product inf, the gate saturates to a finite but
    wrong value. The range check runs before the fast path, so it cannot."""
    ours, theirs = _pair("jit", bias=False)
    ours.float(), theirs.float()
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight_ih_l0.zero_()
            m.weight_ih_l0[2 * H, 0] = 1.8e38
            m.weight_hh_l0.zero_()
    x = torch.zeros(1, 1, I)
    x[0, 0, 0] = 1.2e-38
    _close(ours(x)[1][1], theirs(x)[1][1], torch.float32, "c_n")
    # the custom op torch.compile runs takes the same check
    args = [x[0:1], torch.zeros(1, H), torch.zeros(1, H), ours.weight_ih_l0, ours.weight_hh_l0, None, None, None, None]
    _close(torch.ops.fastlstm.lstm_layer("jit", *args)[2], theirs(x)[1][1][0], torch.float32, "c_n (custom op)")


def test_jit_weights_edited_through_data_past_the_range():
    """`.data` edits leave `_version` alone, so a cached range check is stale;
    a non-finite final state makes the layer check again."""
    ours, theirs = _pair("jit")
    ours.float(), theirs.float()
    x = torch.randn(3, 2, I)
    ours(x)  # the weights' range is now known (and cached)
    for m in (ours, theirs):
        m.weight_hh_l0.data[2 * H] = 1e38
    want = theirs(x)[0]
    assert torch.isfinite(want).all()
    _close(ours(x)[0], want, torch.float32, "out")


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_derivatives_when_one_tensor_fills_two_slots(backend):
    """LSTMCell(x, (s, s)) and tied biases: each slot's share of the gradient,
    not the tensor's total twice."""
    dtype = _dtype(backend)
    torch.manual_seed(0)
    cells = [fastlstm.LSTMCell(I, H, backend=backend).to(dtype)]
    cells.append(nn.LSTMCell(I, H).to(dtype))
    cells[1].load_state_dict(cells[0].state_dict())
    x0, s0 = torch.randn(2, I, dtype=dtype), torch.randn(2, H, dtype=dtype)
    results = []
    for cell in cells:
        cell.bias_hh = cell.bias_ih  # tied
        x, s = x0.clone().requires_grad_(), s0.clone().requires_grad_()
        h, c = cell(x, (s, s))
        gs, gb = torch.autograd.grad(h.pow(2).sum() + c.pow(2).sum(), (s, cell.bias_ih), create_graph=True)
        results.append([gs, gb] + list(torch.autograd.grad(gs.pow(2).sum() + gb.pow(2).sum(), (x, s))))
    for name, a, b in zip(("d/ds", "d/dbias", "d2/dx", "d2/ds"), *results):
        _close(a, b, dtype, name)
