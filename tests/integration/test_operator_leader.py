"""One active operator: two replicas against one API server, the Lease that decides which one acts, status
writes conditional on the resourceVersion they were planned from, and task ConfigMaps left alone while
their Job exists."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kmock
import pytest

from synthrec.operator.kube import KubeApi
from synthrec.operator.leader import LeaderElector, LeaseSettings, micro_time
from synthrec.operator.observed import JobView, PodView, owner_key
from synthrec.operator.process import run_operator
from synthrec.operator.reconciler import Reconciler
from tests.harness.k8s import free_port, wait_for
from tests.harness.operator import (
    CONFIGMAPS,
    DATASETS,
    FAST,
    JOBS,
    NS,
    PODS,
    ManualClock,
    dataset_body,
    fake_worker,
    operator_harness,
    operator_processes,
    record_api_calls,
    shard_of,
    stage_of,
)
from tests.k8s.client import ApiError
from tests.k8s.runners import FakeRunner

LEASES = "coordination.k8s.io/v1/leases"
LEASE = "synthrec-operator"
# Short Lease times, so that a handover in a test takes a fraction of a second; the standby waits on the
# leader's release (a rolling update), never on the lease to expire.
LEADING = FAST.with_overrides(
    leader_election=True,
    lease_name=LEASE,
    lease_namespace=NS,
    lease_duration=20.0,
    lease_renew_deadline=15.0,
    lease_retry_period=0.1,
)
TERMINAL = ("Complete", "Failed")
PHASE_RANK = {"Pending": 0, "Queued": 1, "Running": 1, "Succeeded": 2, "Failed": 2}


class Gate:
    """A fake worker whose generate shards wait until ``release()``."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started: set[int] = set()
        self.ok = fake_worker(images_per_shard=10)

    async def __call__(self, job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        if stage_of(job) == "generate":
            self.started.add(shard_of(job, index))
            await self.open.wait()
        return self.ok(job, index, attempt)


def never_backwards(phases: list[str]) -> bool:
    ranks = [PHASE_RANK[p] for p in phases]
    return ranks == sorted(ranks)


async def test_two_operators_reconcile_a_dataset_with_one_job_per_attempt_and_no_step_back(
    k8s_op, tmp_path: Path
) -> None:
    gate = Gate()
    async with (
        operator_harness(k8s_op, FakeRunner(gate), tmp_path, start_operator=False) as h,
        operator_processes(LEADING, ["op-a", "op-b"]) as (a, b),
    ):
        leader = await wait_for(
            lambda: a if a.leading else (b if b.leading else None), 15, message="a leader"
        )
        standby = b if leader is a else a
        lease = k8s_op.get_object(LEASES, LEASE, NS)
        assert lease["spec"]["holderIdentity"].startswith(leader.identity)
        await h.create(dataset_body("ds", shards=4))
        await wait_for(lambda: gate.started == {0, 1, 2, 3}, 20, message="generate shards running")
        assert not standby.reconcilers  # the standby never started Kopf: it could not write anything

        # A rolling update: the leader is told to stop mid-run and hands the Lease over.
        leader.stop()
        assert await leader.stopped() == 0
        await wait_for(lambda: standby.leading, 15, message="the standby leads")
        assert k8s_op.get_object(LEASES, LEASE, NS)["spec"]["leaseTransitions"] >= 1
        gate.open.set()
        status = await h.wait_phase(DATASETS, "ds", "Succeeded", timeout=30)

    assert status["images"]["generated"] == 40
    jobs = {name: n for (plural, name), n in k8s_op.creations.items() if plural == "jobs"}
    assert jobs == {"ds-prompts-a1": 1, "ds-generate-a1": 1, "ds-filter-a1": 1, "ds-reduce-a1": 1}
    phases = k8s_op.phases["syntheticdatasets/ds"]
    assert phases[-1] == "Succeeded" and never_backwards(phases), phases
    assert not k8s_op.replaced_under_job
    assert [lease["metadata"]["name"] for lease in k8s_op.list_objects(LEASES, NS)] == [LEASE]
    record_api_calls(k8s_op, "leader-election")


async def test_a_replica_that_cannot_renew_its_lease_stops_writing_and_exits(k8s_op, tmp_path: Path) -> None:
    config = LEADING.with_overrides(lease_duration=3.0, lease_renew_deadline=1.0, lease_retry_period=0.05)
    async with (
        operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path, start_operator=False),
        operator_processes(config, ["op-a"]) as (a,),
    ):
        await wait_for(lambda: a.leading, 15, message="op-a leads")
        # The API server refuses the Lease updates from now on (a partition, a lost RBAC grant).
        k8s_op[kmock.method.PUT, k8s_op.resource(LEASES)] << 503
        assert await a.stopped() == 1
        assert a.reconcilers[0]._stopped  # every reconcile task was cancelled


async def test_a_standby_serves_its_liveness_endpoint_and_stops_on_request(k8s, lease_api) -> None:
    import aiohttp

    holder = elector(lease_api, "the-leader", ManualClock())
    assert await holder.try_acquire_or_renew()
    port = free_port()
    config = LEADING.with_overrides(liveness_port=port)
    stop = asyncio.Event()
    standby = LeaderElector(
        LeaseSettings(LEASE, NS, "standby", lease_duration=20, renew_deadline=15, retry_period=0.05),
        lease_api,
    )
    running = asyncio.create_task(run_operator(config, elector=standby, stop=stop, login=False))

    async def health() -> dict[str, Any] | None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            return await resp.json() if resp.status == 200 else None

    answer = await wait_for(health, 15, message="the standby's /healthz")
    assert answer == {"leader": False, "lease": f"{NS}/{LEASE}", "holder": "the-leader"}
    stop.set()
    assert await asyncio.wait_for(running, 30) == 0  # stopped while standing by: Kopf never started
    assert k8s.get_object(LEASES, LEASE, NS)["spec"]["holderIdentity"] == "the-leader"


# --------------------------------------------------------------------------------------- the Lease


class Racing:
    """A Lease API that lets both candidates read before either writes (the race optimistic
    concurrency decides)."""

    def __init__(self, api: KubeApi, barrier: asyncio.Barrier) -> None:
        self.api, self.barrier = api, barrier

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        lease = await self.api.read_lease(namespace, name)
        await self.barrier.wait()
        return lease

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return await self.api.create_lease(namespace, body)

    async def replace_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return await self.api.replace_lease(namespace, body)


@pytest.fixture
def lease_api(k8s) -> Any:
    api = KubeApi(request_timeout=10, workers=4)
    yield api
    api.close()


def elector(api: Any, identity: str, clock: ManualClock) -> LeaderElector:
    settings = LeaseSettings(LEASE, NS, identity, lease_duration=15, renew_deadline=10, retry_period=2)
    return LeaderElector(settings, api, clock=clock)


async def test_the_lease_goes_to_a_candidate_only_after_the_holder_stopped_renewing(k8s, lease_api) -> None:
    clock = ManualClock()
    a, b = elector(lease_api, "a", clock), elector(lease_api, "b", clock)
    assert await a.try_acquire_or_renew()  # creates the Lease
    first = k8s.get_object(LEASES, LEASE, NS)["spec"]
    assert first["holderIdentity"] == "a" and first["leaseTransitions"] == 0
    assert first["leaseDurationSeconds"] == 15
    assert not await b.try_acquire_or_renew()
    for _ in range(3):  # a keeps renewing: b never takes over, however long it waits in total
        clock.advance(10)
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
    renewed = k8s.get_object(LEASES, LEASE, NS)["spec"]
    assert renewed["acquireTime"] == first["acquireTime"] and renewed["renewTime"] > first["renewTime"]
    clock.advance(14.9)  # a stopped renewing: b counts the duration from when it saw the last renewal
    assert not await b.try_acquire_or_renew()
    clock.advance(0.1)
    assert await b.try_acquire_or_renew() and b.is_leader
    taken = k8s.get_object(LEASES, LEASE, NS)["spec"]
    assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew() and not a.is_leader and a.holder == "b"


async def test_of_two_candidates_racing_for_a_free_lease_exactly_one_wins(k8s, lease_api) -> None:
    clock = ManualClock()
    holder = elector(lease_api, "old", clock)
    assert await holder.try_acquire_or_renew()
    await holder.release()
    barrier = asyncio.Barrier(2)
    a, b = elector(Racing(lease_api, barrier), "a", clock), elector(Racing(lease_api, barrier), "b", clock)
    won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(won) == [False, True]
    winner = "a" if won[0] else "b"
    assert k8s.get_object(LEASES, LEASE, NS)["spec"]["holderIdentity"] == winner


async def test_a_released_lease_is_taken_at_once(k8s, lease_api) -> None:
    clock = ManualClock()
    a, b = elector(lease_api, "a", clock), elector(lease_api, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    released = k8s.get_object(LEASES, LEASE, NS)["spec"]
    assert "holderIdentity" not in released and released["leaseDurationSeconds"] == 1
    assert await b.try_acquire_or_renew()  # no waiting for the lease duration


async def test_a_leader_that_sees_another_holder_steps_down_at_once(k8s, lease_api) -> None:
    settings = LeaseSettings(LEASE, NS, "a", lease_duration=30, renew_deadline=20, retry_period=0.05)
    a = LeaderElector(settings, lease_api)
    assert await a.try_acquire_or_renew()
    lease = k8s.get_object(LEASES, LEASE, NS)
    lease["spec"]["holderIdentity"] = "intruder"
    await k8s.api.replace(LEASES, LEASE, lease, NS)
    assert await asyncio.wait_for(a.hold(), 10) is False
    assert not a.is_leader


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        (
            {"renewTime": "2025-01-01T00:00:00Z"},
            400,
            'cannot be handled as a Lease: parsing time "2025-01-01',
        ),
        ({"leaseDurationSeconds": "15"}, 400, "cannot unmarshal str into Go struct field"),
        (
            {"leaseDurationSeconds": 0},
            422,
            "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
        ),
        ({"leaseTransitions": -1}, 422, "spec.leaseTransitions: Invalid value: -1: must be greater than or"),
    ],
)
async def test_the_api_server_decodes_and_validates_leases(
    k8s, spec: dict[str, Any], code: int, message: str
):
    body = {"metadata": {"name": "l", "namespace": NS}, "spec": {"holderIdentity": "x", **spec}}
    with pytest.raises(ApiError) as err:
        await k8s.api.create(LEASES, body, NS)
    assert err.value.status == code and message in err.value.message
    good = {"holderIdentity": "x", "renewTime": micro_time(datetime.now(UTC)), "leaseDurationSeconds": 1}
    await k8s.api.create(LEASES, {"metadata": {"name": "l", "namespace": NS}, "spec": good}, NS)


# ------------------------------------------------------------------ conditional writes from fresh state


def indexes(k8s: Any, *, without: str | None = None) -> tuple[dict[Any, list[Any]], dict[Any, list[Any]]]:
    """The Job and Pod indexes as Kopf would hold them now (optionally missing one Job: a lagging watch)."""
    jobs: dict[Any, list[Any]] = {}
    pods: dict[Any, list[Any]] = {}
    for job in k8s.list_objects(JOBS, NS):
        if job["metadata"]["name"] != without and (key := owner_key(job)):
            jobs.setdefault(key, []).append(JobView.from_obj(job))
    for pod in k8s.list_objects(PODS, NS):
        if key := owner_key(pod):
            pods.setdefault(key, []).append(PodView.from_obj(pod))
    return jobs, pods


async def reconcile_once(k8s: Any, body: dict[str, Any], *, without: str | None = None) -> None:
    """One pass of a replica whose view of the resource is ``body`` (possibly stale)."""
    rec = Reconciler(FAST)
    jobs, pods = indexes(k8s, without=without)
    rec.bind_indexes(jobs, pods, {})
    key = (NS, body["kind"], body["metadata"]["name"])
    rec.bodies[key] = body
    try:
        await rec.reconcile(key)
    finally:
        rec.stop()


async def test_a_status_write_planned_from_a_stale_view_is_refused_and_planned_again(
    k8s_op, tmp_path: Path
) -> None:
    async with operator_harness(k8s_op, FakeRunner(fake_worker()), tmp_path) as h:
        stale = await h.create(dataset_body("ds", shards=2))  # the view a lagging watch still shows
        await h.wait_phase(DATASETS, "ds", "Succeeded")
    # Somebody (a human, another replica) writes status meanwhile: Failed, which is final.
    conditions = [
        c for c in h.status(DATASETS, "ds")["conditions"] if c["type"] not in ("Complete", "Failed")
    ]
    conditions.append(
        {
            "type": "Failed",
            "status": "True",
            "reason": "ByHand",
            "message": "set by a test",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        }
    )
    await k8s_op.api.patch_status(DATASETS, "ds", {"conditions": conditions, "phase": "Failed"}, NS)
    await reconcile_once(k8s_op, stale)
    status = h.status(DATASETS, "ds")
    # Planned again from the fresh object, where Failed is final: the stale plan's Complete never lands.
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "ByHand"
    assert status["phase"] == "Failed"


async def test_a_task_configmap_is_never_replaced_while_its_job_exists(k8s_op, tmp_path: Path) -> None:
    gate = Gate()
    async with operator_harness(k8s_op, FakeRunner(gate), tmp_path) as h:
        await h.create(dataset_body("ds", shards=2))
        await wait_for(lambda: gate.started == {0, 1}, 15, message="generate running")
        configmap = h.obj(CONFIGMAPS, "ds-generate-a1")
        configmap["data"]["task.json"] = json.dumps({"changed": "by hand"})
        await k8s_op.api.replace(CONFIGMAPS, "ds-generate-a1", configmap, NS)
        before = h.obj(CONFIGMAPS, "ds-generate-a1")["metadata"]["resourceVersion"]
        # A replica whose view has not seen the generate Job yet plans to create it again.
        body = h.obj(DATASETS, "ds")
        body["status"]["stages"]["generate"] = {"state": "Pending", "attempt": 0}
        await reconcile_once(k8s_op, body, without="ds-generate-a1")
        assert h.obj(CONFIGMAPS, "ds-generate-a1")["metadata"]["resourceVersion"] == before
        gate.open.set()
        await h.wait_phase(DATASETS, "ds", "Succeeded")
    assert not k8s_op.replaced_under_job
    assert k8s_op.creations[("jobs", "ds-generate-a1")] == 1
    record_api_calls(k8s_op, "configmap-kept")
