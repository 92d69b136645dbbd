"""synthrec validate: check resources against the generated schema, the CEL rules and the models."""

from __future__ import annotations

import argparse
import sys

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "validate",
        help="check SyntheticDataset / RecognitionExperiment files",
        description="Check every resource in the files as the cluster would: the CRD schema (types, ranges, "
        "unknown fields), the CEL rules and synthrec's own checks. Each problem is printed with its field "
        "path. Exit status 1 when anything is wrong.",
        examples=[
            "synthrec validate examples/eurosat-zero-shot.yaml",
            "synthrec validate examples/*.yaml",
            "synthrec validate new.yaml --old applied.yaml   # also the update rules (immutable fields)",
        ],
        func=run,
    )
    p.add_argument("files", nargs="+", help="YAML files with one or more resources")
    p.add_argument("--old", help="the currently applied version, to check update (transition) rules")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")


def run(args: argparse.Namespace) -> int:
    from synthrec.api.validation import FileError, validate_file

    failed = False
    for path in args.files:
        try:
            report = validate_file(path, args.old)
        except FileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        for doc, problems in report.results:
            where = f"{path}: document {doc.index} ({doc.label})"
            if problems:
                failed = True
                for problem in problems:
                    print(f"{where}: {problem}", file=sys.stderr)
            elif not args.quiet:
                print(f"{where}: valid")
    return 1 if failed else 0
