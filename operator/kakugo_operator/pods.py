"""What every Pod the operator builds shares: the stage Pods of its Jobs and a Teacher's
vLLM server.

- **Restricted.** They meet the `restricted` Pod Security Standard as built: non-root with a
  numeric UID (`POD_USER`, the images' USER), no privilege escalation, every capability
  dropped, the RuntimeDefault seccomp profile, a read-only root filesystem and no
  ServiceAccount token (the stages never call the Kubernetes API).
- **Writable where the code writes.** One scratch volume holds `KAKUGO_SCRATCH_DIR`
  (downloads, checkpoints), HOME (the Hugging Face, Triton, torch-extension and vLLM
  caches) and /tmp, as subfolders: an emptyDir with a size limit by default, a generic
  ephemeral volume from a StorageClass, or a subfolder per Pod of an existing PVC
  (`resources.scratch`). A memory-backed /dev/shm of the stage's `shmSize` for NCCL,
  DataLoader workers and vLLM.
- **A spec's pod template** (`resources.podTemplates`, a Teacher's `podTemplate`) is merged
  over the result (`apply_template`); the spec models refuse what it may not change.
"""

from __future__ import annotations

import copy
from typing import Any

from kakugo_stages.spec import (
    HOME_DIR,
    POD_USER,
    SCRATCH_DIR,
    SHM_DIR,
    TMP_DIR,
    ScratchSpec,
    merge_pod_templates,
)

#: A Teacher's /dev/shm and scratch volume unless its resources say otherwise.
TEACHER_SHM = "16Gi"
TEACHER_SCRATCH = "200Gi"
#: The scratch volume's subfolders: where they are mounted.
SCRATCH_PATHS = {"scratch": SCRATCH_DIR, "home": HOME_DIR, "tmp": TMP_DIR}
#: With a shared PVC as scratch, each Pod works in the subfolder named after it.
POD_NAME_ENV = "KAKUGO_POD_NAME"
#: Caches under HOME (a template's env may point them elsewhere, e.g. at a PVC).
CACHE_ENV = {
    "XDG_CACHE_HOME": f"{HOME_DIR}/.cache",
    "HF_HOME": f"{HOME_DIR}/.cache/huggingface",
    "TRITON_CACHE_DIR": f"{HOME_DIR}/.cache/triton",
    "TORCH_EXTENSIONS_DIR": f"{HOME_DIR}/.cache/torch_extensions",
    "VLLM_CACHE_ROOT": f"{HOME_DIR}/.cache/vllm",
    "MPLCONFIGDIR": f"{HOME_DIR}/.cache/matplotlib",
}


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_USER,
        "runAsGroup": POD_USER,
        # Volumes (a PVC, an ephemeral volume) are made writable for the group.
        "fsGroup": POD_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def scratch_volume(
    size: str | None, scratch: ScratchSpec | None, labels: dict[str, str]
) -> dict[str, Any]:
    """The scratch volume: an emptyDir of `size` (none: no limit), a generic ephemeral
    volume of `size` from `scratch.storageClassName`, or the PVC `scratch.claimName`."""
    if scratch is not None and scratch.claim_name:
        return {"name": "scratch", "persistentVolumeClaim": {"claimName": scratch.claim_name}}
    if scratch is not None and scratch.storage_class_name:
        return {
            "name": "scratch",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": scratch.storage_class_name,
                        "resources": {"requests": {"storage": size or "20Gi"}},
                    },
                }
            },
        }
    return {"name": "scratch", "emptyDir": {"sizeLimit": size} if size else {}}


def harden(
    pod_spec: dict[str, Any],
    container: dict[str, Any],
    *,
    shm_size: str | None,
    scratch_size: str | None,
    scratch: ScratchSpec | None = None,
    labels: dict[str, str] | None = None,
) -> None:
    """Make a Pod restricted and give it its writable volumes (in place)."""
    pod_spec["securityContext"] = pod_security_context()
    pod_spec["automountServiceAccountToken"] = False
    container["securityContext"] = container_security_context()
    volumes = pod_spec.setdefault("volumes", [])
    mounts = container.setdefault("volumeMounts", [])
    env = container.setdefault("env", [])
    volumes.append(scratch_volume(scratch_size, scratch, labels or {}))
    shared = scratch is not None and scratch.claim_name is not None
    if shared:
        env.append(
            {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        )
    for sub, path in SCRATCH_PATHS.items():
        mount: dict[str, Any] = {"name": "scratch", "mountPath": path}
        if shared:
            mount["subPathExpr"] = f"$({POD_NAME_ENV})/{sub}"
        else:
            mount["subPath"] = sub
        mounts.append(mount)
    if shm_size:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}})
        mounts.append({"name": "shm", "mountPath": SHM_DIR})
    # What the caller set wins (a Teacher's model cache puts HF_HOME on its PVC): with two
    # entries of one name Kubernetes would take the last.
    taken = {e["name"] for e in env}
    env += [
        e
        for e in (
            {"name": "HOME", "value": HOME_DIR},
            {"name": "TMPDIR", "value": TMP_DIR},
            {"name": "KAKUGO_SCRATCH_DIR", "value": SCRATCH_DIR},
            *({"name": k, "value": v} for k, v in CACHE_ENV.items()),
        )
        if e["name"] not in taken
    ]


def harden_init(init: dict[str, Any], like: dict[str, Any]) -> None:
    """Make an init container restricted, with the scratch mounts and the environment
    (HOME, TMPDIR, KAKUGO_SCRATCH_DIR, caches, the Pod name of a shared scratch PVC) that
    `harden` gave the Pod's container `like` (in place): it writes where that one reads."""
    init["securityContext"] = container_security_context()
    mounts = [m for m in like.get("volumeMounts") or [] if m["name"] == "scratch"]
    init["volumeMounts"] = [*mounts, *(init.get("volumeMounts") or [])]
    ours = {POD_NAME_ENV, "HOME", "TMPDIR", "KAKUGO_SCRATCH_DIR", *CACHE_ENV}
    taken = {e["name"] for e in init.get("env") or []}
    init["env"] = [
        *(init.get("env") or []),
        *(e for e in like.get("env") or [] if e["name"] in ours and e["name"] not in taken),
    ]


def apply_template(
    template: dict[str, Any], override: dict[str, Any], container: str
) -> dict[str, Any]:
    """A Pod template (`metadata`, `spec`) with a spec's pod template merged over it: maps
    merge, env, volumes, volumeMounts and imagePullSecrets by name (or mount path),
    tolerations add up, single values replace. The override's container is `container`
    (the only one it may name)."""
    if not override:
        return template
    override = copy.deepcopy(override)
    for c in (override.get("spec") or {}).get("containers") or []:
        c["name"] = container
    merged: dict[str, Any] = merge_pod_templates(template, override)
    return merged
