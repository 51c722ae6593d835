"""The Pods the operator builds (stage Jobs, a Teacher's Deployment): restricted by
default, with /dev/shm, a scratch volume, deadlines and TTLs, and a spec's pod templates
merged over them; and what a pod template may not change, refused naming the field.

The `restricted` Pod Security Standard is checked by `restricted_violations`
(tests/helpers/pod_security.py): the e2e API server (1.20) has no Pod Security admission
(1.23+), so that check and checkov (tests/test_checkov.py) stand in for it."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kakugo_operator import builders, pods, reconcile, render, settings, teacher
from kakugo_operator.reconcile import Observed

from kakugo_stages.contract import STAGES, RunSpec, validate_spec
from kakugo_stages.manifest import ManifestError
from kakugo_stages.spec import HOME_DIR, POD_USER, TeacherSpec
from tests.helpers.pod_security import restricted_violations
from tests.operator.operator_helpers import language_model

SETTINGS = settings.OperatorSettings(storage_uri="s3://b/runs")
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_the_restricted_check_sees_what_the_standard_forbids() -> None:
    """Without the operator's hardening a stage Pod is not restricted (what checkov found in
    every Job before): the check is not vacuous."""
    bare = {
        "metadata": {
            "annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}
        },
        "spec": {
            "hostNetwork": True,
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
            "containers": [
                {
                    "name": "c",
                    "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
                    "ports": [{"containerPort": 80, "hostPort": 80}],
                }
            ],
        },
    }
    found = " | ".join(restricted_violations(bare))
    for what in (
        "spec.hostNetwork",
        "annotation",
        "volume h",
        "sysctl",
        "c: privileged",
        "allowPrivilegeEscalation",
        "capabilities not dropped",
        "capabilities added",
        "runAsNonRoot",
        "seccomp None",
        "hostPort",
    ):
        assert what in found, what


def pod_templates(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']} {o['metadata']['name']}", o["spec"]["template"])
        for o in objects
        if o["kind"] in ("Job", "Deployment")
    ]


def run_of(spec: dict[str, Any], name: str = "yoruba") -> RunSpec:
    parsed = validate_spec("LanguageModel", spec, name)
    return RunSpec(name, "kakugo", parsed, "s3://b/runs")


def job_of(spec: dict[str, Any], stage: str) -> dict[str, Any]:
    return builders.job(run_of(spec), stage, 1, SETTINGS, builders.TeacherEnv("http://t/v1", "m"))


def pod(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = job["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"env names repeat: {names}"
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def mounts_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def volumes_of(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec["volumes"]}


BASE = language_model()["spec"]

# ------------------------------------------------------------------ restricted by default


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_pod_is_restricted(stage: str) -> None:
    j = job_of(BASE, stage)
    assert restricted_violations(j["spec"]["template"]) == []
    pod_spec, c = pod(j)
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": POD_USER,
        "runAsGroup": POD_USER,
        "fsGroup": POD_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod_spec["automountServiceAccountToken"] is False
    # Writable where the code writes: HOME (caches), /tmp and the scratch directory, all on
    # the scratch volume; the spec read-only.
    mounts = mounts_of(c)
    writable = {p: (m["name"], m.get("subPath")) for p, m in mounts.items()}
    assert (
        writable.items()
        >= {
            "/scratch": ("scratch", "scratch"),
            HOME_DIR: ("scratch", "home"),
            "/tmp": ("scratch", "tmp"),
        }.items()
    )
    assert mounts["/etc/kakugo"]["readOnly"] is True
    env = env_of(c)
    assert (env["HOME"], env["TMPDIR"], env["KAKUGO_SCRATCH_DIR"]) == (HOME_DIR, "/tmp", "/scratch")
    assert env["HF_HOME"].startswith(HOME_DIR + "/") and env["TRITON_CACHE_DIR"].startswith(
        HOME_DIR
    )


def test_sizes_and_deadlines_per_stage() -> None:
    train_spec, train = pod(train_job := job_of(BASE, "train"))
    assert volumes_of(train_spec)["shm"] == {
        "name": "shm",
        "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"},
    }
    assert mounts_of(train)["/dev/shm"]["name"] == "shm"
    assert volumes_of(train_spec)["scratch"]["emptyDir"] == {"sizeLimit": "200Gi"}
    assert train_job["spec"]["activeDeadlineSeconds"] == 48 * 3600
    eval_spec, _ = pod(evaluate := job_of(BASE, "evaluate"))
    assert volumes_of(eval_spec)["shm"]["emptyDir"]["sizeLimit"] == "8Gi"
    assert evaluate["spec"]["activeDeadlineSeconds"] == 24 * 3600
    topics_spec, topics = pod(job_of(BASE, "topics"))
    assert "shm" not in volumes_of(topics_spec) and "/dev/shm" not in mounts_of(topics)
    assert volumes_of(topics_spec)["scratch"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert job_of(BASE, "filter")["spec"]["activeDeadlineSeconds"] == 6 * 3600
    # The spec sets them per stage, or for all.
    spec = copy.deepcopy(BASE)
    spec["resources"]["default"] = {"activeDeadlineSeconds": 3600, "scratchSize": "1Gi"}
    spec["resources"]["train"] = {"shmSize": "64Gi", "activeDeadlineSeconds": 7200}
    train_job = job_of(spec, "train")
    assert train_job["spec"]["activeDeadlineSeconds"] == 7200
    assert volumes_of(pod(train_job)[0])["shm"]["emptyDir"]["sizeLimit"] == "64Gi"
    topics_job = job_of(spec, "topics")
    assert topics_job["spec"]["activeDeadlineSeconds"] == 3600
    assert volumes_of(pod(topics_job)[0])["scratch"]["emptyDir"] == {"sizeLimit": "1Gi"}
    # Finished Jobs go after the settings' TTL (none: kept).
    assert train_job["spec"]["ttlSecondsAfterFinished"] == 7 * 86400
    keep = settings.OperatorSettings(storage_uri="s3://b/r", job_ttl_seconds_after_finished=None)
    kept = builders.job(run_of(BASE), "topics", 1, keep, builders.TeacherEnv())
    assert "ttlSecondsAfterFinished" not in kept["spec"]


def test_scratch_from_a_storage_class_or_a_pvc() -> None:
    spec = copy.deepcopy(BASE)
    spec["resources"]["scratch"] = {"storageClassName": "fast-nvme"}
    j = job_of(spec, "train")
    pod_spec, c = pod(j)
    claim = volumes_of(pod_spec)["scratch"]["ephemeral"]["volumeClaimTemplate"]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast-nvme",
        "resources": {"requests": {"storage": "200Gi"}},
    }
    assert claim["metadata"]["labels"]["kakugo.io/stage"] == "train"
    assert restricted_violations(j["spec"]["template"]) == []
    spec["resources"]["scratch"] = {"claimName": "shared-scratch"}
    pod_spec, c = pod(job_of(spec, "topics"))
    assert volumes_of(pod_spec)["scratch"] == {
        "name": "scratch",
        "persistentVolumeClaim": {"claimName": "shared-scratch"},
    }
    # Each Pod in its own subfolder of the shared PVC.
    assert mounts_of(c)["/tmp"]["subPathExpr"] == "$(KAKUGO_POD_NAME)/tmp"
    assert env_of(c)["KAKUGO_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    with pytest.raises(ManifestError, match="storageClassName or claimName"):
        validate_spec("LanguageModel", {**spec, "resources": {"scratch": {}}})


def test_hugging_face_token_only_through_a_secret_key_ref() -> None:
    spec = {**BASE, "huggingFace": {"tokenSecretRef": {"name": "hf", "key": "token"}}}
    for stage in STAGES:
        env = env_of(pod(job_of(spec, stage))[1])
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    cm = builders.config_map(run_of(spec))
    assert "hf_" not in cm["data"]["spec.yaml"] and "HF_TOKEN" not in cm["data"]["spec.yaml"]
    assert "HF_TOKEN" not in env_of(pod(job_of(BASE, "topics"))[1])


def test_the_publish_token_reaches_the_publish_stage_only() -> None:
    publish = {
        "huggingFace": {
            "modelRepo": "org/model",
            "tokenSecretRef": {"name": "hub-write", "key": "token"},
        }
    }
    read = {"tokenSecretRef": {"name": "hf", "key": "token"}}
    spec = {**BASE, "publish": publish, "huggingFace": read}
    for stage in STAGES:
        container = pod(job_of(spec, stage))[1]
        names = [e["name"] for e in container["env"]]
        assert names.count("HF_TOKEN") == 1, stage
        want = "hub-write" if stage == "publish" else "hf"
        assert env_of(container)["HF_TOKEN"]["secretKeyRef"]["name"] == want, stage


def test_a_queued_job_is_created_suspended() -> None:
    spec = copy.deepcopy(BASE)
    spec["resources"]["train"] = {"queueName": "gpu-training"}
    j = job_of(spec, "train")
    assert j["spec"]["suspend"] is True
    assert j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-training"
    assert "suspend" not in job_of(spec, "topics")["spec"]


def test_teacher_pods_are_restricted() -> None:
    for spec in (TeacherSpec(), TeacherSpec(device="cpu", gpus=0)):
        deploy = teacher.deployment("t", "ns", spec, SETTINGS, 1)
        template = deploy["spec"]["template"]
        assert restricted_violations(template) == []
        pod_spec = template["spec"]
        shm = volumes_of(pod_spec)["shm"]["emptyDir"]
        assert shm == {"medium": "Memory", "sizeLimit": "16Gi" if spec.device == "cuda" else "1Gi"}
        assert volumes_of(pod_spec)["scratch"]["emptyDir"] == {"sizeLimit": "200Gi"}
        (c,) = pod_spec["containers"]
        assert env_of(c)["HOME"] == HOME_DIR and mounts_of(c)[HOME_DIR]["subPath"] == "home"
    sized = TeacherSpec.model_validate({"resources": {"shmSize": "32Gi", "scratchSize": "500Gi"}})
    pod_spec = teacher.deployment("t", "ns", sized, SETTINGS, 1)["spec"]["template"]["spec"]
    assert volumes_of(pod_spec)["shm"]["emptyDir"]["sizeLimit"] == "32Gi"
    assert volumes_of(pod_spec)["scratch"]["emptyDir"]["sizeLimit"] == "500Gi"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_renders_restricted(example: Path) -> None:
    """What the operator would run for each shipped example (kakugo render) is restricted."""
    rendered = render.render_file(example, SETTINGS, "kakugo")
    assert rendered.errors == []
    templates = pod_templates(rendered.objects)
    assert len([t for t in templates if t[0].startswith("Job")]) >= len(STAGES)
    for what, template in templates:
        assert restricted_violations(template) == [], what


# ------------------------------------------------------------------ pod templates

TEMPLATES = [
    {
        "metadata": {
            "labels": {"team": "ml"},
            "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        },
        "spec": {
            "serviceAccountName": "kakugo-stages",
            "imagePullSecrets": [{"name": "regcred"}],
            "containers": [{"env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]}],
        },
    },
    {
        "stages": ["train", "evaluate"],
        "spec": {
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "In", "values": ["a", "b"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "securityContext": {"runAsUser": 20000, "fsGroup": 20000},
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "hf-cache"}}],
            "containers": [
                {
                    "name": "stage",
                    "image": "registry.example/trainer:custom",
                    "env": [
                        {"name": "HF_HOME", "value": f"{HOME_DIR}/.cache/huggingface-pvc"},
                        {
                            "name": "WANDB_API_KEY",
                            "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}},
                        },
                    ],
                    "volumeMounts": [
                        {"name": "models", "mountPath": f"{HOME_DIR}/.cache/huggingface-pvc"}
                    ],
                }
            ],
        },
    },
]


def templated() -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["resources"]["podTemplates"] = copy.deepcopy(TEMPLATES)
    spec["resources"]["train"] = {
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "nodeSelector": {"disk": "nvme"},
    }
    return spec


def test_pod_templates_merge_over_what_the_operator_builds() -> None:
    spec = templated()
    train = job_of(spec, "train")
    meta = train["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "ml" and meta["labels"]["kakugo.io/stage"] == "train"
    assert meta["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert meta["annotations"]["kakugo.io/gpu-product"] == ""  # the operator's stay
    pod_spec, c = pod(train)
    assert pod_spec["serviceAccountName"] == "kakugo-stages"
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_spec["nodeSelector"] == {"disk": "nvme", "pool": "gpu"}
    assert pod_spec["tolerations"] == [
        {"key": "dedicated", "operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Exists"},
    ]
    assert pod_spec["affinity"]["nodeAffinity"]
    # Strengthening only: another non-root user, everything else as the operator set it.
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 20000,
        "runAsGroup": POD_USER,
        "fsGroup": 20000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["image"] == "registry.example/trainer:custom"
    assert c["command"][:3] == ["kakugo", "stage", "train"]  # the operator's
    env = env_of(c)  # no name twice
    assert env["HF_HOME"] == f"{HOME_DIR}/.cache/huggingface-pvc"  # replaced, not repeated
    assert env["HTTPS_PROXY"] == "http://proxy:3128"  # from the first template
    assert env["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "key"}}
    assert env["KAKUGO_STAGE"] == "train" and env["HOME"] == HOME_DIR
    assert volumes_of(pod_spec)["models"]["persistentVolumeClaim"]["claimName"] == "hf-cache"
    assert mounts_of(c)[f"{HOME_DIR}/.cache/huggingface-pvc"]["name"] == "models"
    assert {"spec", "scratch", "shm"} <= set(volumes_of(pod_spec))
    assert restricted_violations(train["spec"]["template"]) == []
    # The second template is the GPU stages' only.
    topics_spec, topics = pod(job_of(spec, "topics"))
    assert topics_spec["serviceAccountName"] == "kakugo-stages"
    assert "affinity" not in topics_spec and "models" not in volumes_of(topics_spec)
    assert topics["image"] == SETTINGS.image_for("topics")
    assert env_of(topics)["HF_HOME"] == f"{HOME_DIR}/.cache/huggingface"


def test_teacher_pod_templates() -> None:
    spec = TeacherSpec.model_validate(
        {
            "podTemplate": {
                "metadata": {"annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "tolerations": [{"key": "gpu", "operator": "Exists"}],
                    "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "m"}}],
                    "containers": [
                        {
                            "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
                            "volumeMounts": [{"name": "cache", "mountPath": "/models"}],
                        }
                    ],
                },
            }
        }
    )
    template = teacher.deployment("t", "ns", spec, SETTINGS, 1)["spec"]["template"]
    (c,) = template["spec"]["containers"]
    assert c["name"] == "vllm" and env_of(c)["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert mounts_of(c)["/models"]["name"] == "cache"
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["labels"]["kakugo.io/teacher"] == "t"
    assert restricted_violations(template) == []
    # A served Teacher takes the LanguageModel's templates that list `teacher`.
    lm = copy.deepcopy(BASE)
    lm["teacher"] = {"serve": {"model": "m", "device": "cpu", "gpus": 0}}
    lm["resources"]["podTemplates"] = [
        {"spec": {"imagePullSecrets": [{"name": "stages-only"}]}},
        {
            "stages": ["teacher"],
            "metadata": {"labels": {"team": "ml"}},
            "spec": {"containers": [{"env": [{"name": "X", "value": "1"}]}]},
        },
    ]
    obs = Observed("yo", "kakugo", 1, lm, {}, [], [], None, datetime.now(UTC))
    plan = reconcile.decide(obs, SETTINGS)
    served = next(o for o in plan.create if o["kind"] == "Teacher")
    assert served["spec"]["podTemplate"] == {
        "metadata": {"labels": {"team": "ml"}},
        "spec": {"containers": [{"name": "vllm", "env": [{"name": "X", "value": "1"}]}]},
    }
    # It is a valid Teacher, whose Deployment carries the template.
    tspec = validate_spec("Teacher", served["spec"])
    deploy = teacher.deployment("yo-teacher", "kakugo", tspec, SETTINGS, 1)
    assert env_of(deploy["spec"]["template"]["spec"]["containers"][0])["X"] == "1"
    # A change of the templates for `teacher` reaches the served Teacher (a patch).
    have = copy.deepcopy(served)
    lm["resources"]["podTemplates"][1]["metadata"]["labels"]["team"] = "nlp"
    _, patch = reconcile.served_teacher_actions(
        Observed("yo", "kakugo", 2, lm, {}, [], [], have, obs.now),
        validate_spec("LanguageModel", lm).resources.pod_template_for("teacher"),
    )
    assert patch is not None
    assert patch["spec"]["podTemplate"]["metadata"]["labels"] == {"team": "nlp"}


@pytest.mark.parametrize(
    ("template", "path", "says"),
    [
        (
            {"spec": {"containers": [{"command": ["sh", "-c", "id"]}]}},
            "podTemplates[0].spec.containers[0].command",
            "owned by the operator: the stage's command line",
        ),
        (
            {"spec": {"containers": [{"args": ["--x"]}]}},
            "podTemplates[0].spec.containers[0].args",
            "owned by the operator",
        ),
        (
            {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "8"}}}]}},
            "podTemplates[0].spec.containers[0].resources",
            "GPU requests come from resources.<stage>",
        ),
        (
            {"spec": {"containers": [{"securityContext": {"privileged": True}}]}},
            "podTemplates[0].spec.containers[0].securityContext",
            "the container runs restricted",
        ),
        (
            {"spec": {"containers": [{"name": "sidecar"}]}},
            "podTemplates[0].spec.containers[0].name",
            "allowed: 'stage' or 'vllm'",
        ),
        (
            {"spec": {"containers": [{"env": [{"name": "KAKUGO_STAGE", "value": "x"}]}]}},
            "podTemplates[0].spec.containers[0].env[0].name",
            "set by the operator",
        ),
        (
            {"spec": {"containers": [{"env": [{"name": "HF_TOKEN", "value": "hf_x"}]}]}},
            "podTemplates[0].spec.containers[0].env[0].name",
            "set by the operator",
        ),
        (
            {"spec": {"volumes": [{"name": "spec", "emptyDir": {}}]}},
            "podTemplates[0].spec.volumes[0].name",
            "the operator's volumes are spec, storage, scratch, shm",
        ),
        (
            {"spec": {"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}},
            "podTemplates[0].spec.volumes[0].hostPath",
            "unknown field",
        ),
        (
            {
                "spec": {
                    "volumes": [{"name": "x", "emptyDir": {}}],
                    "containers": [{"volumeMounts": [{"name": "x", "mountPath": "/etc/kakugo"}]}],
                }
            },
            "podTemplates[0].spec.containers[0].volumeMounts[0].mountPath",
            "the operator mounts the spec",
        ),
        (
            {"spec": {"containers": [{"volumeMounts": [{"name": "y", "mountPath": "/data2"}]}]}},
            "resources.podTemplates",
            "no volume of that name",
        ),
        (
            {"spec": {"hostNetwork": True}},
            "podTemplates[0].spec.hostNetwork",
            "host namespaces are not allowed",
        ),
        (
            {"spec": {"hostPID": True}},
            "podTemplates[0].spec.hostPID",
            "host namespaces are not allowed",
        ),
        (
            {"spec": {"initContainers": [{"name": "x"}]}},
            "podTemplates[0].spec.initContainers",
            "no other containers",
        ),
        (
            {"spec": {"securityContext": {"runAsNonRoot": False}}},
            "podTemplates[0].spec.securityContext.runAsNonRoot",
            "always run as non-root",
        ),
        (
            {"spec": {"securityContext": {"runAsUser": 0}}},
            "podTemplates[0].spec.securityContext.runAsUser",
            "must be >= 1",
        ),
        (
            {"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}},
            "podTemplates[0].spec.securityContext.seccompProfile.type",
            "allowed",
        ),
        (
            {"spec": {"securityContext": {"sysctls": [{"name": "kernel.x", "value": "1"}]}}},
            "podTemplates[0].spec.securityContext.sysctls",
            "sysctls are not allowed",
        ),
        (
            {"metadata": {"labels": {"kakugo.io/stage": "x"}}},
            "podTemplates[0].metadata.labels",
            "set by the operator",
        ),
        (
            {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "q"}}},
            "podTemplates[0].metadata.labels",
            "queueName",
        ),
        (
            {
                "metadata": {
                    "annotations": {
                        "container.apparmor.security.beta.kubernetes.io/stage": "unconfined"
                    }
                }
            },
            "podTemplates[0].metadata.annotations",
            "would weaken",
        ),
        (
            {"stages": ["teacher"], "spec": {"containers": [{"image": "x/y:1"}]}},
            "podTemplates[0].spec",
            "the served Teacher's image is teacher.serve.image",
        ),
        (
            {"stages": ["train", "train"]},
            "podTemplates[0].stages",
            "must not repeat",
        ),
    ],
)
def test_what_a_pod_template_may_not_change(template: dict, path: str, says: str) -> None:
    spec = copy.deepcopy(BASE)
    spec["resources"]["podTemplates"] = [template]
    with pytest.raises(ManifestError) as err:
        validate_spec("LanguageModel", spec)
    messages = [str(e) for e in err.value.errors]
    assert any(path in m and says in m for m in messages), messages


def test_cross_field_refusals() -> None:
    spec = copy.deepcopy(BASE)
    spec["teacher"]["endpoint"]["apiKeyEnv"] = "MY_KEY"
    spec["resources"]["podTemplates"] = [
        {"spec": {"containers": [{"env": [{"name": "MY_KEY", "value": "x"}]}]}}
    ]
    with pytest.raises(ManifestError, match=r"teacher.endpoint.apiKeyEnv"):
        validate_spec("LanguageModel", spec)
    spec = copy.deepcopy(BASE)
    spec["storage"] = {"pvc": {"claimName": "data", "mountPath": "/data"}}
    spec["resources"]["podTemplates"] = [
        {
            "spec": {
                "volumes": [{"name": "x", "emptyDir": {}}],
                "containers": [{"volumeMounts": [{"name": "x", "mountPath": "/data"}]}],
            }
        }
    ]
    with pytest.raises(ManifestError, match=r"storage.pvc"):
        validate_spec("LanguageModel", spec)
    with pytest.raises(ManifestError, match=r"teacher.serve.podTemplate.*resources.podTemplates"):
        validate_spec(
            "LanguageModel",
            {**BASE, "teacher": {"serve": {"podTemplate": {"spec": {}}}}},
        )
    with pytest.raises(ManifestError, match=r"podTemplate.spec.containers.0..image"):
        validate_spec("Teacher", {"podTemplate": {"spec": {"containers": [{"image": "x"}]}}})


def test_merge_pod_templates_rules() -> None:
    from kakugo_stages.spec import merge_pod_templates

    base = {
        "metadata": {"labels": {"a": "1"}},
        "spec": {
            "tolerations": [{"key": "t1"}],
            "volumes": [{"name": "v", "emptyDir": {}}],
            "containers": [
                {
                    "name": "stage",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "volumeMounts": [{"name": "v", "mountPath": "/v"}],
                }
            ],
        },
    }
    top = {
        "metadata": {"labels": {"b": "2"}},
        "spec": {
            "tolerations": [{"key": "t1"}, {"key": "t2"}],
            "volumes": [{"name": "v", "secret": {"secretName": "s"}}],
            "containers": [
                {
                    "name": "stage",
                    "env": [{"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
                    "volumeMounts": [{"name": "w", "mountPath": "/w"}],
                }
            ],
        },
    }
    merged = merge_pod_templates(base, top)
    assert merged["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert merged["spec"]["tolerations"] == [{"key": "t1"}, {"key": "t2"}]
    assert merged["spec"]["volumes"] == [{"name": "v", "secret": {"secretName": "s"}}]
    (c,) = merged["spec"]["containers"]
    assert c["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
    ]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/v", "/w"]
    assert base["spec"]["containers"][0]["env"][1] == {"name": "B", "value": "2"}  # untouched
    assert pods.apply_template(base, {}, "stage") is base


def test_the_review_pod_asks_for_a_gpu_only_to_generate_on_one() -> None:
    def gpus(spec: dict[str, Any]) -> str | None:
        resources = pod(job_of(spec, "review"))[1]["resources"]
        return resources.get("requests", {}).get("nvidia.com/gpu")

    # Without spec.review the stage only records that it skipped: a plain CPU Pod.
    assert gpus(BASE) is None
    assert pod(job_of(BASE, "review"))[1]["resources"]["requests"]["memory"] == "2Gi"
    # With it: the evaluate stage's resources, GPUs included when it generates on them.
    on_gpu = {**BASE, "review": {}, "resources": {"evaluate": {"gpus": 2}}}
    assert gpus(on_gpu) == "2"
    assert pod(job_of(on_gpu, "review"))[1]["resources"]["requests"]["memory"] == "32Gi"
    assert gpus({**on_gpu, "review": {"device": "cpu"}}) is None
