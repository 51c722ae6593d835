"""Operability (issue 18): reconcile errors by kind and reason, the per-LanguageModel
progress gauge behind the stuck-stage alert, the process metrics, and the log format the
operator hands to Kopf."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from kakugo_operator import metrics
from kakugo_operator.k8s import Refused
from kakugo_operator.main import kopf_args
from kubernetes.client.rest import ApiException
from urllib3.exceptions import MaxRetryError

from kakugo_stages.cli import main as cli


def _api_error(status: int) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.body = '{"message": "m", "reason": "R"}'
    return exc


def test_errors_are_classified_into_a_closed_set() -> None:
    cases = {
        "refused": Refused("create", "Job a/b", _api_error(403)),
        "api_unavailable": Refused("create", "Job a/b", _api_error(503)),
        "api_error": _api_error(409),
        "transport": MaxRetryError(None, "/api"),  # type: ignore[arg-type]
        "internal": KeyError("spec"),
    }
    for reason, exc in cases.items():
        assert metrics.error_reason(exc) == reason, (reason, exc)
    assert metrics.error_reason(Refused("patch", "x", _api_error(429))) == "api_unavailable"
    assert metrics.error_reason(ConnectionResetError()) == "transport"
    assert set(cases) == set(metrics.ERROR_REASONS)


def test_reconcile_errors_are_counted_by_kind_and_reason() -> None:
    def value(kind: str, reason: str) -> float:
        return (
            metrics.REGISTRY.get_sample_value(
                "kakugo_reconcile_errors_total", {"kind": kind, "reason": reason}
            )
            or 0.0
        )

    before = value("Teacher", "refused")
    metrics.reconcile_error("Teacher", Refused("create", "Service a/b", _api_error(422)))
    metrics.reconcile_error("Teacher", Refused("create", "Service a/b", _api_error(422)))
    assert value("Teacher", "refused") == before + 2


def test_the_progress_gauge_exists_only_while_running() -> None:
    created, finished, started = (
        "2026-11-26T10:00:00Z",
        "2026-11-26T11:00:00Z",
        "2026-11-26T11:30:00Z",
    )
    status = {
        "phase": "Running",
        "stages": [
            {"name": "topics", "createdAt": created, "finishedAt": finished},
            {"name": "respond", "startedAt": started},
            {"name": "train"},
        ],
    }
    latest = datetime(2026, 11, 26, 11, 30, tzinfo=UTC).timestamp()
    assert metrics.last_progress(status) == latest
    assert metrics.last_progress({"stages": []}) is None

    def gauge() -> float | None:
        return metrics.REGISTRY.get_sample_value(
            "kakugo_languagemodel_last_progress_timestamp_seconds",
            {"namespace": "ops", "languagemodel": "lm"},
        )

    metrics.observe_plan("ops", "lm", status, [], [])
    assert gauge() == latest
    metrics.observe_plan("ops", "lm", {**status, "phase": "Succeeded"}, [], [])
    assert gauge() is None
    metrics.observe_plan("ops", "lm", status, [], [])
    metrics.forget("ops", "lm")
    assert gauge() is None


def test_process_metrics_are_on_the_operators_registry() -> None:
    names = {m.name for m in metrics.REGISTRY.collect()}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names


def test_the_log_format_reaches_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAKUGO_OPERATOR_SETTINGS", raising=False)
    assert "--log-format=json" in kopf_args(["--log-format", "JSON"])
    assert "--log-format=plain" in kopf_args(["--log-format=plain"])
    assert not [a for a in kopf_args([]) if a.startswith("--log-format")]  # Kopf's default
    with pytest.raises(SystemExit, match="--log-format 'yaml'"):
        kopf_args(["--log-format=yaml"])
    from kakugo_operator import main as operator_main

    seen: list[list[str]] = []
    monkeypatch.setattr(operator_main, "run_operator", lambda argv=(): seen.append(list(argv)))
    result = CliRunner().invoke(cli, ["operator", "--log-format", "json"])
    assert result.exit_code == 0, result.output
    assert seen == [["--standalone", "--log-format=json"]]
    bad = CliRunner().invoke(cli, ["operator", "--log-format", "yaml"])
    assert bad.exit_code == 2
