"""A checker of the Kubernetes "restricted" Pod Security Standard, plus synthrec's own stricter rules.

Rules follow https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted,
policy version v1.33); they are applied to a pod spec the way the PodSecurity admission plugin does,
including the pod-level/container-level fallbacks (runAsNonRoot, seccompProfile). synthrec adds:
every container has readOnlyRootFilesystem: true, and the paths it must write to are emptyDir mounts.

Use it on anything that carries a pod template:

    from tests.harness.pss import pod_security_violations, assert_restricted
    assert_restricted(job_manifest, writable=("/tmp", "/cache", "/dev/shm"))   # raises with every violation

``pod_security_violations(obj)`` returns the violations as strings (empty when compliant) for objects of
kind Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and PodTemplate, or a bare PodSpec.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Volume types the restricted profile allows (everything else, e.g. hostPath, nfs, iscsi, is forbidden).
ALLOWED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
# Baseline: sysctls considered safe (namespaced and isolated) as of v1.33.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def pod_spec_of(obj: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """(where, pod spec) of a workload object, a Pod, a PodTemplate or a bare PodSpec."""
    kind = obj.get("kind")
    name = (obj.get("metadata") or {}).get("name", "?")
    where = f"{kind}/{name}" if kind else "PodSpec"
    if kind == "Pod":
        return where, obj["spec"]
    if kind == "PodTemplate":
        return where, obj["template"]["spec"]
    if kind == "CronJob":
        return where, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"):
        return where, obj["spec"]["template"]["spec"]
    if kind is None and "containers" in obj:
        return where, obj
    raise ValueError(f"{where}: no pod template in an object of kind {kind!r}")


def _containers(spec: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for field in CONTAINER_LISTS:
        for c in spec.get(field) or []:
            yield f"{field}[{c.get('name', '?')}]", c


def _restricted(spec: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    # --- baseline: host namespaces, privileged, host ports, hostPath, capabilities, sysctls, SELinux, ...
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"spec.{field} must not be true")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess must not be true")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"spec.securityContext.sysctls: {sysctl.get('name')!r} is not a safe sysctl")
    out += _selinux("spec.securityContext", pod_sc)
    out += _apparmor("spec.securityContext", pod_sc)
    # --- restricted: volume types
    for vol in spec.get("volumes") or []:
        types = set(vol) - {"name"}
        bad = types - ALLOWED_VOLUME_TYPES
        if bad:
            out.append(f"volume {vol.get('name')!r}: type {', '.join(sorted(bad))} is not allowed")
    # --- restricted: runAsNonRoot / runAsUser / seccomp at pod level, overridable per container
    pod_non_root = pod_sc.get("runAsNonRoot")
    if pod_sc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser must not be 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        out.append(
            f"spec.securityContext.seccompProfile.type must be RuntimeDefault or Localhost, not {pod_seccomp}"
        )
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}: securityContext.privileged must not be true")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: securityContext.windowsOptions.hostProcess must not be true")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{where}: securityContext.procMount must be Default")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}: hostPort {port['hostPort']} is not allowed")
        out += _selinux(f"{where}: securityContext", sc)
        out += _apparmor(f"{where}: securityContext", sc)
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True or sc.get("runAsNonRoot") is False:
            out.append(f"{where}: runAsNonRoot must be true (on the pod or the container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: securityContext.runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ALLOWED_SECCOMP:
            out.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost (pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: securityContext.capabilities.drop must contain ALL")
        added = set(caps.get("add") or []) - ALLOWED_ADDED_CAPABILITIES
        if added:
            out.append(
                f"{where}: capabilities {', '.join(sorted(added))} may not be added (only NET_BIND_SERVICE)"
            )
    return out


def _selinux(where: str, sc: Mapping[str, Any]) -> list[str]:
    opts = sc.get("seLinuxOptions") or {}
    out = []
    if opts.get("type", "") not in ALLOWED_SELINUX_TYPES:
        out.append(f"{where}.seLinuxOptions.type {opts['type']!r} is not allowed")
    for field in ("user", "role"):
        if opts.get(field):
            out.append(f"{where}.seLinuxOptions.{field} must not be set")
    return out


def _apparmor(where: str, sc: Mapping[str, Any]) -> list[str]:
    profile = (sc.get("appArmorProfile") or {}).get("type")
    if profile not in (None, "RuntimeDefault", "Localhost"):
        return [f"{where}.appArmorProfile.type must be RuntimeDefault or Localhost, not {profile}"]
    return []


def _read_only_root(spec: Mapping[str, Any], writable: Iterable[str]) -> list[str]:
    """synthrec's stricter rule: read-only root filesystem; writable paths are emptyDir mounts."""
    out: list[str] = []
    empty_dirs = {v["name"] for v in spec.get("volumes") or [] if "emptyDir" in v}
    for where, c in _containers(spec):
        if where.startswith("ephemeralContainers"):
            continue  # debug containers attached by kubectl debug are not ours to check
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
            out.append(f"{where}: securityContext.readOnlyRootFilesystem must be true")
        mounts = {m["mountPath"].rstrip("/") or "/": m["name"] for m in c.get("volumeMounts") or []}
        for path in writable:
            name = mounts.get(path.rstrip("/"))
            if name is None:
                out.append(
                    f"{where}: {path} must be a writable emptyDir mount (the root filesystem is read-only)"
                )
            elif name not in empty_dirs:
                out.append(f"{where}: {path} is mounted from volume {name!r}, which is not an emptyDir")
    return out


def pod_security_violations(obj: Mapping[str, Any], *, writable: Iterable[str] = ("/tmp",)) -> list[str]:
    """Every violation of the restricted standard and of synthrec's read-only-root rule, as strings."""
    where, spec = pod_spec_of(obj)
    return [f"{where}: {v}" for v in _restricted(spec) + _read_only_root(spec, writable)]


def assert_restricted(obj: Mapping[str, Any], *, writable: Iterable[str] = ("/tmp",)) -> None:
    """Raise AssertionError listing every violation (see pod_security_violations)."""
    violations = pod_security_violations(obj, writable=writable)
    assert not violations, "pod security (restricted) violations:\n  " + "\n  ".join(violations)
