"""The Teacher: a vLLM OpenAI server (Deployment + Service, built and rolled out by
`server.py`), scaled to zero when no LanguageModel is in a teacher stage.

`decide_teacher` is pure, like the LanguageModel decision: (spec, Deployment, Service,
NetworkPolicy, model cache PVC, clients, status, now) -> objects to create, replicas,
rollouts and status. The Deployment, the Service and the NetworkPolicy are kept at their
desired state by a hash of it in an annotation (`kakugo.io/template-hash`): missing ones
are created, ones whose hash differs are patched (a Teacher spec change rolls out); the
replicas belong to idle scaling. The model cache PVC is only created when missing (a
claim's spec is immutable but for its size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kakugo_operator import naming, server
from kakugo_operator import teacher_cost as tc
from kakugo_operator.conditions import (
    API_ERROR,
    REFUSED,
    Want,
    conditions,
    refusal_wants,
    transition_events,
)
from kakugo_operator.diff import is_subset
from kakugo_operator.observe import iso, parse_time
from kakugo_operator.server import (
    deployment_patch,
    hash_of,
    labels_hold,
    rolling_out,
    service_patch,
    stamp,
    wanted_replicas,
    with_hash,
)
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import (
    TEACHER_STAGES,
    ManifestError,
    name_errors,
    served_model_name,
    validate_spec,
)
from kakugo_stages.spec import TeacherSpec, template_dict
from kakugo_stages.status import Condition, TeacherStatus


def selector(name: str) -> dict[str, str]:
    return {naming.TEACHER_LABEL: naming.label_value(name)}


def deployment(
    name: str, namespace: str, spec: TeacherSpec, settings: OperatorSettings, replicas: int
) -> dict[str, Any]:
    return server.deployment(
        name,
        namespace,
        spec,
        settings,
        replicas,
        labels=naming.teacher_labels(name),
        match_labels=selector(name),
        pod_template=template_dict(spec.pod_template),
    )


# ------------------------------------------------------------------ issue 18: the server's
# platform: the model cache PVC, the NetworkPolicy (CPU, memory, the API key and mounting
# the cache: server.py).


def model_cache_pvc(name: str, namespace: str, spec: TeacherSpec) -> dict[str, Any] | None:
    """The PVC the operator creates for `modelCache` without a claimName, else None."""
    cache = spec.model_cache
    if cache is None or cache.claim_name is not None:
        return None
    pvc_spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        pvc_spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": naming.model_cache_name(name),
            "namespace": namespace,
            "labels": naming.teacher_labels(name),
        },
        "spec": pvc_spec,
    }


def network_policy(
    name: str, namespace: str, spec: TeacherSpec, settings: OperatorSettings
) -> dict[str, Any] | None:
    """Only the teacher stages' Pods of the namespace (and the peers of the setting
    `teacherIngressFrom`, e.g. Prometheus) may reach the server's port."""
    if not settings.teacher_network_policy:
        return None
    stage_pods = {
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/managed-by": naming.MANAGED_BY},
            "matchExpressions": [
                {"key": naming.STAGE_LABEL, "operator": "In", "values": list(TEACHER_STAGES)}
            ],
        }
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": naming.teacher_labels(name)},
        "spec": {
            "podSelector": {"matchLabels": {naming.TEACHER_LABEL: naming.label_value(name)}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [stage_pods, *(dict(p) for p in settings.teacher_ingress_from)],
                    "ports": [{"protocol": "TCP", "port": spec.port}],
                }
            ],
        },
    }


def desired_network_policy(
    name: str, namespace: str, spec: TeacherSpec, settings: OperatorSettings
) -> dict[str, Any] | None:
    policy = network_policy(name, namespace, spec, settings)
    if policy is None:
        return None
    return with_hash(policy, {"labels": policy["metadata"]["labels"], "spec": policy["spec"]})


def network_policy_patch(have: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch of the whole policy spec (its lists are replaced), or None when its
    hash is current."""
    if hash_of(have) == hash_of(want):
        return None
    if is_subset(want["spec"], have.get("spec")) and labels_hold(have, want):
        return stamp(want)
    return {**stamp(want), "spec": want["spec"]}


def service(name: str, namespace: str, spec: TeacherSpec) -> dict[str, Any]:
    return server.service(name, namespace, spec.port, naming.teacher_labels(name), selector(name))


def url(name: str, namespace: str, spec: TeacherSpec) -> str:
    return server.url(name, namespace, spec.port)


def desired_deployment(
    name: str, namespace: str, spec: TeacherSpec, settings: OperatorSettings, replicas: int
) -> dict[str, Any]:
    """The Deployment, hashed over everything but its replicas (idle scaling owns them)."""
    return server.desired_deployment(deployment(name, namespace, spec, settings, replicas))


def desired_service(name: str, namespace: str, spec: TeacherSpec) -> dict[str, Any]:
    return server.desired_service(service(name, namespace, spec))


@dataclass
class TeacherPlan:
    status: TeacherStatus
    create: list[dict[str, Any]] = field(default_factory=list)
    replicas: int | None = None  # patch the Deployment to this many replicas
    patch_deployment: dict[str, Any] | None = None  # roll a spec change out
    patch_service: dict[str, Any] | None = None
    patch_network_policy: dict[str, Any] | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


def read_status(raw: dict[str, Any] | None) -> TeacherStatus:
    """The last status, typed; a field that does not parse is dropped, the rest kept (the
    cost ledger survives a bad condition, and the other way round)."""
    raw = dict(raw or {})
    try:
        return TeacherStatus.model_validate(raw)
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        try:
            return TeacherStatus.model_validate({k: v for k, v in raw.items() if k not in bad})
        except ValidationError:
            return TeacherStatus()


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
    policy_obj: dict[str, Any] | None = None,
    cache_obj: dict[str, Any] | None = None,
    usage: Sequence[tc.ClientUsage] = (),
) -> TeacherPlan:
    """The Teacher's plan. `deploy`, `service_obj`, `policy_obj`, `cache_obj`: its
    Deployment, Service, NetworkPolicy and model cache PVC as the API shows them (None:
    missing, so created when wanted). `usage`: every LanguageModel that uses it, with its
    teacher stages' token counts (for `status.cost`, `teacher_cost.accrue`)."""
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
    want_policy = desired_network_policy(name, namespace, spec, settings)
    if want_policy is not None and policy_obj is None:
        plan.create.append(want_policy)
    elif want_policy is not None and policy_obj is not None:
        plan.patch_network_policy = network_policy_patch(policy_obj, want_policy)
    want_cache = model_cache_pvc(name, namespace, spec)
    if want_cache is not None and cache_obj is None:
        # Before the Deployment: its Pod waits for the claim otherwise.
        plan.create.insert(0, want_cache)
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
    # The replicas the Deployment has now held since the last observation: only this
    # decision sets them, and it is about to.
    held = int(((deploy or {}).get("spec") or {}).get("replicas", 1)) if deploy else 0
    cost = tc.accrue(
        prev.cost,
        now,
        tc.server_gpus(spec) * held,
        tc.gpu_price(spec, settings),
        busy=bool(prev.clients),
        usage=usage,
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
        cost=cost,
    )
    if ready != prev_ready(prev):
        plan.events.append(("Normal", reason, message))
    plan.events += [e for e in _events(prev.conditions, conds) if e[1] == "InvalidSpec"]
    return plan


def prev_ready(status: TeacherStatus) -> bool:
    return any(c.type == "Ready" and c.is_true for c in status.conditions)
