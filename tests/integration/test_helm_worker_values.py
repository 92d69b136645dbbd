"""helm/synthrec: the values for worker pods' model cache, extra volumes and extra environment reach the
operator and, through it, valid worker Jobs; values.schema.json (with Helm's own validator, via
helm-python-sdk) rejects environment variables without a name and malformed volumes, and the chart refuses
a liveness port equal to the metrics port on install (and the operator on start)."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from synthrec.operator.settings import OperatorConfig, SettingsError
from tests.harness.chart import CHART, K8S_VERSION, env_of, lint_chart, one, render_chart, render_manifests
from tests.harness.jobs import render_generate_job as render
from tests.harness.pss import assert_restricted

helm_python = pytest.importorskip("helm_python")

GPU_VALUES = yaml.safe_load((CHART / "ci" / "gpu-cluster-values.yaml").read_text())


def operator_config(values: dict[str, Any]) -> OperatorConfig:
    return OperatorConfig.from_env(env_of(one(render_chart(values), "Deployment")))


def worker_job(config: OperatorConfig) -> dict[str, Any]:
    return render(config.worker)


def test_by_default_worker_caches_are_limited_and_their_disk_requested() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["workers"]["cache"]
    job = worker_job(operator_config({}))
    pod = job["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache == {"name": "cache", "emptyDir": {"sizeLimit": defaults["sizeLimit"]}}
    requests = pod["containers"][0]["resources"]["requests"]
    assert requests["ephemeral-storage"] == defaults["ephemeralStorage"]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert_restricted(job, writable=("/tmp", "/cache"))


def test_no_limit_and_no_request_when_the_values_are_emptied() -> None:
    job = worker_job(operator_config({"workers": {"cache": {"sizeLimit": "", "ephemeralStorage": ""}}}))
    pod = job["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "cache") == {"name": "cache", "emptyDir": {}}
    assert "ephemeral-storage" not in pod["containers"][0]["resources"]["requests"]


def test_a_shared_cache_claim_a_read_only_model_store_and_tracking_reach_worker_pods() -> None:
    config = operator_config(GPU_VALUES)
    job = worker_job(config)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    workers = GPU_VALUES["workers"]
    assert volumes["cache"] == {"name": "cache", **workers["cache"]["volume"]}
    assert volumes["models"] == workers["extraVolumes"][0]
    (container,) = pod["containers"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    for var in workers["extraEnv"]:
        assert env[var["name"]] == var
    assert container["resources"]["requests"]["ephemeral-storage"] == "10Gi"
    assert container["image"] == "registry.example.com/ml/synthrec:0.1.0-cu128"


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"operator": {"extraEnv": [{"value": "UTC"}]}}, "/operator/extraEnv/0"),
        ({"workers": {"extraEnv": [{"valueFrom": {"secretKeyRef": {"name": "w"}}}]}}, "/workers/extraEnv/0"),
        ({"workers": {"extraEnv": [{"name": "WANDB_MODE", "value": True}]}}, "/workers/extraEnv/0/value"),
        ({"workers": {"extraEnv": [{"name": "1PASSWORD", "value": "x"}]}}, "/workers/extraEnv/0/name"),
        (
            {"workers": {"extraEnv": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {}}}]}},
            "/workers/extraEnv/0",
        ),
        ({"operator": {"extraEnv": [{"name": "A", "valueFrom": {}}]}}, "/operator/extraEnv/0/valueFrom"),
        ({"workers": {"cache": {"sizeLimit": "50 GB"}}}, "/workers/cache/sizeLimit"),
        ({"workers": {"cache": {"ephemeralStorage": 20}}}, "/workers/cache/ephemeralStorage"),
        ({"workers": {"cache": {"volume": {"name": "c", "emptyDir": {}}}}}, "/workers/cache/volume"),
        ({"workers": {"cache": {"size": "50Gi"}}}, "/workers/cache"),
        (
            {"workers": {"extraVolumes": [{"persistentVolumeClaim": {"claimName": "m"}}]}},
            "/workers/extraVolumes/0",
        ),
        (
            {"workers": {"extraVolumeMounts": [{"name": "m", "mountPath": "models"}]}},
            "/workers/extraVolumeMounts/0",
        ),
    ],
)
def test_values_schema_rejects_bad_env_and_volumes(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        render_manifests(values)
    assert f"at '{where}" in str(err.value)
    assert lint_chart(values)["errors"], "helm lint must report the schema violation as an error"


def test_an_env_var_with_a_value_or_a_secret_reference_is_accepted() -> None:
    values = {
        "operator": {"extraEnv": [{"name": "TZ", "value": "UTC"}]},
        "workers": {
            "extraEnv": [
                {"name": "WANDB_MODE", "value": "offline"},
                {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}},
            ]
        },
    }
    env = env_of(one(render_chart(values), "Deployment"))
    assert env["TZ"] == "UTC"
    assert json.loads(env["SYNTHREC_WORKER_ENV"]) == values["workers"]["extraEnv"]


def test_a_liveness_port_equal_to_the_metrics_port_is_refused() -> None:
    clash = {"operator": {"livenessPort": 9090}, "metrics": {"port": 9090}}
    with pytest.raises(helm_python.HelmError, match=r"operator.livenessPort and metrics.port are both 9090"):
        render_manifests(clash)
    # JSON Schema cannot compare two values, so the rule is a template `fail`, which `helm lint` only logs
    # (Helm's lint mode); the operator refuses the same clash when it starts without the chart.
    with pytest.raises(SettingsError, match="SYNTHREC_METRICS_PORT and SYNTHREC_LIVENESS_PORT are both 9090"):
        OperatorConfig.from_env({"SYNTHREC_METRICS_PORT": "9090", "SYNTHREC_LIVENESS_PORT": "9090"})
    # Without metrics there is no second port to clash with.
    objects = render_chart({**clash, "metrics": {"enabled": False, "port": 9090}})
    ports = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [p["containerPort"] for p in ports] == [9090]
