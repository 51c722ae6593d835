"""Deterministic, DNS-safe names and the labels every owned object carries."""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 63
GROUP = "kakugo.io"
LM_LABEL = "kakugo.io/languagemodel"
STAGE_LABEL = "kakugo.io/stage"
ATTEMPT_LABEL = "kakugo.io/attempt"
LANGUAGE_LABEL = "kakugo.io/language"
TEACHER_LABEL = "kakugo.io/teacher"
#: On a LanguageModel's served model (spec.serve): its Deployment, Pods and Service.
SERVE_LABEL = "kakugo.io/serve"
MANAGED_BY = "kakugo-operator"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
CAPACITY_ANNOTATION = "kakugo.io/capacity-type"
GPU_ANNOTATION = "kakugo.io/gpu-product"


def dns_name(*parts: str | int, limit: int = MAX_NAME) -> str:
    """Join parts with '-'; names too long keep their tail and gain a stable hash."""
    name = "-".join(str(p) for p in parts)
    name = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    # Keep the suffix (stage and attempt), which tells Jobs apart; shorten the LM name.
    suffix = "-".join(str(p) for p in parts[1:])
    head = name[: max(1, limit - len(suffix) - len(digest) - 2)].rstrip("-")
    return f"{head}-{digest}-{suffix}"[:limit].rstrip("-")


def job_name(lm: str, stage: str, attempt: int) -> str:
    return dns_name(lm, stage, attempt)


def config_map_name(lm: str) -> str:
    return dns_name(lm, "spec")


def served_teacher_name(lm: str) -> str:
    return dns_name(lm, "teacher")


def serve_name(lm: str) -> str:
    """The Deployment and Service of a LanguageModel's served model (spec.serve)."""
    return dns_name(lm, "serve")


def model_cache_name(teacher: str) -> str:
    """The model cache PVC the operator creates for a Teacher (a DNS subdomain)."""
    return dns_name(teacher, "model-cache", limit=253)


def label_value(value: str) -> str:
    """A valid label value (≤63, alphanumeric ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", value)[:63]
    return value.strip("-._")


def lm_labels(lm: str, language: str | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "kakugo",
        "app.kubernetes.io/instance": label_value(lm),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LM_LABEL: label_value(lm),
    }
    if language:
        labels[LANGUAGE_LABEL] = label_value(language)
    return labels


def stage_labels(lm: str, language: str, stage: str, attempt: int) -> dict[str, str]:
    return {
        **lm_labels(lm, language),
        "app.kubernetes.io/component": stage,
        STAGE_LABEL: stage,
        ATTEMPT_LABEL: str(attempt),
    }


def teacher_labels(teacher: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kakugo",
        "app.kubernetes.io/instance": label_value(teacher),
        "app.kubernetes.io/component": "teacher",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        TEACHER_LABEL: label_value(teacher),
    }


def serve_labels(lm: str, language: str | None = None) -> dict[str, str]:
    """Not the LanguageModel label: the served model's Pods are no stage Pods (cost,
    attempts); they are found by SERVE_LABEL."""
    labels = {
        "app.kubernetes.io/name": "kakugo",
        "app.kubernetes.io/instance": label_value(lm),
        "app.kubernetes.io/component": "serve",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        SERVE_LABEL: label_value(lm),
    }
    if language:
        labels[LANGUAGE_LABEL] = label_value(language)
    return labels
