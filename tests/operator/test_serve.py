"""The served model (spec.serve): the pure decision (when the Deployment and Service are
made, what the Pod holds, what counts as use, idle scaling, rollouts) and its lifecycle
with Kopf against the emulator (created only once Ready, URL in status, scale to zero,
wake, a spec change rolled out, owned by the LanguageModel)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kakugo_operator import admission, serve, settings
from kakugo_operator.serve import ServeSeen, decide_serve, parse_metrics

from kakugo_stages.manifest import ManifestError, parse_object, validate_spec
from kakugo_stages.resolved import RunSpec, run_spec
from kakugo_stages.status import ServeStatus
from tests.operator.k8s_emulator import Api
from tests.operator.operator_helpers import (
    NS,
    Operator,
    complete_job,
    complete_skipped,
    condition,
    language_model,
    lm_status,
    summary,
    wait_for,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETTINGS = settings.OperatorSettings(storage_uri="s3://b/runs")
STAGES = (
    "topics",
    "scenarios",
    "contexts",
    "translate",
    "revise",
    "respond",
    "filter",
    "train",
    "evaluate",
    "review",
    "publish",
)
CPU_SERVE = {"device": "cpu", "gpus": 0, "idleSeconds": 60}

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="yoruba"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="yoruba"} 1.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="yoruba"} 40.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="yoruba"} 2.0
vllm:request_success_created{engine="0",finished_reason="stop",model_name="yoruba"} 1.7e9
"""


def make_run(**spec: Any) -> RunSpec:
    body = language_model(**spec)
    return run_spec(parse_object(body))


def plan(
    run: RunSpec,
    *,
    ready: bool = True,
    version: str | None = "fp-1",
    prev: ServeStatus | None = None,
    now: datetime = NOW,
    **seen: Any,
) -> serve.ServePlan:
    return decide_serve(run, run.spec, ready, version, prev, ServeSeen(**seen), now, SETTINGS)


def created(p: serve.ServePlan, kind: str) -> dict[str, Any]:
    (obj,) = [o for o in p.create if o["kind"] == kind]
    return obj


def live(obj: dict[str, Any], ready: int = 0) -> dict[str, Any]:
    """What the API server shows of a created object (a Deployment with its status)."""
    return {**obj, "status": {"readyReplicas": ready, "replicas": ready}}


def replicas_patch(p: serve.ServePlan) -> int | None:
    for _, plural, _, patch in p.patches:
        if plural == "deployments" and "replicas" in patch.get("spec", {}):
            return int(patch["spec"]["replicas"])
    return None


# ------------------------------------------------------------------ /metrics


def test_parse_metrics_sums_vllm_request_metrics() -> None:
    sample = parse_metrics(VLLM_METRICS)
    assert sample == serve.Sample(in_flight=3.0, finished=42.0)
    assert parse_metrics("# nothing\nprocess_cpu_seconds_total 1.0\n") is None
    assert parse_metrics("vllm:request_success_total 0\n") == serve.Sample(0.0, 0.0)


# ------------------------------------------------------------------ when and what


def test_nothing_is_served_before_ready() -> None:
    run = make_run(serve=CPU_SERVE)
    p = plan(run, ready=False, version=None)
    assert p.create == [] and p.patches == []
    assert p.status is not None and p.status.phase == "WaitingForModel"
    assert p.condition == serve.Want(
        "Serving",
        False,
        "WaitingForModel",
        "the tuned model is served once the LanguageModel is Ready",
    )
    # Without spec.serve there is nothing to say at all.
    assert plan(make_run()) == serve.ServePlan()


def test_ready_creates_the_server_that_loads_the_model_from_storage() -> None:
    run = make_run(serve={"idleSeconds": 600, "extraArgs": ["--enable-prefix-caching"]})
    p = plan(run)
    deploy, svc = created(p, "Deployment"), created(p, "Service")
    assert deploy["metadata"]["name"] == svc["metadata"]["name"] == "yoruba-serve"
    assert deploy["spec"]["replicas"] == 1  # a new model counts as use: it comes up
    pod = deploy["spec"]["template"]
    assert pod["metadata"]["annotations"][serve.MODEL_VERSION_ANNOTATION] == "fp-1"
    # No LanguageModel label: the server's Pods are no stage Pods (cost, attempts).
    assert "kakugo.io/languagemodel" not in pod["metadata"]["labels"]
    assert pod["metadata"]["labels"]["kakugo.io/serve"] == "yoruba"
    assert deploy["spec"]["selector"]["matchLabels"] == {"kakugo.io/serve": "yoruba"}
    assert svc["spec"]["selector"] == {"kakugo.io/serve": "yoruba"}
    (vllm,) = pod["spec"]["containers"]
    args = vllm["args"]
    assert args[args.index("--model") + 1] == "/scratch/model"
    assert args[args.index("--served-model-name") + 1] == "yoruba"
    assert "--enable-prefix-caching" in args
    assert vllm["image"] == SETTINGS.images["teacher"]
    assert vllm["resources"]["requests"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"}
    # The init container copies <run>/model from S3 with the spec's endpoint and Secret.
    (init,) = pod["spec"]["initContainers"]
    assert init["image"] == SETTINGS.images["stages"]
    assert init["command"] == [
        "kakugo",
        "fetch-model",
        "s3://kakugo-artifacts/runs/kakugo/yoruba/model",
        "/scratch/model",
    ]
    assert {"name": "AWS_ENDPOINT_URL_S3", "value": "https://minio.storage.svc:9000"} in init["env"]
    assert init["envFrom"] == [{"secretRef": {"name": "kakugo-s3"}}]
    # Both write and read the same scratch volume, both restricted.
    scratch = [m for m in vllm["volumeMounts"] if m["name"] == "scratch"]
    assert [m for m in init["volumeMounts"] if m["name"] == "scratch"] == scratch
    assert init["securityContext"] == vllm["securityContext"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert {e["name"] for e in init["env"]} >= {"HOME", "TMPDIR", "KAKUGO_SCRATCH_DIR"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # Status: the URL and the model name clients use.
    assert p.status is not None
    assert p.status.url == "http://yoruba-serve.kakugo.svc:8000/v1"
    assert p.status.model == "yoruba" and p.status.phase == "Starting"
    assert p.condition is not None and p.condition.reason == "Starting"
    assert p.requeue_after == serve.PROBE_SECONDS  # it looks at /metrics while it runs


def test_pvc_storage_is_mounted_read_only_for_the_copy() -> None:
    run = make_run(serve=CPU_SERVE, storage={"pvc": {"claimName": "runs", "mountPath": "/data"}})
    pod = created(plan(run), "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"][2] == "file:///data/kakugo/yoruba/model"
    assert {"name": "storage", "mountPath": "/data", "readOnly": True} in init["volumeMounts"]
    assert {
        "name": "storage",
        "persistentVolumeClaim": {"claimName": "runs", "readOnly": True},
    } in pod["volumes"]
    assert "envFrom" not in init
    (vllm,) = pod["containers"]
    assert all(m["name"] != "storage" for m in vllm["volumeMounts"])  # vLLM reads scratch only
    assert vllm["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}


def test_pod_templates_that_list_serve_reach_the_server() -> None:
    template = {
        "stages": ["serve"],
        "metadata": {"labels": {"team": "nlp"}},
        "spec": {
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}]}],
        },
    }
    run = make_run(serve=CPU_SERVE, resources={"podTemplates": [template]})
    pod = created(plan(run), "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "nlp"
    assert pod["spec"]["tolerations"] == template["spec"]["tolerations"]
    (vllm,) = pod["spec"]["containers"]
    assert {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"} in vllm["env"]
    # A template without stages applies to the stages only, not to the servers.
    run = make_run(serve=CPU_SERVE, resources={"podTemplates": [{**template, "stages": None}]})
    pod = created(plan(run), "Deployment")["spec"]["template"]
    assert "team" not in pod["metadata"]["labels"]


def test_invalid_serve_specs_name_the_field() -> None:
    def errors(**spec: Any) -> list[str]:
        with pytest.raises(ManifestError) as info:
            validate_spec("LanguageModel", language_model(**spec)["spec"], "x")
        return [str(e) for e in info.value.errors]

    assert errors(serve={"gpus": 0}) == [
        "spec.serve.gpus: got 0 but device is cuda; a GPU server needs gpus >= 1 (or set "
        "device: cpu)"
    ]
    assert any(
        "spec.serve.resources.nodeSelector" in e
        for e in errors(serve={"resources": {"nodeSelector": {"a": "b"}}})
    )
    bad = {"stages": ["serve"], "spec": {"containers": [{"image": "evil:1"}]}}
    assert any(
        "the served model's image is serve.image" in e
        for e in errors(serve=CPU_SERVE, resources={"podTemplates": [bad]})
    )


def test_the_webhook_asks_for_the_servers_image_args_and_key() -> None:
    spec = language_model(
        serve={
            "image": "my/vllm:1",
            "extraArgs": ["--trust-remote-code"],
            "apiKeySecretRef": {"name": "serve-key", "key": "k"},
        }
    )["spec"]
    found = {(u.field, u.what) for u in admission.uses("LanguageModel", spec)}
    assert {
        ("spec.serve.image", "image"),
        ("spec.serve.extraArgs", "args"),
        ("spec.serve.apiKeySecretRef", "secret"),
    } <= found


# ------------------------------------------------------------------ use and idle


def running(run: RunSpec, **prev: Any) -> tuple[dict[str, Any], dict[str, Any], ServeStatus]:
    """A server up for the model fp-1, last used at `prev['last_used']`."""
    first = plan(run)
    deploy = live(created(first, "Deployment"), ready=1)
    svc = created(first, "Service")
    assert first.status is not None
    return deploy, svc, first.status.model_copy(update=prev)


def test_idle_server_scales_to_zero_and_a_wake_brings_it_back() -> None:
    run = make_run(serve=CPU_SERVE)
    deploy, svc, prev = running(run, last_used="2026-11-26T11:58:00Z", requests=5.0)
    # 120 s without use (idleSeconds 60), /metrics shows nothing new: scale to zero.
    p = plan(run, prev=prev, deployment=deploy, service=svc, sample=serve.Sample(0.0, 5.0))
    assert replicas_patch(p) == 0
    assert p.status is not None and p.status.phase == "Idle" and p.status.replicas == 0
    assert p.condition is not None and p.condition.reason == "ScaledToZero"
    assert ("Normal", "ServeScaledToZero") in {e[:2] for e in p.events}
    # Scaled to zero: a wake annotation with a new value brings it back, once.
    zero = {**deploy, "spec": {**deploy["spec"], "replicas": 0}, "status": {}}
    assert p.status.requests is None  # the next server counts from 0: no old baseline
    p = plan(run, prev=p.status, deployment=zero, service=svc, wake="2026-11-26T12:00:00Z")
    assert replicas_patch(p) == 1
    assert p.status is not None and p.status.last_used == "2026-11-26T12:00:00Z"
    assert p.status.wake == "2026-11-26T12:00:00Z"
    later = NOW + timedelta(seconds=61)
    p = plan(
        run, prev=p.status, deployment=zero, service=svc, wake="2026-11-26T12:00:00Z", now=later
    )
    assert replicas_patch(p) is None  # the same wake is not a new use: stays at zero


@pytest.mark.parametrize(
    ("sample", "used"),
    [
        (serve.Sample(in_flight=1.0, finished=5.0), True),  # a request running or waiting
        (serve.Sample(in_flight=0.0, finished=9.0), True),  # requests finished since
        (serve.Sample(in_flight=0.0, finished=5.0), False),  # nothing new
        (None, False),  # /metrics did not answer
    ],
)
def test_requests_on_metrics_count_as_use(sample: serve.Sample | None, used: bool) -> None:
    run = make_run(serve=CPU_SERVE)
    deploy, svc, prev = running(run, last_used="2026-11-26T11:58:00Z", requests=5.0)
    p = plan(run, prev=prev, deployment=deploy, service=svc, sample=sample)
    assert p.status is not None
    assert (p.status.last_used == "2026-11-26T12:00:00Z") is used
    assert replicas_patch(p) == (None if used else 0)
    if used:
        assert p.status.phase == "Ready" and p.condition is not None and p.condition.value


def test_idle_seconds_zero_never_scales_down() -> None:
    run = make_run(serve={**CPU_SERVE, "idleSeconds": 0})
    deploy, svc, prev = running(run, last_used="2026-11-20T00:00:00Z")
    p = plan(run, prev=prev, deployment=deploy, service=svc)
    assert replicas_patch(p) is None and p.requeue_after is None


# ------------------------------------------------------------------ changes


def test_spec_change_and_a_new_model_roll_out_retraining_scales_to_zero() -> None:
    run = make_run(serve=CPU_SERVE)
    deploy, svc, prev = running(run, last_used="2026-11-26T11:59:50Z")
    assert plan(run, prev=prev, deployment=deploy, service=svc).patches == []  # steady
    # A serve change: the template is patched (rolled out), with a new hash.
    changed = make_run(serve={**CPU_SERVE, "maxModelLen": 4096})
    p = plan(changed, prev=prev, deployment=deploy, service=svc)
    ((api, plural, name, patch),) = p.patches
    assert (api, plural, name) == ("apps/v1", "deployments", "yoruba-serve")
    args = patch["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert p.condition is not None and p.condition.reason == "RollingOut"
    # Retraining (not Ready): scaled to zero, the old model's version kept, no rollout.
    p = plan(run, ready=False, version=None, prev=prev, deployment=deploy, service=svc)
    assert [x[3] for x in p.patches] == [{"spec": {"replicas": 0}}]
    assert p.status is not None and p.status.phase == "WaitingForModel"
    assert p.status.model_version == "fp-1"
    # Ready with the new model: its version rolls out, and it comes up.
    zero = {**deploy, "spec": {**deploy["spec"], "replicas": 0}}
    p = plan(run, version="fp-2", prev=p.status, deployment=zero, service=svc)
    template = next(x[3] for x in p.patches if "template" in x[3].get("spec", {}))
    annotations = template["spec"]["template"]["metadata"]["annotations"]
    assert annotations[serve.MODEL_VERSION_ANNOTATION] == "fp-2"
    assert replicas_patch(p) == 1


def test_disabled_scales_to_zero_and_says_so() -> None:
    run = make_run(serve=CPU_SERVE)
    deploy, svc, prev = running(run, last_used="2026-11-26T11:59:50Z")
    off = make_run(serve={**CPU_SERVE, "enabled": False})
    p = plan(off, prev=prev, deployment=deploy, service=svc)
    assert replicas_patch(p) == 0
    assert p.status is not None and p.status.phase == "Disabled"
    assert p.condition is not None and p.condition.reason == "Disabled"
    # spec.serve removed: the same (the objects stay until the LanguageModel goes).
    p = plan(make_run(), prev=prev, deployment=deploy, service=svc)
    assert replicas_patch(p) == 0 and p.create == []


# ------------------------------------------------------------------ with Kopf


def serve_status(api: Api) -> dict[str, Any]:
    return lm_status(api).get("serve") or {}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_lifecycle_on_the_emulator(cluster: Api, operator: Operator) -> None:
    lm = cluster.create(language_model(serve={"device": "cpu", "gpus": 0, "idleSeconds": 2}))
    for name in STAGES[: STAGES.index("evaluate")]:
        complete_job(cluster, f"yoruba-{name}-1", summary(name))
    # Trained but not Ready (evaluate runs): nothing served yet.
    wait_for(lambda: serve_status(cluster).get("phase") == "WaitingForModel")
    assert cluster.get("Deployment", NS, "yoruba-serve") is None
    assert condition(lm_status(cluster), "Serving")["reason"] == "WaitingForModel"
    complete_job(cluster, "yoruba-evaluate-1", summary("evaluate"))
    complete_skipped(cluster)  # review and publish, without their spec sections

    deploy = wait_for(lambda: cluster.get("Deployment", NS, "yoruba-serve"), what="Deployment")
    svc = wait_for(lambda: cluster.get("Service", NS, "yoruba-serve"), what="Service")
    for obj in (deploy, svc):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("LanguageModel", lm["metadata"]["uid"])
    assert deploy["spec"]["replicas"] == 1
    status = wait_for(lambda: (s := serve_status(cluster)).get("url") and s)
    assert status["url"] == "http://yoruba-serve.kakugo.svc:8000/v1"
    assert status["model"] == "yoruba"
    # The Deployment controller's part: a ready replica. Serving=True.
    cluster.patch("Deployment", NS, "yoruba-serve", {"status": {"readyReplicas": 1}}, sub="status")
    wait_for(lambda: condition(lm_status(cluster), "Serving").get("status") == "True")
    assert lm_status(cluster)["phase"] == "Succeeded"

    # Nobody uses it (its /metrics does not answer here) for idleSeconds: scale to zero.
    wait_for(
        lambda: cluster.get("Deployment", NS, "yoruba-serve")["spec"]["replicas"] == 0,
        what="scale to zero",
    )
    cluster.patch("Deployment", NS, "yoruba-serve", {"status": {"readyReplicas": 0}}, sub="status")
    wait_for(lambda: serve_status(cluster).get("phase") == "Idle")
    assert condition(lm_status(cluster), "Serving")["reason"] == "ScaledToZero"

    # A wake annotation brings it back.
    cluster.patch(
        "LanguageModel",
        NS,
        "yoruba",
        {"metadata": {"annotations": {serve.WAKE_ANNOTATION: "1"}}},
    )
    wait_for(
        lambda: cluster.get("Deployment", NS, "yoruba-serve")["spec"]["replicas"] == 1,
        what="scale up on wake",
    )

    # A serve change rolls out to the Deployment (new hash and args); no stage reruns.
    old_hash = cluster.get("Deployment", NS, "yoruba-serve")["metadata"]["annotations"][
        "kakugo.io/template-hash"
    ]
    cluster.patch("LanguageModel", NS, "yoruba", {"spec": {"serve": {"maxModelLen": 2048}}})

    def rolled() -> bool:
        d = cluster.get("Deployment", NS, "yoruba-serve")
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        return (
            args[args.index("--max-model-len") + 1] == "2048"
            and d["metadata"]["annotations"]["kakugo.io/template-hash"] != old_hash
        )

    wait_for(rolled, what="rollout")
    assert cluster.get("Job", NS, "yoruba-train-2") is None


class MetricsServer:
    """A stand-in for the server's /metrics (vLLM's page) on loopback."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.page = VLLM_METRICS
        self.hits = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = owner.page.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_requests_on_metrics_keep_it_up_on_the_emulator(
    cluster: Api, operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator reads the server's /metrics over HTTP: here a local page instead of the
    # Service's address (no cluster DNS in the emulator).
    metrics = MetricsServer()
    monkeypatch.setattr(serve, "metrics_url", lambda *_: metrics.url)
    try:
        cluster.create(language_model(serve={"device": "cpu", "gpus": 0, "idleSeconds": 2}))
        for name in STAGES:
            complete_job(cluster, f"yoruba-{name}-1", summary(name))
        wait_for(lambda: cluster.get("Deployment", NS, "yoruba-serve"), what="Deployment")
        cluster.patch(
            "Deployment", NS, "yoruba-serve", {"status": {"readyReplicas": 1}}, sub="status"
        )
        wait_for(lambda: serve_status(cluster).get("requests") == 42.0, what="a look at /metrics")
        # Requests in flight for longer than idleSeconds: it stays up.
        time.sleep(4)
        assert cluster.get("Deployment", NS, "yoruba-serve")["spec"]["replicas"] == 1
        assert condition(lm_status(cluster), "Serving")["status"] == "True"
        # The requests end and nothing new comes: it scales to zero.
        metrics.page = VLLM_METRICS.replace("2.0\n", "0.0\n").replace("} 1.0\n", "} 0.0\n")
        wait_for(
            lambda: cluster.get("Deployment", NS, "yoruba-serve")["spec"]["replicas"] == 0,
            timeout=20,
            what="scale to zero once idle",
        )
        assert metrics.hits >= 2
    finally:
        metrics.close()
