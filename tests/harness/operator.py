"""The harness of the operator tests: the synthrec operator in-process (Kopf) against the RealisticEmulator,
with the FakeKubelet running every Job the operator creates, and helpers to write resources and wait.

Used by tests/integration/test_operator_*.py, tests/e2e/test_operator_e2e.py and bench/operator_scale.py;
its fixture (``k8s_op``) is registered through the tests.harness plugin.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import kubernetes_validate
import pytest
import pytest_asyncio
import yaml

from synthrec.contract.summaries import (
    FailureSummary,
    FilterSummary,
    GenerateSummary,
    PromptsSummary,
    ReduceSummary,
    Summary,
    TrainSummary,
    summary_line,
)
from synthrec.operator.observed import ANNOTATION_SHARDS
from synthrec.operator.reconciler import Reconciler
from synthrec.operator.settings import OperatorConfig
from synthrec.plan import parse_ranges
from tests.harness.k8s import running_operator, serving, wait_for
from tests.k8s.emulator import ApiCall, RealisticEmulator, _rbac_verb
from tests.k8s.kubelet import FakeKubelet
from tests.k8s.runners import FakeRunner, Runner

ROOT = Path(__file__).resolve().parents[2]
DATASETS = "synthrec.io/v1alpha1/syntheticdatasets"
EXPERIMENTS = "synthrec.io/v1alpha1/recognitionexperiments"
JOBS = "batch/v1/jobs"
CONFIGMAPS = "v1/configmaps"
PODS = "v1/pods"
NS = "default"
K8S_VERSION = "1.33.0"
API_CALLS_FILE = ROOT / "tests" / "operator_api_calls.json"

# Fast loops for tests: patch status at most every 50 ms, resync every 0.3 s.
FAST = OperatorConfig(
    status_interval=0.05,
    metrics_port=0,
    liveness_port=0,
    resync_interval=0.3,
    min_reconcile_interval=0.02,
    fold_grace_seconds=0.5,
    request_timeout=10.0,
)


# Clients the operator uses: Kopf's aiohttp session and the kubernetes package (its writes).
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")


@attrs.define(kw_only=True)
class RecordingEmulator(RealisticEmulator):
    """The RealisticEmulator, also keeping what the operator alone (by User-Agent) sent: the Jobs,
    ConfigMaps and Services it created (to validate them as sent) and when it made each call (for rates)."""

    created: list[dict[str, Any]] = attrs.field(factory=list, init=False)  # bodies the operator POSTed
    timeline: list[tuple[float, ApiCall]] = attrs.field(factory=list, init=False)  # (monotonic s, call)
    # What the server did, whoever asked: objects that came to exist (resource, name), every phase a custom
    # resource's status went through, and task ConfigMaps changed under a Job of theirs that still ran.
    creations: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter, init=False)
    phases: dict[str, list[str]] = attrs.field(factory=dict, init=False)
    replaced_under_job: list[str] = attrs.field(factory=list, init=False)

    @property
    def operator_calls(self) -> collections.Counter[ApiCall]:
        counts: collections.Counter[ApiCall] = collections.Counter()
        for agent in OPERATOR_AGENTS:
            counts.update(self.api_call_counts(agent))
        return counts

    async def _serve(self, request: Any) -> Any:
        if str(request.headers.get("User-Agent", "")).startswith(OPERATOR_AGENTS):
            call = ApiCall(
                _rbac_verb(request),
                request.resource.group or "",
                str(request.resource.plural),
                request.subresource or "",
                request.namespace,
            )
            self.timeline.append((time.monotonic(), call))
            if call.verb == "create" and call.resource in ("jobs", "configmaps", "services"):
                self.created.append(json.loads(request.body or b"{}"))
        return await super()._serve(request)

    def _commit(self, key: Any, new: dict[str, Any], old: dict[str, Any] | None, event_type: str) -> None:
        resource, namespace, name = key
        plural = str(resource.plural)
        if event_type == "ADDED":
            self.creations[(plural, name)] += 1
        if resource.group == "synthrec.io" and event_type != "DELETED":
            phase = (new.get("status") or {}).get("phase")
            seen = self.phases.setdefault(f"{plural}/{name}", [])
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
        if plural == "configmaps" and event_type in ("MODIFIED", "DELETED"):
            job = self.get_object(JOBS, name, namespace)
            if job is not None and not job["metadata"].get("deletionTimestamp") and not _finished(job):
                self.replaced_under_job.append(f"{event_type} {name}")
        super()._commit(key, new, old, event_type)


def _finished(job: dict[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


@pytest_asyncio.fixture
async def k8s_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RecordingEmulator]:
    """Like the ``k8s`` fixture, with a RecordingEmulator (and a short request log for long runs)."""
    async with serving(RecordingEmulator(keep_requests=200), tmp_path, monkeypatch) as emulator:
        yield emulator


def declare_crds(k8s: RealisticEmulator) -> None:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        k8s.declare_crd_manifest(yaml.safe_load(path.read_text()))


def shard_of(job: dict[str, Any], index: int | None) -> int:
    """The shard id a completion index of one of our Jobs produces (the synthrec.io/shards annotation)."""
    shards = (job["metadata"].get("annotations") or {}).get(ANNOTATION_SHARDS)
    ordered = sorted(parse_ranges(shards)) if shards else None
    index = index or 0
    return ordered[index] if ordered is not None else index


def stage_of(job: dict[str, Any]) -> str:
    return str(job["metadata"]["labels"]["synthrec.io/stage"])


def summary(model: Summary) -> str:
    """A worker's termination message: its typed summary as synthrec.contract.summary_line writes it."""
    return summary_line(model)


def failure(stage: str, message: str, *, error: str = "retryable", shard: int | None = None) -> str:
    """The termination message of a failed worker."""
    return summary_line(FailureSummary(stage=stage, shard=shard, error=error, message=message))  # type: ignore[arg-type]


def fake_worker(
    images_per_shard: int = 10,
    passed_per_shard: int = 8,
    kept: int = 20,
    top1: Callable[[dict[str, Any]], float] | None = None,
) -> Callable[[dict[str, Any], int | None, int], tuple[int, str]]:
    """A FakeRunner function that behaves like successful workers of every stage; its reduce reports the
    images its generate and filter shards of the same resource reported, as the real one counts them."""
    totals: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def run(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        stage, shard = stage_of(job), shard_of(job, index)
        seen = totals[job["metadata"]["labels"]["synthrec.io/resource"]]
        if stage == "generate":
            seen["generated"] += images_per_shard
            return 0, summary(GenerateSummary(shard=shard, images=images_per_shard))
        if stage == "filter":
            seen["passed"] += passed_per_shard
            return 0, summary(FilterSummary(shard=shard, images=images_per_shard))
        if stage == "reduce":
            return 0, summary(
                ReduceSummary(
                    shard=0,
                    generated=seen["generated"],
                    passed=seen["passed"],
                    kept=kept,
                    rejected=99,
                    manifest="s3://bucket/ds/manifest.json",
                    digest="sha256:" + "ab" * 32,
                )
            )
        if stage == "train":
            run_name = job["metadata"]["labels"]["synthrec.io/run"]
            value = top1(job) if top1 else 0.5
            return 0, summary(TrainSummary(run=run_name, top1=value, zero_shot_top1=0.25))
        return 0, summary(PromptsSummary(shard=shard, prompts=12, classes=4, images=12 * images_per_shard))

    return run


def dataset_body(name: str = "ds", shards: int = 4, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "labels": {"preset": "tiny"},
            "generator": {"model": "file:///models/sd"},
            "filter": {"clip": {"model": "file:///models/clip"}},
            "sharding": {"shards": shards, "parallelism": shards, "retriesPerShard": 1},
            "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
            "output": {"uri": f"s3://bucket/{name}/"},
        },
    }
    _merge(body["spec"], spec)
    return body


def experiment_body(name: str = "exp", dataset: str | None = "ds", **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "RecognitionExperiment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "labels": {"preset": "tiny"},
            "backbone": {"model": "file:///models/clip"},
            "data": {
                "synthetic": [{"datasetRef": dataset}] if dataset else [],
                "realTrain": {"uri": "s3://bucket/real/train/"},
                "test": {"uri": "s3://bucket/real/test/"},
            },
            "matrix": {"shots": [0, 1], "seeds": [1, 2]},
            "execution": {"parallelism": 2},
            "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
            "output": {"uri": f"s3://bucket/{name}/"},
        },
    }
    _merge(body["spec"], spec)
    return body


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


class StageRunner:
    """Real workers (``python -m synthrec.workers``, subprocesses) for the stages in ``real``, instant fake
    ones for the others: a pipeline that writes real artifacts where a test needs them, fast elsewhere."""

    def __init__(self, real: set[str], fake: Any, subprocess: Runner) -> None:
        self.real, self.fake, self.subprocess = real, FakeRunner(fake), subprocess

    async def start(self, launch: Any) -> Any:
        stage = (launch.job["metadata"].get("labels") or {}).get("synthrec.io/stage")
        return await (self.subprocess if stage in self.real else self.fake).start(launch)


class ManualClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    k8s: RealisticEmulator
    kubelet: FakeKubelet
    reconciler: Reconciler

    def obj(self, resource: str, name: str) -> dict[str, Any] | None:
        return self.k8s.get_object(resource, name, NS)

    def status(self, resource: str, name: str) -> dict[str, Any]:
        return (self.obj(resource, name) or {}).get("status") or {}

    def condition(self, resource: str, name: str, ctype: str) -> dict[str, Any] | None:
        for c in self.status(resource, name).get("conditions") or []:
            if c["type"] == ctype:
                return c
        return None

    def jobs(self, resource_name: str | None = None) -> list[dict[str, Any]]:
        selector = f"synthrec.io/resource={resource_name}" if resource_name else None
        return self.k8s.list_objects(JOBS, NS, label_selector=selector)

    def job_names(self, resource_name: str | None = None) -> list[str]:
        return [j["metadata"]["name"] for j in self.jobs(resource_name)]

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = DATASETS if body["kind"] == "SyntheticDataset" else EXPERIMENTS
        return await self.k8s.api.create(resource, body, NS)

    async def wait_phase(self, resource: str, name: str, phase: str, timeout: float = 20.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(resource, name)
            if status.get("phase") in ("Failed", "Succeeded") and status.get("phase") != phase:
                raise AssertionError(f"{name} ended {status.get('phase')}: {status.get('conditions')}")
            return status if status.get("phase") == phase else None

        try:
            return await wait_for(reached, timeout, message=f"{name} phase {phase}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nstatus: {json.dumps(self.status(resource, name), indent=1)}"
            ) from None

    async def wait_condition(
        self, resource: str, name: str, ctype: str, status: str = "True", timeout: float = 20.0
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            c = self.condition(resource, name, ctype)
            return c if c is not None and c["status"] == status else None

        return await wait_for(reached, timeout, message=f"{name} condition {ctype}={status}")

    async def settle(self, resource: str, name: str, passes: int = 3) -> None:
        """Wait until the operator has reconciled the resource ``passes`` more times, each pass seeing
        everything that happened before: what has not happened by then is not going to."""
        kind = "SyntheticDataset" if resource == DATASETS else "RecognitionExperiment"
        key = (NS, kind, name)
        target = self.reconciler.passes[key] + passes
        await wait_for(
            lambda: self.reconciler.passes[key] >= target, 20, message=f"{passes} reconcile passes of {name}"
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.k8s.list_objects("v1/events", NS)
            if (e.get("involvedObject") or {}).get("name") == name
        ]

    def created(self, kind: str, name: str) -> dict[str, Any]:
        """The body the operator POSTed for a Job or ConfigMap (also after it expired)."""
        for body in getattr(self.k8s, "created", []):
            if body.get("kind") == kind and body["metadata"]["name"] == name:
                return body
        raise KeyError(f"the operator created no {kind} {name}")

    def validate_children(self) -> int:
        """Every Job and ConfigMap the operator created (as it sent them) passes kubernetes-validate strict;
        returns how many there were."""
        created = getattr(self.k8s, "created", [])
        for body in created:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        return len(created)


@contextlib.asynccontextmanager
async def operator_harness(
    k8s: RealisticEmulator,
    runner: Runner,
    workdir: Path,
    config: OperatorConfig = FAST,
    *,
    kubelet_options: dict[str, Any] | None = None,
    start_operator: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Harness]:
    """CRDs declared, a FakeKubelet with ``runner`` and the operator running; yields a Harness.

    ``clock`` is the operator's monotonic clock (status throttling, pacing): a ManualClock makes time a
    thing the test moves."""
    declare_crds(k8s)
    async with FakeKubelet(
        k8s.url, runner, workdir=workdir / "kubelet", **(kubelet_options or {})
    ) as kubelet:
        if not start_operator:
            yield Harness(k8s, kubelet, Reconciler(config))
            return
        async with running_reconciler(config, clock) as reconciler:
            yield Harness(k8s, kubelet, reconciler)
        kubelet.check()


@contextlib.asynccontextmanager
async def running_reconciler(
    config: OperatorConfig = FAST, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[Reconciler]:
    """The synthrec operator (all its Kopf handlers) running in this loop until the block ends."""
    from synthrec.operator.handlers import post_event, register

    holder: list[Reconciler] = []

    def setup(registry: Any) -> None:
        reconciler = Reconciler(config, post_event=post_event, clock=clock)
        holder.append(register(registry, config, login=False, reconciler=reconciler))

    async with running_operator(setup):
        yield holder[0]


@contextlib.asynccontextmanager
async def operator_in_thread(config: OperatorConfig = FAST) -> AsyncIterator[Reconciler]:
    """The operator in its own thread and event loop, as a separate process would be: cancelling it (a
    crash) kills only its own tasks. (Kopf cancels every task of its loop created after it started, which
    in-process would include the fake kubelet's pods.) Logs in through $KUBECONFIG."""
    import kopf

    from synthrec.operator.handlers import register

    ready = threading.Event()
    started: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        registry = kopf.OperatorRegistry()
        started["reconciler"] = register(registry, config)
        settings = kopf.OperatorSettings()
        settings.watching.reconnect_backoff = 0.1
        task = loop.create_task(
            kopf.operator(
                registry=registry, settings=settings, standalone=True, clusterwide=True, ready_flag=ready
            )
        )
        started["loop"], started["task"] = loop, task
        with contextlib.suppress(asyncio.CancelledError, Exception):
            loop.run_until_complete(task)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=main, name="operator-in-thread", daemon=True)
    thread.start()
    if not await asyncio.to_thread(ready.wait, 15):
        raise TimeoutError("the operator thread did not become ready")
    try:
        yield started["reconciler"]
    finally:
        started["loop"].call_soon_threadsafe(started["task"].cancel)
        await asyncio.to_thread(thread.join, 15)


@dataclass
class OperatorProcess:
    """``synthrec operator`` (operator/process.py: the Lease gate around Kopf) in a thread of its own."""

    identity: str
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    stop_event: asyncio.Event
    reconcilers: list[Reconciler]
    exit_codes: list[int]

    @property
    def leading(self) -> bool:
        return bool(self.reconcilers) and self.thread.is_alive()

    def stop(self) -> None:
        """SIGTERM, in effect: stop Kopf and release the Lease."""
        self.loop.call_soon_threadsafe(self.stop_event.set)

    async def stopped(self, timeout: float = 30) -> int:
        await asyncio.to_thread(self.thread.join, timeout)
        assert not self.thread.is_alive(), f"operator {self.identity} did not stop"
        return self.exit_codes[0]


@contextlib.asynccontextmanager
async def operator_processes(
    config: OperatorConfig, identities: list[str]
) -> AsyncIterator[list[OperatorProcess]]:
    """Several operator processes, each in its own thread and loop (as separate pods would be), each with
    its own identity for the Lease; all stopped at the end."""
    import kopf

    from synthrec.operator.kube import KubeApi
    from synthrec.operator.leader import LeaderElector
    from synthrec.operator.process import lease_settings, run_operator

    processes: list[OperatorProcess] = []
    for identity in identities:
        started = threading.Event()
        holder: dict[str, Any] = {}
        reconcilers: list[Reconciler] = []
        codes: list[int] = []

        def main(
            identity: str = identity,
            started: threading.Event = started,
            holder: dict = holder,
            reconcilers: list[Reconciler] = reconcilers,
            codes: list[int] = codes,
        ) -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            stop = asyncio.Event()
            holder["loop"], holder["stop"] = loop, stop
            settings = kopf.OperatorSettings()
            settings.watching.reconnect_backoff = 0.1
            lease_api = KubeApi(request_timeout=config.request_timeout, workers=2)
            elector = LeaderElector(lease_settings(config, identity), lease_api)
            started.set()
            try:
                codes.append(
                    loop.run_until_complete(
                        run_operator(
                            config,
                            elector=elector,
                            stop=stop,
                            settings=settings,
                            on_reconciler=reconcilers.append,
                        )
                    )
                )
            finally:
                lease_api.close()
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=main, name=f"operator-{identity}", daemon=True)
        thread.start()
        await asyncio.to_thread(started.wait, 15)
        processes.append(
            OperatorProcess(identity, thread, holder["loop"], holder["stop"], reconcilers, codes)
        )
    try:
        yield processes
    finally:
        for process in processes:
            if process.thread.is_alive():
                process.stop()
        for process in processes:
            await asyncio.to_thread(process.thread.join, 30)


def record_api_calls(k8s: RecordingEmulator, scenario: str) -> set[tuple[str, str, str, str, str]]:
    """Check the operator's API calls of this test against tests/operator_api_calls.json (the reference the
    chart's RBAC is compared with). With SYNTHREC_UPDATE_API_CALLS=1 the file is updated instead."""
    calls = {
        (c.verb, c.api_group, c.resource, c.subresource, "namespaced" if c.namespace else "cluster")
        for c in k8s.operator_calls
    }
    known = json.loads(API_CALLS_FILE.read_text()) if API_CALLS_FILE.exists() else {"calls": []}
    merged: dict[tuple[str, str, str, str, str], set[str]] = {
        (e["verb"], e["apiGroup"], e["resource"], e["subresource"], e["scope"]): set(e["scenarios"])
        for e in known["calls"]
    }
    if os.environ.get("SYNTHREC_UPDATE_API_CALLS") != "1":
        unknown = calls - set(merged)
        assert not unknown, (
            f"the operator made API calls missing from {API_CALLS_FILE.name} (and so maybe from the chart's "
            f"RBAC): {sorted(unknown)}; rerun with SYNTHREC_UPDATE_API_CALLS=1 to record them"
        )
        return calls
    for call in calls:
        merged.setdefault(call, set()).add(scenario)
    document = {
        "description": "Kubernetes API calls the synthrec operator makes (recorded by User-Agent, Kopf and "
        "the kubernetes client, in tests/integration/test_operator_*.py with SYNTHREC_UPDATE_API_CALLS=1). "
        "The Helm chart's RBAC must allow each; 'cluster' scope means a request without a namespace "
        "(cluster-wide watches), which a namespaced install replaces by the same call per namespace. "
        "Discovery (GET /api, /apis, /apis/<group>/<version>) is not listed.",
        "calls": [
            {
                "verb": v,
                "apiGroup": g,
                "resource": r,
                "subresource": sub,
                "scope": scope,
                "scenarios": sorted(sc),
            }
            for (v, g, r, sub, scope), sc in sorted(merged.items())
        ],
    }
    API_CALLS_FILE.write_text(json.dumps(document, indent=1) + "\n")
    return calls
