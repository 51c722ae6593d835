"""A shared Teacher's GPU time charged to its LanguageModels (issue 20): the arithmetic,
the accrual over intervals, and the Teacher, LanguageModel and fleet statuses that carry
it. The emulator test at the end runs two LanguageModels of a fleet on one Teacher with
the operator's clock in the test's hands."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from kakugo_operator import settings
from kakugo_operator.reconcile import Observed, decide
from kakugo_operator.teacher import decide_teacher
from kakugo_operator.teacher_cost import (
    MICRO,
    ClientUsage,
    accrue,
    apportion,
    share_of,
    usage_of,
)

from kakugo_stages.status import TeacherCost
from tests.operator.operator_helpers import language_model

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETTINGS = settings.OperatorSettings(storage_uri="s3://b/runs")
#: 2 GPUs (H100 on demand, $4.00 an hour each, the settings' default): $8 an hour.
GPUS, PRICE = 2, Decimal("4.00")


# ------------------------------------------------------------------ apportion


def test_apportion_sums_exactly_by_largest_remainder() -> None:
    # A third each of a dollar: 333333 micro-dollars each, and the one left over to the
    # largest remainder, ties broken by name.
    assert apportion(Decimal("1.000000"), {"b": 1, "a": 1, "c": 1}) == {
        "a": Decimal("0.333334"),
        "b": Decimal("0.333333"),
        "c": Decimal("0.333333"),
    }
    # 2/3 and 1/3 of 1 micro-dollar: remainders 2 and 1, so the 2/3 client gets it.
    assert apportion(Decimal("0.000001"), {"x": 1, "y": 2}) == {
        "x": Decimal(0),
        "y": Decimal("0.000001"),
    }
    # Clients with no tokens take no share.
    assert apportion(Decimal("8.000000"), {"a": 600, "b": 200, "c": 0}) == {
        "a": Decimal("6.000000"),
        "b": Decimal("2.000000"),
    }
    rng = random.Random(20)
    for _ in range(500):
        amount = Decimal(rng.randrange(0, 10**9)) * MICRO
        weights = {f"lm{i}": rng.randrange(0, 10**6) for i in range(rng.randrange(1, 9))}
        weights["lm0"] += 1  # at least one positive weight
        shares = apportion(amount, weights)
        assert sum(shares.values()) == amount
        total = sum(weights.values())
        for name, share in shares.items():
            assert abs(share - amount * weights[name] / total) < MICRO
    with pytest.raises(ValueError, match="no positive weight"):
        apportion(Decimal(1), {"a": 0})
    with pytest.raises(ValueError, match="micro-dollars"):
        apportion(Decimal("0.0000001"), {"a": 1})


# ------------------------------------------------------------------ accrual


def use(name: str, **stages: int | tuple[str, int]) -> ClientUsage:
    """A client's counters: stage=tokens (fingerprint "fp") or stage=(fingerprint, tokens)."""
    counters = {s: v if isinstance(v, tuple) else ("fp", v) for s, v in stages.items()}
    return ClientUsage(name, f"uid-{name}", counters)


class Ledger:
    """The Teacher's account as the operator keeps it: in status (dumped and read back
    at every step, as a restarted operator would read it)."""

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None
        self.now = T0
        self.clients: list[str] = []

    def observe(
        self, after: float, *usage: ClientUsage, gpus: int = GPUS, clients: list[str] | None = None
    ) -> TeacherCost:
        self.now += timedelta(seconds=after)
        prev = TeacherCost.model_validate(self.status) if self.status is not None else None
        cost = accrue(prev, self.now, gpus, PRICE, bool(self.clients), usage)
        self.status = cost.dump()
        if clients is not None:
            self.clients = clients
        assert_adds_up(cost)
        return cost


def assert_adds_up(cost: TeacherCost) -> None:
    """Nothing is lost or made up: every dollar accrued is idle, pending or charged."""
    parts = [
        cost.idle,
        cost.pending,
        cost.former_clients,
        *(c.dollars for c in cost.charged.values()),
    ]
    assert sum(Decimal(p) for p in parts) == Decimal(cost.dollars)


def charged(cost: TeacherCost) -> dict[str, str]:
    return {n: c.dollars for n, c in cost.charged.items()}


def test_intervals_are_split_by_tokens_served_in_them() -> None:
    book = Ledger()
    # The first observation takes the counters: tokens served before it are not charged.
    cost = book.observe(0, use("a", topics=50), use("b"), clients=["a", "b"])
    assert cost.dollars == "0.000000" and charged(cost) == {"a": "0.000000"}
    # An hour of 2 GPUs ($8): a was served 600 tokens, b 200.
    cost = book.observe(3600, use("a", topics=650), use("b", topics=200))
    assert charged(cost) == {"a": "6.000000", "b": "2.000000"}
    assert (cost.dollars, cost.gpu_seconds, cost.idle) == ("8.000000", 7200, "0.000000")
    # Half an hour ($4), the other way round, over two stages.
    cost = book.observe(1800, use("a", topics=650, scenarios=100), use("b", topics=500))
    assert charged(cost) == {"a": "7.000000", "b": "5.000000"}
    assert cost.charged["a"].tokens == 700 and cost.charged["b"].tokens == 500
    # No client and no tokens: idle, charged to the Teacher.
    book.clients = []
    cost = book.observe(900, use("a", topics=650, scenarios=100), use("b", topics=500))
    assert cost.idle == "2.000000" and charged(cost) == {"a": "7.000000", "b": "5.000000"}
    # Scaled to zero: no GPU, no cost.
    cost = book.observe(3600, use("a", topics=650, scenarios=100), use("b", topics=500), gpus=0)
    assert (cost.dollars, cost.idle) == ("14.000000", "2.000000")


def test_time_before_the_tokens_are_reported_waits_for_them() -> None:
    book = Ledger()
    book.observe(0, use("a"), use("b"), clients=["a", "b"])
    # Clients in their stages, no Pod has ended yet: pending.
    cost = book.observe(1800, use("a"), use("b"))
    assert (cost.pending, cost.idle, charged(cost)) == ("4.000000", "0.000000", {})
    # The summaries come: the whole hour goes by their tokens.
    cost = book.observe(1800, use("a", topics=300), use("b", topics=100))
    assert charged(cost) == {"a": "6.000000", "b": "2.000000"}
    assert cost.pending == "0.000000"
    # Clients that leave without reporting tokens (a stage that failed without a
    # summary): what was pending becomes idle once nobody needs the server.
    cost = book.observe(900, use("a", topics=300), use("b", topics=100), clients=[])
    assert cost.pending == "2.000000"
    cost = book.observe(0, use("a", topics=300), use("b", topics=100))
    assert (cost.pending, cost.idle) == ("0.000000", "2.000000")


def test_reports_in_the_same_second_join_one_interval() -> None:
    """Two clients' summaries are seen one after the other: the second, in the same
    second, joins the interval the first closed, so the order does not matter."""
    for first, second in (("a", "b"), ("b", "a")):
        book = Ledger()
        book.observe(0, use("a"), use("b"), clients=["a", "b"])
        tokens = {"a": 600, "b": 200}
        cost = book.observe(3600, use(first, topics=tokens[first]), use(second))
        assert charged(cost) == {first: "8.000000"}
        cost = book.observe(0, use("a", topics=600), use("b", topics=200))
        assert charged(cost) == {"a": "6.000000", "b": "2.000000"}
        # Seen again: nothing moves.
        assert book.observe(0, use("a", topics=600), use("b", topics=200)) == cost
    # Tokens reported in the second an idle interval closed turn it into theirs.
    book = Ledger()
    book.observe(0, use("a"))
    cost = book.observe(600, use("a"))
    assert cost.idle == "1.333333"
    cost = book.observe(0, use("a", topics=10))
    assert (cost.idle, charged(cost)) == ("0.000000", {"a": "1.333333"})


def test_retries_and_spec_changes_count_tokens_once() -> None:
    book = Ledger()
    book.observe(0, use("a"), use("b"), clients=["a", "b"])
    book.observe(3600, use("a", topics=100), use("b", topics=100))
    # A retry of a's stage: a Pod of the new attempt sees less of the stage (nothing new
    # for a), then the stage's total grows by 300 while b's grows by 100.
    cost = book.observe(3600, use("a", topics=40), use("b", topics=200))
    assert charged(cost) == {"a": "4.000000", "b": "12.000000"}
    cost = book.observe(3600, use("a", topics=400), use("b", topics=300))
    assert charged(cost) == {"a": "10.000000", "b": "14.000000"}
    assert cost.charged["a"].tokens == 400
    # A spec change reruns a's stage (new fingerprint, counts from zero): all of its new
    # count is new, though it is below the old one.
    cost = book.observe(3600, use("a", topics=("fp2", 100)), use("b", topics=400))
    assert charged(cost) == {"a": "14.000000", "b": "18.000000"}
    # A status whose stage entry did not parse (missing) forgets nothing.
    cost = book.observe(3600, use("a"), use("b", topics=500))
    assert charged(cost) == {"a": "14.000000", "b": "26.000000"}
    cost = book.observe(3600, use("a", topics=("fp2", 200)), use("b", topics=500))
    assert charged(cost) == {"a": "22.000000", "b": "26.000000"}


def test_clients_that_go_keep_their_charges_in_the_total() -> None:
    book = Ledger()
    book.observe(0, use("a"), use("b"), clients=["a", "b"])
    book.observe(3600, use("a", topics=100), use("b", topics=300))
    # b is deleted: its charges move to former clients.
    cost = book.observe(1, use("a", topics=100))
    assert charged(cost) == {"a": "2.000000"} and cost.former_clients == "6.000000"
    # a is deleted and created again under its name: a new account, from zero tokens.
    again = ClientUsage("a", "uid-a2", {"topics": ("fp", 50)})
    cost = book.observe(1799, again)
    assert charged(cost) == {"a": "4.000000"}
    assert cost.charged["a"].uid == "uid-a2" and cost.former_clients == "8.000000"


def test_the_account_survives_a_restart_as_status() -> None:
    """The same observations from the status alone (a restarted operator) and in one go
    give the same account; the status stays bounded."""
    steps = [
        (0, [use("a"), use("b")]),
        (3600, [use("a", topics=650), use("b", topics=200)]),
        (1800, [use("a", topics=650, scenarios=100), use("b", topics=500)]),
    ]
    book = Ledger()
    book.clients = ["a", "b"]
    for after, usage in steps:
        book.observe(after, *usage)
    cost = TeacherCost.model_validate(book.status)
    direct, now = None, T0
    for after, usage in steps:
        now += timedelta(seconds=after)
        direct = accrue(direct, now, GPUS, PRICE, True, usage)
    assert direct == cost
    # Bounded: one entry per client, with one counter per teacher stage it ran.
    assert set(book.status) <= {
        "observedAt",
        "dollars",
        "gpuSeconds",
        "idle",
        "pending",
        "formerClients",
        "charged",
        "lastInterval",
    }
    assert {s: len(c["counters"]) for s, c in book.status["charged"].items()} == {"a": 2, "b": 1}


# ------------------------------------------------------------------ the statuses

TEACHER_SPEC = {"model": "m", "gpus": 2, "resources": {"gpuType": "NVIDIA-A100-SXM4-80GB"}}


def lm_status(topics: int, fingerprint: str = "fp") -> dict[str, Any]:
    return {
        "stages": [
            {
                "name": "topics",
                "fingerprint": fingerprint,
                "counts": {"promptTokens": topics // 2, "completionTokens": topics - topics // 2},
            },
            {"name": "train", "fingerprint": "x", "counts": {"promptTokens": 10**6}},
            {"name": "scenarios", "fingerprint": {"not": "a string"}},
        ]
    }


def test_usage_reads_the_teacher_stages_of_a_status() -> None:
    assert usage_of("a", "u", lm_status(301)) == ClientUsage("a", "u", {"topics": ("fp", 301)})
    assert usage_of("a", "u", None) == ClientUsage("a", "u", {})


def test_the_teacher_charges_by_its_deployment_and_gpu_type() -> None:
    deploy = {"spec": {"replicas": 1}, "status": {"readyReplicas": 1}}
    first = decide_teacher(
        "t", "ns", TEACHER_SPEC, {}, deploy, ["a"], T0, SETTINGS, usage=[usage_of("a", "ua", {})]
    )
    later = T0 + timedelta(hours=1)
    plan = decide_teacher(
        "t",
        "ns",
        TEACHER_SPEC,
        first.status.dump(),
        deploy,
        ["a"],
        later,
        SETTINGS,
        usage=[usage_of("a", "ua", lm_status(100))],
    )
    # 2 A100s on demand for an hour at $2.50 each.
    cost = plan.status.cost
    assert cost is not None and cost.dollars == "5.000000"
    assert cost.charged["a"].dollars == "5.000000"
    # No Deployment (yet, or deleted): no GPU time.
    none = decide_teacher(
        "t",
        "ns",
        TEACHER_SPEC,
        plan.status.dump(),
        None,
        ["a"],
        later + timedelta(hours=1),
        SETTINGS,
    )
    assert none.status.cost is not None and none.status.cost.dollars == "5.000000"
    # A CPU server costs no GPU time.
    cpu = {"model": "m", "device": "cpu", "gpus": 0}
    plan = decide_teacher("t", "ns", cpu, first.status.dump(), deploy, ["a"], later, SETTINGS)
    assert plan.status.cost is not None and plan.status.cost.dollars == "0.000000"
    # A status with a field that does not parse keeps its account.
    broken = {**first.status.dump(), "replicas": "many"}
    plan = decide_teacher("t", "ns", TEACHER_SPEC, broken, deploy, ["a"], later, SETTINGS)
    assert plan.status.cost is not None and plan.status.cost.dollars == "5.000000"


def teacher_body(charged: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "t"},
        "status": {
            "url": "http://t.kakugo.svc:8000/v1",
            "model": "m",
            "conditions": [{"type": "Ready", "status": "True"}],
            "cost": {"charged": charged},
        },
    }


def test_a_languagemodel_carries_its_share_in_its_cost_and_budget() -> None:
    # Proceed: the forecast of the full recipe is far over $5; this is about what is spent.
    budget = {"maxDollars": 5, "onForecastOverBudget": "Proceed"}
    spec = language_model(teacher={"ref": {"name": "t"}}, budget=budget)["spec"]
    obs = Observed("yoruba", "kakugo", 1, spec, {}, [], [], None, T0, uid="u1")
    teacher = teacher_body({"yoruba": {"uid": "u1", "dollars": "4.123456"}})
    plan = decide(replace(obs, teacher=teacher), SETTINGS)
    cost = plan.status.cost
    assert cost is not None
    assert (cost.teacher_share, cost.dollars) == ("4.1235", "4.1235")
    assert plan.create  # under the budget
    # Another object of that name (a uid that is not ours): not our share.
    assert share_of(teacher, "yoruba", "u2") == 0
    # The share counts against the budget.
    over = teacher_body({"yoruba": {"uid": "u1", "dollars": "5.000001"}})
    plan = decide(replace(obs, teacher=over), SETTINGS)
    assert plan.create == [] and plan.status.phase == "Stalled"
    assert plan.status.cost is not None and plan.status.cost.dollars == "5.0000"


def test_a_fleet_sums_its_members_with_their_shares() -> None:
    from kakugo_operator.fleet import decide_fleet

    def member(name: str, dollars: str, share: str | None) -> dict[str, Any]:
        cost: dict[str, Any] = {"dollars": dollars, "gpuHours": "0.0000"}
        if share is not None:
            cost["teacherShare"] = share
        return {
            "metadata": {"name": name, "labels": {"kakugo.io/fleet": "f"}, "generation": 1},
            "spec": {},
            "status": {"observedGeneration": 1, "phase": "Running", "cost": cost},
        }

    spec = {
        "languages": [{"language": "yo"}, {"language": "sw"}],
        "template": {"teacher": {"ref": {"name": "t"}}},
    }
    children = [member("yor-latn", "7.5000", "7.0000"), member("swh-latn", "5.0000", "5.0000")]
    plan = decide_fleet("f", "ns", 1, spec, {}, children, {}, T0)
    cost = plan.status.cost
    assert cost is not None
    assert (cost.dollars, cost.teacher_share) == ("12.5000", "12.0000")


def test_teacher_cost_series() -> None:
    from kakugo_operator import metrics
    from prometheus_client import generate_latest

    book = Ledger()
    book.observe(0, use("a"), use("b"), clients=["a", "b"])
    book.observe(3600, use("a", topics=600), use("b", topics=200))
    cost = book.observe(900, use("a", topics=600), use("b", topics=200), clients=[])
    metrics.observe_teacher("units", "shared", ready=True, clients=0, cost=cost)
    metrics.observe_plan(
        "units", "a", {"cost": {"dollars": "6.0000", "teacherShare": "6.0000"}}, [], []
    )
    text = generate_latest(metrics.REGISTRY).decode()
    series = 'kakugo_teacher_cost_dollars{charged_to="%s",namespace="units",teacher="shared"} %s'
    assert series % ("languagemodels", "8.0") in text
    assert series % ("pending", "2.0") in text
    assert series % ("idle", "0.0") in text
    assert 'kakugo_teacher_share_dollars{languagemodel="a",namespace="units"} 6.0' in text
    metrics.forget("units", "a")
    metrics.forget_teacher("units", "shared")
    assert 'namespace="units"' not in generate_latest(metrics.REGISTRY).decode()


# ------------------------------------------------------------------ on the emulator


class Clock:
    """The operator's clock (`handlers.now`), frozen, moved by the test: an hour of GPU
    time passes in a step, not in an hour."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_languagemodels_share_a_teacher(cluster: Any, operator: Any, monkeypatch) -> None:
    from kakugo_operator import handlers

    from tests.operator.operator_helpers import NS, complete_job, job, stage, summary, wait_for
    from tests.operator.test_fleet import fleet, fstatus, lm
    from tests.operator.test_teacher_metrics import (
        TEACHER,
        metrics_text,
        set_ready,
        teacher_status,
    )

    clock = Clock()
    monkeypatch.setattr(handlers, "now", clock)
    members = ("swh-latn", "yor-latn")

    def cost() -> dict[str, Any]:
        return teacher_status(cluster).get("cost") or {}

    def shares() -> dict[str, str]:
        return {n: c["dollars"] for n, c in (cost().get("charged") or {}).items()}

    def tokens(name: str, prompt: int, completion: int) -> str:
        return summary(name, prompt_tokens=prompt, completion_tokens=completion)

    # One Teacher of 2 H100s ($4.00 an hour each: $8 an hour), two fleet members on it.
    cluster.create(TEACHER)
    wait_for(lambda: cluster.get("Deployment", NS, "gpt-oss-120b"))
    set_ready(cluster, "gpt-oss-120b", 1)
    template = {
        "teacher": {"ref": {"name": "gpt-oss-120b"}},
        "storage": {"uri": "s3://kakugo-artifacts/runs"},
        "data": {"topics": {"shards": 1}, "scenarios": {"shards": 1}},
    }
    cluster.create(fleet(["yo", "sw"], template=template))
    for member in members:
        job(cluster, f"{member}-topics-1")
        job(cluster, f"{member}-scenarios-1")
        # Its daemon saw its Jobs run (they are in its index: the clock may jump).
        wait_for(lambda m=member: stage(lm(cluster, m)["status"], "scenarios").get("shards"))
    wait_for(lambda: teacher_status(cluster).get("clients") == list(members))
    wait_for(lambda: cost().get("observedAt") == handlers.iso(clock.at), what="first look")

    # An hour: yor-latn is served 600 tokens, swh-latn 200 (seen one after the other).
    clock.advance(3600)
    complete_job(cluster, "yor-latn-topics-1", tokens("topics", 200, 400))
    complete_job(cluster, "swh-latn-topics-1", tokens("topics", 100, 100))
    wait_for(
        lambda: shares() == {"yor-latn": "6.000000", "swh-latn": "2.000000"},
        what="the first hour split 3:1",
    )

    # The operator goes down; meanwhile half an hour passes and the other stage reports,
    # 200 tokens for yor-latn and 600 for swh-latn.
    operator.stop()
    complete_job(cluster, "yor-latn-scenarios-1", tokens("scenarios", 100, 100))
    complete_job(cluster, "swh-latn-scenarios-1", tokens("scenarios", 300, 300))
    clock.advance(1800)
    operator.start()
    wait_for(
        lambda: shares() == {"yor-latn": "7.000000", "swh-latn": "5.000000"},
        what="the half hour split 1:3 after the restart",
    )

    # Nobody needs the server for half an hour: idle, the Teacher's own; then it scales
    # to zero and costs nothing more.
    cluster.patch("LanguageFleet", NS, "west", {"spec": {"suspend": True}})
    wait_for(lambda: teacher_status(cluster).get("clients") == [], what="no client")
    clock.advance(1800)
    wait_for(lambda: cluster.get("Deployment", NS, "gpt-oss-120b")["spec"]["replicas"] == 0)
    wait_for(lambda: cost().get("idle") == "4.000000", what="the idle half hour")
    clock.advance(3600)
    wait_for(lambda: cost().get("observedAt") == handlers.iso(clock.at), what="a look at zero")

    final = cost()
    assert (final["dollars"], final["idle"], final["pending"]) == (
        "16.000000",
        "4.000000",
        "0.000000",
    )
    assert final["gpuSeconds"] == 2 * (3600 + 1800 + 1800)
    assert {n: c["tokens"] for n, c in final["charged"].items()} == {
        "yor-latn": 800,
        "swh-latn": 800,
    }
    # Each member carries its share in its cost, and the fleet sums them.
    for member, share in (("yor-latn", "7.0000"), ("swh-latn", "5.0000")):
        wait_for(
            lambda m=member, s=share: lm(cluster, m)["status"]["cost"].get("teacherShare") == s
        )
        assert lm(cluster, member)["status"]["cost"]["dollars"] == share
    st = wait_for(lambda: (s := fstatus(cluster))["cost"].get("teacherShare") == "12.0000" and s)
    assert st["cost"]["dollars"] == "12.0000"
    assert st["cost"]["byLanguage"] == {"yor-latn": "7.0000", "swh-latn": "5.0000"}
    series = (
        'kakugo_teacher_cost_dollars{charged_to="%s",namespace="kakugo",teacher="gpt-oss-120b"}'
    )
    text = wait_for(lambda: (t := metrics_text()) and (series % "idle") + " 4.0" in t and t)
    assert (series % "languagemodels") + " 12.0" in text
    assert 'kakugo_teacher_share_dollars{languagemodel="yor-latn",namespace="kakugo"} 7.0' in text


def test_the_account_fits_the_teacher_status_schema() -> None:
    """What the Teacher writes passes its CRD's status schema (the API server would prune
    or refuse what the schema lacks)."""
    from openapi_schema_validator import OAS30Validator

    from kakugo_stages.crds import all_crds

    crd = all_crds()["teachers.kakugo.io.yaml"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    deploy = {"spec": {"replicas": 1}}
    usage = [usage_of("a", "ua", lm_status(0)), usage_of("b", "ub", lm_status(0))]
    first = decide_teacher(
        "t", "ns", TEACHER_SPEC, {}, deploy, ["a", "b"], T0, SETTINGS, usage=usage
    )
    usage = [usage_of("a", "ua", lm_status(30)), usage_of("b", "ub", lm_status(10))]
    later = T0 + timedelta(minutes=7)
    plan = decide_teacher(
        "t", "ns", TEACHER_SPEC, first.status.dump(), deploy, ["a"], later, SETTINGS, usage=usage
    )
    status = plan.status.dump()
    assert status["cost"]["charged"]["a"]["counters"]["topics"]["tokens"] == 30
    assert status["cost"]["lastInterval"]["tokens"] == {"a": 30, "b": 10}
    assert not [e.message for e in OAS30Validator(schema).iter_errors(status)]
