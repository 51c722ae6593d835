"""A vLLM OpenAI server as the operator runs it: a Deployment and a Service, kept at their
desired state by a hash of it, scaled to zero when idle. Shared by a Teacher (teacher.py)
and a LanguageModel's served model (serve.py), which differ in labels, in what the Pod
does before vLLM starts (serve: copy the model from the run's storage) and in what counts
as use (teacher: a LanguageModel in a teacher stage; serve: requests seen on /metrics).

- `deployment` builds the server's Deployment from a `TeacherSpec` (the vLLM settings,
  resources and pod template), its Pod hardened by `pods.harden`;
- `desired_deployment` / `desired_service` stamp the hash of what they want
  (`kakugo.io/template-hash`); `deployment_patch` / `service_patch` are the merge patches
  that roll a change out (None while the hash is current); the replicas belong to idle
  scaling (`wanted_replicas`);
- `rolling_out`: the Deployment controller has not caught up with the spec yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kakugo_operator import naming, pods
from kakugo_operator.diff import digest, is_subset, merge_diff
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import (
    MODEL_CACHE_ENV,
    MODEL_CACHE_MOUNT,
    VLLM_API_KEY_ENV,
    VLLM_MODULE,
    vllm_args,
)
from kakugo_stages.spec import TEACHER_CONTAINER, TEACHER_RESOURCE_DEFAULTS, TeacherSpec


def deployment(
    name: str,
    namespace: str,
    spec: TeacherSpec,
    settings: OperatorSettings,
    replicas: int,
    *,
    labels: dict[str, str],
    match_labels: dict[str, str],
    pod_template: dict[str, Any],
    prepare: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Deployment of a vLLM OpenAI server for `spec`: its Pods carry `labels` (the
    Deployment selects them by `selector`) and `annotations`; `prepare(pod_spec,
    container)` adds to the hardened Pod (an init container, volumes) before the spec's
    `pod_template` is merged over it."""
    args = vllm_args(spec, host="0.0.0.0", port=spec.port)
    res = spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    requests["cpu"], memory = server_cpu_memory(spec)
    requests["memory"] = limits["memory"] = memory
    if spec.device == "cuda" and spec.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpus)
    env: list[dict[str, Any]] = []
    if spec.hf_token_secret_ref is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": spec.hf_token_secret_ref.name,
                        "key": spec.hf_token_secret_ref.key,
                    }
                },
            }
        )
    if spec.device == "cpu":
        env.append({"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"})
    env += server_env(spec)
    container: dict[str, Any] = {
        "name": TEACHER_CONTAINER,
        "image": spec.image or settings.images["teacher"],
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", VLLM_MODULE],
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": spec.port}],
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": spec.port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        # Loading a 120B model takes minutes: no liveness kill while it starts.
        "startupProbe": {
            "httpGet": {"path": "/health", "port": spec.port},
            "periodSeconds": 10,
            "failureThreshold": 180,
        },
    }
    pod_spec: dict[str, Any] = {"containers": [container]}
    # Restricted, with a scratch volume for HOME (model download, caches) and /tmp, and a
    # memory-backed /dev/shm for tensor parallelism (pods.py).
    pods.harden(
        pod_spec,
        container,
        shm_size=res.shm_size or (pods.TEACHER_SHM if spec.device == "cuda" else "1Gi"),
        scratch_size=res.scratch_size or pods.TEACHER_SCRATCH,
    )
    selector = dict(res.node_selector or {})
    if res.gpu_type:
        selector[naming.GPU_PRODUCT_LABEL] = res.gpu_type
    if selector:
        pod_spec["nodeSelector"] = selector
    if res.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in res.tolerations
        ]
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    mount_model_cache(name, spec, pod_spec, container)
    if prepare is not None:
        prepare(pod_spec, container)
    meta_labels = dict(labels)
    if res.queue_name:
        meta_labels[naming.QUEUE_LABEL] = res.queue_name
    metadata: dict[str, Any] = {"labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    template = pods.apply_template(
        {"metadata": metadata, "spec": pod_spec}, pod_template, TEACHER_CONTAINER
    )
    deploy: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": match_labels},
            "template": template,
        },
    }
    if spec.model_cache is not None:
        # The cache volume is usually ReadWriteOnce: the old Pod must let go of it before
        # the new one (maybe on another node) can mount it, so no rolling surge.
        deploy["spec"]["strategy"] = {"type": "Recreate"}
    return deploy


def server_cpu_memory(spec: TeacherSpec) -> tuple[str, str]:
    """CPU and memory requests of the server (memory is also its limit): the spec's, else
    the defaults for its device (`TEACHER_RESOURCE_DEFAULTS`, sized for gpt-oss-120b)."""
    defaults = TEACHER_RESOURCE_DEFAULTS[spec.device]
    return spec.resources.cpu or defaults["cpu"], spec.resources.memory or defaults["memory"]


def server_env(spec: TeacherSpec) -> list[dict[str, Any]]:
    """The API key (from its Secret: never a value in the Pod spec) and the cache paths."""
    env: list[dict[str, Any]] = []
    if (ref := spec.api_key_secret_ref) is not None:
        env.append(
            {
                "name": VLLM_API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    if spec.model_cache is not None:
        env += [{"name": k, "value": v} for k, v in MODEL_CACHE_ENV.items()]
    return env


def model_cache_claim(name: str, spec: TeacherSpec) -> str | None:
    """The PVC of the Teacher's model cache: the spec's, or the one the operator makes."""
    if spec.model_cache is None:
        return None
    return spec.model_cache.claim_name or naming.model_cache_name(name)


def mount_model_cache(
    name: str, spec: TeacherSpec, pod_spec: dict[str, Any], container: dict[str, Any]
) -> None:
    if (claim := model_cache_claim(name, spec)) is None:
        return
    pod_spec.setdefault("volumes", []).append(
        {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim}}
    )
    container.setdefault("volumeMounts", []).append(
        {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT}
    )


def service(
    name: str, namespace: str, port: int, labels: dict[str, str], selector: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": port}],
        },
    }


def url(name: str, namespace: str, port: int) -> str:
    """The OpenAI-compatible API of the server behind the Service `name`."""
    return f"http://{name}.{namespace}.svc:{port}/v1"


def desired_deployment(deploy: dict[str, Any]) -> dict[str, Any]:
    """The Deployment, hashed over everything but its replicas (idle scaling owns them)."""
    hashed = {
        "labels": deploy["metadata"]["labels"],
        "template": deploy["spec"]["template"],
        "selector": deploy["spec"]["selector"],
    }
    if "strategy" in deploy["spec"]:  # only then: the hashes of older Deployments hold
        hashed["strategy"] = deploy["spec"]["strategy"]
    return with_hash(deploy, hashed)


def desired_service(svc: dict[str, Any]) -> dict[str, Any]:
    return with_hash(svc, {"labels": svc["metadata"]["labels"], "spec": svc["spec"]})


def replicas_of(deploy: dict[str, Any]) -> int:
    return int((deploy.get("spec") or {}).get("replicas", 1))


def ready_replicas(deploy: dict[str, Any] | None) -> int:
    return int(((deploy or {}).get("status") or {}).get("readyReplicas") or 0)


#: On a server's Deployment and Service: the hash of the desired template (KubeRay's and
#: the ReplicaSet controller's way): a spec change rolls out when it differs.
TEMPLATE_HASH_ANNOTATION = "kakugo.io/template-hash"


def with_hash(obj: dict[str, Any], value: Any) -> dict[str, Any]:
    """`obj` with the hash of `value` (its desired state) as an annotation."""
    meta = obj["metadata"]
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        TEMPLATE_HASH_ANNOTATION: digest(value),
    }
    return obj


def hash_of(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("annotations", {}).get(TEMPLATE_HASH_ANNOTATION)


def stamp(want: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": want["metadata"]["labels"],
            "annotations": {TEMPLATE_HASH_ANNOTATION: hash_of(want)},
        }
    }


def labels_hold(have: dict[str, Any], want: dict[str, Any]) -> bool:
    return is_subset(want["metadata"]["labels"], (have.get("metadata") or {}).get("labels"))


def deployment_patch(have: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch that rolls the Deployment's template out, or None when its hash is
    current. Replicas are left alone; the selector never changes (it is immutable). A
    Deployment without the hash whose template already holds the wanted values (made by
    an older operator) only gets the hash: no needless restart of a loaded model."""
    if hash_of(have) == hash_of(want):
        return None
    template = (have.get("spec") or {}).get("template")
    strategy = _strategy_patch(have, want)
    if (
        is_subset(want["spec"]["template"], template)
        and labels_hold(have, want)
        and strategy is None
    ):
        return stamp(want)
    spec: dict[str, Any] = {"template": merge_diff(template, want["spec"]["template"])}
    if strategy is not None:
        spec["strategy"] = strategy
    return {**stamp(want), "spec": spec}


def _strategy_patch(have: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
    """The strategy change a patch must carry (Recreate with a model cache), or None."""
    wanted = (want["spec"].get("strategy") or {}).get("type", "RollingUpdate")
    current = (((have.get("spec") or {}).get("strategy")) or {}).get("type", "RollingUpdate")
    if wanted == current:
        return None
    if wanted == "Recreate":  # Recreate takes no rollingUpdate parameters
        return {"type": "Recreate", "rollingUpdate": None}
    return {"type": wanted}


def service_patch(have: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch of the Service's ports and selector (the fields we own: clusterIP and
    the like are the API server's), or None when its hash is current."""
    if hash_of(have) == hash_of(want):
        return None
    if is_subset(want["spec"], have.get("spec")) and labels_hold(have, want):
        return stamp(want)
    return {
        **stamp(want),
        "spec": {"ports": want["spec"]["ports"], "selector": want["spec"]["selector"]},
    }


def wanted_replicas(clients: list[str], idle: float, idle_for: float) -> int:
    """One replica while a client needs it or for `idle` seconds after; 0 = never idle."""
    return 1 if clients or idle == 0 or idle_for < idle else 0


def rolling_out(deploy: dict[str, Any] | None) -> bool:
    """The Deployment controller has not caught up with its spec yet: the ready Pods may
    still be the old ones (serving the old model)."""
    status = (deploy or {}).get("status") or {}
    seen = status.get("observedGeneration")
    generation = ((deploy or {}).get("metadata") or {}).get("generation")
    return seen is not None and generation is not None and int(seen) < int(generation)
