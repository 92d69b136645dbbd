"""How the fake kubelet runs a container: as a local subprocess, or as a plain Python function.

``SubprocessRunner`` maps the container onto the local machine: ``command + args`` (``$(VAR)``
expanded), env from values, Secrets, ConfigMaps and the downward API, volumes materialised into
folders (every occurrence of a mount path in command/args/env is rewritten to its folder), the
termination-message file mapped to a temp file whose path is exported in an env var, and cluster DNS:
a pod's name behind a headless Service (``<hostname>.<subdomain>``) in the env resolves to this machine,
where every pod of the fake kubelet runs (``resolve_cluster_dns``).
``FakeRunner`` calls ``fn(job, index, attempt)`` instead: no process, for fast runs with many shards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import os
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.k8s.client import K8sClient

MAX_TERMINATION_MESSAGE = 4096  # bytes, as the kubelet truncates it
FALLBACK_LOG_BYTES, FALLBACK_LOG_LINES = 2048, 80  # terminationMessagePolicy: FallbackToLogsOnError


@dataclass(frozen=True)
class ContainerResult:
    exit_code: int
    message: str = ""
    reason: str | None = None  # default: Completed for 0, Error otherwise

    @property
    def terminated_reason(self) -> str:
        return self.reason or ("Completed" if self.exit_code == 0 else "Error")


class ContainerConfigError(Exception):
    """The container cannot start yet (a missing Secret, ConfigMap or key): the pod stays Pending
    with ``state.waiting.reason`` = ``reason``, and the kubelet retries, as a real one does."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


@dataclass
class ContainerLaunch:
    """Everything a runner may need to start one container of one pod."""

    job: dict[str, Any]
    pod: dict[str, Any]
    container: dict[str, Any]
    index: int | None  # the completion index (None for NonIndexed Jobs)
    attempt: int  # 0 for the first pod of this index, 1 for its first replacement, ...
    pod_dir: Path  # a private folder of this pod
    log_path: Path  # stdout+stderr of this container
    shared_dir: Path  # the kubelet's folder (persistentVolumeClaims live under it)
    api: K8sClient

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])


class ContainerProcess(Protocol):
    async def wait(self) -> ContainerResult: ...

    async def terminate(self, grace_period: float) -> None: ...


class Runner(Protocol):
    async def start(self, launch: ContainerLaunch) -> ContainerProcess: ...


# ------------------------------------------------------------------ subprocess runner


class SubprocessRunner:
    """Run each container as a local process group (killed as a whole on pod deletion)."""

    def __init__(
        self,
        *,
        python: str | None = sys.executable,
        termination_log_env: str = "SYNTHREC_TERMINATION_LOG",
        extra_env: Mapping[str, str] | None = None,
        entrypoints: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """
        :param python: what a first command element ``python``/``python3`` becomes (None: leave it).
        :param termination_log_env: env var holding the local file that stands for terminationMessagePath.
        :param extra_env: added to every process (after the container's own env).
        :param entrypoints: image -> command, for containers that have only ``args`` (image ENTRYPOINT).
        """
        self.python = python
        self.termination_log_env = termination_log_env
        self.extra_env = dict(extra_env or {})
        self.entrypoints = {image: list(command) for image, command in (entrypoints or {}).items()}

    async def start(self, launch: ContainerLaunch) -> ContainerProcess:
        container = launch.container
        name = container["name"]
        launch.pod_dir.mkdir(parents=True, exist_ok=True)
        env = await resolve_cluster_dns(launch, await resolve_env(launch))
        mounts = await materialise_volumes(launch)
        termination_log = launch.pod_dir / f"{name}.termination-log"
        termination_log.write_bytes(b"")
        mounts[container.get("terminationMessagePath") or "/dev/termination-log"] = termination_log
        command = list(container.get("command") or self.entrypoints.get(container.get("image", ""), []))
        if not command:
            return _Finished(
                ContainerResult(
                    128,
                    f"container {name!r} has no command and image "
                    f"{container.get('image')!r} has no entrypoint in "
                    "SubprocessRunner(entrypoints=...)",
                    "StartError",
                )
            )
        argv = [
            rewrite_paths(expand_vars(arg, env), mounts) for arg in [*command, *(container.get("args") or [])]
        ]
        if self.python and argv[0] in ("python", "python3"):
            argv[0] = self.python
        process_env = {
            **os.environ,
            **{k: rewrite_paths(v, mounts) for k, v in env.items()},
            **self.extra_env,
        }
        process_env[self.termination_log_env] = str(termination_log)
        if launch.index is not None:
            process_env["JOB_COMPLETION_INDEX"] = str(launch.index)
        working_dir = rewrite_paths(container.get("workingDir") or "", mounts)
        cwd = working_dir if working_dir and Path(working_dir).is_dir() else str(launch.pod_dir)
        with open(launch.log_path, "ab") as log:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=process_env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                return _Finished(
                    ContainerResult(128, f"exec: {argv[0]!r}: {exc.strerror or exc}", "StartError")
                )
        return _Subprocess(
            process, termination_log, launch.log_path, container.get("terminationMessagePolicy")
        )


@dataclass
class _Finished:
    result: ContainerResult

    async def wait(self) -> ContainerResult:
        return self.result

    async def terminate(self, grace_period: float) -> None:
        pass


@dataclass
class _Subprocess:
    process: asyncio.subprocess.Process
    termination_log: Path
    log_path: Path
    message_policy: str | None

    async def wait(self) -> ContainerResult:
        returncode = await self.process.wait()
        exit_code = 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128+N
        message = self.termination_log.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        if not message and exit_code != 0 and self.message_policy == "FallbackToLogsOnError":
            tail = self.log_path.read_bytes()[-FALLBACK_LOG_BYTES:].decode(errors="replace")
            message = "\n".join(tail.splitlines()[-FALLBACK_LOG_LINES:])
        return ContainerResult(exit_code, message)

    async def terminate(self, grace_period: float) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period (as the kubelet does)."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_period):  # not wait_for: it can eat a cancel in 3.11
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()


# ------------------------------------------------------------------ fake runner

FakeResult = ContainerResult | int | tuple[int, str]
FakeFn = Callable[[dict[str, Any], int | None, int], FakeResult | Awaitable[FakeResult]]


class FakeRunner:
    """Run ``fn(job, index, attempt) -> (exit_code, termination_message)`` (or an int, or a
    ContainerResult; sync or async) instead of a process. Deleting the pod cancels it (exit 143)."""

    def __init__(self, fn: FakeFn) -> None:
        self.fn = fn

    async def start(self, launch: ContainerLaunch) -> ContainerProcess:
        return _FakeProcess(asyncio.ensure_future(self._call(launch)))

    async def _call(self, launch: ContainerLaunch) -> ContainerResult:
        result = self.fn(launch.job, launch.index, launch.attempt)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, ContainerResult):
            return result
        if isinstance(result, int):
            return ContainerResult(result)
        exit_code, message = result
        return ContainerResult(int(exit_code), str(message)[:MAX_TERMINATION_MESSAGE])


@dataclass
class _FakeProcess:
    task: asyncio.Future[ContainerResult]

    async def wait(self) -> ContainerResult:
        await asyncio.wait({self.task})
        if self.task.cancelled():
            return ContainerResult(128 + signal.SIGTERM)
        return self.task.result()

    async def terminate(self, grace_period: float) -> None:
        self.task.cancel()
        await asyncio.wait({self.task})


# ------------------------------------------------------------------ env and volumes

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined vars are substituted, ``$$`` escapes, others stay."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(substitute, text)


def rewrite_paths(text: str, mounts: Mapping[str, Path]) -> str:
    """Replace every whole-path occurrence of a mount path (``/data``, ``/data/x``, ``--out=/data``)."""
    if not mounts or not text:
        return text
    paths = sorted((m.rstrip("/") for m in mounts if m.rstrip("/")), key=len, reverse=True)
    targets = {m.rstrip("/"): str(path) for m, path in mounts.items()}
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(p) for p in paths) + r")(?=/|$|[^\w.-])")
    return pattern.sub(lambda match: targets[match.group(1)], text)


def _decoded(obj: dict[str, Any], resource: str) -> dict[str, str]:
    if resource == "v1/secrets":
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


async def _key_ref(api: K8sClient, resource: str, namespace: str, ref: dict[str, Any]) -> str | None:
    kind = "secret" if resource == "v1/secrets" else "configmap"
    obj = await api.get_or_none(resource, ref["name"], namespace)
    if obj is None:
        if ref.get("optional"):
            return None
        raise ContainerConfigError("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
    data = _decoded(obj, resource)
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(
            "CreateContainerConfigError",
            f"couldn't find key {ref['key']} in {kind.capitalize()} {namespace}/{ref['name']}",
        )
    return data[ref["key"]]


def field_ref(pod: dict[str, Any], path: str) -> str:
    """The downward API: metadata.name/namespace/uid, metadata.labels['k'], metadata.annotations['k'], ..."""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((pod["metadata"].get(match.group(1)) or {}).get(match.group(2), ""))
    value: Any = pod
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return "" if value is None else str(value)


async def resolve_env(launch: ContainerLaunch) -> dict[str, str]:
    """The container's env, in Kubernetes order: envFrom first, then env (which may refer to earlier vars)."""
    container, api, namespace = launch.container, launch.api, launch.namespace
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for key, resource in (("configMapRef", "v1/configmaps"), ("secretRef", "v1/secrets")):
            if key in source:
                ref = source[key]
                obj = await api.get_or_none(resource, ref["name"], namespace)
                if obj is None and not ref.get("optional"):
                    kind = "secret" if key == "secretRef" else "configmap"
                    raise ContainerConfigError(
                        "CreateContainerConfigError", f'{kind} "{ref["name"]}" not found'
                    )
                for name, value in (_decoded(obj, resource) if obj else {}).items():
                    env[source.get("prefix", "") + name] = value
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        value: str | None
        if source is None:
            value = expand_vars(str(var.get("value", "")), env)
        elif "secretKeyRef" in source:
            value = await _key_ref(api, "v1/secrets", namespace, source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = await _key_ref(api, "v1/configmaps", namespace, source["configMapKeyRef"])
        elif "fieldRef" in source:
            value = field_ref(launch.pod, source["fieldRef"]["fieldPath"])
        else:
            raise ContainerConfigError(
                "CreateContainerConfigError", f"env {var['name']}: valueFrom {sorted(source)} is not emulated"
            )
        if value is not None:
            env[var["name"]] = value
    return env


_POD_DNS_NAME = re.compile(
    r"(?<![-.a-z0-9])([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.([a-z](?:[-a-z0-9]*[a-z0-9])?)"
    r"((?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.svc(?:\.cluster\.local)?)?(?![-a-z0-9]|\.[a-z0-9])"
)
NODE_ADDRESS = "127.0.0.1"  # every pod of the fake kubelet runs on this machine


async def resolve_cluster_dns(launch: ContainerLaunch, env: dict[str, str]) -> dict[str, str]:
    """kube-dns for the pods of this machine: ``<hostname>.<subdomain>[.<namespace>.svc[.cluster.local]]``
    resolves to a pod when a headless Service named ``<subdomain>`` exists in the namespace and selects a
    pod whose ``spec.hostname`` and ``spec.subdomain`` are those; such a name in an env value becomes this
    machine's address (the pod's IP on a cluster). Any other name is left alone: it would not resolve on a
    cluster either (no Service, not headless, a selector that misses the pod, no such pod)."""
    namespace = launch.namespace
    known: dict[tuple[str, str], bool] = {}

    async def names_a_pod(host: str, subdomain: str) -> bool:
        if (host, subdomain) not in known:
            known[host, subdomain] = await _headless_pod(launch.api, namespace, host, subdomain)
        return known[host, subdomain]

    out = {}
    for key, value in env.items():
        pieces, last = [], 0
        for match in _POD_DNS_NAME.finditer(value):
            host, subdomain, suffix = match.groups()
            if suffix and not suffix.startswith(f".{namespace}.svc"):
                continue
            if await names_a_pod(host, subdomain):
                pieces += [value[last : match.start()], NODE_ADDRESS]
                last = match.end()
        out[key] = "".join(pieces) + value[last:] if pieces else value
    return out


async def _headless_pod(api: K8sClient, namespace: str, host: str, subdomain: str) -> bool:
    service = await api.get_or_none("v1/services", subdomain, namespace)
    spec = (service or {}).get("spec") or {}
    selector = spec.get("selector") or {}
    if spec.get("clusterIP") != "None" or not selector:
        return False
    labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    for pod in await api.list("v1/pods", namespace, label_selector=labels):
        pod_spec = pod.get("spec") or {}
        if pod_spec.get("hostname") == host and pod_spec.get("subdomain") == subdomain:
            return True
    return False


async def materialise_volumes(launch: ContainerLaunch) -> dict[str, Path]:
    """mountPath -> local folder (or file, with subPath) for each of the container's volumeMounts."""
    volumes = {v["name"]: v for v in launch.pod["spec"].get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in launch.container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise ContainerConfigError(
                "CreateContainerConfigError", f'volume "{mount["name"]}" is not in the pod spec'
            )
        base = await _volume_folder(launch, volume)
        mounts[mount["mountPath"]] = base / mount["subPath"] if mount.get("subPath") else base
    return mounts


async def _volume_folder(launch: ContainerLaunch, volume: dict[str, Any]) -> Path:
    name, namespace = volume["name"], launch.namespace
    folder = launch.pod_dir / "volumes" / name
    if "emptyDir" in volume:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    if "hostPath" in volume:
        return Path(volume["hostPath"]["path"])
    if "persistentVolumeClaim" in volume:
        claim = launch.shared_dir / "pvc" / namespace / volume["persistentVolumeClaim"]["claimName"]
        claim.mkdir(parents=True, exist_ok=True)
        return claim
    if "downwardAPI" in volume:
        folder.mkdir(parents=True, exist_ok=True)
        for item in volume["downwardAPI"].get("items") or []:
            if "fieldRef" not in item:
                raise ContainerConfigError(
                    "CreateContainerConfigError",
                    f"volume {name!r}: downwardAPI item {item.get('path')!r} without fieldRef: not emulated",
                )
            target = folder / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(field_ref(launch.pod, item["fieldRef"]["fieldPath"]))
        return folder
    for key, resource, ref_field in (
        ("configMap", "v1/configmaps", "name"),
        ("secret", "v1/secrets", "secretName"),
    ):
        if key in volume:
            source = volume[key]
            obj = await launch.api.get_or_none(resource, source[ref_field], namespace)
            if obj is None and not source.get("optional"):
                raise ContainerConfigError(
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{name}" : '
                    f'{key.lower()} "{source[ref_field]}" not found',
                )
            data = _decoded(obj, resource) if obj else {}
            binary = {k: base64.b64decode(v) for k, v in ((obj or {}).get("binaryData") or {}).items()}
            items = source.get("items") or [{"key": k, "path": k} for k in [*data, *binary]]
            folder.mkdir(parents=True, exist_ok=True)
            for item in items:
                target = folder / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                if item["key"] in binary:
                    target.write_bytes(binary[item["key"]])
                elif item["key"] in data:
                    target.write_text(data[item["key"]])
                elif not source.get("optional"):
                    raise ContainerConfigError(
                        "ContainerCreating",
                        f'MountVolume.SetUp failed for volume "{name}" : '
                        f"configmap references non-existent config key: {item['key']}",
                    )
            return folder
    kinds = sorted(set(volume) - {"name"})
    raise ContainerConfigError(
        "CreateContainerConfigError",
        f"volume {name!r} of type {kinds} is not emulated by FakeKubelet (configMap, secret, "
        "downwardAPI fieldRefs, emptyDir, hostPath, persistentVolumeClaim are)",
    )


__all__ = [
    "ContainerConfigError",
    "ContainerLaunch",
    "ContainerProcess",
    "ContainerResult",
    "FakeRunner",
    "Runner",
    "SubprocessRunner",
    "expand_vars",
    "field_ref",
    "rewrite_paths",
]
