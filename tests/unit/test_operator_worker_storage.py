"""Worker pods' model cache, extra volumes and extra environment, as the operator's defaults set them:
the /cache emptyDir gets a size limit and the pod an ephemeral-storage request, or /cache is a volume the
admin names; a ReadOnlyMany model store and tracking settings reach every worker; bad settings are
refused with the variable named. Every rendered Job stays valid (kubernetes-validate strict) and
restricted."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from synthrec.operator.jobs import WorkerDefaults
from synthrec.operator.settings import OperatorConfig, SettingsError
from tests.harness.jobs import render_generate_job as render
from tests.harness.pss import assert_restricted

K8S = "1.33.0"
MODELS_PVC = {"name": "models", "persistentVolumeClaim": {"claimName": "hf-models", "readOnly": True}}
MODELS_MOUNT = {"name": "models", "mountPath": "/cache/huggingface", "readOnly": True}
TRACKING_ENV = [
    {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.mlflow:5000"},
    {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}},
    {"name": "HF_HUB_OFFLINE", "value": "1"},
]


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def volumes_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_of(job)["volumes"]}


def mounts_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in pod_of(job)["containers"][0]["volumeMounts"]}


def check_valid(job: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(job, K8S, strict=True)
    assert_restricted(job, writable=("/tmp", "/cache"))


def test_the_cache_gets_a_size_limit_and_the_pod_an_ephemeral_storage_request() -> None:
    job = render(WorkerDefaults(cache_size_limit="50Gi", ephemeral_storage="20Gi"))
    assert volumes_of(job)["cache"] == {"name": "cache", "emptyDir": {"sizeLimit": "50Gi"}}
    assert mounts_of(job)["/cache"]["name"] == "cache"
    resources = pod_of(job)["containers"][0]["resources"]
    assert resources["requests"]["ephemeral-storage"] == "20Gi"
    assert "ephemeral-storage" not in resources["limits"], "a request only: logs must not evict the pod"
    check_valid(job)


def test_without_settings_the_cache_is_a_plain_empty_dir() -> None:
    job = render(WorkerDefaults())
    assert volumes_of(job)["cache"] == {"name": "cache", "emptyDir": {}}
    assert "ephemeral-storage" not in pod_of(job)["containers"][0]["resources"]["requests"]


def test_a_named_volume_replaces_the_cache_empty_dir() -> None:
    source = {"persistentVolumeClaim": {"claimName": "synthrec-model-cache"}}
    job = render(WorkerDefaults(cache_volume=source, cache_size_limit="50Gi"))
    assert volumes_of(job)["cache"] == {"name": "cache", **source}  # the size limit is the claim's own
    assert [m["name"] for m in mounts_of(job).values()].count("cache") == 1
    assert kubernetes_validate.validate(job, K8S, strict=True)
    assert_restricted(job, writable=("/tmp",))  # /cache is now the claim, not an emptyDir


def test_a_read_only_model_store_and_tracking_settings_reach_every_worker() -> None:
    job = render(WorkerDefaults(volumes=[MODELS_PVC], volume_mounts=[MODELS_MOUNT], env=TRACKING_ENV))
    assert volumes_of(job)["models"] == MODELS_PVC
    assert mounts_of(job)["/cache/huggingface"] == MODELS_MOUNT
    assert mounts_of(job)["/cache"]["name"] == "cache"  # the writable cache stays around it
    env = pod_of(job)["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    assert by_name["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlflow:5000"
    check_valid(job)


def test_an_extra_variable_replaces_the_operators_value_of_the_same_name() -> None:
    job = render(WorkerDefaults(env=[{"name": "HF_ENDPOINT", "value": "https://hub.internal"}]))
    env = pod_of(job)["containers"][0]["env"]
    assert [e for e in env if e["name"] == "HF_ENDPOINT"] == [
        {"name": "HF_ENDPOINT", "value": "https://hub.internal"}
    ]


def test_the_operator_reads_the_cache_volume_and_env_settings() -> None:
    env = {
        "SYNTHREC_WORKER_CACHE_SIZE_LIMIT": "80Gi",
        "SYNTHREC_WORKER_CACHE_VOLUME": '{"persistentVolumeClaim": {"claimName": "cache"}}',
        "SYNTHREC_WORKER_EPHEMERAL_STORAGE": "30Gi",
        "SYNTHREC_WORKER_VOLUMES": json.dumps([MODELS_PVC]),
        "SYNTHREC_WORKER_VOLUME_MOUNTS": json.dumps([MODELS_MOUNT]),
        "SYNTHREC_WORKER_ENV": json.dumps(TRACKING_ENV),
    }
    worker = OperatorConfig.from_env(env).worker
    assert (worker.cache_size_limit, worker.ephemeral_storage) == ("80Gi", "30Gi")
    assert worker.cache_volume == {"persistentVolumeClaim": {"claimName": "cache"}}
    assert (worker.volumes, worker.volume_mounts, worker.env) == ([MODELS_PVC], [MODELS_MOUNT], TRACKING_ENV)
    empty = OperatorConfig.from_env({}).worker
    assert (empty.cache_size_limit, empty.cache_volume, empty.volumes, empty.env) == (None, None, [], [])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SYNTHREC_WORKER_CACHE_SIZE_LIMIT": "fifty gigs"}, "is not a Kubernetes quantity"),
        ({"SYNTHREC_WORKER_EPHEMERAL_STORAGE": "20 GB"}, "SYNTHREC_WORKER_EPHEMERAL_STORAGE='20 GB'"),
        ({"SYNTHREC_WORKER_CACHE_VOLUME": '{"name": "x", "emptyDir": {}}'}, "exactly one volume source"),
        ({"SYNTHREC_WORKER_CACHE_VOLUME": '["pvc"]'}, "must be a JSON object"),
        ({"SYNTHREC_WORKER_VOLUMES": '[{"emptyDir": {}}]'}, "every volume needs a name"),
        ({"SYNTHREC_WORKER_VOLUMES": '[{"name": "cache", "emptyDir": {}}]'}, "taken by the worker pod"),
        (
            {"SYNTHREC_WORKER_VOLUMES": json.dumps([MODELS_PVC, MODELS_PVC])},
            "the volume name 'models' is used twice",
        ),
        (
            {"SYNTHREC_WORKER_VOLUME_MOUNTS": json.dumps([MODELS_MOUNT])},
            "the mount of 'models' names no volume",
        ),
        (
            {
                "SYNTHREC_WORKER_VOLUMES": json.dumps([MODELS_PVC]),
                "SYNTHREC_WORKER_VOLUME_MOUNTS": '[{"name": "models", "mountPath": "/tmp/"}]',
            },
            "would hide the worker's own /tmp",
        ),
        (
            {
                "SYNTHREC_WORKER_VOLUMES": json.dumps([MODELS_PVC]),
                "SYNTHREC_WORKER_VOLUME_MOUNTS": '[{"name": "models", "mountPath": "models"}]',
            },
            "needs an absolute mountPath",
        ),
        ({"SYNTHREC_WORKER_ENV": '[{"value": "1"}]'}, "every variable needs a name"),
        ({"SYNTHREC_WORKER_ENV": '["WANDB_MODE=offline"]'}, "every item must be a JSON object"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("[", r"\[")):
        OperatorConfig.from_env(env)
