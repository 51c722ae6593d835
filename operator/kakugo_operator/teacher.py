"""The Teacher: a vLLM OpenAI server (Deployment + Service), scaled to zero when idle.

`decide_teacher` is pure, like the LanguageModel decision: (spec, Deployment, clients,
status, now) -> desired objects, replicas and status.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kakugo_operator import naming
from kakugo_operator.observe import iso, parse_time
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import (
    VLLM_MODULE,
    ManifestError,
    served_model_name,
    validate_spec,
    vllm_args,
)
from kakugo_stages.spec import TeacherSpec


def deployment(name: str, namespace: str, spec: TeacherSpec, settings: OperatorSettings,
               replicas: int) -> dict[str, Any]:
    labels = naming.teacher_labels(name)
    args = vllm_args(spec, host="0.0.0.0", port=spec.port)
    res = spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    if spec.device == "cuda" and spec.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpus)
    env: list[dict[str, Any]] = []
    if spec.hf_token_secret_ref is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": spec.hf_token_secret_ref.name, "key": spec.hf_token_secret_ref.key}}})
    if spec.device == "cpu":
        env.append({"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"})
    container: dict[str, Any] = {
        "name": "vllm",
        "image": spec.image or settings.images["teacher"],
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", VLLM_MODULE],
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": spec.port}],
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "readinessProbe": {"httpGet": {"path": "/health", "port": spec.port},
                           "periodSeconds": 5, "failureThreshold": 3},
        # Loading a 120B model takes minutes: no liveness kill while it starts.
        "startupProbe": {"httpGet": {"path": "/health", "port": spec.port},
                         "periodSeconds": 10, "failureThreshold": 180},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
    }
    selector = dict(res.node_selector or {})
    if res.gpu_type:
        selector[naming.GPU_PRODUCT_LABEL] = res.gpu_type
    if selector:
        pod_spec["nodeSelector"] = selector
    if res.tolerations:
        pod_spec["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True)
                                   for t in res.tolerations]
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    meta_labels = dict(labels)
    if res.queue_name:
        meta_labels[naming.QUEUE_LABEL] = res.queue_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {naming.TEACHER_LABEL: naming.label_value(name)}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def service(name: str, namespace: str, spec: TeacherSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": naming.teacher_labels(name)},
        "spec": {
            "selector": {naming.TEACHER_LABEL: naming.label_value(name)},
            "ports": [{"name": "http", "port": spec.port, "targetPort": spec.port}],
        },
    }


def url(name: str, namespace: str, spec: TeacherSpec) -> str:
    return f"http://{name}.{namespace}.svc:{spec.port}/v1"


@dataclass
class TeacherPlan:
    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    replicas: int | None = None  # patch the Deployment to this many replicas
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


def decide_teacher(name: str, namespace: str, raw_spec: dict[str, Any],
                   status: dict[str, Any], deploy: dict[str, Any] | None,
                   clients: list[str], now: datetime, settings: OperatorSettings,
                   generation: int = 1) -> TeacherPlan:
    status = copy.deepcopy(status)
    prev_ready = _ready(status)
    try:
        spec = validate_spec("Teacher", raw_spec, f"{namespace}/{name}")
    except ManifestError as exc:
        msg = "; ".join(str(e) for e in exc.errors)
        status.update(phase="Stalled", observedGeneration=generation, conditions=[
            _cond("Ready", False, "InvalidSpec", msg, now, status),
            _cond("Stalled", True, "InvalidSpec", msg, now, status)])
        return TeacherPlan(status, events=[("Warning", "InvalidSpec", msg)])
    plan = TeacherPlan(status)
    idle = settings.teacher_idle_seconds
    idle = float(spec.idle_seconds) if idle is None else idle
    clients = sorted(set(clients))
    if clients:
        status["lastUsed"] = iso(now)
    last_used = parse_time(status.get("lastUsed")) or now
    if "lastUsed" not in status:
        status["lastUsed"] = iso(now)
    idle_for = (now - last_used).total_seconds()
    want = 1 if clients or idle == 0 or idle_for < idle else 0
    if deploy is None:
        plan.create += [deployment(name, namespace, spec, settings, want),
                        service(name, namespace, spec)]
        current = want
    else:
        current = int((deploy.get("spec") or {}).get("replicas", 1))
        if current != want:
            plan.replicas = want
            plan.events.append(("Normal", "ScaledUp" if want else "ScaledToZero",
                                f"{len(clients)} client(s); idle {idle_for:.0f}s"))
    if want and not clients and idle > 0:
        plan.requeue_after = max(idle - idle_for, 0.5)
    ready_replicas = int(((deploy or {}).get("status") or {}).get("readyReplicas") or 0)
    ready = want > 0 and current > 0 and ready_replicas > 0
    reason = ("ServerReady" if ready else "ScaledToZero" if want == 0 else "Starting")
    message = {"ServerReady": f"{ready_replicas} replica(s) ready",
               "ScaledToZero": f"no client for {idle_for:.0f}s (idleSeconds {idle:g})",
               "Starting": "waiting for the vLLM server to pass its readiness probe"}[reason]
    status.update(
        url=url(name, namespace, spec), model=served_model_name(spec), clients=clients,
        replicas=want, readyReplicas=ready_replicas, observedGeneration=generation,
        phase="Ready" if ready else "Idle" if want == 0 else "Starting",
        conditions=[_cond("Ready", ready, reason, message, now, status),
                    _cond("Stalled", False, "NotStalled", "", now, status)],
    )
    if ready != prev_ready:
        plan.events.append(("Normal", reason, message))
    return plan


def _ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def _cond(kind: str, value: bool, reason: str, message: str, now: datetime,
          status: dict[str, Any]) -> dict[str, Any]:
    old = next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)
    value_s = "True" if value else "False"
    moved = old is None or old.get("status") != value_s
    return {"type": kind, "status": value_s, "reason": reason, "message": message,
            "lastTransitionTime": iso(now) if moved else old.get("lastTransitionTime")}


def served_teacher(lm_name: str, namespace: str, serve: dict[str, Any]) -> dict[str, Any]:
    """The Teacher a LanguageModel with teacher.serve owns."""
    return {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "Teacher",
        "metadata": {"name": naming.served_teacher_name(lm_name), "namespace": namespace,
                     "labels": naming.lm_labels(lm_name)},
        "spec": serve,
    }
