"""The `fastlstm` command line: `fastlstm profile ...` and `fastlstm demo ...`."""
import argparse
import sys
from typing import List, Optional


class _Parser(argparse.ArgumentParser):
    """Bad input gets one line naming the problem (not the whole usage) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


# Where fastlstm is faster and where it is the fallback, from stored measurements:
# docs/gpu.md (H200, commit 727ea1b) and bench/results/ (2-core CPU); the README's
# opening says the same.
DESCRIPTION = (
    "fastlstm: a drop-in torch.nn.LSTM / nn.LSTMCell that computes the LSTM itself. On CUDA it runs "
    "persistent Triton kernels: measured on an H200, 1.2-5.3x faster than cuDNN's standard path (bf16, fp32) "
    "at batch 1-32 and hidden 256-1024, but slower than cuDNN's persistent fp16 kernel and at batch 64 and "
    "up. On the CPU it is a TorchScript fallback: 0.24-1.05x the speed of nn.LSTM (oneDNN) at hidden 256, "
    "less at tiny hidden sizes, near even in LSTMCell loops. `fastlstm profile` measures it on your machine."
)
EPILOG = "Without a command, fastlstm prints this help and exits with status 0."


def main(argv: Optional[List[str]] = None) -> int:
    import torch

    from . import __version__, demos
    from .profile import cli as profile_cli

    parser = _Parser(prog="fastlstm", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"fastlstm {__version__} (torch {torch.__version__})")
    # Not required: plain `fastlstm` prints the help (a newcomer's first command).
    sub = parser.add_subparsers(dest="command", metavar="{profile,demo}")
    parser.set_defaults(func=lambda args: parser.print_help() or 0)
    profile_cli.add_parser(sub)
    demos.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # a command that does not handle Ctrl-C itself: no traceback
        print("\nInterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
