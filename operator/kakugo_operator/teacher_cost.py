"""A shared Teacher's GPU time, charged to the LanguageModels it serves (pure).

The Teacher accrues GPU time between its observations: the server's GPUs x the replicas
of its Deployment x the seconds since the last observation, at the GPU price of the
operator's settings. An interval ends when its clients report tokens: its cost (with
what is pending) is split among them in proportion to the tokens each was served since
the last observation (`apportion`). Time in which no LanguageModel needed the server and
none reported tokens is idle, charged to the Teacher itself. Time in which clients needed
it but none has reported tokens yet is pending: the stages report their tokens when a Pod
ends (its termination summary), so that time goes to the next report, or to idle if the
clients leave without one.

Tokens are the teacher stages' cumulative counts in each LanguageModel's status (prompt
plus completion, largest over the stage's Pods, over all its attempts: the request cache
is the stages' ledger). The deltas are taken per stage against the last count seen, kept
with the stage's fingerprint: a retry (same fingerprint) only adds what grew, never what
a Pod saw less of; a stage rerun after a spec change (new fingerprint, counts from zero)
counts from zero. Everything lives in `status.cost` of the Teacher (`TeacherCost`), so a
restarted operator goes on from it; the status is bounded: totals and the last counters
per client, and the last interval.

Money is Decimal, in micro-dollars (6 places) on the Teacher: each interval's cost is
rounded half-up to a micro-dollar, and its shares sum to it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import ValidationError

from kakugo_operator import naming
from kakugo_operator.observe import iso, parse_time
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import TEACHER_STAGES
from kakugo_stages.spec import TeacherSpec
from kakugo_stages.status import (
    StageStatus,
    TeacherCharge,
    TeacherCost,
    TeacherInterval,
    TeacherStageTokens,
)

MICRO = Decimal("0.000001")


def micro(value: Decimal) -> Decimal:
    """Dollars rounded half-up to a micro-dollar."""
    return value.quantize(MICRO, rounding=ROUND_HALF_UP)


def money(value: Decimal) -> str:
    return str(micro(value))


def apportion(amount: Decimal, weights: Mapping[str, int]) -> dict[str, Decimal]:
    """`amount` (a whole number of micro-dollars) split in proportion to `weights` (the
    positive ones), by largest remainder: each share is amount x weight / total rounded
    down to a micro-dollar, and the micro-dollars left go one each to the largest
    remainders (ties by name). The shares sum to `amount` exactly."""
    positive = {k: w for k, w in weights.items() if w > 0}
    if not positive:
        raise ValueError("nothing to apportion to: no positive weight")
    if micro(amount) != amount or amount < 0:
        raise ValueError(f"amount {amount}: not a non-negative number of micro-dollars")
    units, total = int(amount / MICRO), sum(positive.values())
    shares = {k: units * w // total for k, w in positive.items()}
    left = units - sum(shares.values())
    for k in sorted(positive, key=lambda k: (-(units * positive[k] % total), k))[:left]:
        shares[k] += 1
    return {k: Decimal(n) * MICRO for k, n in shares.items()}


@dataclass(frozen=True)
class ClientUsage:
    """A LanguageModel that uses the Teacher: its uid and, per teacher stage, the stage's
    fingerprint and its tokens so far (prompt + completion)."""

    name: str
    uid: str
    counters: Mapping[str, tuple[str, int]] = field(default_factory=dict)


def usage_of(name: str, uid: str, raw_status: Mapping[str, Any] | None) -> ClientUsage:
    """A LanguageModel's usage from its status (an entry that does not parse counts 0)."""
    counters: dict[str, tuple[str, int]] = {}
    for raw in (raw_status or {}).get("stages") or []:
        try:
            entry = StageStatus.model_validate(raw)
        except ValidationError:
            continue
        if entry.name not in TEACHER_STAGES:
            continue
        tokens = (entry.counts.prompt_tokens or 0) + (entry.counts.completion_tokens or 0)
        counters[entry.name] = (entry.fingerprint, max(tokens, 0))
    return ClientUsage(name, uid, counters)


def gpu_price(spec: TeacherSpec, settings: OperatorSettings) -> Decimal:
    """$ per GPU-hour of the server's GPUs: its gpuType (or nodeSelector product) and
    capacity type, as a stage Pod's price is found."""
    selector = spec.resources.node_selector or {}
    product = spec.resources.gpu_type or selector.get(naming.GPU_PRODUCT_LABEL)
    return settings.gpu_price(product or None, selector.get("karpenter.sh/capacity-type"))


def server_gpus(spec: TeacherSpec) -> int:
    return spec.gpus if spec.device == "cuda" else 0


def _dec(value: str | None) -> Decimal:
    try:
        return Decimal(value or 0)
    except ArithmeticError:
        return Decimal(0)


def _deltas(
    charged: dict[str, TeacherCharge], usage: Sequence[ClientUsage]
) -> tuple[dict[str, int], dict[str, dict[str, TeacherStageTokens]]]:
    """Tokens served per client since the counters in `charged`, and the new counters.
    A client under a new uid (deleted and created again) counts from zero."""
    deltas: dict[str, int] = {}
    counters: dict[str, dict[str, TeacherStageTokens]] = {}
    for use in usage:
        entry = charged.get(use.name)
        base = entry.counters if entry is not None and entry.uid == use.uid else {}
        # A stage missing from the status (an entry that did not parse) keeps its count.
        served, seen = 0, dict(base)
        for stage, (fingerprint, tokens) in use.counters.items():
            last = base.get(stage)
            if last is not None and last.fingerprint == fingerprint:
                # A retry's Pod may see less of the stage than an earlier one did: only
                # growth beyond the largest count seen is new.
                served += max(tokens - last.tokens, 0)
                tokens = max(tokens, last.tokens)
            else:  # new, or rerun after a spec change (its counts restart at zero)
                served += tokens
            if tokens:
                seen[stage] = TeacherStageTokens(fingerprint=fingerprint, tokens=tokens)
            else:
                seen.pop(stage, None)
        counters[use.name] = seen
        if served:
            deltas[use.name] = served
    return deltas, counters


def _charge(cost: TeacherCost, name: str, amount: Decimal) -> None:
    """Add (or, undoing, subtract) an amount to a client, or to former clients when it
    has left."""
    entry = cost.charged.get(name)
    if entry is None:
        cost.former_clients = money(_dec(cost.former_clients) + amount)
    else:
        entry.dollars = money(_dec(entry.dollars) + amount)


def accrue(
    prev: TeacherCost | None,
    now: datetime,
    gpus: int,
    price: Decimal,
    busy: bool,
    usage: Sequence[ClientUsage],
) -> TeacherCost:
    """The Teacher's cost after one more observation at `now`.

    `gpus`: the server's GPUs x its Deployment's replicas, which held since the last
    observation (the operator is the only one that sets them, right after observing).
    `busy`: some LanguageModel needed the server during the interval (the clients of the
    last status). `usage`: every LanguageModel that uses the Teacher now.

    The first observation only takes the counters: tokens served before it were served
    before accounting began, with no GPU time observed to charge."""
    cost = prev.model_copy(deep=True) if prev is not None else TeacherCost()
    at = now.replace(microsecond=0)  # whole seconds: the intervals add up exactly
    last_at = parse_time(cost.observed_at)
    deltas, counters = _deltas(cost.charged, usage)
    elapsed = 0 if last_at is None else max(int((at - last_at).total_seconds()), 0)
    interval = micro(Decimal(elapsed * gpus) * price / Decimal(3600))
    last = cost.last_interval
    weights = dict(deltas)  # what the pot is split by
    if last_at is None:
        deltas, weights = {}, {}
    elif elapsed == 0 and deltas and last is not None and parse_time(last.end) == last_at:
        # More tokens reported at the end of the last closed interval (another client's
        # summary, seen a moment later): they join it. Undo its split (or its idle
        # charge) and split it again over all of them.
        if last.tokens:
            for name, share in apportion(_dec(last.dollars), last.tokens).items():
                _charge(cost, name, -share)
        else:
            cost.idle = money(_dec(cost.idle) - _dec(last.dollars))
        cost.pending = money(_dec(cost.pending) + _dec(last.dollars))
        for name, n in last.tokens.items():
            weights[name] = weights.get(name, 0) + n
    # The clients as they are now: a new uid under a known name starts a new account.
    for use in usage:
        entry = cost.charged.get(use.name)
        if entry is not None and entry.uid != use.uid:
            cost.former_clients = money(_dec(cost.former_clients) + _dec(entry.dollars))
            entry = None
        if entry is None and not counters[use.name] and use.name not in deltas:
            continue  # nothing served yet: nothing to remember
        entry = entry or TeacherCharge(uid=use.uid)
        entry.counters = counters[use.name]
        entry.tokens += deltas.get(use.name, 0)
        cost.charged[use.name] = entry
    pot = _dec(cost.pending) + interval
    if weights:
        for name, share in apportion(pot, weights).items():
            _charge(cost, name, share)
        cost.pending = money(Decimal(0))
        cost.last_interval = TeacherInterval(end=iso(at), dollars=money(pot), tokens=weights)
    elif busy:
        cost.pending = money(pot)
    elif pot or elapsed:  # idle (a second look within the same second changes nothing)
        cost.idle = money(_dec(cost.idle) + pot)
        cost.pending = money(Decimal(0))
        cost.last_interval = TeacherInterval(end=iso(at), dollars=money(pot))
    # Clients that no longer use the Teacher (deleted, or moved to another one): their
    # charges stay in the total, not in the list.
    present = {u.name for u in usage}
    for name in [n for n in cost.charged if n not in present]:
        gone = cost.charged.pop(name)
        cost.former_clients = money(_dec(cost.former_clients) + _dec(gone.dollars))
    cost.dollars = money(_dec(cost.dollars) + interval)
    cost.gpu_seconds += elapsed * gpus
    if last_at is None or at > last_at:
        cost.observed_at = iso(at)
    return cost


def share_of(teacher: Mapping[str, Any] | None, name: str, uid: str | None) -> Decimal:
    """What a Teacher (the object) charged this LanguageModel so far: its entry in the
    Teacher's `status.cost.charged`, if it is this very object (same uid)."""
    raw = (((teacher or {}).get("status") or {}).get("cost") or {}).get("charged") or {}
    try:
        entry = TeacherCharge.model_validate(raw.get(name) or {})
    except ValidationError:
        return Decimal(0)
    if not entry.uid or entry.uid != uid:
        return Decimal(0)
    return _dec(entry.dollars)
