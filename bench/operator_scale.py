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
    python bench/operator_scale.py --shards 10000 --parallelism 1000     # constant objects at 10,000 shards
    python bench/operator_scale.py --steady 10 --time-scale 20           # pods of 10 emulated minutes

Without --steady every pod finishes at once, so "patches per minute" measures the run's length, not a
rate the API server sees for hours; --steady makes every pod run for minutes of emulated time with the
operator's clocks (status interval, resync, reconcile spacing) sped up by the same factor, and reports
status patches per resource per emulated minute over the shard stages (ceiling: 60 / status interval).

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


def slow_worker(pod_seconds: float) -> Any:
    """fake_worker's answers, after ``pod_seconds`` of (real) running: pods that stay up for a while."""
    answer = fake_worker(images_per_shard=10)

    async def run(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        await asyncio.sleep(pod_seconds)
        return answer(job, index, attempt)

    return run


async def run(
    shards: int,
    parallelism: int,
    status_interval: float,
    timeout: float,
    *,
    time_scale: float = 1.0,
    pod_minutes: float = 0.0,
) -> dict[str, Any]:
    """``pod_minutes`` > 0: the steady-state mode. Every pod runs that many minutes of emulated time, and
    the operator's clocks (status interval, resync, reconcile spacing, fold grace) run ``time_scale``
    times faster than real time, so hours of a stage take minutes; rates are reported per emulated
    minute, over the window in which the stages' pods run (shard stages only: prompts and reduce are
    single pods)."""
    workdir = Path(tempfile.mkdtemp(prefix="synthrec-operator-scale-"))
    emulator = RecordingEmulator(keep_requests=50, keep_history=2)
    async with emulator, kmock.Server(emulator):
        await emulator.api.create("v1/namespaces", {"metadata": {"name": NS}})
        os.environ["KUBECONFIG"] = str(
            write_kubeconfig(workdir / "kubeconfig", str(emulator.url).rstrip("/"))
        )
        declare_crds(emulator)
        base = OperatorConfig()
        config = OperatorConfig(
            status_interval=status_interval / time_scale,
            resync_interval=base.resync_interval / time_scale,
            min_reconcile_interval=base.min_reconcile_interval / time_scale,
            fold_grace_seconds=base.fold_grace_seconds / time_scale,
            metrics_port=0,
            liveness_port=0,
        )
        pod_seconds = pod_minutes * 60 / time_scale
        kubelet = FakeKubelet(
            emulator.url,
            FakeRunner(slow_worker(pod_seconds) if pod_seconds else fake_worker(images_per_shard=10)),
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
            stage_windows: dict[str, list[float]] = {}
            status: dict[str, Any] = {}
            while time.monotonic() - started < timeout:
                status = (emulator.get_object(DATASETS, "scale", NS) or {}).get("status") or {}
                stage = (status.get("progress") or {}).get("stage")
                if stage and stage not in phases:
                    phases[stage] = round(time.monotonic() - started, 1)
                if stage:
                    now = time.monotonic()  # the clock of the emulator's timeline
                    stage_windows.setdefault(stage, [now, now])[1] = now
                if status.get("phase") in ("Succeeded", "Failed"):
                    break
                await asyncio.sleep(0.25)
            elapsed = time.monotonic() - started
            durations = list(reconciler.reconcile_durations)
        emulator.close_watches()
    completed = status.get("phase") == "Succeeded"
    if not completed:  # what it did so far is still worth reporting (a slow host, a long run)
        print(f"the dataset did not complete in {timeout} s: {status.get('message')}", file=sys.stderr)

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
    steady = None
    if pod_minutes:
        # the shard stages' windows, in the emulator's clock: pods running, status patched as they finish
        shard_windows = [w for name, w in stage_windows.items() if name in ("generate", "filter")]
        inside = [t for t in patch_times if any(a <= t <= b for a, b in shard_windows)]
        real_s = sum(b - a for a, b in shard_windows)
        emulated_minutes = real_s * time_scale / 60
        steady = {
            "time_scale": time_scale,
            "pod_minutes": pod_minutes,
            "emulated_minutes_of_shard_stages": round(emulated_minutes, 1),
            "status_patches_in_window": len(inside),
            # one resource here: per resource = in total
            "status_patches_per_resource_per_emulated_minute": (
                round(len(inside) / emulated_minutes, 2) if emulated_minutes else None
            ),
            "ceiling_per_minute": round(60 / status_interval, 2),
            # the throttle keeps the operator's own clock; the gaps the API server sees add request jitter,
            # which the time scale multiplies (0.1 s real is 2 s emulated at 20x)
            "status_patch_min_gap_emulated_s": round(min(gaps) * time_scale, 2) if gaps else None,
            "status_patch_p5_gap_emulated_s": round(percentile(gaps, 0.05) * time_scale, 2) if gaps else None,
        }
    return {
        "shards": shards,
        "parallelism": parallelism,
        "completed": completed,
        "progress": status.get("message"),
        "seconds": round(elapsed, 1),
        "stage_started_at_s": phases,
        "images_generated": (status.get("images") or {}).get("generated"),
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
        **({"steady_state": steady} if steady else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=250)
    parser.add_argument("--status-interval", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--steady",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="steady-state mode: every pod runs MINUTES of emulated time (0: pods finish at once)",
    )
    parser.add_argument(
        "--time-scale", type=float, default=20.0, help="steady-state mode: emulated seconds per real second"
    )
    args = parser.parse_args()
    scale = args.time_scale if args.steady else 1.0
    result = asyncio.run(
        run(
            args.shards,
            args.parallelism,
            args.status_interval,
            args.timeout,
            time_scale=scale,
            pod_minutes=args.steady,
        )
    )
    width = max(len(k) for k in result)
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<40} {v}")
        else:
            print(f"{key:<{width}}  {value}")
    ok_objects = all(n == 1 for n in result["objects_created_per_stage"].values())
    steady = result.get("steady_state")
    if steady:  # over a long run: the rate, as the API server's load sees it
        rate = steady["status_patches_per_resource_per_emulated_minute"]
        ok_patches = rate is not None and rate <= steady["ceiling_per_minute"]
    else:
        min_gap = result["status_patch_min_gap_s"]
        ok_patches = min_gap is None or min_gap >= 0.95 * args.status_interval
    print(
        f"targets: constant objects per stage {'OK' if ok_objects else 'MISSED'}; "
        f"at most one status patch per {args.status_interval:g} s {'OK' if ok_patches else 'MISSED'}"
    )
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
