"""`fastlstm demo ...`: the workloads LSTM tutorials teach with, run on fastlstm.

- `sincos`: regress cos(t) from sin(t), window after window, the state carried
  between windows; saves a plot of target against prediction.
- `charlm`: a character-level language model (one-hot input, hidden 256,
  batch 32, 35 steps, clipping at norm 1) on the Python standard library's own
  source; reports perplexity per epoch, training tokens/s of fastlstm,
  torch.nn.LSTM and a tutorial-style per-gate loop on the same batches, and a
  sample of generated text.
- `toy`: four random 50-dimensional inputs, a 100-unit LSTMCell read out
  through its first hidden unit, squared error and plain SGD.

Each demo is a function that returns what it measured, so tests can run it
(and run it again with torch.nn in place of fastlstm to compare curves).
"""
import argparse
import contextlib
import glob
import importlib.util
import math
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .baselines import TutorialLSTM
from .device import gpu
from .modules import LSTM, LSTMCell
from .profile.progress import ProgressLine

_Log = Optional[Callable[[str], None]]

# What the from-scratch LSTM of the d2l tutorial reports for itself: hidden
# 256, 500 epochs on a 170 kB novel, on a GPU.
TUTORIAL_REFERENCE = {"perplexity": 1.3, "tokens_per_s": 17736.0, "epochs": 500, "corpus": "170 kB novel", "device": "GPU"}

DEFAULT_OUT = "demo-out"


def _say(log: _Log, msg: str) -> None:
    if log is not None:
        log(msg)


# ---------------------------------------------------------------------------
# sin -> cos
# ---------------------------------------------------------------------------

def sincos(
    windows: int = 100,
    steps: int = 20,
    hidden: int = 32,
    lr: float = 0.02,
    seed: int = 0,
    backend: str = "auto",
    use_torch: bool = False,
    out: Optional[str] = None,
    plot_windows: int = 5,
    log_every: int = 10,
    log: _Log = print,
) -> Dict[str, object]:
    """Learn cos(t) from sin(t) with an LSTM and a Linear readout.

    Window k covers t in [k*pi, (k+1)*pi) in `steps` steps: input sin(t) of
    shape (T, 1, 1), target cos(t). One Adam step per window; the (h, c) state
    goes on to the next window, detached. With `use_torch`, torch.nn.LSTM
    replaces fastlstm.LSTM; under the same `seed` both start from the same
    weights, so their loss curves can be compared.

    Returns a dict: "losses" (one float per window), "t", "target" and
    "prediction" (1-D tensors over the last `plot_windows` windows) and
    "png" (the saved plot's path, or None when `out` is None).

    Example:
        >>> r = sincos(windows=30, backend="reference", log=None)
        >>> r["losses"][-1] < r["losses"][0]
        True
    """
    torch.manual_seed(seed)
    if use_torch:
        lstm = nn.LSTM(1, hidden)
    else:
        lstm = LSTM(1, hidden, backend=backend)
    readout = nn.Linear(hidden, 1)
    opt = torch.optim.Adam([*lstm.parameters(), *readout.parameters()], lr=lr)

    losses: List[float] = []
    kept_t, kept_y, kept_p = [], [], []
    state = None
    for k in range(windows):
        t = (k + torch.arange(steps, dtype=torch.float32) / steps) * math.pi
        x, y = torch.sin(t).view(steps, 1, 1), torch.cos(t).view(steps, 1, 1)
        out_seq, state = lstm(x, state)
        pred = readout(out_seq)
        loss = F.mse_loss(pred, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        # Carry the state on but cut the graph: each window trains on its own.
        state = (state[0].detach(), state[1].detach())
        losses.append(loss.item())
        if log_every and (k + 1) % log_every == 0:
            _say(log, f"window {k + 1:4d}  loss {loss.item():.6f}")
        if k >= windows - plot_windows:
            kept_t.append(t)
            kept_y.append(y.flatten())
            kept_p.append(pred.detach().flatten())

    result = {
        "losses": losses,
        "t": torch.cat(kept_t) if kept_t else torch.empty(0),
        "target": torch.cat(kept_y) if kept_y else torch.empty(0),
        "prediction": torch.cat(kept_p) if kept_p else torch.empty(0),
        "png": None,
    }
    if out is not None:
        who = "torch.nn.LSTM" if use_torch else f"fastlstm.LSTM (backend={backend!r})"
        result["png"] = _plot_sincos(result, out, who, windows, plot_windows)
        _say(log, f"saved {result['png']}")
    return result


def _plot_sincos(result: dict, out: str, who: str, windows: int, shown: int) -> str:
    # Figure without pyplot: renders with Agg and touches no global state.
    from matplotlib.figure import Figure

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "sincos.png")
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    ax.plot(result["t"].numpy(), result["target"].numpy(), label="target cos(t)", lw=2)
    ax.plot(result["t"].numpy(), result["prediction"].numpy(), "--", label="prediction", lw=2)
    ax.set_xlabel("t")
    ax.set_ylabel("cos(t): target and prediction")
    ax.set_title(f"sin -> cos, {who}: the last {shown} of {windows} windows")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


# ---------------------------------------------------------------------------
# character-level language model
# ---------------------------------------------------------------------------

def stdlib_corpus(max_chars: int = 200_000) -> str:
    """The running interpreter's standard-library source, up to `max_chars` characters.

    Concatenates the `.py` files next to `os.py`, in sorted order, so every
    machine with the same Python has the same corpus without a download.

    Example:
        >>> text = stdlib_corpus(10_000)
        >>> len(text)
        10000
    """
    parts, size = [], 0
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            chunk = f.read()
        parts.append(chunk)
        size += len(chunk)
        if size >= max_chars:
            break
    return "".join(parts)[:max_chars]


class _CharModel(nn.Module):
    """One-hot characters -> one LSTM layer -> Linear decoder over the vocabulary.

    `rnn` is a one-layer LSTM taking (T, B, V) and a state of (1, B, H) pairs,
    or a TutorialLSTM (state (B, H) pairs); the state is kept as (1, B, H).
    """

    def __init__(self, rnn: nn.Module, vocab: int):
        super().__init__()
        self.rnn, self.vocab = rnn, vocab
        self.decoder = nn.Linear(rnn.hidden_size, vocab)
        self._flat_state = isinstance(rnn, TutorialLSTM)

    def forward(self, ids: Tensor, state=None):
        # ids (B, T) -> logits (T*B, V); time-major inside, as the LSTMs want.
        x = F.one_hot(ids.t(), self.vocab).to(self.decoder.weight.dtype)
        if self._flat_state:
            hx = None if state is None else (state[0][0], state[1][0])
            out, (h, c) = self.rnn(x, hx)
            state = (h.unsqueeze(0), c.unsqueeze(0))
        else:
            out, state = self.rnn(x, state)
        return self.decoder(out.reshape(-1, out.shape[-1])), state


def _batches(ids: Tensor, batch: int, steps: int, offset: int):
    """Sequential partition: `batch` contiguous streams, read `steps` at a time.

    Yields (X, Y), each (B, T) int64, Y being X shifted by one character. Row b
    of one batch continues row b of the previous one, so the state can carry.
    """
    n = (ids.numel() - offset - 1) // batch * batch
    xs = ids[offset:offset + n].view(batch, -1)
    ys = ids[offset + 1:offset + 1 + n].view(batch, -1)
    for i in range(0, xs.shape[1] - steps + 1, steps):
        yield xs[:, i:i + steps], ys[:, i:i + steps]


def _train_step(model: _CharModel, opt, X: Tensor, Y: Tensor, state, clip: float):
    logits, state = model(X, state)
    loss = F.cross_entropy(logits, Y.t().reshape(-1))
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss, state


def _make_optimizer(name: str, params, lr: Optional[float]):
    if name == "sgd":
        return torch.optim.SGD(params, lr=1.0 if lr is None else lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=0.005 if lr is None else lr)
    raise ValueError(f"optimizer: expected 'sgd' or 'adam', got {name!r}")


def _sync(device: torch.device) -> None:
    if gpu(device) is not None:
        gpu(device).synchronize()


def _time_side_by_side(models: Dict[str, _CharModel], opts: dict, batches, clip: float,
                       device: torch.device, rounds: int,
                       on_round: Optional[Callable[[int], None]] = None) -> Dict[str, List[float]]:
    """Seconds per training step for each model, interleaved batch by batch.

    Every model trains on the same batch before the next batch is drawn, and
    the order rotates each batch, so drift in machine load hits all alike.
    The first batch is a warm-up and is not recorded.
    """
    names = list(models)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds + 1):
        X, Y = (t.to(device) for t in batches[r % len(batches)])
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            loss, _ = _train_step(models[name], opts[name], X, Y, None, clip)
            loss.item()
            _sync(device)
            if r > 0:
                times[name].append(time.perf_counter() - t0)
        if on_round is not None:
            on_round(r)
    return times


@torch.no_grad()
def _sample(model: _CharModel, prefix: str, n: int, stoi: dict, itos: list, temperature: float,
            seed: int, device: torch.device) -> str:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[stoi[ch] for ch in prefix]], device=device)
    logits, state = model(ids, None)
    out = list(prefix)
    for _ in range(n):
        last = logits[-1].float().cpu()
        if temperature <= 0:
            nxt = int(last.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=gen))
        out.append(itos[nxt])
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    return "".join(out)


def charlm(
    text: Optional[str] = None,
    epochs: int = 20,
    hidden: int = 256,
    batch: int = 32,
    steps: int = 35,
    optimizer: str = "adam",
    lr: Optional[float] = None,
    clip: float = 1.0,
    backend: str = "auto",
    device: str = "cpu",
    max_chars: int = 200_000,
    timing_rounds: int = 20,
    prefix: str = "def ",
    sample_chars: int = 120,
    temperature: float = 0.7,
    seed: int = 0,
    quick: bool = False,
    log: _Log = print,
    show_progress: bool = False,
) -> Dict[str, object]:
    """Train a character-level LSTM language model and time it against torch.

    The model: one-hot characters (T, B, V) -> fastlstm.LSTM(V, hidden) -> a
    Linear decoder to V logits; cross-entropy, gradients clipped to norm
    `clip`, SGD (lr 1 by default) or Adam (lr 0.005). The corpus is cut into
    `batch` contiguous streams read `steps` characters at a time, the state
    carried (detached) from one batch to the next within an epoch.
    `text` defaults to `stdlib_corpus(max_chars)`. `quick` shrinks the run
    (40 kB, 4 epochs, 5 timing rounds) to finish in seconds on a CPU.
    `show_progress` shows the run's progress as `fastlstm profile` does (a
    rich bar on a terminal, else a line at least every 10 s while an epoch
    runs), and each epoch's line ends with the time elapsed and left.

    After training, copies of the trained weights in fastlstm.LSTM,
    torch.nn.LSTM and a per-gate TutorialLSTM are checked to give the same
    logits, then each takes one training step on the same batches in turn;
    the median step time gives tokens/s.

    Returns a dict: "perplexity" (one float per epoch), "epoch_tokens_per_s"
    (fastlstm's training throughput per epoch), "tokens_per_s" and
    "step_times" (per model name), "sample" (text generated from `prefix`,
    greedy when `temperature` is 0), "vocab" and "chars" (corpus size).

    Example:
        >>> r = charlm(quick=True, backend="reference", log=None)
        >>> r["perplexity"][-1] < r["perplexity"][0]
        True
    """
    if quick:
        max_chars, epochs, timing_rounds = min(max_chars, 40_000), min(epochs, 4), min(timing_rounds, 5)
    if text is None:
        text = stdlib_corpus(max_chars)
    text = text[:max_chars]
    if len(text) < batch * steps + 1:
        raise ValueError(f"text: expected at least batch*steps+1 = {batch * steps + 1} characters, got {len(text)}")
    dev = torch.device(device)
    itos = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(itos)}
    ids = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
    V = len(itos)
    unknown = sorted(set(prefix) - set(stoi))
    if not prefix or unknown:
        raise ValueError(f"prefix: expected a non-empty string of characters from the text, got {prefix!r} "
                         f"(not in the text: {unknown!r})")

    torch.manual_seed(seed)
    model = _CharModel(LSTM(V, hidden, backend=backend), V).to(dev)
    opt = _make_optimizer(optimizer, model.parameters(), lr)
    _say(log, f"corpus: {len(text):,} characters, vocabulary {V}; LSTM hidden {hidden}, batch {batch}, "
              f"{steps} steps, {optimizer}, clip {clip}, backend {backend!r}, device {dev}")

    with contextlib.ExitStack() as stack:
        bar = None
        if show_progress:
            # Work units: training batches, and the side-by-side timing's steps
            # after training (the tutorial loop's step costs about two).
            per_epoch = max(1, (len(ids) - steps) // batch // steps)
            bar = stack.enter_context(ProgressLine(
                epochs, epochs * per_epoch + 4 * (timing_rounds + 1), unit="epochs", line_per_row=False))
        perplexity, epoch_tps = _train_epochs(model, opt, ids, epochs, batch, steps, clip, seed, dev, log, bar)

        model.eval()
        sample = _sample(model, prefix, sample_chars, stoi, itos, temperature, seed, dev)
        model.train()
        times = _time_contenders(model, opt, V, hidden, optimizer, lr, ids, batch, steps, clip, dev, timing_rounds,
                                 bar)

    tokens = batch * steps
    tps = {name: tokens / statistics.median(ts) for name, ts in times.items() if ts}
    _say(log, f"training tokens/s (forward, backward, clip, step), median of {len(times['fastlstm'])} "
              f"interleaved steps on the same batches:")
    for name, value in tps.items():
        ts = sorted(times[name])
        _say(log, f"  {name:14s} {value:9,.0f} tokens/s  (step {1e3 * statistics.median(ts):.1f} ms, "
                  f"min {1e3 * ts[0]:.1f}, max {1e3 * ts[-1]:.1f})")
    ref = TUTORIAL_REFERENCE
    _say(log, f"  tutorial's own figure: perplexity {ref['perplexity']}, {ref['tokens_per_s']:,.0f} tokens/s "
              f"on a {ref['device']} (from-scratch LSTM, hidden 256, {ref['epochs']} epochs, {ref['corpus']})")
    how = "greedy" if temperature <= 0 else f"temperature {temperature}, seed {seed}"
    _say(log, f"sample ({how}) from {prefix!r}:\n{sample}")
    return {
        "perplexity": perplexity,
        "epoch_tokens_per_s": epoch_tps,
        "tokens_per_s": tps,
        "step_times": times,
        "sample": sample,
        "vocab": V,
        "chars": len(text),
    }


def _train_epochs(model: _CharModel, opt, ids: Tensor, epochs: int, batch: int, steps: int, clip: float, seed: int,
                  dev: torch.device, log: _Log, bar: Optional[ProgressLine]) -> Tuple[List[float], List[float]]:
    """Train for `epochs`; returns (perplexity, training tokens/s), one per epoch."""
    gen = torch.Generator().manual_seed(seed)
    perplexity, epoch_tps = [], []
    for epoch in range(epochs):
        offset = int(torch.randint(0, steps, (1,), generator=gen))
        state, total, count = None, 0.0, 0
        _sync(dev)
        t0 = time.perf_counter()
        for i, (X, Y) in enumerate(_batches(ids, batch, steps, offset)):
            X, Y = X.to(dev), Y.to(dev)
            loss, state = _train_step(model, opt, X, Y, state, clip)
            state = (state[0].detach(), state[1].detach())
            total += loss.item() * Y.numel()
            count += Y.numel()
            if bar is not None:
                bar.update(f"epoch {epoch + 1}, batch {i + 1}", 1)
        _sync(dev)
        elapsed = time.perf_counter() - t0
        perplexity.append(math.exp(total / count))
        epoch_tps.append(count / elapsed)
        line = f"epoch {epoch + 1:3d}  perplexity {perplexity[-1]:8.3f}  {epoch_tps[-1]:9,.0f} tokens/s"
        if bar is not None:
            bar.update(f"epoch {epoch + 1}: done", 0, 1)
            line = f"{line}  | {bar.times()}"
        _say(log, line)
    return perplexity, epoch_tps


def _time_contenders(model: _CharModel, opt, V: int, hidden: int, optimizer: str, lr: Optional[float], ids: Tensor,
                     batch: int, steps: int, clip: float, dev: torch.device, rounds: int,
                     bar: Optional[ProgressLine]) -> Dict[str, List[float]]:
    """Side by side: copies of the trained weights in each implementation, checked to
    agree, then timed step by step (`_time_side_by_side`)."""
    plain = nn.LSTM(V, hidden).to(dev)
    plain.load_state_dict(model.rnn.state_dict())
    contenders = {
        "fastlstm": model,
        "torch.nn.LSTM": _wrap_like(plain, model),
        "tutorial loop": _wrap_like(TutorialLSTM.from_lstm(plain), model),
    }
    timing_batches = list(_batches(ids, batch, steps, 0))
    _check_agree(contenders, timing_batches[0][0].to(dev))
    opts = {name: _make_optimizer(optimizer, m.parameters(), lr) for name, m in contenders.items()}
    opts["fastlstm"] = opt
    on_round = None if bar is None else (lambda r: bar.update(f"timing, round {r + 1} of {rounds + 1}", 4))
    return _time_side_by_side(contenders, opts, timing_batches, clip, dev, rounds, on_round)


@torch.no_grad()
def _check_agree(models: Dict[str, _CharModel], X: Tensor) -> None:
    """Refuse to time implementations that do not compute the same logits."""
    names = list(models)
    want = models[names[0]](X)[0]
    for name in names[1:]:
        got = models[name](X)[0]
        if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            diff = (got - want).abs().max().item()
            raise RuntimeError(f"{name} and {names[0]} disagree on the same batch (max |diff| {diff:.2e}); not timing")


def _wrap_like(rnn: nn.Module, like: _CharModel) -> _CharModel:
    """A _CharModel around `rnn`, on `like`'s device, with a copy of `like`'s decoder."""
    m = _CharModel(rnn, like.vocab).to(like.decoder.weight.device)
    m.decoder.load_state_dict(like.decoder.state_dict())
    return m


# ---------------------------------------------------------------------------
# the numpy tutorial's toy task
# ---------------------------------------------------------------------------

TOY_TARGETS = (-0.5, 0.2, 0.1, -0.5)


def toy(
    iterations: int = 100,
    lr: float = 0.1,
    input_size: int = 50,
    hidden: int = 100,
    targets: Tuple[float, ...] = TOY_TARGETS,
    seed: int = 0,
    backend: str = "auto",
    use_torch: bool = False,
    log: _Log = print,
) -> Dict[str, object]:
    """Fit four targets with the first hidden unit of an LSTMCell.

    Inputs: len(targets) random vectors (uniform in [0, 1), `input_size` wide),
    fed as one sequence with batch 1; the prediction at step t is h_t[0, 0].
    Loss: the sum over steps of squared errors; plain SGD. With `use_torch`,
    torch.nn.LSTMCell replaces fastlstm.LSTMCell from the same seeded weights.

    Returns a dict: "losses" (one per iteration) and "predictions" (the last
    iteration's, one per target).

    Example:
        >>> r = toy(iterations=20, backend="reference", log=None)
        >>> r["losses"][-1] < r["losses"][0]
        True
    """
    gen = torch.Generator().manual_seed(seed)
    xs = torch.rand(len(targets), 1, input_size, generator=gen)
    ys = torch.tensor(targets)
    torch.manual_seed(seed)
    cell = nn.LSTMCell(input_size, hidden) if use_torch else LSTMCell(input_size, hidden, backend=backend)
    opt = torch.optim.SGD(cell.parameters(), lr=lr)
    losses: List[float] = []
    preds = torch.empty(0)
    for it in range(iterations):
        state = None
        outs = []
        for x in xs:
            state = cell(x, state)
            outs.append(state[0][0, 0])
        preds = torch.stack(outs)
        loss = ((preds - ys) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        shown = ", ".join(f"{p:+.4f}" for p in preds.tolist())
        _say(log, f"iter {it:3d}  loss {loss.item():.3e}  y_pred [{shown}]")
    return {"losses": losses, "predictions": preds.detach().tolist()}


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def _number(kind, low: float, strict: bool, what: str):
    """An argparse type: a `kind` above `low` (at least `low` unless `strict`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, 0, True, "a positive integer")
_positive_float = _number(float, 0.0, True, "a positive number")
_non_negative_float = _number(float, 0.0, False, "a number of at least 0")


def _fail(demo: str, message: str) -> SystemExit:
    return SystemExit(f"fastlstm demo {demo}: error: {message}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `demo sincos|charlm|toy` to the `fastlstm` command line's subparsers.

    Example:
        >>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
        >>> _ = add_parser(sub)
        >>> p.parse_args(["demo", "toy"]).func.__name__
        '_run_toy'
    """
    demo = subparsers.add_parser("demo", help="run the tutorials' workloads on fastlstm",
                                 description="The workloads LSTM tutorials teach with, run on fastlstm.")
    # `fastlstm demo` alone prints this help (exit status 0), as plain `fastlstm` does.
    demo.set_defaults(func=lambda args: demo.print_help() or 0)
    sub = demo.add_subparsers(dest="demo", metavar="{sincos,charlm,toy}")
    backends = ("auto", "jit", "triton", "reference")

    p = sub.add_parser("sincos", help="regress cos(t) from sin(t); saves a plot")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for sincos.png (default: {DEFAULT_OUT})")
    p.add_argument("--windows", type=_positive_int, default=100, help="windows of 20 steps, each covering pi")
    p.add_argument("--backend", choices=backends, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_sincos)

    p = sub.add_parser("charlm", help="character-level language model; perplexity, tokens/s, a sample")
    p.add_argument("--text", help="a text file to train on (default: the standard library's source)")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--backend", choices=backends, default="auto", help="fastlstm's backend (default: auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto (CUDA if present)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=_positive_float, default=None, help="default: 0.005 for adam, 1 for sgd")
    p.add_argument("--max-chars", type=_positive_int, default=200_000)
    p.add_argument("--prefix", default="def ")
    p.add_argument("--temperature", type=_non_negative_float, default=0.7, help="0 samples greedily")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a 40 kB corpus and 4 epochs: seconds on a CPU")
    p.set_defaults(func=_run_charlm)

    p = sub.add_parser("toy", help="the numpy tutorial's toy task: 4 inputs, 4 targets, SGD")
    p.add_argument("--iterations", type=_positive_int, default=100)
    p.add_argument("--lr", type=_positive_float, default=0.1)
    p.add_argument("--backend", choices=backends, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_toy)
    return demo


def _run_sincos(args) -> int:
    if importlib.util.find_spec("matplotlib") is None:  # checked first: the plot comes after a minute of training
        raise _fail("sincos", "matplotlib is not installed, and this demo saves a plot: pip install 'fastlstm[profile]'")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise _fail("sincos", f"--out {args.out}: cannot write there ({e.strerror or e})")
    sincos(windows=args.windows, backend=args.backend, seed=args.seed, out=args.out)
    return 0


def _run_charlm(args) -> int:
    from .profile.models import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise _fail("charlm", f"--{e}")
    text = None
    if args.text is not None:
        try:
            with open(args.text, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise _fail("charlm", f"--text {args.text}: cannot read it ({e.strerror or e})")
    try:
        charlm(text=text, epochs=args.epochs, backend=args.backend, device=str(device), optimizer=args.optimizer,
               lr=args.lr, max_chars=args.max_chars, prefix=args.prefix, temperature=args.temperature,
               seed=args.seed, quick=args.quick, show_progress=True)
    except ValueError as e:  # a text too short for one batch, a prefix outside its characters
        raise _fail("charlm", str(e))
    return 0


def _run_toy(args) -> int:
    toy(iterations=args.iterations, lr=args.lr, backend=args.backend, seed=args.seed)
    return 0
