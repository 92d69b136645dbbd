"""The ``synthrec`` command line. Each command lives in its own module of this package and registers
itself with ``register(subparsers)``; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Command modules of this package, in the order --help lists them.
COMMANDS = (
    "run",
    "status",
    "report",
    "validate",
    "plan",
    "scaffold",
    "crds",
    "tiny_models",
    "toy_world",
    "operator",
)

EPILOG = """\
examples:
  synthrec run examples/quickstart.yaml          # the whole pipeline on this machine -> ./synthrec-out/
  synthrec status synthrec-out/                  # what is done and what is missing
  synthrec report synthrec-out/                  # the HTML report (also written at the end of run)
  synthrec validate examples/eurosat-zero-shot.yaml
  synthrec plan examples/quickstart.yaml
  synthrec scaffold table1 --out my-table1         # the 17 datasets of Table 1, with your locations
  synthrec crds --out crds/
  synthrec tiny-models .synthrec/tiny-models

Run 'synthrec COMMAND --help' for a command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    from synthrec import __version__

    parser = argparse.ArgumentParser(
        prog="synthrec",
        description="Synthetic data from generative models for image recognition (He et al., ICLR 2023), "
        "on Kubernetes or on one machine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"synthrec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"synthrec.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
