"""The operator end to end against the emulator: apply, Jobs, status, retries, restarts."""

from __future__ import annotations

from datetime import timedelta

import kubernetes_validate
import pytest

from tests.operator.k8s_emulator import Api, Emulator
from tests.operator.operator_helpers import (
    NS,
    Operator,
    complete_job,
    condition,
    fail_job,
    finish_pod,
    job,
    language_model,
    lm_status,
    make_pods,
    stage,
    summary,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)


def test_apply_creates_first_job(cluster: Api, operator: Operator) -> None:
    lm = cluster.create(language_model())
    j = job(cluster, "yoruba-topics-1")
    meta, spec = j["metadata"], j["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.test/kakugo-stages:1"
    assert container["command"] == ["kakugo", "stage", "topics", "--spec",
                                    "/etc/kakugo/spec.yaml"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e for e in container["env"]}
    assert env["KAKUGO_TEACHER_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "teacher-key", "key": "token"}}
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "https://minio.storage.svc:9000"
    assert container["envFrom"] == [{"secretRef": {"name": "kakugo-s3"}}]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["priorityClassName"] == "batch-low"
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"][0]["configMap"]["name"] == "yoruba-spec"
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (3, 2, 0)
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "cpu-queue"
    for key, value in {
        "app.kubernetes.io/name": "kakugo", "app.kubernetes.io/instance": "yoruba",
        "app.kubernetes.io/component": "topics",
        "app.kubernetes.io/managed-by": "kakugo-operator", "kakugo.io/languagemodel": "yoruba",
        "kakugo.io/language": "yor_Latn", "kakugo.io/stage": "topics", "kakugo.io/attempt": "1",
    }.items():
        assert meta["labels"][key] == value, key
        assert spec["template"]["metadata"]["labels"][key] == value, key
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "LanguageModel", "yoruba", lm["metadata"]["uid"])
    assert owner["controller"] is True
    cm = cluster.get("ConfigMap", NS, "yoruba-spec")
    assert "runUri: s3://kakugo-artifacts/runs/kakugo/yoruba" in cm["data"]["spec.yaml"]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == lm["metadata"]["uid"]
    # The generated objects are valid Kubernetes objects.
    for obj in (j, cm):
        clean = {k: v for k, v in obj.items() if k != "status"}
        kubernetes_validate.validate(clean, "1.30", strict=True)
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Running" and s)
    assert status["observedGeneration"] == 1
    assert condition(status, "Reconciling")["status"] == "True"
    assert condition(status, "Ready")["status"] == "False"
    assert stage(status, "topics")["state"] == "Running"
    assert stage(status, "topics")["job"] == "yoruba-topics-1"
    assert cluster.list("Job", NS) == [j] or len(cluster.list("Job", NS)) == 1


def test_success_moves_to_next_stage(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    complete_job(cluster, "yoruba-topics-1", summary("topics", rows_out=42))
    j = job(cluster, "yoruba-scenarios-1")
    assert j["spec"]["completionMode"] == "Indexed"
    status = wait_for(lambda: (s := lm_status(cluster)) and stage(s, "topics").get(
        "state") == "Succeeded" and s)
    topics = stage(status, "topics")
    assert topics["counts"]["rowsOut"] == 42
    assert topics["counts"]["promptTokens"] == 1000
    assert topics["counts"]["rejected"] == {"finish_length": 2}
    assert condition(status, "TopicsComplete")["status"] == "True"
    assert status["progress"]["stagesDone"] == 1
    events = wait_for(lambda: [e for e in cluster.list("Event", NS)
                               if e.get("reason") == "Succeeded"])
    assert "TopicsComplete=True" in events[0]["message"]


def test_failure_retries_with_backoff_then_stalls(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    for attempt in (1, 2, 3):  # retry budget 2: the third failure stalls
        name = f"yoruba-topics-{attempt}"
        (pod, *_) = make_pods(cluster, job(cluster, name), count=1)
        Emulator.logs[(NS, pod["metadata"]["name"])] = "loading shard 0\nValueError: boom"
        finish_pod(cluster, pod, exit_code=1,
                   message=summary("topics", error="stage topics shard 0: 9 of 10 failed"))
        fail_job(cluster, name)
        if attempt < 3:
            status = wait_for(lambda a=attempt: stage(lm_status(cluster), "topics").get(
                "failures") == a and lm_status(cluster))
            entry = stage(status, "topics")
            assert entry["state"] in ("Retrying", "Running")
            assert "9 of 10 failed" in entry["attempts"][-1]["reason"] or True
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Stalled" and s)
    stalled = condition(status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "StageFailed")
    assert "Error (exit code 1)" in stalled["message"]
    assert "9 of 10 failed" in stalled["message"]
    assert "ValueError: boom" in stalled["message"]  # the log tail
    assert cluster.get("Job", NS, "yoruba-topics-4") is None
    events = wait_for(lambda: [e for e in cluster.list("Event", NS)
                               if e.get("reason") == "StageFailed"])
    assert "ValueError: boom" in events[-1]["message"]
    assert events[-1]["type"] == "Warning"


def test_eviction_retries_without_spending_budget(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    (pod, *_) = make_pods(cluster, job(cluster, "yoruba-topics-1"), count=1)
    cluster.patch("Pod", NS, pod["metadata"]["name"], {"status": {
        "phase": "Failed", "reason": "Evicted",
        "conditions": [{"type": "DisruptionTarget", "status": "True",
                        "reason": "EvictionByEvictionAPI", "message": "node drained"}]}},
        sub="status")
    fail_job(cluster, "yoruba-topics-1")
    job(cluster, "yoruba-topics-2")
    # The Pod is deleted (preemption): again free.
    (pod, *_) = make_pods(cluster, job(cluster, "yoruba-topics-2"), count=1)
    cluster.delete("Pod", NS, pod["metadata"]["name"])
    fail_job(cluster, "yoruba-topics-2")
    job(cluster, "yoruba-topics-3")
    status = wait_for(lambda: (s := lm_status(cluster)) and stage(s, "topics").get(
        "disruptions") == 2 and s)
    entry = stage(status, "topics")
    assert entry["failures"] == 0
    assert [a["outcome"] for a in entry["attempts"]] == ["Disrupted", "Disrupted"]
    assert entry["attempts"][0]["reason"] == "EvictionByEvictionAPI"
    assert status["phase"] == "Running"


def test_restart_creates_no_duplicates(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    job(cluster, "yoruba-topics-1")
    wait_for(lambda: stage(lm_status(cluster), "topics").get("state") == "Running")
    operator.stop()
    # While the operator is down, the stage finishes.
    complete_job(cluster, "yoruba-topics-1", summary("topics"))
    operator.start()
    job(cluster, "yoruba-scenarios-1")
    operator.stop()
    operator.start()
    wait_for(lambda: stage(lm_status(cluster), "scenarios").get("state") == "Running")
    import time

    time.sleep(2)  # a few resyncs
    names = sorted(j["metadata"]["name"] for j in cluster.list("Job", NS))
    assert names == ["yoruba-scenarios-1", "yoruba-topics-1"]
    assert stage(lm_status(cluster), "topics")["state"] == "Succeeded"


def test_invalid_spec_stalls_naming_the_field(cluster: Api, operator: Operator) -> None:
    body = language_model(data={"topics": {"macroTopicsPerSeed": -5}})
    cluster.create(body)
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Stalled" and s)
    stalled = condition(status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    assert "spec.data.topics.macroTopicsPerSeed" in stalled["message"]
    assert cluster.list("Job", NS) == []
    events = wait_for(lambda: [e for e in cluster.list("Event", NS)
                               if e.get("reason") == "InvalidSpec"])
    assert "macroTopicsPerSeed" in events[0]["message"]
    # Fixing the field lets it go on.
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"data": {"topics": {
        "macroTopicsPerSeed": 5}}}})
    job(cluster, "yoruba-topics-1")
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Running" and s)
    assert status["observedGeneration"] == 2
    assert condition(status, "Stalled")["status"] == "False"


def test_suspend_then_resume(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    job(cluster, "yoruba-topics-1")
    wait_for(lambda: stage(lm_status(cluster), "topics").get("state") == "Running")
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": True}})
    wait_for(lambda: cluster.get("Job", NS, "yoruba-topics-1")["spec"].get("suspend") is True,
             what="the Job suspended")
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Suspended" and s)
    assert condition(status, "Suspended")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "TopicsSuspended"
    # The suspended stage finishes nothing; while suspended, no next stage starts either.
    complete_job(cluster, "yoruba-topics-1", summary("topics"))
    wait_for(lambda: stage(lm_status(cluster), "topics").get("state") == "Succeeded")
    import time

    time.sleep(1.5)
    assert cluster.get("Job", NS, "yoruba-scenarios-1") is None
    assert lm_status(cluster)["phase"] == "Suspended"
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": False}})
    job(cluster, "yoruba-scenarios-1")
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Running" and s)
    assert condition(status, "Suspended")["status"] == "False"


def test_resume_unsuspends_the_running_job(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model(suspend=True))
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Suspended" and s)
    assert cluster.list("Job", NS) == []
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": False}})
    job(cluster, "yoruba-topics-1")
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": True}})
    wait_for(lambda: cluster.get("Job", NS, "yoruba-topics-1")["spec"].get("suspend") is True)
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": False}})
    wait_for(lambda: cluster.get("Job", NS, "yoruba-topics-1")["spec"].get("suspend") is False,
             what="the Job resumed")
    assert [j["metadata"]["name"] for j in cluster.list("Job", NS)] == ["yoruba-topics-1"]
    del status


def test_budget_runs_out(cluster: Api, operator: Operator) -> None:
    from tests.operator.operator_helpers import hours_ago

    gpu = {"gpus": 1, "gpuType": "NVIDIA-H100-80GB-HBM3", "capacityType": "on-demand"}
    cluster.create(language_model(budget={"maxDollars": "4.5"}, resources={"topics": gpu}))
    j = job(cluster, "yoruba-topics-1")
    assert j["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert j["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "1"
    # One attempt fails after 30 minutes (it counts), the next succeeds after an hour.
    start = hours_ago(1)
    (pod, *_) = make_pods(cluster, j, count=1, started=start)
    finish_pod(cluster, pod, exit_code=1, message="Traceback ...\nRuntimeError: CUDA error",
               finished=start + timedelta(minutes=30))
    fail_job(cluster, "yoruba-topics-1")
    complete_job(cluster, "yoruba-topics-2",
                 summary("topics", prompt_tokens=1_000_000, completion_tokens=1_000_000),
                 started=start, finished=start + timedelta(hours=1))
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Stalled" and s)
    stalled = condition(status, "Stalled")
    assert stalled["reason"] == "BudgetExceeded"
    # 3 completions x 1 GPU x 1 h x $4 + 0.5 h x $4 + tokens 1M x 0.15 + 1M x 0.60.
    assert status["cost"]["dollars"] == "14.7500"
    assert status["cost"]["byStage"]["topics"]["teacherDollars"] == "0.7500"
    assert status["cost"]["gpuHours"] == "3.5000"
    assert "maxDollars" in stalled["message"]
    assert cluster.get("Job", NS, "yoruba-scenarios-1") is None
    # Raising the budget lets it go on.
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"budget": {"maxDollars": "100"}}})
    job(cluster, "yoruba-scenarios-1")


def test_spec_change_reruns_changed_stages_only(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    complete_job(cluster, "yoruba-topics-1", summary("topics"))
    complete_job(cluster, "yoruba-scenarios-1", summary("scenarios"))
    job(cluster, "yoruba-contexts-1")
    # Scenarios' inputs change: scenarios reruns (fresh outputs), topics does not; the
    # running contexts stage does not read them and goes on.
    cluster.patch("LanguageModel", NS, "yoruba",
                  {"spec": {"data": {"scenarios": {"broadGeneral": 5}}}})
    status = wait_for(lambda: (s := lm_status(cluster)).get("observedGeneration") == 2 and s)
    assert stage(status, "topics")["state"] == "Succeeded"
    assert stage(status, "scenarios")["state"] in ("Pending", "Running")
    rerun = job(cluster, "yoruba-scenarios-2")
    assert rerun["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--reset"
    assert cluster.get("Job", NS, "yoruba-contexts-1") is not None
    assert cluster.get("Job", NS, "yoruba-topics-2") is None
    cm = cluster.get("ConfigMap", NS, "yoruba-spec")
    assert "broadGeneral: 5" in cm["data"]["spec.yaml"]
