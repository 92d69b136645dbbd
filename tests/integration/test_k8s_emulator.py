"""Probes for RealisticEmulator: one per gap of stock kmock 0.8 that it closes (testing-notes G1–G18)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import attrs
import kmock
import pytest

from tests.harness.k8s import wait_for
from tests.k8s.client import ApiError, K8sClient
from tests.k8s.emulator import ApiCall, RealisticEmulator, declare_crd

WIDGETS = "example.dev/v1alpha1/widgets"


def job_body(name: str, **spec: Any) -> dict[str, Any]:
    template = {
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
        }
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": template, **spec},
    }


@pytest.fixture
def widgets(k8s: RealisticEmulator) -> str:
    declare_crd(k8s, "example.dev", "v1alpha1", "widgets", "Widget", short_names=["wd"])
    return WIDGETS


def owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }


def pod_body(name: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "ownerReferences": [owner_ref(owner)]},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }


async def expect_error(status: int, call: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        await call
    assert info.value.status == status, info.value
    return info.value


async def test_create_sets_uid_resource_version_timestamp_and_generation(
    k8s: RealisticEmulator, widgets: str
) -> None:
    first = await k8s.api.create(
        widgets, {"metadata": {"name": "a", "namespace": "default"}, "spec": {"x": 1}}
    )
    second = await k8s.api.create("v1/configmaps", {"metadata": {"name": "b", "namespace": "default"}})
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
    assert int(second["metadata"]["resourceVersion"]) > int(
        first["metadata"]["resourceVersion"]
    )  # one global counter
    assert first["metadata"]["creationTimestamp"].endswith("Z")
    assert first["metadata"]["generation"] == 1


async def test_generation_bumps_on_spec_changes_only(k8s: RealisticEmulator, widgets: str) -> None:
    await k8s.api.create(widgets, {"metadata": {"name": "a", "namespace": "default"}, "spec": {"x": 1}})
    labelled = await k8s.api.patch(widgets, "a", {"metadata": {"labels": {"k": "v"}}}, "default")
    with_status = await k8s.api.patch_status(widgets, "a", {"phase": "Running"}, "default")
    respecced = await k8s.api.patch(widgets, "a", {"spec": {"x": 2}}, "default")
    assert [labelled["metadata"]["generation"], with_status["metadata"]["generation"]] == [1, 1]
    assert respecced["metadata"]["generation"] == 2
    assert int(respecced["metadata"]["resourceVersion"]) > int(with_status["metadata"]["resourceVersion"])


async def test_no_op_patch_keeps_the_resource_version(k8s: RealisticEmulator, widgets: str) -> None:
    created = await k8s.api.create(
        widgets, {"metadata": {"name": "a", "namespace": "default"}, "spec": {"x": 1}}
    )
    same = await k8s.api.patch(widgets, "a", {"spec": {"x": 1}}, "default")
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_namespace_api_version_and_kind_come_from_the_url(k8s: RealisticEmulator) -> None:
    created = await k8s.api.request(
        "POST", "/api/v1/namespaces/team-a/configmaps", body={"metadata": {"name": "c"}}
    )
    assert (created["metadata"]["namespace"], created["apiVersion"], created["kind"]) == (
        "team-a",
        "v1",
        "ConfigMap",
    )
    assert k8s.get_object("v1/namespaces", "team-a") is not None  # namespaces are created on first use


async def test_generate_name_appends_five_random_characters(k8s: RealisticEmulator) -> None:
    body = {"metadata": {"generateName": "ev-", "namespace": "default"}, "message": "m"}
    names = {(await k8s.api.create("v1/events", body))["metadata"]["name"] for _ in range(3)}
    assert len(names) == 3 and all(name.startswith("ev-") and len(name) == 8 for name in names)


async def test_status_subresource_is_enforced_both_ways(k8s: RealisticEmulator, widgets: str) -> None:
    created = await k8s.api.create(
        widgets,
        {"metadata": {"name": "a", "namespace": "default"}, "spec": {"x": 1}, "status": {"phase": "Forged"}},
    )
    assert "status" not in created  # client-sent status is dropped on create
    await k8s.api.patch(widgets, "a", {"spec": {"x": 2}, "status": {"phase": "Ignored"}}, "default")
    await k8s.api.patch(
        widgets, "a", {"spec": {"x": 3}, "status": {"phase": "Running"}}, "default", subresource="status"
    )
    obj = k8s.get_object(widgets, "a", "default")
    assert obj is not None and obj["spec"] == {"x": 2} and obj["status"] == {"phase": "Running"}


async def test_json_patch_is_chosen_by_content_type_and_a_failed_test_is_422(
    k8s: RealisticEmulator, widgets: str
) -> None:
    created = await k8s.api.create(
        widgets, {"metadata": {"name": "a", "namespace": "default"}, "spec": {"x": 1}}
    )
    rv = created["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.dev/guard"]},
    ]
    patched = await k8s.api.patch(widgets, "a", ops, "default", patch_type="json")
    assert patched["metadata"]["finalizers"] == ["example.dev/guard"]
    error = await expect_error(
        422, k8s.api.patch(widgets, "a", ops, "default", patch_type="json")
    )  # rv moved on
    assert error.reason == "Invalid"


async def test_stale_resource_version_is_a_409_conflict(k8s: RealisticEmulator, widgets: str) -> None:
    created = await k8s.api.create(
        widgets, {"metadata": {"name": "a", "namespace": "default"}, "spec": {"x": 1}}
    )
    stale = created["metadata"]["resourceVersion"]
    await k8s.api.patch(widgets, "a", {"spec": {"x": 2}}, "default")
    await expect_error(
        409,
        k8s.api.patch(widgets, "a", {"metadata": {"resourceVersion": stale}, "spec": {"x": 3}}, "default"),
    )
    await expect_error(409, k8s.api.replace(widgets, "a", {**created, "spec": {"x": 4}}, "default"))
    assert k8s.get_object(widgets, "a", "default")["spec"] == {"x": 2}


async def test_merge_patch_replaces_a_scalar_with_a_dict(k8s: RealisticEmulator, widgets: str) -> None:
    await k8s.api.create(widgets, {"metadata": {"name": "a", "namespace": "default"}, "spec": {"x": 1}})
    patched = await k8s.api.patch(widgets, "a", {"spec": {"x": {"nested": True}}}, "default")
    assert patched["spec"] == {"x": {"nested": True}}


async def test_strategic_merge_patch_merges_containers_by_name(k8s: RealisticEmulator) -> None:
    await k8s.api.create(
        "v1/pods",
        {
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "a", "image": "one"}, {"name": "b", "image": "two"}]},
        },
    )
    patched = await k8s.api.patch(
        "v1/pods",
        "p",
        {"spec": {"containers": [{"name": "b", "image": "three"}]}},
        "default",
        patch_type="strategic",
    )
    assert [(c["name"], c["image"]) for c in patched["spec"]["containers"]] == [("a", "one"), ("b", "three")]


async def test_put_replaces_the_object(k8s: RealisticEmulator) -> None:
    created = await k8s.api.create(
        "v1/configmaps",
        {"metadata": {"name": "c", "namespace": "default", "labels": {"old": "1"}}, "data": {"a": "1"}},
    )
    replaced = await k8s.api.replace(
        "v1/configmaps", "c", {"metadata": {"name": "c"}, "data": {"b": "2"}}, "default"
    )
    assert replaced["data"] == {"b": "2"} and "labels" not in replaced["metadata"]
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]


async def test_label_and_field_selectors_filter_lists(k8s: RealisticEmulator) -> None:
    for name, labels in [("a", {"app": "x", "tier": "gpu"}), ("b", {"app": "y"}), ("c", {"app": "x"})]:
        await k8s.api.create(
            "v1/configmaps", {"metadata": {"name": name, "namespace": "default", "labels": labels}}
        )

    async def names(**selectors: str) -> list[str]:
        return [o["metadata"]["name"] for o in await k8s.api.list("v1/configmaps", "default", **selectors)]

    assert await names(label_selector="app=x") == ["a", "c"]
    assert await names(label_selector="app!=x") == ["b"]
    assert await names(label_selector="app in (x,y),!tier") == ["b", "c"]
    assert await names(label_selector="tier") == ["a"]
    assert await names(label_selector="app notin (x)") == ["b"]
    assert await names(field_selector="metadata.name=c") == ["c"]
    assert await names(label_selector="app=x", field_selector="metadata.name!=a") == ["c"]
    await expect_error(400, k8s.api.list("v1/configmaps", label_selector="app in x"))


async def test_list_pagination_with_limit_and_continue(k8s: RealisticEmulator) -> None:
    for name in "abc":
        await k8s.api.create("v1/configmaps", {"metadata": {"name": name, "namespace": "default"}})
    first = await k8s.api.request("GET", "/api/v1/configmaps", params={"limit": "2"})
    rest = await k8s.api.request(
        "GET", "/api/v1/configmaps", params={"limit": "2", "continue": first["metadata"]["continue"]}
    )
    assert [o["metadata"]["name"] for o in first["items"] + rest["items"]] == ["a", "b", "c"]
    assert "continue" not in rest["metadata"]


async def collect(stream: Any, count: int) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    async for event in stream:
        events.append((event["type"], event["object"]["metadata"]["name"]))
        if len(events) == count:
            break
    return events


async def test_watch_filters_by_labels_with_enter_and_leave_transitions(k8s: RealisticEmulator) -> None:
    stream = k8s.api.watch("v1/configmaps", "default", label_selector="app=x")
    watching = asyncio.ensure_future(collect(stream, 3))
    await wait_for(lambda: k8s._watches.get(kmock.resource("v1/configmaps")))
    await k8s.api.create("v1/configmaps", {"metadata": {"name": "other", "namespace": "default"}})
    await k8s.api.create(
        "v1/configmaps", {"metadata": {"name": "a", "namespace": "default", "labels": {"app": "x"}}}
    )
    await k8s.api.patch("v1/configmaps", "a", {"metadata": {"labels": {"app": "y"}}}, "default")
    await k8s.api.patch("v1/configmaps", "other", {"metadata": {"labels": {"app": "x"}}}, "default")
    assert await asyncio.wait_for(watching, 5) == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "other")]


async def test_watch_resumes_from_a_resource_version_and_expires_old_ones(k8s: RealisticEmulator) -> None:
    await k8s.api.create("v1/configmaps", {"metadata": {"name": "a", "namespace": "default"}})
    listing = await k8s.api.list_raw("v1/configmaps", "default")
    await k8s.api.create("v1/configmaps", {"metadata": {"name": "b", "namespace": "default"}})
    stream = k8s.api.watch(
        "v1/configmaps", "default", resource_version=listing["metadata"]["resourceVersion"]
    )
    assert await asyncio.wait_for(collect(stream, 1), 5) == [("ADDED", "b")]  # not "a" again
    k8s.keep_events = 1
    await k8s.api.create("v1/configmaps", {"metadata": {"name": "c", "namespace": "default"}})
    stale = k8s.api.watch("v1/configmaps", "default", resource_version=listing["metadata"]["resourceVersion"])
    event = await asyncio.wait_for(stale.__anext__(), 5)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_watch_honours_timeout_seconds(k8s: RealisticEmulator) -> None:
    events = [e async for e in k8s.api.watch("v1/configmaps", "default", timeout_seconds=0)]
    assert events == []


async def test_owner_deletion_cascades_recursively(k8s: RealisticEmulator, widgets: str) -> None:
    owner = await k8s.api.create(widgets, {"metadata": {"name": "w", "namespace": "default"}})
    body = job_body("j")
    body["metadata"]["ownerReferences"] = [owner_ref(owner)]
    job = await k8s.api.create("batch/v1/jobs", body)
    await k8s.api.create("v1/pods", pod_body("p", job))
    await k8s.api.delete(widgets, "w", "default")
    assert k8s.get_object("batch/v1/jobs", "j", "default") is None
    assert k8s.get_object("v1/pods", "p", "default") is None


async def test_a_job_deleted_without_propagation_policy_orphans_its_pods(k8s: RealisticEmulator) -> None:
    job = await k8s.api.create("batch/v1/jobs", job_body("j"))
    await k8s.api.create("v1/pods", pod_body("p", job))
    await k8s.api.delete("batch/v1/jobs", "j", "default")  # a real API server's default for Jobs: Orphan
    orphan = k8s.get_object("v1/pods", "p", "default")
    assert orphan is not None and "ownerReferences" not in orphan["metadata"]


async def test_finalizers_delay_deletion_until_the_last_one_goes(
    k8s: RealisticEmulator, widgets: str
) -> None:
    await k8s.api.create(
        widgets, {"metadata": {"name": "w", "namespace": "default", "finalizers": ["a/x", "a/y"]}}
    )
    marked = await k8s.api.delete(widgets, "w", "default")
    assert marked["metadata"]["deletionTimestamp"]
    await expect_error(
        422, k8s.api.patch(widgets, "w", {"metadata": {"finalizers": ["a/x", "a/y", "a/z"]}}, "default")
    )
    await k8s.api.patch(widgets, "w", {"metadata": {"finalizers": ["a/y"]}}, "default")
    assert k8s.get_object(widgets, "w", "default") is not None
    await k8s.api.patch(widgets, "w", {"metadata": {"finalizers": None}}, "default")
    assert k8s.get_object(widgets, "w", "default") is None


async def test_delete_preconditions_and_deletecollection(k8s: RealisticEmulator) -> None:
    for name, app in [("a", "x"), ("b", "x"), ("c", "y")]:
        await k8s.api.create(
            "v1/configmaps", {"metadata": {"name": name, "namespace": "default", "labels": {"app": app}}}
        )
    await expect_error(
        409,
        k8s.api.request(
            "DELETE", "/api/v1/namespaces/default/configmaps/a", body={"preconditions": {"uid": "not-it"}}
        ),
    )
    await k8s.api.request(
        "DELETE", "/api/v1/namespaces/default/configmaps", params={"labelSelector": "app=x"}
    )
    assert [o["metadata"]["name"] for o in k8s.list_objects("v1/configmaps")] == ["c"]


async def test_namespaces_are_served_and_their_deletion_empties_them(k8s: RealisticEmulator) -> None:
    await k8s.api.create("v1/namespaces", {"metadata": {"name": "team-b"}})
    await k8s.api.create("v1/configmaps", {"metadata": {"name": "c", "namespace": "team-b"}})
    assert {n["metadata"]["name"] for n in await k8s.api.list("v1/namespaces")} == {"default", "team-b"}
    assert (await k8s.api.get("v1/namespaces", "team-b"))["status"] == {"phase": "Active"}
    await k8s.api.delete("v1/namespaces", "team-b")
    assert k8s.list_objects("v1/configmaps", "team-b") == []


async def test_job_defaults_and_validation_match_the_api_server(k8s: RealisticEmulator) -> None:
    job = await k8s.api.create(
        "batch/v1/jobs", job_body("j", completionMode="Indexed", completions=4, backoffLimitPerIndex=1)
    )
    spec = job["spec"]
    assert (spec["parallelism"], spec["backoffLimit"], spec["podReplacementPolicy"]) == (
        1,
        2147483647,
        "TerminatingOrFailed",
    )
    assert (
        spec["template"]["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == job["metadata"]["uid"]
    )
    assert job["status"] == {}
    no_restart = job_body("k")
    del no_restart["spec"]["template"]["spec"]["restartPolicy"]
    error = await expect_error(422, k8s.api.create("batch/v1/jobs", no_restart))
    assert "restartPolicy" in error.message
    await expect_error(
        422, k8s.api.create("batch/v1/jobs", job_body("l", completionMode="Indexed", parallelism=2))
    )
    fail_index = {"rules": [{"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}}]}
    await expect_error(
        422,
        k8s.api.create(
            "batch/v1/jobs",
            job_body("m", completionMode="Indexed", completions=2, podFailurePolicy=fail_index),
        ),
    )
    await expect_error(
        422, k8s.api.patch("batch/v1/jobs", "j", {"spec": {"completionMode": "NonIndexed"}}, "default")
    )
    resumed = await k8s.api.patch("batch/v1/jobs", "j", {"spec": {"suspend": True}}, "default")
    assert resumed["spec"]["suspend"] is True


async def test_secret_string_data_is_folded_into_data(k8s: RealisticEmulator) -> None:
    secret = await k8s.api.create(
        "v1/secrets", {"metadata": {"name": "s", "namespace": "default"}, "stringData": {"key": "value"}}
    )
    assert secret["data"] == {"key": "dmFsdWU="} and "stringData" not in secret


async def test_undeclared_resources_are_404(k8s: RealisticEmulator) -> None:
    error = await expect_error(
        404, k8s.api.create("example.dev/v1/gadgets", {"metadata": {"name": "g", "namespace": "d"}})
    )
    assert "declare_crd" in error.message


async def test_declared_crds_are_discoverable_with_their_status_subresource(
    k8s: RealisticEmulator, widgets: str
) -> None:
    discovery = await k8s.api.request("GET", "/apis/example.dev/v1alpha1")
    assert {r["name"] for r in discovery["resources"]} == {"widgets", "widgets/status"}
    crd = await k8s.api.get("apiextensions.k8s.io/v1/customresourcedefinitions", "widgets.example.dev")
    assert crd["spec"]["names"]["shortNames"] == ["wd"]


OPEN_SCHEMA = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


async def test_crd_manifests_declare_every_served_version(k8s: RealisticEmulator) -> None:
    manifest = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "shortNames": ["gd"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": OPEN_SCHEMA},
                },
                {"name": "v0", "served": False, "storage": False, "schema": {"openAPIV3Schema": OPEN_SCHEMA}},
            ],
        },
    }
    assert [str(r.version) for r in k8s.declare_crd_manifest(manifest)] == ["v1"]
    created = await k8s.api.create(
        "example.dev/v1/gadgets", {"metadata": {"name": "g", "namespace": "default"}}
    )
    assert created["kind"] == "Gadget"
    await expect_error(404, k8s.api.list("example.dev/v0/gadgets"))


async def test_api_calls_record_rbac_verbs(k8s: RealisticEmulator, widgets: str) -> None:
    k8s.reset_api_calls()
    created = await k8s.api.create(widgets, {"metadata": {"name": "a", "namespace": "default"}})
    await k8s.api.list(widgets)
    await k8s.api.patch_status(widgets, "a", {"phase": "x"}, "default")
    version = (await k8s.api.get(widgets, "a", "default"))["metadata"]["resourceVersion"]
    assert version != created["metadata"]["resourceVersion"]
    await k8s.api.replace(widgets, "a", {"metadata": {"name": "a", "resourceVersion": version}}, "default")
    await k8s.api.delete(widgets, "a", "default")
    assert set(k8s.api_calls()) == {
        ApiCall("create", "example.dev", "widgets", "", "default"),
        ApiCall("list", "example.dev", "widgets", "", None),
        ApiCall("get", "example.dev", "widgets", "", "default"),
        ApiCall("patch", "example.dev", "widgets", "status", "default"),
        ApiCall("update", "example.dev", "widgets", "", "default"),
        ApiCall("delete", "example.dev", "widgets", "", "default"),
    }
    assert k8s.api_calls(user_agent="k8s-test-client") == k8s.api_calls()
    assert k8s.api_calls(user_agent="kopf/") == []


async def test_keep_requests_bounds_the_request_log(k8s: RealisticEmulator) -> None:
    k8s.keep_requests = 10
    for _ in range(30):
        await k8s.api.list("v1/configmaps")
    assert len(list(k8s)) <= 11  # the log is trimmed on every request


async def test_user_reactions_still_take_precedence(k8s: RealisticEmulator) -> None:
    k8s["post", kmock.resource("v1/configmaps")][:1] << 503
    await expect_error(
        503, k8s.api.create("v1/configmaps", {"metadata": {"name": "c", "namespace": "default"}})
    )
    created = await k8s.api.create("v1/configmaps", {"metadata": {"name": "c", "namespace": "default"}})
    assert created["metadata"]["name"] == "c"


async def test_objects_are_mirrored_for_kmock_style_assertions(k8s: RealisticEmulator) -> None:
    await k8s.api.create(
        "v1/configmaps", {"metadata": {"name": "c", "namespace": "default"}, "data": {"a": "1"}}
    )
    await k8s.api.patch("v1/configmaps", "c", {"data": {"a": "2"}}, "default")
    assert k8s.objects[kmock.resource("v1/configmaps"), "default", "c"] >= {"data": {"a": "2"}}
    assert k8s.objects[kmock.resource("v1/configmaps"), "default", "c", 0] >= {"data": {"a": "1"}}


async def test_the_kubernetes_client_works_against_it(k8s: RealisticEmulator) -> None:
    kubernetes = pytest.importorskip("kubernetes")

    def use_client() -> tuple[str, str, int]:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            client_configuration=config
        )  # from $KUBECONFIG (set by the fixture)
        with kubernetes.client.ApiClient(config) as client:
            batch = kubernetes.client.BatchV1Api(client)
            batch.create_namespaced_job("default", job_body("kj"))
            batch.patch_namespaced_job("kj", "default", {"spec": {"suspend": True}})  # strategic merge
            job = batch.replace_namespaced_job("kj", "default", batch.read_namespaced_job("kj", "default"))
            listed = batch.list_namespaced_job("default", label_selector="job-name=kj")
            status = batch.delete_namespaced_job("kj", "default", propagation_policy="Background")
            return job.metadata.name, status["status"], len(listed.items)  # kubernetes 37 returns a dict

    assert await asyncio.to_thread(use_client) == ("kj", "Success", 1)


async def test_kmock_internals_still_exist() -> None:
    """The private kmock 0.8 pieces RealisticEmulator relies on (G18): fail here first after an upgrade."""
    from kmock._internal import apps, dsl, parsing, rendering

    assert kmock.__version__.startswith("0.8")
    assert callable(apps.RawHandler._handle) and callable(apps.RawHandler._render_error)
    assert {"_requests", "_payloads"} <= {f.name for f in attrs.fields(dsl.Root)}
    assert {"_source", "_disabled"} <= {f.name for f in attrs.fields(dsl.Reaction)}
    assert "_raw_request" in {f.name for f in attrs.fields(rendering.Request)}
    assert issubclass(rendering.ReactionMismatchError, Exception)
    with pytest.raises(ValueError):  # still broken upstream (G8): the emulator parses these paths itself
        parsing.parse_path("/api/v1/namespaces")
    async with RealisticEmulator() as emulator:
        assert "_errors" in dir(emulator) and isinstance(emulator.errors, list)


async def test_open_watches_end_when_the_emulator_closes_them(k8s: RealisticEmulator) -> None:
    client = K8sClient(k8s.url)
    try:
        stream = client.watch("v1/configmaps")
        reading = asyncio.ensure_future(collect(stream, 1))
        await wait_for(lambda: k8s._watches.get(kmock.resource("v1/configmaps")))
        k8s.close_watches()
        assert await asyncio.wait_for(reading, 5) == []
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def test_kopf_namespace_scanning_works_against_it(k8s: RealisticEmulator) -> None:
    """G8 closed: Kopf in namespaced mode lists and watches /api/v1/namespaces (here with a glob)."""
    import kopf

    from tests.harness.k8s import running_operator

    declare_crd(k8s, "example.dev", "v1", "widgets", "Widget")
    seen: list[tuple[str, str]] = []

    def widget_operator(registry: kopf.OperatorRegistry) -> None:
        @kopf.on.create("example.dev", "v1", "widgets", registry=registry)
        def created(name: str, namespace: str, **_: Any) -> None:
            seen.append((namespace, name))

    await k8s.api.create("v1/namespaces", {"metadata": {"name": "team-a"}})
    scanning = {"settings_hook": lambda settings: setattr(settings.scanning, "disabled", False)}
    async with running_operator(widget_operator, namespaces=["team-*"], **scanning):
        for namespace, name in [
            ("team-a", "w1"),
            ("default", "w0"),
            ("team-b", "w2"),
        ]:  # team-b appears later
            await k8s.api.create(
                "example.dev/v1/widgets", {"metadata": {"name": name, "namespace": namespace}}
            )
        await wait_for(lambda: len(seen) == 2, timeout=10)
    assert sorted(seen) == [("team-a", "w1"), ("team-b", "w2")]
    assert ApiCall("watch", "", "namespaces", "", None) in k8s.api_calls(user_agent="kopf/")


# ------------------------------------------------------------------- CRDs and server-side apply


async def test_a_crd_whose_names_clash_is_not_established_nor_served(
    k8s: RealisticEmulator, widgets: str
) -> None:
    clash = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gizmos.example.dev"},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {"plural": "gizmos", "kind": "Widget"},
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": OPEN_SCHEMA}}
            ],
        },
    }
    assert k8s.declare_crd_manifest(clash) == []
    crd = await k8s.api.get("apiextensions.k8s.io/v1/customresourcedefinitions", "gizmos.example.dev")
    conditions = {c["type"]: c for c in crd["status"]["conditions"]}
    assert (conditions["NamesAccepted"]["status"], conditions["NamesAccepted"]["message"]) == (
        "False",
        '"Widget" is already in use',
    )
    assert conditions["Established"]["status"] == "False"
    await expect_error(404, k8s.api.list("example.dev/v1/gizmos"))


def test_declaring_a_crd_kube_apiserver_would_reject_fails_with_its_message(k8s: RealisticEmulator) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {}}}},
                }
            ],
        },
    }
    with pytest.raises(ValueError, match=r"properties\[spec\]\.type: Required value"):
        k8s.declare_crd_manifest(crd)


async def test_apply_removes_what_a_manager_stops_applying_and_updates_take_ownership(
    k8s: RealisticEmulator,
) -> None:
    path = "/api/v1/namespaces/default/configmaps/c"

    async def apply(data: dict[str, str], manager: str) -> dict[str, Any]:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data}
        return await k8s.api.request(
            "PATCH",
            path,
            body=body,
            params={"fieldManager": manager},
            content_type="application/apply-patch+yaml",
        )

    await apply({"a": "1", "b": "2"}, "gitops")
    applied = await apply({"a": "1"}, "gitops")
    assert applied["data"] == {"a": "1"}  # b was gitops' alone: gone when no longer applied
    await k8s.api.patch("v1/configmaps", "c", {"data": {"a": "changed"}}, "default")
    entries = {
        e["manager"]: e
        for e in (await k8s.api.get("v1/configmaps", "c", "default"))["metadata"]["managedFields"]
    }
    assert entries["k8s-test-client"]["operation"] == "Update"
    assert entries["k8s-test-client"]["fieldsV1"] == {"f:data": {"f:a": {}}}
    conflict = await expect_error(409, apply({"a": "1"}, "gitops"))
    assert (
        conflict.message == 'Apply failed with 1 conflict: conflict with "k8s-test-client" using v1: .data.a'
    )
