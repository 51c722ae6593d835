"""The chart's RBAC rules against what the operator really does: Kopf and the operator run
against the emulator (as in tests/operator) while every API request is recorded; each
request must be allowed by the chart's rules, and each rule must be used by some request
(except the reads that only follow a 409 on create). An object created with an owner
reference that blocks its owner's deletion uses `update` on the owner's finalizers: the
API server's OwnerReferencesPermissionEnforcement checks it (tests/e2e runs with it)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

from tests.operator.k8s_emulator import Api, Emulator, EmulatorThread  # noqa: E402
from tests.operator.operator_helpers import (  # noqa: E402
    NS,
    Operator,
    fail_job,
    finish_pod,
    free_port,
    job,
    language_model,
    lm_status,
    make_pods,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)
RULES = yaml.safe_load((REPO / "helm/kakugo/files/rbac/operator-rules.yaml").read_text())
WEBHOOK_CONFIGURATION = "kakugo-audit"
CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
#: Reads that only happen when a create answers 409 (adopt): granted, rarely exercised.
ADOPT_READS = {
    ("batch", "jobs", "get"),
    ("apps", "deployments", "get"),
    ("", "services", "get"),
    ("kakugo.io", "teachers", "get"),
    ("kakugo.io", "languagemodels", "get"),
    ("", "configmaps", "get"),
    ("networking.k8s.io", "networkpolicies", "get"),
    ("", "persistentvolumeclaims", "get"),
}


#: Owner kinds and their resources, for the finalizers an owner reference needs.
OWNER_PLURALS = {
    "LanguageModel": "languagemodels",
    "Teacher": "teachers",
    "LanguageFleet": "languagefleets",
}


def owner_checks(body: Any) -> set[tuple[str, str, str]]:
    """What OwnerReferencesPermissionEnforcement checks for a created object: `update` of
    `<owner>/finalizers` for every owner reference with blockOwnerDeletion."""
    refs = ((body or {}).get("metadata") or {}).get("ownerReferences") or []
    out = set()
    for ref in refs:
        if ref.get("blockOwnerDeletion"):
            group = str(ref.get("apiVersion", "")).rpartition("/")[0]
            out.add((group, f"{OWNER_PLURALS[ref['kind']]}/finalizers", "update"))
    return out


def classify(method: str, path: str, params: dict[str, str]) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) of a request; None for discovery."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return None  # discovery (/api/v1, /apis/group/version)
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource += "/" + rest[2]
    method = method.upper()
    if method == "GET":
        verb = "get" if name else ("watch" if params.get("watch") in ("true", "1") else "list")
    else:
        verb = {
            "POST": "create",
            "PATCH": "patch",
            "PUT": "update",
            "DELETE": "delete" if name else "deletecollection",
        }[method]
    return group, resource, verb


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, dict, Any]]]:
    from kubernetes.config import kube_config

    seen: list[tuple[str, str, dict, Any]] = []
    original = Emulator._handle

    async def _handle(self: Emulator, request: Any) -> Any:
        # The operator's requests only (Kopf, the Kubernetes client), not the test's own
        # (httpx: the test plays the kubelet and the user).
        if not str(request.headers.get("User-Agent", "")).startswith("python-httpx"):
            seen.append(
                (
                    str(
                        request.method.value if hasattr(request.method, "value") else request.method
                    ),
                    str(request.url.path),
                    dict(request.params),
                    request.data if isinstance(request.data, dict) else None,
                )
            )
        return await original(self, request)

    monkeypatch.setattr(Emulator, "_handle", _handle)
    kubeconfig = Path(tempfile.mkdtemp(prefix="kakugo-audit-")) / "config"
    webhook_port = free_port()
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    for key, value in {
        "KAKUGO_RETRY_BUDGET": "0",
        "KAKUGO_BACKOFF_BASE_SECONDS": "0.5",
        "KAKUGO_RESYNC_SECONDS": "1",
        "KAKUGO_TEACHER_IDLE_SECONDS": "1",
        "KAKUGO_METRICS_PORT": "0",
        "KAKUGO_STORAGE_URI": "s3://default-bucket/runs",
        "KAKUGO_WEBHOOK_PORT": str(webhook_port),
        "KAKUGO_WEBHOOK_CONFIGURATION": WEBHOOK_CONFIGURATION,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KAKUGO_OPERATOR_SETTINGS", raising=False)
    with EmulatorThread() as emu:
        emu.kubeconfig(kubeconfig)
        api = Api(emu.url)
        # The chart's webhook configuration, whose caBundle the operator keeps current.
        api.http.post(
            CONFIGURATIONS,
            json={
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": WEBHOOK_CONFIGURATION},
                "webhooks": [
                    {
                        "name": "validate.kakugo.io",
                        "clientConfig": {"url": f"https://127.0.0.1:{webhook_port}/validate"},
                    }
                ],
            },
        ).raise_for_status()
        op = Operator().start()
        try:
            _exercise(api)
            _exercise_webhook(api, webhook_port)
        finally:
            op.stop()
    yield seen


def _exercise(api: Api) -> None:
    # A stage that fails for good: Stalled, with the Pod's log tail and a Warning Event.
    api.create(language_model("yoruba"))
    (pod, *_) = make_pods(api, job(api, "yoruba-topics-1"), count=1)
    Emulator.logs[(NS, pod["metadata"]["name"])] = "ValueError: boom"
    finish_pod(api, pod, exit_code=1, message="boom")
    fail_job(api, "yoruba-topics-1")
    wait_for(lambda: lm_status(api, "yoruba").get("phase") == "Stalled", what="Stalled")
    # Suspend a running Job, then change its inputs: the Job is deleted, the spec
    # ConfigMap updated, a new attempt created.
    api.create(language_model("hausa", language="Hausa"))
    job(api, "hausa-topics-1")
    api.patch("LanguageModel", NS, "hausa", {"spec": {"suspend": True}})
    wait_for(
        lambda: api.get("Job", NS, "hausa-topics-1")["spec"].get("suspend") is True,
        what="Job suspended",
    )
    api.patch("LanguageModel", NS, "hausa", {"spec": {"suspend": False, "data": {"seed": 7}}})
    job(api, "hausa-topics-2")
    # A Job on a Kueue queue, suspended through its Workload (Kueue plays no part here: the
    # test makes the Workload Kueue would make).
    queued = language_model("twi", language="Twi")
    queued["spec"]["resources"]["topics"]["queueName"] = "cpu-queue"
    api.create(queued)
    twi = job(api, "twi-topics-1")
    api.create(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "Workload",
            "metadata": {
                "name": "job-twi-topics-1-x",
                "namespace": NS,
                "labels": {"kueue.x-k8s.io/job-uid": twi["metadata"]["uid"]},
            },
            "spec": {"active": True},
        }
    )
    api.patch("LanguageModel", NS, "twi", {"spec": {"suspend": True}})
    wait_for(
        lambda: api.get("Workload", NS, "job-twi-topics-1-x")["spec"]["active"] is False,
        what="the Workload deactivated",
    )
    # A served teacher: Teacher, Deployment, Service; scaled to zero when idle.
    api.create(
        language_model(
            "igbo",
            language="Igbo",
            teacher={"serve": {"model": "tiny", "device": "cpu", "gpus": 0, "modelCache": {}}},
        )
    )
    wait_for(lambda: api.get("Deployment", NS, "igbo-teacher"), what="teacher Deployment")
    wait_for(
        lambda: api.get("PersistentVolumeClaim", NS, "igbo-teacher-model-cache"),
        what="the model cache",
    )
    api.patch(
        "Deployment",
        NS,
        "igbo-teacher",
        {"status": {"readyReplicas": 1, "replicas": 1}},
        sub="status",
    )
    job(api, "igbo-topics-1")
    api.patch("LanguageModel", NS, "igbo", {"spec": {"suspend": True}})
    wait_for(
        lambda: api.get("Deployment", NS, "igbo-teacher")["spec"]["replicas"] == 0,
        what="scale to zero",
    )
    # teacher.serve changes: the served Teacher is patched, its Deployment and Service
    # roll the change out.
    api.patch("LanguageModel", NS, "igbo", {"spec": {"teacher": {"serve": {"port": 8001}}}})
    wait_for(
        lambda: api.get("Service", NS, "igbo-teacher")["spec"]["ports"][0]["port"] == 8001,
        what="the Service rolled out",
    )
    wait_for(
        lambda: (
            api.get("NetworkPolicy", NS, "igbo-teacher")["spec"]["ingress"][0]["ports"]
            == [{"protocol": "TCP", "port": 8001}]
        ),
        what="the NetworkPolicy rolled out",
    )
    # A fleet: members created, then one removed from the list and deleted.
    template = {k: v for k, v in language_model("x")["spec"].items() if k != "language"}
    fleet = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageFleet",
        "metadata": {"name": "west", "namespace": NS},
        "spec": {
            "languages": [{"language": "Ewe"}, {"language": "Twi"}],
            "template": template,
            "maxConcurrent": 1,
        },
    }
    api.http.post(
        f"/apis/kakugo.io/v1alpha1/namespaces/{NS}/languagefleets", json=fleet
    ).raise_for_status()
    wait_for(lambda: api.get("LanguageModel", NS, "twi-latn"), what="fleet member")
    api.http.patch(
        f"/apis/kakugo.io/v1alpha1/namespaces/{NS}/languagefleets/west",
        content=json.dumps({"spec": {"languages": [{"language": "Ewe"}]}}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    wait_for(lambda: api.get("LanguageModel", NS, "twi-latn") is None, what="member removed")
    # Deletion: the finalizer goes.
    api.delete("LanguageModel", NS, "yoruba")
    wait_for(lambda: api.get("LanguageModel", NS, "yoruba") is None, what="deleted")


def _exercise_webhook(api: Api, port: int) -> None:
    """The webhook keeps its configuration's caBundle and asks a review per Secret."""
    import httpx

    def ca_bundle() -> Any:
        config = api.http.get(f"{CONFIGURATIONS}/{WEBHOOK_CONFIGURATION}").json()
        return config["webhooks"][0]["clientConfig"].get("caBundle")

    wait_for(ca_bundle, what="the caBundle written")
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "audit",
            "kind": {"group": "kakugo.io", "version": "v1alpha1", "kind": "LanguageModel"},
            "resource": {"group": "kakugo.io", "version": "v1alpha1", "resource": "languagemodels"},
            "operation": "CREATE",
            "namespace": NS,
            "name": "audit",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": language_model("audit"),
        },
    }
    answer = httpx.post(f"https://127.0.0.1:{port}/validate", json=review, verify=False)
    assert answer.json()["response"]["allowed"] is False  # alice may read no Secret


def test_every_request_is_allowed_and_every_rule_is_used(
    recorded: list[tuple[str, str, dict, Any]],
) -> None:
    rules = RULES["namespaced"] + RULES["clusterWideOnly"] + RULES["webhookConfiguration"]
    used: set[tuple[str, str, str]] = set()
    denied = []
    for method, path, params, body in recorded:
        key = classify(method, path, params)
        if key is None:
            continue
        checks = {key} | (owner_checks(body) if key[2] == "create" else set())
        used |= checks
        denied += [f"{method} {path} -> {c}" for c in sorted(checks) if not allowed(rules, *c)]
    assert not denied, "requests the chart's RBAC would deny:\n" + "\n".join(sorted(set(denied)))
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    unused = granted - used - ADOPT_READS
    assert not unused, f"rules no request used: {sorted(unused)}"
