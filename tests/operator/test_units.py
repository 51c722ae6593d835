"""The operator's pure parts: names, fingerprints, settings, Job building, decisions."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from kakugo_operator import naming, settings
from kakugo_operator.fingerprints import stage_fingerprints
from kakugo_operator.main import kopf_args
from kakugo_operator.observe import classify_failure, stage_counts
from kakugo_operator.reconcile import Observed, decide
from kakugo_operator.teacher import decide_teacher

from tests.operator.operator_helpers import language_model

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETTINGS = settings.OperatorSettings(storage_uri="s3://b/runs", backoff_base_seconds=10,
                                     backoff_max_seconds=25, retry_budget=2)


def observed(spec: dict | None = None, status: dict | None = None, jobs: list | None = None,
             pods: list | None = None, now: datetime = NOW, generation: int = 1) -> Observed:
    return Observed("yoruba", "kakugo", generation, spec or language_model()["spec"],
                    status or {}, jobs or [], pods or [], None, now)


def test_job_names_are_dns_safe_and_deterministic() -> None:
    assert naming.job_name("yoruba", "topics", 1) == "yoruba-topics-1"
    long = "a" * 60
    name = naming.job_name(long, "translate", 12)
    assert len(name) <= 63 and name.endswith("-translate-12")
    assert name == naming.job_name(long, "translate", 12)
    assert name != naming.job_name(long + "b", "translate", 12)


def test_fingerprints_move_only_downstream_of_a_change() -> None:
    base = language_model()["spec"]
    from kakugo_stages.manifest import validate_spec

    def fps(s: dict) -> dict[str, str]:
        return stage_fingerprints(validate_spec("LanguageModel", s).model_dump(
            mode="json", by_alias=True, exclude_none=True))

    changed = copy.deepcopy(base)
    changed["training"] = {"learningRate": 2e-5}
    a, b = fps(base), fps(changed)
    assert [s for s in a if a[s] != b[s]] == ["train", "evaluate"]
    changed = copy.deepcopy(base)
    changed["data"] = {**base["data"], "scenarios": {"broadGeneral": 3}}
    b = fps(changed)
    assert [s for s in a if a[s] != b[s]] == [
        "scenarios", "revise", "respond", "filter", "train", "evaluate"]
    changed = copy.deepcopy(base)
    changed["resources"] = {"train": {"gpus": 8}}
    changed["budget"] = {"maxDollars": "9"}
    assert fps(changed) == a  # placement and money never rerun anything


def test_settings_from_env_and_file(tmp_path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("images: {trainer: my/trainer:2}\ngpuPrices: {NVIDIA-L4: {spot: '0.30'}}\n"
                    "retryBudget: 5\n")
    s = settings.load({"KAKUGO_OPERATOR_SETTINGS": str(path), "KAKUGO_RETRY_BUDGET": "7",
                       "KAKUGO_IMAGE_EVAL": "my/eval:3", "KAKUGO_NAMESPACES": "a, b"})
    assert s.retry_budget == 7
    assert s.image_for("train") == "my/trainer:2"
    assert s.image_for("evaluate") == "my/eval:3"
    assert s.image_for("topics") == settings.DEFAULT_IMAGES["stages"]
    assert s.gpu_price("NVIDIA-L4", "spot") == Decimal("0.30")
    assert s.gpu_price("unknown", None) == Decimal("4.00")  # the default product's price
    assert s.namespaces == ("a", "b")
    assert s.backoff(1) == 30 and s.backoff(2) == 60
    with pytest.raises(ValueError, match="unknown operator setting"):
        settings.from_mapping({"retryBudgte": 1})


def test_kopf_args() -> None:
    assert kopf_args(["-n", "ml", "--namespace", "ml2", "--liveness", "none"]) == [
        "run", "--module", "kakugo_operator.handlers", "--namespace=ml", "--namespace=ml2",
        "--standalone"]
    assert "--peering=kakugo" in kopf_args(["--peering", "kakugo"])


def test_decide_is_level_based() -> None:
    first = decide(observed(), SETTINGS)
    assert [o["metadata"]["name"] for o in first.create] == ["yoruba-topics-1"]
    assert first.apply_config_map is not None
    # The same world again: the same Job name (a 409 would adopt it), no second Job.
    again = decide(observed(), SETTINGS)
    assert [o["metadata"]["name"] for o in again.create] == ["yoruba-topics-1"]
    # With the status written and the Job seen: nothing to create.
    job = first.create[0]
    settled = decide(observed(status=first.status, jobs=[job]), SETTINGS)
    assert settled.create == [] and settled.apply_config_map is None
    assert settled.status["stages"][0]["state"] == "Running"


def test_decide_adopts_a_job_the_status_missed() -> None:
    # Created just before a crash: the status never heard of attempt 1.
    job = decide(observed(), SETTINGS).create[0]
    plan = decide(observed(jobs=[job]), SETTINGS)
    assert plan.create == []
    assert plan.status["stages"][0]["job"] == "yoruba-topics-1"


def _pod(attempt: int, **status) -> dict:
    return {"metadata": {"name": f"p{attempt}", "labels": {
        naming.STAGE_LABEL: "topics", naming.ATTEMPT_LABEL: str(attempt)}},
        "spec": {"containers": [{}]}, "status": status}


def test_backoff_then_budget_then_stall() -> None:
    plan = decide(observed(), SETTINGS)
    status, job = plan.status, plan.create[0]
    failed = {**job, "status": {"failed": 1}}
    broken = _pod(1, phase="Failed", containerStatuses=[{"state": {"terminated": {
        "exitCode": 2, "reason": "Error", "message": "oops"}}}])
    plan = decide(observed(status=status, jobs=[failed], pods=[broken]), SETTINGS)
    entry = plan.status["stages"][0]
    assert (entry["state"], entry["failures"], plan.create) == ("Retrying", 1, [])
    assert entry["retryAt"] == "2026-11-26T12:00:10Z" and plan.requeue_after == 10
    later = NOW + timedelta(seconds=11)
    plan = decide(observed(status=plan.status, jobs=[failed], pods=[broken], now=later),
                  SETTINGS)
    assert [o["metadata"]["name"] for o in plan.create] == ["yoruba-topics-2"]


def test_a_retry_request_gives_failed_stages_a_fresh_budget() -> None:
    plan = decide(observed(), SETTINGS)
    status, job = plan.status, plan.create[0]
    failed = {**job, "status": {"failed": 1}}
    broken = _pod(1, phase="Failed", containerStatuses=[{"state": {"terminated": {
        "exitCode": 2, "reason": "Error", "message": "oops"}}}])
    status["stages"][0].update(failures=SETTINGS.retry_budget)
    plan = decide(observed(status=status, jobs=[failed], pods=[broken]), SETTINGS)
    assert plan.status["stages"][0]["state"] == "Failed"
    stalled = next(c for c in plan.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "StageFailed"

    def asked(status: dict, value: str) -> Observed:
        obs = observed(status=status, jobs=[failed], pods=[broken])
        return replace(obs, retry_request=value)

    retried = decide(asked(plan.status, "2026-11-26T12:00:00Z"), SETTINGS)
    entry = retried.status["stages"][0]
    assert (entry["state"], entry["failures"]) == ("Running", 0)
    assert [o["metadata"]["name"] for o in retried.create] == ["yoruba-topics-2"]
    assert retried.status["retryRequest"] == "2026-11-26T12:00:00Z"
    assert any(e[1] == "RetryRequested" for e in retried.events)
    # The same value again changes nothing: the request was already honoured.
    again = decide(asked(retried.status, "2026-11-26T12:00:00Z"), SETTINGS)
    assert not any(e[1] == "RetryRequested" for e in again.events)


def test_failure_classification() -> None:
    evicted = _pod(1, phase="Failed", reason="Evicted")
    assert classify_failure([evicted]).disrupted
    preempted = _pod(1, conditions=[{"type": "DisruptionTarget", "status": "True",
                                     "reason": "PreemptionByScheduler"}])
    assert classify_failure([preempted]).reason == "PreemptionByScheduler"
    assert classify_failure([]).disrupted  # the Pods were deleted
    oom = _pod(1, containerStatuses=[{"state": {"terminated": {"exitCode": 137,
                                                               "reason": "OOMKilled"}}}])
    failure = classify_failure([oom])
    assert not failure.disrupted and failure.reason == "OOMKilled (exit code 137)"


def test_counts_take_the_largest_summary() -> None:
    def pod(msg: str) -> dict:
        return _pod(1, containerStatuses=[{"state": {"terminated": {"exitCode": 0,
                                                                    "message": msg}}}])
    counts = stage_counts([pod('{"rows_out": 5, "requests": 9}'),
                           pod('{"rows_out": 7, "requests": 8}'), pod("not json")])
    assert counts == {"rowsOut": 7, "requests": 9}


def test_invalid_spec_names_the_field() -> None:
    spec = language_model(teacher={})["spec"]
    plan = decide(observed(spec=spec), SETTINGS)
    stalled = next(c for c in plan.status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "InvalidSpec" and "spec.teacher" in stalled["message"]
    assert plan.create == []


def test_teacher_scales_to_zero_after_idle() -> None:
    spec = {"model": "m", "device": "cpu", "gpus": 0, "idleSeconds": 60}
    plan = decide_teacher("t", "ns", spec, {}, None, ["lm"], NOW, SETTINGS)
    assert [o["kind"] for o in plan.create] == ["Deployment", "Service"]
    deploy = plan.create[0]
    busy = decide_teacher("t", "ns", spec, plan.status, deploy, [], NOW + timedelta(seconds=30),
                          SETTINGS)
    assert busy.replicas is None and busy.requeue_after == 30
    idle = decide_teacher("t", "ns", spec, busy.status, deploy, [], NOW + timedelta(seconds=61),
                          SETTINGS)
    assert idle.replicas == 0 and idle.status["phase"] == "Idle"


def test_progress_budget_and_teacher_series_are_removed_on_delete() -> None:
    from kakugo_operator import metrics
    from prometheus_client import generate_latest

    metrics.observe_plan("units", "lm", {"progress": {"stagesDone": 2, "stagesTotal": 4}},
                         [], [], {"language": "yo", "budget": {"maxDollars": "10"}})
    metrics.observe_teacher("units", "tch", ready=False, clients=3)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'kakugo_progress_ratio{language="yo",languagemodel="lm",namespace="units"} 0.5' in text
    assert 'kakugo_budget_dollars{languagemodel="lm",namespace="units"} 10.0' in text
    assert 'kakugo_teacher_ready{namespace="units",teacher="tch"} 0.0' in text
    assert 'kakugo_teacher_clients{namespace="units",teacher="tch"} 3.0' in text
    metrics.forget("units", "lm")
    metrics.forget_teacher("units", "tch")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'namespace="units"' not in text
