"""The Triton backend: one LSTM layer, one direction, in one persistent launch.

Pieces, by name, and the module that holds each:
    kernels          `fastlstm.kernels` (only `@triton.jit` code):
                     `lstm_fwd.lstm_fwd_kernel`, `lstm_bwd.lstm_bwd_kernel`,
                     the tiles and products they share (`tiles`) and the
                     grid barrier (`barrier`).
    launch plan      `plan`: `launch_plan` -> `LaunchPlan`: persistent or per
                     step, the grid, the block sizes, where the weights live;
                     `plans_for` (a layer's plans on its device) and the
                     products' precision (`_dot_precision`).
    launchers        `launch`: `_launch` (one kernel over all steps,
                     persistent or step by step), `_Prepared`, `_run`,
                     `_StepLauncher`; `barrier_loop` (the barrier alone).
    workspace        `workspace`: `_Workspace` (the barrier counter and error
                     flags of a device and stream), `raise_barrier_timeouts`.
    layer            `layer`: `_lstm_fwd`, `_lstm_bwd` (buffers, the host
                     GEMMs and the launches).
    Function         `layer`: `LSTMTritonFunction`.
    public function  `layer`: `lstm_layer_triton` (the layer primitive, see
                     `fastlstm.backends`).
    reference        `fastlstm.backends.reference`: `lstm_layer_reference`
                     (the float64 oracle, and what runs under torch.func
                     transforms).

Forward: x @ W_ih^T + b_ih + b_hh for all steps in one GEMM, then one
persistent launch for the whole recurrence: each program holds its hidden
units' slice of W_hh (and of W_hr) on chip for all T steps, and the programs
meet at a grid barrier once per step (twice with a projection). Backward: one
persistent launch for the recurrence dh = dg[t+1] @ W_hh (+ W_hr) and the
pointwise cell backward; every weight gradient, the bias gradients, dx and
dh0 are then GEMMs/reductions over all steps at once.

Where a persistent launch cannot run (the interpreter with more than one
program, or a triton without cooperative launches) the same kernels run one
launch per step (per phase), through the compiled kernel directly rather
than Triton's dispatcher, with no per-step tensor views.

Storage: h in the input dtype (it only feeds storage-dtype dots), c, gates and
all accumulation in float32. float64 is not supported: use backend 'jit'.
"""
# The names the rest of fastlstm (and bench/) uses, from the modules that hold them.
from .launch import barrier_loop  # noqa: F401
from .layer import LSTMTritonFunction, _function_and_args, lstm_layer_triton  # noqa: F401
from .plan import LaunchPlan, _dot_precision, launch_plan, plans_for  # noqa: F401
from .workspace import raise_barrier_timeouts  # noqa: F401
