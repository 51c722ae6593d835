"""The operator end to end against the emulator: apply, Jobs, status, retries, restarts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import kubernetes_validate
import pytest

from tests.operator.k8s_emulator import Api, Emulator
from tests.operator.operator_helpers import (
    NS,
    Operator,
    complete_job,
    complete_skipped,
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

# Kopf runs for real against the emulator: not in `make unit`.
pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

ROOTS = ["yoruba-contexts-1", "yoruba-scenarios-1", "yoruba-topics-1", "yoruba-translate-1"]


def job_names(api: Api) -> list[str]:
    return sorted(j["metadata"]["name"] for j in api.list("Job", NS))


def test_apply_creates_first_job(cluster: Api, operator: Operator) -> None:
    lm = cluster.create(language_model())
    j = job(cluster, "yoruba-topics-1")
    meta, spec = j["metadata"], j["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.test/kakugo-stages:1"
    assert container["command"] == ["kakugo", "stage", "topics", "--spec", "/etc/kakugo/spec.yaml"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e for e in container["env"]}
    assert env["KAKUGO_TEACHER_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "teacher-key", "key": "token"}
    }
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "https://minio.storage.svc:9000"
    assert container["envFrom"] == [{"secretRef": {"name": "kakugo-s3"}}]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["priorityClassName"] == "batch-low"
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"][0]["configMap"]["name"] == "yoruba-spec"
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (3, 2, 0)
    # On no Kueue queue: created running (tests/operator/test_kueue.py has queued Jobs).
    assert "kueue.x-k8s.io/queue-name" not in meta["labels"] and "suspend" not in spec
    for key, value in {
        "app.kubernetes.io/name": "kakugo",
        "app.kubernetes.io/instance": "yoruba",
        "app.kubernetes.io/component": "topics",
        "app.kubernetes.io/managed-by": "kakugo-operator",
        "kakugo.io/languagemodel": "yoruba",
        "kakugo.io/language": "yor_Latn",
        "kakugo.io/stage": "topics",
        "kakugo.io/attempt": "1",
    }.items():
        assert meta["labels"][key] == value, key
        assert spec["template"]["metadata"]["labels"][key] == value, key
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "LanguageModel",
        "yoruba",
        lm["metadata"]["uid"],
    )
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
    # The stages that read no other stage run at once (maxConcurrentStages 4 by default).
    wait_for(lambda: job_names(cluster) == ROOTS, what="the four root Jobs")
    status = wait_for(
        lambda: (
            (s := lm_status(cluster)).get("progress", {}).get("stages")
            == ["topics", "scenarios", "contexts", "translate"]
            and s
        )
    )
    assert condition(status, "Reconciling")["reason"] == "StagesRunning"


def test_success_moves_to_next_stage(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    complete_job(cluster, "yoruba-topics-1", summary("topics", rows_out=42))
    j = job(cluster, "yoruba-scenarios-1")
    assert j["spec"]["completionMode"] == "Indexed"
    status = wait_for(
        lambda: (s := lm_status(cluster)) and stage(s, "topics").get("state") == "Succeeded" and s
    )
    topics = stage(status, "topics")
    assert topics["counts"]["rowsOut"] == 42
    assert topics["counts"]["promptTokens"] == 1000
    assert topics["counts"]["rejected"] == {"finish_length": 2}
    assert condition(status, "TopicsComplete")["status"] == "True"
    assert status["progress"]["stagesDone"] == 1
    events = wait_for(
        lambda: [e for e in cluster.list("Event", NS) if e.get("reason") == "Succeeded"]
    )
    assert "TopicsComplete=True" in events[0]["message"]


def test_failure_retries_with_backoff_then_stalls(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    for attempt in (1, 2, 3):  # retry budget 2: the third failure stalls
        name = f"yoruba-topics-{attempt}"
        (pod, *_) = make_pods(cluster, job(cluster, name), count=1)
        Emulator.logs[(NS, pod["metadata"]["name"])] = "loading shard 0\nValueError: boom"
        finish_pod(
            cluster,
            pod,
            exit_code=1,
            message=summary("topics", error="stage topics shard 0: 9 of 10 failed"),
        )
        fail_job(cluster, name)
        if attempt < 3:
            status = wait_for(
                lambda a=attempt: (
                    stage(lm_status(cluster), "topics").get("failures") == a and lm_status(cluster)
                )
            )
            entry = stage(status, "topics")
            assert entry["state"] in ("Retrying", "Running")
            assert entry["attempts"][-1]["reason"] == "Error (exit code 1)"
            assert entry["attempts"][-1]["outcome"] == "Failed"
            assert f"attempt {attempt} failed" in entry["message"]
            assert "9 of 10 failed" in entry["message"]
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Stalled" and s)
    stalled = condition(status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "StageFailed")
    assert "Error (exit code 1)" in stalled["message"]
    assert "9 of 10 failed" in stalled["message"]
    assert "ValueError: boom" in stalled["message"]  # the log tail
    assert cluster.get("Job", NS, "yoruba-topics-4") is None
    events = wait_for(
        lambda: [e for e in cluster.list("Event", NS) if e.get("reason") == "StageFailed"]
    )
    assert "ValueError: boom" in events[-1]["message"]
    assert events[-1]["type"] == "Warning"


def test_eviction_retries_without_spending_budget(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    (pod, *_) = make_pods(cluster, job(cluster, "yoruba-topics-1"), count=1)
    cluster.patch(
        "Pod",
        NS,
        pod["metadata"]["name"],
        {
            "status": {
                "phase": "Failed",
                "reason": "Evicted",
                "conditions": [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "EvictionByEvictionAPI",
                        "message": "node drained",
                    }
                ],
            }
        },
        sub="status",
    )
    fail_job(cluster, "yoruba-topics-1")
    job(cluster, "yoruba-topics-2")
    # The Pod is deleted (preemption): again free.
    (pod, *_) = make_pods(cluster, job(cluster, "yoruba-topics-2"), count=1)
    cluster.delete("Pod", NS, pod["metadata"]["name"])
    fail_job(cluster, "yoruba-topics-2")
    job(cluster, "yoruba-topics-3")
    status = wait_for(
        lambda: (s := lm_status(cluster)) and stage(s, "topics").get("disruptions") == 2 and s
    )
    entry = stage(status, "topics")
    assert entry["failures"] == 0
    assert [a["outcome"] for a in entry["attempts"]] == ["Disrupted", "Disrupted"]
    assert entry["attempts"][0]["reason"] == "EvictionByEvictionAPI"
    assert status["phase"] == "Running"


def test_restart_creates_no_duplicates(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    job(cluster, "yoruba-topics-1")
    wait_for(lambda: stage(lm_status(cluster), "translate").get("state") == "Running")
    operator.stop()
    # While the operator is down, revise's inputs finish.
    for name in ("topics", "scenarios", "contexts"):
        complete_job(cluster, f"yoruba-{name}-1", summary(name))
    operator.start()
    job(cluster, "yoruba-revise-1")
    operator.stop()
    operator.start()
    wait_for(lambda: stage(lm_status(cluster), "revise").get("state") == "Running")
    import time

    time.sleep(2)  # a few resyncs
    assert job_names(cluster) == sorted([*ROOTS, "yoruba-revise-1"])
    status = lm_status(cluster)
    assert stage(status, "topics")["state"] == "Succeeded"
    assert status["progress"]["stages"] == ["revise", "translate"]


def test_invalid_spec_stalls_naming_the_field(cluster: Api, operator: Operator) -> None:
    body = language_model(data={"topics": {"macroTopicsPerSeed": -5}})
    cluster.create(body)
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Stalled" and s)
    stalled = condition(status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    assert "spec.data.topics.macroTopicsPerSeed" in stalled["message"]
    assert cluster.list("Job", NS) == []
    events = wait_for(
        lambda: [e for e in cluster.list("Event", NS) if e.get("reason") == "InvalidSpec"]
    )
    assert "macroTopicsPerSeed" in events[0]["message"]
    # Fixing the field lets it go on.
    cluster.patch(
        "LanguageModel", NS, "yoruba", {"spec": {"data": {"topics": {"macroTopicsPerSeed": 5}}}}
    )
    job(cluster, "yoruba-topics-1")
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Running" and s)
    assert status["observedGeneration"] == 2
    assert condition(status, "Stalled")["status"] == "False"


def test_suspend_then_resume(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    job(cluster, "yoruba-translate-1")
    wait_for(lambda: stage(lm_status(cluster), "translate").get("state") == "Running")
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": True}})
    wait_for(
        lambda: all(j["spec"].get("suspend") is True for j in cluster.list("Job", NS)),
        what="every running Job suspended",
    )
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Suspended" and s)
    assert condition(status, "Suspended")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "Suspended"
    assert "4 Job(s) suspended" in condition(status, "Reconciling")["message"]
    # The suspended stages finish nothing; while suspended, no next stage starts either.
    for name in ("topics", "scenarios", "contexts"):
        complete_job(cluster, f"yoruba-{name}-1", summary(name))
    wait_for(lambda: stage(lm_status(cluster), "contexts").get("state") == "Succeeded")
    status = wait_for(
        lambda: (
            (s := lm_status(cluster)).get("progress", {}).get("waiting") == {"revise": "Suspended"}
            and s
        )
    )
    assert cluster.get("Job", NS, "yoruba-revise-1") is None
    assert status["phase"] == "Suspended"
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": False}})
    job(cluster, "yoruba-revise-1")
    wait_for(
        lambda: cluster.get("Job", NS, "yoruba-translate-1")["spec"].get("suspend") is False,
        what="translate resumed",
    )
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Running" and s)
    assert condition(status, "Suspended")["status"] == "False"


def test_resume_unsuspends_the_running_job(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model(suspend=True))
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Suspended" and s)
    assert cluster.list("Job", NS) == []
    assert status["progress"]["waiting"] == dict.fromkeys(
        ["topics", "scenarios", "contexts", "translate"], "Suspended"
    )
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": False}})
    job(cluster, "yoruba-topics-1")
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": True}})
    wait_for(lambda: cluster.get("Job", NS, "yoruba-topics-1")["spec"].get("suspend") is True)
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": False}})
    wait_for(
        lambda: cluster.get("Job", NS, "yoruba-topics-1")["spec"].get("suspend") is False,
        what="the Job resumed",
    )
    assert job_names(cluster) == ROOTS


def test_budget_runs_out(cluster: Api, operator: Operator) -> None:
    from tests.operator.operator_helpers import hours_ago

    gpu = {"gpus": 1, "gpuType": "NVIDIA-H100-80GB-HBM3", "capacityType": "on-demand"}
    # The recipe's counts forecast far more than $4.50: Proceed starts anyway, and the
    # spending itself is what stops it.
    budget = {"maxDollars": "4.5", "onForecastOverBudget": "Proceed"}
    cluster.create(language_model(budget=budget, resources={"topics": gpu}))
    j = job(cluster, "yoruba-topics-1")
    forecast = wait_for(lambda: lm_status(cluster).get("forecast"))
    assert forecast["overBudget"] is True and forecast["budget"] == "4.5000"
    assert j["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"
    }
    assert (
        j["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == "1"
    )
    # revise's other inputs finish (CPU stages, no cost).
    for name in ("scenarios", "contexts"):
        complete_job(
            cluster, f"yoruba-{name}-1", summary(name, prompt_tokens=0, completion_tokens=0)
        )
    # One attempt fails after 30 minutes (it counts), the next succeeds after an hour.
    start = hours_ago(1)
    (pod, *_) = make_pods(cluster, j, count=1, started=start)
    finish_pod(
        cluster,
        pod,
        exit_code=1,
        message="Traceback ...\nRuntimeError: CUDA error",
        finished=start + timedelta(minutes=30),
    )
    fail_job(cluster, "yoruba-topics-1")
    complete_job(
        cluster,
        "yoruba-topics-2",
        summary("topics", prompt_tokens=1_000_000, completion_tokens=1_000_000),
        started=start,
        finished=start + timedelta(hours=1),
    )
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Stalled" and s)
    stalled = condition(status, "Stalled")
    assert stalled["reason"] == "BudgetExceeded"
    # 3 completions x 1 GPU x 1 h x $4 + 0.5 h x $4 + tokens 1M x 0.15 + 1M x 0.60.
    assert status["cost"]["dollars"] == "14.7500"
    assert status["cost"]["byStage"]["topics"]["teacherDollars"] == "0.7500"
    assert status["cost"]["gpuHours"] == "3.5000"
    assert status["cost"]["budget"] == "4.5000"
    assert "maxDollars" in stalled["message"] and "not started: revise" in stalled["message"]
    assert stage(status, "revise")["waitingFor"] == "Budget"
    # The running stage that was started before the money ran out goes on.
    assert stage(status, "translate")["state"] == "Running"
    assert condition(status, "Reconciling")["status"] == "True"
    assert cluster.get("Job", NS, "yoruba-revise-1") is None
    # Raising the budget lets it go on.
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"budget": {"maxDollars": "100"}}})
    job(cluster, "yoruba-revise-1")
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Running" and s)
    assert condition(status, "Stalled")["status"] == "False"


def test_forecast_over_budget_stalls_before_the_first_stage(
    cluster: Api, operator: Operator
) -> None:
    cluster.create(language_model(budget={"maxDollars": "5"}))
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Stalled" and s)
    stalled = condition(status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "ForecastOverBudget")
    forecast = status["forecast"]
    assert forecast["overBudget"] is True and forecast["observedGeneration"] == 1
    # The message names the forecast, the budget and the ways out.
    assert f"${forecast['dollars']}" in stalled["message"]
    assert "maxDollars $5.0000" in stalled["message"]
    assert "onForecastOverBudget: Proceed" in stalled["message"]
    # The forecast is the recipe's: teacher tokens at the endpoint's prices plus GPU time.
    assert Decimal(forecast["dollars"]) > 5
    assert set(forecast["byStage"]) >= {"respond", "translate", "train"}
    assert cluster.list("Job", NS) == []
    events = wait_for(
        lambda: [e for e in cluster.list("Event", NS) if e.get("reason") == "ForecastOverBudget"]
    )
    assert events[0]["type"] == "Warning" and "maxDollars" in events[0]["message"]
    # Proceed lets it start; the forecast stays in status.
    cluster.patch(
        "LanguageModel", NS, "yoruba", {"spec": {"budget": {"onForecastOverBudget": "Proceed"}}}
    )
    job(cluster, "yoruba-topics-1")
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Running" and s)
    assert condition(status, "Stalled")["status"] == "False"
    assert status["forecast"]["observedGeneration"] == 2


def test_forecast_under_budget_runs(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model(budget={"maxDollars": "100000"}))
    job(cluster, "yoruba-topics-1")
    forecast = wait_for(lambda: lm_status(cluster).get("forecast"))
    assert forecast["overBudget"] is False and forecast["budget"] == "100000.0000"


def test_spec_change_reruns_changed_stages_only(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    complete_job(cluster, "yoruba-topics-1", summary("topics"))
    complete_job(cluster, "yoruba-scenarios-1", summary("scenarios"))
    job(cluster, "yoruba-contexts-1")
    # Scenarios' inputs change: scenarios reruns (fresh outputs), topics does not; the
    # running contexts stage does not read them and goes on.
    cluster.patch(
        "LanguageModel", NS, "yoruba", {"spec": {"data": {"scenarios": {"broadGeneral": 5}}}}
    )
    status = wait_for(lambda: (s := lm_status(cluster)).get("observedGeneration") == 2 and s)
    assert stage(status, "topics")["state"] == "Succeeded"
    assert stage(status, "scenarios")["state"] in ("Pending", "Running")
    rerun = job(cluster, "yoruba-scenarios-2")
    assert rerun["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--reset"
    assert cluster.get("Job", NS, "yoruba-contexts-1") is not None
    assert cluster.get("Job", NS, "yoruba-topics-2") is None
    cm = cluster.get("ConfigMap", NS, "yoruba-spec")
    assert "broadGeneral: 5" in cm["data"]["spec.yaml"]


def running_jobs(api: Api) -> list[str]:
    """Jobs that have not finished (the tests finish them by their status)."""
    return sorted(
        j["metadata"]["name"]
        for j in api.list("Job", NS)
        if not (j.get("status") or {}).get("conditions")
    )


def test_dag_runs_independent_stages_within_the_bound(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model(resources={"maxConcurrentStages": 2}))
    # topics and scenarios read nothing: they start together; the bound (2) holds the rest.
    wait_for(lambda: running_jobs(cluster) == ["yoruba-scenarios-1", "yoruba-topics-1"])
    status = wait_for(
        lambda: (
            (s := lm_status(cluster)).get("progress", {}).get("waiting")
            == {"contexts": "Concurrency", "translate": "Concurrency"}
            and s
        )
    )
    assert status["progress"]["stages"] == ["topics", "scenarios"]
    assert stage(status, "contexts")["waitingFor"] == "Concurrency"
    import time

    time.sleep(1.5)  # resyncs: still two
    assert len(running_jobs(cluster)) == 2
    # A slot frees: the next ready stage in run order takes it, never more than two.
    complete_job(cluster, "yoruba-topics-1", summary("topics"))
    wait_for(lambda: running_jobs(cluster) == ["yoruba-contexts-1", "yoruba-scenarios-1"])
    complete_job(cluster, "yoruba-scenarios-1", summary("scenarios"))
    wait_for(lambda: running_jobs(cluster) == ["yoruba-contexts-1", "yoruba-translate-1"])
    # revise waits for all of its inputs (contexts still runs) and for a slot.
    complete_job(cluster, "yoruba-translate-1", summary("translate"))
    time.sleep(1.5)
    assert cluster.get("Job", NS, "yoruba-revise-1") is None
    complete_job(cluster, "yoruba-contexts-1", summary("contexts"))
    job(cluster, "yoruba-revise-1")
    assert running_jobs(cluster) == ["yoruba-revise-1"]


def test_failed_stage_stops_only_its_dependants(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    for attempt in (1, 2, 3):  # retry budget 2: the third failure is final
        name = f"yoruba-topics-{attempt}"
        (pod, *_) = make_pods(cluster, job(cluster, name), count=1)
        finish_pod(cluster, pod, exit_code=1, message=summary("topics", error="boom"))
        fail_job(cluster, name)
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Stalled" and s)
    assert condition(status, "Stalled")["reason"] == "StageFailed"
    # The independent stages go on while the object is Stalled ...
    assert condition(status, "Reconciling")["status"] == "True"
    assert status["progress"]["stages"] == ["scenarios", "contexts", "translate"]
    for name in ("scenarios", "contexts", "translate"):
        complete_job(cluster, f"yoruba-{name}-1", summary(name))
    status = wait_for(
        lambda: (
            (s := lm_status(cluster))
            and stage(s, "translate").get("state") == "Succeeded"
            and condition(s, "Reconciling").get("status") == "False"
            and s
        )
    )
    # ... and the stages that read the failed one never start.
    import time

    time.sleep(1.5)
    assert cluster.get("Job", NS, "yoruba-revise-1") is None
    assert cluster.get("Job", NS, "yoruba-topics-4") is None
    assert stage(status, "revise")["state"] == "Pending"
    assert status["phase"] == "Stalled"
    assert status["progress"] == {
        "stagesDone": 3,
        "stagesTotal": 11,
        "percent": 27,
        "stages": [],
        "waiting": {},
    }


def test_status_patches_remove_what_is_gone(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    for name in (
        "topics",
        "scenarios",
        "contexts",
        "translate",
        "revise",
        "respond",
        "filter",
        "train",
    ):
        complete_job(cluster, f"yoruba-{name}-1", summary(name))
    complete_job(
        cluster,
        "yoruba-evaluate-1",
        summary(
            "evaluate",
            summary="belebele +9.9",
            evaluation={"belebele": {"base": 40.0, "tuned": 49.9, "delta": 9.9}},
        ),
    )
    complete_skipped(cluster)
    status = wait_for(lambda: (s := lm_status(cluster)).get("phase") == "Succeeded" and s)
    assert status["artifacts"]["model"].endswith("/yoruba/model")
    assert "review" not in status["artifacts"] and "published" not in status["artifacts"]
    assert status["evaluation"]["tasks"]["belebele"]["delta"] == 9.9
    assert stage(status, "train")["finishedAt"]
    # Training changes: train and evaluate run again; until they succeed, the status has no
    # model, no evaluation and no finish time for them: nothing stale is left behind.
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"training": {"learningRate": 2e-5}}})
    job(cluster, "yoruba-train-2")
    status = wait_for(lambda: (s := lm_status(cluster)).get("observedGeneration") == 2 and s)
    assert "model" not in status["artifacts"] and "evaluation" not in status["artifacts"]
    assert status["artifacts"]["dataset"].endswith("/yoruba/dataset")
    assert "evaluation" not in status
    train = stage(status, "train")
    assert train["state"] == "Running" and "finishedAt" not in train
    assert "extra" not in train["counts"]
    assert stage(status, "evaluate")["counts"] == {}
