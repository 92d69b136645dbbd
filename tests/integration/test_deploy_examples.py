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

from tests.harness.chart import K8S_VERSION, env_of, of_kind, one, render_chart

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
    # Worker pods request cpu, memory and the GPU resource (spec.resources); all must be covered.
    assert set(group["coveredResources"]) == {"cpu", "memory", "nvidia.com/gpu"}
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
    names = {(d["kind"], d["metadata"]["name"]) for p in (ROOT / "examples").glob("*.yaml") for d in docs(p)}
    short = {"sds": "SyntheticDataset", "rexp": "RecognitionExperiment"}
    used = set(re.findall(r"\b(sds|rexp)[/ ]([a-z0-9][-a-z0-9]*)", guide))
    assert used, "the guide shows kubectl commands on example resources"
    for kind, name in used:
        if name not in ("NAME",):
            assert (short[kind], name) in names, (
                f"docs/cluster.md uses {kind}/{name}, which no example defines"
            )
