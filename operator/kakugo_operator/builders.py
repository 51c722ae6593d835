"""Manifests of the objects a LanguageModel owns: its spec ConfigMap and its stage Jobs.

Pure functions of (resolved spec, stage, attempt, settings, teacher endpoint): the same
inputs always give the same object, which is what makes re-creation after a restart safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kakugo_operator import naming, pods
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import (
    DEFAULT_TERMINATION_LOG,
    RUN_URI_ENV,
    SPEC_KEY,
    SPEC_MOUNT,
    SPEC_PATH,
    STAGE_ENV,
    TEACHER_API_KEY_ENV,
    TEACHER_MODEL_ENV,
    TEACHER_STAGES,
    TEACHER_URL_ENV,
    TERMINATION_LOG_ENV,
    RunSpec,
    decl,
    stage_command,
)
from kakugo_stages.spec import STAGE_CONTAINER, SecretKeyRef


@dataclass(frozen=True)
class TeacherEnv:
    """Where the stages find the teacher (ref/serve: the Teacher's Service), and the
    Secret key of the API key the Teacher's server requires (`spec.apiKeySecretRef`)."""

    url: str | None = None
    model: str | None = None
    api_key: SecretKeyRef | None = None


def shards(run: RunSpec, stage: str) -> int:
    """Completions of the stage's Job: its declared shard count (Indexed), else one Pod."""
    return decl(stage).num_shards(run.spec_dict())


def config_map(run: RunSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.config_map_name(run.name),
            "namespace": run.namespace,
            "labels": naming.lm_labels(run.name, run.language.code),
        },
        "data": {SPEC_KEY: run.to_yaml()},
    }


def _env(run: RunSpec, stage: str, teacher: TeacherEnv) -> tuple[list[dict], list[dict]]:
    env: list[dict[str, Any]] = [
        {"name": STAGE_ENV, "value": stage},
        {"name": RUN_URI_ENV, "value": run.run_uri},
        {"name": TERMINATION_LOG_ENV, "value": DEFAULT_TERMINATION_LOG},
        {"name": "HF_HUB_DISABLE_PROGRESS_BARS", "value": "1"},
    ]
    env_from: list[dict[str, Any]] = []
    settings = run.spec.teacher
    if stage in TEACHER_STAGES:
        if settings.endpoint is not None and settings.endpoint.api_key_secret_ref is not None:
            ref = settings.endpoint.api_key_secret_ref
            env.append(
                {
                    "name": settings.endpoint.api_key_env,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
        elif settings.endpoint is None and teacher.url:
            env.append({"name": TEACHER_URL_ENV, "value": teacher.url})
            if teacher.model:
                env.append({"name": TEACHER_MODEL_ENV, "value": teacher.model})
            if teacher.api_key is not None:  # a reference: the value never enters the Job
                ref = teacher.api_key
                env.append(
                    {
                        "name": TEACHER_API_KEY_ENV,
                        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                    }
                )
    hf = run.spec.hugging_face
    publish = run.spec.publish
    if stage == "publish" and publish is not None and publish.hugging_face.token_secret_ref:
        # The write token goes to the publish stage only, in place of the read token.
        ref = publish.hugging_face.token_secret_ref
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    elif hf is not None and hf.token_secret_ref is not None:
        ref = hf.token_secret_ref
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    storage_env_, storage_env_from = storage_env(run)
    return env + storage_env_, env_from + storage_env_from


def storage_env(run: RunSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """env and envFrom that reach the run's S3 storage: the endpoint and region of the
    spec, the credentials from their Secret (envFrom: never values in the Pod spec)."""
    env: list[dict[str, Any]] = []
    env_from: list[dict[str, Any]] = []
    storage = run.spec.storage
    if storage is not None and storage.s3 is not None:
        if storage.s3.credentials_secret_ref:
            env_from.append({"secretRef": {"name": storage.s3.credentials_secret_ref}})
        if storage.s3.endpoint_url:
            env.append({"name": "AWS_ENDPOINT_URL_S3", "value": storage.s3.endpoint_url})
        if storage.s3.region:
            env.append({"name": "AWS_DEFAULT_REGION", "value": storage.s3.region})
    return env, env_from


def storage_volume(
    run: RunSpec, *, read_only: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The volume and mount of a PVC storage (`storage.pvc`), at its mountPath: the run's
    file:// URI is a path under it. None for S3."""
    storage = run.spec.storage
    if storage is None or storage.pvc is None:
        return [], []
    claim: dict[str, Any] = {"claimName": storage.pvc.claim_name}
    mount: dict[str, Any] = {"name": "storage", "mountPath": storage.pvc.mount_path}
    if read_only:
        claim["readOnly"] = mount["readOnly"] = True
    volume = {"name": "storage", "persistentVolumeClaim": claim}
    return [volume], [mount]


def job(
    run: RunSpec,
    stage: str,
    attempt: int,
    settings: OperatorSettings,
    teacher: TeacherEnv,
    *,
    reset: bool = False,
    suspend: bool = False,
) -> dict[str, Any]:
    """The Job of one attempt of one stage (owner references are added by kopf.adopt).

    A Job on a Kueue queue (`queueName`) is created suspended: Kueue admits it by resuming
    it, and preempts it by suspending it again; the operator never resumes it."""
    res = run.spec.stage_resources(stage)
    labels = naming.stage_labels(run.name, run.language.code, stage, attempt)
    job_labels = dict(labels)
    if res.queue_name:
        job_labels[naming.QUEUE_LABEL] = res.queue_name
    gpus = res.gpus or 0
    requests: dict[str, str] = {}
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = res.memory
    limits: dict[str, str] = {"memory": res.memory} if res.memory else {}
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    node_selector = dict(res.node_selector or {})
    if res.gpu_type:
        node_selector[naming.GPU_PRODUCT_LABEL] = res.gpu_type
    env, env_from = _env(run, stage, teacher)
    # The first attempts after a spec change moved this stage's fingerprint: outputs of the
    # old spec must not count as done (see docs/architecture.md, "Spec changes").
    command = stage_command(stage, SPEC_PATH, reset=reset)
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": naming.config_map_name(run.name)}},
    ]
    mounts: list[dict[str, Any]] = [{"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True}]
    storage_volumes, storage_mounts = storage_volume(run)
    volumes += storage_volumes
    mounts += storage_mounts
    container: dict[str, Any] = {
        "name": STAGE_CONTAINER,
        "image": settings.image_for(stage),
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": env,
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "volumeMounts": mounts,
        # The summary JSON, or the log's tail when the stage died before writing one.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from
    pod_spec: dict[str, Any] = {
        # The operator retries, so that it can tell evictions from failures.
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if res.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in res.tolerations
        ]
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    # Restricted, with its scratch volume and /dev/shm (pods.py).
    pods.harden(
        pod_spec,
        container,
        shm_size=res.shm_size,
        scratch_size=res.scratch_size,
        scratch=run.spec.resources.scratch,
        labels=labels,
    )
    template = pods.apply_template(
        {
            "metadata": {
                "labels": labels,
                # Read back by the cost accounting (the node may lack the labels).
                "annotations": {
                    naming.GPU_ANNOTATION: res.gpu_type or "",
                    naming.CAPACITY_ANNOTATION: res.capacity_type or "",
                },
            },
            "spec": pod_spec,
        },
        run.spec.resources.pod_template_for(stage),
        STAGE_CONTAINER,
    )
    n = shards(run, stage)
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": n,
        "parallelism": min(n, res.parallelism or 1),
        "completionMode": "Indexed" if decl(stage).sharded else "NonIndexed",
        "template": template,
    }
    if res.active_deadline_seconds:
        # Counts from the Job's start, again after each resume (Kueue, spec.suspend).
        job_spec["activeDeadlineSeconds"] = res.active_deadline_seconds
    if settings.job_ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = settings.job_ttl_seconds_after_finished
    if suspend or res.queue_name:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": naming.job_name(run.name, stage, attempt),
            "namespace": run.namespace,
            "labels": job_labels,
        },
        "spec": job_spec,
    }
