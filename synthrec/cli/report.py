"""synthrec report: the HTML report of a storage or of one resource, from its artifacts."""

from __future__ import annotations

import argparse
import sys

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "report",
        help="write the HTML report (image grids, accept rates, accuracy, plots) of a storage",
        description=(
            "Read the artifacts at URI (a `synthrec run` storage, or one resource's output) and write a "
            "self-contained HTML page: per dataset the accept rates per class, prompt samples and grids of "
            "kept and rejected images with their prompts and CLIP scores; per experiment the accuracy of "
            "all runs, top-1 against shots with the zero-shot baseline, and training curves. Images and PNG "
            "plots are stored beside index.html; nothing is loaded from the internet. `synthrec run` writes "
            "the same report at the end."
        ),
        examples=[
            "synthrec report synthrec-out/                 # -> synthrec-out/report/index.html",
            "synthrec report s3://bucket/synthrec/ --out ./report/",
            "synthrec report file:///data/synthrec/experiments/eurosat-16shot/",
        ],
        func=run,
    )
    p.add_argument("uri", help="storage root or resource output: file:///..., a local path, or s3://...")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder (local path, file:// or s3://) for index.html and its files (default: URI/report/)",
    )
    p.add_argument("--endpoint", help="S3 endpoint (MinIO, Ceph, ...); default: $AWS_ENDPOINT_URL")


def run(args: argparse.Namespace) -> int:
    from synthrec.cli.status import location_uri
    from synthrec.report import ReportError, build_report
    from synthrec.storage import StorageError

    try:
        where = build_report(location_uri(args.uri), out=args.out, endpoint=args.endpoint)
    except (ReportError, StorageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"report: {where}")
    return 0
