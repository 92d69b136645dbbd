"""What every command module shares: ``add_command`` (a subcommand whose --help ends with examples)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_command(
    subparsers: Any,
    name: str,
    *,
    help: str,
    description: str,
    examples: list[str],
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Add a subcommand whose --help ends with runnable examples."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser
