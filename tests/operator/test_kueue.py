"""Kueue and the stage Jobs, on the emulator, with the test playing Kueue's part.

A Job on a queue (resources.<stage>.queueName) belongs to Kueue's admission: the operator
creates it suspended and never resumes it; Kueue resumes it when it admits it and
suspends it again when it preempts it. The LanguageModel's suspend goes through Kueue's
own mechanism, the Workload's spec.active. And a stage that runs past its deadline fails
with DeadlineExceeded (a failure, not a disruption).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.operator.k8s_emulator import Api, Emulator
from tests.operator.operator_helpers import (
    NS,
    Operator,
    complete_job,
    condition,
    job,
    language_model,
    lm_status,
    make_pods,
    stage,
    summary,
    wait_for,
)

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

QUEUE = "gpu-training"


@pytest.fixture
def job_patches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any]]]:
    """The operator's PATCH requests on Jobs: (path, body)."""
    seen: list[tuple[str, Any]] = []
    original = Emulator._handle

    async def _handle(self: Emulator, request: Any) -> Any:
        method = str(getattr(request.method, "value", request.method)).upper()
        agent = str(request.headers.get("User-Agent", ""))
        path = str(request.url.path)
        if method == "PATCH" and "/jobs/" in path and not agent.startswith("python-httpx"):
            seen.append((path, request.data))
        return await original(self, request)

    monkeypatch.setattr(Emulator, "_handle", _handle)
    yield seen


def queued_lm(**spec: Any) -> dict[str, Any]:
    body = language_model(**spec)
    body["spec"]["resources"].setdefault("topics", {})["queueName"] = QUEUE
    return body


def kueue_creates_workload(api: Api, job_obj: dict[str, Any]) -> dict[str, Any]:
    """What Kueue does for a new Job on a queue: a Workload owned by it, labelled with the
    Job's uid (and a Workload of another Job beside it, which must be left alone)."""
    uid = job_obj["metadata"]["uid"]
    for name, owner in ((f"job-{job_obj['metadata']['name']}-abcde", uid), ("job-other", "x")):
        api.create(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta1",
                "kind": "Workload",
                "metadata": {
                    "name": name,
                    "namespace": NS,
                    "labels": {"kueue.x-k8s.io/job-uid": owner},
                    "ownerReferences": [
                        {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": owner}
                    ],
                },
                "spec": {"active": True, "queueName": QUEUE, "podSets": []},
            }
        )
    return api.get("Workload", NS, f"job-{job_obj['metadata']['name']}-abcde") or {}


def test_kueue_admits_preempts_and_suspends_through_the_workload(
    cluster: Api, operator: Operator, job_patches: list[tuple[str, Any]]
) -> None:
    cluster.create(queued_lm())
    j = job(cluster, "yoruba-topics-1")
    # Created suspended, labelled with its queue: Kueue admits it, not the operator.
    assert j["spec"]["suspend"] is True
    assert j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    # The other root stages are on no queue: they run at once.
    assert "suspend" not in job(cluster, "yoruba-scenarios-1")["spec"]
    status = wait_for(
        lambda: (s := lm_status(cluster)) and stage(s, "topics").get("state") == "Queued" and s,
        what="topics Queued",
    )
    entry = stage(status, "topics")
    assert f"LocalQueue {QUEUE}" in entry["message"] and "yoruba-topics-1" in entry["message"]
    assert condition(status, "TopicsComplete")["reason"] == "Queued"
    assert f"LocalQueue {QUEUE}" in condition(status, "TopicsComplete")["message"]
    assert "held by Kueue: yoruba-topics-1" in condition(status, "Reconciling")["message"]
    workload = kueue_creates_workload(cluster, j)

    # Kueue admits it: resumes the Job, whose Pods run.
    cluster.patch("Job", NS, "yoruba-topics-1", {"spec": {"suspend": False}})
    pods = make_pods(cluster, job(cluster, "yoruba-topics-1"), count=1)
    status = wait_for(
        lambda: (s := lm_status(cluster)) and stage(s, "topics").get("state") == "Running" and s,
        what="topics Running once admitted",
    )
    assert "admitted by Kueue" in stage(status, "topics")["message"]

    # Kueue preempts it: suspends the Job again (its Pods go). The operator waits for Kueue.
    cluster.patch("Job", NS, "yoruba-topics-1", {"spec": {"suspend": True}})
    for pod in pods:
        cluster.delete("Pod", NS, pod["metadata"]["name"])
    status = wait_for(
        lambda: (s := lm_status(cluster)) and stage(s, "topics").get("state") == "Queued" and s,
        what="topics Queued after the preemption",
    )
    assert "preempted by Kueue" in stage(status, "topics")["message"]
    assert stage(status, "topics")["attempt"] == 1  # the same Job: no new attempt, no failure
    assert stage(status, "topics").get("failures", 0) == 0

    # The LanguageModel is suspended: through the Workload, the way Kueue stops a Job.
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": True}})
    wait_for(
        lambda: (
            cluster.get("Workload", NS, workload["metadata"]["name"])["spec"]["active"] is False
        ),
        what="the Workload deactivated",
    )
    annotations = wait_for(
        lambda: job(cluster, "yoruba-topics-1")["metadata"].get("annotations"),
        what="the Job annotated",
    )
    assert annotations["kakugo.io/kueue-active"] == "false"
    assert cluster.get("Workload", NS, "job-other")["spec"]["active"] is True  # not its Job
    # Jobs on no queue are suspended as before.
    wait_for(lambda: job(cluster, "yoruba-scenarios-1")["spec"].get("suspend") is True)
    wait_for(lambda: lm_status(cluster).get("phase") == "Suspended", what="Suspended")

    # Resumed: the Workload is active again; Kueue admits the Job, which finishes.
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": False}})
    wait_for(
        lambda: cluster.get("Workload", NS, workload["metadata"]["name"])["spec"]["active"] is True,
        what="the Workload active again",
    )
    wait_for(
        lambda: (
            job(cluster, "yoruba-topics-1")["metadata"]["annotations"].get("kakugo.io/kueue-active")
            == "true"
        )
    )
    assert job(cluster, "yoruba-topics-1")["spec"]["suspend"] is True  # still Kueue's to resume
    cluster.patch("Job", NS, "yoruba-topics-1", {"spec": {"suspend": False}})
    complete_job(cluster, "yoruba-topics-1", summary("topics"))
    wait_for(lambda: stage(lm_status(cluster), "topics").get("state") == "Succeeded")

    # Never once did the operator write a queued Job's spec.suspend.
    topics = [body for path, body in job_patches if path.endswith("/yoruba-topics-1")]
    assert topics and all("spec" not in b for b in topics), topics
    scenarios = [body for path, body in job_patches if path.endswith("/yoruba-scenarios-1")]
    assert {"suspend": True} in [b.get("spec") for b in scenarios]


def test_everything_queued_is_phase_queued(cluster: Api, operator: Operator) -> None:
    body = queued_lm(resources={"default": {"queueName": QUEUE}})
    cluster.create(body)
    status = wait_for(
        lambda: (s := lm_status(cluster)).get("phase") == "Queued" and s, what="phase Queued"
    )
    assert condition(status, "Ready")["reason"] == "Queued"
    assert all(
        stage(status, s)["state"] == "Queued"
        for s in ("topics", "scenarios", "contexts", "translate")
    )


def test_deadline_exceeded_is_a_failure_not_a_disruption(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    j = job(cluster, "yoruba-topics-1")
    assert j["spec"]["activeDeadlineSeconds"] == 24 * 3600
    assert j["spec"]["ttlSecondsAfterFinished"] == 7 * 86400
    # The Job controller at the deadline: the Job fails, its running Pods are deleted.
    (pod,) = make_pods(cluster, j, count=1)
    cluster.delete("Pod", NS, pod["metadata"]["name"])
    cluster.patch(
        "Job",
        NS,
        "yoruba-topics-1",
        {
            "status": {
                "failed": 1,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    }
                ],
            }
        },
        sub="status",
    )
    status = wait_for(
        lambda: (s := lm_status(cluster)) and stage(s, "topics").get("failures") == 1 and s,
        what="a failure counted",
    )
    entry = stage(status, "topics")
    assert entry.get("disruptions", 0) == 0
    assert entry["attempts"][-1]["outcome"] == "Failed"
    assert entry["attempts"][-1]["reason"] == "DeadlineExceeded"
    assert "DeadlineExceeded" in entry["message"] and "86400s" in entry["message"]
    events = wait_for(
        lambda: [
            e
            for e in cluster.list("Event", NS)
            if "DeadlineExceeded" in (e.get("message") or "") and e.get("type") == "Warning"
        ],
        what="a Warning Event naming DeadlineExceeded",
    )
    assert "topics" in events[0]["message"].lower()
