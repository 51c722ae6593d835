"""The LanguageFleet decision: (fleet spec, member LanguageModels, now) -> FleetPlan.

Pure and level-based, like `reconcile.decide`: everything is derived from the fleet's
spec and the members as the API shows them (their spec, annotations and status), never
from memory, so an operator restart or a missed event changes nothing.

- Members: one LanguageModel per listed language, named `entry.name` or the language
  code made DNS-safe (`yor_Latn` -> `yor-latn`), labelled `kakugo.io/fleet=<fleet>` and
  owned by the fleet. Its spec is the template, the entry's overrides (RFC 7386 merge
  patch) and the language, validated alone: an invalid entry is reported, the valid ones
  go on. The fleet writes its members' specs (never its own); a member's own operator
  loop handles the new generation.
- GPU admission (`spec.maxConcurrent`): a member starts a GPU stage only with the
  annotation `kakugo.io/gpu-admitted: "true"` (checked in `reconcile.decide`). The fleet
  grants it to waiting members (a GPU stage with `waitingFor: GPUQuota`) in list order
  while fewer than `maxConcurrent` members hold a slot, and takes it back from members
  that no longer need a GPU. A member holds a slot while one of its GPU stages is running
  or retrying, or while it is admitted and one of its GPU stages could start. Members
  run several stages at once (the stage DAG), so this reads every stage entry, not one
  current stage.
- The fleet's view of its members comes from a watch and can lag behind its own writes:
  `AdmissionLedger` keeps each admission it granted or took back until the watch shows
  it, so a stale view never hands a second slot to another member (the ReplicaSet
  controller's "expectations").
- Removal: a member no entry names any more is deleted; with `artifactPolicy: Delete`
  its `storage.deleteArtifactsOnDelete` is set first, so the LanguageModel's finalizer
  deletes its artifacts.

`decide_fleet` chains small pure functions: `expand`, `member_changes`, `removals`,
`admissions`, `aggregate`, `fleet_wants` (conditions) and `member_events`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from kakugo_operator import naming
from kakugo_operator.conditions import (
    API_ERROR,
    Want,
    conditions,
    refusal_wants,
    transition_events,
)
from kakugo_operator.diff import is_subset, merge_diff
from kakugo_operator.reconcile import gpu_stages, read_status
from kakugo_stages.contract import (
    ManifestError,
    dollars,
    fleet_members,
    merge_patch,
    validate_spec,
)
from kakugo_stages.spec import LanguageFleetSpec, LanguageModelSpec
from kakugo_stages.status import (
    Condition,
    FleetCost,
    FleetPhase,
    GpuAdmission,
    InvalidLanguage,
    LanguageFleetStatus,
    LanguageModelStatus,
    MemberRow,
    StalledLanguage,
    TaskMean,
    find_condition,
)

FLEET_LABEL = "kakugo.io/fleet"
ADMITTED_ANNOTATION = "kakugo.io/gpu-admitted"
SPEC_HASH_ANNOTATION = "kakugo.io/fleet-spec-hash"
#: Member phases, as LanguageModels report them (a member not created yet is Pending).
PHASES = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Stalled")
#: States of a GPU stage that mean "it holds a GPU (or will again, on retry)".
HOLDING_STATES = ("Running", "Queued", "Retrying")
#: Gates that do not make a member wait for a GPU (it would not start if admitted).
NOT_WAITING = ("Suspended", "Budget")


@dataclass(frozen=True)
class Member:
    """One entry of `spec.languages`, expanded."""

    index: int
    language: str
    name: str | None  # None: the language is unknown, so is the name
    code: str | None
    body: dict[str, Any] | None  # the LanguageModel spec to write; None when invalid
    spec: LanguageModelSpec | None
    errors: tuple[str, ...] = ()


@dataclass
class FleetPlan:
    status: LanguageFleetStatus
    create: list[dict[str, Any]] = field(default_factory=list)  # LanguageModels
    patch: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> merge patch
    delete: list[str] = field(default_factory=list)
    #: Members to delete whose artifacts go too: storage.deleteArtifactsOnDelete first.
    delete_artifacts: list[str] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


@dataclass
class AdmissionLedger:
    """The admission annotations this fleet wrote that its watch does not show yet.

    Without it, a grant made from one view (A queued, B not yet) is invisible in the next
    view (A and B queued, neither admitted), and list order hands the slot to B as well.
    An expectation ends when the watch shows the written value, or after `ttl` seconds
    (someone else changed the member; the API is the truth again). Memory only: after a
    restart, Kopf fills the indexes before the daemons start, so the view is current."""

    ttl: float = 60.0
    pending: dict[str, tuple[str | None, float]] = field(default_factory=dict)

    def record(self, name: str, patch: dict[str, Any], clock: float) -> None:
        """After a member patch succeeded: expect its admission value (if it set one)."""
        annotations = (patch.get("metadata") or {}).get("annotations") or {}
        if ADMITTED_ANNOTATION in annotations:
            self.pending[name] = (annotations[ADMITTED_ANNOTATION], clock)

    def overlay(self, children: list[dict[str, Any]], clock: float) -> list[dict[str, Any]]:
        """`children` with the admissions still expected written in."""
        out = []
        for child in children:
            name = _meta(child).get("name", "")
            expected = self.pending.get(name)
            seen = (_meta(child).get("annotations") or {}).get(ADMITTED_ANNOTATION)
            if expected is None:
                out.append(child)
                continue
            value, since = expected
            if seen == value or clock - since > self.ttl:
                del self.pending[name]
                out.append(child)
                continue
            child = {**child, "metadata": {**_meta(child)}}
            annotations = dict(_meta(child).get("annotations") or {})
            if value is None:
                annotations.pop(ADMITTED_ANNOTATION, None)
            else:
                annotations[ADMITTED_ANNOTATION] = value
            child["metadata"]["annotations"] = annotations
            out.append(child)
        for name, (_, since) in list(self.pending.items()):  # members that went away
            if clock - since > self.ttl:
                del self.pending[name]
        return out


def spec_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def expand(
    fleet: LanguageFleetSpec, taken: dict[str, str] | None = None, fleet_name: str = ""
) -> list[Member]:
    """Every entry as a Member: valid (body and spec) or invalid (errors), each validated
    alone (`manifest.fleet_members`, as `kakugo validate` does). `taken`: LanguageModel
    name -> fleet label ("" for none) of the ones that exist; a name held by an object
    outside this fleet is an error of that entry."""
    members: list[Member] = []
    for fm, entry in zip(fleet_members(fleet), fleet.languages, strict=True):
        where = f"spec.languages[{fm.index}]"
        if fm.error is not None or fm.spec is None:
            source = fm.error.source if fm.error else where
            errors = tuple(
                str(e) if e.path.startswith(where) else f"{source}: {e}"
                for e in (fm.error.errors if fm.error else [])
            )
            members.append(Member(fm.index, fm.language, fm.name, None, None, None, errors))
            continue
        name = fm.name or ""
        code = fm.spec.resolved_language.code
        owner = (taken or {}).get(name)
        if owner is not None and owner != fleet_name:
            other = f"LanguageFleet {owner}" if owner else "no fleet"
            members.append(
                Member(
                    fm.index,
                    fm.language,
                    name,
                    code,
                    None,
                    None,
                    (
                        f"{where}: a LanguageModel named {name!r} already exists and belongs to "
                        f"{other}; set {where}.name to another name",
                    ),
                )
            )
            continue
        body = merge_patch(fleet.template, entry.overrides or {})
        body = {**body, "language": entry.language}
        if fleet.suspend:
            body["suspend"] = True
        members.append(Member(fm.index, fm.language, name, code, body, fm.spec))
    return members


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def admitted(child: dict[str, Any]) -> bool:
    return (_meta(child).get("annotations") or {}).get(ADMITTED_ANNOTATION) == "true"


def member_status(child: dict[str, Any] | None) -> LanguageModelStatus:
    return read_status((child or {}).get("status"))


def holds_gpu(status: LanguageModelStatus, gstages: tuple[str, ...]) -> bool:
    """One of its GPU stages runs (a suspended Job too) or waits for its retry."""
    return any(e.name in gstages and e.state in HOLDING_STATES for e in status.stages)


def wants_gpu(status: LanguageModelStatus, gstages: tuple[str, ...]) -> bool:
    """A GPU stage of it could start now but for a gate that admission, time or a slot
    will open (not suspend, not the budget); or it says it is Queued for the fleet (not
    because Kueue holds its Jobs: those hold what they hold)."""
    if status.phase == "Queued" and not any(e.state == "Queued" for e in status.stages):
        return True
    return any(
        e.name in gstages and e.waiting_for not in (None, *NOT_WAITING) for e in status.stages
    )


def member_labels(fleet: str, code: str | None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "kakugo",
        "app.kubernetes.io/managed-by": naming.MANAGED_BY,
        "app.kubernetes.io/part-of": naming.label_value(fleet),
        FLEET_LABEL: naming.label_value(fleet),
    }
    if code:
        labels[naming.LANGUAGE_LABEL] = naming.label_value(code)
    return labels


def _events(prev: list[Condition], new: list[Condition]) -> list[tuple[str, str, str]]:
    """A fleet's Events: Stalled or Degraded becoming True are Warnings."""
    return transition_events(prev, new, lambda c: c.is_true and c.type in ("Stalled", "Degraded"))


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def read_fleet_status(raw: dict[str, Any] | None) -> LanguageFleetStatus:
    try:
        return LanguageFleetStatus.model_validate(raw or {})
    except ValidationError:
        return LanguageFleetStatus(
            conditions=[
                c
                for c in (
                    Condition.model_validate(x)
                    for x in (raw or {}).get("conditions") or []
                    if isinstance(x, dict) and x.get("type") and x.get("status")
                )
            ]
        )


def _invalid_spec(
    prev: LanguageFleetStatus, message: str, generation: int, now: datetime
) -> FleetPlan:
    conds = conditions(
        prev.conditions,
        [
            Want("Ready", False, "InvalidSpec", message),
            Want("Reconciling", False, "InvalidSpec"),
            Want("Stalled", True, "InvalidSpec", message),
            Want("Degraded", True, "InvalidSpec", message),
        ],
        now,
        generation,
    )
    status = prev.model_copy(
        deep=True,
        update={"conditions": conds, "observed_generation": generation, "phase": "Stalled"},
    )
    return FleetPlan(status=status, events=_events(prev.conditions, conds))


def refused(
    status: dict[str, Any], error: str, permanent: bool, generation: int, now: datetime
) -> FleetPlan:
    """The status when the API server refused to create, change or delete a member
    (`k8s.Refused`): the last status, its conditions carrying the API server's message,
    and a Warning Event."""
    prev = read_fleet_status(status)
    conds = conditions(
        prev.conditions, refusal_wants(error, permanent), now, generation, keep_others=True
    )
    update: dict[str, Any] = {"conditions": conds}
    if permanent:
        update.update(phase="Stalled", observed_generation=generation)
    events = transition_events(
        prev.conditions,
        conds,
        lambda c: (c.is_true and c.type in ("Stalled", "Degraded")) or c.reason == API_ERROR,
    )
    return FleetPlan(status=prev.model_copy(deep=True, update=update), events=events)


# ------------------------------------------------------------------ members


def member_changes(
    fleet_name: str,
    namespace: str,
    fleet: LanguageFleetSpec,
    valid: list[Member],
    by_name: dict[str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(members to create, merge patches of existing members): a member is patched when
    the hash of its wanted spec changed or its spec no longer holds the wanted values."""
    create: list[dict[str, Any]] = []
    patches: dict[str, dict[str, Any]] = {}
    for m in valid:
        n, body = m.name or "", m.body or {}
        digest_ = spec_hash(body)
        child = by_name.get(n)
        if child is None:
            annotations = {SPEC_HASH_ANNOTATION: digest_}
            if fleet.max_concurrent is None:
                annotations[ADMITTED_ANNOTATION] = "true"
            create.append(
                {
                    "apiVersion": "kakugo.io/v1alpha1",
                    "kind": "LanguageModel",
                    "metadata": {
                        "name": n,
                        "namespace": namespace,
                        "labels": member_labels(fleet_name, m.code),
                        "annotations": annotations,
                    },
                    "spec": body,
                }
            )
            continue
        if _meta(child).get("deletionTimestamp"):
            continue  # re-added while being deleted: created again once it is gone
        patch: dict[str, Any] = {}
        have = _meta(child).get("annotations") or {}
        if have.get(SPEC_HASH_ANNOTATION) != digest_ or not is_subset(body, child.get("spec")):
            if diff := merge_diff(child.get("spec"), body):
                patch["spec"] = diff
            patch.setdefault("metadata", {}).setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = (
                digest_
            )
        want_labels = member_labels(fleet_name, m.code)
        labels = _meta(child).get("labels") or {}
        if any(labels.get(k) != v for k, v in want_labels.items()):
            patch.setdefault("metadata", {})["labels"] = want_labels
        if patch:
            patches[n] = patch
    return create, patches


@dataclass(frozen=True)
class Removals:
    delete: list[str]
    delete_artifacts: list[str]
    #: Members no entry names, kept while an entry's language is unknown.
    held: list[str]
    #: Members being deleted now.
    deleting: list[str]


def removals(members: list[Member], by_name: dict[str, dict[str, Any]], policy: str) -> Removals:
    """Members no entry names are deleted, unless an entry's language cannot be resolved:
    its member cannot be told apart from a removed one (a typo must not delete a
    language's artifacts)."""
    listed = {m.name for m in members if m.name}
    unknown = any(m.name is None for m in members if m.body is None)
    gone = sorted(
        n for n, c in by_name.items() if n not in listed and not _meta(c).get("deletionTimestamp")
    )
    deleting = [n for n, c in by_name.items() if _meta(c).get("deletionTimestamp")]
    if gone and unknown:
        return Removals([], [], gone, deleting)
    return Removals(gone, list(gone) if policy == "Delete" else [], [], deleting)


@dataclass(frozen=True)
class Admission:
    grants: dict[str, bool]  # member -> admitted (True) or released (False)
    holding: list[str]
    queued: list[str]


def admissions(
    valid: list[Member], by_name: dict[str, dict[str, Any]], limit: int | None
) -> Admission:
    """GPU admission: members holding a slot (a GPU stage running or retrying, or
    admitted and about to start one), and waiting members admitted in list order while
    fewer than `limit` hold one. Without a limit every member is admitted."""
    live = [
        m
        for m in valid
        if (c := by_name.get(m.name or "")) is not None
        and not _meta(c).get("deletionTimestamp")
        and m.spec is not None
    ]
    holding: list[str] = []
    waiting: list[str] = []
    for m in live:
        n = m.name or ""
        child, g = by_name[n], gpu_stages(m.spec) if m.spec else ()
        st = member_status(child)
        if holds_gpu(st, g) or (admitted(child) and wants_gpu(st, g)):
            holding.append(n)
        elif wants_gpu(st, g):
            waiting.append(n)
    grants: dict[str, bool] = {}
    for m in live:
        n, child = m.name or "", by_name[m.name or ""]
        if limit is None:
            if not admitted(child):
                grants[n] = True
        elif admitted(child) and n not in holding:
            grants[n] = False  # done with GPUs (or back in CPU stages): free the slot
        elif not admitted(child) and n in waiting and len(holding) < limit:
            grants[n] = True
            holding.append(n)
    return Admission(grants, holding, [n for n in waiting if n not in holding])


# ------------------------------------------------------------------ aggregate status


@dataclass
class Aggregate:
    phases: Counter[str]
    ready: int
    stale: int
    rows: list[MemberRow]
    stalled: list[StalledLanguage]
    cost: FleetCost
    evaluation: dict[str, TaskMean]


def aggregate(
    valid: list[Member], by_name: dict[str, dict[str, Any]], changing: set[str]
) -> Aggregate:
    """Counts by phase, readiness, cost, evaluation means and a row per member.
    `changing`: members whose spec is being patched (a Succeeded one is Pending again)."""
    phases: Counter[str] = Counter()
    total, gpu_hours, shares = Decimal(0), 0.0, Decimal(0)
    forecast: Decimal | None = None
    by_language: dict[str, str] = {}
    deltas: dict[str, list[float]] = {}
    stalled: list[StalledLanguage] = []
    rows: list[MemberRow] = []
    ready = stale = 0
    for m in valid:
        n = m.name or ""
        child = by_name.get(n)
        st = member_status(child)
        phase = st.phase or "Pending"
        if n in changing and phase == "Succeeded":
            phase = "Pending"  # a change is on its way
        phases[phase] += 1
        current = (
            child is not None
            and n not in changing
            and st.observed_generation == _meta(child).get("generation", 1)
        )
        stale += not current
        ready_cond = find_condition(st.conditions, "Ready")
        if current and ready_cond is not None and ready_cond.is_true:
            ready += 1
        if st.cost is not None:
            money = _decimal(st.cost.dollars)
            total += money
            by_language[n] = dollars(money)
            shares += _decimal(st.cost.teacher_share)  # already in its dollars
            with contextlib.suppress(TypeError, ValueError):
                gpu_hours += float(st.cost.gpu_hours or 0)
        if st.forecast is not None:
            forecast = (forecast or Decimal(0)) + _decimal(st.forecast.dollars)
        for task, score in (st.evaluation.tasks if st.evaluation else {}).items():
            delta = score.delta
            if delta is None and score.base is not None and score.tuned is not None:
                delta = score.tuned - score.base
            if delta is not None:
                deltas.setdefault(task, []).append(float(delta))
        if phase == "Stalled":
            cond = find_condition(st.conditions, "Stalled")
            stalled.append(
                StalledLanguage(
                    name=n,
                    language=m.language,
                    reason=cond.reason if cond else "Stalled",
                    message=(cond.message if cond else "")[:512],
                )
            )
        rows.append(
            MemberRow(
                name=n,
                language=m.language,
                phase=phase,
                stages=list(st.progress.stages) if st.progress and phase != "Succeeded" else [],
                cost=by_language.get(n),
            )
        )
    return Aggregate(
        phases=phases,
        ready=ready,
        stale=stale,
        rows=rows,
        stalled=stalled,
        cost=FleetCost(
            dollars=dollars(total),
            gpu_hours=f"{gpu_hours:.4f}",
            by_language=by_language,
            forecast=dollars(forecast) if forecast is not None else None,
            teacher_share=dollars(shares) if shares else None,
        ),
        evaluation={
            task: TaskMean(mean_delta=round(sum(v) / len(v), 2), languages=len(v))
            for task, v in sorted(deltas.items())
        },
    )


def fleet_wants(
    agg: Aggregate,
    n_valid: int,
    invalid: list[Member],
    queued: list[str],
    plan: FleetPlan,
    gone: Removals,
) -> tuple[list[Want], bool]:
    """The fleet's conditions (kstatus: Ready, Reconciling, Stalled; plus Degraded) and
    whether work is going on."""
    phases = agg.phases
    all_ready = n_valid > 0 and agg.ready == n_valid and not plan.create and not plan.delete
    busy = [r for r in agg.rows if r.phase not in ("Succeeded", "Stalled", "Suspended")]
    work = bool(busy or agg.stale or plan.create or plan.patch or plan.delete or gone.deleting)
    invalid_msg = "; ".join(" ".join(m.errors) for m in invalid)
    stalled_msg = ", ".join(f"{s.name} ({s.reason})" for s in agg.stalled)
    ready_msg = (
        f"{agg.ready} of {n_valid} valid language(s) ready"
        + (f"; {len(invalid)} invalid" if invalid else "")
        + (f"; {phases['Suspended']} suspended" if phases["Suspended"] else "")
    )
    message = ""
    if work:
        message = (
            f"{phases['Running']} running, {len(queued)} queued for GPUs, "
            f"{phases['Pending']} pending, {len(plan.create)} to create, "
            f"{len(plan.patch)} to update, "
            f"{len(plan.delete) + len(gone.deleting)} to delete"
        )
    if gone.held:
        message += ("; " if message else "") + (
            f"not deleting {', '.join(gone.held)} while an entry's language is unknown (it "
            "may be the renamed language of a member)"
        )
    wants = [
        Want("Ready", all_ready, "AllReady" if all_ready else "MembersNotReady", ready_msg),
        Want("Reconciling", work, "Progressing" if work else "Done", message),
    ]
    if agg.stalled:
        wants.append(
            Want(
                "Stalled",
                True,
                "MembersStalled",
                f"{len(agg.stalled)} stalled: {stalled_msg}"
                + (f"; invalid: {invalid_msg}" if invalid else ""),
            )
        )
    elif invalid:
        wants.append(Want("Stalled", True, "InvalidLanguages", invalid_msg))
    else:
        wants.append(Want("Stalled", False, "NotStalled"))
    if invalid:
        wants.append(
            Want(
                "Degraded",
                True,
                "InvalidLanguages",
                f"{len(invalid)} invalid language(s), not created; the valid ones go "
                f"on: {invalid_msg}",
            )
        )
    elif agg.stalled:
        wants.append(Want("Degraded", True, "MembersStalled", stalled_msg))
    else:
        wants.append(Want("Degraded", False, "AllValid"))
    return wants, work


def member_events(plan: FleetPlan, limit: int | None) -> list[tuple[str, str, str]]:
    events = []
    for obj in plan.create:
        events.append(
            (
                "Normal",
                "MemberCreated",
                f"LanguageModel {obj['metadata']['name']} ({obj['spec']['language']})",
            )
        )
    for n in plan.delete:
        kept = "deleted" if n in plan.delete_artifacts else "kept"
        events.append(("Normal", "MemberDeleted", f"LanguageModel {n} (artifacts {kept})"))
    for n, p in plan.patch.items():
        if "spec" in p:
            events.append(("Normal", "MemberUpdated", f"LanguageModel {n}: spec changed"))
        grant = (p.get("metadata") or {}).get("annotations") or {}
        if ADMITTED_ANNOTATION in grant and limit is not None:
            events.append(
                (
                    "Normal",
                    "GPUAdmitted" if grant[ADMITTED_ANNOTATION] else "GPUReleased",
                    f"LanguageModel {n}",
                )
            )
    return events


# ------------------------------------------------------------------ the decision


def decide_fleet(
    name: str,
    namespace: str,
    generation: int,
    raw_spec: dict[str, Any],
    status: dict[str, Any],
    children: list[dict[str, Any]],
    taken: dict[str, str],
    now: datetime,
) -> FleetPlan:
    """The fleet's plan. `children`: the LanguageModels labelled with this fleet;
    `taken`: LanguageModel name -> fleet label ("" for none) of the LanguageModels in the
    namespace (to tell a name clash from a member)."""
    prev = read_fleet_status(status)
    try:
        fleet = validate_spec("LanguageFleet", raw_spec, f"{namespace}/{name}")
    except ManifestError as exc:
        return _invalid_spec(prev, "; ".join(str(e) for e in exc.errors), generation, now)

    members = expand(fleet, taken, name)
    by_name = {c["metadata"]["name"]: c for c in children}
    valid = [m for m in members if m.body is not None]
    invalid = [m for m in members if m.body is None]

    plan = FleetPlan(status=prev)
    plan.create, plan.patch = member_changes(name, namespace, fleet, valid, by_name)
    gone = removals(members, by_name, fleet.artifact_policy)
    plan.delete, plan.delete_artifacts = gone.delete, gone.delete_artifacts
    admission = admissions(valid, by_name, fleet.max_concurrent)
    for n, grant in admission.grants.items():
        meta = plan.patch.setdefault(n, {}).setdefault("metadata", {})
        meta.setdefault("annotations", {})[ADMITTED_ANNOTATION] = "true" if grant else None

    agg = aggregate(valid, by_name, {n for n, p in plan.patch.items() if "spec" in p})
    wants, work = fleet_wants(agg, len(valid), invalid, admission.queued, plan, gone)
    conds = conditions(prev.conditions, wants, now, generation)
    phase: FleetPhase
    if work:
        phase = "Running"
    elif agg.stalled or invalid:
        phase = "Stalled"
    else:
        phase = "Ready" if wants[0].value else "Suspended"
    plan.status = LanguageFleetStatus(
        observed_generation=generation,
        phase=phase,
        conditions=conds,
        languages=len(members),
        members=len(valid),
        ready=agg.ready,
        running=agg.phases["Running"],
        queued=len(admission.queued),
        pending=agg.phases["Pending"],
        suspended=agg.phases["Suspended"],
        succeeded=agg.phases["Succeeded"],
        stalled=agg.phases["Stalled"],
        invalid=len(invalid),
        phases={p: agg.phases[p] for p in PHASES if agg.phases[p]},
        gpu=GpuAdmission(
            max_concurrent=fleet.max_concurrent,
            in_use=len(admission.holding),
            queued=sorted(admission.queued),
        ),
        cost=agg.cost,
        evaluation=agg.evaluation,
        stalled_languages=agg.stalled,
        invalid_languages=[
            InvalidLanguage(index=m.index, language=m.language, name=m.name, errors=list(m.errors))
            for m in invalid
        ],
        member_status=agg.rows,
    )
    plan.events = _events(prev.conditions, conds) + member_events(plan, fleet.max_concurrent)
    return plan
