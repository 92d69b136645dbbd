"""A minimal async Kubernetes REST client for tests (talks to the emulator over real HTTP).

Resources are named as ``'batch/v1/jobs'`` or ``'v1/pods'`` (group/version/plural; core has no group).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import aiohttp
import yarl

PatchType = Literal["merge", "json", "strategic"]
PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


class ApiError(Exception):
    """A non-2xx answer of the API server, with the Kubernetes Status fields."""

    def __init__(self, status: int, reason: str, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body


def split_resource(resource: str) -> tuple[str, str, str]:
    """``'batch/v1/jobs'`` -> ``('batch', 'v1', 'jobs')``; ``'v1/pods'`` -> ``('', 'v1', 'pods')``."""
    parts = resource.strip("/").split("/")
    if len(parts) == 2:
        return "", parts[0], parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise ValueError(f"Resource {resource!r} must look like 'group/version/plural' or 'v1/plural'.")


def resource_path(
    resource: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection or an object, e.g. ``/apis/batch/v1/namespaces/ns/jobs/x/status``."""
    group, version, plural = split_resource(resource)
    path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace is not None:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
    return path


class K8sClient:
    """Async JSON client for the Kubernetes REST API (only what tests and the fake kubelet need)."""

    def __init__(
        self,
        base_url: str | yarl.URL,
        *,
        token: str = "kmock-dummy-token",
        user_agent: str = "k8s-test-client",
    ) -> None:
        self.base_url = str(base_url).rstrip("/")
        self._token = token
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> K8sClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created lazily: aiohttp sessions must be created inside the running loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self._token}", "User-Agent": self._user_agent},
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self.session.request(
            method, self.base_url + path, data=data, params=params, headers=headers
        ) as response:
            text = await response.text()
            payload = json.loads(text) if text else None
            if response.status >= 400:
                raise _error_from(response.status, payload, text)
            return payload

    async def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.request("GET", resource_path(resource, namespace, name))

    async def get_or_none(
        self, resource: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self.get(resource, name, namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        listing = await self.list_raw(
            resource, namespace, label_selector=label_selector, field_selector=field_selector
        )
        return list(listing["items"])

    async def list_raw(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict[str, Any]:
        """The whole List object (with ``metadata.resourceVersion`` to start a watch from)."""
        params = _selector_params(label_selector, field_selector)
        return await self.request("GET", resource_path(resource, namespace), params=params)

    async def create(
        self, resource: str, body: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """POST ``body``; the namespace defaults to ``body.metadata.namespace``."""
        namespace = namespace if namespace is not None else (body.get("metadata") or {}).get("namespace")
        return await self.request("POST", resource_path(resource, namespace), body=dict(body))

    async def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        patch_type: PatchType = "merge",
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            resource_path(resource, namespace, name, subresource),
            body=patch,
            content_type=PATCH_CONTENT_TYPES[patch_type],
        )

    async def patch_status(
        self, resource: str, name: str, status: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch ``.status`` through the status subresource."""
        return await self.patch(resource, name, {"status": dict(status)}, namespace, subresource="status")

    async def replace(
        self,
        resource: str,
        name: str,
        body: Mapping[str, Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self.request(
            "PUT", resource_path(resource, namespace, name, subresource), body=dict(body)
        )

    async def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """DELETE with optional DeleteOptions; Jobs need ``propagation_policy='Background'`` to drop pods."""
        options = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy is not None:
            options["propagationPolicy"] = propagation_policy
        try:
            return await self.request("DELETE", resource_path(resource, namespace, name), body=options)
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    async def watch(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events (``{'type': ..., 'object': ...}``) until the server ends the stream."""
        params = {"watch": "true", **_selector_params(label_selector, field_selector)}
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        if timeout_seconds is not None:
            params["timeoutSeconds"] = str(timeout_seconds)
        url = self.base_url + resource_path(resource, namespace)
        async with self.session.get(url, params=params) as response:
            if response.status >= 400:
                text = await response.text()
                raise _error_from(response.status, json.loads(text) if text else None, text)
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


def _selector_params(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return params


def _error_from(status: int, payload: Any, text: str) -> ApiError:
    if isinstance(payload, dict):
        return ApiError(status, str(payload.get("reason", "")), str(payload.get("message", text)), payload)
    return ApiError(status, "", text[:500], payload)
