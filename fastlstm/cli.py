"""The `fastlstm` command line: `fastlstm profile ...` and `fastlstm demo ...`."""
import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fastlstm", description="fastlstm: a faster drop-in torch.nn.LSTM")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import demos
    from .profile import cli as profile_cli

    profile_cli.add_parser(sub)
    demos.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
