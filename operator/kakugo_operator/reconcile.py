"""The LanguageModel decision: (spec, status, Jobs, Pods, Teacher, now) -> Plan.

`decide` is pure and level-based: it reads the world and the last status and returns
the status to write, the objects to create or change, and the Events to post. Running
it twice on the same world gives the same plan, so restarts, missed events and
duplicate events are harmless; the handlers only execute plans.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from kakugo_operator import builders, naming
from kakugo_operator.fingerprints import stage_fingerprints
from kakugo_operator.observe import (
    attempt_of,
    classify_failure,
    gpu_usage,
    iso,
    job_state,
    labels,
    parse_time,
    pod_settled,
    stage_counts,
)
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import (
    STAGES,
    TEACHER_STAGES,
    ManifestError,
    RunSpec,
    artifact_uris,
    decl,
    dollars,
    token_cost,
    validate_spec,
)
from kakugo_stages.spec import LanguageModelSpec

#: A Job we created but whose watch event has not arrived yet is waited for this long.
INDEX_GRACE_SECONDS = 30.0
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled", "Suspended")
STALL_REASONS = ("InvalidSpec", "StageFailed", "BudgetExceeded", "SpecChangeRefused")


def stage_condition(stage: str) -> str:
    return f"{stage.capitalize()}Complete"


@dataclass(frozen=True)
class Observed:
    """What the handler saw: the object and the world around it."""

    name: str
    namespace: str
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any]
    jobs: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    teacher: dict[str, Any] | None  # the Teacher of teacher.ref / teacher.serve
    now: datetime
    #: The LanguageFleet this object belongs to (label kakugo.io/fleet), if any: a member
    #: starts a GPU stage only once its fleet admitted it (annotation kakugo.io/gpu-admitted).
    fleet: str | None = None
    gpu_admitted: bool = False
    #: The annotation kakugo.io/retry (Argo CD's retry action sets it to a timestamp): a new
    #: value gives the failed stages a fresh retry budget.
    retry_request: str | None = None


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)  # ConfigMaps, Jobs, Teachers
    apply_config_map: dict[str, Any] | None = None  # create or replace
    delete_jobs: list[str] = field(default_factory=list)
    suspend_jobs: dict[str, bool] = field(default_factory=dict)  # job -> spec.suspend
    events: list[tuple[str, str, str]] = field(default_factory=list)  # type, reason, message
    requeue_after: float | None = None
    log_pod: str | None = None  # a failed Pod whose log tail the Stalled message wants
    finished: list[dict[str, Any]] = field(default_factory=list)  # attempt records
    completed_stages: list[tuple[str, float]] = field(default_factory=list)  # stage, seconds


def gpu_stages(spec: LanguageModelSpec) -> tuple[str, ...]:
    """The stages whose Pods request GPUs (by default train and evaluate): the ones a
    fleet's maxConcurrent gates."""
    return tuple(s for s in STAGES if spec.resources.for_stage(s).gpus)


def _requeue(plan: Plan, seconds: float) -> None:
    seconds = max(seconds, 0.5)
    plan.requeue_after = seconds if plan.requeue_after is None else min(
        plan.requeue_after, seconds)


def _new_entry(stage: str, fingerprint: str) -> dict[str, Any]:
    return {"name": stage, "state": "Pending", "fingerprint": fingerprint, "attempt": 0,
            "failures": 0, "disruptions": 0, "attempts": []}


def teacher_env(spec: LanguageModelSpec, teacher: dict[str, Any] | None
                ) -> tuple[bool, builders.TeacherEnv, str]:
    """(ready, env for the stages, why not ready)."""
    if spec.teacher.endpoint is not None:
        return True, builders.TeacherEnv(spec.teacher.endpoint.url, spec.teacher.endpoint.model), ""
    which = spec.teacher.ref.name if spec.teacher.ref else "(served)"
    if teacher is None:
        return False, builders.TeacherEnv(), f"Teacher {which} does not exist yet"
    status = teacher.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    url = status.get("url")
    name = teacher["metadata"]["name"]
    if ready and url:
        return True, builders.TeacherEnv(url, status.get("model")), ""
    return False, builders.TeacherEnv(url, status.get("model")), f"Teacher {name} is not Ready"


def _set_condition(conds: list[dict[str, Any]], prev: list[dict[str, Any]], kind: str,
                   value: bool, reason: str, message: str, now: datetime,
                   generation: int) -> None:
    old = next((c for c in prev if c.get("type") == kind), None)
    status = "True" if value else "False"
    moved = old is None or old.get("status") != status
    conds.append({
        "type": kind, "status": status, "reason": reason, "message": message[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": iso(now) if moved else old.get("lastTransitionTime", iso(now)),
    })


def condition_events(prev: list[dict[str, Any]], new: list[dict[str, Any]],
                     warning: Callable[[dict[str, Any]], bool],
                     new_false_reasons: Collection[str] = ()) -> list[tuple[str, str, str]]:
    """One Event per condition transition (status or reason changed). A condition that
    first appears as False is news only with one of `new_false_reasons`; `warning` says
    which transitions are Warnings."""
    before = {c["type"]: c for c in prev}
    out = []
    for cond in new:
        old = before.get(cond["type"])
        if old and old.get("status") == cond["status"] and old.get("reason") == cond["reason"]:
            continue
        if old is None and cond["status"] == "False" and cond["reason"] not in new_false_reasons:
            continue  # a new condition that is merely not-yet-true: nothing happened
        msg = f"{cond['type']}={cond['status']}: {cond['message']}" if cond["message"] else (
            f"{cond['type']}={cond['status']}")
        out.append(("Warning" if warning(cond) else "Normal", cond["reason"], msg))
    return out


def _events_for(prev: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[tuple]:
    """A LanguageModel's Events: stalls and failed attempts are Warnings."""
    return condition_events(prev, new, lambda c: (
        c["type"] == "Stalled" and c["status"] == "True") or c["reason"] in (
        "Retrying", "Disrupted", "Failed", *STALL_REASONS), STALL_REASONS)


def _stalled_only(obs: Observed, reason: str, message: str) -> Plan:
    """A status that says the object cannot go on, with everything else kept."""
    status = copy.deepcopy(obs.status)
    prev = status.get("conditions") or []
    conds: list[dict[str, Any]] = []
    _set_condition(conds, prev, "Ready", False, reason, message, obs.now, obs.generation)
    _set_condition(conds, prev, "Reconciling", False, reason, "", obs.now, obs.generation)
    _set_condition(conds, prev, "Stalled", True, reason, message, obs.now, obs.generation)
    _set_condition(conds, prev, "Suspended", bool(obs.spec.get("suspend")), "Spec", "",
                   obs.now, obs.generation)
    conds += [c for c in prev if c.get("type") not in CONDITION_TYPES]
    status.update(conditions=conds, observedGeneration=obs.generation, phase="Stalled")
    return Plan(status=status, events=_events_for(prev, conds))


def parse_spec(obs: Observed, settings: OperatorSettings) -> LanguageModelSpec | str:
    """The validated spec, or a message naming the field that is wrong."""
    try:
        spec = validate_spec("LanguageModel", obs.spec, f"{obs.namespace}/{obs.name}")
    except ManifestError as exc:
        return "; ".join(str(e) for e in exc.errors)
    if spec.storage is None and not settings.storage_uri:
        return ("spec.storage.uri: required; the operator has no default storage "
                "(setting storageUri), so set spec.storage.uri or spec.storage.pvc")
    return spec


def decide(obs: Observed, settings: OperatorSettings) -> Plan:
    parsed = parse_spec(obs, settings)
    if isinstance(parsed, str):
        return _stalled_only(obs, "InvalidSpec", parsed)
    spec = parsed
    run = RunSpec(obs.name, obs.namespace, spec,
                  spec.storage.root_uri if spec.storage else str(settings.storage_uri))
    fps = stage_fingerprints(run.spec_dict())
    status = copy.deepcopy(obs.status)
    prev_conds = list(status.get("conditions") or [])
    entries = {e["name"]: e for e in status.get("stages") or [] if e.get("name") in STAGES}
    plan = Plan(status=status)
    now = obs.now

    # A new generation: stages whose inputs moved go back to Pending (or the change is
    # refused, by setting); running Jobs of such stages are stopped.
    moved = [s for s in STAGES if s in entries and entries[s]["attempt"] > 0
             and entries[s]["fingerprint"] != fps[s]]
    if moved and settings.spec_changes == "refuse":
        paths = ", ".join(f"spec.{p}" for p in decl(moved[0]).fingerprint_paths)
        return _stalled_only(obs, "SpecChangeRefused", (
            f"this change alters the inputs of stages that already ran ({', '.join(moved)}; "
            f"{moved[0]} reads {paths}); the operator is set to refuse such changes: revert "
            "it, or create a new LanguageModel"))
    for stage in STAGES:
        entry = entries.setdefault(stage, _new_entry(stage, fps[stage]))
        if stage in moved:
            if entry.get("job") and entry["state"] == "Running":
                plan.delete_jobs.append(entry["job"])
            entry.update(state="Pending", fingerprint=fps[stage], failures=0, disruptions=0,
                         reset=True, counts={}, finishedAt=None, startedAt=None,
                         retryAt=None, message="inputs changed in generation "
                         f"{obs.generation}")
        entry["fingerprint"] = fps[stage]

    # A retry request is honoured once per annotation value: failed stages start again with
    # a fresh retry budget (the status remembers the value, so the decision is level-based).
    if obs.retry_request and obs.retry_request != status.get("retryRequest"):
        status["retryRequest"] = obs.retry_request
        failed = [s for s in STAGES if entries[s]["state"] == "Failed"]
        for stage in failed:
            entries[stage].update(state="Retrying", failures=0, retryAt=None,
                                  message=f"retry requested ({obs.retry_request})")
        if failed:
            plan.events.append(("Normal", "RetryRequested",
                                f"retrying {', '.join(failed)} with a fresh retry budget"))

    if status.get("specFingerprint") != run.fingerprint():
        plan.apply_config_map = builders.config_map(run)
        status["specFingerprint"] = run.fingerprint()

    jobs_by_stage: dict[str, list[dict[str, Any]]] = {}
    for job in obs.jobs:
        jobs_by_stage.setdefault(labels(job).get(naming.STAGE_LABEL, ""), []).append(job)
    pods_by_job: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for pod in obs.pods:
        key = (labels(pod).get(naming.STAGE_LABEL, ""), attempt_of(pod))
        pods_by_job.setdefault(key, []).append(pod)

    ready_teacher, tenv, teacher_wait = teacher_env(spec, obs.teacher)
    suspended = spec.suspend
    max_dollars = spec.budget.max_dollars
    stalled: tuple[str, str] | None = None
    reconciling: tuple[str, str] = ("Running", "")
    active: str | None = None
    queued = False
    gated = gpu_stages(spec) if obs.fleet else ()

    def spent() -> Decimal:
        return _cost(entries, pods_by_job, spec, now, settings)[0]

    for stage in STAGES:
        entry = entries[stage]
        if entry["state"] == "Succeeded":
            continue
        stage_jobs = jobs_by_stage.get(stage, [])
        # Adopt a Job newer than the status knows (created just before a restart).
        newest = max((attempt_of(j) for j in stage_jobs), default=0)
        if newest > entry["attempt"] and entry["state"] != "Failed":
            entry.update(attempt=newest, job=naming.job_name(obs.name, stage, newest),
                         state="Running", startedAt=entry.get("startedAt") or iso(now),
                         createdAt=iso(now))
        job = next((j for j in stage_jobs if attempt_of(j) == entry["attempt"]), None)
        if entry["state"] == "Failed":
            stalled = ("StageFailed", entry.get("message", f"stage {stage} failed"))
            active = stage
            break
        if entry["state"] == "Running" and job is None:
            created = parse_time(entry.get("createdAt")) or now
            if (now - created).total_seconds() < INDEX_GRACE_SECONDS:
                _requeue(plan, 1.0)  # just created: wait for the watch to show it
                active = stage
                reconciling = (f"{stage.capitalize()}Running", f"waiting for Job {entry['job']}")
                break
            job = {"metadata": {"name": entry["job"]}, "status": {"failed": 1},
                   "spec": {"backoffLimit": 0},
                   "_synthetic": True}  # vanished: the same as its Pods deleted
        if job is not None and entry["state"] == "Running":
            pods = pods_by_job.get((stage, entry["attempt"]), [])
            state = job_state(job)
            if state == "Running":
                entry["counts"] = stage_counts(pods, decl(stage).summary) or entry.get("counts", {})
                spec_suspended = bool((job.get("spec") or {}).get("suspend"))
                if suspended != spec_suspended:
                    plan.suspend_jobs[entry["job"]] = suspended
                js = job.get("status") or {}
                entry["shards"] = {"done": js.get("succeeded") or 0,
                                   "total": (job.get("spec") or {}).get("completions") or 1,
                                   "active": js.get("active") or 0}
                active = stage
                reconciling = ((f"{stage.capitalize()}Suspended", "") if suspended
                               else (f"{stage.capitalize()}Running",
                                     f"Job {entry['job']} is running"))
                _requeue(plan, settings.resync_seconds)
                break
            # The Job's watch can run ahead of its Pods': wait (briefly) until every Pod
            # shows how it ended, so that counts and run seconds are final.
            js = job.get("status") or {}
            expected = 0 if job.get("_synthetic") else (js.get("succeeded") or 0) + (
                js.get("failed") or 0)
            if any(not pod_settled(p) for p in pods) or len(pods) < expected:
                seen = parse_time(entry.get("doneSeenAt")) or now
                entry["doneSeenAt"] = iso(seen)
                if (now - seen).total_seconds() < INDEX_GRACE_SECONDS:
                    _requeue(plan, 1.0)
                    active = stage
                    reconciling = (f"{stage.capitalize()}Running",
                                   f"Job {entry['job']} finished; reading its Pods")
                    break
            entry.pop("doneSeenAt", None)
            seconds, cost = gpu_usage(pods, now, settings)
            record = {"job": entry["job"], "attempt": entry["attempt"], "finishedAt": iso(now),
                      "gpuSeconds": round(seconds, 3), "dollars": dollars(cost)}
            if state == "Succeeded":
                entry["counts"] = stage_counts(pods, decl(stage).summary)
                entry.update(state="Succeeded", finishedAt=iso(now), message="", retryAt=None,
                             reset=False)
                entry["attempts"] = [*entry["attempts"], {**record, "outcome": "Succeeded"}][-10:]
                plan.finished.append({"stage": stage, **record, "outcome": "Succeeded",
                                      "counts": entry["counts"]})
                started = parse_time(entry.get("startedAt")) or now
                plan.completed_stages.append((stage, (now - started).total_seconds()))
                continue
            failure = classify_failure(pods)
            outcome = "Disrupted" if failure.disrupted else "Failed"
            entry["attempts"] = [*entry["attempts"], {**record, "outcome": outcome,
                                                      "reason": failure.reason}][-10:]
            plan.finished.append({"stage": stage, **record, "outcome": outcome,
                                  "reason": failure.reason,
                                  "counts": stage_counts(pods, decl(stage).summary)})
            if failure.disrupted:
                entry["disruptions"] += 1
                entry.update(state="Retrying", retryAt=iso(now), message=(
                    f"attempt {entry['attempt']} was disrupted ({failure.reason}: "
                    f"{failure.message}); retrying without spending the retry budget"))
            else:
                entry["failures"] += 1
                if entry["failures"] > settings.retry_budget:
                    message = (f"stage {stage} failed {entry['failures']} times (retry budget "
                               f"{settings.retry_budget}); last attempt {entry['job']}: "
                               f"{failure.reason}: {failure.message}")
                    entry.update(state="Failed", message=message, finishedAt=iso(now))
                    plan.log_pod = failure.pod
                    stalled = ("StageFailed", message)
                    active = stage
                    break
                delay = settings.backoff(entry["failures"])
                entry.update(state="Retrying", retryAt=iso(now + timedelta(seconds=delay)),
                             message=f"attempt {entry['attempt']} failed ({failure.reason}: "
                             f"{failure.message}); retry {entry['failures']} of "
                             f"{settings.retry_budget} in {delay:g}s")
        # No Job runs for this stage: start the next attempt when allowed.
        active = stage
        retry_at = parse_time(entry.get("retryAt"))
        if retry_at is not None and retry_at > now:
            reconciling = ("Backoff", entry.get("message", ""))
            _requeue(plan, (retry_at - now).total_seconds())
            break
        if suspended:
            reconciling = ("Suspended", "spec.suspend is true")
            break
        if max_dollars is not None and spent() >= max_dollars:
            stalled = ("BudgetExceeded", f"spent ${dollars(spent())} of spec.budget.maxDollars "
                       f"${max_dollars}; stage {stage} was not started. Raise the budget to "
                       "go on.")
            break
        if stage in gated and not obs.gpu_admitted:
            # A fleet member waits for its fleet's admission before a GPU stage
            # (spec.maxConcurrent of the LanguageFleet); the fleet reads this phase.
            queued = True
            reconciling = ("WaitingForGPUQuota", (
                f"queued before stage {stage}: LanguageFleet {obs.fleet} lets at most "
                "spec.maxConcurrent members run GPU stages at once"))
            _requeue(plan, settings.resync_seconds)
            break
        if stage in TEACHER_STAGES and not ready_teacher:
            reconciling = ("WaitingForTeacher", teacher_wait)
            _requeue(plan, settings.resync_seconds)
            break
        entry["attempt"] += 1
        body = builders.job(run, stage, entry["attempt"], settings, tenv,
                            reset=bool(entry.get("reset")))
        plan.create.append(body)
        # `reset` stays until the stage succeeds: a retry of a half-done rerun must not
        # trust the markers that the previous generation left behind.
        entry.update(state="Running", job=body["metadata"]["name"], createdAt=iso(now),
                     startedAt=entry.get("startedAt") or iso(now), retryAt=None)
        reconciling = (f"{stage.capitalize()}Running", f"started Job {entry['job']}")
        _requeue(plan, settings.resync_seconds)
        break

    done = all(entries[s]["state"] == "Succeeded" for s in STAGES)
    total, by_stage, gpu_seconds = _cost(entries, pods_by_job, spec, now, settings)
    status["stages"] = [entries[s] for s in STAGES]
    status["cost"] = {
        "dollars": dollars(total),
        "gpuHours": f"{gpu_seconds / 3600:.4f}",
        "byStage": by_stage,
    }
    if max_dollars is not None:
        status["cost"]["budget"] = dollars(max_dollars)
    status["progress"] = _progress(entries, active)
    status["artifacts"] = _artifacts(run, entries)
    evaluation = (entries["evaluate"].get("counts") or {}).get("extra") or {}
    if evaluation.get("summary") or evaluation.get("evaluation"):
        status["evaluation"] = {"summary": evaluation.get("summary", ""),
                                "tasks": evaluation.get("evaluation", {})}
    status["observedGeneration"] = obs.generation
    if suspended and not stalled and not done:
        phase = "Suspended"
    else:
        phase = ("Stalled" if stalled else "Succeeded" if done else "Queued" if queued else
                 "Running" if any(entries[s]["attempt"] for s in STAGES) else "Pending")
    status["phase"] = phase

    conds: list[dict[str, Any]] = []
    g = obs.generation
    if done:
        _set_condition(conds, prev_conds, "Ready", True, "Succeeded",
                       "every stage succeeded", now, g)
    else:
        reason, msg = stalled or reconciling
        _set_condition(conds, prev_conds, "Ready", False, reason, msg, now, g)
    _set_condition(conds, prev_conds, "Reconciling", not done and not stalled,
                   "Done" if done else (stalled or reconciling)[0],
                   "" if done or stalled else reconciling[1], now, g)
    _set_condition(conds, prev_conds, "Stalled", stalled is not None,
                   stalled[0] if stalled else "NotStalled", stalled[1] if stalled else "", now, g)
    _set_condition(conds, prev_conds, "Suspended", suspended,
                   "SuspendRequested" if suspended else "NotSuspended",
                   "spec.suspend is true" if suspended else "", now, g)
    for stage in STAGES:
        e = entries[stage]
        _set_condition(conds, prev_conds, stage_condition(stage), e["state"] == "Succeeded",
                       e["state"], e.get("message") or "", now, g)
    status["conditions"] = conds
    plan.events.extend(_events_for(prev_conds, conds))
    return plan


def _cost(entries: dict[str, dict[str, Any]], pods_by_job: dict[tuple[str, int], list],
          spec: LanguageModelSpec, now: datetime, settings: OperatorSettings
          ) -> tuple[Decimal, dict[str, Any], float]:
    """Total dollars, per-stage breakdown and GPU-seconds: finished attempts (frozen in
    status, failed ones included) plus the running attempt's Pods, plus teacher tokens
    at the endpoint's prices."""
    total, gpu_total = Decimal(0), 0.0
    by_stage: dict[str, Any] = {}
    endpoint = spec.teacher.endpoint
    for stage, entry in entries.items():
        seconds = sum(float(a.get("gpuSeconds", 0)) for a in entry.get("attempts", []))
        money = sum((Decimal(a.get("dollars", "0")) for a in entry.get("attempts", [])),
                    Decimal(0))
        if entry["state"] == "Running":
            s, d = gpu_usage(pods_by_job.get((stage, entry["attempt"]), []), now, settings)
            seconds, money = seconds + s, money + d
        counts = entry.get("counts") or {}
        tokens = Decimal(0)
        if endpoint is not None and stage in TEACHER_STAGES:
            tokens = token_cost(counts.get("promptTokens", 0), counts.get("completionTokens", 0),
                                endpoint.prices)
        if seconds or money or tokens:
            by_stage[stage] = {"dollars": dollars(money + tokens),
                               "gpuHours": f"{seconds / 3600:.4f}"}
            if tokens:
                by_stage[stage]["teacherDollars"] = dollars(tokens)
        total += money + tokens
        gpu_total += seconds
    return total, by_stage, gpu_total


def _progress(entries: dict[str, dict[str, Any]], active: str | None) -> dict[str, Any]:
    done = sum(1 for s in STAGES if entries[s]["state"] == "Succeeded")
    out: dict[str, Any] = {"stagesDone": done, "stagesTotal": len(STAGES),
                           "percent": round(100 * done / len(STAGES))}
    if active:
        out["stage"] = active
        shards = entries[active].get("shards")
        if shards:
            out["shards"] = f"{shards['done']}/{shards['total']}"
    return out


def _artifacts(run: RunSpec, entries: dict[str, dict[str, Any]]) -> dict[str, str]:
    """What the run has produced so far: each succeeded stage's declared artifacts."""
    return artifact_uris(run.run_uri, {s for s, e in entries.items()
                                       if e["state"] == "Succeeded"})
