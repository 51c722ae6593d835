"""The Teacher: a vLLM OpenAI server (Deployment + Service), scaled to zero when idle.

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

from kakugo_operator import naming, pods
from kakugo_operator import teacher_cost as tc
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
    MODEL_CACHE_ENV,
    MODEL_CACHE_MOUNT,
    TEACHER_STAGES,
    VLLM_API_KEY_ENV,
    VLLM_MODULE,
    ManifestError,
    name_errors,
    served_model_name,
    validate_spec,
    vllm_args,
)
from kakugo_stages.spec import (
    TEACHER_CONTAINER,
    TEACHER_RESOURCE_DEFAULTS,
    TeacherSpec,
    template_dict,
)
from kakugo_stages.status import Condition, TeacherStatus


def deployment(
    name: str, namespace: str, spec: TeacherSpec, settings: OperatorSettings, replicas: int
) -> dict[str, Any]:
    labels = naming.teacher_labels(name)
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
    meta_labels = dict(labels)
    if res.queue_name:
        meta_labels[naming.QUEUE_LABEL] = res.queue_name
    template = pods.apply_template(
        {"metadata": {"labels": labels}, "spec": pod_spec},
        template_dict(spec.pod_template),
        TEACHER_CONTAINER,
    )
    deploy: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {naming.TEACHER_LABEL: naming.label_value(name)}},
            "template": template,
        },
    }
    if spec.model_cache is not None:
        # The cache volume is usually ReadWriteOnce: the old Pod must let go of it before
        # the new one (maybe on another node) can mount it, so no rolling surge.
        deploy["spec"]["strategy"] = {"type": "Recreate"}
    return deploy


# ------------------------------------------------------------------ issue 18: the server's
# platform: CPU and memory, the API key, the model cache, the NetworkPolicy.


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
    if _hash_of(have) == _hash_of(want):
        return None
    if is_subset(want["spec"], have.get("spec")) and _labels_hold(have, want):
        return _stamp(want)
    return {**_stamp(want), "spec": want["spec"]}


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
    hashed = {
        "labels": deploy["metadata"]["labels"],
        "template": deploy["spec"]["template"],
        "selector": deploy["spec"]["selector"],
    }
    if "strategy" in deploy["spec"]:  # only then: the hashes of older Deployments hold
        hashed["strategy"] = deploy["spec"]["strategy"]
    return with_hash(deploy, hashed)


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
    strategy = _strategy_patch(have, want)
    if (
        is_subset(want["spec"]["template"], template)
        and _labels_hold(have, want)
        and strategy is None
    ):
        return _stamp(want)
    spec: dict[str, Any] = {"template": merge_diff(template, want["spec"]["template"])}
    if strategy is not None:
        spec["strategy"] = strategy
    return {**_stamp(want), "spec": spec}


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


def rolling_out(deploy: dict[str, Any] | None) -> bool:
    """The Deployment controller has not caught up with its spec yet: the ready Pods may
    still be the old ones (serving the old model)."""
    status = (deploy or {}).get("status") or {}
    seen = status.get("observedGeneration")
    generation = ((deploy or {}).get("metadata") or {}).get("generation")
    return seen is not None and generation is not None and int(seen) < int(generation)


def prev_ready(status: TeacherStatus) -> bool:
    return any(c.type == "Ready" and c.is_true for c in status.conditions)
