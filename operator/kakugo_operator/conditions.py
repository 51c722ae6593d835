"""Conditions of the three kinds (LanguageModel, Teacher, LanguageFleet), one way.

Every condition carries the generation it describes (`observedGeneration`, which kstatus
and Flux read) and keeps its `lastTransitionTime` while its status does not change. An
Event is posted per transition (status or reason changed).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

from kakugo_operator.observe import iso
from kakugo_stages.status import Condition, ConditionStatus

#: What kstatus reads, in this order, on every kind.
KSTATUS_TYPES = ("Ready", "Reconciling", "Stalled")
MESSAGE_LIMIT = 1024
#: The API server refused a change to an owned object, and would refuse it again.
REFUSED = "OwnedObjectRefused"
#: A call to the API server failed in a way that may pass (a server error, throttling).
API_ERROR = "APIError"


def refusal_wants(error: str, permanent: bool) -> list[Want]:
    """The kstatus conditions of an object whose owned object the API server refused to
    create, change or delete (`k8s.Refused`): a refusal that would come again stalls it
    until something changes; one that may pass keeps it reconciling. Other conditions are
    left as they were."""
    if permanent:
        return [
            Want("Ready", False, REFUSED, error),
            Want("Reconciling", False, REFUSED),
            Want("Stalled", True, REFUSED, error),
        ]
    return [Want("Ready", False, API_ERROR, error), Want("Reconciling", True, API_ERROR, error)]


@dataclass(frozen=True)
class Want:
    """A condition as a decision wants it (before times are filled in)."""

    type: str
    value: bool
    reason: str
    message: str = ""


def condition(
    previous: Iterable[Condition], want: Want, now: datetime, generation: int
) -> Condition:
    """`want` as a Condition: its transition time is now if its status moved, else kept."""
    old = next((c for c in previous if c.type == want.type), None)
    status: ConditionStatus = "True" if want.value else "False"
    moved = old is None or old.status != status
    return Condition(
        type=want.type,
        status=status,
        reason=want.reason,
        message=want.message[:MESSAGE_LIMIT],
        observed_generation=generation,
        last_transition_time=iso(now)
        if moved
        else (old.last_transition_time if old and old.last_transition_time else iso(now)),
    )


def conditions(
    previous: list[Condition],
    wants: Iterable[Want],
    now: datetime,
    generation: int,
    keep_others: bool = False,
) -> list[Condition]:
    """The conditions for `wants`, in their order; `keep_others` keeps previous conditions
    of other types after them (a stall that changes only some of them)."""
    out = [condition(previous, w, now, generation) for w in wants]
    if keep_others:
        types = {c.type for c in out}
        out += [c for c in previous if c.type not in types]
    return out


def transition_events(
    previous: list[Condition],
    new: list[Condition],
    warning: Callable[[Condition], bool],
    new_false_reasons: Collection[str] = (),
) -> list[tuple[str, str, str]]:
    """One Event (type, reason, message) per condition transition: status or reason
    changed. A condition that first appears as False is news only with one of
    `new_false_reasons`; `warning` says which transitions are Warnings."""
    before = {c.type: c for c in previous}
    out = []
    for cond in new:
        old = before.get(cond.type)
        if old and old.status == cond.status and old.reason == cond.reason:
            continue
        if old is None and cond.status == "False" and cond.reason not in new_false_reasons:
            continue  # a new condition that is merely not-yet-true: nothing happened
        msg = f"{cond.type}={cond.status}"
        if cond.message:
            msg += f": {cond.message}"
        out.append(("Warning" if warning(cond) else "Normal", cond.reason, msg))
    return out
