"""synthrec tiny-models: build tiny random-weight models and a tiny real dataset for offline runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "tiny-models",
        help="build tiny offline models (random weights) for demos and tests",
        description="Build a tiny Stable Diffusion pipeline, a tiny open_clip model, a tiny T5 and a tiny "
        "procedurally drawn 'real' dataset into DIR, offline. The weights are RANDOM: runs with them show "
        "the mechanics of the pipeline, and their accuracy means nothing. Re-running is a no-op.",
        examples=[
            "synthrec tiny-models        # the folder tiny://sd, tiny://clip, tiny://t5, tiny://real/ use",
            "synthrec tiny-models /tmp/tiny --force",
        ],
        func=run,
    )
    p.add_argument(
        "dir",
        nargs="?",
        help="output folder (default: $SYNTHREC_TINY_MODELS or <cache>/tiny-models, used by tiny://)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if DIR already holds the models")


def run(args: argparse.Namespace) -> int:
    from synthrec.tiny import build_tiny_models, default_tiny_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = build_tiny_models(Path(args.dir) if args.dir else default_tiny_dir(), force=args.force)
    print(f"tiny models (RANDOM weights, for mechanics only) in {models.root}")
    for name, ref in models.as_refs().items():
        print(f"  {name:5s} {ref}")
    return 0
