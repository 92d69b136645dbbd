"""The operator at scale: one 1000-shard SyntheticDataset against the API emulator, with the fake kubelet
running every pod instantly (a FakeRunner that answers like successful workers).

Prints, for the operator alone (requests told apart by User-Agent: Kopf and the kubernetes client):

- API requests per shard, by verb and resource;
- objects created per stage (target: a constant number, one Job and one ConfigMap per stage attempt);
- status patches per minute per resource and the shortest gap between two (target: at most one every
  SYNTHREC_STATUS_INTERVAL = 5 s);
- reconcile latency p50/p95 (one pass: plan from the in-memory indexes, apply, maybe patch status).

The operator runs with its production defaults (status interval 5 s, resync 30 s) in its own thread and
event loop, as it would in its own process.

    python bench/operator_scale.py                       # 1000 shards, parallelism 250
    python bench/operator_scale.py --shards 200 --parallelism 50 --status-interval 1

Prints a table and one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kmock  # noqa: E402

from synthrec.operator.settings import OperatorConfig  # noqa: E402
from tests.harness.k8s import write_kubeconfig  # noqa: E402
from tests.harness.operator import (  # noqa: E402
    DATASETS,
    NS,
    RecordingEmulator,
    dataset_body,
    declare_crds,
    fake_worker,
    operator_in_thread,
)
from tests.k8s.kubelet import FakeKubelet  # noqa: E402
from tests.k8s.runners import FakeRunner  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(shards: int, parallelism: int, status_interval: float, timeout: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="synthrec-operator-scale-"))
    emulator = RecordingEmulator(keep_requests=50, keep_history=2)
    async with emulator, kmock.Server(emulator):
        await emulator.api.create("v1/namespaces", {"metadata": {"name": NS}})
        os.environ["KUBECONFIG"] = str(
            write_kubeconfig(workdir / "kubeconfig", str(emulator.url).rstrip("/"))
        )
        declare_crds(emulator)
        config = OperatorConfig(status_interval=status_interval, metrics_port=0, liveness_port=0)
        kubelet = FakeKubelet(
            emulator.url,
            FakeRunner(fake_worker(images_per_shard=10)),
            workdir=workdir / "kubelet",
            interval=0.2,
            report_running=False,
            tracking_finalizer=False,
        )
        async with kubelet, operator_in_thread(config) as reconciler:
            body = dataset_body(
                "scale", shards=shards, sharding={"shards": shards, "parallelism": parallelism}
            )
            started = time.monotonic()
            await emulator.api.create(DATASETS, body, NS)
            phases: dict[str, float] = {}
            status: dict[str, Any] = {}
            while time.monotonic() - started < timeout:
                status = (emulator.get_object(DATASETS, "scale", NS) or {}).get("status") or {}
                stage = (status.get("progress") or {}).get("stage")
                if stage and stage not in phases:
                    phases[stage] = round(time.monotonic() - started, 1)
                if status.get("phase") in ("Succeeded", "Failed"):
                    break
                await asyncio.sleep(0.25)
            elapsed = time.monotonic() - started
            durations = list(reconciler.reconcile_durations)
        emulator.close_watches()
    if status.get("phase") != "Succeeded":
        raise SystemExit(f"the dataset did not complete in {timeout} s: {json.dumps(status)[:2000]}")

    calls = emulator.operator_calls
    total = sum(calls.values())
    by_kind = collections.Counter()
    for call, count in calls.items():
        by_kind[f"{call.verb} {call.resource}{'/' + call.subresource if call.subresource else ''}"] += count
    created = collections.Counter(
        (body["metadata"]["labels"]["synthrec.io/stage"], body["kind"]) for body in emulator.created
    )
    patch_times = [
        t for t, call in emulator.timeline if call.verb == "patch" and call.subresource == "status"
    ]
    gaps = [b - a for a, b in itertools.pairwise(patch_times)]
    return {
        "shards": shards,
        "parallelism": parallelism,
        "seconds": round(elapsed, 1),
        "stage_started_at_s": phases,
        "images_generated": status["images"]["generated"],
        "api_requests": total,
        "api_requests_per_shard": round(total / shards, 3),
        "api_requests_by_call": dict(by_kind.most_common()),
        "objects_created_per_stage": {f"{s} {k}": n for (s, k), n in sorted(created.items())},
        "status_patches": len(patch_times),
        "status_patches_per_minute": round(len(patch_times) / (elapsed / 60), 2),
        "status_patch_min_gap_s": round(min(gaps), 2) if gaps else None,
        "status_interval_s": status_interval,
        "reconciles": len(durations),
        "reconcile_p50_ms": round(1000 * percentile(durations, 0.50), 2),
        "reconcile_p95_ms": round(1000 * percentile(durations, 0.95), 2),
        "reconcile_mean_ms": round(1000 * statistics.fmean(durations), 2) if durations else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=250)
    parser.add_argument("--status-interval", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.shards, args.parallelism, args.status_interval, args.timeout))
    width = max(len(k) for k in result)
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<40} {v}")
        else:
            print(f"{key:<{width}}  {value}")
    ok_objects = all(n == 1 for n in result["objects_created_per_stage"].values())
    ok_patches = result["status_patch_min_gap_s"] is None or result["status_patch_min_gap_s"] >= (
        0.95 * args.status_interval
    )
    print(
        f"targets: constant objects per stage {'OK' if ok_objects else 'MISSED'}; "
        f"at most one status patch per {args.status_interval:g} s {'OK' if ok_patches else 'MISSED'}"
    )
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
