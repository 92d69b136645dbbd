"""synthrec run: every resource of a file on this machine (the local mode), with progress bars."""

from __future__ import annotations

import argparse

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "run",
        help="run every SyntheticDataset and RecognitionExperiment of a file on this machine",
        description="Run the resources of a file on this machine with the plan, task files and workers the "
        "operator uses on a cluster: the dataset stages (prompts, generate, filter, reduce) shard by shard, "
        "then the experiments that use them, run by run. Every resource writes under the storage: "
        "<storage>/datasets/<name>/ and <storage>/experiments/<name>/. Re-running the same command after "
        "an interruption (Ctrl-C, a crash, a full disk) continues from the committed shards. At the end it "
        "prints a summary and writes an HTML report. Exit status: 0 all done, 1 failed or bad input, "
        "130 interrupted.",
        examples=[
            "synthrec run examples/quickstart.yaml                     # -> ./synthrec-out/",
            "synthrec run examples/quickstart.yaml --storage file:///data/synthrec/",
            "synthrec run examples/eurosat-zero-shot.yaml --storage s3://bucket/synthrec/   # AWS_* env",
            "synthrec run examples/eurosat-few-shot.yaml --only eurosat-rg-16shot --parallel 2",
            "synthrec run my.yaml --storage spec          # each resource's own spec.output.uri",
        ],
        func=run,
    )
    p.add_argument("file", help="YAML file with SyntheticDataset and/or RecognitionExperiment resources")
    p.add_argument(
        "--storage",
        metavar="URI",
        help="where artifacts go: file:///path/, a local path, s3://bucket/prefix/, or 'spec' to keep each "
        "resource's spec.output.uri (default: ./synthrec-out/)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="worker processes at once (default: min(shards, CPUs)); CPU threads are divided among them",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this resource (repeatable); experiments then find their datasets in storage",
    )
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on Ctrl-C, how long workers may take to stop before they are killed (default: 30)",
    )


def run(args: argparse.Namespace) -> int:
    from synthrec.local import RunRequest, execute

    if args.parallel is not None and args.parallel < 1:
        print("error: --parallel must be at least 1", flush=True)
        return 2
    from synthrec.local.ui import RichUI

    ui = RichUI()
    request = RunRequest(
        file=args.file,
        storage=args.storage,
        parallel=args.parallel,
        only=tuple(args.only),
        report=not args.no_report,
        grace_s=args.grace,
    )
    return execute(request, ui, prepare=ui.prepare)
