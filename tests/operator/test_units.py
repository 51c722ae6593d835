"""The operator's pure parts: names, fingerprints, settings, Job building, decisions."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from kakugo_operator import naming, settings
from kakugo_operator.diff import merge_diff
from kakugo_operator.fingerprints import stage_fingerprints
from kakugo_operator.main import kopf_args
from kakugo_operator.observe import classify_failure, iso, parse_time, stage_counts
from kakugo_operator.reconcile import Observed, decide
from kakugo_operator.stage_machine import retry_time
from kakugo_operator.teacher import decide_teacher

from tests.operator.operator_helpers import language_model

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETTINGS = settings.OperatorSettings(
    storage_uri="s3://b/runs", backoff_base_seconds=10, backoff_max_seconds=25, retry_budget=2
)


def observed(
    spec: dict | None = None,
    status: dict | None = None,
    jobs: list | None = None,
    pods: list | None = None,
    now: datetime = NOW,
    generation: int = 1,
) -> Observed:
    return Observed(
        "yoruba",
        "kakugo",
        generation,
        spec or language_model()["spec"],
        status or {},
        jobs or [],
        pods or [],
        None,
        now,
    )


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
        return stage_fingerprints(
            validate_spec("LanguageModel", s).model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
        )

    changed = copy.deepcopy(base)
    changed["training"] = {"learningRate": 2e-5}
    a, b = fps(base), fps(changed)
    assert [s for s in a if a[s] != b[s]] == ["train", "evaluate", "review", "publish"]
    changed = copy.deepcopy(base)
    changed["data"] = {**base["data"], "scenarios": {"broadGeneral": 3}}
    b = fps(changed)
    assert [s for s in a if a[s] != b[s]] == [
        "scenarios",
        "revise",
        "respond",
        "filter",
        "train",
        "evaluate",
        "review",
        "publish",
    ]
    changed = copy.deepcopy(base)
    changed["resources"] = {"train": {"gpus": 8}}
    changed["budget"] = {"maxDollars": "9"}
    assert fps(changed) == a  # placement and money never rerun anything


def test_settings_from_env_and_file(tmp_path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(
        "images: {trainer: my/trainer:2}\ngpuPrices: {NVIDIA-L4: {spot: '0.30'}}\nretryBudget: 5\n"
    )
    s = settings.load(
        {
            "KAKUGO_OPERATOR_SETTINGS": str(path),
            "KAKUGO_RETRY_BUDGET": "7",
            "KAKUGO_IMAGE_EVAL": "my/eval:3",
            "KAKUGO_NAMESPACES": "a, b",
        }
    )
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


def test_bad_settings_fail_naming_the_key(tmp_path, monkeypatch) -> None:
    with pytest.raises(settings.SettingsError, match=r"retryBudget \(\$KAKUGO_RETRY_BUDGET\)"):
        settings.load({"KAKUGO_RETRY_BUDGET": "three"})
    with pytest.raises(settings.SettingsError, match=r"specChanges .*'rerun' or 'refuse'"):
        settings.load({"KAKUGO_SPEC_CHANGES": "sometimes"})
    path = tmp_path / "settings.yaml"
    path.write_text("backoffMaxSeconds: -1\n")
    with pytest.raises(settings.SettingsError, match=f"backoffMaxSeconds \\(file {path}\\)"):
        settings.load({"KAKUGO_OPERATOR_SETTINGS": str(path)})
    path.write_text("gpuPrices: {NVIDIA-L4: {spot: cheap}}\n")
    with pytest.raises(settings.SettingsError, match=r"gpuPrices\.NVIDIA-L4\.spot"):
        settings.load({"KAKUGO_OPERATOR_SETTINGS": str(path)})
    path.write_text("images: {gpu: x}\n")
    with pytest.raises(settings.SettingsError, match="unknown image kind"):
        settings.load({"KAKUGO_OPERATOR_SETTINGS": str(path)})
    # `kakugo operator` stops before Kopf starts, with the message.
    monkeypatch.setenv("KAKUGO_METRICS_PORT", "http")
    with pytest.raises(SystemExit, match="metricsPort"):
        kopf_args([])


def test_kopf_args() -> None:
    assert kopf_args(["-n", "ml", "--namespace", "ml2", "--liveness", "none"]) == [
        "run",
        "--module",
        "kakugo_operator.handlers",
        "--namespace=ml",
        "--namespace=ml2",
        "--standalone",
    ]
    assert "--peering=kakugo" in kopf_args(["--peering", "kakugo"])


def names(objs: list[dict]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


ROOTS = ["yoruba-topics-1", "yoruba-scenarios-1", "yoruba-contexts-1", "yoruba-translate-1"]


def states(plan) -> dict[str, str]:
    return {e.name: e.state for e in plan.status.stages}


def test_decide_is_level_based() -> None:
    # The stages that read no other stage start together (at most maxConcurrentStages: 4).
    first = decide(observed(), SETTINGS)
    assert names(first.create) == ROOTS
    assert first.apply_config_map is not None
    # The same world again: the same Job names (a 409 would adopt them), no other Job.
    again = decide(observed(), SETTINGS)
    assert names(again.create) == ROOTS
    # With the status written and the Jobs seen: nothing to create.
    settled = decide(observed(status=first.status.dump(), jobs=first.create), SETTINGS)
    assert settled.create == [] and settled.apply_config_map is None
    assert settled.status.stage("topics").state == "Running"
    assert settled.status.progress.stages == ["topics", "scenarios", "contexts", "translate"]
    assert settled.status.phase == "Running"


def test_decide_adopts_a_job_the_status_missed() -> None:
    # Created just before a crash: the status never heard of attempt 1.
    job = decide(observed(), SETTINGS).create[0]
    plan = decide(observed(jobs=[job]), SETTINGS)
    assert "yoruba-topics-1" not in names(plan.create)
    assert plan.status.stage("topics").job == "yoruba-topics-1"


def succeeded(status: dict, *stages: str) -> dict:
    """`status` with these stages Succeeded at attempt 1."""
    status = copy.deepcopy(status)
    for entry in status["stages"]:
        if entry["name"] in stages:
            entry.update(state="Succeeded", attempt=1, job=f"yoruba-{entry['name']}-1")
    return status


def test_dag_bound_and_inputs() -> None:
    spec = language_model(resources={"maxConcurrentStages": 2})["spec"]
    first = decide(observed(spec=spec), SETTINGS)
    assert names(first.create) == ["yoruba-topics-1", "yoruba-scenarios-1"]
    assert first.status.progress.waiting == {"contexts": "Concurrency", "translate": "Concurrency"}
    assert first.status.stage("contexts").waiting_for == "Concurrency"
    # topics is done: one slot frees, the next ready stage in run order takes it.
    status = succeeded(first.status.dump(), "topics")
    jobs = [j for j in first.create if j["metadata"]["name"] != "yoruba-topics-1"]
    plan = decide(observed(spec=spec, status=status, jobs=jobs), SETTINGS)
    assert names(plan.create) == ["yoruba-contexts-1"]
    assert plan.status.stage("contexts").waiting_for is None
    # revise reads topics, scenarios and contexts: it waits for all three.
    status = succeeded(plan.status.dump(), "scenarios")
    plan = decide(observed(spec=spec, status=status, jobs=jobs + plan.create), SETTINGS)
    assert names(plan.create) == ["yoruba-translate-1"]
    status = succeeded(plan.status.dump(), "contexts")
    plan = decide(observed(spec=spec, status=status, jobs=jobs + plan.create), SETTINGS)
    assert names(plan.create) == ["yoruba-revise-1"]
    assert plan.status.progress.stages == ["revise", "translate"]


def _pod(attempt: int, stage_name: str = "topics", **status) -> dict:
    return {
        "metadata": {
            "name": f"{stage_name}-p{attempt}",
            "labels": {naming.STAGE_LABEL: stage_name, naming.ATTEMPT_LABEL: str(attempt)},
        },
        "spec": {"containers": [{}]},
        "status": status,
    }


def _broken(attempt: int, stage_name: str = "topics") -> dict:
    return _pod(
        attempt,
        stage_name,
        phase="Failed",
        containerStatuses=[
            {"state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "oops"}}}
        ],
    )


def test_backoff_then_budget_then_stall() -> None:
    """Failures back off exponentially (10 s, then 20 s); the third failure spends the retry
    budget (2): the stage is Failed and the object Stalled, with no further attempt."""
    plan = decide(observed(), SETTINGS)
    status, jobs = plan.status.dump(), plan.create
    now = NOW
    for attempt, delay in ((1, 10), (2, 20)):
        failed = [
            {**j, "status": {"failed": 1}}
            if j["metadata"]["name"] == f"yoruba-topics-{attempt}"
            else j
            for j in jobs
        ]
        pods = [_broken(a) for a in range(1, attempt + 1)]
        plan = decide(observed(status=status, jobs=failed, pods=pods, now=now), SETTINGS)
        entry = plan.status.stage("topics")
        assert (entry.state, entry.failures, plan.create) == ("Retrying", attempt, [])
        assert entry.retry_at == iso(now + timedelta(seconds=delay))
        assert plan.requeue_after == delay
        assert entry.waiting_for == "Backoff"
        assert plan.status.phase == "Running"
        assert condition_of(plan, "Stalled").status == "False"
        # Not before the backoff has passed ...
        early = decide(
            observed(
                status=plan.status.dump(),
                jobs=failed,
                pods=pods,
                now=now + timedelta(seconds=delay - 1),
            ),
            SETTINGS,
        )
        assert early.create == []
        # ... then the next attempt.
        now = now + timedelta(seconds=delay + 1)
        plan = decide(
            observed(status=plan.status.dump(), jobs=failed, pods=pods, now=now), SETTINGS
        )
        assert names(plan.create) == [f"yoruba-topics-{attempt + 1}"]
        status, jobs = plan.status.dump(), failed + plan.create
    failed = [
        {**j, "status": {"failed": 1}} if "topics" in j["metadata"]["name"] else j for j in jobs
    ]
    pods = [_broken(a) for a in (1, 2, 3)]
    plan = decide(observed(status=status, jobs=failed, pods=pods, now=now), SETTINGS)
    entry = plan.status.stage("topics")
    assert (entry.state, entry.failures) == ("Failed", 3)
    assert "retry budget 2" in entry.message and "oops" in entry.message
    assert plan.create == []
    assert plan.log_pods == {"topics": "topics-p3"}
    stalled = condition_of(plan, "Stalled")
    assert (stalled.status, stalled.reason) == ("True", "StageFailed")
    assert plan.status.phase == "Stalled"
    assert ("Warning", "StageFailed") in [e[:2] for e in plan.events]
    # Level-based: the same world later starts nothing either.
    again = decide(
        observed(status=plan.status.dump(), jobs=failed, pods=pods, now=now + timedelta(hours=1)),
        SETTINGS,
    )
    assert again.create == [] and again.status.stage("topics").state == "Failed"


def condition_of(plan, kind: str):
    return next(c for c in plan.status.conditions if c.type == kind)


def test_failed_stage_stops_only_its_dependants() -> None:
    plan = decide(observed(), SETTINGS)
    status = succeeded(plan.status.dump(), "scenarios", "contexts")
    entry = next(e for e in status["stages"] if e["name"] == "topics")
    entry.update(failures=SETTINGS.retry_budget)
    jobs = [
        {**j, "status": {"failed": 1}} if j["metadata"]["name"] == "yoruba-topics-1" else j
        for j in plan.create
    ]
    plan = decide(observed(status=status, jobs=jobs, pods=[_broken(1)]), SETTINGS)
    assert states(plan)["topics"] == "Failed"
    # revise reads topics: it does not start; translate reads nothing of it and goes on.
    assert plan.create == []
    assert states(plan)["revise"] == "Pending" and states(plan)["translate"] == "Running"
    assert plan.status.phase == "Stalled"
    reconciling = condition_of(plan, "Reconciling")
    assert (reconciling.status, reconciling.reason) == ("True", "TranslateRunning")
    # translate finishes: filter would need respond too, so nothing more starts.
    status = plan.status.dump()
    done = [
        {**j, "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
        if "translate" in j["metadata"]["name"]
        else j
        for j in jobs
    ]
    pods = [_broken(1), _pod(1, "translate", phase="Succeeded")]
    plan = decide(observed(status=status, jobs=done, pods=pods), SETTINGS)
    assert states(plan)["translate"] == "Succeeded" and plan.create == []
    assert condition_of(plan, "Reconciling").status == "False"


def test_fleet_member_waits_for_gpu_admission() -> None:
    spec = language_model(resources={"topics": {"gpus": 1}})["spec"]
    obs = replace(observed(spec=spec), fleet="west")
    plan = decide(obs, SETTINGS)
    # Its CPU stages go on; the GPU stage waits for the fleet's admission.
    assert names(plan.create) == ROOTS[1:]
    assert plan.status.stage("topics").waiting_for == "GPUQuota"
    assert plan.status.phase == "Running"
    admitted = decide(
        replace(obs, status=plan.status.dump(), jobs=plan.create, gpu_admitted=True), SETTINGS
    )
    assert names(admitted.create) == ["yoruba-topics-1"]
    # With nothing else to run, a member waiting for admission is Queued.
    queued = decide(replace(obs, spec={**spec, "resources": {"default": {"gpus": 1}}}), SETTINGS)
    assert queued.create == [] and queued.status.phase == "Queued"
    assert condition_of(queued, "Ready").reason == "WaitingForGPUQuota"


def test_teacher_stages_wait_for_a_ready_teacher() -> None:
    spec = language_model(teacher={"ref": {"name": "t"}})["spec"]
    plan = decide(observed(spec=spec), SETTINGS)
    assert plan.create == []
    assert plan.status.progress.waiting == dict.fromkeys(
        ["topics", "scenarios", "contexts", "translate"], "Teacher"
    )
    assert condition_of(plan, "Reconciling").reason == "WaitingForTeacher"
    teacher = {
        "metadata": {"name": "t"},
        "status": {
            "url": "http://t.kakugo.svc:8000/v1",
            "model": "m",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    plan = decide(replace(observed(spec=spec), teacher=teacher), SETTINGS)
    assert names(plan.create) == ROOTS


def test_a_skipped_stage_lists_no_artifact() -> None:
    # Without spec.publish the publish stage succeeds at once with nothing made: its
    # declared artifact must not appear in status.artifacts.
    plan = decide(observed(), SETTINGS)
    everything = succeeded(plan.status.dump(), *[e.name for e in plan.status.stages])
    for entry in everything["stages"]:
        if entry["name"] == "publish":
            entry["counts"] = {"extra": {"stage_skipped": "spec.publish is not set"}}
    done = decide(observed(status=everything), SETTINGS)
    assert "published" not in done.status.artifacts
    assert done.status.artifacts["review"].endswith("/kakugo/yoruba/review/index.html")


def test_spec_change_resets_the_moved_stages_and_drops_stale_status() -> None:
    plan = decide(observed(), SETTINGS)
    everything = succeeded(plan.status.dump(), *[e.name for e in plan.status.stages])
    for entry in everything["stages"]:
        if entry["name"] == "evaluate":
            entry["counts"] = {
                "extra": {
                    "summary": "belebele +1.0",
                    "evaluation": {"belebele": {"base": 1.0, "tuned": 2.0, "delta": 1.0}},
                }
            }
    done = decide(observed(status=everything), SETTINGS)
    assert done.status.phase == "Succeeded"
    assert done.status.artifacts["model"].endswith("/kakugo/yoruba/model")
    assert done.status.evaluation.summary == "belebele +1.0"
    spec = language_model(training={"learningRate": 2e-5})["spec"]
    plan = decide(observed(spec=spec, status=done.status.dump(), generation=2), SETTINGS)
    assert {s: st for s, st in states(plan).items() if st != "Succeeded"} == {
        "train": "Running",
        "evaluate": "Pending",
        "review": "Pending",
        "publish": "Pending",
    }
    assert plan.status.stage("train").reset is True
    assert names(plan.create) == ["yoruba-train-2"]
    assert plan.create[0]["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--reset"
    # What the rerun has not produced again is gone from status, and the patch says so.
    assert "model" not in plan.status.artifacts and plan.status.evaluation is None
    patch = merge_diff(done.status.dump(), plan.status.dump())
    assert patch["artifacts"] == {
        "model": None,
        "evaluation": None,
        "review": None,
        "published": None,
    }
    assert patch["evaluation"] is None


def test_merge_diff_removes_nested_keys() -> None:
    old = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": [1, 2], "g": 1}
    new = {"a": {"b": 1, "c": {"d": 2}}, "f": [1]}
    assert merge_diff(old, new) == {"a": {"c": {"e": None}}, "f": [1], "g": None}
    assert merge_diff(new, new) == {}


def test_served_teacher_is_kept_at_the_spec() -> None:
    serve = {"model": "tiny", "device": "cpu", "gpus": 0}
    spec = language_model(teacher={"serve": serve})["spec"]
    plan = decide(observed(spec=spec), SETTINGS)
    (teacher,) = [o for o in plan.create if o["kind"] == "Teacher"]
    assert teacher["metadata"]["name"] == "yoruba-teacher" and teacher["spec"] == serve
    seen = {**teacher, "spec": {**serve, "port": 8000}}  # defaults filled by the API server
    plan = decide(replace(observed(spec=spec), teacher=seen), SETTINGS)
    assert not [o for o in plan.create if o["kind"] == "Teacher"] and plan.teacher_patch is None
    # A change of spec.teacher.serve reaches it (keys it no longer sets become null).
    changed = language_model(teacher={"serve": {"model": "tiny-2", "device": "cpu", "gpus": 0}})[
        "spec"
    ]
    plan = decide(replace(observed(spec=changed), teacher=seen), SETTINGS)
    assert plan.teacher_patch["spec"] == {"model": "tiny-2", "port": None}
    assert plan.teacher_patch["metadata"]["annotations"]["kakugo.io/spec-hash"]
    # A Teacher that is not ours (no label of this LanguageModel) is left alone.
    foreign = {**seen, "metadata": {"name": "yoruba-teacher", "labels": {}}}
    assert decide(replace(observed(spec=changed), teacher=foreign), SETTINGS).teacher_patch is None


def test_a_retry_request_gives_failed_stages_a_fresh_budget() -> None:
    plan = decide(observed(), SETTINGS)
    status = plan.status.dump()
    jobs = [
        {**j, "status": {"failed": 1}} if j["metadata"]["name"] == "yoruba-topics-1" else j
        for j in plan.create
    ]
    next(e for e in status["stages"] if e["name"] == "topics")["failures"] = SETTINGS.retry_budget
    plan = decide(observed(status=status, jobs=jobs, pods=[_broken(1)]), SETTINGS)
    assert plan.status.stage("topics").state == "Failed"
    stalled = condition_of(plan, "Stalled")
    assert stalled.status == "True" and stalled.reason == "StageFailed"

    def asked(status: dict, value: str) -> Observed:
        return replace(observed(status=status, jobs=jobs, pods=[_broken(1)]), retry_request=value)

    retried = decide(asked(plan.status.dump(), "2026-11-26T12:00:00Z"), SETTINGS)
    entry = retried.status.stage("topics")
    assert (entry.state, entry.failures) == ("Running", 0)
    assert names(retried.create) == ["yoruba-topics-2"]
    assert retried.status.retry_request == "2026-11-26T12:00:00Z"
    assert any(e[1] == "RetryRequested" for e in retried.events)
    # The same value again changes nothing: the request was already honoured.
    again = decide(asked(retried.status.dump(), "2026-11-26T12:00:00Z"), SETTINGS)
    assert not any(e[1] == "RetryRequested" for e in again.events)


def test_failure_classification() -> None:
    evicted = _pod(1, phase="Failed", reason="Evicted")
    assert classify_failure([evicted]).disrupted
    preempted = _pod(
        1,
        conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
        ],
    )
    assert classify_failure([preempted]).reason == "PreemptionByScheduler"
    assert classify_failure([]).disrupted  # the Pods were deleted
    oom = _pod(
        1, containerStatuses=[{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]
    )
    failure = classify_failure([oom])
    assert not failure.disrupted and failure.reason == "OOMKilled (exit code 137)"


def test_counts_take_the_largest_summary() -> None:
    def pod(msg: str) -> dict:
        return _pod(
            1, containerStatuses=[{"state": {"terminated": {"exitCode": 0, "message": msg}}}]
        )

    counts = stage_counts(
        [
            pod('{"rows_out": 5, "requests": 9}'),
            pod('{"rows_out": 7, "requests": 8}'),
            pod("not json"),
        ]
    )
    assert counts == {"rowsOut": 7, "requests": 9}


def test_invalid_spec_names_the_field() -> None:
    spec = language_model(teacher={})["spec"]
    plan = decide(observed(spec=spec), SETTINGS)
    stalled = condition_of(plan, "Stalled")
    assert stalled.reason == "InvalidSpec" and "spec.teacher" in stalled.message
    assert stalled.observed_generation == 1
    assert plan.create == []


def test_teacher_scales_to_zero_after_idle() -> None:
    spec = {"model": "m", "device": "cpu", "gpus": 0, "idleSeconds": 60}
    plan = decide_teacher("t", "ns", spec, {}, None, ["lm"], NOW, SETTINGS)
    assert [o["kind"] for o in plan.create] == ["Deployment", "Service", "NetworkPolicy"]
    deploy, svc, policy = plan.create
    busy = decide_teacher(
        "t",
        "ns",
        spec,
        plan.status.dump(),
        deploy,
        [],
        NOW + timedelta(seconds=30),
        SETTINGS,
        service_obj=svc,
        policy_obj=policy,
    )
    assert busy.replicas is None and busy.requeue_after == 30 and busy.create == []
    idle = decide_teacher(
        "t",
        "ns",
        spec,
        busy.status.dump(),
        deploy,
        [],
        NOW + timedelta(seconds=61),
        SETTINGS,
        service_obj=svc,
    )
    assert idle.replicas == 0 and idle.status.phase == "Idle"
    assert all(c.observed_generation == 1 for c in idle.status.conditions)


def test_teacher_spec_change_rolls_out() -> None:
    spec = {"model": "m", "device": "cpu", "gpus": 0}
    deploy, svc, policy = decide_teacher("t", "ns", spec, {}, None, ["lm"], NOW, SETTINGS).create
    deploy = {**deploy, "spec": {**deploy["spec"], "replicas": 1}, "status": {"readyReplicas": 1}}
    same = decide_teacher(
        "t", "ns", spec, {}, deploy, ["lm"], NOW, SETTINGS, service_obj=svc, policy_obj=policy
    )
    assert (same.patch_deployment, same.patch_service, same.create) == (None, None, [])
    assert same.patch_network_policy is None
    assert same.status.phase == "Ready"
    changed = {**spec, "maxNumSeqs": 7, "port": 8080, "resources": {"nodeSelector": {"a": "b"}}}
    plan = decide_teacher(
        "t",
        "ns",
        changed,
        {},
        deploy,
        ["lm"],
        NOW,
        SETTINGS,
        generation=2,
        service_obj=svc,
        policy_obj=policy,
    )
    # The NetworkPolicy follows the port.
    assert plan.patch_network_policy["spec"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 8080}
    ]
    template = plan.patch_deployment["spec"]["template"]
    args = template["spec"]["containers"][0]["args"]
    assert args[args.index("--max-num-seqs") + 1] == "7"
    assert template["spec"]["nodeSelector"] == {"a": "b"}
    assert "replicas" not in plan.patch_deployment["spec"]  # idle scaling owns them
    assert plan.patch_service["spec"]["ports"][0]["port"] == 8080
    assert plan.status.phase == "Starting"  # the old Pods are not the new spec
    assert ("Normal", "RollingOut") in [e[:2] for e in plan.events]
    # A missing Service (deleted by hand) is created again.
    again = decide_teacher("t", "ns", spec, {}, deploy, ["lm"], NOW, SETTINGS, policy_obj=policy)
    assert [o["kind"] for o in again.create] == ["Service"]
    # Made by an older operator (no hash), with the API server's defaults: only stamped.
    old = copy.deepcopy(deploy)
    del old["metadata"]["annotations"]
    container = old["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    old["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    stamped = decide_teacher(
        "t", "ns", spec, {}, old, ["lm"], NOW, SETTINGS, service_obj=svc, policy_obj=policy
    )
    assert stamped.patch_deployment == {
        "metadata": {
            "labels": deploy["metadata"]["labels"],
            "annotations": {
                "kakugo.io/template-hash": deploy["metadata"]["annotations"][
                    "kakugo.io/template-hash"
                ]
            },
        }
    }
    assert stamped.status.phase == "Ready"


def test_progress_budget_and_teacher_series_are_removed_on_delete() -> None:
    from kakugo_operator import metrics
    from prometheus_client import generate_latest

    metrics.observe_plan(
        "units",
        "lm",
        {"progress": {"stagesDone": 2, "stagesTotal": 4}, "forecast": {"dollars": "12.5000"}},
        [],
        [],
        {"language": "yo", "budget": {"maxDollars": "10"}},
    )
    metrics.observe_teacher("units", "tch", ready=False, clients=3)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'kakugo_progress_ratio{language="yo",languagemodel="lm",namespace="units"} 0.5' in text
    assert 'kakugo_budget_dollars{languagemodel="lm",namespace="units"} 10.0' in text
    assert 'kakugo_forecast_dollars{languagemodel="lm",namespace="units"} 12.5' in text
    assert 'kakugo_teacher_ready{namespace="units",teacher="tch"} 0.0' in text
    assert 'kakugo_teacher_clients{namespace="units",teacher="tch"} 3.0' in text
    metrics.forget("units", "lm")
    metrics.forget_teacher("units", "tch")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'namespace="units"' not in text


def test_written_statuses_fit_the_crd_status_schemas() -> None:
    """The CRDs' status schemas come from the status models: what the decisions write is
    valid there (the API server would reject it, or prune what the schema lacks)."""
    from kakugo_operator.fleet import decide_fleet
    from openapi_schema_validator import OAS30Validator

    from kakugo_stages.crds import all_crds

    def validator(plural: str) -> OAS30Validator:
        crd = all_crds()[f"{plural}.kakugo.io.yaml"]
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        return OAS30Validator(schema["properties"]["status"])

    lm = validator("languagemodels")
    running = decide(observed(), SETTINGS)
    failed_job = {**running.create[0], "status": {"failed": 1}}
    status = running.status.dump()
    status["stages"][0]["failures"] = SETTINGS.retry_budget
    stalled = decide(
        observed(status=status, jobs=[failed_job, *running.create[1:]], pods=[_broken(1)]), SETTINGS
    )
    everything = succeeded(running.status.dump(), *[e.name for e in running.status.stages])
    (evaluate,) = [e for e in everything["stages"] if e["name"] == "evaluate"]
    evaluate["counts"] = {
        "extra": {
            "summary": "belebele +1.0",
            "evaluation": {"belebele": {"base": 1.0, "tuned": 2.0, "delta": 1.0}},
        }
    }
    done = decide(observed(status=everything), SETTINGS)
    invalid = decide(observed(spec=language_model(teacher={})["spec"]), SETTINGS)
    for plan in (running, stalled, done, invalid):
        errors = [e.message for e in lm.iter_errors(plan.status.dump())]
        assert not errors, errors
    teacher = decide_teacher(
        "t", "ns", {"model": "m", "device": "cpu", "gpus": 0}, {}, None, ["lm"], NOW, SETTINGS
    )
    assert not list(validator("teachers").iter_errors(teacher.status.dump()))
    fleet_plan = decide_fleet(
        "f",
        "ns",
        1,
        {
            "languages": [{"language": "yo"}, {"language": "Klingon"}],
            "template": {
                "teacher": {"endpoint": {"url": "https://api.example.com/v1", "model": "m"}}
            },
        },
        {},
        [],
        {},
        NOW,
    )
    assert not list(validator("languagefleets").iter_errors(fleet_plan.status.dump()))


def test_a_teacher_is_needed_while_a_teacher_stage_runs_or_could_start() -> None:
    from kakugo_operator.handlers import needs_teacher

    def status(phase: str, **stages: tuple[str, str | None]) -> dict:
        return {
            "phase": phase,
            "stages": [
                {"name": n, "state": st, **({"waitingFor": w} if w else {})}
                for n, (st, w) in stages.items()
            ],
        }

    assert needs_teacher({})  # new: about to start its first teacher stages
    assert needs_teacher(status("Running", topics=("Pending", "Teacher")))
    assert needs_teacher(status("Running", topics=("Retrying", "Backoff")))
    # A failed stage stalls the object, but translate still runs and needs the server.
    assert needs_teacher(status("Stalled", topics=("Failed", None), translate=("Running", None)))
    assert not needs_teacher(
        status("Stalled", topics=("Failed", None), translate=("Succeeded", None))
    )
    assert not needs_teacher(status("Running", train=("Running", None)))
    assert not needs_teacher(status("Running", topics=("Pending", "Budget")))
    assert not needs_teacher(status("Suspended", topics=("Running", None)))


def test_retry_time_is_never_now() -> None:
    """The status keeps whole seconds: a sub-second backoff (or a disruption's immediate
    retry) rounded down would let the reconcile that saw the failure start the next
    attempt at once, and the Retrying state and its Warning Event would never be written."""
    at = datetime(2026, 1, 1, 12, 0, 0, 700_000, tzinfo=UTC)
    for delay in (0, 0.5, 1):
        assert parse_time(retry_time(at, delay)) > at
    assert retry_time(at, 10) == "2026-01-01T12:00:11Z"
    assert retry_time(at.replace(microsecond=0), 10) == "2026-01-01T12:00:10Z"


def test_teacher_tokens_counter_counts_a_retried_stage_once() -> None:
    """Each finished attempt reports the stage's ledger, which totals the attempts before
    it: the counter adds only what grew, and a rerun of a changed spec counts afresh."""
    from kakugo_operator import metrics

    def total() -> float:
        return (
            metrics.REGISTRY.get_sample_value(
                "kakugo_teacher_tokens_total", {"direction": "completion"}
            )
            or 0.0
        )

    def finish(fingerprint: str, completion: int, outcome: str) -> None:
        status = {"phase": "Running", "stages": [{"name": "topics", "fingerprint": fingerprint}]}
        record = {
            "stage": "topics",
            "outcome": outcome,
            "counts": {"promptTokens": 1, "completionTokens": completion},
        }
        metrics.observe_plan("ns-tokens", "lm", status, [record], [], {})

    before = total()
    finish("f1", 100, "Failed")
    finish("f1", 150, "Succeeded")  # the retry's ledger holds the first attempt's 100
    assert total() - before == 150
    finish("f2", 40, "Succeeded")  # the spec changed: a new ledger
    assert total() - before == 190
    metrics.forget("ns-tokens", "lm")


def test_batch_tokens_are_priced_at_the_batch_prices() -> None:
    """A teacher stage's termination summary says which of its tokens came through the
    Batch API; the cost prices those at teacher.endpoint.batchPrices, the rest at prices."""
    spec = language_model()["spec"]
    spec["teacher"]["endpoint"].update(
        batch=True,
        prices={"inputPerMillion": "1", "outputPerMillion": "2"},
        batchPrices={"inputPerMillion": "0.5", "outputPerMillion": "1"},
    )
    plan = decide(observed(spec=spec), SETTINGS)
    jobs = [
        {**j, "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
        if j["metadata"]["name"] == "yoruba-topics-1"
        else j
        for j in plan.create
    ]
    message = (
        '{"stage": "topics", "prompt_tokens": 3000000, "completion_tokens": 2000000, '
        '"batch_prompt_tokens": 2000000, "batch_completion_tokens": 1000000}'
    )
    done = _pod(
        1,
        phase="Succeeded",
        containerStatuses=[{"state": {"terminated": {"exitCode": 0, "message": message}}}],
    )
    plan = decide(observed(spec=spec, status=plan.status.dump(), jobs=jobs, pods=[done]), SETTINGS)
    counts = plan.status.stage("topics").counts
    assert counts is not None and counts.batch_prompt_tokens == 2_000_000
    # 1M x $1 + 1M x $2 at the prices, 2M x $0.5 + 1M x $1 at the batch prices.
    assert plan.status.cost is not None
    assert plan.status.cost.by_stage["topics"].teacher_dollars == "5.0000"
