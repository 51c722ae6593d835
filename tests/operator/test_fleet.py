"""LanguageFleet: members from a template, changes and removals, the GPU concurrency limit,
failures that stay local, invalid languages, the shared Teacher and the aggregates.

End to end with Kopf (KopfRunner) against the KMock emulator, plus the pure decision."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kakugo_operator.fleet import (
    ADMITTED_ANNOTATION,
    FLEET_LABEL,
    SPEC_HASH_ANNOTATION,
    AdmissionLedger,
    decide_fleet,
    member_labels,
    merge_diff,
    spec_hash,
)

from kakugo_stages.graph import STAGES
from tests.operator.k8s_emulator import PLURALS, Api
from tests.operator.operator_helpers import (
    NS,
    Operator,
    complete_job,
    complete_skipped,
    condition,
    fail_job,
    finish_pod,
    job,
    make_pods,
    stage,
    summary,
    wait_for,
)

# Kopf runs for real against the emulator: not in `make unit`.
pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]
PLURALS.setdefault("LanguageFleet", ("kakugo.io/v1alpha1", "languagefleets"))

ENDPOINT = {"endpoint": {"url": "https://api.example.com/v1", "model": "gpt-oss-120b"}}


def fleet(languages: list[Any], name: str = "west", **spec: Any) -> dict[str, Any]:
    template = spec.pop("template", None) or {
        "teacher": ENDPOINT,
        "storage": {"uri": "s3://kakugo-artifacts/runs"},
        "data": {"topics": {"shards": 1}},
    }
    entries = [{"language": x} if isinstance(x, str) else x for x in languages]
    return {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageFleet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"languages": entries, "template": template, **spec},
    }


def fstatus(api: Api, name: str = "west") -> dict[str, Any]:
    return (api.get("LanguageFleet", NS, name) or {}).get("status") or {}


def lm(api: Api, name: str) -> dict[str, Any]:
    return api.get("LanguageModel", NS, name) or {}


def gone(api: Api, name: str) -> bool:
    obj = lm(api, name)
    return obj == {} or bool(obj["metadata"].get("deletionTimestamp"))


def jobs(api: Api) -> set[str]:
    return {j["metadata"]["name"] for j in api.list("Job", NS)}


def run_through(api: Api, member: str, stages: tuple[str, ...], **kw: Any) -> None:
    for name in stages:
        complete_job(api, f"{member}-{name}-1", summary(name), **kw.get(name, {}))


# ------------------------------------------------------------------ end to end


def test_members_invalid_language_and_aggregates(cluster: Api, operator: Operator) -> None:
    body = cluster.create(
        fleet(
            [
                "Yoruba",
                {"language": "sw", "overrides": {"data": {"translate": {"samples": 100}}}},
                "Klingon",
                {"language": "ig", "overrides": {"data": {"topics": {"shards": -1}}}},
            ]
        )
    )
    # The valid languages get their LanguageModel and first Job; the invalid ones are
    # reported, with the field that is wrong, and block nothing.
    job(cluster, "yor-latn-topics-1")
    job(cluster, "swh-latn-topics-1")
    yo = lm(cluster, "yor-latn")
    assert yo["spec"]["language"] == "Yoruba"
    assert yo["spec"]["teacher"] == ENDPOINT
    assert yo["metadata"]["labels"][FLEET_LABEL] == "west"
    assert yo["metadata"]["labels"]["kakugo.io/language"] == "yor_Latn"
    (owner,) = yo["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "LanguageFleet",
        "west",
        body["metadata"]["uid"],
    )
    sw = lm(cluster, "swh-latn")
    assert sw["spec"]["data"] == {"topics": {"shards": 1}, "translate": {"samples": 100}}
    assert lm(cluster, "ibo-latn") == {}
    st = wait_for(
        lambda: (s := fstatus(cluster)).get("members") == 2 and s.get("running") == 2 and s
    )
    assert (st["languages"], st["invalid"]) == (4, 2)
    bad = {b["language"]: b for b in st["invalidLanguages"]}
    assert "spec.languages[2].language" in bad["Klingon"]["errors"][0]
    assert "Klingon" in bad["Klingon"]["errors"][0]
    assert "spec.data.topics.shards" in bad["ig"]["errors"][0]
    assert bad["ig"]["name"] == "ibo-latn"
    assert condition(st, "Degraded")["reason"] == "InvalidLanguages"
    assert (condition(st, "Stalled")["status"], condition(st, "Stalled")["reason"]) == (
        "True",
        "InvalidLanguages",
    )
    assert condition(st, "Reconciling")["status"] == "True"
    assert condition(st, "Ready")["status"] == "False"

    # Both pipelines to the end: a GPU hour of training each, an evaluation each.
    start = datetime.now(UTC) - timedelta(hours=2)
    gpu = {"train": {"started": start, "finished": start + timedelta(hours=1)}}
    deltas = {"yor-latn": (40.0, 50.0), "swh-latn": (50.0, 56.0)}
    for member in ("yor-latn", "swh-latn"):
        run_through(cluster, member, STAGES[: STAGES.index("evaluate")], **gpu)
        base, tuned = deltas[member]
        complete_job(
            cluster,
            f"{member}-evaluate-1",
            summary(
                "evaluate",
                evaluation={
                    "belebele": {"base": base, "tuned": tuned, "delta": tuned - base},
                    "sib200": {"base": 30.0, "tuned": 31.0, "delta": None},
                },
            ),
            started=start,
            finished=start,
        )
        complete_skipped(cluster, member)
    st = wait_for(lambda: (s := fstatus(cluster)).get("ready") == 2 and s, timeout=20)
    children = {n: lm(cluster, n)["status"] for n in ("yor-latn", "swh-latn")}
    assert all(c["phase"] == "Succeeded" for c in children.values())
    # The aggregates add up: the fleet's cost is the sum of its members'.
    total = sum(Decimal(c["cost"]["dollars"]) for c in children.values())
    assert Decimal(st["cost"]["dollars"]) == total
    assert st["cost"]["byLanguage"] == {n: c["cost"]["dollars"] for n, c in children.items()}
    # So is its forecast (each member's status.forecast).
    forecasts = [Decimal(c["forecast"]["dollars"]) for c in children.values()]
    assert Decimal(st["cost"]["forecast"]) == sum(forecasts) > 0
    # 1 GPU x 1 h x $4 of training, plus 6 teacher stages x (1000 x $0.15 + 2000 x $0.60)/1M.
    assert st["cost"]["byLanguage"]["yor-latn"] == "4.0081"
    assert st["cost"]["dollars"] == "8.0162"
    assert st["evaluation"]["belebele"] == {"meanDelta": 8.0, "languages": 2}
    assert st["evaluation"]["sib200"] == {"meanDelta": 1.0, "languages": 2}
    assert (st["succeeded"], st["running"], st["stalled"]) == (2, 0, 0)
    assert st["phases"] == {"Succeeded": 2}
    assert condition(st, "Ready")["status"] == "True"
    assert condition(st, "Reconciling")["status"] == "False"
    assert condition(st, "Stalled")["reason"] == "InvalidLanguages"  # still listed
    assert st["observedGeneration"] == 1

    # Fixing the entries creates the missing members.
    cluster.patch(
        "LanguageFleet",
        NS,
        "west",
        {
            "spec": {
                "languages": [
                    {"language": "Yoruba"},
                    {"language": "sw", "overrides": {"data": {"translate": {"samples": 100}}}},
                    {"language": "ig"},
                ]
            }
        },
    )
    job(cluster, "ibo-latn-topics-1")
    st = wait_for(
        lambda: (
            (s := fstatus(cluster)).get("observedGeneration") == 2 and s.get("invalid") == 0 and s
        )
    )
    assert condition(st, "Stalled")["status"] == "False"
    assert condition(st, "Degraded")["status"] == "False"


def test_change_and_remove_languages(cluster: Api, operator: Operator, tmp_path: Path) -> None:
    template = {
        "teacher": ENDPOINT,
        "storage": {"uri": f"file://{tmp_path}"},
        "data": {"topics": {"shards": 1}},
    }
    cluster.create(fleet(["yo", "sw", "ha"], template=template, artifactPolicy="Delete"))
    for member in ("yor-latn", "swh-latn", "hau-latn"):
        job(cluster, f"{member}-topics-1")
        (tmp_path / NS / member).mkdir(parents=True, exist_ok=True)
        (tmp_path / NS / member / "spec.yaml").write_text("language: x\n")
    # Change the template (every member), an override (one member), remove sw, add ig.
    cluster.patch(
        "LanguageFleet",
        NS,
        "west",
        {
            "spec": {
                "template": {"data": {"topics": {"shards": 2}}},
                "languages": [
                    {"language": "yo"},
                    {
                        "language": "ha",
                        "overrides": {
                            "data": {"mix": {"sources": ["topics", "scenarios", "translated"]}}
                        },
                    },
                    {"language": "ig"},
                ],
            }
        },
    )
    job(cluster, "ibo-latn-topics-1")
    wait_for(lambda: gone(cluster, "swh-latn"), what="sw deleted")
    # With artifactPolicy Delete, the removed member's artifacts went with it.
    wait_for(
        lambda: not (tmp_path / NS / "swh-latn" / "spec.yaml").exists(), what="sw artifacts deleted"
    )
    assert (tmp_path / NS / "yor-latn" / "spec.yaml").exists()
    yo = wait_for(
        lambda: (x := lm(cluster, "yor-latn"))["spec"]["data"]["topics"]["shards"] == 2 and x
    )
    # At least one new generation (the emulator counts a repeated identical patch too).
    assert yo["metadata"]["generation"] >= 2
    ha = lm(cluster, "hau-latn")
    assert ha["spec"]["data"]["mix"]["sources"] == ["topics", "scenarios", "translated"]
    # Their own operator loop reruns the stages whose inputs moved.
    rerun = job(cluster, "yor-latn-topics-2")
    assert rerun["spec"]["completions"] == 2
    wait_for(
        lambda: (
            (x := lm(cluster, "yor-latn")).get("status", {}).get("observedGeneration")
            == x["metadata"]["generation"]
        )
    )
    st = wait_for(
        lambda: (
            (s := fstatus(cluster)).get("members") == 3 and s.get("observedGeneration") == 2 and s
        )
    )
    assert sorted(r["name"] for r in st["memberStatus"]) == ["hau-latn", "ibo-latn", "yor-latn"]
    events = wait_for(
        lambda: [e for e in cluster.list("Event", NS) if e.get("reason") == "MemberDeleted"]
    )
    assert "artifacts deleted" in events[0]["message"]

    # Retain keeps the artifacts of a removed member.
    cluster.patch(
        "LanguageFleet",
        NS,
        "west",
        {"spec": {"artifactPolicy": "Retain", "languages": [{"language": "yo"}]}},
    )
    wait_for(
        lambda: gone(cluster, "ibo-latn") and gone(cluster, "hau-latn"), what="ig and ha deleted"
    )
    time.sleep(0.5)
    assert (tmp_path / NS / "hau-latn" / "spec.yaml").exists()


def test_deleting_the_fleet_with_delete_policy(
    cluster: Api, operator: Operator, tmp_path: Path
) -> None:
    template = {"teacher": ENDPOINT, "storage": {"uri": f"file://{tmp_path}"}}
    cluster.create(fleet(["yo", "sw"], template=template, artifactPolicy="Delete"))
    for member in ("yor-latn", "swh-latn"):
        job(cluster, f"{member}-topics-1")
        (tmp_path / NS / member).mkdir(parents=True, exist_ok=True)
        (tmp_path / NS / member / "spec.yaml").write_text("language: x\n")
    cluster.delete("LanguageFleet", NS, "west")
    # The fleet's finalizer deletes its members with their artifacts (the garbage
    # collector would delete the members anyway, keeping the artifacts).
    wait_for(lambda: gone(cluster, "yor-latn") and gone(cluster, "swh-latn"))
    wait_for(
        lambda: (
            not any((tmp_path / NS / m / "spec.yaml").exists() for m in ("yor-latn", "swh-latn"))
        ),
        what="artifacts deleted",
    )
    wait_for(lambda: cluster.get("LanguageFleet", NS, "west") is None, what="fleet gone")


def queued(api: Api, member: str) -> bool:
    status = lm(api, member).get("status") or {}
    return (
        status.get("phase") == "Queued"
        and condition(status, "Ready").get("reason") == "WaitingForGPUQuota"
    )


def topics_jobs(api: Api, attempt: int = 1) -> list[str]:
    return sorted(
        j.removesuffix(f"-topics-{attempt}") for j in jobs(api) if j.endswith(f"-topics-{attempt}")
    )


GPU_TOPICS = {
    "teacher": ENDPOINT,
    "storage": {"uri": "s3://kakugo-artifacts/runs"},
    "data": {"topics": {"shards": 1}},
    "resources": {"topics": {"gpus": 1}},
}
ROOT_STAGES = ("topics", "scenarios", "contexts", "translate")
#: The four stages that read no other stage use GPUs here: a member runs them together
#: (the stage DAG) under one admission, and leaves its GPU stages for revise (CPU).
GPU_ROOTS = {**GPU_TOPICS, "resources": {s: {"gpus": 1} for s in ROOT_STAGES}}


def members_with_jobs(api: Api) -> list[str]:
    return sorted({j.rsplit("-", 2)[0] for j in jobs(api)})


def roots(member: str) -> set[str]:
    return {f"{member}-{s}-1" for s in ROOT_STAGES}


def test_concurrency_limit_holds(cluster: Api, operator: Operator) -> None:
    members = ["ibo-latn", "swh-latn", "yor-latn"]
    cluster.create(fleet(["yo", "sw", "ig"], template=GPU_ROOTS, maxConcurrent=1))
    (first,) = wait_for(lambda: members_with_jobs(cluster))
    # The admitted member runs its four GPU stages at once; the others wait, Queued.
    wait_for(lambda: jobs(cluster) == roots(first), what="the first member's root stages")
    rest = [m for m in members if m != first]
    wait_for(lambda: all(queued(cluster, m) for m in rest))
    st = wait_for(
        lambda: (s := fstatus(cluster)).get("phases") == {"Queued": 2, "Running": 1} and s
    )
    assert st["gpu"] == {"maxConcurrent": 1, "inUse": 1, "queued": rest}
    assert lm(cluster, first)["metadata"]["annotations"][ADMITTED_ANNOTATION] == "true"
    for m in rest:
        assert ADMITTED_ANNOTATION not in (lm(cluster, m)["metadata"].get("annotations") or {})
        waiting = lm(cluster, m)["status"]["progress"]["waiting"]
        assert waiting == dict.fromkeys(ROOT_STAGES, "GPUQuota")
    row = next(r for r in st["memberStatus"] if r["name"] == first)
    assert row["stages"] == list(ROOT_STAGES)
    # A restart derives the same admissions from the members: still one member on GPUs.
    operator.stop()
    operator.start()
    time.sleep(2)
    assert jobs(cluster) == roots(first)
    # The first leaves its GPU stages (revise runs on CPU): the slot goes to another.
    for name in ROOT_STAGES[:-1]:
        complete_job(cluster, f"{first}-{name}-1", summary(name))
    time.sleep(1.5)  # one GPU stage (translate) still runs: the slot is still held
    assert members_with_jobs(cluster) == [first]
    complete_job(cluster, f"{first}-translate-1", summary("translate"))
    job(cluster, f"{first}-revise-1")  # CPU stages are not limited
    (second,) = wait_for(lambda: [m for m in members_with_jobs(cluster) if m != first] or None)
    (third,) = [m for m in rest if m != second]
    wait_for(lambda: roots(second) <= jobs(cluster))
    time.sleep(1.5)
    assert members_with_jobs(cluster) == sorted([first, second])
    assert queued(cluster, third)
    wait_for(
        lambda: (
            ADMITTED_ANNOTATION not in (lm(cluster, first)["metadata"].get("annotations") or {})
        ),
        what="the first's admission taken back",
    )
    for name in ROOT_STAGES:
        complete_job(cluster, f"{second}-{name}-1", summary(name))
    job(cluster, f"{third}-topics-1")  # one after the other
    assert topics_jobs(cluster) == members


def test_failed_member_does_not_stop_the_others(cluster: Api, operator: Operator) -> None:
    cluster.create(fleet(["yo", "sw"], template=GPU_TOPICS, maxConcurrent=1))
    (failing,) = wait_for(lambda: topics_jobs(cluster))
    (other,) = [m for m in ("swh-latn", "yor-latn") if m != failing]
    for attempt in (1, 2, 3):  # retry budget 2: the third failure stalls it
        name = f"{failing}-topics-{attempt}"
        (pod, *_) = make_pods(cluster, job(cluster, name), count=1)
        finish_pod(cluster, pod, exit_code=1, message=summary("topics", error="boom"))
        fail_job(cluster, name)
    # The stalled member frees its GPU slot; the other one runs.
    job(cluster, f"{other}-topics-1")
    complete_job(cluster, f"{other}-topics-1", summary("topics"))
    job(cluster, f"{other}-scenarios-1")  # its CPU stages ran all along (the stage DAG)
    wait_for(lambda: stage(lm(cluster, other)["status"], "topics")["state"] == "Succeeded")
    st = wait_for(
        lambda: (s := fstatus(cluster)).get("stalled") == 1 and s.get("running") == 1 and s
    )
    (stalled,) = st["stalledLanguages"]
    assert (stalled["name"], stalled["reason"]) == (failing, "StageFailed")
    assert stalled["language"] == {"yor-latn": "yo", "swh-latn": "sw"}[failing]
    assert "boom" in stalled["message"]
    cond = condition(st, "Stalled")
    assert (cond["status"], cond["reason"]) == ("True", "MembersStalled")
    assert f"{failing} (StageFailed)" in cond["message"]
    assert condition(st, "Reconciling")["status"] == "True"  # the other still runs


def test_shared_teacher_serves_members_at_once(cluster: Api, operator: Operator) -> None:
    from tests.operator.test_teacher_metrics import TEACHER, set_ready, teacher_status

    cluster.create(TEACHER)
    wait_for(lambda: cluster.get("Deployment", NS, "gpt-oss-120b"))
    set_ready(cluster, "gpt-oss-120b", 1)
    template = {
        "teacher": {"ref": {"name": "gpt-oss-120b"}},
        "storage": {"uri": "s3://kakugo-artifacts/runs"},
        "data": {"topics": {"shards": 1}},
    }
    cluster.create(
        fleet(["yo", {"language": "sw", "overrides": {"suspend": True}}], template=template)
    )
    # Both members' teacher stages use the one Teacher at the same time.
    yo_job = job(cluster, "yor-latn-topics-1")
    env = {
        e["name"]: e.get("value")
        for e in yo_job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KAKUGO_TEACHER_URL"] == "http://gpt-oss-120b.kakugo.svc:8000/v1"
    wait_for(lambda: teacher_status(cluster).get("clients") == ["yor-latn"])
    cluster.patch(
        "LanguageFleet",
        NS,
        "west",
        {"spec": {"languages": [{"language": "yo"}, {"language": "sw"}]}},
    )
    job(cluster, "swh-latn-topics-1")
    wait_for(lambda: teacher_status(cluster).get("clients") == ["swh-latn", "yor-latn"])
    # One member stops needing it: the Teacher stays up for the other.
    cluster.patch(
        "LanguageFleet",
        NS,
        "west",
        {
            "spec": {
                "languages": [
                    {"language": "yo"},
                    {"language": "sw", "overrides": {"suspend": True}},
                ]
            }
        },
    )
    wait_for(lambda: teacher_status(cluster).get("clients") == ["yor-latn"])
    time.sleep(1.5)  # idleSeconds is 1 in the tests
    assert cluster.get("Deployment", NS, "gpt-oss-120b")["spec"]["replicas"] == 1
    # No member needs it: scale to zero.
    cluster.patch("LanguageFleet", NS, "west", {"spec": {"suspend": True}})
    wait_for(
        lambda: cluster.get("Deployment", NS, "gpt-oss-120b")["spec"]["replicas"] == 0,
        what="scale to zero",
    )
    st = wait_for(lambda: (s := fstatus(cluster)).get("suspended") == 2 and s)
    assert condition(st, "Ready")["status"] == "False"


def test_invalid_fleet_spec_changes_nothing(cluster: Api, operator: Operator) -> None:
    cluster.create(fleet(["yo"], template={"language": "Yoruba", "teacher": ENDPOINT}))
    st = wait_for(lambda: (s := fstatus(cluster)).get("phase") == "Stalled" and s)
    cond = condition(st, "Stalled")
    assert (cond["status"], cond["reason"]) == ("True", "InvalidSpec")
    assert "spec.template" in cond["message"]
    assert cluster.list("LanguageModel", NS) == []


# ------------------------------------------------------------------ the pure decision

NOW = datetime(2026, 1, 1, tzinfo=UTC)


CODES = {"yor-latn": "yo", "swh-latn": "sw", "ibo-latn": "ig", "hau-latn": "ha"}


def child(
    name: str,
    fleet_name: str = "f",
    *,
    phase: str = "Running",
    admitted: bool = False,
    stages: dict[str, str] | None = None,
    waiting: dict[str, str] | None = None,
    cost: str | None = None,
    spec: dict[str, Any] | None = None,
    evaluation: dict | None = None,
) -> dict[str, Any]:
    """A member as the API shows it; by default its spec is what the fleet wants.
    `stages`: stage -> state; `waiting`: stage -> the gate that holds it (waitingFor)."""
    spec = spec or {"teacher": ENDPOINT, "language": CODES[name]}
    ann = {SPEC_HASH_ANNOTATION: spec_hash(spec)}
    if admitted:
        ann[ADMITTED_ANNOTATION] = "true"
    entries = {s: {"name": s, "state": st} for s, st in (stages or {}).items()}
    for s, gate in (waiting or {}).items():
        entries.setdefault(s, {"name": s, "state": "Pending"})["waitingFor"] = gate
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": 1,
        "progress": {
            "stages": [s for s, st in (stages or {}).items() if st == "Running"],
            "waiting": dict(waiting or {}),
        },
        "stages": list(entries.values()),
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if phase == "Succeeded" else "False",
                "reason": "x",
                "message": "",
            }
        ],
    }
    if cost:
        status["cost"] = {"dollars": cost, "gpuHours": "1.0000"}
    if evaluation:
        status["evaluation"] = {"tasks": evaluation}
    code = name.replace("-latn", "_Latn")
    return {
        "metadata": {
            "name": name,
            "generation": 1,
            "annotations": ann,
            "labels": member_labels(fleet_name, code),
        },
        "spec": spec,
        "status": status,
    }


def decide(spec: dict[str, Any], children: list[dict[str, Any]], taken=None):
    return decide_fleet("f", NS, 1, spec, {}, children, taken or {}, NOW)


def grants(plan: Any) -> dict[str, str | None]:
    out = {}
    for name, patch in plan.patch.items():
        ann = (patch.get("metadata") or {}).get("annotations") or {}
        if ADMITTED_ANNOTATION in ann:
            out[name] = ann[ADMITTED_ANNOTATION]
    return out


def fleet_spec(languages: list[str], **kw: Any) -> dict[str, Any]:
    return {
        "languages": [{"language": x} for x in languages],
        "template": {"teacher": ENDPOINT},
        **kw,
    }


def test_decide_admits_in_list_order_up_to_the_limit() -> None:
    spec = fleet_spec(["yo", "sw", "ig", "ha"], maxConcurrent=2)
    members = [
        child("yor-latn", phase="Running", admitted=True, stages={"train": "Running"}),
        child("swh-latn", phase="Queued", waiting={"train": "GPUQuota"}),
        child("ibo-latn", phase="Queued", waiting={"train": "GPUQuota"}),
        child("hau-latn", phase="Running", stages={"topics": "Running"}),
    ]
    plan = decide(spec, members)
    assert grants(plan) == {"swh-latn": "true"}
    assert plan.status.dump()["gpu"] == {"maxConcurrent": 2, "inUse": 2, "queued": ["ibo-latn"]}
    # Done with GPUs: admission taken back, the next one admitted (level-based).
    members[0] = child(
        "yor-latn",
        phase="Succeeded",
        admitted=True,
        stages={"train": "Succeeded", "evaluate": "Succeeded"},
    )
    members[1] = child("swh-latn", phase="Running", admitted=True, stages={"train": "Running"})
    plan = decide(spec, members)
    assert grants(plan) == {"yor-latn": None, "ibo-latn": "true"}
    # A member running a GPU stage holds a slot even without the annotation.
    members[1] = child("swh-latn", phase="Running", stages={"train": "Retrying"})
    members[2] = child("ibo-latn", phase="Queued", waiting={"train": "GPUQuota"})
    members[0] = child(
        "yor-latn",
        phase="Running",
        admitted=True,
        stages={"train": "Succeeded", "evaluate": "Running"},
    )
    plan = decide(spec, members)
    assert grants(plan) == {}
    assert plan.patch == {}  # the members' specs are what the fleet wants


def test_decide_reads_every_running_stage_of_a_member() -> None:
    # Members run several stages at once: a GPU stage waiting for admission while CPU
    # stages run makes the member wait for a slot (its phase is Running, not Queued).
    template = {"teacher": ENDPOINT, "resources": {"topics": {"gpus": 1}, "contexts": {"gpus": 1}}}
    spec = {**fleet_spec(["yo", "sw", "ig", "ha"], maxConcurrent=1), "template": template}

    def member(name: str, **kw: Any) -> dict[str, Any]:
        return child(name, spec={**template, "language": CODES[name]}, **kw)

    members = [
        member(
            "yor-latn",
            stages={"scenarios": "Running", "translate": "Running"},
            waiting={"topics": "GPUQuota"},
        ),
        member("swh-latn", phase="Suspended", waiting={"topics": "Suspended"}),
        member("ibo-latn", phase="Stalled", waiting={"topics": "Budget"}),
        member("hau-latn", stages={"translate": "Running"}),
    ]
    plan = decide(spec, members)
    assert grants(plan) == {"yor-latn": "true"} and plan.patch.keys() == {"yor-latn"}
    assert plan.status.gpu.queued == [] and plan.status.gpu.in_use == 1
    rows = {r.name: r for r in plan.status.member_status}
    assert rows["yor-latn"].stages == ["scenarios", "translate"]
    # A Stalled member (one stage failed) whose independent GPU stage still runs keeps its
    # slot; an admitted one whose GPU stage now waits only for a stage slot keeps it too.
    spec = {**spec, "maxConcurrent": 2}
    members = [
        member(
            "yor-latn",
            admitted=True,
            stages={"scenarios": "Running"},
            waiting={"topics": "Concurrency"},
        ),
        member("swh-latn", phase="Stalled", stages={"topics": "Failed", "contexts": "Running"}),
        member("ibo-latn", phase="Queued", waiting={"topics": "GPUQuota"}),
        member("hau-latn", stages={"translate": "Running"}),
    ]
    plan = decide(spec, members)
    assert grants(plan) == {} and plan.patch == {}
    assert plan.status.gpu.in_use == 2 and plan.status.gpu.queued == ["ibo-latn"]


def test_stale_view_does_not_admit_a_second_member() -> None:
    # The race that gave two members a slot with maxConcurrent 1: the first view shows only
    # swh queued (yor has not reconciled yet), so swh is admitted; the next view, from a
    # watch that has not caught up with that write, shows both queued and neither admitted.
    spec = fleet_spec(["yo", "sw"], maxConcurrent=1)
    ledger = AdmissionLedger(ttl=60.0)
    first = [
        child("yor-latn", phase="Pending"),
        child("swh-latn", phase="Queued", waiting={"topics": "GPUQuota"}),
    ]
    plan = decide(spec, ledger.overlay(first, clock=0.0))
    assert grants(plan) == {"swh-latn": "true"}
    for name, patch in plan.patch.items():
        ledger.record(name, patch, clock=0.0)
    stale = [
        child("yor-latn", phase="Queued", waiting={"topics": "GPUQuota"}),
        child("swh-latn", phase="Queued", waiting={"topics": "GPUQuota"}),
    ]
    assert grants(decide(spec, stale)) == {"yor-latn": "true"}  # what went wrong
    plan = decide(spec, ledger.overlay(stale, clock=1.0))
    assert grants(plan) == {}
    assert plan.status.dump()["gpu"] == {"maxConcurrent": 1, "inUse": 1, "queued": ["yor-latn"]}
    # Once the watch shows the write, the expectation ends; a revocation is expected alike.
    current = [
        stale[0],
        child("swh-latn", phase="Queued", waiting={"topics": "GPUQuota"}, admitted=True),
    ]
    assert ledger.overlay(current, clock=2.0) == current and not ledger.pending
    ledger.record("swh-latn", {"metadata": {"annotations": {ADMITTED_ANNOTATION: None}}}, 3.0)
    (_, swh) = ledger.overlay(current, clock=4.0)
    assert ADMITTED_ANNOTATION not in swh["metadata"]["annotations"]
    # Someone else set it back and the watch never shows our value: trusted again after ttl.
    assert ledger.overlay(current, clock=100.0) == current and not ledger.pending


def test_decide_aggregates_add_up() -> None:
    spec = fleet_spec(["yo", "sw", "ig"])
    ev = {"belebele": {"base": 30.0, "tuned": 40.0, "delta": 10.0}}
    members = [
        child("yor-latn", phase="Succeeded", cost="12.3456", evaluation=ev),
        child(
            "swh-latn",
            phase="Stalled",
            cost="0.0001",
            evaluation={"belebele": {"base": 30.0, "tuned": 35.0, "delta": 5.0}},
        ),
        child("ibo-latn", phase="Running", cost="1.1"),
    ]
    members[1]["status"]["conditions"].append(
        {"type": "Stalled", "status": "True", "reason": "BudgetExceeded", "message": "spent"}
    )
    st = decide(spec, members).status.dump()
    assert st["cost"]["dollars"] == "13.4457"
    assert st["cost"]["byLanguage"] == {
        "yor-latn": "12.3456",
        "swh-latn": "0.0001",
        "ibo-latn": "1.1000",
    }
    assert st["cost"]["gpuHours"] == "3.0000"
    assert st["evaluation"] == {"belebele": {"meanDelta": 7.5, "languages": 2}}
    assert (st["ready"], st["running"], st["stalled"], st["languages"]) == (1, 1, 1, 3)
    assert st["stalledLanguages"] == [
        {"name": "swh-latn", "language": "sw", "reason": "BudgetExceeded", "message": "spent"}
    ]
    assert st["phase"] == "Running"


def test_decide_creates_patches_and_deletes() -> None:
    spec = fleet_spec(["yo", "Klingon"], artifactPolicy="Delete")
    gone = child("swh-latn")
    plan = decide(spec, [gone])
    # Unknown language: its member cannot be told from a removed one, so nothing is deleted.
    assert plan.delete == []
    assert [c["metadata"]["name"] for c in plan.create] == ["yor-latn"]
    assert "not deleting swh-latn" in condition(plan.status.dump(), "Reconciling")["message"]
    plan = decide(fleet_spec(["yo"], artifactPolicy="Delete"), [gone])
    assert plan.delete == ["swh-latn"] and plan.delete_artifacts == ["swh-latn"]
    # A name taken by a LanguageModel outside the fleet is that entry's error.
    plan = decide(fleet_spec(["yo", "sw"]), [], taken={"yor-latn": ""})
    assert [c["metadata"]["name"] for c in plan.create] == ["swh-latn"]
    assert "already exists" in plan.status.dump()["invalidLanguages"][0]["errors"][0]
    # A changed member is patched through its spec, removed keys become null.
    old = child("yor-latn", spec={"language": "yo", "teacher": ENDPOINT, "suspend": True})
    plan = decide(fleet_spec(["yo"]), [old])
    assert plan.patch["yor-latn"]["spec"] == {"suspend": None}
    assert merge_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}) == {"a": {"c": None}}


def test_example_fleet_kakugo54() -> None:
    import yaml

    path = Path(__file__).resolve().parents[2] / "examples" / "fleet-kakugo54.yaml"
    doc = next(d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "LanguageFleet")
    plan = decide_fleet("kakugo54", NS, 1, doc["spec"], {}, [], {}, NOW)
    assert len(plan.create) == 54 and plan.status.dump()["invalid"] == 0
    names = {c["metadata"]["name"] for c in plan.create}
    assert {"yor-latn", "hau-latn", "chv-cyrl", "sdh-arab"} <= names
    assert all(
        c["spec"]["teacher"] == {"ref": {"name": "gpt-oss-120b"}, "maxConcurrency": 32}
        for c in plan.create
    )
    # 54 members waiting before training: maxConcurrent (8) are admitted, in list order.
    members = [
        {
            **c,
            "status": {
                "phase": "Queued",
                "observedGeneration": 1,
                "progress": {"waiting": {"train": "GPUQuota"}},
                "stages": [{"name": "train", "waitingFor": "GPUQuota"}],
            },
        }
        for c in plan.create
    ]
    for m in members:
        m["metadata"] = {**m["metadata"], "generation": 1}
    plan = decide_fleet("kakugo54", NS, 1, doc["spec"], {}, members, {}, NOW)
    assert list(grants(plan)) == [c["metadata"]["name"] for c in members[:8]]
    assert plan.status.dump()["queued"] == 46 and plan.status.dump()["gpu"]["inUse"] == 8
