"""`fastlstm profile`: time every backend against torch.nn.LSTM over sequence lengths.

For one shape (batch B, input I, hidden H, layers L, dtype, device), workload
("layer": one call on the sequence; "cell": an LSTMCell stepped over it in
Python) and each sequence length T, every backend runs inference (forward
under no_grad) and/or training (forward + backward with a random output
gradient). Before a backend is timed at a shape, its output (and in training
its input gradient) is compared with a float64 torch.nn.LSTM (nn.LSTMCell)
holding the same weights; a backend that disagrees is marked "failed" and gets
no figures. Rows are handed on (and written by the command line) as each
(mode, T) is measured.

Timing is interleaved: each repetition runs every backend once, in an order
rotated from one repetition to the next, and the median is reported. On a
shared, noisy machine this keeps the ratios between backends fair even when
absolute times drift. Short calls are repeated inside one sample so a sample
lasts at least ~20 ms.

Peak memory is the growth of memory in use during one call, over what was in
use before it (the model, inputs and output gradient are not counted): CUDA's
allocator peak on a GPU, the peak resident set of a subprocess on a Linux CPU
(see `memory.py`).

A grid (`--grid`) repeats the sweep for every batch x hidden x dtype, one
shape after another; `--results FILE` then writes one compact row per fastlstm
backend, shape and mode, paired with nn.LSTM timed interleaved in the same run
(see `result_rows`).

The ms-per-step column is the median time divided by T. For a linear-time
implementation it stays flat (it falls at short T, where the fixed cost per
call is shared by fewer steps); growth with T means super-linear cost.

Example:
    >>> from fastlstm.profile import run_profile
    >>> rows = run_profile(batch=2, input_size=4, hidden_size=8, seq_lens=[4, 8],
    ...                    backends=["jit", "torch"], repeats=1, memory=False)
    >>> sorted({r["backend"] for r in rows})
    ['jit', 'torch']

Where each piece lives:
- `cli.py`: the command line (`fastlstm profile`).
- `run.py`: the sweep (`run_profile`) and the row fields.
- `models.py`: backend names, when a backend can run, the module for each.
- `workloads.py`: the layer and cell workloads: inputs, one timed call (infer or
  train) and its float64 reference.
- `check.py`: the answer check against that reference (tolerances from
  `fastlstm.precision`: the precision in force, TF32 included).
- `grids.py`: the GPU grid (`--grid gpu`, the default on CUDA) and its time
  estimate.  `warm.py`: compiling a grid's kernels in parallel first.
- `gpu_check.py`: `make gpu-check`, everything a GPU machine runs, in one command.
- `timing.py`: warm-up and interleaved timing.
- `memory.py`: peak memory of one call (CUDA allocator, or a CPU subprocess).
- `env.py`: device, versions, threads, load, commit and time.
- `files.py`: profile.json, profile.csv and `--results`.
- `report.py`: the printed tables.  `plot.py`: profile.png.
- `progress.py`: the progress bar or lines (rows, elapsed, time left).
"""
from .check import TOLERANCES, compare
from .env import device_name, environment, git_commit
from .files import RESULT_FIELDS, baseline_name, result_rows, write_csv, write_json, write_results
from .memory import cuda_peak_memory
from .models import BASELINES, DTYPES, FASTLSTM_BACKENDS, KNOWN_BACKENDS, build_model, default_backends, \
    resolve_device, triton_plan, unavailable_reason
from .plot import plot
from .report import print_report
from .run import DEFAULT_REPEATS, FIELDS, count_work, run_profile
from .timing import calls_per_sample, timed_median, warm_up
from .workloads import make_inputs, make_step, reference_result

__all__ = [
    "TOLERANCES", "compare", "device_name", "environment", "git_commit", "RESULT_FIELDS", "baseline_name",
    "result_rows", "write_csv", "write_json", "write_results", "cuda_peak_memory", "BASELINES", "DTYPES",
    "FASTLSTM_BACKENDS", "KNOWN_BACKENDS", "build_model", "default_backends", "resolve_device", "triton_plan",
    "unavailable_reason", "plot", "print_report", "DEFAULT_REPEATS", "FIELDS", "count_work", "run_profile",
    "calls_per_sample", "timed_median", "warm_up", "make_inputs", "make_step", "reference_result",
]
