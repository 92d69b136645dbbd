"""synthrec plan: show what a file of resources would run, without running it."""

from __future__ import annotations

import argparse
import sys

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "plan",
        help="show the stages, shards and runs a file would execute",
        description="Validate the resources in a file and print the plan: each dataset's stages with their "
        "shard counts and spec hashes, and each experiment's runs (shots x seeds x variants). Nothing runs.",
        examples=["synthrec plan examples/quickstart.yaml", "synthrec plan examples/eurosat-few-shot.yaml"],
        func=run,
    )
    p.add_argument("file", help="YAML file with one or more resources")


def run(args: argparse.Namespace) -> int:
    from synthrec import api, plan
    from synthrec.api.validation import FileError, load_documents, validate_resource

    try:
        docs = load_documents(args.file)
    except FileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bad = False
    for doc in docs:
        problems = validate_resource(doc.body)
        if problems:
            bad = True
            for problem in problems:
                print(f"{args.file}: document {doc.index} ({doc.label}): {problem}", file=sys.stderr)
            continue
        res = api.parse_resource(doc.body)
        print(f"{res.kind}/{res.metadata.name} -> {res.spec.output.uri}")
        if isinstance(res, api.SyntheticDataset):
            for stage in plan.dataset_stages(res.spec):
                state = "" if stage.enabled else "  (disabled)"
                print(f"  {stage.stage:9s} shards={stage.shards:<5d} hash={stage.spec_hash[:12]}{state}")
        else:
            runs = plan.experiment_runs(res.spec)
            print(f"  {len(runs)} runs, up to {res.spec.execution.parallelism} at once")
            for r in runs:
                data = ", ".join(s.dataset_ref or s.uri or "" for s in r.synthetic) or "real only"
                lr = r.classifier_tuning.lr or 0.0
                print(f"  {r.name:28s} shots={r.shots:<3d} seed={r.seed:<3d} lr={lr:g}  synthetic: {data}")
    return 1 if bad else 0
