"""``python -m synthrec.toyworld [DIR] [--seed N] [--force]`` (also ``synthrec toy-world``): build the toy
world with a progress bar per step."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Any

DESCRIPTION = (
    "Build the toy world (trained tiny text-to-image, CLIP and T5 models plus drawn real data; what "
    "tiny://world/ references use) once, into DIR/v<builder version>-seed<seed>/. "
)


class RichProgress:
    """One bar per build step (several at once: the components train in parallel) on a terminal; a line
    per step otherwise (logs, CI)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True, highlight=False)
        self.bars = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self.tasks: dict[str, Any] = {}
        self.last = ""

    def __enter__(self) -> RichProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)

    def start(self, task: str, total: int) -> None:
        self.tasks[task] = self.bars.add_task(task, total=total)
        self.last = task
        if not self.console.is_terminal:
            self.console.print(f"toy world: {task} ({total} steps)")

    def advance(self, steps: int = 1, *, task: str | None = None) -> None:
        self.bars.advance(self.tasks[task or self.last], steps)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", nargs="?", help="parent folder (default: $SYNTHREC_TOY_WORLD or ~/.cache/synthrec/toy-world)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed everything is drawn and trained from")
    parser.add_argument("--force", action="store_true", help="rebuild even when a complete build is there")


def build(args: argparse.Namespace) -> int:
    """Build (or find) the toy world with progress bars; print where it is and what it measured."""
    from synthrec.toyworld.builder import NOTICE, build_toy_world, default_root

    logging.basicConfig(level=logging.WARNING)
    with RichProgress() as progress:
        world = build_toy_world(
            args.dir or default_root(), seed=args.seed, force=args.force, progress=progress
        )
    manifest = world.manifest()
    print(f"toy world: {world.root}")
    print(f"built in {manifest['build_seconds']['total']} s; measured: {json.dumps(manifest['quality'])}")
    print(NOTICE)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from synthrec.toyworld.builder import NOTICE

    parser = argparse.ArgumentParser(prog="python -m synthrec.toyworld", description=DESCRIPTION + NOTICE)
    add_arguments(parser)
    return build(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
