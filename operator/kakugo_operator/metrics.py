"""Prometheus metrics of the operator: `kakugo_` prefix, base units, bounded labels.

Per-object series (cost, evaluation scores) are removed when the object is deleted; the
other labels come from closed sets (stages, phases, outcomes, a capped set of reasons).
The registry also holds the standard process and platform collectors (process_*,
python_info), as the default registry of prometheus_client would.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import Counter
from decimal import Decimal
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from kubernetes.client.rest import ApiException
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client import Counter as PCounter
from urllib3.exceptions import HTTPError as TransportError

from kakugo_operator.k8s import Refused
from kakugo_operator.observe import parse_time
from kakugo_stages.contract import STAGES
from kakugo_stages.status import TeacherCost

REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...; python_info.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
PHASES = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Stalled")
#: Rejection reasons are free text in the stages: keep a closed, small set of label values.
KNOWN_REASONS = (
    "http_429",
    "http_5xx",
    "timeout",
    "transport",
    "finish_length",
    "finish_content_filter",
    "parse",
    "empty",
    "refused",
    "language",
    "too_long",
    "too_short",
    "duplicate",
    "token_ratio",
    "media",
)

LANGUAGEMODELS = Gauge(
    "kakugo_languagemodels", "LanguageModels by phase.", ["phase"], registry=REGISTRY
)
STAGE_DURATION = Histogram(
    "kakugo_stage_duration_seconds",
    "Wall time of a stage, first attempt to success.",
    ["stage"],
    registry=REGISTRY,
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, float("inf")),
)
RETRIES = PCounter(
    "kakugo_stage_retries_total",
    "Stage attempts that will be retried.",
    ["stage", "reason"],
    registry=REGISTRY,
)
GPU_SECONDS = PCounter(
    "kakugo_gpu_seconds_total",
    "GPU-seconds of finished stage attempts.",
    ["stage"],
    registry=REGISTRY,
)
COST = Gauge(
    "kakugo_cost_dollars",
    "Estimated cost of a LanguageModel so far, in dollars.",
    ["namespace", "languagemodel"],
    registry=REGISTRY,
)
EXAMPLES = PCounter(
    "kakugo_examples_total",
    "Examples of finished stages: generated, kept, or dropped by reason.",
    ["stage", "outcome", "reason"],
    registry=REGISTRY,
)
TOKENS = PCounter(
    "kakugo_teacher_tokens_total",
    "Teacher tokens of finished stages.",
    ["direction"],
    registry=REGISTRY,
)
SCORE = Gauge(
    "kakugo_evaluation_score",
    "Evaluation score by task, base and tuned model.",
    ["namespace", "languagemodel", "task", "model"],
    registry=REGISTRY,
)
PROGRESS = Gauge(
    "kakugo_progress_ratio",
    "Share of a LanguageModel's stages that are done.",
    ["namespace", "languagemodel", "language"],
    registry=REGISTRY,
)
BUDGET = Gauge(
    "kakugo_budget_dollars",
    "spec.budget.maxDollars of a LanguageModel.",
    ["namespace", "languagemodel"],
    registry=REGISTRY,
)
FORECAST = Gauge(
    "kakugo_forecast_dollars",
    "The cost forecast of a LanguageModel's spec (status.forecast.dollars).",
    ["namespace", "languagemodel"],
    registry=REGISTRY,
)
TEACHER_READY = Gauge(
    "kakugo_teacher_ready",
    "1 when a Teacher's server is Ready, else 0.",
    ["namespace", "teacher"],
    registry=REGISTRY,
)
LAST_PROGRESS = Gauge(
    "kakugo_languagemodel_last_progress_timestamp_seconds",
    "While a LanguageModel is Running: when one of its stages last started or finished "
    "(Unix time). The stuck-stage alert compares it with time().",
    ["namespace", "languagemodel"],
    registry=REGISTRY,
)
#: Kinds and reasons of reconcile errors (closed sets: bounded labels).
ERROR_KINDS = ("LanguageModel", "Teacher", "LanguageFleet")
ERROR_REASONS = ("refused", "api_unavailable", "api_error", "transport", "internal")
RECONCILE_ERRORS = PCounter(
    "kakugo_reconcile_errors_total",
    "Reconciliations that failed, by kind and reason: refused (the API server refused a "
    "write: invalid, forbidden), api_unavailable (it answered 5xx or 429), api_error "
    "(another API error), transport (no answer), internal (a bug in the operator).",
    ["kind", "reason"],
    registry=REGISTRY,
)
TEACHER_CLIENTS = Gauge(
    "kakugo_teacher_clients",
    "LanguageModels that need a Teacher now (in a teacher stage).",
    ["namespace", "teacher"],
    registry=REGISTRY,
)

#: Where a Teacher's GPU time went (a closed set): to its LanguageModels (present and
#: former), idle (the Teacher itself), pending (clients that have not reported tokens yet).
TEACHER_COST_TO = ("languagemodels", "idle", "pending")
TEACHER_COST = Gauge(
    "kakugo_teacher_cost_dollars",
    "A Teacher's GPU time so far, in dollars, by whom it is charged to.",
    ["namespace", "teacher", "charged_to"],
    registry=REGISTRY,
)
TEACHER_SHARE = Gauge(
    "kakugo_teacher_share_dollars",
    "A LanguageModel's share of its Teacher's GPU time, in dollars (in kakugo_cost_dollars).",
    ["namespace", "languagemodel"],
    registry=REGISTRY,
)


def error_reason(exc: BaseException) -> str:
    """The bounded reason label of a failed reconciliation (ERROR_REASONS)."""
    if isinstance(exc, Refused):
        return "refused" if exc.permanent else "api_unavailable"
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        return "api_unavailable" if status >= 500 or status in (408, 429) else "api_error"
    if isinstance(exc, TransportError | OSError | TimeoutError):
        return "transport"
    return "internal"


def reconcile_error(kind: str, exc: BaseException) -> None:
    RECONCILE_ERRORS.labels(kind, error_reason(exc)).inc()


# Labels seen per object, so that they can be removed on deletion.
_scores: dict[tuple[str, str], set[tuple[str, str]]] = {}
_phases: dict[tuple[str, str], str] = {}
_languages: dict[tuple[str, str], str] = {}
#: The largest (prompt, completion) token counts counted per (namespace, name, stage,
#: fingerprint): an attempt's counts are the stage's ledger, which totals every attempt
#: before it, so each finished attempt adds only what grew (a rerun of a changed spec has
#: a new fingerprint and a new ledger).
_tokens_counted: dict[tuple[str, str, str, str], tuple[int, int]] = {}


def reason_label(reason: str) -> str:
    """Map a free-text reason onto the bounded set (else "other")."""
    reason = re.sub(r"[^a-z0-9_]+", "_", reason.lower())
    for known in KNOWN_REASONS:
        if reason.startswith(known):
            return known
    return "other"


#: Set once the operator has started and its indexes are filled (readiness).
READY = threading.Event()
#: More readiness conditions by name (the admission webhook): /readyz answers 200 only
#: when READY and every gate are set.
GATES: dict[str, threading.Event] = {}


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # probes every few seconds: no access log
        pass


def _app() -> Any:
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "/")
        if path == "/readyz":
            waiting = [name for name, gate in list(GATES.items()) if not gate.is_set()]
            ok = READY.is_set() and not waiting
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            if ok:
                return [b"ready\n"]
            return [
                ("waiting for: " + ", ".join(waiting) + "\n" if waiting else "starting\n").encode()
            ]
        if path == "/livez":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        return metrics_app(environ, start_response)

    return app


def start(port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serve /metrics, /readyz and /livez on `port` (a daemon thread)."""
    server = make_server(host, port, _app(), handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    for phase in PHASES:
        LANGUAGEMODELS.labels(phase).set(0)
    for kind in ERROR_KINDS:  # zeros, so that rates and alerts see the series from the start
        for reason in ERROR_REASONS:
            RECONCILE_ERRORS.labels(kind, reason)
    return server


def observe_plan(
    namespace: str,
    name: str,
    status: dict[str, Any],
    finished: list[dict],
    completed: list[tuple[str, float]],
    spec: dict[str, Any] | None = None,
) -> None:
    """Fold a reconciliation's results into the metrics."""
    key = (namespace, name)
    spec = spec or {}
    progress = status.get("progress") or {}
    if progress.get("stagesTotal"):
        language = str(spec.get("language") or "")
        if _languages.get(key, language) != language:  # a renamed language: drop the old series
            with contextlib.suppress(KeyError):
                PROGRESS.remove(namespace, name, _languages[key])
        _languages[key] = language
        PROGRESS.labels(namespace, name, language).set(
            progress.get("stagesDone", 0) / progress["stagesTotal"]
        )
    budget = (spec.get("budget") or {}).get("maxDollars")
    if budget is not None:
        BUDGET.labels(namespace, name).set(float(budget))
    else:
        with contextlib.suppress(KeyError):
            BUDGET.remove(namespace, name)
    phase = status.get("phase")
    if phase in PHASES and _phases.get(key) != phase:
        if key in _phases:
            LANGUAGEMODELS.labels(_phases[key]).dec()
        LANGUAGEMODELS.labels(phase).inc()
        _phases[key] = phase
    cost = (status.get("cost") or {}).get("dollars")
    if cost is not None:
        COST.labels(namespace, name).set(float(cost))
    forecast = (status.get("forecast") or {}).get("dollars")
    if forecast is not None:
        FORECAST.labels(namespace, name).set(float(forecast))
    share = (status.get("cost") or {}).get("teacherShare")
    if share is not None:
        TEACHER_SHARE.labels(namespace, name).set(float(share))
    else:
        with contextlib.suppress(KeyError):
            TEACHER_SHARE.remove(namespace, name)
    last = last_progress(status) if phase == "Running" else None
    if last is not None:
        LAST_PROGRESS.labels(namespace, name).set(last)
    else:
        with contextlib.suppress(KeyError):
            LAST_PROGRESS.remove(namespace, name)
    for stage, seconds in completed:
        if stage in STAGES:
            STAGE_DURATION.labels(stage).observe(seconds)
    for record in finished:
        stage = record["stage"]
        GPU_SECONDS.labels(stage).inc(float(record.get("gpuSeconds", 0)))
        if record["outcome"] != "Succeeded":
            RETRIES.labels(
                stage, "disruption" if record["outcome"] == "Disrupted" else "failure"
            ).inc()
        counts = record.get("counts") or {}
        prompt, completion = (
            int(counts.get("promptTokens", 0)),
            int(counts.get("completionTokens", 0)),
        )
        fingerprints = {e.get("name"): e.get("fingerprint", "") for e in status.get("stages") or []}
        ledger = (namespace, name, stage, str(fingerprints.get(stage, "")))
        seen_prompt, seen_completion = _tokens_counted.get(ledger, (0, 0))
        TOKENS.labels("prompt").inc(max(prompt - seen_prompt, 0))
        TOKENS.labels("completion").inc(max(completion - seen_completion, 0))
        _tokens_counted[ledger] = (
            max(prompt, seen_prompt),
            max(completion, seen_completion),
        )
        if record["outcome"] == "Succeeded":
            EXAMPLES.labels(stage, "generated", "").inc(counts.get("requests", 0))
            EXAMPLES.labels(stage, "kept", "").inc(counts.get("rowsOut", 0))
            dropped: Counter[str] = Counter()
            for reason, n in (counts.get("rejected") or {}).items():
                dropped[reason_label(reason)] += int(n)
            for reason, n in dropped.items():
                EXAMPLES.labels(stage, "dropped", reason).inc(n)
    evaluation = (status.get("evaluation") or {}).get("tasks") or {}
    seen = _scores.setdefault(key, set())
    for task, row in evaluation.items():
        for model in ("base", "tuned"):
            value = (row or {}).get(model)
            if isinstance(value, int | float):
                SCORE.labels(namespace, name, task, model).set(value)
                seen.add((task, model))


def last_progress(status: dict[str, Any]) -> float | None:
    """The latest time a stage was created, started or finished (Unix seconds), or None."""
    times = [
        parse_time(stage.get(key))
        for stage in status.get("stages") or []
        for key in ("createdAt", "startedAt", "finishedAt")
    ]
    stamps = [t.timestamp() for t in times if t is not None]
    return max(stamps) if stamps else None


def reset() -> None:
    """Forget the phases counted so far: a (re)started operator counts its objects anew as
    its daemons observe them (several operator runs in one process, as in tests)."""
    _phases.clear()
    for phase in PHASES:
        LANGUAGEMODELS.labels(phase).set(0)


def forget(namespace: str, name: str) -> None:
    """Remove an object's series (it was deleted)."""
    key = (namespace, name)
    if key in _phases:
        LANGUAGEMODELS.labels(_phases.pop(key)).dec()
    for counted in [k for k in _tokens_counted if k[:2] == key]:
        del _tokens_counted[counted]
    for gauge in (COST, TEACHER_SHARE, BUDGET, FORECAST, LAST_PROGRESS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    if key in _languages:
        with contextlib.suppress(KeyError):
            PROGRESS.remove(namespace, name, _languages.pop(key))
    for task, model in _scores.pop(key, set()):
        with contextlib.suppress(KeyError):
            SCORE.remove(namespace, name, task, model)


def observe_teacher(
    namespace: str, name: str, ready: bool, clients: int, cost: TeacherCost | None = None
) -> None:
    TEACHER_READY.labels(namespace, name).set(1 if ready else 0)
    TEACHER_CLIENTS.labels(namespace, name).set(clients)
    if cost is not None:
        charged = sum((Decimal(c.dollars) for c in cost.charged.values()), Decimal(0))
        split = {
            "languagemodels": charged + Decimal(cost.former_clients),
            "idle": Decimal(cost.idle),
            "pending": Decimal(cost.pending),
        }
        for to, dollars in split.items():
            TEACHER_COST.labels(namespace, name, to).set(float(dollars))


def forget_teacher(namespace: str, name: str) -> None:
    for gauge in (TEACHER_READY, TEACHER_CLIENTS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for to in TEACHER_COST_TO:
        with contextlib.suppress(KeyError):
            TEACHER_COST.remove(namespace, name, to)
