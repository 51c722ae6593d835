"""Kopf handlers: thin. They gather the world from in-memory indexes, call the pure
decisions (`reconcile.decide`, `teacher.decide_teacher`, `fleet.decide_fleet`) and
execute the plans.

One daemon per LanguageModel, Teacher and LanguageFleet re-decides whenever something it owns or
depends on changes (Job, Pod and Teacher events wake it) and at least every
`resyncSeconds`. Each daemon is the only writer of its object's status, so it keeps the
status it last wrote instead of waiting for the watch to echo it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import kopf

from kakugo_operator import fleet as fleet_mod
from kakugo_operator import k8s, metrics, naming
from kakugo_operator import settings as settings_mod
from kakugo_operator.observe import iso
from kakugo_operator.reconcile import Observed, decide
from kakugo_operator.teacher import decide_teacher, served_teacher
from kakugo_stages.contract import TEACHER_STAGES, delete_run_artifacts, run_uri

#: Set by Argo CD's retry action (gitops/argocd): failed stages get a fresh retry budget.
RETRY_ANNOTATION = "kakugo.io/retry"

GROUP, VERSION = "kakugo.io", "v1alpha1"
API = f"{GROUP}/{VERSION}"
SETTINGS = settings_mod.load()
OWNED = {"app.kubernetes.io/managed-by": naming.MANAGED_BY}

# Wake-ups: one asyncio.Event per object key, set by the events that concern it.
_wakeups: dict[tuple[str, str, str], asyncio.Event] = defaultdict(asyncio.Event)
# Pods deleted before their Job was accounted for: the last state seen, for cost and for
# telling a deleted (disrupted) Pod from a broken one.
_ghosts: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)


def wake(kind: str, namespace: str | None, name: str | None) -> None:
    if namespace and name:
        _wakeups[(kind, namespace, name)].set()


def now() -> datetime:
    return datetime.now(UTC)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global SETTINGS
    # A fresh start (also a second operator run in one process, as in tests).
    SETTINGS = settings_mod.load()
    _wakeups.clear()
    _ghosts.clear()
    metrics.reset()
    settings.persistence.finalizer = "kakugo.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kakugo.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kakugo.io", key="last-handled-configuration")
    # Our Events are explicit (kopf.event); do not turn every log line into one.
    settings.posting.level = logging.WARNING
    # No cluster-wide CRD and namespace scanning: the chart's namespaced RBAC forbids it,
    # and the watched namespaces are given on the command line.
    settings.scanning.disabled = True
    settings.execution.max_workers = 32
    settings.watching.server_timeout = 300
    k8s.configure()
    if SETTINGS.metrics_port:
        with contextlib.suppress(OSError):  # a second operator in one process (tests)
            metrics.start(SETTINGS.metrics_port)
    # Ready to take work. Daemons still start only once Kopf's indexes hold every existing
    # Job and Pod, which is what makes restarts safe.
    metrics.READY.set()


@kopf.on.cleanup()
def not_ready(**_: Any) -> None:
    metrics.READY.clear()


# ------------------------------------------------------------------ indexes (no API calls)


@kopf.index("batch", "v1", "jobs", labels=OWNED)
def kakugo_jobs(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> Any:
    lm = labels.get(naming.LM_LABEL)
    return {(namespace, lm): dict(body)} if lm else {}


@kopf.index("v1", "pods", labels=OWNED)
def kakugo_pods(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> Any:
    lm = labels.get(naming.LM_LABEL)
    return {(namespace, lm): dict(body)} if lm else {}


@kopf.index(GROUP, VERSION, "teachers")
def kakugo_teachers(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): dict(body)}


@kopf.index("apps", "v1", "deployments", labels=OWNED)
def kakugo_deployments(namespace: str, labels: dict[str, str], body: kopf.Body,
                       **_: Any) -> Any:
    teacher = labels.get(naming.TEACHER_LABEL)
    return {(namespace, teacher): dict(body)} if teacher else {}


def teacher_of(name: str, spec: dict[str, Any]) -> str | None:
    teacher = spec.get("teacher") or {}
    if teacher.get("ref"):
        return (teacher["ref"] or {}).get("name")
    if teacher.get("serve") is not None:
        return naming.served_teacher_name(name)
    return None


def needs_teacher(status: dict[str, Any]) -> bool:
    """In (or about to enter) a teacher stage, and not stopped."""
    if status.get("phase") in ("Succeeded", "Stalled", "Suspended"):
        return False
    stage = (status.get("progress") or {}).get("stage")
    return stage is None or stage in TEACHER_STAGES


@kopf.index(GROUP, VERSION, "languagemodels")
def teacher_clients(namespace: str, name: str, spec: dict[str, Any], status: dict[str, Any],
                    **_: Any) -> Any:
    teacher = teacher_of(name, dict(spec))
    if teacher and needs_teacher(dict(status)):
        return {(namespace, teacher): name}
    return {}  # not None: Kopf keeps an object's old index entries when given None


@kopf.index(GROUP, VERSION, "languagemodels", labels={fleet_mod.FLEET_LABEL: kopf.PRESENT})
def fleet_children(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> Any:
    return {(namespace, labels[fleet_mod.FLEET_LABEL]): dict(body)}


@kopf.index(GROUP, VERSION, "languagemodels")
def languagemodel_fleets(namespace: str, name: str, labels: dict[str, str], **_: Any) -> Any:
    """Every LanguageModel's fleet ("" for none): a fleet must not take over a name."""
    return {namespace: (name, labels.get(fleet_mod.FLEET_LABEL, ""))}


# ------------------------------------------------------------------ wake-ups
# Async on purpose: Kopf runs sync handlers in threads, and asyncio.Event is not
# thread-safe.


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
async def job_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
    wake("lm", namespace, labels.get(naming.LM_LABEL))


@kopf.on.event("v1", "pods", labels=OWNED)
async def pod_event(type: str, namespace: str, name: str, labels: dict[str, str], body: kopf.Body,
              **_: Any) -> None:
    lm = labels.get(naming.LM_LABEL)
    if lm and type == "DELETED":
        ghost = dict(body)
        ghost["_deleted"], ghost["_deletedAt"] = True, iso(now())
        _ghosts[(namespace, lm)][name] = ghost
    if teacher := labels.get(naming.TEACHER_LABEL):
        wake("teacher", namespace, teacher)
    wake("lm", namespace, lm)


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
async def deployment_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
    wake("teacher", namespace, labels.get(naming.TEACHER_LABEL))


@kopf.on.event(GROUP, VERSION, "teachers")
async def teacher_event(namespace: str, name: str, **_: Any) -> None:
    wake("teacher", namespace, name)
    # LanguageModels that use it wait for its readiness.
    for key in list(_wakeups):
        if key[0] == "lm" and key[1] == namespace:
            _wakeups[key].set()


@kopf.on.event(GROUP, VERSION, "languagemodels")
async def languagemodel_event(namespace: str, name: str, spec: dict[str, Any],
                              labels: dict[str, str], **_: Any) -> None:
    wake("lm", namespace, name)
    if teacher := teacher_of(name, dict(spec)):
        wake("teacher", namespace, teacher)
    wake("fleet", namespace, labels.get(fleet_mod.FLEET_LABEL))


@kopf.on.event(GROUP, VERSION, "languagefleets")
async def languagefleet_event(namespace: str, name: str, **_: Any) -> None:
    wake("fleet", namespace, name)


async def _sleep(key: tuple[str, str, str], stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Until woken, stopped, or `seconds` pass."""
    event = _wakeups[key]
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _post(body: kopf.Body, events: list[tuple[str, str, str]]) -> None:
    for kind, reason, message in events:
        kopf.event(body, type=kind, reason=reason, message=message[:1024])


# ------------------------------------------------------------------ LanguageModel


@kopf.daemon(GROUP, VERSION, "languagemodels", initial_delay=0, cancellation_timeout=10)
async def languagemodel(
    stopped: kopf.DaemonStopped, name: str, namespace: str, body: kopf.Body,
    kakugo_jobs: kopf.Index, kakugo_pods: kopf.Index, kakugo_teachers: kopf.Index,
    logger: logging.Logger, **_: Any,
) -> None:
    key = ("lm", namespace, name)
    status: dict[str, Any] = dict(body.get("status") or {})
    teacher_created = False
    while not stopped:
        _wakeups[key].clear()
        spec = dict(body.get("spec") or {})
        if body.get("metadata", {}).get("deletionTimestamp"):
            return
        pods = list(kakugo_pods.get((namespace, name), []))
        live = {p["metadata"]["name"] for p in pods}
        ghosts = _ghosts.get((namespace, name), {})
        pods += [g for n, g in ghosts.items() if n not in live]
        teacher_name = teacher_of(name, spec)
        teacher = None
        if teacher_name:
            teacher = next(iter(kakugo_teachers.get((namespace, teacher_name), [])), None)
        meta = body.get("metadata") or {}
        obs = Observed(
            name=name, namespace=namespace,
            generation=int(meta.get("generation") or 1),
            spec=spec, status=status, jobs=list(kakugo_jobs.get((namespace, name), [])),
            pods=pods, teacher=teacher, now=now(),
            fleet=(meta.get("labels") or {}).get(fleet_mod.FLEET_LABEL) or None,
            gpu_admitted=(meta.get("annotations") or {}).get(
                fleet_mod.ADMITTED_ANNOTATION) == "true",
            retry_request=(meta.get("annotations") or {}).get(RETRY_ANNOTATION),
        )
        plan = decide(obs, SETTINGS)
        try:
            if spec.get("teacher", {}).get("serve") is not None and teacher is None \
                    and not teacher_created:
                served = served_teacher(name, namespace, spec["teacher"]["serve"])
                kopf.adopt(served, owner=body)
                await k8s.create(served)
                teacher_created = True
            if plan.apply_config_map is not None:
                cm = plan.apply_config_map
                kopf.adopt(cm, owner=body)
                created = await k8s.create(cm)
                if created.get("data") != cm["data"]:
                    await k8s.merge_patch("v1", "configmaps", namespace,
                                          cm["metadata"]["name"], {"data": cm["data"]})
            for job_name in plan.delete_jobs:
                await k8s.delete("batch/v1", "jobs", namespace, job_name)
            for job_name, suspend in plan.suspend_jobs.items():
                await k8s.merge_patch("batch/v1", "jobs", namespace, job_name,
                                      {"spec": {"suspend": suspend}})
            for obj in plan.create:
                kopf.adopt(obj, owner=body)
                await k8s.create(obj)
            if plan.log_pod:
                tail = await k8s.pod_log_tail(namespace, plan.log_pod, SETTINGS.log_tail_lines)
                if tail:
                    _append_log_tail(plan, tail)
            if plan.status != status:
                await k8s.merge_patch(API, "languagemodels", namespace, name,
                                      {"status": _status_patch(status, plan.status)},
                                      sub="status")
                status = plan.status
            _post(body, plan.events)
            metrics.observe_plan(namespace, name, plan.status, plan.finished,
                                 plan.completed_stages, spec)
            if plan.finished:  # accounted for: drop the ghosts of finished attempts
                _ghosts.pop((namespace, name), None)
        except Exception as exc:  # a failed API call: log, back off, decide again
            logger.warning("reconciliation of %s/%s failed: %r", namespace, name, exc)
            await _sleep(key, stopped, 5.0)
            continue
        await _sleep(key, stopped, plan.requeue_after or SETTINGS.resync_seconds)


def _status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from old to new status (removed keys become null)."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    for k in old:
        if k not in new:
            patch[k] = None
    return patch


def _append_log_tail(plan: Any, tail: str) -> None:
    text = f"\n--- log tail ---\n{tail}"
    for entry in plan.status.get("stages", []):
        if entry.get("state") == "Failed" and "--- log tail ---" not in entry.get("message", ""):
            entry["message"] = (entry["message"] + text)[-2048:]
    for cond in plan.status.get("conditions", []):
        if cond["type"] in ("Stalled", "Ready") and cond["reason"] == "StageFailed":
            cond["message"] = (cond["message"] + text)[-2048:]
    plan.events = [(k, r, (m + text)[-1024:]) if r == "StageFailed" else (k, r, m)
                   for k, r, m in plan.events]


@kopf.on.delete(GROUP, VERSION, "languagemodels")
async def languagemodel_deleted(name: str, namespace: str, spec: dict[str, Any],
                                logger: logging.Logger, **_: Any) -> None:
    """Owned objects go through ownerReferences; artifacts only when the spec says so."""
    metrics.forget(namespace, name)
    _ghosts.pop((namespace, name), None)
    _wakeups.pop(("lm", namespace, name), None)
    storage = dict(spec.get("storage") or {})
    if not storage.get("deleteArtifactsOnDelete"):
        return
    if storage.get("uri"):
        root = storage["uri"]
    elif storage.get("pvc"):
        root = f"file://{(storage.get('pvc') or {}).get('mountPath', '/data')}"
    elif SETTINGS.storage_uri:  # no storage in the spec: the operator's default storage
        root = SETTINGS.storage_uri
    else:
        logger.warning("no storage to delete artifacts from")
        return
    root_uri = run_uri(root, namespace, name)
    s3 = storage.get("s3") or {}
    removed = await asyncio.to_thread(delete_run_artifacts, root_uri,
                                      endpoint_url=s3.get("endpointUrl"), region=s3.get("region"))
    logger.info("deleted %d artifact(s) under %s", removed, root_uri)


# ------------------------------------------------------------------ Teacher


@kopf.daemon(GROUP, VERSION, "teachers", initial_delay=0, cancellation_timeout=10)
async def teacher(
    stopped: kopf.DaemonStopped, name: str, namespace: str, body: kopf.Body,
    kakugo_deployments: kopf.Index, teacher_clients: kopf.Index, logger: logging.Logger,
    **_: Any,
) -> None:
    key = ("teacher", namespace, name)
    status: dict[str, Any] = dict(body.get("status") or {})
    while not stopped:
        _wakeups[key].clear()
        if body.get("metadata", {}).get("deletionTimestamp"):
            return
        deploy = next(iter(kakugo_deployments.get((namespace, name), [])), None)
        clients = list(teacher_clients.get((namespace, name), []))
        plan = decide_teacher(name, namespace, dict(body.get("spec") or {}), status, deploy,
                              clients, now(), SETTINGS,
                              int(body.get("metadata", {}).get("generation") or 1))
        try:
            for obj in plan.create:
                kopf.adopt(obj, owner=body)
                await k8s.create(obj)
            if plan.replicas is not None:
                await k8s.merge_patch("apps/v1", "deployments", namespace, name,
                                      {"spec": {"replicas": plan.replicas}})
            if plan.status != status:
                await k8s.merge_patch(API, "teachers", namespace, name,
                                      {"status": _status_patch(status, plan.status)},
                                      sub="status")
                status = plan.status
            _post(body, plan.events)
            metrics.observe_teacher(namespace, name, plan.status.get("phase") == "Ready",
                                    len(plan.status.get("clients") or []))
        except Exception as exc:
            logger.warning("reconciliation of Teacher %s/%s failed: %r", namespace, name, exc)
            await _sleep(key, stopped, 5.0)
            continue
        await _sleep(key, stopped, plan.requeue_after or SETTINGS.resync_seconds)


@kopf.on.delete(GROUP, VERSION, "teachers", optional=True)
def teacher_deleted(name: str, namespace: str, **_: Any) -> None:
    _wakeups.pop(("teacher", namespace, name), None)
    metrics.forget_teacher(namespace, name)


# ------------------------------------------------------------------ LanguageFleet


@kopf.daemon(GROUP, VERSION, "languagefleets", initial_delay=0, cancellation_timeout=10)
async def languagefleet(
    stopped: kopf.DaemonStopped, name: str, namespace: str, body: kopf.Body,
    fleet_children: kopf.Index, languagemodel_fleets: kopf.Index, logger: logging.Logger,
    **_: Any,
) -> None:
    key = ("fleet", namespace, name)
    status: dict[str, Any] = dict(body.get("status") or {})
    ledger = fleet_mod.AdmissionLedger()
    while not stopped:
        _wakeups[key].clear()
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        children = ledger.overlay(list(fleet_children.get((namespace, name), [])),
                                  time.monotonic())
        taken = dict(languagemodel_fleets.get(namespace, []))
        plan = fleet_mod.decide_fleet(name, namespace, int(meta.get("generation") or 1),
                                      dict(body.get("spec") or {}), status, children, taken,
                                      now())
        try:
            for obj in plan.create:
                kopf.append_owner_reference(obj, owner=body)  # not kopf.adopt: the fleet's
                await k8s.create(obj)  # labels (e.g. Argo CD's tracking label) stay its own
            for child, patch in plan.patch.items():
                await k8s.merge_patch(API, "languagemodels", namespace, child, patch)
                ledger.record(child, patch, time.monotonic())
            for child in plan.delete:
                if child in plan.delete_artifacts:
                    await k8s.merge_patch(API, "languagemodels", namespace, child, {
                        "spec": {"storage": {"deleteArtifactsOnDelete": True}}})
                await k8s.delete(API, "languagemodels", namespace, child)
            if plan.status != status:
                # Nested maps (phases, byLanguage) lose keys too: a deep merge patch.
                await k8s.merge_patch(API, "languagefleets", namespace, name,
                                      {"status": fleet_mod.merge_diff(status, plan.status)},
                                      sub="status")
                status = plan.status
            _post(body, plan.events)
        except Exception as exc:
            logger.warning("reconciliation of LanguageFleet %s/%s failed: %r", namespace, name,
                           exc)
            await _sleep(key, stopped, 5.0)
            continue
        await _sleep(key, stopped, plan.requeue_after or SETTINGS.resync_seconds)


@kopf.on.delete(GROUP, VERSION, "languagefleets")
async def languagefleet_deleted(name: str, namespace: str, spec: dict[str, Any],
                                fleet_children: kopf.Index, logger: logging.Logger,
                                **_: Any) -> None:
    """Members go through ownerReferences (the garbage collector). With artifactPolicy
    Delete, each member is marked to delete its artifacts and deleted here first."""
    _wakeups.pop(("fleet", namespace, name), None)
    if spec.get("artifactPolicy") != "Delete":
        return
    for child in list(fleet_children.get((namespace, name), [])):
        child_name = child["metadata"]["name"]
        await k8s.merge_patch(API, "languagemodels", namespace, child_name, {
            "spec": {"storage": {"deleteArtifactsOnDelete": True}}})
        await k8s.delete(API, "languagemodels", namespace, child_name)
        logger.info("deleted member %s with its artifacts", child_name)


@kopf.on.probe(id="kakugo")
def probe(**_: Any) -> dict[str, Any]:
    return {"languagemodels": sum(1 for k in _wakeups if k[0] == "lm")}
