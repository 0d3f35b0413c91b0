"""The `fastlstm` command line: `fastlstm profile ...` and `fastlstm demo ...`."""
import argparse
import sys
from typing import List, Optional


class _Parser(argparse.ArgumentParser):
    """Bad input gets one line naming the problem (not the whole usage) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def main(argv: Optional[List[str]] = None) -> int:
    import torch

    from . import __version__, demos
    from .profile import cli as profile_cli

    parser = _Parser(prog="fastlstm", description="fastlstm: a faster drop-in torch.nn.LSTM")
    parser.add_argument("--version", action="version", version=f"fastlstm {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True)
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
