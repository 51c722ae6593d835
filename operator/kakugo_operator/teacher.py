"""The Teacher: a vLLM OpenAI server (Deployment + Service), scaled to zero when idle.

`decide_teacher` is pure, like the LanguageModel decision: (spec, Deployment, Service,
clients, status, now) -> objects to create, replicas, rollouts and status. The Deployment
and the Service are kept at their desired state by a hash of it in an annotation
(`kakugo.io/template-hash`): missing ones are created, ones whose hash differs are patched
(a Teacher spec change rolls out); the replicas belong to idle scaling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kakugo_operator import naming, pods
from kakugo_operator.conditions import (
    API_ERROR,
    REFUSED,
    Want,
    conditions,
    refusal_wants,
    transition_events,
)
from kakugo_operator.diff import digest, is_subset, merge_diff
from kakugo_operator.observe import iso, parse_time
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import (
    VLLM_MODULE,
    ManifestError,
    name_errors,
    served_model_name,
    validate_spec,
    vllm_args,
)
from kakugo_stages.spec import TEACHER_CONTAINER, TeacherSpec, template_dict
from kakugo_stages.status import Condition, TeacherStatus


def deployment(
    name: str, namespace: str, spec: TeacherSpec, settings: OperatorSettings, replicas: int
) -> dict[str, Any]:
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
    meta_labels = dict(labels)
    if res.queue_name:
        meta_labels[naming.QUEUE_LABEL] = res.queue_name
    template = pods.apply_template(
        {"metadata": {"labels": labels}, "spec": pod_spec},
        template_dict(spec.pod_template),
        TEACHER_CONTAINER,
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {naming.TEACHER_LABEL: naming.label_value(name)}},
            "template": template,
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


#: On a Teacher's Deployment and Service: the hash of the desired template (KubeRay's
#: and the ReplicaSet controller's way): a Teacher spec change rolls out when it differs.
TEMPLATE_HASH_ANNOTATION = "kakugo.io/template-hash"


def with_hash(obj: dict[str, Any], value: Any) -> dict[str, Any]:
    """`obj` with the hash of `value` (its desired state) as an annotation."""
    meta = obj["metadata"]
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        TEMPLATE_HASH_ANNOTATION: digest(value),
    }
    return obj


def _hash_of(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("annotations", {}).get(TEMPLATE_HASH_ANNOTATION)


def desired_deployment(
    name: str, namespace: str, spec: TeacherSpec, settings: OperatorSettings, replicas: int
) -> dict[str, Any]:
    """The Deployment, hashed over everything but its replicas (idle scaling owns them)."""
    deploy = deployment(name, namespace, spec, settings, replicas)
    return with_hash(
        deploy,
        {
            "labels": deploy["metadata"]["labels"],
            "template": deploy["spec"]["template"],
            "selector": deploy["spec"]["selector"],
        },
    )


def desired_service(name: str, namespace: str, spec: TeacherSpec) -> dict[str, Any]:
    svc = service(name, namespace, spec)
    return with_hash(svc, {"labels": svc["metadata"]["labels"], "spec": svc["spec"]})


def _stamp(want: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": want["metadata"]["labels"],
            "annotations": {TEMPLATE_HASH_ANNOTATION: _hash_of(want)},
        }
    }


def _labels_hold(have: dict[str, Any], want: dict[str, Any]) -> bool:
    return is_subset(want["metadata"]["labels"], (have.get("metadata") or {}).get("labels"))


def deployment_patch(have: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch that rolls the Deployment's template out, or None when its hash is
    current. Replicas are left alone; the selector never changes (it is immutable). A
    Deployment without the hash whose template already holds the wanted values (made by
    an older operator) only gets the hash: no needless restart of a loaded model."""
    if _hash_of(have) == _hash_of(want):
        return None
    template = (have.get("spec") or {}).get("template")
    if is_subset(want["spec"]["template"], template) and _labels_hold(have, want):
        return _stamp(want)
    return {**_stamp(want), "spec": {"template": merge_diff(template, want["spec"]["template"])}}


def service_patch(have: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch of the Service's ports and selector (the fields we own: clusterIP and
    the like are the API server's), or None when its hash is current."""
    if _hash_of(have) == _hash_of(want):
        return None
    if is_subset(want["spec"], have.get("spec")) and _labels_hold(have, want):
        return _stamp(want)
    return {
        **_stamp(want),
        "spec": {"ports": want["spec"]["ports"], "selector": want["spec"]["selector"]},
    }


@dataclass
class TeacherPlan:
    status: TeacherStatus
    create: list[dict[str, Any]] = field(default_factory=list)
    replicas: int | None = None  # patch the Deployment to this many replicas
    patch_deployment: dict[str, Any] | None = None  # roll a spec change out
    patch_service: dict[str, Any] | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


def read_status(raw: dict[str, Any] | None) -> TeacherStatus:
    try:
        return TeacherStatus.model_validate(raw or {})
    except ValidationError:
        return TeacherStatus()


def wanted_replicas(clients: list[str], idle: float, idle_for: float) -> int:
    """One replica while a client needs it or for `idle` seconds after; 0 = never idle."""
    return 1 if clients or idle == 0 or idle_for < idle else 0


def _events(prev: list[Condition], new: list[Condition]) -> list[tuple[str, str, str]]:
    return transition_events(
        prev,
        new,
        lambda c: (c.type == "Stalled" and c.is_true) or c.reason == API_ERROR,
        ("InvalidSpec", REFUSED),
    )


def _stalled(
    prev: TeacherStatus, reason: str, message: str, now: datetime, generation: int
) -> TeacherPlan:
    conds = conditions(
        prev.conditions,
        [
            Want("Ready", False, reason, message),
            Want("Reconciling", False, reason),
            Want("Stalled", True, reason, message),
        ],
        now,
        generation,
    )
    new = prev.model_copy(
        update={"phase": "Stalled", "observed_generation": generation, "conditions": conds}
    )
    return TeacherPlan(new, events=_events(prev.conditions, conds))


def refused(
    status: dict[str, Any], error: str, permanent: bool, now: datetime, generation: int
) -> TeacherPlan:
    """The status when the API server refused the Teacher's Deployment or Service (a
    create or a patch; `k8s.Refused`): the last status, its conditions carrying the API
    server's message, and a Warning Event, rather than `Starting` forever."""
    prev = read_status(status)
    if permanent:
        return _stalled(prev, REFUSED, error, now, generation)
    conds = conditions(
        prev.conditions, refusal_wants(error, False), now, generation, keep_others=True
    )
    return TeacherPlan(
        prev.model_copy(update={"conditions": conds}), events=_events(prev.conditions, conds)
    )


def decide_teacher(
    name: str,
    namespace: str,
    raw_spec: dict[str, Any],
    status: dict[str, Any],
    deploy: dict[str, Any] | None,
    clients: list[str],
    now: datetime,
    settings: OperatorSettings,
    generation: int = 1,
    service_obj: dict[str, Any] | None = None,
) -> TeacherPlan:
    """The Teacher's plan. `deploy`, `service_obj`: its Deployment and Service as the API
    shows them (None: missing, so created)."""
    prev = read_status(status)
    try:
        spec = validate_spec("Teacher", raw_spec, f"{namespace}/{name}")
    except ManifestError as exc:
        msg = "; ".join(str(e) for e in exc.errors)
        return _stalled(prev, "InvalidSpec", msg, now, generation)
    if problems := name_errors("Teacher", name):  # its Service could never be created
        msg = "; ".join(str(e) for e in problems)
        return _stalled(prev, "InvalidSpec", msg, now, generation)
    plan = TeacherPlan(prev)
    idle = settings.teacher_idle_seconds
    idle = float(spec.idle_seconds) if idle is None else idle
    clients = sorted(set(clients))
    last_used = iso(now) if clients else (prev.last_used or iso(now))
    idle_for = (now - (parse_time(last_used) or now)).total_seconds()
    want = wanted_replicas(clients, idle, idle_for)
    want_deploy = desired_deployment(name, namespace, spec, settings, want)
    want_service = desired_service(name, namespace, spec)
    if deploy is None:
        plan.create.append(want_deploy)
        current = want
    else:
        current = int((deploy.get("spec") or {}).get("replicas", 1))
        if current != want:
            plan.replicas = want
            plan.events.append(
                (
                    "Normal",
                    "ScaledUp" if want else "ScaledToZero",
                    f"{len(clients)} client(s); idle {idle_for:.0f}s",
                )
            )
        plan.patch_deployment = deployment_patch(deploy, want_deploy)
        if plan.patch_deployment and "spec" in plan.patch_deployment:
            plan.events.append(
                ("Normal", "RollingOut", f"Deployment {name}: the Teacher's spec changed")
            )
    if service_obj is None:
        plan.create.append(want_service)
    else:
        plan.patch_service = service_patch(service_obj, want_service)
    if want and not clients and idle > 0:
        plan.requeue_after = max(idle - idle_for, 0.5)
    ready_replicas = int(((deploy or {}).get("status") or {}).get("readyReplicas") or 0)
    rolling = "spec" in (plan.patch_deployment or {}) or rolling_out(deploy)
    ready = want > 0 and current > 0 and ready_replicas > 0 and not rolling
    reason = (
        "ServerReady"
        if ready
        else "ScaledToZero"
        if want == 0
        else "RollingOut"
        if rolling
        else "Starting"
    )
    message = {
        "ServerReady": f"{ready_replicas} replica(s) ready",
        "ScaledToZero": f"no client for {idle_for:.0f}s (idleSeconds {idle:g})",
        "RollingOut": "rolling the new spec out to the vLLM server",
        "Starting": "waiting for the vLLM server to pass its readiness probe",
    }[reason]
    conds = conditions(
        prev.conditions,
        [
            Want("Ready", ready, reason, message),
            Want(
                "Reconciling",
                not ready and want > 0,
                reason if not ready else "Done",
                message if not ready and want > 0 else "",
            ),
            Want("Stalled", False, "NotStalled"),
        ],
        now,
        generation,
    )
    plan.status = TeacherStatus(
        url=url(name, namespace, spec),
        model=served_model_name(spec),
        clients=clients,
        replicas=want,
        ready_replicas=ready_replicas,
        observed_generation=generation,
        phase="Ready" if ready else "Idle" if want == 0 else "Starting",
        conditions=conds,
        last_used=last_used,
    )
    if ready != prev_ready(prev):
        plan.events.append(("Normal", reason, message))
    plan.events += [e for e in _events(prev.conditions, conds) if e[1] == "InvalidSpec"]
    return plan


def rolling_out(deploy: dict[str, Any] | None) -> bool:
    """The Deployment controller has not caught up with its spec yet: the ready Pods may
    still be the old ones (serving the old model)."""
    status = (deploy or {}).get("status") or {}
    seen = status.get("observedGeneration")
    generation = ((deploy or {}).get("metadata") or {}).get("generation")
    return seen is not None and generation is not None and int(seen) < int(generation)


def prev_ready(status: TeacherStatus) -> bool:
    return any(c.type == "Ready" and c.is_true for c in status.conditions)
