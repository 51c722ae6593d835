"""The Teacher's platform (issue 18): CPU and memory requests, the API key on both sides
(the server requires it, the stages send it: from the Secret, never as a value), the
model cache PVC, the NetworkPolicy; what the webhook asks of their authors; and the same
objects made by Kopf against the emulator, owned by the Teacher."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kakugo_operator import admission, settings
from kakugo_operator.reconcile import Observed, decide
from kakugo_operator.teacher import decide_teacher, deployment_patch, network_policy
from pydantic import ValidationError

from kakugo_stages.manifest import ManifestError, validate_spec
from kakugo_stages.spec import TeacherSpec
from tests.operator.k8s_emulator import Api
from tests.operator.operator_helpers import NS, Operator, job, language_model, wait_for

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETTINGS = settings.OperatorSettings(storage_uri="s3://b/runs")
KEY = {"name": "teacher-api", "key": "key"}


def plan_for(spec: dict[str, Any], name: str = "t", **kw: Any) -> Any:
    return decide_teacher(name, "ns", spec, {}, None, ["lm"], NOW, kw.pop("s", SETTINGS), **kw)


def created(plan: Any, kind: str) -> dict[str, Any]:
    (obj,) = [o for o in plan.create if o["kind"] == kind]
    return obj


def container(deploy: dict[str, Any]) -> dict[str, Any]:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return c


# ------------------------------------------------------------------ requests


def test_default_requests_fit_gpt_oss_120b_and_the_spec_wins() -> None:
    c = container(created(plan_for({}), "Deployment"))
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "96Gi", "nvidia.com/gpu": "1"}
    assert c["resources"]["limits"] == {"memory": "96Gi", "nvidia.com/gpu": "1"}
    cpu = container(created(plan_for({"device": "cpu", "gpus": 0}), "Deployment"))
    assert cpu["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi"},
    }
    own = container(created(plan_for({"resources": {"cpu": "16"}}), "Deployment"))
    assert own["resources"]["requests"]["cpu"] == "16"
    assert own["resources"]["requests"]["memory"] == "96Gi"  # the default still fills memory


# ------------------------------------------------------------------ API key


def test_the_server_requires_the_key_from_its_secret() -> None:
    c = container(created(plan_for({"apiKeySecretRef": KEY}), "Deployment"))
    (env,) = [e for e in c["env"] if e["name"] == "VLLM_API_KEY"]
    assert env == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": KEY}}
    assert "--api-key" not in c["args"]  # never on the command line
    plain = container(created(plan_for({}), "Deployment"))
    assert not [e for e in plain["env"] if "API_KEY" in e["name"]]


def _teacher_body(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "shared", "namespace": "kakugo"},
        "spec": spec,
        "status": {
            "url": "http://shared.kakugo.svc:8000/v1",
            "model": "m",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _jobs(spec: dict[str, Any], teacher: dict[str, Any] | None) -> list[dict[str, Any]]:
    obs = Observed("yoruba", "kakugo", 1, spec, {}, [], [], teacher, NOW)
    return [o for o in decide(obs, SETTINGS).create if o["kind"] == "Job"]


def _env(j: dict[str, Any]) -> dict[str, Any]:
    (c,) = j["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in c["env"]}


def test_stages_send_the_key_of_a_referenced_teacher() -> None:
    spec = language_model(teacher={"ref": {"name": "shared"}})["spec"]
    jobs = _jobs(spec, _teacher_body({"apiKeySecretRef": KEY}))
    assert jobs  # the first teacher stages
    for j in jobs:
        env = _env(j)
        assert env["KAKUGO_TEACHER_API_KEY"] == {
            "name": "KAKUGO_TEACHER_API_KEY",
            "valueFrom": {"secretKeyRef": KEY},
        }
    # A Teacher without a key: no variable.
    for j in _jobs(spec, _teacher_body({})):
        assert "KAKUGO_TEACHER_API_KEY" not in _env(j)


def test_stages_send_the_key_of_a_served_teacher() -> None:
    serve = {"model": "tiny", "device": "cpu", "gpus": 0, "apiKeySecretRef": KEY}
    spec = language_model(teacher={"serve": serve})["spec"]
    body = _teacher_body(serve)
    body["metadata"]["name"] = "yoruba-teacher"
    jobs = _jobs(spec, body)
    assert jobs
    for j in jobs:
        assert _env(j)["KAKUGO_TEACHER_API_KEY"]["valueFrom"] == {"secretKeyRef": KEY}


def test_the_stage_client_reads_the_key_for_ref_and_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    from kakugo_stages.contract import TEACHER_API_KEY_ENV
    from kakugo_stages.manifest import parse_object
    from kakugo_stages.resolved import run_spec
    from kakugo_stages.stages.base import teacher_target

    monkeypatch.setenv("KAKUGO_TEACHER_URL", "http://shared.kakugo.svc:8000/v1")
    for teacher in ({"ref": {"name": "shared"}}, {"serve": {"apiKeySecretRef": KEY}}):
        run = run_spec(parse_object(language_model(teacher=teacher), "test"))
        assert teacher_target(run).api_key_env == TEACHER_API_KEY_ENV
    assert TEACHER_API_KEY_ENV == "KAKUGO_TEACHER_API_KEY"  # the client's default too


# ------------------------------------------------------------------ model cache


def test_a_model_cache_pvc_is_created_owned_and_mounted() -> None:
    cache = {"storageClassName": "fast-ssd", "size": "300Gi"}
    plan = plan_for({"modelCache": cache}, name="gpt")
    # The claim first: the Pod would wait for it otherwise.
    assert plan.create[0]["kind"] == "PersistentVolumeClaim"
    pvc = created(plan, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "gpt-model-cache"
    assert pvc["metadata"]["labels"]["kakugo.io/teacher"] == "gpt"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "300Gi"}},
        "storageClassName": "fast-ssd",
    }
    deploy = created(plan, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "gpt-model-cache"}} in (
        pod["volumes"]
    )
    c = container(deploy)
    assert {"name": "model-cache", "mountPath": "/model-cache"} in c["volumeMounts"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HOME"] == "/model-cache/huggingface"
    assert env["VLLM_CACHE_ROOT"] == "/model-cache/vllm"
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    # Once it exists, it is not created again (and never patched).
    again = decide_teacher(
        "gpt", "ns", {"modelCache": cache}, {}, deploy, ["lm"], NOW, SETTINGS, cache_obj=pvc
    )
    assert "PersistentVolumeClaim" not in [o["kind"] for o in again.create]


def test_a_named_claim_is_mounted_not_created() -> None:
    plan = plan_for({"modelCache": {"claimName": "weights"}})
    assert "PersistentVolumeClaim" not in [o["kind"] for o in plan.create]
    pod = created(plan, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "weights"}} in pod[
        "volumes"
    ]
    # A storage class applies only to the claim the operator creates.
    with pytest.raises((ValidationError, ManifestError), match="storageClassName"):
        validate_spec(
            "Teacher", {"modelCache": {"claimName": "w", "storageClassName": "x"}}, "ns/t"
        )
    with pytest.raises((ValidationError, ManifestError), match="size"):
        validate_spec("Teacher", {"modelCache": {"size": "lots"}}, "ns/t")


def test_adding_a_cache_switches_the_deployment_to_recreate() -> None:
    plain = created(plan_for({}), "Deployment")
    have = {**plain, "spec": {**plain["spec"], "strategy": {"type": "RollingUpdate"}}}
    cached = created(plan_for({"modelCache": {}}), "Deployment")
    patch = deployment_patch(have, cached)
    assert patch is not None
    assert patch["spec"]["strategy"] == {"type": "Recreate", "rollingUpdate": None}
    # And back: the default strategy again.
    back = deployment_patch(cached, plain)
    assert back is not None and back["spec"]["strategy"] == {"type": "RollingUpdate"}


# ------------------------------------------------------------------ NetworkPolicy


def test_only_teacher_stage_pods_of_the_namespace_reach_the_server() -> None:
    spec = TeacherSpec.model_validate({"port": 8001})
    policy = network_policy("gpt", "ns", spec, SETTINGS)
    assert policy is not None
    assert policy["spec"]["podSelector"] == {"matchLabels": {"kakugo.io/teacher": "gpt"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8001}]
    (peer,) = rule["from"]
    # A podSelector without a namespaceSelector: this namespace only.
    assert set(peer) == {"podSelector"}
    selector = peer["podSelector"]
    assert selector["matchLabels"] == {"app.kubernetes.io/managed-by": "kakugo-operator"}
    (expr,) = selector["matchExpressions"]
    assert expr["key"] == "kakugo.io/stage" and expr["operator"] == "In"
    assert set(expr["values"]) == {
        "topics",
        "scenarios",
        "contexts",
        "revise",
        "respond",
        "translate",
    }
    # Prometheus (the setting teacherIngressFrom) is admitted too; the switch turns it off.
    prom = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    more = settings.from_mapping({"teacherIngressFrom": [prom]}, SETTINGS)
    policy = network_policy("gpt", "ns", spec, more)
    assert policy is not None and policy["spec"]["ingress"][0]["from"][1] == prom
    off = settings.load({"KAKUGO_TEACHER_NETWORK_POLICY": "false"})
    assert network_policy("gpt", "ns", spec, off) is None
    assert "NetworkPolicy" not in [o["kind"] for o in plan_for({}, s=off).create]


# ------------------------------------------------------------------ the webhook


def test_the_webhook_asks_for_the_key_and_the_cache() -> None:
    spec = {"apiKeySecretRef": KEY, "modelCache": {"claimName": "weights"}}
    found = admission.uses("Teacher", spec)
    assert [(u.field, u.what, u.value) for u in found] == [
        ("spec.apiKeySecretRef", "secret", "teacher-api"),
        ("spec.modelCache.claimName", "pvc", "weights"),
    ]
    new = admission.uses("Teacher", {"modelCache": {"storageClassName": "fast"}})
    assert [(u.field, u.what) for u in new] == [("spec.modelCache", "new-pvc")]
    allow = admission.Allowlist.of(SETTINGS)
    assert admission.questions(new, allow) == [admission.CREATE_CLAIMS]
    (message,) = admission.problems(new, {}, "bob", "team", allow)
    assert message.startswith(
        'spec.modelCache: User "bob" cannot create resource "persistentvolumeclaims"'
    )
    messages = admission.problems(found, {}, "bob", "team", allow)
    assert messages[0].startswith('spec.apiKeySecretRef: User "bob" cannot get resource "secrets"')
    assert "the teacher server would mount it" in messages[1]
    # The same fields under teacher.serve of a LanguageModel.
    lm = language_model(teacher={"serve": spec})["spec"]
    fields = [u.field for u in admission.uses("LanguageModel", lm)]
    assert "spec.teacher.serve.apiKeySecretRef" in fields
    assert "spec.teacher.serve.modelCache.claimName" in fields


# ------------------------------------------------------------------ Kopf on the emulator


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_teacher_objects_are_created_and_owned(cluster: Api, operator: Operator) -> None:
    teacher = cluster.create(
        {
            "apiVersion": "kakugo.io/v1alpha1",
            "kind": "Teacher",
            "metadata": {"name": "shared", "namespace": NS},
            "spec": {
                "apiKeySecretRef": KEY,
                "modelCache": {"storageClassName": "fast-ssd"},
            },
        }
    )
    uid = teacher["metadata"]["uid"]
    for kind, name in (
        ("Deployment", "shared"),
        ("Service", "shared"),
        ("NetworkPolicy", "shared"),
        ("PersistentVolumeClaim", "shared-model-cache"),
    ):
        obj = wait_for(lambda k=kind, n=name: cluster.get(k, NS, n), what=f"{kind} {name}")
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["blockOwnerDeletion"]) == (
            "Teacher",
            uid,
            True,
        )
    c = container(cluster.get("Deployment", NS, "shared"))
    assert {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": KEY}} in c["env"]
    # A deleted policy is made again; a changed port reaches it.
    cluster.delete("NetworkPolicy", NS, "shared")
    wait_for(lambda: cluster.get("NetworkPolicy", NS, "shared"), what="policy re-created")
    cluster.patch("Teacher", NS, "shared", {"spec": {"port": 8001}})
    wait_for(
        lambda: (
            cluster.get("NetworkPolicy", NS, "shared")["spec"]["ingress"][0]["ports"][0]["port"]
            == 8001
        ),
        what="the policy follows the port",
    )
    # A LanguageModel that uses it: its teacher stages get the key from the Secret.
    cluster.create(language_model(teacher={"ref": {"name": "shared"}}))
    cluster.patch(
        "Deployment",
        NS,
        "shared",
        {"status": {"readyReplicas": 1, "replicas": 1}},
        sub="status",
    )
    j = job(cluster, "yoruba-topics-1")
    env = {e["name"]: e for e in j["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAKUGO_TEACHER_API_KEY"]["valueFrom"] == {"secretKeyRef": KEY}
    assert "value" not in env["KAKUGO_TEACHER_API_KEY"]
