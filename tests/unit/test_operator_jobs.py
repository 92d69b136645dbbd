"""Rendering of worker Jobs and task ConfigMaps: valid (kubernetes-validate strict), restricted pod security,
scheduling knobs, GPU resources, secrets by reference, deterministic names and labels."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from synthrec import api
from synthrec.operator.jobs import (
    JobShape,
    Owner,
    WorkerDefaults,
    child_labels,
    label_value,
    render_configmap,
    render_job,
    run_job_name,
    stage_job_name,
)
from synthrec.operator.observed import JobView
from synthrec.plan import dataset_task
from synthrec.plan.tasks import ResourceRef

K8S = "1.33.0"
OWNER = Owner("SyntheticDataset", "ds", "team-a", "0b5e0c1e-0000-4000-8000-000000000001")


def spec(**changes: Any) -> api.SyntheticDatasetSpec:
    wire: dict[str, Any] = {
        "labels": {"preset": "tiny"},
        "generator": {"model": "hf://org/sd@main"},
        "sharding": {"shards": 8, "parallelism": 3, "retriesPerShard": 2, "maxFailedShards": 1},
        "output": {"uri": "s3://bucket/ds/"},
    }
    wire.update(changes)
    return api.SyntheticDatasetSpec.model_validate(wire)


def render(
    s: api.SyntheticDatasetSpec, defaults: WorkerDefaults | None = None, **shape: Any
) -> dict[str, Any]:
    values = {"completions": 8, "parallelism": 3, "retries_per_index": 2, "max_failed_indexes": 1, **shape}
    return render_job(
        OWNER,
        name="ds-generate-a1",
        stage="generate",
        labels=child_labels(OWNER, "generate", 1),
        shape=JobShape(**values),
        spec=s,
        defaults=defaults or WorkerDefaults(),
    )


FULL = dict(
    resources={"gpus": 2, "cpu": "8", "memory": "48Gi", "sharedMemory": "8Gi"},
    scheduling={
        "image": "registry.example/synthrec:1.2",
        "imagePullPolicy": "IfNotPresent",
        "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "batch-low",
        "queueName": "team-a",
        "serviceAccountName": "synthrec-writer",
    },
    output={
        "uri": "s3://bucket/ds/",
        "endpoint": "https://minio.example",
        "region": "eu-1",
        "credentialsSecret": "s3",
    },
    modelHub={"tokenSecret": "hf", "endpoint": "https://hf-mirror.example"},
    runPolicy={"activeDeadlineSeconds": 3600},
)


def test_a_job_with_every_option_passes_kubernetes_validate_strict() -> None:
    job = render(spec(**FULL), active_deadline_seconds=3600, shard_ids=(1, 4, 5))
    assert kubernetes_validate.validate(job, K8S, strict=True)
    task = dataset_task(
        spec(**FULL), "generate", ResourceRef(kind="SyntheticDataset", name="ds"), shard_ids=[1]
    )
    configmap = render_configmap(OWNER, "ds-generate-a1", child_labels(OWNER, "generate", 1), task)
    assert kubernetes_validate.validate(configmap, K8S, strict=True)
    assert json.loads(configmap["data"]["task.json"])["shard_ids"] == [1]


def test_the_job_maps_the_shard_contract_onto_an_indexed_job() -> None:
    job = render(spec(), shard_ids=(1, 4, 5), completions=3)
    js = job["spec"]
    assert (js["completionMode"], js["completions"], js["parallelism"]) == ("Indexed", 3, 3)
    assert (js["backoffLimitPerIndex"], js["maxFailedIndexes"]) == (2, 1)
    assert js["podReplacementPolicy"] == "Failed"
    assert "ttlSecondsAfterFinished" not in js  # set only once the results are in status
    rules = js["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert [(r["action"], r["onExitCodes"]["values"]) for r in rules[1:]] == [
        ("FailJob", [3]),
        ("FailIndex", [42]),
    ]
    assert job["metadata"]["annotations"]["synthrec.io/shards"] == "1,4-5"
    assert JobView.from_obj(job).shard_ids == (1, 4, 5)
    container = js["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "python",
        "-m",
        "synthrec.workers",
        "generate",
        "--task",
        "/etc/synthrec/task/task.json",
    ]


def test_pods_follow_the_restricted_pod_security_standard() -> None:
    pod = render(spec(**FULL))["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/cache", "/dev/shm"}
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_dev_shm_is_sized_for_the_stage_image_loaders_by_default() -> None:
    from synthrec.plan.shm import stage_shared_memory

    s = spec(
        resources={"gpus": 1, "cpu": "8", "memory": "64Gi"},
        filter={"batchSize": 512, "clip": {"model": "ViT-B-16"}},
    )

    def shm_of(stage: str) -> dict[str, Any]:
        job = render_job(
            OWNER,
            name=f"ds-{stage}-a1",
            stage=stage,
            labels=child_labels(OWNER, stage, 1),
            shape=JobShape(completions=2, parallelism=2, retries_per_index=1, max_failed_indexes=0),
            spec=s,
            defaults=WorkerDefaults(),
        )
        kubernetes_validate.validate(job, K8S, strict=True)
        pod = job["spec"]["template"]["spec"]
        return next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]

    # 7 loader workers x 2 batches x 512 uint8 images of 224 px, with headroom: not the old fixed 2Gi
    assert shm_of("filter") == {"medium": "Memory", "sizeLimit": stage_shared_memory(s, "filter")}
    assert stage_shared_memory(s, "filter") == "1351Mi"
    assert shm_of("generate")["sizeLimit"] == "256Mi"


def test_scheduling_knobs_reach_the_pod_and_the_kueue_label_the_job() -> None:
    job = render(spec(**FULL))
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "batch-low"
    assert pod["serviceAccountName"] == "synthrec-writer"
    container = pod["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == (
        "registry.example/synthrec:1.2",
        "IfNotPresent",
    )
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "2"},
        "limits": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "2"},
    }


def test_secrets_are_referenced_never_copied() -> None:
    env = {e["name"]: e for e in render(spec(**FULL))["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3"
    assert env["HF_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "hf", "key": "HF_TOKEN", "optional": True}
    }
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://minio.example"
    assert env["AWS_REGION"]["value"] == "eu-1"
    assert env["HF_ENDPOINT"]["value"] == "https://hf-mirror.example"
    assert {
        k: env[k]["value"]
        for k in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TORCH_HOME", "SYNTHREC_CACHE", "MPLCONFIGDIR")
    } == {
        "HOME": "/tmp",
        "XDG_CACHE_HOME": "/cache",
        "HF_HOME": "/cache/huggingface",
        "TORCH_HOME": "/cache/torch",
        "SYNTHREC_CACHE": "/cache/synthrec",
        "MPLCONFIGDIR": "/tmp/matplotlib",
    }


def test_operator_defaults_apply_where_the_spec_is_silent() -> None:
    defaults = WorkerDefaults(
        image="registry.example/default:9",
        image_pull_policy="Always",
        service_account="workers",
        queue_name="default-queue",
        gpu_resource="nvidia.com/mig-1g.10gb",
        s3_endpoint="http://minio:9000",
        s3_secret="default-s3",
        hf_token_secret="default-hf",
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "gpu", "operator": "Exists"}],
    )
    job = render(spec(), defaults)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert container["image"] == "registry.example/default:9" and container["imagePullPolicy"] == "Always"
    assert pod["serviceAccountName"] == "workers"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "default-queue"
    assert container["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "default-s3"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "default-hf"
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"] == [
        {"key": "gpu", "operator": "Exists"}
    ]
    assert kubernetes_validate.validate(job, K8S, strict=True)


def test_no_gpu_resources_when_the_spec_asks_for_none() -> None:
    resources = render(spec(resources={"gpus": 0}))["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "4", "memory": "16Gi"}


def test_names_are_deterministic_and_fit_kubernetes_limits() -> None:
    longest = "a" * api.MAX_RESOURCE_NAME
    assert stage_job_name("ds", "generate", 2) == "ds-generate-a2"
    assert run_job_name("exp", 17, 1) == "exp-r17-a1"
    assert len(stage_job_name(longest, "generate", 10)) <= 63
    assert len(run_job_name(longest, api.MAX_RUNS - 1, 1)) <= 63


@pytest.mark.parametrize(
    "value", ["shots1024-seed2147483647-" + "v" * 63, "bad/value with spaces", "-leading", "x" * 64]
)
def test_label_values_are_always_valid(value: str) -> None:
    label = label_value(value)
    assert len(label) <= 63 and label[0].isalnum() and label[-1].isalnum()
    assert label_value(value) == label  # stable
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": label}}}
    assert kubernetes_validate.validate(meta, K8S, strict=True)


def test_short_run_names_are_kept_as_label_values() -> None:
    labels = child_labels(
        Owner("RecognitionExperiment", "exp", "ns", "u"), "train", 1, run="shots16-seed1-ct"
    )
    assert labels["synthrec.io/run"] == "shots16-seed1-ct"
    assert labels["app.kubernetes.io/managed-by"] == "synthrec"
    assert labels["synthrec.io/kind"] == "RecognitionExperiment"


def test_jobs_and_their_pods_carry_the_recommended_labels() -> None:
    job = render(spec())
    expected = {
        "app.kubernetes.io/name": "synthrec",
        "app.kubernetes.io/instance": OWNER.name,
        "app.kubernetes.io/component": "generate",
        "app.kubernetes.io/managed-by": "synthrec",
    }
    assert expected.items() <= job["metadata"]["labels"].items()
    assert expected.items() <= job["spec"]["template"]["metadata"]["labels"].items()


def test_a_multi_node_stage_is_an_indexed_gang_with_a_headless_service_for_its_rendezvous() -> None:
    from synthrec.operator.jobs import Gang, gang_service_name, render_service
    from synthrec.operator.observed import ANNOTATION_SERVICE

    owner = Owner("RecognitionExperiment", "t8", "team-a", "0b5e0c1e-0000-4000-8000-000000000002")
    experiment = api.RecognitionExperimentSpec.model_validate(
        {
            "labels": {"preset": "cifar100"},
            "data": {
                "synthetic": [{"datasetRef": "c100"}],
                "realTrain": {"uri": "s3://bucket/c100/train/"},
                "test": {"uri": "s3://bucket/c100/test/"},
            },
            "method": {"pretrain": {"batchSize": 1024, "transfer": {"classification": {}}}},
            "resources": {"gpus": 8, "sharedMemory": None},
            "scheduling": {"queueName": "gpu"},
            "output": {"uri": "s3://bucket/t8/"},
        }
    )
    name = run_job_name(owner.name, 3, 1, "pretrain")
    assert name == "t8-r3-pretrain-a1" and gang_service_name(name) == name
    assert (
        gang_service_name("8x-r3-pretrain-a1") == "s8x-r3-pretrain-a1"
    )  # a Service name starts with a letter
    gang = Gang(nodes=4, port=29400, grace_seconds=600, service=name)
    labels = child_labels(owner, "pretrain", 1, run="sup-1.2m-scratch")
    job = render_job(
        owner,
        name=name,
        stage="pretrain",
        labels=labels,
        shape=JobShape(completions=4, parallelism=4, retries_per_index=2, max_failed_indexes=0),
        spec=experiment,
        defaults=WorkerDefaults(),
        run_index=3,
        gang=gang,
    )
    service = render_service(owner, name, labels, name, 29400)
    for body in (job, service):
        kubernetes_validate.validate(body, K8S, strict=True)
    spec_, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec_["completions"], spec_["parallelism"], spec_["maxFailedIndexes"]) == (4, 4, 0)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"  # Kueue admits the 4 pods as one
    assert job["metadata"]["annotations"][ANNOTATION_SERVICE] == name
    assert pod["subdomain"] == name and pod["terminationGracePeriodSeconds"] == 600
    container = pod["containers"][0]
    assert {"name": "SYNTHREC_RDZV_ENDPOINT", "value": f"{name}-0.{name}:29400"} in container["env"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]  # NCCL needs /dev/shm
    assert service["spec"] == {
        "clusterIP": "None",
        "selector": {"batch.kubernetes.io/job-name": name},
        "publishNotReadyAddresses": True,
        "ports": [{"name": "rendezvous", "port": 29400, "targetPort": 29400, "protocol": "TCP"}],
    }
    assert service["metadata"]["ownerReferences"][0]["uid"] == owner.uid
    # a one-node stage: no Service, no rendezvous address, torchrun runs standalone in the pod
    single = render_job(
        owner,
        name="t8-r0-transfer-a1",
        stage="transfer",
        labels=labels,
        shape=JobShape(completions=1, parallelism=1, retries_per_index=2, max_failed_indexes=0),
        spec=experiment,
        defaults=WorkerDefaults(),
        run_index=0,
        gang=Gang(nodes=1, port=29400, grace_seconds=600),
    )
    pod = single["spec"]["template"]["spec"]
    assert "subdomain" not in pod and ANNOTATION_SERVICE not in single["metadata"]["annotations"]
    assert not any(e["name"] == "SYNTHREC_RDZV_ENDPOINT" for e in pod["containers"][0]["env"])
