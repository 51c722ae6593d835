"""The LanguageModel decision: (spec, status, Jobs, Pods, Teacher, now) -> Plan.

`decide` is pure and level-based: it reads the world and the last status and returns the
status to write, the objects to create or change, and the Events to post. Running it twice
on the same world gives the same plan, so restarts, missed events and duplicate events are
harmless; the handlers only execute plans.

It runs the stage graph as a DAG, as a chain of small pure functions:

1. `parse_spec`, then the spec's fingerprints: a new generation sends the stages whose
   inputs moved back to Pending (`reset_moved`), and a retry request gives failed stages a
   fresh budget (`honour_retry`);
2. every Running stage is observed and its state machine advanced
   (`stage_machine.observe` / `advance`);
3. every stage whose inputs have Succeeded is started unless a gate holds it
   (`stage_machine.gate`: backoff, suspend, budget, fleet GPU admission, teacher
   readiness, `spec.resources.maxConcurrentStages`), in run order;
4. the status is computed from the stages (`summarize`, `cost`, `progress`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from kakugo_operator import builders, naming
from kakugo_operator import serve as serve_mod
from kakugo_operator import stage_machine as sm
from kakugo_operator.conditions import (
    API_ERROR,
    REFUSED,
    Want,
    conditions,
    refusal_wants,
    transition_events,
)
from kakugo_operator.diff import digest, is_subset, merge_diff
from kakugo_operator.settings import OperatorSettings
from kakugo_operator.teacher_cost import share_of
from kakugo_stages.contract import (
    STAGES,
    TEACHER_STAGES,
    ManifestError,
    Pricing,
    RunSpec,
    artifact_uris,
    decl,
    dollars,
    endpoint_token_cost,
    fingerprints,
    forecast,
    name_errors,
    ready,
    validate_spec,
)
from kakugo_stages.spec import SERVED_TEACHER, LanguageModelSpec, SecretKeyRef, TeacherSpec
from kakugo_stages.status import (
    Condition,
    Cost,
    Evaluation,
    ForecastStatus,
    LanguageModelPhase,
    LanguageModelStatus,
    Progress,
    StageCost,
    StageCounts,
    StageStatus,
)

CONDITION_TYPES = ("Ready", "Reconciling", "Stalled", "Suspended")
STALL_REASONS = (
    "InvalidSpec",
    "StageFailed",
    "BudgetExceeded",
    "ForecastOverBudget",
    "SpecChangeRefused",
    REFUSED,
)
#: On a served Teacher: the hash of the spec the LanguageModel wants it to have.
SPEC_HASH_ANNOTATION = "kakugo.io/spec-hash"
INDEX_GRACE_SECONDS = sm.INDEX_GRACE_SECONDS


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
    #: metadata.uid: the Teacher charges its GPU time to this very object, not its name.
    uid: str | None = None
    #: The served model's Deployment, Service, /metrics sample and wake annotation.
    serve: serve_mod.ServeSeen = field(default_factory=serve_mod.ServeSeen)


@dataclass
class Plan:
    status: LanguageModelStatus
    create: list[dict[str, Any]] = field(default_factory=list)  # Jobs, the served Teacher
    apply_config_map: dict[str, Any] | None = None  # create or replace
    #: A merge patch that brings the served Teacher (teacher.serve) to the wanted spec.
    teacher_patch: dict[str, Any] | None = None
    delete_jobs: list[str] = field(default_factory=list)
    suspend_jobs: dict[str, bool] = field(default_factory=dict)  # job -> spec.suspend
    #: Jobs on a Kueue queue -> whether their Workload should be active (spec.suspend of the
    #: LanguageModel, through Kueue: Kueue owns those Jobs' spec.suspend).
    kueue_active: dict[str, bool] = field(default_factory=dict)
    #: Merge patches of owned objects: (apiVersion, plural, name, patch) (the served model).
    patches: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # type, reason, message
    requeue_after: float | None = None
    #: stage -> a failed Pod whose log tail the failure message wants
    log_pods: dict[str, str] = field(default_factory=dict)
    finished: list[dict[str, Any]] = field(default_factory=list)  # attempt records
    completed_stages: list[tuple[str, float]] = field(default_factory=list)  # stage, seconds

    def requeue(self, seconds: float | None) -> None:
        if seconds is None:
            return
        seconds = max(seconds, 0.5)
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )


# ------------------------------------------------------------------ reading


def gpu_stages(spec: LanguageModelSpec) -> tuple[str, ...]:
    """The stages whose Pods request GPUs (by default train and evaluate): the ones a
    fleet's maxConcurrent gates."""
    return tuple(s for s in STAGES if spec.stage_resources(s).gpus)


def read_status(raw: Mapping[str, Any] | None) -> LanguageModelStatus:
    """The last status, typed. Leniently: a field that does not parse (a hand edit, an
    older operator) is dropped, not fatal."""
    raw = dict(raw or {})
    try:
        return LanguageModelStatus.model_validate(raw)
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        return LanguageModelStatus.model_validate({k: v for k, v in raw.items() if k not in bad})


def teacher_env(
    spec: LanguageModelSpec, teacher: dict[str, Any] | None
) -> tuple[bool, builders.TeacherEnv, str]:
    """(ready, env for the stages, why not ready)."""
    if spec.teacher.endpoint is not None:
        return True, builders.TeacherEnv(spec.teacher.endpoint.url, spec.teacher.endpoint.model), ""
    which = spec.teacher.ref.name if spec.teacher.ref else "(served)"
    if teacher is None:
        return False, builders.TeacherEnv(), f"Teacher {which} does not exist yet"
    status = teacher.get("status") or {}
    ready_ = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    url = status.get("url")
    name = teacher["metadata"]["name"]
    env = builders.TeacherEnv(url, status.get("model"), teacher_api_key(spec, teacher))
    if ready_ and url:
        return True, env, ""
    return False, env, f"Teacher {name} is not Ready"


def teacher_api_key(spec: LanguageModelSpec, teacher: dict[str, Any]) -> SecretKeyRef | None:
    """The Secret key of the API key the Teacher's server requires: `teacher.serve`'s for
    a served Teacher (the spec the webhook checked), else the referenced Teacher's."""
    if spec.teacher.serve is not None:
        return spec.teacher.serve.api_key_secret_ref
    raw = (teacher.get("spec") or {}).get("apiKeySecretRef")
    try:
        return SecretKeyRef.model_validate(raw) if raw is not None else None
    except ValidationError:  # the Teacher's own status says it is invalid
        return None


def parse_spec(obs: Observed, settings: OperatorSettings) -> LanguageModelSpec | str:
    """The validated spec, or a message naming the field that is wrong."""
    try:
        spec = validate_spec("LanguageModel", obs.spec, f"{obs.namespace}/{obs.name}")
    except ManifestError as exc:
        return "; ".join(str(e) for e in exc.errors)
    if problems := name_errors("LanguageModel", obs.name, spec):
        return "; ".join(str(e) for e in problems)
    if spec.storage is None and not settings.storage_uri:
        return (
            "spec.storage.uri: required; the operator has no default storage "
            "(setting storageUri), so set spec.storage.uri or spec.storage.pvc"
        )
    return spec


# ------------------------------------------------------------------ generations and retries


def entries_for(status: LanguageModelStatus, fps: Mapping[str, str]) -> dict[str, StageStatus]:
    """Every stage's entry: the last status's, or a new Pending one."""
    known = {e.name: e for e in status.stages if e.name in STAGES}
    return {
        s: known[s].model_copy(deep=True) if s in known else StageStatus(name=s, fingerprint=fps[s])
        for s in STAGES
    }


def moved_stages(entries: Mapping[str, StageStatus], fps: Mapping[str, str]) -> list[str]:
    """Stages that ran and whose inputs (spec paths or upstream fingerprints) moved."""
    return [s for s in STAGES if entries[s].attempt > 0 and entries[s].fingerprint != fps[s]]


def reset_moved(
    entries: dict[str, StageStatus], moved: list[str], fps: Mapping[str, str], generation: int
) -> list[str]:
    """Moved stages go back to Pending with a fresh budget and `reset` (their old outputs
    must not count); returns the Jobs to stop. Every entry takes the new fingerprint."""
    stop = []
    for stage in STAGES:
        entry = entries[stage]
        if stage in moved:
            if entry.job and entry.state in sm.ACTIVE:
                stop.append(entry.job)
            entry = entry.model_copy(
                update={
                    "state": "Pending",
                    "failures": 0,
                    "disruptions": 0,
                    "reset": True,
                    "counts": StageCounts(),
                    "shards": None,
                    "finished_at": None,
                    "started_at": None,
                    "retry_at": None,
                    "done_seen_at": None,
                    "message": f"inputs changed in generation {generation}",
                }
            )
        entries[stage] = entry.model_copy(update={"fingerprint": fps[stage]})
    return stop


def honour_retry(
    entries: dict[str, StageStatus], request: str | None, honoured: str | None
) -> tuple[str | None, list[tuple[str, str, str]]]:
    """A retry request is honoured once per annotation value: failed stages start again
    with a fresh retry budget. Returns the value honoured now and the Events."""
    if not request or request == honoured:
        return honoured, []
    failed = [s for s in STAGES if entries[s].state == "Failed"]
    for stage in failed:
        entries[stage] = entries[stage].model_copy(
            update={
                "state": "Retrying",
                "failures": 0,
                "retry_at": None,
                "message": f"retry requested ({request})",
            }
        )
    events = (
        [("Normal", "RetryRequested", f"retrying {', '.join(failed)} with a fresh retry budget")]
        if failed
        else []
    )
    return request, events


# ------------------------------------------------------------------ the served Teacher


def served_teacher(lm_name: str, namespace: str, serve: dict[str, Any]) -> dict[str, Any]:
    """The Teacher a LanguageModel with teacher.serve owns, as it should be."""
    return {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "Teacher",
        "metadata": {
            "name": naming.served_teacher_name(lm_name),
            "namespace": namespace,
            "labels": naming.lm_labels(lm_name),
            "annotations": {SPEC_HASH_ANNOTATION: digest(serve)},
        },
        "spec": serve,
    }


def served_teacher_actions(
    obs: Observed, pod_template: dict[str, Any] | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(create, merge patch) that keep the served Teacher at `spec.teacher.serve`, with the
    LanguageModel's pod templates for `teacher` as its `podTemplate`: created when missing
    (deleted too), patched when the wanted spec's hash or values differ."""
    serve = (obs.spec.get("teacher") or {}).get("serve")
    if serve is None:
        return None, None
    if pod_template:
        serve = {**serve, "podTemplate": pod_template}
    want = served_teacher(obs.name, obs.namespace, serve)
    have = obs.teacher
    if have is None:
        return want, None
    meta = have.get("metadata") or {}
    if meta.get("deletionTimestamp") or (meta.get("labels") or {}).get(
        naming.LM_LABEL
    ) != naming.label_value(obs.name):
        return None, None  # going away (created again once gone), or not ours
    wanted_hash = want["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    if (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION) == wanted_hash and is_subset(
        serve, have.get("spec")
    ):
        return None, None
    patch: dict[str, Any] = {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: wanted_hash}}}
    if diff := merge_diff(have.get("spec"), serve):
        patch["spec"] = diff
    return None, patch


# ------------------------------------------------------------------ cost


def cost(
    entries: Mapping[str, StageStatus],
    world: sm.World,
    spec: LanguageModelSpec,
    now: datetime,
    settings: OperatorSettings,
    teacher_share: Decimal = Decimal(0),
) -> tuple[Decimal, Cost]:
    """Total dollars and the cost status: finished attempts (frozen in status, failed ones
    included) plus the running attempts' Pods, plus teacher tokens at the endpoint's
    prices, plus `teacher_share`: what its Teacher (ref or serve) charged it of its GPU
    time (`teacher_cost`)."""
    total, gpu_total = Decimal(0), 0.0
    by_stage: dict[str, StageCost] = {}
    endpoint = spec.teacher.endpoint
    for stage, entry in entries.items():
        seconds = sum(a.gpu_seconds for a in entry.attempts)
        money = sum((Decimal(a.dollars) for a in entry.attempts), Decimal(0))
        s, d = sm.running_usage(stage, entry, world, now, settings)
        seconds, money = seconds + s, money + d
        tokens = Decimal(0)
        if endpoint is not None and stage in TEACHER_STAGES:
            tokens = endpoint_token_cost(
                entry.counts.prompt_tokens or 0,
                entry.counts.completion_tokens or 0,
                endpoint,
                batch_prompt_tokens=entry.counts.batch_prompt_tokens or 0,
                batch_completion_tokens=entry.counts.batch_completion_tokens or 0,
            )
        if seconds or money or tokens:
            by_stage[stage] = StageCost(
                dollars=dollars(money + tokens),
                gpu_hours=f"{seconds / 3600:.4f}",
                teacher_dollars=dollars(tokens) if tokens else None,
            )
        total += money + tokens
        gpu_total += seconds
    total += teacher_share
    budget = spec.budget.max_dollars
    return total, Cost(
        dollars=dollars(total),
        gpu_hours=f"{gpu_total / 3600:.4f}",
        by_stage=by_stage,
        budget=dollars(budget) if budget is not None else None,
        teacher_share=dollars(teacher_share) if teacher_share else None,
    )


# ------------------------------------------------------------------ the forecast


def pricing(settings: OperatorSettings) -> Pricing:
    """GPU time priced as the operator prices it (its gpuPrices setting)."""
    return Pricing(settings.gpu_price, "the operator's gpuPrices", settings.default_gpu_product)


def forecast_status(
    obs: Observed, spec: LanguageModelSpec, settings: OperatorSettings
) -> ForecastStatus:
    """status.forecast for this generation; a referenced Teacher's GPUs price its serving
    time once the Teacher exists (before that: a default Teacher)."""
    teacher: TeacherSpec | None = None
    if spec.teacher.ref is not None and obs.teacher is not None:
        try:
            teacher = validate_spec("Teacher", (obs.teacher.get("spec") or {}), "Teacher")
        except ManifestError:
            teacher = None  # the Teacher's own status says it is invalid
    fc = forecast(obs.name, spec, pricing(settings), teacher=teacher, read_local=False)
    return ForecastStatus.model_validate({"observedGeneration": obs.generation, **fc.summary()})


def forecast_stall(
    fc: ForecastStatus, spec: LanguageModelSpec, entries: Mapping[str, StageStatus]
) -> str | None:
    """Why the object must not start: its forecast exceeds the budget, no stage has
    started yet and the spec says to stall (spec.budget.onForecastOverBudget)."""
    if not fc.over_budget or spec.budget.on_forecast_over_budget != "Stall":
        return None
    if any(entries[s].attempt for s in STAGES):
        return None  # already under way: spending is held by maxDollars itself
    top = sorted(fc.by_stage.items(), key=lambda kv: Decimal(kv[1]), reverse=True)[:3]
    return (
        f"the cost forecast is ${fc.dollars}, over spec.budget.maxDollars ${fc.budget} "
        f"(largest: {', '.join(f'{s} ${d}' for s, d in top)}); no stage was started. Raise "
        "spec.budget.maxDollars, lower the counts in spec.data, or set "
        "spec.budget.onForecastOverBudget: Proceed (`kakugo plan` shows the forecast)"
    )


# ------------------------------------------------------------------ status


@dataclass(frozen=True)
class Summary:
    """The object as a whole: phase and the kstatus conditions' wants."""

    phase: LanguageModelPhase
    done: bool
    stall: tuple[str, str] | None
    reconciling: tuple[bool, str, str]


def summarize(
    entries: Mapping[str, StageStatus],
    holds: Mapping[str, sm.Hold],
    suspended: bool,
    budget_spent: str | None = None,
) -> Summary:
    done = all(entries[s].state == "Succeeded" for s in STAGES)
    running = [s for s in STAGES if entries[s].state in sm.ACTIVE]
    queued = [s for s in running if entries[s].state == "Queued"]
    failed = [s for s in STAGES if entries[s].state == "Failed"]
    over_budget = [s for s, h in holds.items() if h.gate == "Budget"]
    stall: tuple[str, str] | None = None
    if failed:
        stall = (
            "StageFailed",
            "; ".join(entries[s].message or f"stage {s} failed" for s in failed),
        )
    elif over_budget:
        stall = (
            "BudgetExceeded",
            f"{budget_spent}; not started: {', '.join(over_budget)}. Raise the budget to go on.",
        )
    # Reconciling: what goes on now (a stall with Jobs still running is both: the
    # independent stages continue, their dependants wait).
    if done:
        reconciling = (False, "Done", "")
    elif suspended:
        reconciling = (
            True,
            "Suspended",
            "spec.suspend is true" + (f"; {len(running)} Job(s) suspended" if running else ""),
        )
    elif running and len(queued) == len(running):
        reconciling = (True, "Queued", "; ".join(entries[s].message for s in queued))
    elif running:
        jobs = ", ".join(entries[s].job or s for s in running if s not in queued)
        now_running = [s for s in running if s not in queued]
        reason = (
            f"{now_running[0].capitalize()}Running" if len(now_running) == 1 else "StagesRunning"
        )
        message = f"Job(s) {jobs} running"
        if queued:
            message += "; held by Kueue: " + ", ".join(entries[s].job or s for s in queued)
        if holds:
            message += "; waiting: " + ", ".join(f"{s} ({h.reason})" for s, h in holds.items())
        reconciling = (True, reason, message)
    elif stall:
        reconciling = (False, stall[0], "")
    elif holds:
        hold = next(iter(holds.values()))
        reconciling = (True, hold.reason, hold.message)
    else:
        reconciling = (True, "Running", "")
    phase: LanguageModelPhase
    if stall:
        phase = "Stalled"
    elif done:
        phase = "Succeeded"
    elif suspended:
        phase = "Suspended"
    elif not running and any(h.gate == "GPUQuota" for h in holds.values()):
        phase = "Queued"
    elif running and len(queued) == len(running):
        phase = "Queued"  # every Job held by Kueue
    elif any(entries[s].attempt for s in STAGES):
        phase = "Running"
    else:
        phase = "Pending"
    return Summary(phase, done, stall, reconciling)


def condition_wants(
    summary: Summary,
    entries: Mapping[str, StageStatus],
    holds: Mapping[str, sm.Hold],
    suspended: bool,
) -> list[Want]:
    active, reason, message = summary.reconciling
    if summary.done:
        ready_ = Want("Ready", True, "Succeeded", "every stage succeeded")
    elif summary.stall:
        ready_ = Want("Ready", False, *summary.stall)
    else:
        ready_ = Want("Ready", False, reason, message)
    wants = [
        ready_,
        Want("Reconciling", active, reason, message if active else ""),
        Want("Stalled", summary.stall is not None, *(summary.stall or ("NotStalled", ""))),
        Want(
            "Suspended",
            suspended,
            "SuspendRequested" if suspended else "NotSuspended",
            "spec.suspend is true" if suspended else "",
        ),
    ]
    for stage in STAGES:
        e = entries[stage]
        hold = holds.get(stage)
        wants.append(
            Want(
                stage_condition(stage),
                e.state == "Succeeded",
                e.state,
                e.message or (f"waiting: {hold.message}" if hold else ""),
            )
        )
    return wants


def events_for(prev: list[Condition], new: list[Condition]) -> list[tuple[str, str, str]]:
    """A LanguageModel's Events: stalls and failed attempts are Warnings."""
    return transition_events(
        prev,
        new,
        lambda c: (
            (c.type == "Stalled" and c.is_true)
            or c.reason in ("Retrying", "Disrupted", "Failed", API_ERROR, *STALL_REASONS)
        ),
        STALL_REASONS,
    )


def stalled_only(obs: Observed, prev: LanguageModelStatus, reason: str, message: str) -> Plan:
    """A status that says the object cannot go on, with everything else kept."""
    suspended = bool(obs.spec.get("suspend"))
    wants = [
        Want("Ready", False, reason, message),
        Want("Reconciling", False, reason),
        Want("Stalled", True, reason, message),
        Want(
            "Suspended",
            suspended,
            "SuspendRequested" if suspended else "NotSuspended",
            "spec.suspend is true" if suspended else "",
        ),
    ]
    conds = conditions(prev.conditions, wants, obs.now, obs.generation, keep_others=True)
    status = prev.model_copy(
        deep=True,
        update={"conditions": conds, "observed_generation": obs.generation, "phase": "Stalled"},
    )
    return Plan(status=status, events=events_for(prev.conditions, conds))


def refused(obs: Observed, error: str, permanent: bool) -> Plan:
    """The status when the API server refused what a plan needed (a Job, the spec
    ConfigMap, the served Teacher; `k8s.Refused`): the last status, its conditions saying
    so with the API server's message, and a Warning Event, instead of a silent retry.
    Nothing else moves: the next reconciliation decides again from the same world."""
    prev = read_status(obs.status)
    if permanent:
        return stalled_only(obs, prev, REFUSED, error)
    conds = conditions(
        prev.conditions, refusal_wants(error, False), obs.now, obs.generation, keep_others=True
    )
    status = prev.model_copy(deep=True, update={"conditions": conds})
    return Plan(status=status, events=events_for(prev.conditions, conds))


def artifacts(run: RunSpec, entries: Mapping[str, StageStatus]) -> dict[str, str]:
    """What the run has produced so far: each succeeded stage's declared artifacts (none for
    a stage that had nothing to do: review and publish without their spec sections)."""
    made = {
        s
        for s, e in entries.items()
        if e.state == "Succeeded" and not (e.counts.extra or {}).get("stage_skipped")
    }
    return artifact_uris(run.run_uri, made)


def evaluation(entries: Mapping[str, StageStatus]) -> Evaluation | None:
    extra = entries["evaluate"].counts.extra or {}
    if not (extra.get("summary") or extra.get("evaluation")):
        return None
    return Evaluation.model_validate(
        {"summary": extra.get("summary") or "", "tasks": extra.get("evaluation") or {}}
    )


def with_log_tail(plan: Plan, stage: str, tail: str) -> None:
    """Quote a failed Pod's log tail in its stage's message, the conditions that report
    the failure and the Events about them."""
    text = f"\n--- log tail ---\n{tail}"
    entry = plan.status.stage(stage)
    if entry is None or entry.state != "Failed" or "--- log tail ---" in entry.message:
        return
    entry.message = (entry.message + text)[-2048:]
    for cond in plan.status.conditions:
        if cond.type == stage_condition(stage) or (
            cond.reason == "StageFailed" and cond.type in ("Ready", "Stalled")
        ):
            cond.message = (cond.message + text)[-2048:]
    plan.events = [
        (k, r, (m + text)[-1024:])
        if r == "StageFailed" or (r == "Failed" and m.startswith(f"{stage_condition(stage)}="))
        else (k, r, m)
        for k, r, m in plan.events
    ]


# ------------------------------------------------------------------ the stages


def advance_all(
    entries: dict[str, StageStatus],
    world: sm.World,
    obs: Observed,
    spec: LanguageModelSpec,
    settings: OperatorSettings,
    plan: Plan,
) -> None:
    """Adopt newer Jobs, then observe every Running stage and advance its state machine;
    the steps' effects go into the plan."""
    for stage in STAGES:
        entries[stage] = sm.adopt(stage, entries[stage], world, obs.name, obs.now)
        if entries[stage].state not in sm.ACTIVE:
            continue
        seen = sm.observe(stage, entries[stage], world, obs.now)
        step = sm.advance(stage, entries[stage], seen, spec.suspend, settings, obs.now)
        entries[stage] = step.entry
        plan.requeue(step.requeue)
        if step.suspend is not None and step.entry.job:
            plan.suspend_jobs[step.entry.job] = step.suspend
        if step.kueue_active is not None and step.entry.job:
            plan.kueue_active[step.entry.job] = step.kueue_active
        if step.finished:
            plan.finished.append(step.finished)
        if step.completed_seconds is not None:
            plan.completed_stages.append((stage, step.completed_seconds))
        if step.log_pod:
            plan.log_pods[stage] = step.log_pod


def gates_for(
    obs: Observed, spec: LanguageModelSpec, spent: Decimal, teacher_ready: bool, teacher_wait: str
) -> sm.Gates:
    max_dollars = spec.budget.max_dollars
    return sm.Gates(
        suspended=spec.suspend,
        budget_spent=f"spent ${dollars(spent)} of spec.budget.maxDollars ${max_dollars}"
        if max_dollars is not None and spent >= max_dollars
        else None,
        gpu_gated=frozenset(gpu_stages(spec))
        if obs.fleet and not obs.gpu_admitted
        else frozenset(),
        fleet=obs.fleet,
        teacher_ready=teacher_ready,
        teacher_wait=teacher_wait,
        limit=spec.resources.max_concurrent_stages,
    )


def schedule(
    entries: dict[str, StageStatus],
    gates: sm.Gates,
    run: RunSpec,
    settings: OperatorSettings,
    tenv: builders.TeacherEnv,
    now: datetime,
    plan: Plan,
) -> dict[str, sm.Hold]:
    """Start every stage whose inputs have all succeeded (in run order) unless a gate
    holds it; returns the holds (stage -> gate), also written to each entry's waitingFor."""
    holds: dict[str, sm.Hold] = {}
    done = [s for s in STAGES if entries[s].state == "Succeeded"]
    running = sum(1 for s in STAGES if entries[s].state in sm.ACTIVE)
    for stage in ready(done):
        entry = entries[stage]
        if entry.state in (*sm.ACTIVE, "Failed"):
            continue
        hold = sm.gate(stage, entry, gates, running, now)
        if hold is not None:
            holds[stage] = hold
            if hold.gate == "Backoff":
                retry_at = sm.parse_time(entry.retry_at)
                plan.requeue((retry_at - now).total_seconds() if retry_at else None)
            elif hold.gate in ("GPUQuota", "Teacher", "Concurrency"):
                plan.requeue(settings.resync_seconds)
            continue
        entries[stage], job = sm.start(stage, entry, run, settings, tenv, now)
        plan.create.append(job)
        running += 1
        plan.requeue(settings.resync_seconds)
    for stage in STAGES:  # a stage no gate holds waits for nothing
        hold = holds.get(stage)
        entries[stage] = entries[stage].model_copy(
            update={"waiting_for": hold.gate if hold else None}
        )
    return holds


# ------------------------------------------------------------------ the decision


def decide(obs: Observed, settings: OperatorSettings) -> Plan:
    prev = read_status(obs.status)
    parsed = parse_spec(obs, settings)
    if isinstance(parsed, str):
        return stalled_only(obs, prev, "InvalidSpec", parsed)
    spec, now = parsed, obs.now
    run = RunSpec(
        obs.name,
        obs.namespace,
        spec,
        spec.storage.root_uri if spec.storage else str(settings.storage_uri),
    )
    fps = fingerprints(run.spec_dict())
    entries = entries_for(prev, fps)

    # 1. A new generation: stages whose inputs moved start over (or the change is refused).
    moved = moved_stages(entries, fps)
    if moved and settings.spec_changes == "refuse":
        paths = ", ".join(f"spec.{p}" for p in decl(moved[0]).fingerprint_paths)
        return stalled_only(
            obs,
            prev,
            "SpecChangeRefused",
            (
                f"this change alters the inputs of stages that already ran ({', '.join(moved)}; "
                f"{moved[0]} reads {paths}); the operator is set to refuse such changes: revert "
                "it, or create a new LanguageModel"
            ),
        )
    # The forecast of this generation: over budget, nothing starts (unless told to).
    fc = forecast_status(obs, spec, settings)
    if why := forecast_stall(fc, spec, entries):
        stalled = stalled_only(obs, prev, "ForecastOverBudget", why)
        stalled.status.forecast = fc
        return stalled
    plan = Plan(status=prev)
    plan.delete_jobs = reset_moved(entries, moved, fps, obs.generation)
    retry_request, plan.events = honour_retry(entries, obs.retry_request, prev.retry_request)
    if prev.spec_fingerprint != run.fingerprint():
        plan.apply_config_map = builders.config_map(run)
    teacher_create, plan.teacher_patch = served_teacher_actions(
        obs, spec.resources.pod_template_for(SERVED_TEACHER)
    )
    if teacher_create is not None:
        plan.create.append(teacher_create)

    # 2. Observe every running stage and advance its state machine.
    world = sm.World.of(obs.jobs, obs.pods)
    advance_all(entries, world, obs, spec, settings, plan)

    # 3. Start every stage whose inputs succeeded, unless a gate holds it.
    # Its share of its Teacher's GPU time, as the Teacher's status says (level-based: the
    # Teacher keeps the account).
    share = share_of(obs.teacher, obs.name, obs.uid) if obs.teacher else Decimal(0)
    spent, cost_status = cost(entries, world, spec, now, settings, share)
    teacher_ready, tenv, teacher_wait = teacher_env(spec, obs.teacher)
    gates = gates_for(obs, spec, spent, teacher_ready, teacher_wait)
    holds = schedule(entries, gates, run, settings, tenv, now, plan)

    # 4. The status, and the served model (spec.serve) once every stage succeeded.
    summary = summarize(entries, holds, spec.suspend, gates.budget_spent)
    train = entries["train"]
    served = serve_mod.decide_serve(
        run,
        spec,
        summary.done,
        train.fingerprint if train.state == "Succeeded" else None,
        prev.serve,
        obs.serve,
        now,
        settings,
    )
    plan.create += served.create
    plan.patches += served.patches
    plan.events += served.events
    plan.requeue(served.requeue_after)
    wants = condition_wants(summary, entries, holds, spec.suspend)
    if served.condition is not None:
        wants.append(served.condition)
    conds = conditions(prev.conditions, wants, now, obs.generation)
    n_done = sum(1 for s in STAGES if entries[s].state == "Succeeded")
    plan.status = LanguageModelStatus(
        observed_generation=obs.generation,
        phase=summary.phase,
        conditions=conds,
        stages=[entries[s] for s in STAGES],
        progress=Progress(
            stages_done=n_done,
            stages_total=len(STAGES),
            percent=round(100 * n_done / len(STAGES)),
            stages=[s for s in STAGES if entries[s].state in sm.ACTIVE],
            waiting={s: h.gate for s, h in holds.items()},
        ),
        cost=cost_status,
        forecast=fc,
        artifacts=artifacts(run, entries),
        evaluation=evaluation(entries),
        spec_fingerprint=run.fingerprint(),
        retry_request=retry_request,
        serve=served.status,
    )
    plan.events.extend(events_for(prev.conditions, conds))
    return plan
