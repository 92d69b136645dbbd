"""helm/synthrec: renders (default, namespaced, custom values), lints, enforces its schema, validates
strictly against Kubernetes 1.33, carries the generated CRDs unchanged, and grants the operator exactly
the API access it uses.

Rendering uses Helm's own library (helm-python-sdk 0.2.2 = Helm SDK v4), offline, as `helm install` would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.harness.chart import (
    CHART,
    K8S_VERSION,
    NAMESPACE,
    ROOT,
    allows,
    env_of,
    grants,
    notes,
    of_kind,
    one,
    operator_roles,
    render_chart,
    render_manifests,
)

helm_python = pytest.importorskip("helm_python")

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Namespace"}

# The operator's settings (/work/contracts.md; operator/settings.py reads them).
CONTRACT_ENV = {
    "SYNTHREC_NAMESPACES",
    "SYNTHREC_WORKER_IMAGE",
    "SYNTHREC_WORKER_IMAGE_PULL_POLICY",
    "SYNTHREC_WORKER_SERVICE_ACCOUNT",
    "SYNTHREC_DEFAULT_QUEUE",
    "SYNTHREC_GPU_RESOURCE",
    "SYNTHREC_S3_ENDPOINT",
    "SYNTHREC_S3_SECRET",
    "SYNTHREC_HF_TOKEN_SECRET",
    "SYNTHREC_WORKER_NODE_SELECTOR",
    "SYNTHREC_WORKER_TOLERATIONS",
    "SYNTHREC_STATUS_INTERVAL",
    "SYNTHREC_METRICS_PORT",
    "SYNTHREC_LIVENESS_PORT",
    "SYNTHREC_WORKER_CACHE_SIZE_LIMIT",
    "SYNTHREC_WORKER_CACHE_VOLUME",
    "SYNTHREC_WORKER_EPHEMERAL_STORAGE",
    "SYNTHREC_WORKER_VOLUMES",
    "SYNTHREC_WORKER_VOLUME_MOUNTS",
    "SYNTHREC_WORKER_ENV",
    "SYNTHREC_LEADER_ELECTION",
    "SYNTHREC_LEASE_NAME",
    "SYNTHREC_LEASE_NAMESPACE",
    "SYNTHREC_LEASE_DURATION",
    "SYNTHREC_LEASE_RENEW_DEADLINE",
    "SYNTHREC_LEASE_RETRY_PERIOD",
}
# Set by the chart for the process itself, not settings of the contract.
PROCESS_ENV = {"HOME", "XDG_CACHE_HOME", "POD_NAME", "POD_NAMESPACE"}

# What the operator may do (the calls tests/operator_api_calls.json records, see below), never Secrets.
OPERATOR_GRANTS = {
    *{
        (v, "synthrec.io", r, "")
        for r in ("syntheticdatasets", "recognitionexperiments")
        for v in ("get", "list", "watch", "patch")
    },
    *{
        (v, "synthrec.io", r, "status")
        for r in ("syntheticdatasets", "recognitionexperiments")
        for v in ("patch",)
    },
    # blockOwnerDeletion on children (OwnerReferencesPermissionEnforcement checks update on finalizers)
    *{("update", "synthrec.io", r, "finalizers") for r in ("syntheticdatasets", "recognitionexperiments")},
    *{(v, "batch", "jobs", "") for v in ("get", "list", "watch", "create", "patch", "delete")},
    *{(v, "", "configmaps", "") for v in ("get", "create", "update", "delete")},
    *{(v, "", "services", "") for v in ("create", "delete")},  # headless Services of multi-node Jobs
    *{(v, "", "pods", "") for v in ("list", "watch")},
    ("create", "", "events", ""),
}
# Cluster-wide Kopf (scanning enabled) watches CRDs; with a namespace list it would also list namespaces,
# but cluster mode watches all namespaces, so it never does (kopf/_core/reactor/observation.py).
CLUSTER_ONLY_GRANTS = {
    (v, "apiextensions.k8s.io", "customresourcedefinitions", "") for v in ("list", "watch")
}
# Leader election, in the release namespace whatever the scope: create any Lease, read and renew only ours.
LEASE_NAME = "synthrec-operator"  # FULLNAME-operator
LEASE_GRANTS = {(v, "coordination.k8s.io", "leases", "") for v in ("create", "get", "update")}


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def validate_strict(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# ------------------------------------------------------------------------------------------ rendering


def test_default_values_render_the_operator_with_cluster_rbac_and_crds() -> None:
    objects = render_chart()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 2
        + ["Deployment", "Service", "ServiceAccount", "ServiceAccount"]
        + ["ClusterRole"] * 3
        + ["ClusterRoleBinding", "Role", "RoleBinding"]  # the Role: leader election
    )
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["synthrec", "operator"]
    assert container["image"] == "synthrec:0.1.0"  # the chart's appVersion
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["port"] == "liveness" and ports == {"metrics": 8080, "liveness": 8081}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == "synthrec-operator"
    env = env_of(deployment)
    assert env["SYNTHREC_NAMESPACES"] == ""  # every namespace
    assert env["SYNTHREC_WORKER_IMAGE"] == "synthrec:0.1.0"
    assert env["SYNTHREC_WORKER_SERVICE_ACCOUNT"] == "synthrec-worker"
    assert env["SYNTHREC_GPU_RESOURCE"] == "nvidia.com/gpu"
    assert env["SYNTHREC_S3_SECRET"] == "synthrec-s3"
    assert json.loads(env["SYNTHREC_WORKER_NODE_SELECTOR"]) == {}
    assert json.loads(env["SYNTHREC_WORKER_TOLERATIONS"]) == []
    assert (env["SYNTHREC_METRICS_PORT"], env["SYNTHREC_LIVENESS_PORT"]) == ("8080", "8081")
    assert env["SYNTHREC_STATUS_INTERVAL"] == "5"
    # Unset optional defaults are left out rather than set to "".
    assert not {"SYNTHREC_DEFAULT_QUEUE", "SYNTHREC_S3_ENDPOINT", "SYNTHREC_HF_TOKEN_SECRET"} & set(env)
    assert set(env) - PROCESS_ENV <= CONTRACT_ENV
    assert env["SYNTHREC_LEADER_ELECTION"] == "true" and env["SYNTHREC_LEASE_NAME"] == LEASE_NAME
    assert env["SYNTHREC_LEASE_NAMESPACE"] == NAMESPACE


def test_custom_values_set_every_operator_setting_of_the_contract() -> None:
    values = load_values(CHART / "ci" / "gpu-cluster-values.yaml")
    objects = render_chart(values)
    deployment = one(objects, "Deployment")
    env = env_of(deployment)
    assert set(env) >= CONTRACT_ENV, f"missing: {sorted(CONTRACT_ENV - set(env))}"
    digest = values["image"]["digest"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"registry.example.com/ml/synthrec@{digest}"
    )
    assert env["SYNTHREC_WORKER_IMAGE"] == "registry.example.com/ml/synthrec:0.1.0-cu128"
    assert env["SYNTHREC_WORKER_IMAGE_PULL_POLICY"] == "Always"
    assert env["SYNTHREC_DEFAULT_QUEUE"] == "gpu-batch"
    assert env["SYNTHREC_S3_ENDPOINT"] == "http://minio.minio.svc:9000"
    assert env["SYNTHREC_HF_TOKEN_SECRET"] == "hf-token"
    assert json.loads(env["SYNTHREC_WORKER_NODE_SELECTOR"]) == {"nvidia.com/gpu.present": "true"}
    assert json.loads(env["SYNTHREC_WORKER_TOLERATIONS"]) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert (env["SYNTHREC_METRICS_PORT"], env["SYNTHREC_STATUS_INTERVAL"], env["TZ"]) == ("9090", "10", "UTC")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # The operator holds no storage credentials at all: artifacts are deleted by a Job in the resource's
    # namespace, with that namespace's Secret.
    assert not [e for e in container["env"] if "secretKeyRef" in (e.get("valueFrom") or {})]
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
    workers = [sa for sa in of_kind(objects, "ServiceAccount") if sa["metadata"]["name"] == "synthrec-worker"]
    assert sorted(sa["metadata"]["namespace"] for sa in workers) == [NAMESPACE, "team-nlp", "team-vision"]
    for sa in workers:
        assert sa["automountServiceAccountToken"] is False
        assert sa["metadata"]["annotations"] == values["workers"]["serviceAccount"]["annotations"]


def test_namespaced_mode_creates_a_role_per_watched_namespace_and_nothing_cluster_wide() -> None:
    values = load_values(CHART / "ci" / "namespaced-values.yaml")
    objects = render_chart(values)
    assert not [o["kind"] for o in objects if o["kind"] in CLUSTER_SCOPED]
    watched = values["watchNamespaces"]
    roles = [r for r in of_kind(objects, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    for binding in of_kind(objects, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "synthrec-operator", "namespace": NAMESPACE}
        ]
    assert env_of(one(objects, "Deployment"))["SYNTHREC_NAMESPACES"] == ",".join(watched)
    workers = of_kind(objects, "ServiceAccount")
    assert sorted(
        sa["metadata"]["namespace"] for sa in workers if "worker" in sa["metadata"]["name"]
    ) == sorted(watched)
    assert env_of(one(objects, "Deployment"))["SYNTHREC_METRICS_PORT"] == "0"  # metrics.enabled: false
    assert not of_kind(objects, "Service")


def test_namespaced_mode_defaults_to_the_release_namespace() -> None:
    objects = render_chart({"rbac": {"scope": "namespaced"}}, namespace="ml")
    assert [r["metadata"]["namespace"] for r in of_kind(objects, "Role")] == ["ml", "ml"]  # + the Lease's
    assert env_of(one(objects, "Deployment"))["SYNTHREC_NAMESPACES"] == "ml"


def test_watch_namespaces_with_cluster_scope_is_refused_with_a_hint() -> None:
    with pytest.raises(
        helm_python.HelmError, match=r"watchNamespaces \(team-a\) is only for rbac.scope=namespaced"
    ):
        render_chart({"watchNamespaces": ["team-a"]})


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_the_operator_reads_the_environment_the_chart_sets(path: Path) -> None:
    settings = pytest.importorskip("synthrec.operator.settings", reason="operator/settings.py (issue 5)")
    values = load_values(path)
    objects = render_chart(values)
    env = env_of(one(objects, "Deployment"))
    config = settings.OperatorConfig.from_env(env)  # raises SettingsError naming a bad variable
    assert config.namespaces == tuple(values.get("watchNamespaces", ()))
    workers = values.get("workers", {})
    assert config.worker.queue_name == (workers.get("queueName") or None)
    assert config.worker.node_selector == workers.get("nodeSelector", {})
    assert config.worker.tolerations == workers.get("tolerations", [])
    assert config.worker.service_account == "synthrec-worker"
    assert config.worker.image == env["SYNTHREC_WORKER_IMAGE"]
    assert config.metrics_port == (values["metrics"]["port"] if values["metrics"]["enabled"] else 0)
    assert config.liveness_port == 8081
    assert config.leader_election and config.lease_name == LEASE_NAME
    assert config.lease_namespace == NAMESPACE
    assert config.lease_retry_period < config.lease_renew_deadline < config.lease_duration


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_every_rendered_object_is_valid_kubernetes_1_33_strict(path: Path) -> None:
    for values in ({}, load_values(path)):
        for obj in render_chart(values):
            if obj["kind"] == "ServiceMonitor":
                continue  # a Prometheus Operator CRD: checked against the Service below
            validate_strict(obj)


def test_the_service_monitor_scrapes_the_metrics_service() -> None:
    objects = render_chart(load_values(CHART / "ci" / "gpu-cluster-values.yaml"))
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == ("/metrics", "15s", "5s")
    with pytest.raises(helm_python.HelmError, match=r"needs metrics\.enabled=true"):
        render_chart({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})


def test_the_network_policy_admits_only_metrics_scrapes() -> None:
    values = load_values(CHART / "ci" / "gpu-cluster-values.yaml")
    objects = render_chart(values)
    (policy,) = [n for n in of_kind(objects, "NetworkPolicy") if n["metadata"]["name"] == "synthrec-operator"]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [
        {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": values["networkPolicy"]["metricsFrom"]}
    ]
    assert policy["spec"]["egress"] == values["networkPolicy"]["egress"]
    ingress_only = one(render_chart({"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    assert ingress_only["spec"]["policyTypes"] == ["Ingress"]


def test_notes_tell_the_user_what_to_apply_next() -> None:
    text = notes({"modelHub": {"tokenSecret": "hf-token"}, "s3": {"bucket": "ml-data"}})
    assert "create secret generic synthrec-s3" in text and "AWS_SECRET_ACCESS_KEY" in text
    assert "create secret generic hf-token --from-literal=HF_TOKEN" in text
    assert "apply -f examples/eurosat-zero-shot.yaml" in text
    assert "get sds,rexp" in text and "wait --for=condition=Complete" in text
    assert "s3://ml-data/datasets/" in text
    external = notes({"crds": {"install": False}, "rbac": {"scope": "namespaced"}}, namespace="ml")
    assert "kubectl apply --server-side -f crds/" in external
    assert "kubectl -n ml get sds,rexp" in external


# ------------------------------------------------------------------------------------------------ CRDs


def _committed_crds() -> dict[str, dict[str, Any]]:
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    return {c["metadata"]["name"]: c for c in crds}


def test_the_chart_renders_exactly_the_generated_crds_with_a_keep_policy() -> None:
    rendered = of_kind(render_chart(), "CustomResourceDefinition")
    committed = _committed_crds()
    assert sorted(c["metadata"]["name"] for c in rendered) == sorted(committed)
    for crd in rendered:
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {
            "helm.sh/resource-policy": "keep",
            "argocd.argoproj.io/sync-options": "ServerSideApply=true,Prune=false,Delete=false",
        }
        assert crd == committed[crd["metadata"]["name"]], "the chart's CRD differs from crds/"


def test_crds_come_from_crds_folder_through_a_symlink_not_a_copy() -> None:
    link = CHART / "files" / "crds"
    assert link.is_symlink() and link.resolve() == (ROOT / "crds").resolve()


def test_crd_toggles() -> None:
    assert not of_kind(render_chart({"crds": {"install": False}}), "CustomResourceDefinition")
    for crd in of_kind(render_chart({"crds": {"keep": False}}), "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"] == {"argocd.argoproj.io/sync-options": "ServerSideApply=true"}


# ------------------------------------------------------------------------------------------ lint, schema


def _lint(values: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return helm_python.lint(str(CHART), values or {}, namespace=NAMESPACE, kube_version="v1.33.0", **kw)


@pytest.mark.parametrize("path", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_is_clean(path: Path | None) -> None:
    report = _lint(load_values(path) if path else None)
    assert report["errors"] == []
    # The only finding left is informational: Chart.yaml has no icon (there is no published logo).
    assert [(m["severity"], m["error"]) for m in report["messages"]] == [(1, "icon is recommended")]


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"rbac": {"scope": "cluster-wide"}}, "/rbac/scope"),
        ({"operator": {"replicas": -1}}, "/operator/replicas"),
        ({"operator": {"leaderElection": {"leaseDuration": 0}}}, "/operator/leaderElection/leaseDuration"),
        ({"operator": {"replicas": "1"}}, "/operator/replicas"),
        ({"operator": {"statusIntervall": 5}}, "/operator"),  # a typo is an error, not ignored
        ({"imagePullPolicy": "Always"}, ""),  # unknown top-level key
        ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        (
            {"workers": {"tolerations": [{"key": "gpu", "effect": "NoSchedul"}]}},
            "/workers/tolerations/0/effect",
        ),
        ({"workers": {"gpuResource": "gpu"}}, "/workers/gpuResource"),
        ({"workers": {"nodeSelector": {"gpu": True}}}, "/workers/nodeSelector/gpu"),
        ({"s3": {"endpoint": "minio:9000"}}, "/s3/endpoint"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"metrics": {"serviceMonitor": {"interval": "30"}}}, "/metrics/serviceMonitor/interval"),
        ({"crds": {"keep": "yes"}}, "/crds/keep"),
    ],
)
def test_values_that_violate_the_schema_are_rejected(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        render_manifests(values)
    assert f"at '{where}'" in str(err.value)
    report = _lint(values)
    assert report["errors"], "helm lint must report the schema violation as an error"


def test_every_value_is_typed_and_described() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        assert "type" in node, f"{path or '/'}: no type in values.schema.json"
        if path:
            assert node.get("description"), f"{path}: no description in values.schema.json"
        if isinstance(value, dict) and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: unknown keys must be rejected"
            assert set(value) <= set(node["properties"]), f"{path}: keys without a schema"
            for key, sub in value.items():
                walk(sub, node["properties"][key], f"{path}/{key}")

    walk(defaults, schema, "")
    assert set(schema["properties"]) - {"global"} == set(defaults), (
        "schema keys without a default in values.yaml"
    )


# ------------------------------------------------------------------------------------------------ RBAC


def split_roles(objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The operator's Roles/ClusterRoles, and apart from them its leader election Role."""
    roles = operator_roles(objects)
    lease = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    assert len(lease) == 1 and lease[0]["kind"] == "Role", "one leader election Role"
    return [r for r in roles if r not in lease], lease[0]


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_the_operator_gets_exactly_its_rules_and_never_secrets(scope: str) -> None:
    objects = render_chart(
        {"rbac": {"scope": scope}, "watchNamespaces": ["a", "b"] if scope == "namespaced" else []}
    )
    roles, lease = split_roles(objects)
    assert {r["kind"] for r in roles} == {"ClusterRole" if scope == "cluster" else "Role"}
    expected = OPERATOR_GRANTS | (CLUSTER_ONLY_GRANTS if scope == "cluster" else set())
    for role in [*roles, lease]:
        assert not allows(role["rules"], "get", "", "secrets")
        assert not allows(role["rules"], "create", "", "pods")  # Jobs create pods, never the operator
    for role in roles:
        assert grants(role["rules"]) == expected
    # The Lease lives in the release namespace; reading and renewing are limited to the operator's own.
    assert lease["metadata"]["namespace"] == NAMESPACE
    assert grants(lease["rules"]) == LEASE_GRANTS
    for verb in ("get", "update"):
        assert not allows(lease["rules"], verb, "coordination.k8s.io", "leases")
        assert allows(lease["rules"], verb, "coordination.k8s.io", "leases", name=LEASE_NAME)


def test_without_leader_election_there_is_no_lease_role_and_only_one_replica() -> None:
    objects = render_chart({"operator": {"leaderElection": {"enabled": False}}})
    assert not of_kind(objects, "Role")
    assert env_of(one(objects, "Deployment"))["SYNTHREC_LEADER_ELECTION"] == "false"
    with pytest.raises(helm_python.HelmError, match=r"replicas > 1 needs operator\.leaderElection\.enabled"):
        render_chart({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}})
    with pytest.raises(helm_python.HelmError, match=r"retryPeriod < renewDeadline < leaseDuration"):
        render_chart({"operator": {"leaderElection": {"renewDeadline": 20}}})


def test_worker_pods_get_no_api_token_and_the_operator_needs_its_own() -> None:
    objects = render_chart()
    worker = next(
        sa for sa in of_kind(objects, "ServiceAccount") if sa["metadata"]["name"] == "synthrec-worker"
    )
    assert worker["automountServiceAccountToken"] is False
    assert not [
        b
        for b in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding")
        if any(s["name"] == "synthrec-worker" for s in b["subjects"])
    ]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


# The operator's tests (issue 5) record every API request they make (RealisticEmulator.api_calls()) into
# tests/operator_api_calls.json (tests/integration/test_operator_*.py with SYNTHREC_UPDATE_API_CALLS=1):
#   {"calls": [{"verb", "apiGroup", "resource", "subresource", "scope": "namespaced" | "cluster"}, ...]}
API_CALLS_FILE = Path(os.environ.get("SYNTHREC_API_CALLS_JSON", ROOT / "tests" / "operator_api_calls.json"))
# Grants the recorded runs do not exercise, each with the reason it stays.
UNEXERCISED_GRANTS: dict[tuple[str, str, str, str], str] = {
    # operator/handlers.py registers the same onDelete=Delete handler (and so finalizer) for both kinds;
    # only the dataset's is exercised (scenario 'delete-artifacts').
    ("patch", "synthrec.io", "recognitionexperiments", ""): "the finalizer of spec.output.onDelete=Delete",
    # Re-reading a resource after its conditional status write met a newer version (409): one code path for
    # both kinds, exercised for datasets ('leader-election' scenario).
    ("get", "synthrec.io", "recognitionexperiments", ""): "re-read after a 409 on an experiment's status",
}


def _recorded_calls() -> list[tuple[str, str, str, str, bool]]:
    """(verb, group, resource, subresource, namespaced) of every recorded operator API request."""
    if not API_CALLS_FILE.exists():
        pytest.skip(
            f"{API_CALLS_FILE} is missing: the operator's end-to-end tests must record the API calls they "
            "make (RealisticEmulator.api_calls()) there for this comparison"
        )
    calls = json.loads(API_CALLS_FILE.read_text())["calls"]
    if not calls:
        pytest.skip(f"{API_CALLS_FILE} records no API calls yet")
    return [
        (e["verb"], e["apiGroup"], e["resource"], e.get("subresource") or "", e["scope"] == "namespaced")
        for e in calls
    ]


def rbac_gaps(
    rules: list[dict[str, Any]], calls: list[tuple[str, str, str, str, bool]], scope: str
) -> tuple[set[tuple[str, str, str, str]], set[tuple[str, str, str, str]]]:
    """(calls the rules do not grant, grants no call uses and UNEXERCISED_GRANTS does not explain)."""
    used, missing = set(), set()
    for verb, group, resource, subresource, namespaced in calls:
        key = (verb, group, resource, subresource)
        if (
            scope == "namespaced"
            and not namespaced
            and resource in ("customresourcedefinitions", "namespaces")
        ):
            continue  # Kopf's cluster scanning, disabled in namespaced mode
        # The operator reads and renews one Lease only (test_operator_leader.py checks the name it uses).
        name = LEASE_NAME if resource == "leases" else None
        (used if allows(rules, *key, name=name) else missing).add(key)
    return missing, grants(rules) - used - set(UNEXERCISED_GRANTS)


def test_the_rbac_comparison_finds_missing_and_unused_grants() -> None:
    rules = [r for role in operator_roles(render_chart()) for r in role["rules"]]
    everything = [(*g, True) for g in grants(rules)]
    assert rbac_gaps(rules, everything, "cluster") == (set(), set())
    missing, unused = rbac_gaps(rules, [*everything[1:], ("get", "", "secrets", "", True)], "cluster")
    assert missing == {("get", "", "secrets", "")}
    assert unused == {everything[0][:4]} - set(UNEXERCISED_GRANTS)
    crd_watch = ("watch", "apiextensions.k8s.io", "customresourcedefinitions", "", False)
    ns_rules = [
        r for role in operator_roles(render_chart({"rbac": {"scope": "namespaced"}})) for r in role["rules"]
    ]
    assert crd_watch[:4] not in rbac_gaps(ns_rules, [crd_watch], "namespaced")[0]


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_rbac_covers_every_api_call_of_the_operator_end_to_end_test_and_no_more(scope: str) -> None:
    calls = _recorded_calls()
    rules = [
        rule for role in operator_roles(render_chart({"rbac": {"scope": scope}})) for rule in role["rules"]
    ]
    missing, unused = rbac_gaps(rules, calls, scope)
    assert not missing, f"{scope}: the operator makes API calls its RBAC does not grant: {sorted(missing)}"
    assert not unused, f"{scope}: granted but never used by the operator: {sorted(unused)}"
