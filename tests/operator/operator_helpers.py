"""Helpers of the operator tests: waiting, manifests, and playing the Job controller and
the kubelet (Pods from a Job's template, Pod and Job statuses)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.operator.k8s_emulator import Api

NS = "kakugo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS_PORT = free_port()


class Operator:
    """Start and stop `kakugo operator` (in-process, through kopf.testing.KopfRunner)."""

    def __init__(self) -> None:
        self.runner: Any = None
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"

    def start(self) -> Operator:
        from kakugo_operator.main import kopf_args
        from kopf.testing import KopfRunner

        self.runner = KopfRunner(kopf_args(["--liveness", self.liveness, "--verbose"]), timeout=60)
        self.runner.__enter__()
        return self

    def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            runner.__exit__(None, None, None)
            assert runner.exception is None, runner.output[-3000:]


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll until check() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KeyError, TypeError, IndexError, AttributeError):
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}; last: {last!r}")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def language_model(name: str = "yoruba", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "language": "Yoruba",
        "teacher": {
            "endpoint": {
                "url": "https://api.example.com/v1",
                "model": "gpt-oss-120b",
                "apiKeySecretRef": {"name": "teacher-key", "key": "token"},
            }
        },
        "storage": {
            "uri": "s3://kakugo-artifacts/runs",
            "s3": {
                "endpointUrl": "https://minio.storage.svc:9000",
                "credentialsSecretRef": "kakugo-s3",
            },
        },
        "data": {"topics": {"shards": 3}},
        "resources": {
            "topics": {
                "parallelism": 2,
                "cpu": "2",
                "memory": "4Gi",
                "priorityClassName": "batch-low",
                "nodeSelector": {"pool": "cpu"},
                "tolerations": [
                    {
                        "key": "dedicated",
                        "operator": "Equal",
                        "value": "kakugo",
                        "effect": "NoSchedule",
                    }
                ],
            }
        },
    }
    body.update(spec)
    return {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


def job(api: Api, name: str, timeout: float = 15.0) -> dict[str, Any]:
    return wait_for(lambda: api.get("Job", NS, name), timeout, f"Job {name}")


def lm_status(api: Api, name: str = "yoruba") -> dict[str, Any]:
    return (api.get("LanguageModel", NS, name) or {}).get("status") or {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def stage(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next((s for s in status.get("stages") or [] if s["name"] == name), {})


def summary(stage_name: str, **counts: Any) -> str:
    base = {
        "stage": stage_name,
        "shards": 1,
        "completed": 1,
        "rows_in": 0,
        "rows_out": 10,
        "requests": 12,
        "requests_ok": 10,
        "prompt_tokens": 1000,
        "completion_tokens": 2000,
        "seconds": 1.0,
        "rejected": {"finish_length": 2},
    }
    base.update(counts)
    return json.dumps(base)


def make_pods(
    api: Api, job_obj: dict[str, Any], *, started: datetime | None = None, count: int | None = None
) -> list[dict[str, Any]]:
    """What the Job controller and the scheduler do: Pods from the template, running."""
    started = started or datetime.now(UTC)
    tmpl = job_obj["spec"]["template"]
    n = count or job_obj["spec"].get("completions", 1)
    pods = []
    for i in range(n):
        name = f"{job_obj['metadata']['name']}-{i}-x{i}"
        pods.append(
            api.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": name,
                        "namespace": NS,
                        "labels": {
                            **tmpl["metadata"]["labels"],
                            "job-name": job_obj["metadata"]["name"],
                        },
                        "annotations": tmpl["metadata"].get("annotations", {}),
                    },
                    "spec": tmpl["spec"],
                    "status": {"phase": "Running", "startTime": iso(started)},
                }
            )
        )
    return pods


def finish_pod(
    api: Api,
    pod: dict[str, Any],
    *,
    exit_code: int = 0,
    message: str = "",
    reason: str | None = None,
    finished: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    finished = finished or datetime.now(UTC)
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [
            {
                "name": "stage",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                        "message": message,
                        "finishedAt": iso(finished),
                        "startedAt": pod["status"]["startTime"],
                    }
                },
            }
        ],
    }
    status.update(extra or {})
    api.patch("Pod", NS, pod["metadata"]["name"], {"status": status}, sub="status")


def complete_job(api: Api, name: str, message: str, **kw: Any) -> dict[str, Any]:
    job_obj = job(api, name)
    for pod in make_pods(api, job_obj, started=kw.pop("started", None)):
        finish_pod(api, pod, message=message, **kw)
    n = job_obj["spec"].get("completions", 1)
    return api.patch(
        "Job",
        NS,
        name,
        {"status": {"succeeded": n, "conditions": [{"type": "Complete", "status": "True"}]}},
        sub="status",
    )


#: The stages after evaluate that a spec without `review`/`publish` skips: their Jobs
#: succeed at once with a summary that says so.
SKIPPED_AFTER_EVALUATE = ("review", "publish")


def complete_skipped(api: Api, lm_name: str = "yoruba") -> None:
    for name in SKIPPED_AFTER_EVALUATE:
        complete_job(
            api,
            f"{lm_name}-{name}-1",
            summary(
                name, rows_out=0, requests=0, requests_ok=0, stage_skipped=f"spec.{name} is not set"
            ),
        )


def fail_job(api: Api, name: str) -> None:
    api.patch(
        "Job",
        NS,
        name,
        {
            "status": {
                "failed": 1,
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
                ],
            }
        },
        sub="status",
    )


def hours_ago(h: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=h)
