"""The chart's optional tenant limits: a ValidatingAdmissionPolicy that restricts the image, ServiceAccount
and endpoints a resource may choose, and a NetworkPolicy that keeps worker pods from the node's metadata
service. Rendered with Helm's own library, validated with kubernetes-validate (1.33, strict); the policy's
CEL is evaluated with cel-rust against sample resources, the NetworkPolicy's egress rule with ipaddress."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import cel
import kubernetes_validate
import pytest
import yaml

from synthrec.operator.jobs import CLEANUP_STAGE, Owner, child_labels
from tests.harness.chart import K8S_VERSION, NAMESPACE, ROOT, of_kind, one, render_chart

pytest.importorskip("helm_python")

ENABLED = {
    "admissionPolicy": {
        "enabled": True,
        "allowedImages": ["registry.example.com/ml/", "ghcr.io/acme/synthrec"],
        "allowedServiceAccounts": ["gpu-workers"],
        "allowedEndpoints": ["https://s3.example.com"],
        "namespaceSelector": {"matchLabels": {"synthrec.io/tenant": "true"}},
    },
    "s3": {"endpoint": "http://minio.minio.svc:9000"},
    "workers": {"networkPolicy": {"enabled": True}, "serviceAccount": {"namespaces": ["team-a"]}},
}
EXAMPLES = ROOT / "examples"


def policy_and_binding(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    objects = render_chart(values)
    return one(objects, "ValidatingAdmissionPolicy"), one(objects, "ValidatingAdmissionPolicyBinding")


def admit(policy: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """The messages of the validations ``obj`` fails, as the API server's CEL admission computes them:
    the variables first, then each validation with ``object`` and ``variables`` bound."""
    spec = policy["spec"]
    variables: dict[str, Any] = {}
    for variable in spec.get("variables") or []:
        variables[variable["name"]] = cel.evaluate(
            variable["expression"], {"object": obj, "variables": variables}
        )
    failed = []
    for validation in spec["validations"]:
        allowed = cel.evaluate(validation["expression"], {"object": obj, "variables": variables})
        assert isinstance(allowed, bool), validation["expression"]
        if not allowed:
            failed.append(validation["message"])
    return failed


def examples() -> list[dict[str, Any]]:
    """Every SyntheticDataset and RecognitionExperiment the repository ships as an example."""
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in ("SyntheticDataset", "RecognitionExperiment"):
                found.append(doc)
    assert found
    return found


def with_spec(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    changed = copy.deepcopy(obj)
    for path, value in changes.items():
        node = changed["spec"]
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return changed


def test_both_are_off_by_default() -> None:
    objects = render_chart()
    assert not of_kind(objects, "ValidatingAdmissionPolicy")
    assert not of_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert not [n for n in of_kind(objects, "NetworkPolicy") if n["metadata"]["name"].endswith("-workers")]


def test_the_policy_and_its_binding_are_valid_and_match_both_kinds_on_create_and_update() -> None:
    policy, binding = policy_and_binding(ENABLED)
    for obj in (policy, binding):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["synthrec.io"] and set(rule["operations"]) == {"CREATE", "UPDATE"}
    assert set(rule["resources"]) == {"syntheticdatasets", "recognitionexperiments"}
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert (
        binding["spec"]["matchResources"]["namespaceSelector"]
        == ENABLED["admissionPolicy"]["namespaceSelector"]
    )


def test_the_shipped_examples_and_the_charts_own_defaults_pass() -> None:
    policy, _ = policy_and_binding(ENABLED)
    for obj in examples():
        assert admit(policy, obj) == [], obj["metadata"]["name"]
    sample = examples()[0]
    for allowed in (
        with_spec(sample, scheduling__image="synthrec:0.1.0-cu128"),  # the chart's worker repository
        with_spec(sample, scheduling__image="registry.example.com/ml/synthrec:1.2"),
        with_spec(sample, scheduling__image="ghcr.io/acme/synthrec@sha256:" + "a" * 64),
        with_spec(sample, scheduling__serviceAccountName="synthrec-worker"),
        with_spec(sample, scheduling__serviceAccountName="gpu-workers"),
        with_spec(sample, output__endpoint="http://minio.minio.svc:9000"),  # s3.endpoint
        with_spec(
            sample, output__endpoint="https://s3.example.com", modelHub__endpoint="https://s3.example.com"
        ),
    ):
        assert admit(policy, allowed) == [], allowed["spec"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scheduling__image": "evil.example.com/miner:latest"}, "spec.scheduling.image must be"),
        ({"scheduling__image": "registry.example.com/ml-evil/x:1"}, "spec.scheduling.image must be"),
        ({"scheduling__image": "ghcr.io/acme/synthrec-evil:1"}, "spec.scheduling.image must be"),
        ({"scheduling__image": "synthrecx:1"}, "spec.scheduling.image must be"),
        (
            {"scheduling__serviceAccountName": "cluster-admin-sa"},
            "spec.scheduling.serviceAccountName must be",
        ),
        ({"output__endpoint": "http://attacker.example:9000"}, "spec.output.endpoint must be one of"),
        ({"modelHub__endpoint": "https://hub.attacker.example"}, "spec.modelHub.endpoint must be one of"),
    ],
)
def test_a_resource_outside_the_lists_is_denied_with_a_message(change: dict[str, Any], message: str) -> None:
    policy, _ = policy_and_binding(ENABLED)
    for sample in examples()[:2]:
        failed = admit(policy, with_spec(sample, **change))
        assert len(failed) == 1 and failed[0].startswith(message), failed


def test_without_an_s3_endpoint_and_allowed_endpoints_no_endpoint_may_be_set() -> None:
    policy, _ = policy_and_binding({"admissionPolicy": {"enabled": True}})
    sample = examples()[0]
    assert admit(policy, sample) == []
    (message,) = admit(policy, with_spec(sample, output__endpoint="https://s3.amazonaws.com"))
    assert "(none: leave it unset)" in message


# --------------------------------------------------------------------------------- worker NetworkPolicy


def allowed_egress(policy: dict[str, Any], address: str) -> bool:
    """Whether the policy's egress rules let a pod reach ``address`` (any port), as the NetworkPolicy
    API defines ipBlock: inside ``cidr`` and outside every ``except``."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to") or []:
            block = peer.get("ipBlock")
            if block is None or ip.version != ipaddress.ip_network(block["cidr"]).version:
                continue
            if ip in ipaddress.ip_network(block["cidr"]) and not any(
                ip in ipaddress.ip_network(e) for e in block.get("except") or []
            ):
                return True
    return False


def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"]
    return all(labels.get(k) == v for k, v in wanted.items())


def worker_policies() -> list[dict[str, Any]]:
    return [
        n
        for n in of_kind(render_chart(ENABLED), "NetworkPolicy")
        if n["metadata"]["name"].endswith("-workers")
    ]


def test_the_worker_network_policy_blocks_the_metadata_service_and_nothing_else() -> None:
    policies = worker_policies()
    assert sorted(p["metadata"]["namespace"] for p in policies) == sorted([NAMESPACE, "team-a"])
    for policy in policies:
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
        assert policy["spec"]["policyTypes"] == ["Egress"]  # ingress untouched (multi-node stages)
        for blocked in ("169.254.169.254", "fd00:ec2::254"):
            assert not allowed_egress(policy, blocked)
        for allowed in ("10.96.0.10", "8.8.8.8", "169.254.169.253", "2001:db8::1"):
            assert allowed_egress(policy, allowed)


def test_the_worker_network_policy_selects_worker_pods_and_not_the_operator() -> None:
    (policy, *_) = worker_policies()
    owner = Owner("SyntheticDataset", "ds", "team-a", "uid")
    for stage in ("generate", CLEANUP_STAGE):
        assert selects(policy, child_labels(owner, stage, 1))
    operator = one(render_chart(ENABLED), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selects(policy, operator)


def test_custom_egress_rules_replace_the_default_rule(tmp_path: Path) -> None:
    egress = [{"ports": [{"port": 53, "protocol": "UDP"}]}]
    values = {"workers": {"networkPolicy": {"enabled": True, "egress": egress}}}
    (policy,) = [
        n
        for n in of_kind(render_chart(values), "NetworkPolicy")
        if n["metadata"]["name"].endswith("-workers")
    ]
    assert policy["spec"]["egress"] == egress
