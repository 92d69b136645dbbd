"""synthrec toy-world: build the toy world (tiny models trained on drawn shapes) behind tiny://world/."""

from __future__ import annotations

import argparse

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    from synthrec.toyworld.__main__ import DESCRIPTION, add_arguments

    p = add_command(
        subparsers,
        "toy-world",
        help="build the toy world (tiny models TRAINED on drawn shapes) that the quickstart uses",
        description=DESCRIPTION
        + "A toy world: coloured shapes drawn by a program; its numbers are not the paper's numbers. "
        "Takes a few minutes on 2 cores, once; re-running is a no-op.",
        examples=[
            "synthrec toy-world          # the folder tiny://world/sd, .../clip, .../t5, .../real/ use",
            "synthrec toy-world /tmp/world --seed 1 --force",
        ],
        func=run,
    )
    add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from synthrec.toyworld.__main__ import build

    return build(args)
