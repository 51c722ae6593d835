"""Reading the world: Job states, Pod outcomes, termination messages, GPU seconds.

Pure functions over plain dicts (the objects as the API returns them), so that the
decision code can be tested without a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from kakugo_operator import naming
from kakugo_operator.settings import OperatorSettings

#: Pod status reasons that mean "taken away", not "broke".
DISRUPTION_REASONS = {
    "Evicted",
    "Preempted",
    "Preempting",
    "Shutdown",
    "NodeShutdown",
    "Terminated",
    "NodeLost",
    "UnexpectedAdmissionError",
}
#: Counts read from termination messages (summary key -> status key).
COUNT_KEYS = {
    "rows_in": "rowsIn",
    "rows_out": "rowsOut",
    "requests": "requests",
    "requests_ok": "requestsOk",
    "prompt_tokens": "promptTokens",
    "completion_tokens": "completionTokens",
    "batch_prompt_tokens": "batchPromptTokens",
    "batch_completion_tokens": "batchCompletionTokens",
}


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def attempt_of(obj: dict[str, Any]) -> int:
    try:
        return int(labels(obj).get(naming.ATTEMPT_LABEL, "0"))
    except ValueError:
        return 0


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def job_state(job: dict[str, Any]) -> str:
    """Running, Succeeded or Failed (a suspended Job counts as Running)."""
    status = job.get("status") or {}
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return "Succeeded"
    if _condition(job, "Failed") or _condition(job, "FailureTarget"):
        return "Failed"
    completions = (job.get("spec") or {}).get("completions") or 1
    if (status.get("succeeded") or 0) >= completions:
        return "Succeeded"
    if (status.get("failed") or 0) > (job.get("spec") or {}).get("backoffLimit", 0):
        return "Failed"
    return "Running"


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
            "terminated"
        )
        if term:
            return term
    return None


def pod_settled(pod: dict[str, Any]) -> bool:
    """The Pod has ended (or is gone) and its status says how."""
    if pod.get("_deleted") or _terminated(pod) is not None:
        return True
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def termination_summary(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The stage's JSON summary from the Pod status, or None (log text, or nothing)."""
    term = _terminated(pod)
    if not term or not term.get("message"):
        return None
    try:
        data = json.loads(term["message"])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def is_disrupted(pod: dict[str, Any]) -> bool:
    """Evicted, preempted, or deleted before it finished: not the stage's fault."""
    if pod.get("_deleted") and _terminated(pod) is None:
        return True
    if _condition(pod, "DisruptionTarget"):
        return True
    return (pod.get("status") or {}).get("reason") in DISRUPTION_REASONS


@dataclass(frozen=True)
class Failure:
    disrupted: bool
    reason: str
    message: str
    pod: str | None = None


#: A Job's Failed condition when it ran longer than its activeDeadlineSeconds.
DEADLINE_EXCEEDED = "DeadlineExceeded"


def deadline_failure(job: dict[str, Any] | None) -> Failure | None:
    """The Job ran past its activeDeadlineSeconds: a failure of the stage (it took too
    long), never a disruption, although the Job controller deleted its Pods."""
    cond = _condition(job or {}, "Failed") or _condition(job or {}, "FailureTarget") or {}
    if cond.get("reason") != DEADLINE_EXCEEDED:
        return None
    seconds = ((job or {}).get("spec") or {}).get("activeDeadlineSeconds")
    limit = f" ({seconds}s, resources.<stage>.activeDeadlineSeconds)" if seconds else ""
    return Failure(
        False,
        DEADLINE_EXCEEDED,
        f"the attempt ran longer than its deadline{limit}; its Pods were stopped",
    )


def classify_failure(pods: list[dict[str, Any]], job: dict[str, Any] | None = None) -> Failure:
    """Why a failed Job failed: its deadline (the Job's condition), else from its Pods. A
    Job with no Pods left was disrupted (deleted Pods)."""
    if (deadline := deadline_failure(job)) is not None:
        return deadline
    if not pods:
        return Failure(True, "PodDeleted", "the Job's Pods were deleted before they finished")
    broken = [
        p
        for p in pods
        if not is_disrupted(p)
        and _terminated(p) is not None
        and (_terminated(p) or {}).get("exitCode", 1) != 0
    ]
    if not broken:
        pod = pods[0]
        status = pod.get("status") or {}
        cond = _condition(pod, "DisruptionTarget") or {}
        reason = cond.get("reason") or status.get("reason") or "PodDeleted"
        msg = cond.get("message") or status.get("message") or "the Pod was taken away"
        return Failure(True, reason, msg, pod["metadata"]["name"])
    pod = broken[0]
    term = _terminated(pod) or {}
    summary = termination_summary(pod)
    if summary is not None:
        text = str(summary.get("error") or "stage failed without an error message")
    else:
        text = (term.get("message") or "").strip() or "no termination message"
    reason = f"{term.get('reason') or 'Error'} (exit code {term.get('exitCode', '?')})"
    return Failure(False, reason, text, pod["metadata"]["name"])


def stage_counts(pods: list[dict[str, Any]], extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Counts of a stage from its Pods' summaries, and the stage's declared extra summary
    keys (`StageDecl.summary`). Each summary totals the whole stage as its Pod saw it, so
    the largest value of each count is the stage's."""
    counts: dict[str, Any] = {}
    rejected: dict[str, int] = {}
    extra: dict[str, Any] = {}
    for pod in pods:
        summary = termination_summary(pod)
        if not summary:
            continue
        for key, out in COUNT_KEYS.items():
            if isinstance(summary.get(key), int | float):
                counts[out] = max(counts.get(out, 0), int(summary[key]))
        for reason, n in (summary.get("rejected") or {}).items():
            rejected[reason] = max(rejected.get(reason, 0), int(n))
        for key in extra_keys:
            if key in summary:
                extra[key] = summary[key]
    if rejected:
        counts["rejected"] = rejected
    if extra:
        counts["extra"] = extra
    return counts


def pod_gpus(pod: dict[str, Any]) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        res = container.get("resources") or {}
        value = (res.get("limits") or {}).get("nvidia.com/gpu") or (res.get("requests") or {}).get(
            "nvidia.com/gpu"
        )
        if value:
            total += int(str(value))
    return total


def pod_seconds(pod: dict[str, Any], now: datetime) -> float:
    """Run seconds: startTime to the container's finish (now while it runs)."""
    status = pod.get("status") or {}
    start = parse_time(status.get("startTime"))
    if start is None:
        return 0.0
    term = _terminated(pod)
    end = parse_time(term.get("finishedAt")) if term else None
    if end is None:
        end = parse_time(pod.get("_deletedAt")) or (
            now if status.get("phase") not in ("Succeeded", "Failed") else start
        )
    return max((end - start).total_seconds(), 0.0)


def pod_price(pod: dict[str, Any], settings: OperatorSettings) -> Decimal:
    meta = pod.get("metadata") or {}
    ann = meta.get("annotations") or {}
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    product = ann.get(naming.GPU_ANNOTATION) or selector.get(naming.GPU_PRODUCT_LABEL)
    capacity = ann.get(naming.CAPACITY_ANNOTATION) or selector.get("karpenter.sh/capacity-type")
    return settings.gpu_price(product or None, capacity or None)


def gpu_usage(
    pods: list[dict[str, Any]], now: datetime, settings: OperatorSettings
) -> tuple[float, Decimal]:
    """(GPU-seconds, dollars) of some Pods."""
    seconds, dollars = 0.0, Decimal(0)
    for pod in pods:
        gpus = pod_gpus(pod)
        if not gpus:
            continue
        run = pod_seconds(pod, now)
        seconds += run * gpus
        dollars += Decimal(str(run)) * gpus * pod_price(pod, settings) / Decimal(3600)
    return seconds, dollars
