"""``RealisticEmulator``: KMock's KubernetesEmulator with the API-server semantics a controller relies on.

Stock kmock 0.8 stores objects as plain dicts (see gaps G1–G18 in shared/reference/testing-notes.md).
This subclass serves every resource request (``/api[s]/.../<plural>[/<name>[/status]]``) itself:

- metadata: ``uid``, ``resourceVersion`` (one global counter bumped on every write), ``creationTimestamp``,
  ``generation`` (bumped when anything but metadata/status changes), namespace/apiVersion/kind from the
  URL, ``generateName``; no-op writes change nothing and emit no event, as on a real server;
- the status subresource both ways; JSON, merge and (approximate) strategic-merge patches chosen by
  Content-Type; 422 on a failed JSON-patch ``test``; 409 on a stale ``resourceVersion``; PUT; DELETE
  with preconditions and propagation policies; deletecollection;
- label and field selectors and ``limit``/``continue`` on LIST; watches with selectors (with
  ADDED/DELETED transitions when an object starts/stops matching), resumption from a
  ``resourceVersion`` (410 Gone once it has been compacted away) and ``timeoutSeconds``;
- finalizers (``deletionTimestamp`` first, removal when the last finalizer goes) and garbage collection
  along ownerReferences (recursive: owner -> Job -> Pods; batch/v1 Jobs orphan their pods when deleted
  without a ``propagationPolicy``, exactly like a real API server);
- ``/api/v1/namespaces`` (which crashes kmock's URL parser), namespaces created on first use, and
  namespace deletion that deletes the namespace's objects;
- Job/Pod/Secret defaulting and validation, Lease decoding and validation (``admission.py``);
- CustomResourceDefinitions validated as kube-apiserver validates them, Established/NamesAccepted, and
  their custom resources pruned, defaulted and validated (schema, CEL incl. transition rules, status
  subresource, fieldValidation Strict/Warn/Ignore) by ``custom_resources.py``; server-side apply and
  managedFields (``apply.py``); Table responses; discovery and OpenAPI v3 as kubectl reads them; server
  version 1.33 (``DIFFERENCES.md`` lists what still differs);
- ``keep_requests`` to bound kmock's request log (its matching cost is quadratic), ``keep_history`` to
  bound the per-object version history, and ``api_calls()``: the RBAC verbs actually used.

User reactions added with the kmock DSL (``k8s['patch', k8s.resource('batch/v1/jobs')][:1] << 500``)
still take precedence; a request that such a reaction answers does not change the stored objects.
Objects are mirrored into ``kmock.objects`` (with history) for kmock-style assertions; writing into
``kmock.objects`` directly bypasses the emulator (no events, no indexes): drive changes over HTTP.

Private kmock 0.8 internals used (pinned; covered by ``test_kmock_internals_still_exist``):
``RawHandler._handle``/``_payloads``/``_requests``/``_errors``/``_render_error``, ``Reaction._source``/
``_disabled``/``priorities``, ``rendering.Request._raw_request``, ``ReactionMismatchError``,
``ResourcesArray`` and ``ObjectsArray``/``ObjectHistory`` behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime
import functools
import json
import math
import random
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import apps, rendering
from kmock._internal.k8s import KubernetesResourceNotFoundError

from tests.k8s import apply as ssa
from tests.k8s import custom_resources as cr
from tests.k8s.admission import Invalid, Undecodable, admit
from tests.k8s.client import K8sClient, split_resource
from tests.k8s.patching import PatchError, clone, json_patch, merge_patch, strategic_merge_patch
from tests.k8s.selectors import SelectorError, parse_field_selector, parse_label_selector

Key = tuple[kmock.resource, str | None, str]
Obj = dict[str, Any]

ALL_VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"})
SERVER_OWNED_METADATA = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "managedFields",
    "selfLink",
)
IMMUTABLE_METADATA = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)
NAMESPACES = kmock.resource("", "v1", "namespaces")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
_ACTIONS = {
    "watch": kmock.action.WATCH,
    "list": kmock.action.LIST,
    "get": kmock.action.FETCH,
    "create": kmock.action.CREATE,
    "patch": kmock.action.UPDATE,
    "delete": kmock.action.DELETE,
}
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the API server uses for generateName suffixes
# A release inside the chart's kubeVersion range (>=1.29) and kubectl 1.32's skew (+/-1 minor).
SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.4",
    "gitCommit": "74cdb426e7e5dfc1c9e3ee1a2e35ad5c1c2b2a5c",
    "gitTreeState": "clean",
    "buildDate": "2025-08-12T10:45:31Z",
    "goVersion": "go1.24.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class ApiCall(NamedTuple):
    """One kind of API request, as an RBAC rule would see it."""

    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    api_group: str  # '' for the core group
    resource: str  # plural
    subresource: str  # '' when none
    namespace: str | None  # None for cluster-wide requests


class Reject(Exception):
    """An API error answered as a Kubernetes ``Status``."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resource_name(resource: kmock.resource) -> str:
    """``'batch/v1/jobs'`` / ``'v1/pods'``: the form admission rules and options use."""
    prefix = f"{resource.group}/" if resource.group else ""
    return f"{prefix}{resource.version}/{resource.plural}"


def _group_resource(resource: kmock.resource) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def _owner_uids(obj: Obj | None) -> set[str]:
    if obj is None:
        return set()
    return {ref.get("uid") for ref in obj["metadata"].get("ownerReferences") or [] if ref.get("uid")}


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _sort_key(item: tuple[tuple[str | None, str], Obj]) -> tuple[str, str]:
    (namespace, name), _ = item
    return namespace or "", name


@dataclass(eq=False)
class _Watch:
    namespace: str | None
    name: str | None
    labels: Callable[[Any], bool]
    fields: Callable[[Any], bool]
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)

    def matches(self, obj: Obj) -> bool:
        meta = obj["metadata"]
        return (
            (self.namespace is None or meta.get("namespace") == self.namespace)
            and (self.name is None or meta.get("name") == self.name)
            and self.labels(meta.get("labels") or {})
            and self.fields(obj)
        )

    def translate(self, event_type: str, obj: Obj, old: Obj | None) -> dict[str, Any] | None:
        """The event this watcher sees: a MODIFIED object entering/leaving the selection is ADDED/DELETED."""
        now_in = self.matches(obj)
        was_in = old is not None and self.matches(old)
        if event_type == "MODIFIED":
            event_type = (
                "MODIFIED" if now_in and was_in else "ADDED" if now_in else "DELETED" if was_in else ""
            )
        elif event_type == "DELETED":
            event_type = "DELETED" if now_in or was_in else ""
        elif not now_in:
            event_type = ""
        return {"type": event_type, "object": obj} if event_type else None


@attrs.define(kw_only=True)
class RealisticEmulator(kmock.KubernetesEmulator):
    """A kmock KubernetesEmulator that behaves like a real API server where controllers can tell."""

    keep_requests: int | None = 1000  # bound kmock's request log (None: keep all, quadratic cost)
    keep_history: int | None = 100  # versions per object kept in ``.objects[...].history``
    keep_events: int = 10000  # per-resource event log for watch resumption; older rv -> 410 Gone
    auto_namespaces: bool = True  # create a Namespace object when an object first uses it
    orphan_by_default: frozenset[str] = frozenset({"batch/v1/jobs"})  # as on a real API server
    builtins: bool = True  # declare kmock's bundled builtin resources (batch/v1 jobs, v1 pods, ...)

    _rv: int = attrs.field(default=0, init=False)
    _store: dict[kmock.resource, dict[tuple[str | None, str], Obj]] = attrs.field(factory=dict, init=False)
    _uids: dict[str, Key] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[Key]] = attrs.field(factory=dict, init=False)
    _watches: dict[kmock.resource, set[_Watch]] = attrs.field(factory=dict, init=False)
    _event_log: dict[kmock.resource, collections.deque[tuple[int, str, Obj, Obj | None]]] = attrs.field(
        factory=dict, init=False
    )
    _event_floor: dict[kmock.resource, int] = attrs.field(factory=dict, init=False)
    _crds: set[kmock.resource] = attrs.field(factory=set, init=False)
    _api_calls: dict[str, collections.Counter[ApiCall]] = attrs.field(
        factory=dict, init=False
    )  # by User-Agent
    _client: K8sClient | None = attrs.field(default=None, init=False)
    _served: dict[kmock.resource, cr.ServedVersion] = attrs.field(factory=dict, init=False)
    _params: dict[str, str] = attrs.field(factory=dict, init=False)  # of the request being served
    _manager: str = attrs.field(default="", init=False)  # its field manager
    _warnings: list[str] = attrs.field(factory=list, init=False)  # its Warning headers
    _verb: str = attrs.field(default="", init=False)  # its RBAC verb
    _agent: str = attrs.field(default="", init=False)  # its User-Agent
    _applied_fields: list[Obj] | None = attrs.field(default=None, init=False)  # managedFields of an apply
    _user_payloads: tuple[tuple[int, ...], list[Any]] = attrs.field(factory=lambda: ((), []), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.builtins:
            self.load_builtins()
        if CRDS not in self.resources:
            self.resources[CRDS] = kmock.ResourceInfo(
                kind="CustomResourceDefinition",
                singular="customresourcedefinition",
                namespaced=False,
                verbs=ALL_VERBS,
                shortnames={"crd", "crds"},
                categories={"api-extensions"},
                subresources={"status"},
            )

    def load_builtins(self) -> None:
        """Declare kmock's bundled builtin resources (a K3s dump: batch/v1, v1, apps/v1, ...)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # importlib.resources.read_binary in kmock
            self.resources.load_bundled()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close_watches()
        if self._client is not None:
            await self._client.close()
            self._client = None
        await super().__aexit__(*exc_info)

    # ---------------------------------------------------------------- public helpers for tests

    @property
    def api(self) -> K8sClient:
        """An HTTP client bound to this emulator's URL (needs a running ``kmock.Server``)."""
        if self._client is None:
            self._client = K8sClient(self.url)
        return self._client

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion (bumped by every write)."""
        return self._rv

    def get_object(self, resource: str, name: str, namespace: str | None = None) -> Obj | None:
        """The live object (no HTTP, no copy: do not mutate), or None."""
        return self._store.get(_resource(*_split(resource)), {}).get((namespace, name))

    def list_objects(
        self, resource: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Obj]:
        """Live objects of a resource (all namespaces when ``namespace`` is None), sorted by ns/name."""
        labels = parse_label_selector(label_selector)
        bucket = self._store.get(_resource(*_split(resource)), {})
        return [
            obj
            for (ns, _), obj in sorted(bucket.items(), key=_sort_key)
            if (namespace is None or ns == namespace) and labels(obj["metadata"].get("labels") or {})
        ]

    def api_calls(self, user_agent: str | None = None) -> list[ApiCall]:
        """Distinct API calls served so far, in first-seen order (compare as a set for RBAC checks).

        ``user_agent``: only calls whose User-Agent starts with it (Kopf sends ``kopf/<version>``, the
        ``kubernetes`` client ``OpenAPI-Generator/...``, the fake kubelet ``fake-kubelet``, the tests'
        client ``k8s-test-client``).
        """
        return list(self.api_call_counts(user_agent))

    def api_call_counts(self, user_agent: str | None = None) -> dict[ApiCall, int]:
        """How often each API call was made (optionally only by clients whose User-Agent starts so)."""
        counts: collections.Counter[ApiCall] = collections.Counter()
        for agent, calls in self._api_calls.items():
            if user_agent is None or agent.startswith(user_agent):
                counts.update(calls)
        return dict(counts)

    def reset_api_calls(self) -> None:
        self._api_calls.clear()

    def close_watches(self) -> None:
        """End all open watch streams (clients see a normal end of stream)."""
        for watches in self._watches.values():
            for watch in watches:
                watch.queue.put_nowait(None)

    def declare_crd(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        short_names: Iterable[str] = (),
        namespaced: bool = True,
        *,
        categories: Iterable[str] = (),
    ) -> kmock.resource:
        """Serve a schemaless custom resource (preserve-unknown-fields, status subresource) via a CRD.

        A second call for another version of the same CRD adds that version (not the storage one).
        """
        crd_version = {
            "name": version,
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }
        existing = self._crd_object(f"{plural}.{group}")
        versions = [crd_version]
        if existing is not None:
            old_versions = [v for v in existing["spec"].get("versions", []) if v.get("name") != version]
            versions = [*old_versions, {**crd_version, "storage": not old_versions}]
        names = {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"}
        if short_names:
            names["shortNames"] = list(short_names)
        if categories:
            names["categories"] = list(categories)
        manifest = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced" if namespaced else "Cluster",
                "names": names,
                "versions": versions,
            },
        }
        self.declare_crd_manifest(manifest)
        return kmock.resource(group, version, plural)

    def declare_crd_manifest(self, manifest: Obj) -> list[kmock.resource]:
        """Create (or replace) a CustomResourceDefinition, e.g. from ``crds/*.yaml``, as an API client would:
        it is validated like kube-apiserver validates CRDs (ValueError with the 422 message when it would be
        rejected), becomes Established and its served versions are served."""
        name = manifest["metadata"]["name"]
        body = {k: v for k, v in manifest.items() if k != "status"}
        try:
            if self._crd_object(name) is None:
                self._create(CRDS, None, clone(body))
            else:
                self._update(CRDS, None, name, None, lambda cur: {**clone(body), "metadata": cur["metadata"]})
        except (Reject, cr.Rejected) as exc:
            raise ValueError(exc.message) from exc
        return [r for r, served in self._served.items() if served.crd_name == name]

    def _crd_object(self, name: str) -> Obj | None:
        return self._store.get(CRDS, {}).get((None, name))

    def _crd_written(self, crd: Obj | None, name: str) -> None:
        """Serve what an (established) CRD declares; stop serving what it no longer does."""
        for resource in [r for r, v in self._served.items() if v.crd_name == name]:
            del self._served[resource]
            self.resources._resources.pop(resource, None)
            self._crds.discard(resource)
        if crd is None or not cr.is_established(crd):
            return
        for served in cr.served_versions(crd):
            resource = kmock.resource(served.group, served.version, served.plural)
            self.resources[resource] = kmock.ResourceInfo(
                kind=served.kind,
                singular=served.singular,
                namespaced=served.namespaced,
                verbs=ALL_VERBS,
                shortnames=set(served.short_names),
                categories=set(served.categories),
                subresources={"status"} if served.status_subresource else set(),
            )
            self._served[resource] = served
            self._crds.add(resource)

    # ---------------------------------------------------------------- request routing

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Resource paths are parsed here: kmock 0.8 crashes on /api/v1/namespaces (G8), and its parser
        # spends most of a request's CPU time in runtime-Protocol isinstance checks.
        if raw_request.path.startswith("/openapi/v3"):
            return self._serve_openapi_v3(raw_request.path)
        parsed = parse_resource_path(raw_request.path)
        if parsed is None:
            return await super().__call__(raw_request)  # discovery and non-Kubernetes paths
        try:
            request = await _parse_request(raw_request, parsed, id=len(self._requests))
            self._requests.append(request)
            return await self._handle(request)
        except Exception as exc:
            if not self._errors:
                raise
            self._errors[-1].append(exc)
            return await self._render_error(exc)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if self.keep_requests is not None and len(self._requests) > self.keep_requests:
            del self._requests[: len(self._requests) - self.keep_requests]
        if request.resource is None or request.resource.plural is None:
            # Discovery (/api, /apis/group/version, /version) and non-k8s paths: kmock's own reactions.
            return await apps.RawHandler._handle(self, request)
        response = await self._user_reaction(request)
        if response is not None:
            return response
        self._params = dict(request.params)
        self._manager = (
            self._params.get("fieldManager") or str(request.headers.get("User-Agent", "")).split("/")[0]
        )
        self._warnings = []
        self._agent = str(request.headers.get("User-Agent", ""))
        try:
            response = await self._serve(request)
        except (Reject, cr.Rejected) as exc:
            response = _status_response(exc.code, exc.reason, exc.message, exc.details)
        for warning in self._warnings:
            if not response.prepared:
                response.headers.add("Warning", f'299 - "{_escape_warning(warning)}"')
        return response

    async def _user_reaction(self, request: rendering.Request) -> aiohttp.web.StreamResponse | None:
        """Serve with a reaction a test added via the kmock DSL (not kmock's own fallbacks), if any."""
        signature = tuple(map(id, self._payloads))
        if self._user_payloads[0] != signature:  # recompute only when reactions were added or replaced
            payloads = [p for p in self._payloads if not any(math.isinf(x) and x < 0 for x in p.priorities)]
            payloads.sort(key=lambda p: tuple(p.priorities), reverse=True)
            self._user_payloads = (signature, payloads)
        for payload in self._user_payloads[1]:
            if request in payload._source and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        return None

    async def _serve(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        assert resource is not None
        verb = self._verb = _rbac_verb(request)
        namespace, name, sub = request.namespace, request.name, request.subresource
        calls = self._api_calls.setdefault(str(request.headers.get("User-Agent", "")), collections.Counter())
        calls[ApiCall(verb, resource.group or "", str(resource.plural), sub or "", namespace)] += 1
        info = self._info(resource)
        if info is None:
            raise Reject(
                404,
                "NotFound",
                f"the server could not find the requested resource "
                f"({_group_resource(resource)} {resource.version} is not declared; use declare_crd())",
            )
        if info.verbs and verb not in info.verbs:
            raise Reject(405, "MethodNotAllowed", f"{verb} is not supported on {_group_resource(resource)}")
        if info.namespaced is False and namespace is not None:
            raise Reject(
                404, "NotFound", f"{_group_resource(resource)} is cluster-scoped: drop the namespace"
            )
        if sub is not None and not (sub == "status" and "status" in info.subresources):
            raise Reject(
                404,
                "NotFound",
                f"the server could not find the requested resource "
                f"(subresource {sub!r} of {_group_resource(resource)} is not emulated)",
            )
        params = request.params
        if verb == "watch":
            return await self._serve_watch(request, resource)
        table = cr.wants_table(str(request.headers.get("Accept", "")))
        if verb == "list":
            listed = self._list(resource, info, namespace, params)
            if table:
                return aiohttp.web.json_response(self._table(resource, listed["items"]))
            return aiohttp.web.json_response(listed)
        if verb == "get":
            got = self._require(resource, namespace, str(name))
            if table:
                return aiohttp.web.json_response(self._table(resource, [got]))
            return aiohttp.web.json_response(got)
        body = request.data
        content_type = str(request.headers.get("Content-Type", "")).split(";")[0].strip().lower()
        if content_type.startswith("application/vnd.kubernetes.protobuf") and request.body:
            raise Reject(  # not decoded here; see tests/k8s/DIFFERENCES.md
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json, application/yaml",
            )
        if params.get("force") is not None and content_type != "application/apply-patch+yaml":
            raise Reject(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: '
                "may not be specified for non-apply patch",
            )
        if verb == "patch" and resource in self._served and content_type == STRATEGIC_MERGE_PATCH:
            raise Reject(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            )
        if verb == "patch" and content_type == "application/apply-patch+yaml":
            applied, created = self._apply(resource, namespace, str(name), sub, request)
            return aiohttp.web.json_response(applied, status=201 if created else 200)
        if verb == "create":
            return aiohttp.web.json_response(self._create(resource, namespace, body), status=201)
        if verb == "update":
            candidate = _put_candidate(body, str(name))
            return aiohttp.web.json_response(self._update(resource, namespace, str(name), sub, candidate))
        if verb == "patch":
            candidate = _patch_candidate(request.headers.get("Content-Type", ""), body)
            return aiohttp.web.json_response(self._update(resource, namespace, str(name), sub, candidate))
        options = {**(body if isinstance(body, dict) else {}), **_delete_query_options(params)}
        if verb == "delete":
            deleted = self._delete((resource, namespace, str(name)), options)
            still_there = (namespace, str(name)) in self._store.get(resource, {})  # waiting for finalizers
            if resource in self._crds or resource.plural == "pods" or still_there:
                return aiohttp.web.json_response(deleted)
            return aiohttp.web.json_response(_success_status(resource, deleted))
        # deletecollection
        for obj in self._list(resource, info, namespace, params, paginate=False)["items"]:
            self._delete((resource, obj["metadata"].get("namespace"), obj["metadata"]["name"]), options)
        return aiohttp.web.json_response(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        )

    def _check_owner_deletion_blocks(self, obj: Obj, old: Obj | None) -> None:
        """OwnerReferencesPermissionEnforcement (on in OpenShift and many clusters): setting
        ``blockOwnerDeletion`` needs ``update`` on the owner's ``finalizers`` subresource. Recorded as the
        API call it authorises, so RBAC comparisons see it."""
        before = {
            ref.get("uid")
            for ref in (old or {}).get("metadata", {}).get("ownerReferences") or []
            if ref.get("blockOwnerDeletion")
        }
        for ref in obj["metadata"].get("ownerReferences") or []:
            if not ref.get("blockOwnerDeletion") or ref.get("uid") in before:
                continue
            group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
            owner = next(
                (
                    r
                    for r, info in self.resources._resources.items()
                    if (r.group or "") == group and r.version == version and info.kind == ref.get("kind")
                ),
                None,
            )
            if owner is None:
                continue
            calls = self._api_calls.setdefault(self._agent, collections.Counter())
            calls[
                ApiCall("update", group, str(owner.plural), "finalizers", obj["metadata"].get("namespace"))
            ] += 1

    def _list_type(self, resource: kmock.resource) -> ssa.ListTypeOf:
        served = self._served.get(resource)
        return ssa.schema_list_type(served.schema) if served is not None else ssa.builtin_list_type

    def _managed_fields(
        self, resource: kmock.resource, old: Obj | None, new: Obj, subresource: str | None
    ) -> list[Obj]:
        return ssa.record_update(
            old,
            new,
            self._manager or "unknown",
            list_type=self._list_type(resource),
            api_version=_api_version(resource),
            now=now_rfc3339(),
            subresource=subresource,
        )

    def _apply(
        self,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        subresource: str | None,
        request: rendering.Request,
    ) -> tuple[Obj, bool]:
        """Server-side apply (PATCH application/apply-patch+yaml): (the object, whether it was created)."""
        manager = self._params.get("fieldManager")
        if not manager:
            raise Reject(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                "is required for apply patch",
            )
        try:
            config = yaml.safe_load(request.body or b"")
        except yaml.YAMLError as exc:
            raise Reject(400, "BadRequest", f"error decoding YAML: {exc}") from exc
        if not isinstance(config, dict):
            raise Reject(400, "BadRequest", "the apply configuration must be an object")
        force = self._params.get("force", "").lower() == "true"
        served = self._served.get(resource)
        if served is not None:
            mode = self._params.get("fieldValidation", "")
            self._warnings += cr.decode(served, config, mode, patch=True)
        list_type = self._list_type(resource)

        def applied(cur: Obj | None) -> Obj:
            try:
                merged = ssa.apply(
                    cur,
                    config,
                    manager,
                    force=force,
                    list_type=list_type,
                    api_version=_api_version(resource),
                    now=now_rfc3339(),
                )
            except ssa.ApplyConflict as exc:
                raise Reject(
                    409,
                    "Conflict",
                    str(exc),
                    {
                        "causes": [
                            {"reason": "FieldManagerConflict", "message": f"conflict with {m}", "field": p}
                            for m, p in exc.conflicts
                        ]
                    },
                ) from exc
            self._applied_fields = merged["metadata"].get("managedFields")
            return merged

        if (namespace, name) not in self._store.get(resource, {}):
            if subresource is not None:
                self._require(resource, namespace, name)
            body = applied(None)
            body.setdefault("metadata", {})["name"] = name
            return self._create(resource, namespace, body), True
        return self._update(resource, namespace, name, subresource, applied), False

    def _serve_openapi_v3(self, path: str) -> aiohttp.web.Response:
        """OpenAPI v3 discovery, as much as kubectl reads: per group/version, each resource's PATCH
        operation with its GVK, the query parameters it takes (kubectl checks for ``fieldValidation`` before
        it relies on server-side field validation) and the patch types it accepts (no strategic merge
        patch for custom resources, so kubectl sends them merge patches)."""
        by_prefix: dict[str, list[tuple[kmock.resource, kmock.ResourceInfo]]] = {}
        for resource, info in self.resources._resources.items():
            if resource.plural is None or resource.version is None:
                continue
            group = resource.group or ""
            prefix = f"apis/{group}/{resource.version}" if group else f"api/{resource.version}"
            by_prefix.setdefault(prefix, []).append((resource, info))
        wanted = path[len("/openapi/v3") :].strip("/")
        if not wanted:
            return aiohttp.web.json_response(
                {
                    "paths": {
                        p: {"serverRelativeURL": f"/openapi/v3/{p}?hash={self._rv}"}
                        for p in sorted(by_prefix)
                    }
                }
            )
        if wanted not in by_prefix:
            return _status_response(404, "NotFound", "the server could not find the requested resource", {})
        paths: Obj = {}
        for resource, info in by_prefix[wanted]:
            scope = "/namespaces/{namespace}" if info.namespaced else ""
            media = [
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
            ]
            if resource not in self._served:
                media.append(STRATEGIC_MERGE_PATCH)
            params = ["dryRun", "fieldManager", "fieldValidation", "force", "pretty"]
            paths[f"/{wanted}{scope}/{resource.plural}/{{name}}"] = {
                "patch": {
                    "operationId": f"patch{info.kind}",
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {
                        "group": resource.group or "",
                        "version": resource.version,
                        "kind": info.kind,
                    },
                    "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}} for n in params],
                    "requestBody": {"content": {m: {"schema": {"type": "object"}} for m in media}},
                    "responses": {"200": {"description": "OK"}},
                }
            }
        document = {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths,
            "components": {"schemas": {}},
        }
        return aiohttp.web.json_response(document)

    def _table(self, resource: kmock.resource, items: list[Obj]) -> Obj:
        served = self._served.get(resource)
        return cr.table(items, served.printer_columns if served else (), str(self._rv))

    async def _serve_server_version(self, request: rendering.Request) -> Obj:
        return dict(SERVER_VERSION)

    async def _serve_version(self, request: rendering.Request) -> Obj:
        """An APIResourceList as kube-apiserver's discovery writes it: short names and categories on the
        main entry only; subresources with their own verbs."""
        assert request.resource is not None
        group, version = request.resource.group or "", request.resource.version
        entries: list[Obj] = []
        for resource, info in sorted(self.resources._resources.items(), key=lambda kv: str(kv[0].plural)):
            if (resource.group or "") != group or resource.version != version or resource.plural is None:
                continue
            entry: Obj = {
                "name": resource.plural,
                "singularName": info.singular or "",
                "namespaced": bool(info.namespaced),
                "kind": info.kind or "",
                "verbs": sorted(info.verbs or ALL_VERBS),
            }
            if info.shortnames:
                entry["shortNames"] = sorted(info.shortnames)
            if info.categories:
                entry["categories"] = sorted(info.categories)
            entries.append(entry)
            for sub in sorted(info.subresources or ()):
                entries.append(
                    {
                        "name": f"{resource.plural}/{sub}",
                        "singularName": "",
                        "namespaced": bool(info.namespaced),
                        "kind": info.kind or "",
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if not entries:
            raise KubernetesResourceNotFoundError()
        return {
            "apiVersion": "v1",
            "kind": "APIResourceList",
            "groupVersion": _group_version(group, version),
            "resources": entries,
        }

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        # The private dict: ResourcesArray's public lookups re-parse the key with a runtime Protocol check.
        return self.resources._resources.get(resource)

    # ---------------------------------------------------------------- reads

    def _require(self, resource: kmock.resource, namespace: str | None, name: str) -> Obj:
        obj = self._store.get(resource, {}).get((namespace, name))
        if obj is None:
            raise Reject(
                404,
                "NotFound",
                f'{_group_resource(resource)} "{name}" not found',
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        return obj

    def _list(
        self,
        resource: kmock.resource,
        info: kmock.ResourceInfo,
        namespace: str | None,
        params: dict[str, str],
        paginate: bool = True,
    ) -> Obj:
        try:
            labels = parse_label_selector(params.get("labelSelector"))
            fields = parse_field_selector(params.get("fieldSelector"))
        except SelectorError as exc:
            raise Reject(400, "BadRequest", str(exc)) from exc
        items = [
            obj
            for (ns, _), obj in sorted(self._store.get(resource, {}).items(), key=_sort_key)
            if (namespace is None or ns == namespace)
            and labels(obj["metadata"].get("labels") or {})
            and fields(obj)
        ]
        meta: Obj = {"resourceVersion": str(self._rv)}
        if paginate and params.get("continue"):
            after = tuple(json.loads(base64.urlsafe_b64decode(params["continue"]).decode()))
            items = [obj for obj in items if _object_sort_key(obj) > after]
        limit = int(params.get("limit") or 0)
        if paginate and 0 < limit < len(items):
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps(_object_sort_key(items[-1])).encode()
            ).decode()
        api_version = f"{resource.group}/{resource.version}" if resource.group else str(resource.version)
        return {
            "apiVersion": api_version,
            "kind": f"{info.kind or 'Object'}List",
            "metadata": meta,
            "items": items,
        }

    async def _serve_watch(
        self, request: rendering.Request, resource: kmock.resource
    ) -> aiohttp.web.StreamResponse:
        params = request.params
        try:
            watch = _Watch(
                namespace=request.namespace,
                name=request.name,
                labels=parse_label_selector(params.get("labelSelector")),
                fields=parse_field_selector(params.get("fieldSelector")),
            )
        except SelectorError as exc:
            raise Reject(400, "BadRequest", str(exc)) from exc
        since = params.get("resourceVersion") or "0"
        if not since.isdigit():
            raise Reject(400, "BadRequest", f"resourceVersion {since!r} is not a number")
        # Build the initial events and register the watcher without awaiting in between: no event is lost.
        initial: list[dict[str, Any]] = []
        expired = False
        if since == "0":
            for _, obj in sorted(self._store.get(resource, {}).items(), key=_sort_key):
                if watch.matches(obj):
                    initial.append({"type": "ADDED", "object": obj})
        elif int(since) < self._event_floor.get(resource, 0):
            expired = True
            initial.append(
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "code": 410,
                        "reason": "Expired",
                        "message": f"too old resource version: {since} ({self._event_floor[resource]})",
                    },
                }
            )
        else:
            for rv, event_type, obj, old in self._event_log.get(resource, ()):
                if rv > int(since) and (event := watch.translate(event_type, obj, old)) is not None:
                    initial.append(event)
        if not expired:
            self._watches.setdefault(resource, set()).add(watch)
        raw_request = request._raw_request
        assert raw_request is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw_request)
            await response.write(b"".join(_jsonline(event) for event in initial))
            if expired:
                return response
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):  # not wait_for: it can eat a cancel in 3.11
                        event = await watch.queue.get()
                except TimeoutError:
                    break
                events = [event]
                while not watch.queue.empty():  # send a burst in one write
                    events.append(watch.queue.get_nowait())
                await response.write(b"".join(_jsonline(e) for e in events if e is not None))
                if None in events:
                    break
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self._watches.get(resource, set()).discard(watch)
        return response

    # ------------------------------------------------ writes (synchronous, hence atomic in the loop)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _create(self, resource: kmock.resource, namespace: str | None, body: Any) -> Obj:
        info = self._info(resource)
        assert info is not None
        if not isinstance(body, dict):
            raise Reject(400, "BadRequest", "the request body must be a JSON object")
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        if info.namespaced is not False:
            if namespace and meta.get("namespace") and namespace != meta["namespace"]:
                raise Reject(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise Reject(
                    400,
                    "BadRequest",
                    f"{_group_resource(resource)} is namespaced: "
                    "POST to .../namespaces/NAMESPACE/... or set metadata.namespace",
                )
        else:
            namespace = None
        name = meta.get("name")
        if not name:
            if not meta.get("generateName"):
                raise Reject(
                    422,
                    "Invalid",
                    f"{info.kind} is invalid: metadata.name: Required value: "
                    "name or generateName is required",
                )
            name = meta["generateName"] + "".join(random.choices(_NAME_CHARS, k=5))
            while (namespace, name) in self._store.get(resource, {}):
                name = meta["generateName"] + "".join(random.choices(_NAME_CHARS, k=5))
        if (namespace, name) in self._store.get(resource, {}):
            raise Reject(
                409,
                "AlreadyExists",
                f'{_group_resource(resource)} "{name}" already exists',
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        obj = clone(body)
        obj["apiVersion"] = (
            f"{resource.group}/{resource.version}" if resource.group else str(resource.version)
        )
        obj["kind"] = info.kind or obj.get("kind")
        new_meta = {k: v for k, v in meta.items() if k not in SERVER_OWNED_METADATA}
        new_meta.update(name=name, uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        if namespace is not None:
            new_meta["namespace"] = namespace
        else:
            new_meta.pop("namespace", None)
        obj["metadata"] = clone(new_meta)
        applied_fields, self._applied_fields = self._applied_fields, None
        served = self._served.get(resource)
        if served is not None:
            self._warnings += cr.decode(served, body, self._params.get("fieldValidation", ""), patch=False)
            obj = cr.prepare(served, obj)
        if "status" in info.subresources:
            obj["status"] = _initial_status(resource)
            if obj["status"] is None:
                del obj["status"]
        self._admit(resource, obj, None)
        self._check_owner_deletion_blocks(obj, None)
        if served is not None:
            self._warnings += cr.validate(served, obj, None)
        if resource == CRDS:
            cr.check_crd(obj)
            obj["status"] = cr.crd_status(obj, self.list_objects(resource_name(CRDS)), now_rfc3339())
        managed = applied_fields or self._managed_fields(resource, None, obj, None)
        if managed:
            obj["metadata"]["managedFields"] = managed
        if (
            self.auto_namespaces
            and namespace is not None
            and (None, namespace) not in self._store.get(NAMESPACES, {})
        ):
            self._create(NAMESPACES, None, {"metadata": {"name": namespace}})
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._commit((resource, namespace, name), obj, None, "ADDED")
        if resource == CRDS:
            self._crd_written(obj, name)
        return obj

    def _update(
        self,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        subresource: str | None,
        candidate_of: Callable[[Obj], Any],
    ) -> Obj:
        info = self._info(resource)
        assert info is not None
        cur = self._require(resource, namespace, name)
        cur_meta = cur["metadata"]
        self._applied_fields = None
        try:
            candidate = candidate_of(cur)
        except PatchError as exc:
            if "test operation failed" in str(exc):  # kube-apiserver says no more than this
                message = "the server rejected our request due to an error in our request"
                raise Reject(422, "Invalid", message) from exc
            raise Reject(422, "Invalid", str(exc)) from exc
        if not isinstance(candidate, dict):
            raise Reject(422, "Invalid", "the patched object is not a JSON object")
        client_rv = (candidate.get("metadata") or {}).get("resourceVersion")
        if self._verb == "update" and resource in self._served and not client_rv:
            raise Reject(  # custom resources do not allow unconditional updates
                422,
                "Invalid",
                f'{_group_resource(resource)} "{name}" is invalid: metadata.resourceVersion: '
                "Invalid value: 0x0: must be specified for an update",
            )
        if client_rv not in (None, "") and str(client_rv) != cur_meta["resourceVersion"]:
            raise Reject(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {_group_resource(resource)} "{name}": '
                "the object has been modified; please apply your changes to the latest version and try again",
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        applied_fields, self._applied_fields = self._applied_fields, None
        served = self._served.get(resource)
        if served is not None:
            if self._verb in ("update", "patch") and applied_fields is None:
                mode = self._params.get("fieldValidation", "")
                self._warnings += cr.decode(served, candidate, mode, patch=self._verb == "patch")
            candidate = cr.prepare(served, candidate)
        # Stored objects are never mutated in place, so unchanged parts may be shared with ``cur``.
        if subresource == "status":
            new = {k: v for k, v in cur.items() if k != "status"}
            if candidate.get("status") is not None:
                new["status"] = clone(candidate["status"])
        else:
            new = clone(candidate)
            if "status" in info.subresources:  # the main resource cannot change status
                if "status" in cur:
                    new["status"] = cur["status"]
                else:
                    new.pop("status", None)
        meta = new["metadata"] = dict(new.get("metadata") or {})
        for key in IMMUTABLE_METADATA:
            if key in cur_meta:
                meta[key] = cur_meta[key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        for key in ("finalizers", "ownerReferences", "labels", "annotations"):
            if key in meta and not meta[key]:
                del meta[key]  # empty lists/maps are omitted, as in the API server's JSON
        meta["resourceVersion"] = cur_meta["resourceVersion"]
        new["apiVersion"], new["kind"] = cur["apiVersion"], cur["kind"]
        if cur_meta.get("deletionTimestamp") and set(meta.get("finalizers") or []) - set(
            cur_meta.get("finalizers") or []
        ):
            raise Reject(
                422,
                "Invalid",
                f'{info.kind} "{name}" is invalid: metadata.finalizers: Forbidden: '
                "no new finalizers can be added if the object is being deleted",
            )
        if subresource is None:
            self._admit(resource, new, cur)
            self._check_owner_deletion_blocks(new, cur)
        if served is not None:
            self._warnings += cr.validate(served, new, cur, status_only=subresource == "status")
        if resource == CRDS and subresource is None:
            cr.check_crd(new)
            others = self.list_objects(resource_name(CRDS))
            new["status"] = _keep_transition_times(
                cr.crd_status(new, others, now_rfc3339()), cur.get("status")
            )
        if cur_meta.get("managedFields"):
            meta["managedFields"] = cur_meta["managedFields"]
        if new == cur:
            return cur  # a no-op write: no new resourceVersion, no event (as on a real API server)
        managed = applied_fields or self._managed_fields(resource, cur, new, subresource)
        if managed:
            meta["managedFields"] = managed
        else:
            meta.pop("managedFields", None)
        if _spec_part(new) != _spec_part(cur):
            meta["generation"] = int(cur_meta.get("generation") or 0) + 1
        meta["resourceVersion"] = self._next_rv()
        self._commit((resource, namespace, name), new, cur, "MODIFIED")
        if resource == CRDS:
            self._crd_written(new, name)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove((resource, namespace, name), new)
        return new

    def _delete(self, key: Key, options: dict[str, Any]) -> Obj:
        resource, namespace, name = key
        cur = self._require(resource, namespace, name)
        cur_meta = cur["metadata"]
        preconditions = options.get("preconditions") or {}
        for field_name in ("uid", "resourceVersion"):
            expected = preconditions.get(field_name)
            if expected and expected != cur_meta.get(field_name):
                raise Reject(
                    409,
                    "Conflict",
                    f"Precondition failed: {field_name} in precondition: {expected}, "
                    f"{field_name} in object meta: {cur_meta.get(field_name)}",
                )
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        if policy is None:
            policy = "Orphan" if resource_name(resource) in self.orphan_by_default else "Background"
        if policy not in ("Orphan", "Background", "Foreground"):
            raise Reject(
                400, "BadRequest", f"propagationPolicy {policy!r}: must be Orphan, Background or Foreground"
            )
        if cur_meta.get("deletionTimestamp"):
            return cur
        if policy == "Orphan":
            for dependent in list(self._dependents.get(cur_meta["uid"], ())):
                self._drop_owner_reference(dependent, cur_meta["uid"])
        elif policy == "Foreground":  # approximation: dependents go first, synchronously
            self._collect_garbage(cur_meta["uid"])
        if cur_meta.get("finalizers"):
            new = _with_metadata(cur, deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0)
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._commit(key, new, cur, "MODIFIED")
            return new
        return self._remove(key, cur)

    def _remove(self, key: Key, cur: Obj) -> Obj:
        resource, _, name = key
        final = _with_metadata(cur, resourceVersion=self._next_rv())
        self._commit(key, final, cur, "DELETED")
        if resource == CRDS:
            served = [r for r, v in self._served.items() if v.crd_name == name]
            self._crd_written(None, name)
            for instance_resource in served:  # instances go with their CRD (no finalizer wait here)
                for ns, instance in list(self._store.get(instance_resource, {})):
                    gone = self._store[instance_resource].pop((ns, instance))
                    self._commit((instance_resource, ns, instance), gone, gone, "DELETED")
        self._collect_garbage(cur["metadata"]["uid"])
        if resource == NAMESPACES:
            for other, bucket in list(self._store.items()):
                for ns, other_name in [k for k in bucket if k[0] == name]:
                    if (ns, other_name) in bucket:
                        self._delete((other, ns, other_name), {"propagationPolicy": "Background"})
        return final

    def _collect_garbage(self, owner_uid: str) -> None:
        """Delete (background) dependents of a gone owner, or drop the reference if other owners live."""
        for key in list(self._dependents.get(owner_uid, ())):
            dependent = self._store.get(key[0], {}).get((key[1], key[2]))
            if dependent is None:
                continue
            others = [
                ref
                for ref in dependent["metadata"].get("ownerReferences") or []
                if ref.get("uid") != owner_uid
            ]
            if any(ref.get("uid") in self._uids for ref in others):
                self._drop_owner_reference(key, owner_uid)
            else:
                self._delete(key, {"propagationPolicy": "Background"})

    def _drop_owner_reference(self, key: Key, owner_uid: str) -> None:
        cur = self._store.get(key[0], {}).get((key[1], key[2]))
        if cur is None:
            return
        new = _with_metadata(cur)
        refs = [ref for ref in new["metadata"].get("ownerReferences") or [] if ref.get("uid") != owner_uid]
        if refs:
            new["metadata"]["ownerReferences"] = refs
        else:
            new["metadata"].pop("ownerReferences", None)
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._commit(key, new, cur, "MODIFIED")

    def _admit(self, resource: kmock.resource, obj: Obj, old: Obj | None) -> None:
        try:
            admit(resource_name(resource), obj, old)
        except Undecodable as exc:
            raise Reject(400, "BadRequest", str(exc)) from exc
        except Invalid as exc:
            kind = self._info(resource).kind if self._info(resource) else resource.plural
            qualified = f"{kind}.{resource.group}" if resource.group else kind  # as errors.NewInvalid
            message = exc.errors[0] if len(exc.errors) == 1 else "[" + ", ".join(exc.errors) + "]"
            raise Reject(
                422,
                "Invalid",
                f'{qualified} "{obj["metadata"].get("name")}" is invalid: {message}',
                {"causes": [{"message": error} for error in exc.errors]},
            ) from exc

    def _commit(self, key: Key, new: Obj, old: Obj | None, event_type: str) -> None:
        """Store a new state (or a deletion), keep the indexes and kmock's mirror, notify watchers."""
        resource, namespace, name = key
        bucket = self._store.setdefault(resource, {})
        if event_type == "DELETED":
            bucket.pop((namespace, name), None)
        else:
            bucket[(namespace, name)] = new
        mirrored = self._objects._objects.get(key)  # private dict: the public view re-parses keys (slow)
        if mirrored is None:
            mirrored = self._objects._objects[key] = kmock.Object(new)
        else:
            mirrored.history.append(new)
        history = mirrored.history
        if event_type == "DELETED":
            history.append(None)
        if self.keep_history is not None and len(history) > self.keep_history:
            del history[: len(history) - self.keep_history]
        # uid and ownerReference indexes
        if old is not None:
            for owner in _owner_uids(old) - (_owner_uids(new) if event_type != "DELETED" else set()):
                self._dependents.get(owner, set()).discard(key)
            if event_type == "DELETED":
                self._uids.pop(old["metadata"]["uid"], None)
        if event_type != "DELETED":
            self._uids[new["metadata"]["uid"]] = key
            for owner in _owner_uids(new):
                self._dependents.setdefault(owner, set()).add(key)
        # watch events (and the log for resumption from a resourceVersion)
        rv = int(new["metadata"]["resourceVersion"])
        log = self._event_log.setdefault(resource, collections.deque())
        log.append((rv, event_type, new, old))
        while len(log) > self.keep_events:
            self._event_floor[resource] = log.popleft()[0]
        for watch in self._watches.get(resource, ()):
            event = watch.translate(event_type, new, old)
            if event is not None:
                watch.queue.put_nowait(event)


# -------------------------------------------------------------------- module helpers


def declare_crd(
    emulator: RealisticEmulator,
    group: str,
    version: str,
    plural: str,
    kind: str,
    short_names: Iterable[str] = (),
    namespaced: bool = True,
) -> kmock.resource:
    """Serve a custom resource on ``emulator`` (all verbs, status subresource on); see the method."""
    return emulator.declare_crd(group, version, plural, kind, short_names, namespaced)


def _api_version(resource: kmock.resource) -> str:
    return _group_version(resource.group or "", str(resource.version))


def _group_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


def _escape_warning(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _keep_transition_times(status: Obj, old: Obj | None) -> Obj:
    """A condition keeps its lastTransitionTime while its status does not change."""
    before = {c.get("type"): c for c in (old or {}).get("conditions") or []}
    for condition in status.get("conditions") or []:
        previous = before.get(condition["type"])
        if previous is not None and previous.get("status") == condition["status"]:
            condition["lastTransitionTime"] = previous.get(
                "lastTransitionTime", condition["lastTransitionTime"]
            )
    return status


def _with_metadata(obj: Obj, **changes: Any) -> Obj:
    """A new object sharing everything with ``obj`` except a changed copy of its metadata."""
    return {**obj, "metadata": {**obj["metadata"], **changes}}


def _object_sort_key(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("namespace") or "", obj["metadata"]["name"]


def _initial_status(resource: kmock.resource) -> Obj | None:
    """What a real API server puts into ``status`` on create (client-sent status is dropped)."""
    name = resource_name(resource)
    if name == "v1/pods":
        return {"phase": "Pending", "qosClass": "BestEffort"}
    if name == "v1/namespaces":
        return {"phase": "Active"}
    if name == "batch/v1/jobs":
        return {}
    return None


def _rbac_verb(request: rendering.Request) -> str:
    method = request.method.value if hasattr(request.method, "value") else str(request.method)
    return _verb(method, request.params, request.name is not None)


def _verb(method: str, params: Mapping[str, str], has_name: bool) -> str:
    """The RBAC verb of an HTTP request on a resource path."""
    if method == "GET":
        if str(params.get("watch", "")).lower() in ("true", "1"):
            return "watch"
        return "get" if has_name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if has_name else "deletecollection"
    return method.lower()


def _put_candidate(body: Any, name: str) -> Callable[[Obj], Any]:
    if not isinstance(body, dict):
        raise Reject(400, "BadRequest", "the request body must be a JSON object")
    body_name = (body.get("metadata") or {}).get("name")
    if body_name not in (None, name):
        raise Reject(
            400,
            "BadRequest",
            f"the name of the object ({body_name}) does not match the name on the URL ({name})",
        )
    return lambda cur: body


def _patch_candidate(content_type: str, body: Any) -> Callable[[Obj], Any]:
    media_type = content_type.split(";")[0].strip().lower()
    if body is None:
        raise Reject(400, "BadRequest", "the patch body is empty or not JSON")
    if media_type == "application/json-patch+json":
        return lambda cur: json_patch(cur, body)
    if media_type == "application/merge-patch+json":
        return lambda cur: merge_patch(cur, body)
    if media_type == "application/strategic-merge-patch+json":
        return lambda cur: strategic_merge_patch(cur, body)
    if media_type == "application/apply-patch+yaml":
        raise Reject(
            415, "UnsupportedMediaType", "server-side apply is not emulated: use a merge or JSON patch"
        )
    # Plain application/json (kmock's client): choose by shape, as kmock does.
    return (
        (lambda cur: json_patch(cur, body))
        if isinstance(body, list)
        else (lambda cur: merge_patch(cur, body))
    )


def _delete_query_options(params: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if params.get("propagationPolicy"):
        options["propagationPolicy"] = params["propagationPolicy"]
    if params.get("orphanDependents"):
        options["orphanDependents"] = params["orphanDependents"].lower() == "true"
    return options


def _success_status(resource: kmock.resource, obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": meta["name"],
            "group": resource.group,
            "kind": resource.plural,
            "uid": meta["uid"],
        },
    }


def _status_response(code: int, reason: str, message: str, details: dict[str, Any]) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code,
        },
        status=code,
    )


def _jsonline(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


@functools.lru_cache(maxsize=1024)
def _resource(group: str, version: str, plural: str) -> kmock.resource:
    return kmock.resource(group=group, version=version, plural=plural)


@functools.lru_cache(maxsize=1024)
def _split(resource: str) -> tuple[str, str, str]:
    return split_resource(resource)


def parse_resource_path(path: str) -> tuple[kmock.resource, str | None, str | None, str | None] | None:
    """``/apis/g/v/namespaces/ns/plural/name/sub`` -> (resource, namespace, name, subresource), or None."""
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    namespace_subresource = group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest[0] == "namespaces" and len(rest) >= 3 and not namespace_subresource:
        namespace, rest = rest[1], rest[2:]
    name = rest[1] if len(rest) > 1 else None
    return _resource(group, version, rest[0]), namespace, name, "/".join(rest[2:]) or None


async def _parse_request(
    raw_request: aiohttp.web.BaseRequest,
    parsed: tuple[kmock.resource, str | None, str | None, str | None],
    id: int,
) -> rendering.Request:
    """A kmock Request for a resource path (what kmock's own ``Request._parse`` builds, but cheaper)."""
    resource, namespace, name, subresource = parsed
    body = await raw_request.read()
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    params = dict(raw_request.query)
    return rendering.Request(
        id=id,
        raw_request=raw_request,
        url=raw_request.url,
        method=raw_request.method,
        params=params,
        headers=dict(raw_request.headers),
        cookies=dict(raw_request.cookies),
        body=body,
        text=body.decode(errors="replace"),
        data=data,
        resource=resource,
        namespace=namespace,
        name=name,
        subresource=subresource,
        action=_ACTIONS.get(_verb(raw_request.method, params, name is not None)),  # for kmock's DSL filters
    )
