"""synthrec status: what is done and what is missing, read from the artifacts alone."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "status",
        help="show what is done and what is missing in a storage or resource output",
        description="Read the artifacts at URI and print, per SyntheticDataset stage, the committed and "
        "expected shards and the missing shard ranges, whether manifest.json is there, and per "
        "RecognitionExperiment the runs done and missing with their top-1. URI is a `synthrec run` storage "
        "(datasets/ and experiments/ below it) or one resource's output (with its spec.json). Nothing "
        "else is needed: no file, no cluster. Exit status 0 when everything is complete, 1 otherwise.",
        examples=[
            "synthrec status synthrec-out/",
            "synthrec status file:///data/synthrec/datasets/eurosat-le-cf/",
            "synthrec status s3://bucket/synthrec/ --json",
        ],
        func=run,
    )
    p.add_argument("uri", help="storage root or resource output: file:///..., a local path, or s3://...")
    p.add_argument("--endpoint", help="S3 endpoint (MinIO, Ceph, ...); default: $AWS_ENDPOINT_URL")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def run(args: argparse.Namespace) -> int:
    from synthrec.contract.artifacts import ArtifactError, find_resources
    from synthrec.storage import StorageError

    try:
        found = find_resources(location_uri(args.uri), endpoint=args.endpoint)
        states = [
            res.dataset_state() if res.kind == "SyntheticDataset" else res.experiment_state() for res in found
        ]
    except (ArtifactError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    docs = [describe(state) for state in states]
    complete = all(doc["complete"] for doc in docs)
    if args.json:
        print(json.dumps({"complete": complete, "resources": docs}, indent=1))
    else:
        for doc in docs:
            print_text(doc)
        print("complete" if complete else "INCOMPLETE: run the same `synthrec run` again to continue")
    return 0 if complete else 1


def location_uri(value: str) -> str:
    """A URI for a command-line location: plain paths become file:// URIs."""
    if "://" in value:
        return value
    from pathlib import Path

    return Path(value).resolve().as_uri()


def describe(state: Any) -> dict[str, Any]:
    """A JSON-able description of a DatasetState or ExperimentState."""
    from synthrec import plan
    from synthrec.contract import artifacts

    if isinstance(state, artifacts.DatasetState):
        stages = []
        for s in state.stages:
            stages.append(
                {
                    "stage": s.stage,
                    "enabled": s.enabled,
                    "expected": s.shards if s.enabled else 0,
                    "committed": len(s.committed) if s.enabled else 0,
                    "missing": plan.format_ranges(s.missing),
                    "conflicts": plan.format_ranges(s.foreign),
                }
            )
        counts = state.manifest.counts.model_dump() if state.manifest else {}
        return {
            "kind": "SyntheticDataset",
            "name": state.name,
            "uri": state.uri,
            "stages": stages,
            "manifest": state.manifest is not None,
            "manifest_digest": state.manifest_digest,
            "images": {k: counts.get(k) for k in ("generated", "passed", "kept", "rejected")},
            "complete": state.complete,
        }
    if state.spec.method.pretrain is not None:
        rows = artifacts.pretrain_rows(state)
        return {
            "kind": "RecognitionExperiment",
            "method": "pretrain",
            "name": state.name,
            "uri": state.uri,
            "pretraining": rows,
            "done": sum(r.done for r in state.pretraining),
            "expected": len(state.pretraining),
            "missing": [r.name for r in state.pretraining if not r.done],
            "complete": state.complete,
        }
    runs = [
        {
            "name": r.name,
            "shots": r.shots,
            "seed": r.seed,
            "variant": r.variant,
            "method": r.method,
            "done": r.done,
            "top1": r.top1,
            "top1_last": r.top1_last,
            "top1_best_validation": r.top1_best_validation,
            "zero_shot_top1": r.zero_shot_top1,
        }
        for r in state.runs
    ]
    return {
        "kind": "RecognitionExperiment",
        "name": state.name,
        "uri": state.uri,
        "runs": runs,
        "done": sum(r.done for r in state.runs),
        "expected": len(state.runs),
        "missing": [r.name for r in state.missing],
        "complete": state.complete,
    }


def print_text(doc: dict[str, Any]) -> None:
    mark = "complete" if doc["complete"] else "incomplete"
    print(f"{doc['kind']} {doc['name']}  [{mark}]  {doc['uri']}")
    if doc["kind"] == "SyntheticDataset":
        for s in doc["stages"]:
            if not s["enabled"]:
                print(f"  {s['stage']:9s} disabled")
                continue
            line = f"  {s['stage']:9s} {s['committed']}/{s['expected']} committed"
            if s["missing"]:
                line += f", missing shards {s['missing']}"
            if s["conflicts"]:
                line += f", CONFLICT: shards {s['conflicts']} committed by another spec"
            print(line)
        if doc["manifest"]:
            images = doc["images"]
            print(
                f"  manifest.json present: {images['generated']} generated, {images['kept']} kept "
                f"(sha256 {str(doc['manifest_digest'])[:12]})"
            )
        else:
            print("  manifest.json missing")
        return
    print(f"  runs {doc['done']}/{doc['expected']} done")
    if doc.get("method") == "pretrain":
        for r in doc["pretraining"]:
            if r["state"] != "Succeeded":
                print(f"  {r['name']:32s} missing ({r['stage']})")
                continue
            numbers = [
                f"{label} {r[key]:.1f}%"
                for key, label in (
                    ("classification_top1", "top-1"),
                    ("linear_probe_top1", "linear probe"),
                    ("ap50", "AP50 (VOC07)"),
                )
                if r[key] is not None
            ]
            print(f"  {r['name']:32s} done     {'  '.join(numbers) or 'pre-trained'}")
        return
    for r in doc["runs"]:
        if r["done"]:
            top1 = "-" if r["top1"] is None else f"{r['top1']:.1f}%"
            zs = "-" if r["zero_shot_top1"] is None else f"{r['zero_shot_top1']:.1f}%"
            line = f"  {r['name']:32s} done     top-1 {top1:>7s}  zero-shot {zs:>7s}"
            if r["top1_best_validation"] is not None:  # both selections, side by side
                line += (
                    f"  (last epoch {r['top1_last']:.1f}%, best validation {r['top1_best_validation']:.1f}%)"
                )
            print(line)
        else:
            print(f"  {r['name']:32s} missing")
