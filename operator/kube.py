"""The operator's writes to the Kubernetes API, idempotent and classified.

Reads come from Kopf's watch streams (indexes); this module writes: create ConfigMaps, Jobs and the
headless Services of multi-node torchrun Jobs (409 = already there; for a Job, the existing one is handed
back so the caller can check whose it is), delete them (404 = already gone = success), patch Jobs and,
conditional on the resourceVersion the plan was made from, the status subresource of our resources. The
few reads here are fresh state for those decisions (the Job that holds a name, a resource after a 409).
The ``kubernetes`` client is synchronous, so calls run in a small thread pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from synthrec.api import GROUP, KIND_INFO, VERSION

log = logging.getLogger("synthrec.operator")
T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"


class ApiFailure(Exception):
    """A Kubernetes API error, with the HTTP status and the server's message."""

    def __init__(self, verb: str, what: str, status: int, message: str) -> None:
        super().__init__(f"{verb} {what}: HTTP {status}: {message}")
        self.verb, self.what, self.status, self.message = verb, what, status, message

    @property
    def permanent(self) -> bool:
        """The request itself is wrong (invalid object, rejected by admission): retrying cannot help."""
        return self.status in (400, 422)

    @property
    def conflict(self) -> bool:
        """409: the object changed since it was read (optimistic concurrency); re-read, re-plan, retry."""
        return self.status == 409


def load_client_configuration() -> Any:
    """In-cluster credentials in a pod, else $KUBECONFIG (read now, not at import time)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        config.load_kube_config(config_file=path.split(os.pathsep)[0], client_configuration=cfg)
    return cfg


class KubeApi:
    """Idempotent writes. ``errors`` is called with (verb, status) for metrics."""

    def __init__(
        self,
        configuration: Any | None = None,
        *,
        request_timeout: float = 30.0,
        workers: int = 8,
        on_error: Callable[[str, int], None] | None = None,
    ) -> None:
        from kubernetes import client

        self._configuration = configuration or load_client_configuration()
        self._api_client = client.ApiClient(self._configuration)
        self.core = client.CoreV1Api(self._api_client)
        self.batch = client.BatchV1Api(self._api_client)
        self.custom = client.CustomObjectsApi(self._api_client)
        self.coordination = client.CoordinationV1Api(self._api_client)
        self.timeout = request_timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthrec-kube")
        self._on_error = on_error

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._api_client.close()

    async def _call(self, verb: str, what: str, fn: Callable[[], T], ok: tuple[int, ...] = ()) -> T | None:
        from kubernetes.client.exceptions import ApiException

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: _drain(fn()))
        except ApiException as exc:
            status = int(exc.status or 0)
            if status in ok:
                return None
            if self._on_error is not None:
                self._on_error(verb, status)
            raise ApiFailure(verb, what, status, _message(exc)) from None
        except Exception as exc:  # connection refused, timeouts, TLS: transient by nature
            if self._on_error is not None:
                self._on_error(verb, 0)
            raise ApiFailure(verb, what, 0, f"{type(exc).__name__}: {exc}") from None

    async def _json(self, verb: str, what: str, fn: Callable[[], Any], ok: tuple[int, ...] = ()) -> Any:
        """The parsed JSON answer of a call; None when its status is in ``ok``."""
        response = await self._call(verb, what, fn, ok=ok)
        return None if response is None else json.loads(response.data or b"null")

    async def create_configmap(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create it; False when a ConfigMap of that name exists already (409), which is left untouched."""
        name = body["metadata"]["name"]
        created = await self._call(
            "create",
            f"ConfigMap {namespace}/{name}",
            lambda: self.core.create_namespaced_config_map(
                namespace, body, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(409,),
        )
        return created is not None

    async def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._json(  # type: ignore[no-any-return]
            "get",
            f"ConfigMap {namespace}/{name}",
            lambda: self.core.read_namespaced_config_map(
                name, namespace, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(404,),
        )

    async def replace_configmap(self, namespace: str, body: dict[str, Any], resource_version: str) -> bool:
        """Replace it if it is still at ``resource_version``; False when it changed or went meanwhile."""
        name = body["metadata"]["name"]
        conditional = {**body, "metadata": {**body["metadata"], "resourceVersion": resource_version}}
        replaced = await self._call(
            "update",
            f"ConfigMap {namespace}/{name}",
            lambda: self.core.replace_namespaced_config_map(
                name, namespace, conditional, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(404, 409),
        )
        return replaced is not None

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create it. None when created; the Job that exists under this deterministic name otherwise (409),
        so that the caller can tell its own Job from somebody else's."""
        name = body["metadata"]["name"]
        what = f"Job {namespace}/{name}"
        created = await self._call(
            "create",
            what,
            lambda: self.batch.create_namespaced_job(
                namespace, body, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(409,),
        )
        if created is not None:
            return None
        existing = await self.read_job(namespace, name)
        if existing is None:  # deleted since the 409: the next pass creates it
            raise ApiFailure("create", what, 409, "a Job of this name existed and is being deleted")
        return existing

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._json(  # type: ignore[no-any-return]
            "get",
            f"Job {namespace}/{name}",
            lambda: self.batch.read_namespaced_job(
                name, namespace, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(404,),
        )

    async def create_service(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a Job's headless Service; 409 (one of this deterministic name exists) is success."""
        name = body["metadata"]["name"]
        created = await self._call(
            "create",
            f"Service {namespace}/{name}",
            lambda: self.core.create_namespaced_service(
                namespace, body, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(409,),
        )
        return created is not None

    async def delete_service(self, namespace: str, name: str) -> None:
        await self._call(
            "delete",
            f"Service {namespace}/{name}",
            lambda: self.core.delete_namespaced_service(
                name, namespace, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(404,),
        )

    async def delete_job(self, namespace: str, name: str, propagation: str = "Foreground") -> None:
        await self._call(
            "delete",
            f"Job {namespace}/{name}",
            lambda: self.batch.delete_namespaced_job(
                name,
                namespace,
                propagation_policy=propagation,
                _request_timeout=self.timeout,
                _preload_content=False,
            ),
            ok=(404,),
        )

    async def delete_configmap(self, namespace: str, name: str) -> None:
        await self._call(
            "delete",
            f"ConfigMap {namespace}/{name}",
            lambda: self.core.delete_namespaced_config_map(
                name, namespace, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(404,),
        )

    async def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self._call(
            "patch",
            f"Job {namespace}/{name}",
            lambda: self.batch.patch_namespaced_job(
                name,
                namespace,
                patch,
                _content_type=MERGE_PATCH,
                _request_timeout=self.timeout,
                _preload_content=False,
            ),
            ok=(404,),
        )

    async def patch_status(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any] | None:
        """Merge-patch ``status`` of one of our resources, on condition that the resource is still at
        ``resource_version`` (the API server answers 409 otherwise: ``ApiFailure.conflict``). Returns the
        updated resource; None when it is gone."""
        plural = KIND_INFO[kind].plural
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._json(  # type: ignore[no-any-return]
            "patch",
            f"{kind} {namespace}/{name} status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body,
                _content_type=MERGE_PATCH,
                _request_timeout=self.timeout,
                _preload_content=False,
            ),
            ok=(404,),
        )

    async def read_resource(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One of our resources as it is now (after a 409: the fresh state to plan from); None when gone."""
        plural = KIND_INFO[kind].plural
        return await self._json(  # type: ignore[no-any-return]
            "get",
            f"{kind} {namespace}/{name}",
            lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(404,),
        )

    # ------------------------------------------------------------------------- the leader election Lease

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._json(  # type: ignore[no-any-return]
            "get",
            f"Lease {namespace}/{name}",
            lambda: self.coordination.read_namespaced_lease(
                name, namespace, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(404,),
        )

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create it; None when somebody else created it first (409)."""
        return await self._json(  # type: ignore[no-any-return]
            "create",
            f"Lease {namespace}/{body['metadata']['name']}",
            lambda: self.coordination.create_namespaced_lease(
                namespace, body, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(409,),
        )

    async def replace_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Update it at the resourceVersion in ``body``; None when it changed since (409)."""
        name = body["metadata"]["name"]
        return await self._json(  # type: ignore[no-any-return]
            "update",
            f"Lease {namespace}/{name}",
            lambda: self.coordination.replace_namespaced_lease(
                name, namespace, body, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(409,),
        )


def _drain(response: Any) -> Any:
    """Read an unparsed response (``_preload_content=False``) so its connection returns to the pool."""
    if hasattr(response, "data"):
        response.data  # noqa: B018 - reading releases the connection
    return response


def _message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason or exc.body)[:2000]
    except (TypeError, ValueError):
        return str(exc.reason or exc.body or exc)[:2000]


def merge_diff(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (None values delete keys)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_diff(old[key], value) if isinstance(value, dict) else value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
