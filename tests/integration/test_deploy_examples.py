"""The GitOps and Kueue examples under deploy/ fit the chart and each other: their Helm values pass the
chart's schema and render, the paths they point at exist, CRDs are applied server-side and never pruned,
and the Kueue queue they name is the one deploy/kueue defines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from synthrec.operator.settings import OperatorConfig
from tests.harness.chart import K8S_VERSION, env_of, of_kind, one, render_chart
from tests.harness.jobs import render_generate_job as render_worker_job

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(path: Path, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs(path) if d["kind"] == kind]


def local_queues() -> set[str]:
    return {q["metadata"]["name"] for q in by_kind(DEPLOY / "kueue" / "queues.yaml", "LocalQueue")}


def test_the_argocd_application_renders_the_chart_server_side() -> None:
    operator_app, team_app = by_kind(DEPLOY / "argocd" / "application.yaml", "Application")
    source = operator_app["spec"]["source"]
    assert (ROOT / source["path"] / "Chart.yaml").exists()
    assert "ServerSideApply=true" in operator_app["spec"]["syncPolicy"]["syncOptions"]
    assert "ServerSideApply=true" in team_app["spec"]["syncPolicy"]["syncOptions"]
    values = source["helm"]["valuesObject"]
    objects = render_chart(values, namespace=operator_app["spec"]["destination"]["namespace"])
    env = env_of(one(objects, "Deployment"))
    assert env["SYNTHREC_DEFAULT_QUEUE"] in local_queues()
    assert len(of_kind(objects, "CustomResourceDefinition")) == 2


def test_flux_applies_the_crds_first_and_never_prunes_them() -> None:
    kustomizations = {
        k["metadata"]["name"]: k for k in by_kind(DEPLOY / "flux" / "kustomization.yaml", "Kustomization")
    }
    crds, operator = kustomizations["synthrec-crds"], kustomizations["synthrec-operator"]
    assert (ROOT / crds["spec"]["path"]).resolve() == (ROOT / "crds").resolve()
    assert crds["spec"]["prune"] is False and crds["spec"]["wait"] is True
    assert operator["spec"]["dependsOn"] == [{"name": "synthrec-crds"}]
    operator_dir = ROOT / operator["spec"]["path"]
    (release,) = by_kind(operator_dir / "helmrelease.yaml", "HelmRelease")
    assert (ROOT / release["spec"]["chart"]["spec"]["chart"] / "Chart.yaml").exists()
    values = release["spec"]["values"]
    assert values["crds"]["install"] is False, "the Kustomization owns the CRDs"
    objects = render_chart(values, namespace=release["metadata"]["namespace"])
    assert not of_kind(objects, "CustomResourceDefinition")
    assert env_of(one(objects, "Deployment"))["SYNTHREC_DEFAULT_QUEUE"] in local_queues()
    (namespace,) = by_kind(operator_dir / "helmrelease.yaml", "Namespace")
    kubernetes_validate.validate(namespace, K8S_VERSION, strict=True)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_kueue_cluster_queue_covers_what_worker_pods_request() -> None:
    path = DEPLOY / "kueue" / "queues.yaml"
    (cluster_queue,) = by_kind(path, "ClusterQueue")
    flavors = {f["metadata"]["name"] for f in by_kind(path, "ResourceFlavor")}
    (group,) = cluster_queue["spec"]["resourceGroups"]
    # Kueue admits nothing with an uncovered request: a worker pod of the chart's default install asks for
    # cpu, memory, the GPU (spec.resources) and ephemeral-storage (its model cache).
    operator = OperatorConfig.from_env(env_of(one(render_chart(), "Deployment")))
    pod = render_worker_job(operator.worker)["spec"]["template"]["spec"]
    requests = set(pod["containers"][0]["resources"]["requests"])
    assert requests == {"cpu", "memory", "nvidia.com/gpu", "ephemeral-storage"}
    assert set(group["coveredResources"]) == requests
    for flavor in group["flavors"]:
        assert flavor["name"] in flavors
        assert {r["name"] for r in flavor["resources"]} == set(group["coveredResources"])
    for queue in by_kind(path, "LocalQueue"):
        assert queue["spec"]["clusterQueue"] == cluster_queue["metadata"]["name"]


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_file_is_valid_yaml_with_kinds(path: Path) -> None:
    for doc in docs(path):
        assert isinstance(doc, dict)
        if "kind" in doc:
            assert doc.get("apiVersion"), f"{path}: {doc['kind']} without apiVersion"


def test_the_cluster_guide_and_the_chart_readme_link_to_files_that_exist() -> None:
    for doc in (ROOT / "docs" / "cluster.md", ROOT / "helm" / "synthrec" / "README.md", ROOT / "README.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"
    assert "docs/cluster.md" in (ROOT / "README.md").read_text()


def test_the_cluster_guide_names_resources_the_examples_define() -> None:
    guide = (ROOT / "docs" / "cluster.md").read_text()
    names = {(d["kind"], d["metadata"]["name"]) for p in (ROOT / "examples").rglob("*.yaml") for d in docs(p)}
    short = {"sds": "SyntheticDataset", "rexp": "RecognitionExperiment"}
    used = set(re.findall(r"\b(sds|rexp)[/ ]([a-z0-9][-a-z0-9]*)", guide))
    assert used, "the guide shows kubectl commands on example resources"
    for kind, name in used:
        if name not in ("NAME",):
            assert (short[kind], name) in names, (
                f"docs/cluster.md uses {kind}/{name}, which no example defines"
            )


def test_the_flux_health_checks_name_existing_resources_and_read_the_kstatus_conditions() -> None:
    import cel

    from synthrec.api.conditions import derive, set_condition

    (team,) = by_kind(DEPLOY / "flux" / "health-checks.yaml", "Kustomization")
    applied = [d for path in (ROOT / team["spec"]["path"]).glob("*.yaml") for d in docs(path)]
    declared = {(d["kind"], d["metadata"]["name"]) for d in applied}
    for check in team["spec"]["healthChecks"]:
        assert (check["kind"], check["name"]) in declared, check
        assert check["namespace"] == team["spec"]["targetNamespace"]

    def status_after(*conditions: tuple[str, bool, str]) -> dict[str, Any]:
        conds: list[dict[str, Any]] = []
        for ctype, value, reason in conditions:
            conds = set_condition(conds, ctype, value, reason, generation=1)
        phase, conds = derive(conds, generation=1)
        return {"status": {"phase": phase, "conditions": conds}}

    running = status_after(("Accepted", True, "Valid"), ("Running", True, "ShardsRunning"))
    complete = status_after(("Complete", True, "AllStagesComplete"))
    failed = status_after(("Failed", True, "ShardBudgetExceeded"))
    for expr in team["spec"]["healthCheckExprs"]:
        verdict = {key: cel.compile(expr[key]) for key in ("current", "inProgress", "failed")}
        assert [verdict[k].execute(running) for k in verdict] == [False, True, False]
        assert [verdict[k].execute(complete) for k in verdict] == [True, False, False]
        assert [verdict[k].execute(failed) for k in verdict] == [False, False, True]
