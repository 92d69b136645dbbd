"""synthrec validate: check resources against the generated schema, the CEL rules and the models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "validate",
        help="check SyntheticDataset / RecognitionExperiment files",
        description="Check every resource in the files (and in the *.yaml files of folders) as the "
        "cluster would: the CRD schema (types, ranges, unknown fields), the CEL rules and synthrec's own "
        "checks. Each problem is printed with its field path. Exit status 1 when anything is wrong.",
        examples=[
            "synthrec validate examples/eurosat-zero-shot.yaml",
            "synthrec validate examples/*           # folders: every *.yaml file in them",
            "synthrec validate new.yaml --old applied.yaml   # also the update rules (immutable fields)",
        ],
        func=run,
    )
    p.add_argument(
        "files", nargs="+", help="YAML files with one or more resources, or folders of them (*.yaml, *.yml)"
    )
    p.add_argument("--old", help="the currently applied version, to check update (transition) rules")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")


def run(args: argparse.Namespace) -> int:
    from synthrec.api.validation import FileError, validate_file

    failed = False
    for path in _expand(args.files):
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


def _expand(paths: list[str]) -> list[str]:
    """Files as given; a folder as its *.yaml / *.yml files, recursively and sorted (``examples/*`` then
    covers a generated sub-folder such as examples/table1/)."""
    out: list[str] = []
    for path in paths:
        folder = Path(path)
        if folder.is_dir():
            found = sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
            out.extend(str(p) for p in found)
        else:
            out.append(path)
    return out
