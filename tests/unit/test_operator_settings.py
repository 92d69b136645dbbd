"""Operator configuration from the environment, Kopf settings, metrics and `synthrec operator`."""

from __future__ import annotations

import logging
import subprocess
import sys

import kopf
import pytest

from synthrec.cli import main
from synthrec.operator.metrics import Metrics
from synthrec.operator.settings import FINALIZER, OperatorConfig, SettingsError, configure_kopf


def test_defaults_without_environment() -> None:
    config = OperatorConfig.from_env({})
    assert config.clusterwide and config.namespaces == ()
    assert (config.status_interval, config.metrics_port, config.liveness_port) == (5.0, 8080, 8081)
    assert config.worker.image.startswith("ghcr.io/") and config.worker.queue_name is None


def test_every_contract_variable_is_read() -> None:
    env = {
        "SYNTHREC_NAMESPACES": "team-a, team-b",
        "SYNTHREC_WORKER_IMAGE": "registry.example/synthrec:1",
        "SYNTHREC_WORKER_IMAGE_PULL_POLICY": "IfNotPresent",
        "SYNTHREC_WORKER_SERVICE_ACCOUNT": "synthrec-worker",
        "SYNTHREC_DEFAULT_QUEUE": "team-queue",
        "SYNTHREC_GPU_RESOURCE": "nvidia.com/mig-1g.10gb",
        "SYNTHREC_S3_ENDPOINT": "http://minio:9000",
        "SYNTHREC_S3_SECRET": "s3-creds",
        "SYNTHREC_HF_TOKEN_SECRET": "hf-token",
        "SYNTHREC_WORKER_NODE_SELECTOR": '{"gpu": "a100"}',
        "SYNTHREC_WORKER_TOLERATIONS": '[{"key": "gpu", "operator": "Exists"}]',
        "SYNTHREC_STATUS_INTERVAL": "2.5",
        "SYNTHREC_METRICS_PORT": "0",
        "SYNTHREC_LIVENESS_PORT": "9000",
    }
    config = OperatorConfig.from_env(env)
    worker = config.worker
    assert config.namespaces == ("team-a", "team-b") and not config.clusterwide
    assert (worker.image, worker.image_pull_policy, worker.service_account) == (
        "registry.example/synthrec:1",
        "IfNotPresent",
        "synthrec-worker",
    )
    assert (worker.queue_name, worker.gpu_resource, worker.s3_endpoint) == (
        "team-queue",
        "nvidia.com/mig-1g.10gb",
        "http://minio:9000",
    )
    assert (worker.s3_secret, worker.hf_token_secret) == ("s3-creds", "hf-token")
    assert worker.node_selector == {"gpu": "a100"}
    assert worker.tolerations == [{"key": "gpu", "operator": "Exists"}]
    assert (config.status_interval, config.metrics_port, config.liveness_port) == (2.5, 0, 9000)


def test_leader_election_is_on_by_default_and_configurable() -> None:
    default = OperatorConfig.from_env({})
    assert default.leader_election and default.lease_name == "synthrec-operator"
    assert (default.lease_duration, default.lease_renew_deadline, default.lease_retry_period) == (15, 10, 2)
    config = OperatorConfig.from_env(
        {
            "SYNTHREC_LEADER_ELECTION": "false",
            "SYNTHREC_LEASE_NAME": "ml-operator",
            "SYNTHREC_LEASE_NAMESPACE": "ml",
            "SYNTHREC_LEASE_DURATION": "30",
            "SYNTHREC_LEASE_RENEW_DEADLINE": "20",
            "SYNTHREC_LEASE_RETRY_PERIOD": "4",
            "SYNTHREC_CLEANUP_TIMEOUT": "600",
        }
    )
    assert not config.leader_election and (config.lease_name, config.lease_namespace) == ("ml-operator", "ml")
    assert (config.lease_duration, config.lease_renew_deadline, config.lease_retry_period) == (30, 20, 4)
    assert config.cleanup_timeout == 600


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SYNTHREC_WORKER_NODE_SELECTOR": "{gpu: a100}"}, "SYNTHREC_WORKER_NODE_SELECTOR is not valid JSON"),
        ({"SYNTHREC_WORKER_TOLERATIONS": '{"key": "x"}'}, "SYNTHREC_WORKER_TOLERATIONS must be a JSON list"),
        ({"SYNTHREC_STATUS_INTERVAL": "fast"}, "SYNTHREC_STATUS_INTERVAL='fast' is not a number"),
        ({"SYNTHREC_METRICS_PORT": "-1"}, "SYNTHREC_METRICS_PORT='-1' must be at least 0"),
        ({"SYNTHREC_WORKER_IMAGE_PULL_POLICY": "Sometimes"}, "expected one of Always, IfNotPresent, Never"),
        ({"SYNTHREC_LEADER_ELECTION": "maybe"}, "SYNTHREC_LEADER_ELECTION='maybe': expected true or false"),
        ({"SYNTHREC_LEASE_RENEW_DEADLINE": "20"}, "the leader must stop before the Lease expires"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("[", r"\[")):
        OperatorConfig.from_env(env)


def test_kopf_settings_are_ours() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings, OperatorConfig.from_env({"SYNTHREC_NAMESPACES": "team-a"}))
    assert settings.peering.standalone is True
    assert settings.persistence.finalizer == FINALIZER == "synthrec.io/finalizer"
    assert settings.persistence.progress_storage.prefix == "synthrec.io"
    assert settings.persistence.diffbase_storage.prefix == "synthrec.io"
    assert settings.posting.level == logging.WARNING
    assert settings.scanning.disabled is True  # namespaced: no cluster-wide discovery
    assert settings.networking.request_timeout == 30.0
    selectors = {str(k): v for k, v in settings.watching.label_selectors.items()}
    assert set(selectors.values()) == {"app.kubernetes.io/managed-by=synthrec"} and len(selectors) == 2
    clusterwide = kopf.OperatorSettings()
    configure_kopf(clusterwide, OperatorConfig.from_env({}))
    assert clusterwide.scanning.disabled is False


def test_metrics_are_exposed_in_the_prometheus_format() -> None:
    metrics = Metrics()
    metrics.reconciles.labels("SyntheticDataset", "ok").inc()
    metrics.jobs_created.labels("SyntheticDataset", "generate").inc(2)
    metrics.watch_event()
    text = metrics.exposition().decode()
    assert 'synthrec_operator_reconciles_total{kind="SyntheticDataset",result="ok"} 1.0' in text
    assert 'synthrec_operator_jobs_created_total{kind="SyntheticDataset",stage="generate"} 2.0' in text
    for name in (
        "status_patches_total",
        "shards_done_total",
        "shards_failed_total",
        "last_watch_event_timestamp_seconds",
        "reconcile_seconds",
    ):
        assert f"synthrec_operator_{name}" in text


def test_the_operator_command_documents_itself() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "synthrec.cli", "operator", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--namespace",
        "--liveness",
        "--metrics-port",
        "--verbose",
        "examples:",
        "synthrec operator",
    ):
        assert flag in out


def test_the_operator_command_refuses_a_bad_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SYNTHREC_WORKER_TOLERATIONS", "not json")
    assert main(["operator"]) == 2
    assert "SYNTHREC_WORKER_TOLERATIONS is not valid JSON" in capsys.readouterr().err


def test_metrics_are_served_over_http() -> None:
    import urllib.request

    metrics = Metrics()
    metrics.status_patches.labels("SyntheticDataset").inc()
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        metrics.stop()
    assert 'synthrec_operator_status_patches_total{kind="SyntheticDataset"} 1.0' in text
