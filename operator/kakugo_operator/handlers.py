"""Kopf handlers: thin. They gather the world from in-memory indexes, call the pure
decisions (`reconcile.decide`, `teacher.decide_teacher`, `fleet.decide_fleet`) and
execute the plans.

One daemon per LanguageModel, Teacher and LanguageFleet re-decides whenever something it
owns or depends on changes (Job, Pod, Deployment, Service and Teacher events wake it) and
at least every `resyncSeconds`. Each daemon is the only writer of its object's status, so
it keeps the status it last wrote instead of waiting for the watch to echo it back, and
writes the difference as one merge patch that also removes what is gone (`diff.merge_diff`).

The operator's own state (settings, wake-ups, deleted Pods) lives in Kopf's memo
(`memo.kakugo`, an `OperatorState` made at startup), never in module globals, so two
operator runs in one process (the tests) share nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from kakugo_operator import fleet as fleet_mod
from kakugo_operator import k8s, kopf_state, metrics, naming, webhook
from kakugo_operator import serve as serve_mod
from kakugo_operator import settings as settings_mod
from kakugo_operator import stage_machine as sm
from kakugo_operator.diff import merge_diff
from kakugo_operator.observe import iso
from kakugo_operator.reconcile import Observed, decide, read_status, refused, with_log_tail
from kakugo_operator.teacher import decide_teacher
from kakugo_operator.teacher import refused as teacher_refused
from kakugo_operator.teacher_cost import usage_of
from kakugo_stages.contract import TEACHER_STAGES, delete_run_artifacts, run_uri
from kakugo_stages.status import operator_status

#: Set by Argo CD's retry action (gitops/argocd): failed stages get a fresh retry budget.
RETRY_ANNOTATION = "kakugo.io/retry"

GROUP, VERSION = "kakugo.io", "v1alpha1"
API = f"{GROUP}/{VERSION}"
OWNED = {"app.kubernetes.io/managed-by": naming.MANAGED_BY}

Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass
class OperatorState:
    """What the operator keeps in memory, in Kopf's memo (`memo.kakugo`)."""

    settings: settings_mod.OperatorSettings
    #: One asyncio.Event per object key, set by the events that concern it.
    wakeups: dict[Key, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    #: Pods deleted before their Job was accounted for, (namespace, lm) -> pod -> the last
    #: state seen: for cost, and to tell a deleted (disrupted) Pod from a broken one.
    ghosts: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    #: The admission webhook's state (serving, caBundle), for the probes.
    webhook: webhook.WebhookState = field(default_factory=webhook.WebhookState)

    def wake(self, kind: str, namespace: str | None, name: str | None) -> None:
        if namespace and name:
            self.wakeups[(kind, namespace, name)].set()


def state(memo: Any) -> OperatorState:
    return memo.kakugo


def namespaced(namespace: str | None) -> str:
    """The namespace of one of our objects (all are namespaced; Kopf types it optional)."""
    if namespace is None:
        raise kopf.PermanentError("a namespaced object without a namespace")
    return namespace


def now() -> datetime:
    return datetime.now(UTC)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    try:
        loaded = settings_mod.load()
    except settings_mod.SettingsError as exc:  # the operator exits, saying which key
        raise kopf.PermanentError(str(exc)) from None
    memo.kakugo = OperatorState(loaded)
    metrics.reset()
    settings.persistence.finalizer = "kakugo.io/finalizer"
    # In status.kopf, without the spec: an annotation cannot hold a large spec's copy.
    kopf_state.configure(settings)
    # Our Events are explicit (kopf.event); do not turn every log line into one.
    settings.posting.level = logging.WARNING
    # No cluster-wide CRD and namespace scanning: the chart's namespaced RBAC forbids it,
    # and the watched namespaces are given on the command line.
    settings.scanning.disabled = True
    settings.execution.max_workers = 32
    settings.watching.server_timeout = 300
    k8s.configure()
    # The admission webhook (webhook.py): our own server; the chart owns the
    # ValidatingWebhookConfiguration, so Kopf does not manage one.
    settings.admission.managed = None
    if loaded.webhook_port:
        try:
            settings.admission.server = webhook.WebhookServer(loaded, memo.kakugo.webhook)
        except Exception as exc:  # e.g. unreadable certificate files
            raise kopf.PermanentError(f"admission webhook: {exc}") from None
        metrics.GATES["webhook"] = memo.kakugo.webhook.ready
    else:
        settings.admission.server = webhook.NoWebhookServer()
        metrics.GATES.pop("webhook", None)
    if loaded.metrics_port:
        with contextlib.suppress(OSError):  # a second operator in one process (tests)
            metrics.start(loaded.metrics_port)
    # Ready to take work. Daemons still start only once Kopf's indexes hold every existing
    # Job and Pod, which is what makes restarts safe.
    metrics.READY.set()


@kopf.on.cleanup()
def not_ready(**_: Any) -> None:
    metrics.READY.clear()


# ------------------------------------------------------------------ indexes (no API calls)


@kopf.index("batch", "v1", "jobs", labels=OWNED)
def kakugo_jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    lm = labels.get(naming.LM_LABEL)
    return {(namespace, lm): dict(body)} if lm else {}


@kopf.index("v1", "pods", labels=OWNED)
def kakugo_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    lm = labels.get(naming.LM_LABEL)
    return {(namespace, lm): dict(body)} if lm else {}


@kopf.index(GROUP, VERSION, "teachers")
def kakugo_teachers(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): dict(body)}


@kopf.index("apps", "v1", "deployments", labels=OWNED)
def kakugo_deployments(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> Any:
    teacher = labels.get(naming.TEACHER_LABEL)
    return {(namespace, teacher): dict(body)} if teacher else {}


@kopf.index("v1", "services", labels=OWNED)
def kakugo_services(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    teacher = labels.get(naming.TEACHER_LABEL)
    return {(namespace, teacher): dict(body)} if teacher else {}


@kopf.index("apps", "v1", "deployments", labels={**OWNED, naming.SERVE_LABEL: kopf.PRESENT})
def serve_deployments(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, labels[naming.SERVE_LABEL]): dict(body)}


@kopf.index("v1", "services", labels={**OWNED, naming.SERVE_LABEL: kopf.PRESENT})
def serve_services(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, labels[naming.SERVE_LABEL]): dict(body)}


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=OWNED)
def kakugo_networkpolicies(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> Any:
    teacher = labels.get(naming.TEACHER_LABEL)
    return {(namespace, teacher): dict(body)} if teacher else {}


@kopf.index("v1", "persistentvolumeclaims", labels=OWNED)
def kakugo_model_caches(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> Any:
    teacher = labels.get(naming.TEACHER_LABEL)
    return {(namespace, teacher): dict(body)} if teacher else {}


def teacher_of(name: str, spec: dict[str, Any]) -> str | None:
    teacher = spec.get("teacher") or {}
    if teacher.get("ref"):
        return (teacher["ref"] or {}).get("name")
    if teacher.get("serve") is not None:
        return naming.served_teacher_name(name)
    return None


#: Gates under which a waiting teacher stage does not need the server.
IDLE_GATES = ("Suspended", "Budget")


def needs_teacher(raw_status: dict[str, Any]) -> bool:
    """A teacher stage runs, waits for its retry, or could start now but for a gate the
    server's readiness (or time) opens; a new object is about to start its first ones."""
    status = read_status(raw_status)
    if status.phase in ("Succeeded", "Suspended"):
        return False
    if not status.stages:
        return status.phase != "Stalled"
    return any(
        e.name in TEACHER_STAGES
        and (
            e.state in ("Running", "Queued", "Retrying") or e.waiting_for not in (None, *IDLE_GATES)
        )
        for e in status.stages
    )


@kopf.index(GROUP, VERSION, "languagemodels")
def teacher_clients(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> Any:
    teacher = teacher_of(name, dict(spec))
    if teacher and needs_teacher(dict(status)):
        return {(namespace, teacher): name}
    return {}  # not None: Kopf keeps an object's old index entries when given None


@kopf.index(GROUP, VERSION, "languagemodels")
def teacher_usage(
    namespace: str | None,
    name: str,
    uid: str | None,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> Any:
    """Every LanguageModel that uses a Teacher (needing it now or not), with its teacher
    stages' token counts: what the Teacher's GPU time is charged by."""
    teacher = teacher_of(name, dict(spec))
    if teacher:
        return {(namespace, teacher): usage_of(name, uid or "", dict(status))}
    return {}


@kopf.index(GROUP, VERSION, "languagemodels", labels={fleet_mod.FLEET_LABEL: kopf.PRESENT})
def fleet_children(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, labels[fleet_mod.FLEET_LABEL]): dict(body)}


@kopf.index(GROUP, VERSION, "languagemodels")
def languagemodel_fleets(namespace: str | None, name: str, labels: kopf.Labels, **_: Any) -> Any:
    """Every LanguageModel's fleet ("" for none): a fleet must not take over a name."""
    return {namespace: (name, labels.get(fleet_mod.FLEET_LABEL, ""))}


# ------------------------------------------------------------------ wake-ups
# Async on purpose: Kopf runs sync handlers in threads, and asyncio.Event is not
# thread-safe.


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
async def job_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    namespace = namespaced(namespace)
    state(memo).wake("lm", namespace, labels.get(naming.LM_LABEL))


@kopf.on.event("v1", "pods", labels=OWNED)
async def pod_event(
    type: str,
    namespace: str | None,
    name: str,
    labels: kopf.Labels,
    body: kopf.Body,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    namespace = namespaced(namespace)
    st = state(memo)
    lm = labels.get(naming.LM_LABEL)
    if lm and type == "DELETED":
        ghost = dict(body)
        ghost["_deleted"], ghost["_deletedAt"] = True, iso(now())
        st.ghosts[(namespace, lm)][name] = ghost
    if teacher := labels.get(naming.TEACHER_LABEL):
        st.wake("teacher", namespace, teacher)
    st.wake("lm", namespace, lm)


def wake_owners(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo) -> None:
    """Wake the daemon of whatever owns a changed object: a Teacher (its label), or a
    LanguageModel that serves its model (the serve label). Objects without one wake none."""
    namespace = namespaced(namespace)
    state(memo).wake("teacher", namespace, labels.get(naming.TEACHER_LABEL))
    state(memo).wake("lm", namespace, labels.get(naming.SERVE_LABEL))


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
async def deployment_event(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    wake_owners(namespace, labels, memo)


@kopf.on.event("v1", "services", labels=OWNED)
async def service_event(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    wake_owners(namespace, labels, memo)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=OWNED)
async def networkpolicy_event(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    wake_owners(namespace, labels, memo)


@kopf.on.event("v1", "persistentvolumeclaims", labels=OWNED)
async def model_cache_event(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    wake_owners(namespace, labels, memo)


@kopf.on.event(GROUP, VERSION, "teachers")
async def teacher_event(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    namespace = namespaced(namespace)
    st = state(memo)
    st.wake("teacher", namespace, name)
    # LanguageModels that use it wait for its readiness (or re-create it when served).
    for key in list(st.wakeups):
        if key[0] == "lm" and key[1] == namespace:
            st.wakeups[key].set()


@kopf.on.event(GROUP, VERSION, "languagemodels")
async def languagemodel_event(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    namespace = namespaced(namespace)
    st = state(memo)
    st.wake("lm", namespace, name)
    if teacher := teacher_of(name, dict(spec)):
        st.wake("teacher", namespace, teacher)
    st.wake("fleet", namespace, labels.get(fleet_mod.FLEET_LABEL))


@kopf.on.event(GROUP, VERSION, "languagefleets")
async def languagefleet_event(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    namespace = namespaced(namespace)
    state(memo).wake("fleet", namespace, name)


async def _sleep(st: OperatorState, key: Key, stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Until woken, stopped, or `seconds` pass."""
    event = st.wakeups[key]
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _post(body: kopf.Body, events: list[tuple[str, str, str]]) -> None:
    for kind, reason, message in events:
        kopf.event(body, type=kind, reason=reason, message=message[:1024])


def refusal_delay(refusals: int, settings: settings_mod.OperatorSettings) -> float:
    """How long a daemon waits after its n-th refusal in a row (a change of the object or
    of what it owns wakes it sooner)."""
    return min(5.0 * 2 ** max(refusals - 1, 0), max(settings.resync_seconds, 5.0))


async def report_refusal(
    plural: str,
    namespace: str,
    name: str,
    body: kopf.Body,
    written: dict[str, Any],
    plan: Any,
    logger: kopf.Logger,
) -> dict[str, Any]:
    """Write the status and post the Events of a refusal (`k8s.Refused`); returns the
    status now written."""
    try:
        written = await write_status(plural, namespace, name, written, plan.status.dump())
        _post(body, plan.events)
    except Exception as exc:
        logger.warning("could not report it in the status of %s/%s: %r", namespace, name, exc)
    return written


async def write_status(
    plural: str, namespace: str, name: str, written: dict[str, Any], wanted: dict[str, Any]
) -> dict[str, Any]:
    """Bring the status from what this daemon last wrote to what it wants, by one merge
    patch on /status that also removes what is gone; returns the new written status."""
    if wanted != written:
        await k8s.merge_patch(
            API, plural, namespace, name, {"status": merge_diff(written, wanted)}, sub="status"
        )
    return wanted


# ------------------------------------------------------------------ LanguageModel


def observed(
    name: str,
    namespace: str,
    body: kopf.Body,
    status: dict[str, Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    teacher: dict[str, Any] | None,
    serve: serve_mod.ServeSeen | None = None,
) -> Observed:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return Observed(
        name=name,
        namespace=namespace,
        generation=int(meta.get("generation") or 1),
        spec=dict(body.get("spec") or {}),
        status=status,
        jobs=jobs,
        pods=pods,
        teacher=teacher,
        now=now(),
        uid=meta.get("uid"),
        fleet=(meta.get("labels") or {}).get(fleet_mod.FLEET_LABEL) or None,
        gpu_admitted=annotations.get(fleet_mod.ADMITTED_ANNOTATION) == "true",
        retry_request=annotations.get(RETRY_ANNOTATION),
        serve=serve or serve_mod.ServeSeen(),
    )


# Kopf's handler protocols do not name our index kwargs (kakugo_jobs, ...).
@kopf.daemon(GROUP, VERSION, "languagemodels", initial_delay=0, cancellation_timeout=10)  # type: ignore[arg-type]
async def languagemodel(
    stopped: kopf.DaemonStopped,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    kakugo_jobs: kopf.Index,
    kakugo_pods: kopf.Index,
    kakugo_teachers: kopf.Index,
    serve_deployments: kopf.Index,
    serve_services: kopf.Index,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    namespace = namespaced(namespace)
    st = state(memo)
    key = ("lm", namespace, name)
    written: dict[str, Any] = operator_status(body.get("status"))
    refusals = 0
    while not stopped:
        st.wakeups[key].clear()
        if body.get("metadata", {}).get("deletionTimestamp"):
            return
        pods = list(kakugo_pods.get((namespace, name), []))
        live = {p["metadata"]["name"] for p in pods}
        pods += [g for n, g in st.ghosts.get((namespace, name), {}).items() if n not in live]
        teacher_name = teacher_of(name, dict(body.get("spec") or {}))
        teacher = (
            next(iter(kakugo_teachers.get((namespace, teacher_name), [])), None)
            if teacher_name
            else None
        )
        obs = observed(
            name,
            namespace,
            body,
            written,
            list(kakugo_jobs.get((namespace, name), [])),
            pods,
            teacher,
            await serve_seen(name, namespace, body, serve_deployments, serve_services),
        )
        plan = decide(obs, st.settings)
        try:
            await execute_lm_plan(plan, body, namespace, st, obs.jobs)
            written = await write_status(
                "languagemodels", namespace, name, written, plan.status.dump()
            )
            _post(body, plan.events)
            metrics.observe_plan(
                namespace, name, written, plan.finished, plan.completed_stages, obs.spec
            )
            if plan.finished:  # accounted for: drop the ghosts of finished attempts
                st.ghosts.pop((namespace, name), None)
            refusals = 0
        except k8s.Refused as exc:  # said in status and an Event, then decided again
            metrics.reconcile_error("LanguageModel", exc)
            logger.warning("reconciliation of %s/%s refused: %s", namespace, name, exc)
            report = refused(obs, str(exc), exc.permanent)
            written = await report_refusal(
                "languagemodels", namespace, name, body, written, report, logger
            )
            refusals += 1
            await _sleep(st, key, stopped, refusal_delay(refusals, st.settings))
            continue
        except Exception as exc:  # a failed API call: log, back off, decide again
            metrics.reconcile_error("LanguageModel", exc)
            logger.warning("reconciliation of %s/%s failed: %r", namespace, name, exc)
            await _sleep(st, key, stopped, 5.0)
            continue
        await _sleep(st, key, stopped, plan.requeue_after or st.settings.resync_seconds)


async def serve_seen(
    name: str, namespace: str, body: kopf.Body, deployments: kopf.Index, services: kopf.Index
) -> serve_mod.ServeSeen:
    """The served model's objects, a look at its /metrics while a replica is ready, and the
    wake annotation (serve.py says what counts as use)."""
    deploy = next(iter(deployments.get((namespace, name), [])), None)
    spec = dict(body.get("spec") or {})
    sample = None
    if deploy is not None and spec.get("serve") and serve_mod.server.ready_replicas(deploy):
        sample = await serve_mod.scrape(serve_mod.metrics_url(name, namespace, spec))
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    return serve_mod.ServeSeen(
        deployment=deploy,
        service=next(iter(services.get((namespace, name), [])), None),
        sample=sample,
        wake=annotations.get(serve_mod.WAKE_ANNOTATION),
    )


#: Kueue's Workload API, newest first (v1beta1 is deprecated but served by every release).
KUEUE_WORKLOADS = ("kueue.x-k8s.io/v1beta2", "kueue.x-k8s.io/v1beta1")
#: Kueue's label on a Workload: the uid of the Job it stands for.
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


async def set_kueue_active(namespace: str, job: dict[str, Any], active: bool) -> None:
    """Stop (or let run again) a Job on a Kueue queue the way Kueue stops one: its
    Workload's `spec.active` (false: Kueue evicts it, suspends the Job and does not queue
    it again). Kueue owns such a Job's `spec.suspend` and would resume an admitted Job the
    operator suspended. Once done, the Job carries `kakugo.io/kueue-active`, which is how the
    decision knows. A Job whose Workload Kueue has not made yet is tried again on the next
    reconciliation; without Kueue's API nobody resumes the (suspended) Job anyway."""
    uid = job["metadata"].get("uid", "")
    name = job["metadata"]["name"]
    for api_version in KUEUE_WORKLOADS:
        found = await k8s.list_objects(
            api_version, "workloads", namespace, label_selector=f"{KUEUE_JOB_UID_LABEL}={uid}"
        )
        if found is None:
            continue  # this version is not served
        # Kueue's label, or (an older Kueue) its owner reference: the Workload of this Job.
        found = [
            w
            for w in found
            if (w["metadata"].get("labels") or {}).get(KUEUE_JOB_UID_LABEL) == uid
            or any(o.get("uid") == uid for o in w["metadata"].get("ownerReferences") or [])
        ]
        if not found:
            return  # Kueue has not made it yet
        for workload in found:
            await k8s.merge_patch(
                api_version,
                "workloads",
                namespace,
                workload["metadata"]["name"],
                {"spec": {"active": active}},
            )
        break
    value = "true" if active else "false"
    await k8s.merge_patch(
        "batch/v1",
        "jobs",
        namespace,
        name,
        {"metadata": {"annotations": {sm.KUEUE_ACTIVE_ANNOTATION: value}}},
    )


async def execute_lm_plan(
    plan: Any,
    body: kopf.Body,
    namespace: str,
    st: OperatorState,
    jobs: list[dict[str, Any]] | None = None,
) -> None:
    if plan.apply_config_map is not None:
        cm = plan.apply_config_map
        kopf.adopt(cm, owner=body)
        created = await k8s.create(cm)
        if created.get("data") != cm["data"]:
            await k8s.merge_patch(
                "v1", "configmaps", namespace, cm["metadata"]["name"], {"data": cm["data"]}
            )
    if plan.teacher_patch is not None:
        await k8s.merge_patch(
            API,
            "teachers",
            namespace,
            naming.served_teacher_name(body["metadata"]["name"]),
            plan.teacher_patch,
        )
    for job_name in plan.delete_jobs:
        await k8s.delete("batch/v1", "jobs", namespace, job_name)
    for job_name, suspend in plan.suspend_jobs.items():
        await k8s.merge_patch(
            "batch/v1", "jobs", namespace, job_name, {"spec": {"suspend": suspend}}
        )
    for job_name, active in plan.kueue_active.items():
        job = next((j for j in jobs or [] if j["metadata"]["name"] == job_name), None)
        if job is not None:
            await set_kueue_active(namespace, job, active)
    for obj in plan.create:
        kopf.adopt(obj, owner=body)
        await k8s.create(obj)
    for api_version, plural, obj_name, patch in plan.patches:
        await k8s.merge_patch(api_version, plural, namespace, obj_name, patch)
    for stage, pod in plan.log_pods.items():
        if tail := await k8s.pod_log_tail(namespace, pod, st.settings.log_tail_lines):
            with_log_tail(plan, stage, tail)


@kopf.on.delete(GROUP, VERSION, "languagemodels")
async def languagemodel_deleted(
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Owned objects go through ownerReferences; artifacts only when the spec says so."""
    namespace = namespaced(namespace)
    st = state(memo)
    metrics.forget(namespace, name)
    st.ghosts.pop((namespace, name), None)
    st.wakeups.pop(("lm", namespace, name), None)
    storage = dict(spec.get("storage") or {})
    if not storage.get("deleteArtifactsOnDelete"):
        return
    if storage.get("uri"):
        root = storage["uri"]
    elif storage.get("pvc"):
        root = f"file://{(storage.get('pvc') or {}).get('mountPath', '/data')}"
    elif st.settings.storage_uri:  # no storage in the spec: the operator's default storage
        root = st.settings.storage_uri
    else:
        logger.warning("no storage to delete artifacts from")
        return
    root_uri = run_uri(root, namespace, name)
    s3 = storage.get("s3") or {}
    removed = await asyncio.to_thread(
        delete_run_artifacts, root_uri, endpoint_url=s3.get("endpointUrl"), region=s3.get("region")
    )
    logger.info("deleted %d artifact(s) under %s", removed, root_uri)


# ------------------------------------------------------------------ Teacher


# Kopf's handler protocols do not name our index kwargs (kakugo_jobs, ...).
@kopf.daemon(GROUP, VERSION, "teachers", initial_delay=0, cancellation_timeout=10)  # type: ignore[arg-type]
async def teacher(
    stopped: kopf.DaemonStopped,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    kakugo_deployments: kopf.Index,
    kakugo_services: kopf.Index,
    kakugo_networkpolicies: kopf.Index,
    kakugo_model_caches: kopf.Index,
    teacher_clients: kopf.Index,
    teacher_usage: kopf.Index,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    namespace = namespaced(namespace)
    st = state(memo)
    key = ("teacher", namespace, name)
    written: dict[str, Any] = operator_status(body.get("status"))
    refusals = 0
    while not stopped:
        st.wakeups[key].clear()
        if body.get("metadata", {}).get("deletionTimestamp"):
            return
        deploy = next(iter(kakugo_deployments.get((namespace, name), [])), None)
        service = next(iter(kakugo_services.get((namespace, name), [])), None)
        policy = next(iter(kakugo_networkpolicies.get((namespace, name), [])), None)
        cache = next(iter(kakugo_model_caches.get((namespace, name), [])), None)
        clients = list(teacher_clients.get((namespace, name), []))
        plan = decide_teacher(
            name,
            namespace,
            dict(body.get("spec") or {}),
            written,
            deploy,
            clients,
            now(),
            st.settings,
            int(body.get("metadata", {}).get("generation") or 1),
            service_obj=service,
            policy_obj=policy,
            cache_obj=cache,
            usage=list(teacher_usage.get((namespace, name), [])),
        )
        try:
            for obj in plan.create:
                kopf.adopt(obj, owner=body)
                await k8s.create(obj)
            if plan.patch_deployment is not None:
                await k8s.merge_patch(
                    "apps/v1", "deployments", namespace, name, plan.patch_deployment
                )
            if plan.patch_service is not None:
                await k8s.merge_patch("v1", "services", namespace, name, plan.patch_service)
            if plan.patch_network_policy is not None:
                await k8s.merge_patch(
                    "networking.k8s.io/v1",
                    "networkpolicies",
                    namespace,
                    name,
                    plan.patch_network_policy,
                )
            if plan.replicas is not None:
                await k8s.merge_patch(
                    "apps/v1", "deployments", namespace, name, {"spec": {"replicas": plan.replicas}}
                )
            written = await write_status("teachers", namespace, name, written, plan.status.dump())
            _post(body, plan.events)
            metrics.observe_teacher(
                namespace,
                name,
                plan.status.phase == "Ready",
                len(plan.status.clients),
                plan.status.cost,
            )
            refusals = 0
        except k8s.Refused as exc:  # e.g. its Service: said in status and an Event
            metrics.reconcile_error("Teacher", exc)
            logger.warning("reconciliation of Teacher %s/%s refused: %s", namespace, name, exc)
            generation = int(body.get("metadata", {}).get("generation") or 1)
            report = teacher_refused(written, str(exc), exc.permanent, now(), generation)
            written = await report_refusal(
                "teachers", namespace, name, body, written, report, logger
            )
            refusals += 1
            await _sleep(st, key, stopped, refusal_delay(refusals, st.settings))
            continue
        except Exception as exc:
            metrics.reconcile_error("Teacher", exc)
            logger.warning("reconciliation of Teacher %s/%s failed: %r", namespace, name, exc)
            await _sleep(st, key, stopped, 5.0)
            continue
        await _sleep(st, key, stopped, plan.requeue_after or st.settings.resync_seconds)


@kopf.on.delete(GROUP, VERSION, "teachers", optional=True)
def teacher_deleted(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    namespace = namespaced(namespace)
    state(memo).wakeups.pop(("teacher", namespace, name), None)
    metrics.forget_teacher(namespace, name)


# ------------------------------------------------------------------ LanguageFleet


# Kopf's handler protocols do not name our index kwargs (kakugo_jobs, ...).
@kopf.daemon(GROUP, VERSION, "languagefleets", initial_delay=0, cancellation_timeout=10)  # type: ignore[arg-type]
async def languagefleet(
    stopped: kopf.DaemonStopped,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    fleet_children: kopf.Index,
    languagemodel_fleets: kopf.Index,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    namespace = namespaced(namespace)
    st = state(memo)
    key = ("fleet", namespace, name)
    written: dict[str, Any] = operator_status(body.get("status"))
    refusals = 0
    ledger = fleet_mod.AdmissionLedger()
    while not stopped:
        st.wakeups[key].clear()
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        children = ledger.overlay(list(fleet_children.get((namespace, name), [])), time.monotonic())
        taken = dict(languagemodel_fleets.get(namespace, []))
        plan = fleet_mod.decide_fleet(
            name,
            namespace,
            int(meta.get("generation") or 1),
            dict(body.get("spec") or {}),
            written,
            children,
            taken,
            now(),
        )
        try:
            for obj in plan.create:
                kopf.append_owner_reference(obj, owner=body)  # not kopf.adopt: the fleet's
                await k8s.create(obj)  # labels (e.g. Argo CD's tracking label) stay its own
            for child, patch in plan.patch.items():
                await k8s.merge_patch(API, "languagemodels", namespace, child, patch)
                ledger.record(child, patch, time.monotonic())
            for child in plan.delete:
                if child in plan.delete_artifacts:
                    await k8s.merge_patch(
                        API,
                        "languagemodels",
                        namespace,
                        child,
                        {"spec": {"storage": {"deleteArtifactsOnDelete": True}}},
                    )
                await k8s.delete(API, "languagemodels", namespace, child)
            written = await write_status(
                "languagefleets", namespace, name, written, plan.status.dump()
            )
            _post(body, plan.events)
            refusals = 0
        except k8s.Refused as exc:  # a member refused: said in status and an Event
            metrics.reconcile_error("LanguageFleet", exc)
            logger.warning(
                "reconciliation of LanguageFleet %s/%s refused: %s", namespace, name, exc
            )
            generation = int(meta.get("generation") or 1)
            report = fleet_mod.refused(written, str(exc), exc.permanent, generation, now())
            written = await report_refusal(
                "languagefleets", namespace, name, body, written, report, logger
            )
            refusals += 1
            await _sleep(st, key, stopped, refusal_delay(refusals, st.settings))
            continue
        except Exception as exc:
            metrics.reconcile_error("LanguageFleet", exc)
            logger.warning("reconciliation of LanguageFleet %s/%s failed: %r", namespace, name, exc)
            await _sleep(st, key, stopped, 5.0)
            continue
        await _sleep(st, key, stopped, plan.requeue_after or st.settings.resync_seconds)


# Kopf's handler protocols do not name our index kwargs (kakugo_jobs, ...).
@kopf.on.delete(GROUP, VERSION, "languagefleets")  # type: ignore[arg-type]
async def languagefleet_deleted(
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    fleet_children: kopf.Index,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Members go through ownerReferences (the garbage collector). With artifactPolicy
    Delete, each member is marked to delete its artifacts and deleted here first."""
    namespace = namespaced(namespace)
    state(memo).wakeups.pop(("fleet", namespace, name), None)
    if spec.get("artifactPolicy") != "Delete":
        return
    for child in list(fleet_children.get((namespace, name), [])):
        child_name = child["metadata"]["name"]
        await k8s.merge_patch(
            API,
            "languagemodels",
            namespace,
            child_name,
            {"spec": {"storage": {"deleteArtifactsOnDelete": True}}},
        )
        await k8s.delete(API, "languagemodels", namespace, child_name)
        logger.info("deleted member %s with its artifacts", child_name)


# ------------------------------------------------------------------ admission webhook


@kopf.on.validate(
    GROUP, VERSION, "languagemodels", id=webhook.HANDLER_ID, operations=webhook.OPERATIONS
)
@kopf.on.validate(GROUP, VERSION, "teachers", id=webhook.HANDLER_ID, operations=webhook.OPERATIONS)
@kopf.on.validate(
    GROUP, VERSION, "languagefleets", id=webhook.HANDLER_ID, operations=webhook.OPERATIONS
)
async def validate(
    resource: kopf.Resource,
    namespace: str | None,
    userinfo: kopf.UserInfo,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Valid, and nothing its author may not use herself (webhook.review)."""
    old, new = kwargs.get("old"), kwargs.get("new")
    await webhook.review(
        plural=resource.plural,
        operation=kwargs.get("operation"),
        namespace=namespace,
        old=dict(old) if old is not None else None,
        new=dict(new) if new is not None else None,
        userinfo=dict(userinfo),
        settings=state(memo).settings,
    )


@kopf.on.probe(id="kakugo")
async def probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    st = state(memo)
    out: dict[str, Any] = {"languagemodels": sum(1 for k in st.wakeups if k[0] == "lm")}
    if st.settings.webhook_port:
        hook = st.webhook
        # Liveness: once the webhook listens, it must keep answering TLS handshakes.
        if hook.serving and not await webhook.alive(hook):
            raise kopf.PermanentError("the admission webhook does not answer")
        out["webhook"] = {
            "serving": hook.serving,
            "ready": hook.ready.is_set(),
            "caBundle": {None: "not managed", True: "current", False: "stale"}[hook.ca_current],
        }
    return out
