"""Teacher lifecycle (Deployment, Service, readiness, clients, scale to zero) and the
metrics and health endpoints."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.operator.k8s_emulator import Api
from tests.operator.operator_helpers import (
    METRICS_PORT,
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

TEACHER = {
    "apiVersion": "kakugo.io/v1alpha1",
    "kind": "Teacher",
    "metadata": {"name": "gpt-oss-120b", "namespace": NS},
    "spec": {
        "model": "openai/gpt-oss-120b",
        "gpus": 2,
        "tensorParallelSize": 2,
        "maxNumSeqs": 128,
        "extraArgs": ["--enable-prefix-caching"],
        "hfTokenSecretRef": {"name": "hf", "key": "token"},
        "resources": {"gpuType": "NVIDIA-H100-80GB-HBM3"},
    },
}


def teacher_status(api: Api, name: str = "gpt-oss-120b") -> dict:
    return (api.get("Teacher", NS, name) or {}).get("status") or {}


def set_ready(api: Api, name: str, ready: int) -> None:
    api.patch(
        "Deployment",
        NS,
        name,
        {"status": {"readyReplicas": ready, "replicas": ready}},
        sub="status",
    )


def test_teacher_lifecycle(cluster: Api, operator: Operator) -> None:
    cluster.create(TEACHER)
    deploy = wait_for(lambda: cluster.get("Deployment", NS, "gpt-oss-120b"))
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--model") + 1] == "openai/gpt-oss-120b"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--max-num-seqs") + 1] == "128"
    assert "--enable-prefix-caching" in args
    assert container["image"] == "registry.test/vllm:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["env"][0] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    service = wait_for(lambda: cluster.get("Service", NS, "gpt-oss-120b"))
    assert service["spec"]["ports"][0]["port"] == 8000
    assert deploy["metadata"]["ownerReferences"][0]["kind"] == "Teacher"

    # A LanguageModel that uses it waits until it is Ready.
    cluster.create(language_model(teacher={"ref": {"name": "gpt-oss-120b"}}))
    status = wait_for(lambda: (s := lm_status(cluster)).get("conditions") and s)
    assert condition(status, "Reconciling")["reason"] == "WaitingForTeacher"
    assert cluster.list("Job", NS) == []
    wait_for(lambda: teacher_status(cluster).get("clients") == ["yoruba"])
    set_ready(cluster, "gpt-oss-120b", 1)
    ts = wait_for(lambda: (s := teacher_status(cluster)).get("phase") == "Ready" and s)
    assert ts["url"] == "http://gpt-oss-120b.kakugo.svc:8000/v1"
    assert condition(ts, "Ready")["status"] == "True"
    j = job(cluster, "yoruba-topics-1")
    env = {e["name"]: e.get("value") for e in j["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAKUGO_TEACHER_URL"] == "http://gpt-oss-120b.kakugo.svc:8000/v1"
    assert env["KAKUGO_TEACHER_MODEL"] == "openai/gpt-oss-120b"

    # No client in a teacher stage (suspended here) for idleSeconds: scale to zero.
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": True}})
    wait_for(
        lambda: cluster.get("Deployment", NS, "gpt-oss-120b")["spec"]["replicas"] == 0,
        what=f"scale to zero {teacher_status(cluster)} {lm_status(cluster).get('phase')}",
    )
    set_ready(cluster, "gpt-oss-120b", 0)
    ts = wait_for(lambda: (s := teacher_status(cluster)).get("phase") == "Idle" and s)
    assert ts["clients"] == []
    assert condition(ts, "Ready")["reason"] == "ScaledToZero"
    # A client comes back: scale up again.
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"suspend": False}})
    wait_for(
        lambda: cluster.get("Deployment", NS, "gpt-oss-120b")["spec"]["replicas"] == 1,
        what="scale up",
    )


def test_served_teacher_is_owned(cluster: Api, operator: Operator) -> None:
    lm = cluster.create(
        language_model(teacher={"serve": {"model": "tiny", "device": "cpu", "gpus": 0}})
    )
    teacher = wait_for(lambda: cluster.get("Teacher", NS, "yoruba-teacher"))
    assert teacher["metadata"]["ownerReferences"][0]["uid"] == lm["metadata"]["uid"]
    wait_for(lambda: cluster.get("Deployment", NS, "yoruba-teacher"))
    set_ready(cluster, "yoruba-teacher", 1)
    j = job(cluster, "yoruba-topics-1")
    env = {e["name"]: e.get("value") for e in j["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAKUGO_TEACHER_URL"] == "http://yoruba-teacher.kakugo.svc:8000/v1"


def metrics_text() -> str:
    return httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text


def test_metrics_and_health(cluster: Api, operator: Operator) -> None:
    cluster.create(language_model())
    (pod, *_) = make_pods(cluster, job(cluster, "yoruba-topics-1"), count=1)
    finish_pod(cluster, pod, exit_code=1, message="boom")
    fail_job(cluster, "yoruba-topics-1")
    complete_job(
        cluster,
        "yoruba-topics-2",
        summary(
            "topics",
            rows_out=7,
            requests=9,
            rejected={"finish_length": 1, "parse_json": 1},
            prompt_tokens=100,
            completion_tokens=200,
        ),
    )
    job(cluster, "yoruba-scenarios-1")
    expected = [
        'kakugo_examples_total{outcome="kept",reason="",stage="topics"}',
        'kakugo_languagemodels{phase="Running"} 1.0',
        'kakugo_stage_retries_total{reason="failure",stage="topics"}',
        'kakugo_cost_dollars{languagemodel="yoruba",namespace="kakugo"}',
        'kakugo_examples_total{outcome="dropped",reason="finish_length",stage="topics"}',
        'kakugo_examples_total{outcome="dropped",reason="parse",stage="topics"}',
        'kakugo_teacher_tokens_total{direction="completion"}',
        'kakugo_stage_duration_seconds_count{stage="topics"}',
        "kakugo_gpu_seconds_total",
    ]
    # One reconciliation updates several series: wait until a scrape shows all of them (a
    # scrape may land between two of the updates).
    text = wait_for(lambda: (t := metrics_text()) and all(e in t for e in expected) and t)
    for series in expected:
        assert series in text, series
    # Evaluation scores, base and tuned, per task.
    for name in ("scenarios", "contexts", "revise", "respond", "translate", "filter", "train"):
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
    assert condition(status, "Ready")["status"] == "True"
    assert status["evaluation"]["summary"] == "belebele +9.9"
    assert status["artifacts"]["model"] == "s3://kakugo-artifacts/runs/kakugo/yoruba/model"
    assert stage(status, "evaluate")["state"] == "Succeeded"
    text = wait_for(lambda: (t := metrics_text()) and "kakugo_evaluation_score{" in t and t)
    assert (
        'kakugo_evaluation_score{languagemodel="yoruba",model="tuned",namespace="kakugo",'
        'task="belebele"} 49.9'
    ) in text
    # Liveness and readiness.
    assert httpx.get(operator.liveness, timeout=5).status_code == 200
    ready = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/readyz", timeout=5)
    assert (ready.status_code, ready.text) == (200, "ready\n")
    # Deleting the object removes its series.
    cluster.delete("LanguageModel", NS, "yoruba")
    wait_for(lambda: 'languagemodel="yoruba"' not in metrics_text(), what="series removed")
    assert 'kakugo_languagemodels{phase="Succeeded"} 0.0' in metrics_text()
    time.sleep(0.1)


def args_of(deploy: dict) -> list[str]:
    return deploy["spec"]["template"]["spec"]["containers"][0]["args"]


def arg(deploy: dict, flag: str) -> str:
    args = args_of(deploy)
    return args[args.index(flag) + 1]


def test_served_teacher_is_recreated_and_follows_serve(cluster: Api, operator: Operator) -> None:
    serve = {"model": "tiny", "device": "cpu", "gpus": 0}
    lm = cluster.create(language_model(teacher={"serve": serve}))
    first = wait_for(lambda: cluster.get("Teacher", NS, "yoruba-teacher"))
    # Deleted (by hand, by a cleanup script): the LanguageModel creates it again.
    cluster.delete("Teacher", NS, "yoruba-teacher")
    again = wait_for(
        lambda: (
            (t := cluster.get("Teacher", NS, "yoruba-teacher"))
            and t["metadata"]["uid"] != first["metadata"]["uid"]
            and not t["metadata"].get("deletionTimestamp")
            and t
        ),
        what="the served Teacher re-created",
    )
    assert again["metadata"]["ownerReferences"][0]["uid"] == lm["metadata"]["uid"]
    assert again["spec"]["model"] == "tiny"
    # A change of spec.teacher.serve reaches the served Teacher, and its Deployment.
    cluster.patch(
        "LanguageModel",
        NS,
        "yoruba",
        {"spec": {"teacher": {"serve": {"model": "tiny-2", "maxNumSeqs": 3}}}},
    )
    teacher = wait_for(
        lambda: (
            (t := cluster.get("Teacher", NS, "yoruba-teacher"))["spec"]["model"] == "tiny-2" and t
        ),
        what="serve reaches the Teacher",
    )
    assert teacher["spec"]["maxNumSeqs"] == 3 and teacher["spec"]["device"] == "cpu"
    wait_for(
        lambda: arg(cluster.get("Deployment", NS, "yoruba-teacher"), "--model") == "tiny-2",
        what="the Deployment rolled out",
    )


def test_teacher_spec_change_rolls_out(cluster: Api, operator: Operator) -> None:
    cluster.create(TEACHER)
    deploy = wait_for(lambda: cluster.get("Deployment", NS, "gpt-oss-120b"))
    wait_for(lambda: cluster.get("Service", NS, "gpt-oss-120b"))
    assert arg(deploy, "--max-num-seqs") == "128"
    assert deploy["metadata"]["annotations"]["kakugo.io/template-hash"]
    # No client and idleSeconds 1: idle scaling takes it to zero first, so that the
    # rollout below is seen not to put a replica back (it would race the scaler otherwise).
    wait_for(
        lambda: cluster.get("Deployment", NS, "gpt-oss-120b")["spec"]["replicas"] == 0,
        what="scaled to zero while idle",
    )
    replicas = 0
    cluster.patch(
        "Teacher",
        NS,
        "gpt-oss-120b",
        {
            "spec": {
                "maxNumSeqs": 64,
                "port": 8001,
                "extraArgs": [],
                "resources": {"nodeSelector": {"pool": "gpu"}},
            }
        },
    )
    deploy = wait_for(
        lambda: (
            (d := cluster.get("Deployment", NS, "gpt-oss-120b"))
            and arg(d, "--max-num-seqs") == "64"
            and d
        ),
        what="the new args rolled out",
    )
    assert "--enable-prefix-caching" not in args_of(deploy)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["containers"][0]["ports"] == [{"name": "http", "containerPort": 8001}]
    assert deploy["spec"]["replicas"] == replicas  # idle scaling owns the replicas
    service = wait_for(
        lambda: (
            (s := cluster.get("Service", NS, "gpt-oss-120b"))["spec"]["ports"][0]["port"] == 8001
            and s
        ),
        what="the Service follows",
    )
    assert service["spec"]["ports"][0]["targetPort"] == 8001
    wait_for(lambda: teacher_status(cluster).get("url") == "http://gpt-oss-120b.kakugo.svc:8001/v1")
    events = wait_for(
        lambda: [e for e in cluster.list("Event", NS) if e.get("reason") == "RollingOut"]
    )
    assert "spec changed" in events[0]["message"]
    # A deleted Service is created again.
    cluster.delete("Service", NS, "gpt-oss-120b")
    wait_for(lambda: cluster.get("Service", NS, "gpt-oss-120b"), what="Service re-created")
