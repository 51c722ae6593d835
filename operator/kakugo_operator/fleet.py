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
  grants it to waiting members (phase `Queued`) in list order while fewer than
  `maxConcurrent` members hold a slot, and takes it back from members that no longer
  need a GPU. A member holds a slot while one of its GPU stages is running or retrying,
  or while it is admitted and waiting to start one.
- The fleet's view of its members comes from a watch and can lag behind its own writes:
  `AdmissionLedger` keeps each admission it granted or took back until the watch shows
  it, so a stale view never hands a second slot to another member (the ReplicaSet
  controller's "expectations").
- Removal: a member no entry names any more is deleted; with `artifactPolicy: Delete`
  its `storage.deleteArtifactsOnDelete` is set first, so the LanguageModel's finalizer
  deletes its artifacts.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from kakugo_operator import naming
from kakugo_operator.reconcile import _set_condition, condition_events, gpu_stages
from kakugo_stages.contract import (
    ManifestError,
    dollars,
    fleet_members,
    merge_patch,
    validate_spec,
)
from kakugo_stages.spec import LanguageFleetSpec, LanguageModelSpec

FLEET_LABEL = "kakugo.io/fleet"
ADMITTED_ANNOTATION = "kakugo.io/gpu-admitted"
SPEC_HASH_ANNOTATION = "kakugo.io/fleet-spec-hash"
#: Member phases, as LanguageModels report them (a member not created yet is Pending).
PHASES = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Stalled")
#: States of a GPU stage that mean "it holds a GPU (or will again, on retry)".
HOLDING_STATES = ("Running", "Retrying")


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
    status: dict[str, Any]
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


def expand(fleet: LanguageFleetSpec, taken: dict[str, str] | None = None,
           fleet_name: str = "") -> list[Member]:
    """Every entry as a Member: valid (body and spec) or invalid (errors), each validated
    alone (`manifest.fleet_members`, as `kakugo validate` does). `taken`: LanguageModel
    name -> fleet label ("" for none) of the ones that exist; a name held by an object
    outside this fleet is an error of that entry."""
    members: list[Member] = []
    for fm, entry in zip(fleet_members(fleet), fleet.languages, strict=True):
        where = f"spec.languages[{fm.index}]"
        if fm.error is not None or fm.spec is None:
            source = fm.error.source if fm.error else where
            errors = tuple(str(e) if e.path.startswith(where) else f"{source}: {e}"
                           for e in (fm.error.errors if fm.error else []))
            members.append(Member(fm.index, fm.language, fm.name, None, None, None, errors))
            continue
        name = fm.name or ""
        code = fm.spec.resolved_language.code
        owner = (taken or {}).get(name)
        if owner is not None and owner != fleet_name:
            other = f"LanguageFleet {owner}" if owner else "no fleet"
            members.append(Member(fm.index, fm.language, name, code, None, None, (
                f"{where}: a LanguageModel named {name!r} already exists and belongs to "
                f"{other}; set {where}.name to another name",)))
            continue
        body = merge_patch(fleet.template, entry.overrides or {})
        body = {**body, "language": entry.language}
        if fleet.suspend:
            body["suspend"] = True
        members.append(Member(fm.index, fm.language, name, code, body, fm.spec))
    return members


def is_subset(want: Any, have: Any) -> bool:
    """Every value of `want` is in `have` (dicts compared key by key; the API server may
    have added defaults to `have`)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(is_subset(v, have.get(k)) for k, v in want.items())
    return bool(want == have)


def merge_diff(have: Any, want: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that turns `have` into `want` (keys only in `have` become null; the
    API server re-applies schema defaults)."""
    have = have if isinstance(have, dict) else {}
    out: dict[str, Any] = {}
    for key, value in want.items():
        old = have.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            sub = merge_diff(old, value)
            if sub:
                out[key] = sub
        elif value != old:
            out[key] = value
    for key in have:
        if key not in want:
            out[key] = None
    return out


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _cond(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return {}


def admitted(child: dict[str, Any]) -> bool:
    return (_meta(child).get("annotations") or {}).get(ADMITTED_ANNOTATION) == "true"


def in_gpu_stage(child: dict[str, Any], gstages: tuple[str, ...]) -> bool:
    """One of its GPU stages runs (a suspended Job too) or waits for its retry."""
    return any(e.get("name") in gstages and e.get("state") in HOLDING_STATES
               for e in (child.get("status") or {}).get("stages") or [])


def waits_for_gpu(child: dict[str, Any], gstages: tuple[str, ...]) -> bool:
    """Queued, or about to start a GPU stage."""
    status = child.get("status") or {}
    phase = status.get("phase")
    if phase == "Queued":
        return True
    return phase in ("Pending", "Running") and (status.get("progress") or {}).get(
        "stage") in gstages


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


def _events(prev: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """A fleet's Events: Stalled or Degraded becoming True are Warnings."""
    return condition_events(prev, new, lambda c: c["status"] == "True" and c["type"] in (
        "Stalled", "Degraded"))


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def _invalid_spec(plan: FleetPlan, prev: list[dict[str, Any]], message: str,
                  generation: int, now: datetime) -> FleetPlan:
    conds: list[dict[str, Any]] = []
    _set_condition(conds, prev, "Ready", False, "InvalidSpec", message, now, generation)
    _set_condition(conds, prev, "Reconciling", False, "InvalidSpec", "", now, generation)
    _set_condition(conds, prev, "Stalled", True, "InvalidSpec", message, now, generation)
    _set_condition(conds, prev, "Degraded", True, "InvalidSpec", message, now, generation)
    plan.status.update(conditions=conds, observedGeneration=generation, phase="Stalled")
    plan.events = _events(prev, conds)
    return plan


def decide_fleet(name: str, namespace: str, generation: int, raw_spec: dict[str, Any],
                 status: dict[str, Any], children: list[dict[str, Any]],
                 taken: dict[str, str], now: datetime) -> FleetPlan:
    """The fleet's plan. `children`: the LanguageModels labelled with this fleet;
    `taken`: LanguageModel name -> fleet label ("" for none) of the LanguageModels in the
    namespace (to tell a name clash from a member)."""
    status = copy.deepcopy(status)
    prev = list(status.get("conditions") or [])
    plan = FleetPlan(status=status)
    try:
        fleet = validate_spec("LanguageFleet", raw_spec, f"{namespace}/{name}")
    except ManifestError as exc:
        return _invalid_spec(plan, prev, "; ".join(str(e) for e in exc.errors), generation,
                             now)

    members = expand(fleet, taken, name)
    by_name = {c["metadata"]["name"]: c for c in children}
    valid = [m for m in members if m.body is not None]
    invalid = [m for m in members if m.body is None]
    listed = {m.name for m in members if m.name}
    unknown_names = any(m.name is None for m in invalid)

    # ---- create and update members
    for m in valid:
        n, body = m.name or "", m.body or {}
        digest = spec_hash(body)
        child = by_name.get(n)
        if child is None:
            annotations = {SPEC_HASH_ANNOTATION: digest}
            if fleet.max_concurrent is None:
                annotations[ADMITTED_ANNOTATION] = "true"
            plan.create.append({
                "apiVersion": "kakugo.io/v1alpha1", "kind": "LanguageModel",
                "metadata": {"name": n, "namespace": namespace,
                             "labels": member_labels(name, m.code),
                             "annotations": annotations},
                "spec": body,
            })
            continue
        if _meta(child).get("deletionTimestamp"):
            continue  # re-added while being deleted: created again once it is gone
        patch: dict[str, Any] = {}
        have = _meta(child).get("annotations") or {}
        if have.get(SPEC_HASH_ANNOTATION) != digest or not is_subset(body, child.get("spec")):
            diff = merge_diff(child.get("spec"), body)
            if diff:
                patch["spec"] = diff
            patch.setdefault("metadata", {}).setdefault("annotations", {})[
                SPEC_HASH_ANNOTATION] = digest
        want_labels = member_labels(name, m.code)
        labels = _meta(child).get("labels") or {}
        if any(labels.get(k) != v for k, v in want_labels.items()):
            patch.setdefault("metadata", {})["labels"] = want_labels
        if patch:
            plan.patch[n] = patch

    # ---- remove members no entry names. While an entry's language cannot be resolved,
    # its member cannot be told apart from a removed one: nothing is deleted until then.
    removals = sorted(n for n, c in by_name.items() if n not in listed
                      and not _meta(c).get("deletionTimestamp"))
    held = bool(removals) and unknown_names
    if not held:
        plan.delete = removals
        if fleet.artifact_policy == "Delete":
            plan.delete_artifacts = list(removals)
    deleting = [n for n, c in by_name.items() if _meta(c).get("deletionTimestamp")]

    # ---- GPU admission
    gpu_of = {m.name or "": gpu_stages(m.spec) for m in valid if m.spec is not None}
    live = [m.name or "" for m in valid if (c := by_name.get(m.name or "")) is not None
            and not _meta(c).get("deletionTimestamp")]
    holding: list[str] = []
    waiting: list[str] = []
    for n in live:
        child, g = by_name[n], gpu_of[n]
        if in_gpu_stage(child, g) or (admitted(child) and waits_for_gpu(child, g)):
            holding.append(n)
        elif waits_for_gpu(child, g):
            waiting.append(n)
    limit = fleet.max_concurrent
    for n in live:
        child = by_name[n]
        grant: bool | None = None
        if limit is None:
            grant = True if not admitted(child) else None
        elif admitted(child) and n not in holding:
            grant = False  # done with GPUs (or back in CPU stages): free the slot
        elif not admitted(child) and n in waiting and len(holding) < limit:
            grant = True
            holding.append(n)
        if grant is not None:
            meta = plan.patch.setdefault(n, {}).setdefault("metadata", {})
            meta.setdefault("annotations", {})[ADMITTED_ANNOTATION] = "true" if grant else None
    queued = [n for n in waiting if n not in holding]

    # ---- aggregate status
    phases: Counter[str] = Counter()
    total = Decimal(0)
    gpu_hours = 0.0
    by_language: dict[str, str] = {}
    deltas: dict[str, list[float]] = {}
    stalled_list: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    ready = 0
    stale = 0
    for m in valid:
        n = m.name or ""
        child = by_name.get(n)
        cstatus = (child or {}).get("status") or {}
        changing = "spec" in plan.patch.get(n, {})
        phase = cstatus.get("phase") or "Pending"
        if changing and phase == "Succeeded":
            phase = "Pending"  # a change is on its way
        phases[phase] += 1
        current = child is not None and not changing and cstatus.get(
            "observedGeneration") == _meta(child).get("generation", 1)
        stale += not current
        if current and _cond(child or {}, "Ready").get("status") == "True":
            ready += 1
        cost = cstatus.get("cost") or {}
        if cost.get("dollars") is not None:
            money = _decimal(cost["dollars"])
            total += money
            by_language[n] = dollars(money)
        with contextlib.suppress(TypeError, ValueError):
            gpu_hours += float(cost.get("gpuHours") or 0)
        for task, result in ((cstatus.get("evaluation") or {}).get("tasks") or {}).items():
            result = result or {}
            delta = result.get("delta")
            if delta is None and isinstance(result.get("base"), int | float) and \
                    isinstance(result.get("tuned"), int | float):
                delta = result["tuned"] - result["base"]
            if isinstance(delta, int | float):
                deltas.setdefault(task, []).append(float(delta))
        if phase == "Stalled":
            cond = _cond(child or {}, "Stalled")
            stalled_list.append({"name": n, "language": m.language,
                                 "reason": cond.get("reason", "Stalled"),
                                 "message": (cond.get("message") or "")[:512]})
        row: dict[str, Any] = {"name": n, "language": m.language, "phase": phase}
        stage = (cstatus.get("progress") or {}).get("stage")
        if stage and phase != "Succeeded":
            row["stage"] = stage
        if n in by_language:
            row["cost"] = by_language[n]
        rows.append(row)

    n_valid = len(valid)
    gpu: dict[str, Any] = {"inUse": len(holding), "queued": sorted(queued)}
    if limit is not None:
        gpu = {"maxConcurrent": limit, **gpu}
    status.update(
        observedGeneration=generation,
        languages=len(members),
        members=n_valid,
        ready=ready,
        running=phases["Running"],
        queued=len(queued),
        pending=phases["Pending"],
        suspended=phases["Suspended"],
        succeeded=phases["Succeeded"],
        stalled=phases["Stalled"],
        invalid=len(invalid),
        phases={p: phases[p] for p in PHASES if phases[p]},
        gpu=gpu,
        cost={"dollars": dollars(total), "gpuHours": f"{gpu_hours:.4f}",
              "byLanguage": by_language},
        evaluation={task: {"meanDelta": round(sum(v) / len(v), 2), "languages": len(v)}
                    for task, v in sorted(deltas.items())},
        stalledLanguages=stalled_list,
        invalidLanguages=[{"index": m.index, "language": m.language,
                           **({"name": m.name} if m.name else {}),
                           "errors": list(m.errors)} for m in invalid],
        memberStatus=rows,
    )

    # ---- conditions (kstatus: Ready, Reconciling, Stalled; plus Degraded)
    g = generation
    conds: list[dict[str, Any]] = []
    all_ready = n_valid > 0 and ready == n_valid and not plan.create and not plan.delete
    busy = [r for r in rows if r["phase"] not in ("Succeeded", "Stalled", "Suspended")]
    work = bool(busy or stale or plan.create or plan.patch or plan.delete or deleting)
    invalid_msg = "; ".join(" ".join(m.errors) for m in invalid)
    stalled_msg = ", ".join(f"{s['name']} ({s['reason']})" for s in stalled_list)
    ready_msg = f"{ready} of {n_valid} valid language(s) ready" + (
        f"; {len(invalid)} invalid" if invalid else "") + (
        f"; {phases['Suspended']} suspended" if phases["Suspended"] else "")
    _set_condition(conds, prev, "Ready", all_ready,
                   "AllReady" if all_ready else "MembersNotReady", ready_msg, now, g)
    message = ""
    if work:
        message = (f"{phases['Running']} running, {len(queued)} queued for GPUs, "
                   f"{phases['Pending']} pending, {len(plan.create)} to create, "
                   f"{len(plan.patch)} to update, {len(plan.delete) + len(deleting)} to delete")
    if held:
        message += ("; " if message else "") + (
            f"not deleting {', '.join(removals)} while an entry's language is unknown (it "
            "may be the renamed language of a member)")
    _set_condition(conds, prev, "Reconciling", work, "Progressing" if work else "Done",
                   message, now, g)
    if stalled_list:
        _set_condition(conds, prev, "Stalled", True, "MembersStalled",
                       f"{len(stalled_list)} stalled: {stalled_msg}"
                       + (f"; invalid: {invalid_msg}" if invalid else ""), now, g)
    elif invalid:
        _set_condition(conds, prev, "Stalled", True, "InvalidLanguages", invalid_msg, now, g)
    else:
        _set_condition(conds, prev, "Stalled", False, "NotStalled", "", now, g)
    if invalid:
        _set_condition(conds, prev, "Degraded", True, "InvalidLanguages",
                       f"{len(invalid)} invalid language(s), not created; the valid ones go "
                       f"on: {invalid_msg}", now, g)
    elif stalled_list:
        _set_condition(conds, prev, "Degraded", True, "MembersStalled", stalled_msg, now, g)
    else:
        _set_condition(conds, prev, "Degraded", False, "AllValid", "", now, g)
    status["conditions"] = conds
    if work:
        status["phase"] = "Running"
    elif stalled_list or invalid:
        status["phase"] = "Stalled"
    else:
        status["phase"] = "Ready" if all_ready else "Suspended"

    plan.events = _events(prev, conds)
    for obj in plan.create:
        plan.events.append(("Normal", "MemberCreated", f"LanguageModel "
                            f"{obj['metadata']['name']} ({obj['spec']['language']})"))
    for n in plan.delete:
        kept = "deleted" if n in plan.delete_artifacts else "kept"
        plan.events.append(("Normal", "MemberDeleted", f"LanguageModel {n} (artifacts {kept})"))
    for n, p in plan.patch.items():
        if "spec" in p:
            plan.events.append(("Normal", "MemberUpdated", f"LanguageModel {n}: spec changed"))
        grant_value = ((p.get("metadata") or {}).get("annotations") or {})
        if ADMITTED_ANNOTATION in grant_value and limit is not None:
            plan.events.append(("Normal", "GPUAdmitted" if grant_value[ADMITTED_ANNOTATION]
                                else "GPUReleased", f"LanguageModel {n}"))
    return plan
