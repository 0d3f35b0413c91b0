"""The files a profile writes: profile.json, profile.csv and the `--results` file."""
import csv
import json
import os
from typing import List

import torch

from ..device import gpu
from .models import FASTLSTM_BACKENDS
from .run import FIELDS

RESULT_FIELDS = ("device", "dtype", "batch", "hidden", "input", "seq_len", "mode", "backend",
                 "baseline", "ms", "baseline_ms", "speedup", "plan", "torch", "triton", "commit")
_RESULT_KEY = RESULT_FIELDS[:8]


def write_json(rows: List[dict], path: str) -> str:
    """Write `rows` as a JSON list of objects (missing figures are null). The file is
    replaced whole (written beside it, then renamed), so a reader, or a run stopped
    half-way, never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)
    return path


def _csv_cells(row: dict) -> dict:
    return {k: ("" if row.get(k) is None else row[k]) for k in FIELDS}


def write_csv(rows: List[dict], path: str) -> str:
    """Write `rows` as CSV with the columns FIELDS (missing figures are empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELDS), extrasaction="ignore")
        w.writeheader()
        w.writerows(_csv_cells(row) for row in rows)
    return path


class ProfileFiles:
    """profile.json and profile.csv in `out`, kept up to date as rows are measured:
    `add(rows)` appends them to the CSV and rewrites the JSON, so a run that is
    stopped keeps every row measured so far. Creating it creates `out` and both
    files (empty), so a bad `out` fails before anything is measured (OSError).

    Example:
        >>> import tempfile
        >>> files = ProfileFiles(tempfile.mkdtemp())
        >>> files.add([{"backend": "torch"}]); len(files.rows)
        1
    """

    def __init__(self, out: str):
        os.makedirs(out, exist_ok=True)
        self.json_path = os.path.join(out, "profile.json")
        self.csv_path = os.path.join(out, "profile.csv")
        self.rows: List[dict] = []
        write_csv([], self.csv_path)
        write_json([], self.json_path)

    def add(self, rows: List[dict]) -> None:
        self.rows += rows
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=list(FIELDS), extrasaction="ignore").writerows(map(_csv_cells, rows))
        write_json(self.rows, self.json_path)


def baseline_name(device: torch.device) -> str:
    """The library nn.LSTM runs on at `device`: "cudnn" on a GPU (CUDA, or simulated:
    the library it stands for), "onednn" on the CPU ("aten" where that library is
    off or missing)."""
    g = gpu(device)
    if g is not None:
        return "cudnn" if g.cudnn_enabled() else "aten"
    return "onednn" if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else "aten"


def result_rows(rows: List[dict], baseline: str) -> List[dict]:
    """One row (RESULT_FIELDS) per fastlstm backend's "layer" profile row, paired with the
    "torch" row timed interleaved with it (same shape, mode and T). `ms`,
    `baseline_ms` and `speedup` (baseline_ms / ms) are None unless both passed.

    Example:
        >>> rows = run_profile(batch=2, input_size=3, hidden_size=5, seq_lens=[4], modes=["infer"],
        ...                    backends=["jit"], repeats=1, memory=False)
        >>> [(r["backend"], r["speedup"] > 0) for r in result_rows(rows, "onednn")]
        [('jit', True)]
    """
    def pair(r):
        return tuple(r[k] for k in ("device", "mode", "seq_len", "batch", "input", "hidden", "layers", "dtype"))

    rows = [r for r in rows if r.get("workload", "layer") == "layer"]
    base = {pair(r): r["ms"] for r in rows if r["backend"] == "torch" and r["status"] == "ok"}
    out = []
    for r in rows:
        if r["backend"] not in FASTLSTM_BACKENDS:
            continue
        ms = r["ms"] if r["status"] == "ok" else None
        base_ms = base.get(pair(r)) if ms else None
        out.append({"device": r["device_name"], "dtype": r["dtype"], "batch": r["batch"], "hidden": r["hidden"],
                    "input": r["input"], "seq_len": r["seq_len"], "mode": r["mode"], "backend": r["backend"],
                    "baseline": baseline, "ms": ms if base_ms else None, "baseline_ms": base_ms,
                    "speedup": base_ms / ms if base_ms else None, "plan": r.get("plan"),
                    "torch": r["torch_version"],
                    "triton": r["triton_version"], "commit": r["git_commit"]})
    return out


def write_results(rows: List[dict], path: str, baseline: str) -> int:
    """Write the passing `result_rows(rows, baseline)` to `path` (a JSON list); return
    how many. An existing file is updated: its rows for the device, shapes, modes
    and backends tried here are replaced (or dropped, where they no longer pass),
    the others kept, so a long grid can be run in pieces into one file."""
    tried = result_rows(rows, baseline)
    keys = {tuple(r[k] for k in _RESULT_KEY) for r in tried}
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            kept = [r for r in json.load(f) if tuple(r.get(k) for k in _RESULT_KEY) not in keys]
    passed = [r for r in tried if r["speedup"] is not None]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json(kept + passed, path)
    return len(passed)
