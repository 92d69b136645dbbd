"""FakeKubelet runs batch/v1 Jobs as local processes with the Job semantics the operator relies on."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.harness.k8s import running_operator, wait_for
from tests.k8s.emulator import RealisticEmulator, declare_crd
from tests.k8s.kubelet import (
    ContainerResult,
    FakeKubelet,
    FakeRunner,
    PodRecord,
    _pod_failure_action,
    format_ranges,
    parse_ranges,
)

# A worker that follows a per-index plan of exit codes, one per attempt ("wait": run until the test
# creates STATE_DIR/release). It records its pid per attempt and writes a JSON termination message.
WORKER = """
import json, os, pathlib, sys, time
index = os.environ.get("JOB_COMPLETION_INDEX", "0")
state = pathlib.Path(os.environ["STATE_DIR"])
attempt = len(list(state.glob(f"pid-{index}-*")))
(state / f"pid-{index}-{attempt}").write_text(str(os.getpid()))
plan = json.loads(os.environ.get("PLAN", "{}")).get(index, [0])
code = plan[min(attempt, len(plan) - 1)]
with open(os.environ["SYNTHREC_TERMINATION_LOG"], "w") as log:
    log.write(json.dumps({"index": int(index), "attempt": attempt}))
print(f"index {index} attempt {attempt} -> {code}", flush=True)
while code == "wait" and not (state / "release").exists():
    time.sleep(0.02)
sys.exit(0 if code == "wait" else code)
"""


def worker_job(
    name: str, state: Path, plan: dict[str, list[Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "synthrec:test",
        "command": ["python", "-c", WORKER],
        "env": [
            {"name": "STATE_DIR", "value": str(state)},
            {"name": "PLAN", "value": json.dumps(plan or {})},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}, **spec},
    }


def indexed(completions: int, parallelism: int, **spec: Any) -> dict[str, Any]:
    return {"completionMode": "Indexed", "completions": completions, "parallelism": parallelism, **spec}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir()
    return folder


def job_of(k8s: RealisticEmulator, name: str) -> dict[str, Any]:
    job = k8s.get_object("batch/v1/jobs", name, "default")
    assert job is not None, f"Job {name} is gone"
    return job


def condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_ and cond["status"] == "True":
            return cond
    return None


async def finished(k8s: RealisticEmulator, name: str, type_: str, timeout: float = 10) -> dict[str, Any]:
    """Wait for the Job's Complete or Failed condition; return the Job."""
    await wait_for(lambda: condition(job_of(k8s, name), type_), timeout, message=f"Job {name} {type_}")
    return job_of(k8s, name)


def pods_of(k8s: RealisticEmulator, job: str) -> list[dict[str, Any]]:
    return k8s.list_objects("v1/pods", "default", label_selector=f"job-name={job}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pids(state: Path) -> list[int]:
    return [int(path.read_text()) for path in sorted(state.glob("pid-*"))]


async def test_indexed_job_completes_every_index_within_parallelism(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    await k8s.api.create("batch/v1/jobs", worker_job("gen", state, **indexed(4, 2)))
    job = await finished(k8s, "gen", "Complete")
    status = job["status"]
    assert (status["completedIndexes"], status["succeeded"], status["ready"]) == ("0-3", 4, 0)
    assert "active" not in status and "failed" not in status  # zero counts are omitted, as on a cluster
    assert [c["type"] for c in status["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert status["completionTime"] and status["startTime"]
    assert kubelet.max_active("gen") == 2
    pods = pods_of(k8s, "gen")
    assert sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods) == list(
        "0123"
    )
    for pod in pods:
        index = int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
        assert pod["metadata"]["name"].startswith(f"gen-{index}-")
        assert pod["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
        assert json.loads(terminated["message"]) == {"index": index, "attempt": 0}
        assert "finalizers" not in pod["metadata"]  # the tracking finalizer is released


async def test_failed_index_is_retried_then_succeeds(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    body = worker_job("retry", state, {"1": [1, 0]}, **indexed(3, 3, backoffLimitPerIndex=1))
    await k8s.api.create("batch/v1/jobs", body)
    status = (await finished(k8s, "retry", "Complete"))["status"]
    assert (status["completedIndexes"], status["failed"], status["failedIndexes"]) == ("0-2", 1, "")
    retried = [
        p
        for p in pods_of(k8s, "retry")
        if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "1"
    ]
    phases = sorted(
        (p["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"], p["status"]["phase"])
        for p in retried
    )
    assert phases == [("0", "Failed"), ("1", "Succeeded")]


FAIL_INDEX_ON_42 = {"rules": [{"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}}]}


async def test_fail_index_on_a_listed_exit_code_until_max_failed_indexes(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    spec = indexed(4, 4, backoffLimitPerIndex=3, maxFailedIndexes=1, podFailurePolicy=FAIL_INDEX_ON_42)
    await k8s.api.create(
        "batch/v1/jobs", worker_job("bad", state, {"1": [42], "2": [42], "3": ["wait"]}, **spec)
    )
    job = await finished(k8s, "bad", "Failed")
    failed = condition(job, "Failed")
    assert failed is not None and failed["reason"] == "MaxFailedIndexesExceeded"
    assert condition(job, "FailureTarget") is not None
    assert parse_ranges(job["status"]["failedIndexes"]) == {1, 2}  # no retries despite backoffLimitPerIndex=3
    assert len(kubelet.pods("bad")) == 4
    assert not any(alive(pid) for pid in pids(state))  # index 3 was killed when the Job failed


async def test_failed_indexes_fail_the_job_once_the_others_finish(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    spec = indexed(3, 3, backoffLimitPerIndex=0, podFailurePolicy=FAIL_INDEX_ON_42)
    await k8s.api.create("batch/v1/jobs", worker_job("some", state, {"1": [42]}, **spec))
    job = await finished(k8s, "some", "Failed")
    assert condition(job, "Failed")["reason"] == "FailedIndexes"  # type: ignore[index]
    assert (job["status"]["completedIndexes"], job["status"]["failedIndexes"]) == ("0,2", "1")


async def test_fail_job_on_a_config_error_exit_code(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    policy = {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}}
        ]
    }
    await k8s.api.create(
        "batch/v1/jobs", worker_job("cfg", state, {"0": [3]}, **indexed(2, 1, podFailurePolicy=policy))
    )
    failed = condition(await finished(k8s, "cfg", "Failed"), "Failed")
    assert failed is not None and failed["reason"] == "PodFailurePolicy"
    assert "failed with exit code 3 matching FailJob rule at index 0" in failed["message"]
    assert len(kubelet.pods("cfg")) == 1


async def test_backoff_limit_counts_failures_of_a_non_indexed_job(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    await k8s.api.create("batch/v1/jobs", worker_job("flaky", state, {"0": [1]}, backoffLimit=1))
    job = await finished(k8s, "flaky", "Failed")
    assert condition(job, "Failed")["reason"] == "BackoffLimitExceeded"  # type: ignore[index]
    assert job["status"]["failed"] == 2


async def test_disruptions_are_ignored_and_never_overlap_with_their_replacement(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    spec = indexed(
        2, 2, backoffLimitPerIndex=0, podFailurePolicy=policy
    )  # podReplacementPolicy defaults to Failed
    await k8s.api.create("batch/v1/jobs", worker_job("pre", state, {"0": ["wait", 0]}, **spec))
    await wait_for(lambda: len(list(state.glob("pid-0-*"))) == 1)
    assert await kubelet.disrupt("pre", index=0)
    job = await finished(k8s, "pre", "Complete")
    assert "failed" not in job["status"]
    first, second = sorted(
        (rec for rec in kubelet.pods("pre") if rec.index == 0), key=lambda rec: rec.attempt
    )
    assert (
        first.terminal_at is not None and second.created_at >= first.terminal_at
    )  # never two pods per index
    last_seen = k8s.objects[kmock.resource("v1/pods"), "default", first.name].last  # deleted by now
    assert any(c["type"] == "DisruptionTarget" for c in last_seen["status"]["conditions"])


async def test_suspend_kills_pods_without_failures_and_resume_restarts_them(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    await k8s.api.create("batch/v1/jobs", worker_job("sus", state, {"0": ["wait"]}, suspend=True))
    job = await wait_for(lambda: condition(job_of(k8s, "sus"), "Suspended") and job_of(k8s, "sus"))
    assert kubelet.pods("sus") == [] and "startTime" not in job["status"]
    await k8s.api.patch("batch/v1/jobs", "sus", {"spec": {"suspend": False}}, "default")
    await wait_for(lambda: job_of(k8s, "sus")["status"].get("ready") == 1)
    [first_pid] = await wait_for(lambda: pids(state))
    await k8s.api.patch("batch/v1/jobs", "sus", {"spec": {"suspend": True}}, "default")
    await wait_for(
        lambda: not alive(first_pid) and not pods_of(k8s, "sus"), message="suspended pod killed and gone"
    )
    assert "failed" not in job_of(k8s, "sus")["status"]
    await k8s.api.patch("batch/v1/jobs", "sus", {"spec": {"suspend": False}}, "default")
    await wait_for(lambda: len(pids(state)) == 2)
    (state / "release").touch()
    job = await finished(k8s, "sus", "Complete")
    assert {(c["type"], c["status"], c["reason"]) for c in job["status"]["conditions"]} >= {
        ("Suspended", "False", "JobResumed"),
        ("Complete", "True", "CompletionsReached"),
    }


async def test_deleting_a_job_in_background_kills_its_running_pods(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    await k8s.api.create(
        "batch/v1/jobs", worker_job("del", state, {"0": ["wait"], "1": ["wait"]}, **indexed(2, 2))
    )
    await wait_for(lambda: len(pids(state)) == 2)
    await k8s.api.delete("batch/v1/jobs", "del", "default", propagation_policy="Background")
    await wait_for(lambda: not any(alive(pid) for pid in pids(state)), message="all worker processes killed")
    await wait_for(lambda: not pods_of(k8s, "del"), message="pods garbage-collected")


async def test_a_job_deleted_with_the_orphan_default_leaves_its_pods_running(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    await k8s.api.create("batch/v1/jobs", worker_job("orph", state, {"0": ["wait"]}))
    await wait_for(lambda: pids(state))
    await k8s.api.delete("batch/v1/jobs", "orph", "default")  # no propagationPolicy: Orphan for batch/v1 Jobs
    assert alive(pids(state)[0])
    (state / "release").touch()
    await wait_for(lambda: pods_of(k8s, "orph")[0]["status"]["phase"] == "Succeeded")


async def test_termination_message_is_capped_at_4096_bytes(
    k8s: RealisticEmulator, kubelet: FakeKubelet
) -> None:
    script = "import os; open(os.environ['SYNTHREC_TERMINATION_LOG'], 'w').write('x' * 5000)"
    body = worker_job("long", Path("/nonexistent"))
    body["spec"]["template"]["spec"]["containers"][0]["command"] = ["python3", "-c", script]
    await k8s.api.create("batch/v1/jobs", body)
    await finished(k8s, "long", "Complete")
    terminated = pods_of(k8s, "long")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["message"] == "x" * 4096


async def test_unschedulable_and_image_pull_failures_keep_pods_pending(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    kubelet.block_scheduling("gpu")
    kubelet.fail_image_pull("img")
    await k8s.api.create("batch/v1/jobs", worker_job("gpu", state))
    await k8s.api.create("batch/v1/jobs", worker_job("img", state))

    def pending_reason(job: str) -> str | None:
        [pod] = pods_of(k8s, job)
        status = pod["status"]
        assert status["phase"] == "Pending"
        scheduled = [
            c for c in status.get("conditions", []) if c["type"] == "PodScheduled" and c["status"] == "False"
        ]
        if scheduled:
            return f"{scheduled[0]['reason']}: {scheduled[0]['message']}"
        waiting = [
            cs["state"]["waiting"] for cs in status.get("containerStatuses", []) if "waiting" in cs["state"]
        ]
        return waiting[0]["reason"] if waiting else None

    assert (await wait_for(lambda: pending_reason("gpu"))).startswith(
        "Unschedulable: 0/1 nodes are available"
    )
    assert await wait_for(lambda: pending_reason("img")) == "ImagePullBackOff"
    assert not pids(state)
    kubelet.unblock("gpu")
    kubelet.unblock("img")
    await finished(k8s, "gpu", "Complete")
    await finished(k8s, "img", "Complete")


async def test_env_refs_and_volumes_are_materialised(k8s: RealisticEmulator, kubelet: FakeKubelet) -> None:
    await k8s.api.create(
        "v1/configmaps",
        {
            "metadata": {"name": "task", "namespace": "default"},
            "data": {"task.json": '{"shard": 7}', "mode": "fast"},
        },
    )
    script = (
        "import json, os, pathlib\n"
        "task = json.loads(pathlib.Path('/etc/synthrec/task.json').read_text())\n"
        "pathlib.Path('/scratch/out.txt').write_text('ok')\n"
        "summary = dict(task, token=os.environ['TOKEN'], mode=os.environ['MODE'],\n"
        "               optional=os.environ.get('OPTIONAL'), out=os.environ['OUT'],\n"
        "               scratch=pathlib.Path('/scratch/out.txt').read_text())\n"
        "open('/dev/termination-log', 'w').write(json.dumps(summary))\n"
    )
    container = {
        "name": "main",
        "image": "synthrec:test",
        "command": ["python", "-c", script],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "task", "key": "mode"}}},
            {
                "name": "OPTIONAL",
                "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}},
            },
            {"name": "OUT", "value": "/scratch/$(MODE)"},
        ],
        "volumeMounts": [
            {"name": "task", "mountPath": "/etc/synthrec"},
            {"name": "scratch", "mountPath": "/scratch"},
        ],
    }
    volumes = [{"name": "task", "configMap": {"name": "task"}}, {"name": "scratch", "emptyDir": {}}]
    await k8s.api.create(
        "batch/v1/jobs",
        {
            "metadata": {"name": "env", "namespace": "default"},
            "spec": {
                "template": {
                    "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
                }
            },
        },
    )

    def waiting_reason() -> str:
        return pods_of(k8s, "env")[0]["status"]["containerStatuses"][0]["state"]["waiting"]["message"]

    assert (
        await wait_for(waiting_reason) == 'secret "creds" not found'
    )  # CreateContainerConfigError until it exists
    await k8s.api.create(
        "v1/secrets",
        {"metadata": {"name": "creds", "namespace": "default"}, "stringData": {"token": "s3cr3t"}},
    )
    await finished(k8s, "env", "Complete")
    message = json.loads(
        pods_of(k8s, "env")[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    )
    scratch = kubelet.pods("env")[0].pod_dir / "volumes" / "scratch"  # type: ignore[operator]
    assert message == {
        "shard": 7,
        "token": "s3cr3t",
        "mode": "fast",
        "optional": None,
        "out": f"{scratch}/fast",
        "scratch": "ok",
    }


@pytest.mark.parametrize(
    ("service", "resolved"),
    [
        ({"clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": "gang"}}, True),
        (None, False),  # no Service: no DNS name for the pods
        ({"clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": "other"}}, False),  # misses
        ({"selector": {"batch.kubernetes.io/job-name": "gang"}}, False),  # not headless: no pod records
    ],
    ids=["headless", "no-service", "selector-misses", "cluster-ip"],
)
async def test_a_pod_name_behind_a_headless_service_resolves_like_cluster_dns(
    k8s: RealisticEmulator, kubelet: FakeKubelet, service: dict[str, Any] | None, resolved: bool
) -> None:
    if service is not None:
        ports = [{"name": "rendezvous", "port": 29400}]
        await k8s.api.create(
            "v1/services",
            {"metadata": {"name": "gang", "namespace": "default"}, "spec": {**service, "ports": ports}},
        )
    script = "import os\nopen('/dev/termination-log', 'w').write(os.environ['PEER'])\n"
    container = {
        "name": "main",
        "image": "synthrec:test",
        "command": ["python", "-c", script],
        "env": [{"name": "PEER", "value": "gang-0.gang:29400 gang-1.gang.default.svc.cluster.local"}],
    }
    pod = {"restartPolicy": "Never", "subdomain": "gang", "containers": [container]}
    job = {
        "metadata": {"name": "gang", "namespace": "default"},
        "spec": {**indexed(2, 2), "template": {"spec": pod}},
    }
    await k8s.api.create("batch/v1/jobs", job)
    await finished(k8s, "gang", "Complete")
    said = {
        p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] for p in pods_of(k8s, "gang")
    }
    if resolved:  # the kubelet's pods all run here: index 0's and index 1's names are this machine
        assert said == {"127.0.0.1:29400 127.0.0.1"}
    else:
        assert said == {"gang-0.gang:29400 gang-1.gang.default.svc.cluster.local"}


async def test_the_api_server_checks_services_and_pod_dns_names(k8s: RealisticEmulator) -> None:
    from tests.k8s.client import ApiError

    bad = [
        ({"name": "1gang"}, {"clusterIP": "None"}, "a DNS-1035 label"),
        ({"name": "gang"}, {"clusterIP": "None", "type": "NodePort"}, 'may only be set to "None"'),
        ({"name": "gang"}, {"ports": [{"port": 70000}]}, "between 1 and 65535"),
        ({"name": "gang"}, {"ports": [{"port": 1}, {"port": 2}]}, "spec.ports[0].name: Required value"),
    ]
    for meta, spec, words in bad:
        with pytest.raises(ApiError) as err:
            await k8s.api.create("v1/services", {"metadata": {**meta, "namespace": "default"}, "spec": spec})
        assert err.value.status == 422 and words in str(err.value), str(err.value)
    made = await k8s.api.create(
        "v1/services",
        {
            "metadata": {"name": "gang", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]},
        },
    )
    assert made["spec"]["type"] == "ClusterIP" and made["spec"]["ports"][0] == {
        "port": 80,
        "protocol": "TCP",
        "targetPort": 80,
    }
    container = {"name": "main", "image": "synthrec:test", "command": ["true"]}
    with pytest.raises(ApiError) as err:
        await k8s.api.create(
            "batch/v1/jobs",
            {
                "metadata": {"name": "j", "namespace": "default"},
                "spec": {
                    "template": {
                        "spec": {"restartPolicy": "Never", "subdomain": "Gang_1", "containers": [container]}
                    }
                },
            },
        )
    assert err.value.status == 422 and "spec.template.spec.subdomain" in str(err.value)


async def test_active_deadline_fails_the_job(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    await k8s.api.create("batch/v1/jobs", worker_job("slow", state, {"0": ["wait"]}, activeDeadlineSeconds=1))
    job = await finished(k8s, "slow", "Failed", timeout=5)
    assert condition(job, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]
    assert not any(alive(pid) for pid in pids(state))


async def test_fake_runner_runs_many_shards_quickly(k8s: RealisticEmulator, tmp_path: Path) -> None:
    def shard(job: dict[str, Any], index: int | None, attempt: int) -> tuple[int, str]:
        if index == 7 and attempt == 0:
            return 1, "transient"
        return 0, json.dumps({"index": index, "attempt": attempt})

    async with FakeKubelet(k8s.url, FakeRunner(shard), workdir=tmp_path / "kubelet") as fake:
        body = worker_job("many", tmp_path, **indexed(100, 25, backoffLimitPerIndex=1))
        await k8s.api.create("batch/v1/jobs", body)
        job = await finished(k8s, "many", "Complete", timeout=30)
        fake.check()
    assert (job["status"]["completedIndexes"], job["status"]["failed"]) == ("0-99", 1)
    assert fake.max_active("many") <= 25


async def test_a_kopf_operator_runs_in_process_against_the_emulator(
    k8s: RealisticEmulator, kubelet: FakeKubelet, state: Path
) -> None:
    import kopf

    declare_crd(k8s, "example.dev", "v1", "widgets", "Widget")
    deleted: list[str] = []

    def widget_operator(registry: kopf.OperatorRegistry) -> None:
        @kopf.on.create("example.dev", "v1", "widgets", id="create_job", registry=registry)
        async def create_job(
            body: kopf.Body, name: str, namespace: str, patch: kopf.Patch, **_: Any
        ) -> dict[str, str]:
            job = worker_job(f"{name}-job", state, {"0": [0], "1": [0]}, **indexed(2, 2))
            kopf.adopt(job, owner=body)
            await k8s.api.create("batch/v1/jobs", job, namespace)
            patch.status["phase"] = "Running"
            return {"job": job["metadata"]["name"]}

        @kopf.on.event("batch", "v1", "jobs", labels={"job-name": kopf.PRESENT}, registry=registry)
        async def job_done(body: kopf.Body, namespace: str, **_: Any) -> None:
            owners = [
                ref["name"] for ref in body.metadata.get("ownerReferences", []) if ref["kind"] == "Widget"
            ]
            if owners and condition(dict(body), "Complete"):
                await k8s.api.patch_status(
                    "example.dev/v1/widgets", owners[0], {"phase": "Succeeded"}, namespace
                )

        @kopf.on.delete("example.dev", "v1", "widgets", registry=registry)
        def cleanup(name: str, **_: Any) -> None:
            deleted.append(name)

    async with running_operator(widget_operator):
        await k8s.api.create(
            "example.dev/v1/widgets", {"metadata": {"name": "w1", "namespace": "default"}, "spec": {}}
        )
        widget = await wait_for(
            lambda: (
                (k8s.get_object("example.dev/v1/widgets", "w1", "default") or {})
                .get("status", {})
                .get("phase")
                == "Succeeded"
                and k8s.get_object("example.dev/v1/widgets", "w1", "default")
            ),
            timeout=10,
        )
        assert widget["status"]["create_job"] == {"job": "w1-job"}
        owner = job_of(k8s, "w1-job")["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "Widget",
            widget["metadata"]["uid"],
            True,
        )
        assert widget["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        await k8s.api.delete("example.dev/v1/widgets", "w1", "default")
        await wait_for(lambda: k8s.get_object("example.dev/v1/widgets", "w1", "default") is None, timeout=10)
    assert deleted == ["w1"]
    assert k8s.get_object("batch/v1/jobs", "w1-job", "default") is None  # garbage-collected with its owner
    await wait_for(lambda: not pods_of(k8s, "w1-job"), message="the Job's pods went with it")
    posts = [call for call in k8s.api_calls() if call.verb == "create" and call.resource == "jobs"]
    assert k8s.api_call_counts()[posts[0]] == 1  # the create handler ran exactly once


def test_index_ranges_round_trip() -> None:
    assert format_ranges({5, 0, 1, 2, 3, 9, 10}) == "0-3,5,9-10"
    assert format_ranges(set()) == ""
    assert parse_ranges("0-3,5,9-10") == {0, 1, 2, 3, 5, 9, 10}


def test_pod_failure_policy_rules_match_in_order() -> None:
    def record(exit_code: int, *conditions: str) -> PodRecord:
        rec = PodRecord("p", "ns", "j", 0, 0, 0.0, phase="Failed")
        rec.results = [("main", ContainerResult(exit_code))]
        rec.conditions = [{"type": c, "status": "True"} for c in conditions]
        return rec

    policy = {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}},
            {"action": "Count", "onExitCodes": {"operator": "In", "values": [1]}},
            {"action": "FailIndex", "onExitCodes": {"operator": "NotIn", "values": [1, 3]}},
        ]
    }
    assert _pod_failure_action(policy, record(3, "DisruptionTarget"))[0] == "Ignore"
    action, message = _pod_failure_action(policy, record(3))
    assert (action, message) == (
        "FailJob",
        "Container main for pod ns/p failed with exit code 3 matching FailJob rule at index 1",
    )
    assert _pod_failure_action(policy, record(1))[0] == "Count"
    assert _pod_failure_action(policy, record(42))[0] == "FailIndex"
    assert _pod_failure_action(None, record(42))[0] == "Count"
