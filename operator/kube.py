"""The operator's writes to the Kubernetes API, idempotent and classified.

Reads come from Kopf's watch streams (indexes); this module only writes: create ConfigMaps, Services (the
headless Service of a multi-node torchrun Job) and Jobs (409 = already there = success), delete them (404
= already gone = success), patch Jobs and the status subresource of our resources. The ``kubernetes``
client is synchronous, so calls run in a small thread pool.
"""

from __future__ import annotations

import asyncio
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

    async def create_configmap(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create it. A ConfigMap of that name from an earlier try (an attempt re-run after suspend, a
        crash between two creates) is replaced, so the task always matches the Job about to be created.
        Returns True when created on the first try."""
        name = body["metadata"]["name"]
        what = f"ConfigMap {namespace}/{name}"

        def create() -> Any:
            return self.core.create_namespaced_config_map(
                namespace, body, _request_timeout=self.timeout, _preload_content=False
            )

        if await self._call("create", what, create, ok=(409,)) is not None:
            return True
        await self.delete_configmap(namespace, name)
        await self._call("create", what, create)
        return False

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create it; 409 (a Job of this deterministic name exists) is success. Returns True when created."""
        name = body["metadata"]["name"]
        created = await self._call(
            "create",
            f"Job {namespace}/{name}",
            lambda: self.batch.create_namespaced_job(
                namespace, body, _request_timeout=self.timeout, _preload_content=False
            ),
            ok=(409,),
        )
        return created is not None

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

    async def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch ``status`` of one of our resources; False when the resource is gone."""
        plural = KIND_INFO[kind].plural
        result = await self._call(
            "patch",
            f"{kind} {namespace}/{name} status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                {"status": patch},
                _content_type=MERGE_PATCH,
                _request_timeout=self.timeout,
                _preload_content=False,
            ),
            ok=(404,),
        )
        return result is not None


def _drain(response: Any) -> Any:
    """Read an unparsed response (``_preload_content=False``) so its connection returns to the pool."""
    if hasattr(response, "data"):
        response.data  # noqa: B018 - reading releases the connection
    return response


def _message(exc: Any) -> str:
    import json

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
