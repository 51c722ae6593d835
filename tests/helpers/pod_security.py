"""The `restricted` Pod Security Standard as a check of a Pod template: a transcription of
the standard's rules (kubernetes.io/docs/concepts/security/pod-security-standards, the
baseline and restricted policies, as of 1.30). The end-to-end API server (1.20) has no
Pod Security admission (1.23+): this check and checkov stand in for it."""

from __future__ import annotations

from typing import Any

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
}


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """What in a Pod template (metadata, spec) the restricted standard forbids."""
    meta, spec = template.get("metadata") or {}, template["spec"]
    out: list[str] = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"spec.{key}")
    psc = spec.get("securityContext") or {}
    containers = [*spec.get("containers", []), *spec.get("initContainers", [])]
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and (
            value not in ("runtime/default",) and not value.startswith("localhost/")
        ):
            out.append(f"annotation {key}")
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {vol['name']}: {kinds}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl}")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("pod seccompProfile Unconfined")
    if psc.get("runAsNonRoot") is False or psc.get("runAsUser") == 0:
        out.append("pod runs as root")
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities not dropped")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities added")
        if not (sc.get("runAsNonRoot") is True or psc.get("runAsNonRoot") is True) or (
            sc.get("runAsNonRoot") is False
        ):
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccomp {seccomp}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{name}: hostPort")
        selinux = sc.get("seLinuxOptions") or psc.get("seLinuxOptions") or {}
        if selinux.get("user") or selinux.get("role"):
            out.append(f"{name}: seLinuxOptions")
    return out
