"""The admission webhook and what pod templates, scratch volumes and the Hugging Face token
make the operator's Pods use: Secrets and PVCs need `get`; volumes, a ServiceAccount and a
RuntimeClass need `create pods` (only a Pod's author could choose them); PVCs made per Pod
need `create persistentvolumeclaims`; another image, the allowlist or `create pods`."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kopf
import pytest
from kakugo_operator import admission, webhook
from kakugo_operator.admission import Allowlist, Question, Use

from tests.operator.operator_helpers import NS, language_model
from tests.operator.test_webhook import SETTINGS, Server

ALLOW = Allowlist.of(SETTINGS)
TEMPLATE = {
    "stages": ["train"],
    "spec": {
        "serviceAccountName": "trainer",
        "runtimeClassName": "nvidia",
        "imagePullSecrets": [{"name": "regcred"}],
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": "hf-cache"}},
            {"name": "certs", "secret": {"secretName": "ca-certs"}},
            {
                "name": "fast",
                "ephemeral": {
                    "volumeClaimTemplate": {
                        "spec": {"resources": {"requests": {"storage": "10Gi"}}}
                    }
                },
            },
        ],
        "containers": [
            {
                "image": "evil.example/trainer:1",
                "env": [
                    {
                        "name": "WANDB_API_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "k"}},
                    },
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
            }
        ],
    },
}


def lm_spec(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(language_model("x")["spec"])
    body["teacher"]["endpoint"].pop("apiKeySecretRef")
    body["storage"] = {"uri": "s3://bucket/runs"}
    body.update(spec)
    return body


def review(server: Server, plural: str = "languagemodels", **spec: Any) -> None:
    body = lm_spec(**spec) if plural == "languagemodels" else spec
    asyncio.run(
        webhook.review(
            plural=plural,
            operation="CREATE",
            namespace=NS,
            old=None,
            new={"metadata": {"name": "x", "namespace": NS}, "spec": body},
            userinfo={"username": "alice", "uid": "u1", "groups": ["team"]},
            settings=SETTINGS,
            ask=server,
        )
    )


def test_the_publish_token_secret_is_a_use() -> None:
    # The operator would hand the write token to the publish stage: its author must be
    # allowed to read that Secret.
    spec = lm_spec(
        publish={
            "huggingFace": {
                "modelRepo": "org/model",
                "tokenSecretRef": {"name": "hub-write", "key": "token"},
            }
        }
    )
    assert admission.uses("LanguageModel", spec) == [
        Use("spec.publish.huggingFace.tokenSecretRef", "secret", "hub-write")
    ]


def test_uses_of_pod_templates_scratch_and_the_token() -> None:
    spec = lm_spec(
        huggingFace={"tokenSecretRef": {"name": "hf", "key": "token"}},
        resources={"podTemplates": [TEMPLATE], "scratch": {"claimName": "scratch-pvc"}},
    )
    at = "spec.resources.podTemplates[0].spec"
    assert admission.uses("LanguageModel", spec) == [
        Use("spec.huggingFace.tokenSecretRef", "secret", "hf"),
        Use("spec.resources.scratch.claimName", "pvc", "scratch-pvc"),
        Use(f"{at}.serviceAccountName", "pods", "trainer"),
        Use(f"{at}.runtimeClassName", "pods", "nvidia"),
        Use(f"{at}.volumes[0]", "pods", "models"),
        Use(f"{at}.volumes[0].persistentVolumeClaim.claimName", "pvc", "hf-cache"),
        Use(f"{at}.volumes[1]", "pods", "certs"),
        Use(f"{at}.volumes[1].secret.secretName", "secret", "ca-certs"),
        Use(f"{at}.volumes[2]", "pods", "fast"),
        Use(f"{at}.volumes[2].ephemeral", "claims", "fast"),
        Use(f"{at}.imagePullSecrets[0].name", "secret", "regcred"),
        Use(f"{at}.containers[0].image", "image", "evil.example/trainer:1"),
        Use(f"{at}.containers[0].env[0].valueFrom.secretKeyRef", "secret", "wandb"),
    ]
    storage_class = lm_spec(resources={"scratch": {"storageClassName": "fast"}})
    assert admission.uses("LanguageModel", storage_class) == [
        Use("spec.resources.scratch.storageClassName", "claims", "fast")
    ]
    found = admission.uses("LanguageModel", spec)
    assert admission.questions(found, ALLOW) == [
        Question("get", "secrets", "hf"),
        Question("get", "persistentvolumeclaims", "scratch-pvc"),
        admission.CREATE_PODS,
        Question("get", "persistentvolumeclaims", "hf-cache"),
        Question("get", "secrets", "ca-certs"),
        admission.CREATE_CLAIMS,
        Question("get", "secrets", "regcred"),
        Question("get", "secrets", "wandb"),
    ]
    # A Teacher's template, and a fleet's template and overrides.
    teacher = {"podTemplate": {"spec": {"serviceAccountName": "sa", "volumes": []}}}
    assert admission.uses("Teacher", teacher) == [
        Use("spec.podTemplate.spec.serviceAccountName", "pods", "sa")
    ]
    fleet = {
        "template": {"resources": {"podTemplates": [TEMPLATE]}},
        "languages": [
            {"language": "yo", "overrides": {"huggingFace": {"tokenSecretRef": {"name": "t"}}}}
        ],
    }
    fleet_uses = admission.uses("LanguageFleet", fleet)
    assert fleet_uses[0].field == "spec.template.resources.podTemplates[0].spec.serviceAccountName"
    assert fleet_uses[-1] == Use(
        "spec.languages[0].overrides.huggingFace.tokenSecretRef", "secret", "t"
    )


def test_a_template_needs_permission_to_create_pods() -> None:
    template = {
        "spec": {"serviceAccountName": "trainer", "volumes": [{"name": "e", "emptyDir": {}}]}
    }
    server = Server()
    with pytest.raises(kopf.AdmissionError) as refused:
        review(server, resources={"podTemplates": [template]})
    assert refused.value.code == 403
    problems = str(refused.value).split("; ")
    assert problems == [
        'spec.resources.podTemplates[0].spec.serviceAccountName: User "alice" cannot create '
        'resource "pods" in API group "" in the namespace "kakugo": only users who may create '
        "Pods may give the operator's Pods volumes, a ServiceAccount or a RuntimeClass",
        'spec.resources.podTemplates[0].spec.volumes[0]: User "alice" cannot create resource '
        '"pods" in API group "" in the namespace "kakugo": only users who may create Pods may '
        "give the operator's Pods volumes, a ServiceAccount or a RuntimeClass",
    ]
    review(Server({("alice", admission.CREATE_PODS)}), resources={"podTemplates": [template]})
    # Labels, annotations, env values, affinity and tolerations need nothing more.
    harmless = {
        "metadata": {"labels": {"team": "ml"}},
        "spec": {
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "containers": [{"env": [{"name": "HTTPS_PROXY", "value": "http://p:3128"}]}],
        },
    }
    server = Server()
    review(server, resources={"podTemplates": [harmless]})
    assert server.asked == []


def test_secrets_pvcs_and_claims_need_their_own_permission() -> None:
    spec = {
        "huggingFace": {"tokenSecretRef": {"name": "hf", "key": "token"}},
        "resources": {"podTemplates": [TEMPLATE], "scratch": {"storageClassName": "fast"}},
    }
    pods = ("alice", admission.CREATE_PODS)
    with pytest.raises(kopf.AdmissionError) as refused:
        review(Server({pods}), **spec)
    fields = [p.split(":")[0] for p in str(refused.value).split("; ")]
    assert fields == [
        "spec.huggingFace.tokenSecretRef",
        "spec.resources.scratch.storageClassName",
        "spec.resources.podTemplates[0].spec.volumes[0].persistentVolumeClaim.claimName",
        "spec.resources.podTemplates[0].spec.volumes[1].secret.secretName",
        "spec.resources.podTemplates[0].spec.volumes[2].ephemeral",
        "spec.resources.podTemplates[0].spec.imagePullSecrets[0].name",
        "spec.resources.podTemplates[0].spec.containers[0].env[0].valueFrom.secretKeyRef",
    ]
    assert 'cannot create resource "persistentvolumeclaims"' in str(refused.value)
    granted = {
        pods,
        ("alice", admission.CREATE_CLAIMS),
        *(("alice", Question("get", "secrets", s)) for s in ("hf", "ca-certs", "regcred", "wandb")),
        ("alice", Question("get", "persistentvolumeclaims", "hf-cache")),
    }
    review(Server(granted), **spec)


def test_another_image_takes_the_allowlist_or_pod_creation() -> None:
    template = {"spec": {"containers": [{"image": "evil.example/trainer:1"}]}}
    with pytest.raises(kopf.AdmissionError, match=r"containers.0..image: image"):
        review(Server(), resources={"podTemplates": [template]})
    approved = {"spec": {"containers": [{"image": "registry.test/approved/trainer:2"}]}}
    server = Server()
    review(server, resources={"podTemplates": [approved]})
    assert server.asked == []


def test_a_teacher_template_is_reviewed() -> None:
    teacher = {
        "podTemplate": {
            "spec": {"volumes": [{"name": "m", "persistentVolumeClaim": {"claimName": "models"}}]}
        }
    }
    with pytest.raises(kopf.AdmissionError) as refused:
        review(Server(), plural="teachers", **teacher)
    assert [p.split(":")[0] for p in str(refused.value).split("; ")] == [
        "spec.podTemplate.spec.volumes[0]",
        "spec.podTemplate.spec.volumes[0].persistentVolumeClaim.claimName",
    ]
    # A refused field of a template is a 422 naming it, before any question.
    server = Server()
    with pytest.raises(kopf.AdmissionError) as invalid:
        review(
            server, resources={"podTemplates": [{"spec": {"containers": [{"command": ["sh"]}]}}]}
        )
    assert invalid.value.code == 422
    assert (
        "spec.resources.podTemplates[0].spec.containers[0].command: owned by the operator"
        in str(invalid.value)
    )
    assert server.asked == []
