"""One stage of a LanguageModel, as small pure functions (KubeRay's controllers' shape):

- `observe`: the stage's Job and Pods -> what happened (`Seen`);
- `advance`: the stage's state machine, one step (`Step`: the new entry and its effects);
- `gate`: why a stage whose inputs are complete may not start now (`Gates`);
- `start`: its next attempt's Job.

States: Pending -> Running -> Succeeded; Running -> Retrying (a failure with retry budget
left, after a backoff; or a disruption, at once and for free) -> Running; Running ->
Failed when the budget is spent. Running <-> Queued while Kueue holds the Job of a stage on
a queue (suspended until admitted, suspended again when preempted): Kueue owns such a
Job's `spec.suspend`, so the operator never resumes it, and suspends it through its Kueue
Workload (`spec.active`). `reconcile.decide` runs these over the stage graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from kakugo_operator import builders, naming
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
from kakugo_stages.contract import TEACHER_STAGES, RunSpec, decl, dollars
from kakugo_stages.status import Attempt, Gate, ShardProgress, StageCounts, StageStatus

#: A Job we created but whose watch event has not arrived yet is waited for this long; so
#: are the Pods of a finished Job until they all show how they ended.
INDEX_GRACE_SECONDS = 30.0
#: Finished attempts kept in status.
ATTEMPTS_KEPT = 10
#: States of a stage whose Job exists and has not finished.
ACTIVE = ("Running", "Queued")
#: On a Job on a Kueue queue: whether the operator last set its Workload active
#: ("false" while the LanguageModel is suspended; absent: active, as Kueue creates it).
KUEUE_ACTIVE_ANNOTATION = "kakugo.io/kueue-active"

#: The Reconciling/Ready reason of each gate.
GATE_REASONS: dict[str, str] = {
    "Backoff": "Backoff",
    "Suspended": "Suspended",
    "Budget": "BudgetExceeded",
    "GPUQuota": "WaitingForGPUQuota",
    "Teacher": "WaitingForTeacher",
    "Concurrency": "WaitingForSlot",
}


@dataclass(frozen=True)
class World:
    """A LanguageModel's Jobs by stage and Pods by (stage, attempt)."""

    jobs: dict[str, list[dict[str, Any]]]
    pods: dict[tuple[str, int], list[dict[str, Any]]]

    @classmethod
    def of(cls, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> World:
        by_stage: dict[str, list[dict[str, Any]]] = {}
        for job in jobs:
            by_stage.setdefault(labels(job).get(naming.STAGE_LABEL, ""), []).append(job)
        by_attempt: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for pod in pods:
            key = (labels(pod).get(naming.STAGE_LABEL, ""), attempt_of(pod))
            by_attempt.setdefault(key, []).append(pod)
        return cls(by_stage, by_attempt)

    def stage_jobs(self, stage: str) -> list[dict[str, Any]]:
        return self.jobs.get(stage, [])

    def attempt_pods(self, stage: str, attempt: int) -> list[dict[str, Any]]:
        return self.pods.get((stage, attempt), [])


@dataclass(frozen=True)
class Seen:
    """What a Running stage's Job shows.

    creating: created, not in the index yet; running; settling: finished, but its Pods do
    not all show how they ended yet; succeeded; failed (a Job that vanished too)."""

    kind: Literal["creating", "running", "settling", "succeeded", "failed"]
    job: dict[str, Any] | None = None
    pods: tuple[dict[str, Any], ...] = ()


@dataclass
class Step:
    """One step of a stage's state machine: the new entry and what else it asks for."""

    entry: StageStatus
    #: A finished attempt (for metrics): stage, job, attempt, outcome, reason, counts ...
    finished: dict[str, Any] | None = None
    #: Seconds from its first start to its success (for the duration histogram).
    completed_seconds: float | None = None
    #: A Pod whose log tail the failure message wants.
    log_pod: str | None = None
    #: Patch the running Job's spec.suspend to this (Jobs on no Kueue queue).
    suspend: bool | None = None
    #: Set the Kueue Workload of the running Job active (True) or not (a queued Job).
    kueue_active: bool | None = None
    requeue: float | None = None


@dataclass(frozen=True)
class Gates:
    """What may hold a stage whose inputs are complete."""

    suspended: bool = False
    #: Set when the budget is spent: no new attempt starts.
    budget_spent: str | None = None
    #: GPU stages that wait for the fleet's admission (empty: not a fleet member, or
    #: admitted).
    gpu_gated: frozenset[str] = frozenset()
    fleet: str | None = None
    teacher_ready: bool = True
    teacher_wait: str = ""
    limit: int = 1


@dataclass(frozen=True)
class Hold:
    gate: Gate
    message: str

    @property
    def reason(self) -> str:
        return GATE_REASONS[self.gate]


# ------------------------------------------------------------------ observe


def adopt(stage: str, entry: StageStatus, world: World, lm: str, now: datetime) -> StageStatus:
    """A Job newer than the status knows (created just before a restart) is adopted."""
    newest = max((attempt_of(j) for j in world.stage_jobs(stage)), default=0)
    if newest <= entry.attempt or entry.state in ("Failed", "Succeeded"):
        return entry
    return entry.model_copy(
        update={
            "attempt": newest,
            "job": naming.job_name(lm, stage, newest),
            "state": "Running",
            "started_at": entry.started_at or iso(now),
            "created_at": iso(now),
            "waiting_for": None,
        }
    )


def observe(stage: str, entry: StageStatus, world: World, now: datetime) -> Seen:
    """What the Job of a Running stage shows."""
    pods = tuple(world.attempt_pods(stage, entry.attempt))
    job = next((j for j in world.stage_jobs(stage) if attempt_of(j) == entry.attempt), None)
    if job is None:
        created = parse_time(entry.created_at) or now
        if (now - created).total_seconds() < INDEX_GRACE_SECONDS:
            return Seen("creating")
        return Seen("failed", None, pods)  # vanished: the same as its Pods deleted
    state = job_state(job)
    if state == "Running":
        return Seen("running", job, pods)
    # The Job's watch can run ahead of its Pods': wait (briefly) until every Pod shows how
    # it ended, so that counts and run seconds are final.
    js = job.get("status") or {}
    expected = (js.get("succeeded") or 0) + (js.get("failed") or 0)
    if any(not pod_settled(p) for p in pods) or len(pods) < expected:
        seen = parse_time(entry.done_seen_at) or now
        if (now - seen).total_seconds() < INDEX_GRACE_SECONDS:
            return Seen("settling", job, pods)
    return Seen("succeeded" if state == "Succeeded" else "failed", job, pods)


# ------------------------------------------------------------------ advance


def _counts(stage: str, pods: tuple[dict[str, Any], ...]) -> StageCounts:
    return StageCounts.model_validate(stage_counts(list(pods), decl(stage).summary))


def advance(
    stage: str,
    entry: StageStatus,
    seen: Seen,
    suspended: bool,
    settings: OperatorSettings,
    now: datetime,
) -> Step:
    """One step of a Running stage's state machine."""
    if seen.kind == "creating":
        return Step(entry, requeue=1.0)
    if seen.kind == "settling":
        return Step(
            entry.model_copy(update={"done_seen_at": entry.done_seen_at or iso(now)}), requeue=1.0
        )
    if seen.kind == "running":
        return _running(stage, entry, seen, suspended, settings)
    seconds, cost = gpu_usage(list(seen.pods), now, settings)
    record = {
        "job": entry.job or "",
        "attempt": entry.attempt,
        "finishedAt": iso(now),
        "gpuSeconds": round(seconds, 3),
        "dollars": dollars(cost),
    }
    counts = _counts(stage, seen.pods)
    if seen.kind == "succeeded":
        return _succeeded(stage, entry, record, counts, now)
    return _failed(stage, entry, seen, record, counts, settings, now)


def queue_of(job: dict[str, Any]) -> str | None:
    """The Kueue LocalQueue of a Job (its queue-name label), if any."""
    return labels(job).get(naming.QUEUE_LABEL) or None


def _running(
    stage: str, entry: StageStatus, seen: Seen, suspended: bool, settings: OperatorSettings
) -> Step:
    job = seen.job or {}
    counts = _counts(stage, seen.pods)
    js, spec = job.get("status") or {}, job.get("spec") or {}
    update: dict[str, Any] = {
        "counts": counts if counts.dump() else entry.counts,
        "shards": ShardProgress(
            done=js.get("succeeded") or 0,
            total=spec.get("completions") or 1,
            active=js.get("active") or 0,
        ),
    }
    queue = queue_of(job)
    if queue is None:
        suspend = suspended if bool(spec.get("suspend")) != suspended else None
        entry = entry.model_copy(update={**update, "state": "Running"})
        return Step(entry, suspend=suspend, requeue=settings.resync_seconds)
    # Kueue owns this Job's spec.suspend: it resumes the Job when it admits it and suspends
    # it when it preempts it. The LanguageModel's suspend goes through the Workload.
    active = (job.get("metadata") or {}).get("annotations", {}).get(KUEUE_ACTIVE_ANNOTATION)
    kueue_active = None if (active != "false") != suspended else not suspended
    if spec.get("suspend"):
        update["state"] = "Queued"
        if suspended:
            update["message"] = (
                f"Job {entry.job} is stopped: spec.suspend (its Kueue Workload is inactive)"
            )
        elif seen.pods:
            update["message"] = (
                f"Job {entry.job} was preempted by Kueue; waiting for LocalQueue {queue} to "
                "admit it again"
            )
        else:
            update["message"] = f"Job {entry.job} waits for Kueue to admit it (LocalQueue {queue})"
    else:
        update["state"] = "Running"
        if entry.state == "Queued":
            update["message"] = f"Job {entry.job} admitted by Kueue (LocalQueue {queue})"
    entry = entry.model_copy(update=update)
    return Step(entry, kueue_active=kueue_active, requeue=settings.resync_seconds)


def _succeeded(
    stage: str, entry: StageStatus, record: dict[str, Any], counts: StageCounts, now: datetime
) -> Step:
    attempt = Attempt.model_validate({**record, "outcome": "Succeeded"})
    started = parse_time(entry.started_at) or now
    entry = entry.model_copy(
        update={
            "state": "Succeeded",
            "finished_at": iso(now),
            "message": "",
            "retry_at": None,
            "reset": False,
            "done_seen_at": None,
            "counts": counts,
            "attempts": [*entry.attempts, attempt][-ATTEMPTS_KEPT:],
        }
    )
    return Step(
        entry,
        finished={"stage": stage, **record, "outcome": "Succeeded", "counts": counts.dump()},
        completed_seconds=(now - started).total_seconds(),
    )


def _failed(
    stage: str,
    entry: StageStatus,
    seen: Seen,
    record: dict[str, Any],
    counts: StageCounts,
    settings: OperatorSettings,
    now: datetime,
) -> Step:
    failure = classify_failure(list(seen.pods), seen.job)
    outcome = "Disrupted" if failure.disrupted else "Failed"
    attempt = Attempt.model_validate({**record, "outcome": outcome, "reason": failure.reason})
    finished = {
        "stage": stage,
        **record,
        "outcome": outcome,
        "reason": failure.reason,
        "counts": counts.dump(),
    }
    base = {"attempts": [*entry.attempts, attempt][-ATTEMPTS_KEPT:], "done_seen_at": None}
    if failure.disrupted:
        entry = entry.model_copy(
            update={
                **base,
                "disruptions": entry.disruptions + 1,
                "state": "Retrying",
                "retry_at": retry_time(now, 0),
                "message": (
                    f"attempt {entry.attempt} was disrupted ({failure.reason}: "
                    f"{failure.message}); retrying without spending the retry budget"
                ),
            }
        )
        return Step(entry, finished=finished, requeue=0.5)
    failures = entry.failures + 1
    if failures > settings.retry_budget:
        message = (
            f"stage {stage} failed {failures} times (retry budget "
            f"{settings.retry_budget}); last attempt {entry.job}: "
            f"{failure.reason}: {failure.message}"
        )
        entry = entry.model_copy(
            update={
                **base,
                "failures": failures,
                "state": "Failed",
                "message": message,
                "finished_at": iso(now),
            }
        )
        return Step(entry, finished=finished, log_pod=failure.pod)
    delay = settings.backoff(failures)
    entry = entry.model_copy(
        update={
            **base,
            "failures": failures,
            "state": "Retrying",
            "retry_at": retry_time(now, delay),
            "message": (
                f"attempt {entry.attempt} failed ({failure.reason}: {failure.message}); "
                f"retry {failures} of {settings.retry_budget} in {delay:g}s"
            ),
        }
    )
    return Step(entry, finished=finished, requeue=delay)


def retry_time(now: datetime, delay: float) -> str:
    """When a retry may start, rounded up to the status's whole seconds: truncated, a
    sub-second backoff would let the same reconcile start the next attempt, so the
    Retrying state (and the Warning Event about the failure) would never be written.
    At least one second, for the same reason."""
    at = now + timedelta(seconds=max(delay, 1.0))
    if at.microsecond:
        at += timedelta(microseconds=1_000_000 - at.microsecond)
    return iso(at)


# ------------------------------------------------------------------ gates and start


def gate(stage: str, entry: StageStatus, gates: Gates, running: int, now: datetime) -> Hold | None:
    """Why a stage whose inputs are complete may not start now (the first gate that
    holds it), or None."""
    retry_at = parse_time(entry.retry_at)
    if retry_at is not None and retry_at > now:
        return Hold("Backoff", entry.message or f"stage {stage} waits for its retry")
    if gates.suspended:
        return Hold("Suspended", "spec.suspend is true")
    if gates.budget_spent is not None:
        return Hold(
            "Budget",
            f"{gates.budget_spent}; stage {stage} was not started. Raise the budget to go on.",
        )
    if stage in gates.gpu_gated:
        # A fleet member waits for its fleet's admission before a GPU stage (the fleet's
        # spec.maxConcurrent); the fleet reads it from the stage's waitingFor.
        return Hold(
            "GPUQuota",
            f"queued before stage {stage}: LanguageFleet {gates.fleet} "
            "lets at most spec.maxConcurrent members run GPU stages at once",
        )
    if stage in TEACHER_STAGES and not gates.teacher_ready:
        return Hold("Teacher", gates.teacher_wait)
    if running >= gates.limit:
        return Hold(
            "Concurrency",
            f"{running} stage(s) run, at most {gates.limit} at once "
            "(spec.resources.maxConcurrentStages)",
        )
    return None


def start(
    stage: str,
    entry: StageStatus,
    run: RunSpec,
    settings: OperatorSettings,
    teacher: builders.TeacherEnv,
    now: datetime,
) -> tuple[StageStatus, dict[str, Any]]:
    """The next attempt: its Job and the entry that says it runs. `reset` stays until the
    stage succeeds: a retry of a half-done rerun must not trust the markers that the
    previous generation left behind."""
    attempt = entry.attempt + 1
    body = builders.job(run, stage, attempt, settings, teacher, reset=bool(entry.reset))
    entry = entry.model_copy(
        update={
            "state": "Running",
            "attempt": attempt,
            "job": body["metadata"]["name"],
            "created_at": iso(now),
            "started_at": entry.started_at or iso(now),
            "retry_at": None,
            "waiting_for": None,
        }
    )
    return entry, body


def running_usage(
    stage: str, entry: StageStatus, world: World, now: datetime, settings: OperatorSettings
) -> tuple[float, Decimal]:
    """(GPU-seconds, dollars) of the attempt that runs now, if any."""
    if entry.state not in ACTIVE:
        return 0.0, Decimal(0)
    return gpu_usage(world.attempt_pods(stage, entry.attempt), now, settings)
