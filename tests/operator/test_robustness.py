"""What the operator does when the API server refuses it, with names it cannot use, and
where Kopf keeps its own state."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import kopf
import pytest
from kakugo_operator import fleet, k8s, kopf_state, naming, settings
from kakugo_operator.handlers import refusal_delay
from kakugo_operator.reconcile import Observed, decide, refused
from kakugo_operator.teacher import decide_teacher
from kakugo_operator.teacher import refused as teacher_refused
from kubernetes.client.rest import ApiException

from kakugo_stages.spec import DNS_1035_LABEL
from kakugo_stages.status import operator_status
from tests.operator.k8s_emulator import Api
from tests.operator.operator_helpers import NS, Operator, job, language_model, wait_for

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETTINGS = settings.OperatorSettings(storage_uri="s3://b/runs")


def observed(name: str = "yoruba", spec: dict | None = None, status: dict | None = None):
    return Observed(name, NS, 1, spec or language_model()["spec"], status or {}, [], [], None, NOW)


def conditions(status: dict) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def api_exception(status: int, reason: str, message: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "reason": reason, "message": message})
    return exc


# ------------------------------------------------------------------ names


def test_a_teacher_whose_name_is_no_service_name_stalls_without_trying() -> None:
    for name in ("70b", "gpt.oss"):
        plan = decide_teacher(name, NS, {"device": "cpu", "gpus": 0}, {}, None, [], NOW, SETTINGS)
        assert plan.create == [] and plan.patch_service is None
        status = plan.status.dump()
        assert status["phase"] == "Stalled"
        stalled = conditions(status)["Stalled"]
        assert stalled[:2] == ("True", "InvalidSpec")
        assert "metadata.name" in stalled[2] and "DNS-1035" in stalled[2]
        assert ("Warning", "InvalidSpec") in [e[:2] for e in plan.events]


def test_a_served_teacher_needs_a_name_that_starts_with_a_letter() -> None:
    spec = language_model(teacher={"serve": {"device": "cpu", "gpus": 0}})["spec"]
    plan = decide(observed("2yoruba", spec), SETTINGS)
    assert plan.create == [] and plan.apply_config_map is None
    stalled = conditions(plan.status.dump())["Stalled"]
    assert stalled[:2] == ("True", "InvalidSpec")
    assert "metadata.name: got '2yoruba'" in stalled[2] and "2yoruba-teacher" in stalled[2]
    # A long name is fine: the served Teacher's name is shortened with a hash.
    long = "y" * 63
    plan = decide(observed(long, spec), SETTINGS)
    (served,) = [o for o in plan.create if o["kind"] == "Teacher"]
    name = served["metadata"]["name"]
    assert name == naming.served_teacher_name(long) and len(name) <= 63
    assert re.fullmatch(DNS_1035_LABEL, name)


# ------------------------------------------------------------------ refusals


def test_refused_reads_the_api_servers_message() -> None:
    exc = k8s.Refused(
        "create",
        "Job kakugo/yoruba-topics-1",
        api_exception(422, "Invalid", 'Job.batch "yoruba-topics-1" is invalid: spec.x: bad'),
    )
    assert str(exc) == (
        'create Job kakugo/yoruba-topics-1: 422 Invalid: Job.batch "yoruba-topics-1" is '
        "invalid: spec.x: bad"
    )
    assert exc.permanent
    assert k8s.Refused("patch", "x", api_exception(403, "Forbidden", "no")).permanent
    for status in (429, 500, 503):
        assert not k8s.Refused("patch", "x", api_exception(status, "x", "y")).permanent
    plain = ApiException(status=500, reason="Internal Server Error")  # no JSON body
    assert "500 Internal Server Error" in str(k8s.Refused("delete", "Job a/b", plain))


def test_a_refused_job_stalls_the_languagemodel_with_the_message() -> None:
    first = decide(observed(), SETTINGS)
    written = first.status.dump()
    message = 'create Job kakugo/yoruba-topics-1: 422 Invalid: Job.batch "..." is invalid'
    plan = refused(observed(status=written), message, permanent=True)
    status = plan.status.dump()
    conds = conditions(status)
    assert conds["Stalled"] == ("True", "OwnedObjectRefused", message)
    assert conds["Ready"][:2] == ("False", "OwnedObjectRefused")
    assert conds["Reconciling"][:2] == ("False", "OwnedObjectRefused")
    assert status["phase"] == "Stalled"
    # Everything else is the last status: the stages did not move.
    assert status["stages"] == written["stages"]
    assert ("Warning", "OwnedObjectRefused") in [e[:2] for e in plan.events]
    # The same refusal again: no new Event.
    again = refused(observed(status=status), message, permanent=True)
    assert again.events == [] and again.status.dump() == status
    # Once it goes through, the decision clears the stall.
    cleared = decide(observed(status=status), SETTINGS)
    assert conditions(cleared.status.dump())["Stalled"][:2] == ("False", "NotStalled")


def test_a_server_error_keeps_the_languagemodel_reconciling() -> None:
    written = decide(observed(), SETTINGS).status.dump()
    plan = refused(observed(status=written), "create Job a/b: 503 ServiceUnavailable: x", False)
    conds = conditions(plan.status.dump())
    assert conds["Reconciling"][:2] == ("True", "APIError")
    assert conds["Ready"][:2] == ("False", "APIError")
    assert conds["Stalled"][:2] == ("False", "NotStalled")
    assert [e[:2] for e in plan.events] == [("Warning", "APIError"), ("Warning", "APIError")]


def test_a_refused_service_is_no_longer_starting_forever() -> None:
    spec = {"device": "cpu", "gpus": 0}
    first = decide_teacher("tiny", NS, spec, {}, None, ["lm"], NOW, SETTINGS)
    assert first.status.phase == "Starting"
    message = "create Service kakugo/tiny: 422 Invalid: Service is invalid"
    plan = teacher_refused(first.status.dump(), message, True, NOW, 1)
    status = plan.status.dump()
    assert status["phase"] == "Stalled"
    assert conditions(status)["Stalled"] == ("True", "OwnedObjectRefused", message)
    assert ("Warning", "OwnedObjectRefused") in [e[:2] for e in plan.events]
    transient = teacher_refused(first.status.dump(), "x: 500 InternalError: y", False, NOW, 1)
    assert conditions(transient.status.dump())["Reconciling"][:2] == ("True", "APIError")


def test_a_refused_member_is_reported_by_its_fleet() -> None:
    message = "create LanguageModel kakugo/yor-latn: 422 Invalid: spec.data: too long"
    plan = fleet.refused({}, message, True, 3, NOW)
    status = plan.status.dump()
    assert status["phase"] == "Stalled" and status["observedGeneration"] == 3
    assert conditions(status)["Stalled"] == ("True", "OwnedObjectRefused", message)
    assert plan.events and plan.events[0][0] == "Warning"


def test_refusals_back_off() -> None:
    resync = settings.OperatorSettings(resync_seconds=60)
    assert [refusal_delay(n, resync) for n in (1, 2, 3, 4, 5, 9)] == [5, 10, 20, 40, 60, 60]


# ------------------------------------------------------------------ Kopf's state


def test_kopf_keeps_its_state_in_status_without_the_spec() -> None:
    op_settings = kopf.OperatorSettings()
    kopf_state.configure(op_settings)
    storage = op_settings.persistence.diffbase_storage
    body = kopf.Body(
        {
            "apiVersion": "kakugo.io/v1alpha1",
            "kind": "LanguageModel",
            "metadata": {
                "name": "yoruba",
                "namespace": NS,
                "labels": {"team": "nlp"},
                "annotations": {kopf_state.LEGACY_DIFFBASE: '{"spec": "old"}', "note": "x"},
            },
            "spec": {"data": {"respond": {"systemPrompt": "x" * 100_000}}},
            "status": {"phase": "Running"},
        }
    )
    essence = storage.build(body=body)
    assert "spec" not in essence
    assert essence["metadata"]["labels"] == {"team": "nlp"}
    assert kopf_state.LEGACY_DIFFBASE not in essence["metadata"]["annotations"]
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=essence)
    stored = patch["status"]["kopf"]["last-handled-configuration"]
    assert len(stored) < 200 and json.loads(stored) == essence
    assert patch["metadata"]["annotations"] == {kopf_state.LEGACY_DIFFBASE: None}
    progress = op_settings.persistence.progress_storage
    assert isinstance(progress, kopf.StatusProgressStorage)
    assert progress.field == ("status", "kopf", "progress")


def test_the_operators_status_writes_leave_kopfs_state_alone() -> None:
    raw = {"phase": "Running", "kopf": {"progress": {}}}
    assert operator_status(raw) == {"phase": "Running"}
    assert operator_status(None) == {}


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_kopf_state_in_status_survives_the_daemons_writes(cluster: Api, operator: Operator) -> None:
    lm = language_model()
    lm["metadata"]["annotations"] = {kopf_state.LEGACY_DIFFBASE: '{"spec":{}}'}
    cluster.create(lm)
    job(cluster, "yoruba-topics-1")

    def settled() -> dict | None:
        obj = cluster.get("LanguageModel", NS, "yoruba") or {}
        status = obj.get("status") or {}
        annotations = obj.get("metadata", {}).get("annotations") or {}
        if kopf_state.LEGACY_DIFFBASE in annotations or "kopf" not in status:
            return None
        return obj if status.get("conditions") else None

    obj = wait_for(settled, what="Kopf's diff-base in status, the legacy annotation gone")
    essence = json.loads(obj["status"]["kopf"]["last-handled-configuration"])
    assert "spec" not in essence
    # Several reconciliations later (resync 1 s), the daemon's merge patches have not
    # nulled it.
    wait_for(
        lambda: (
            len((cluster.get("LanguageModel", NS, "yoruba") or {}).get("status", {})) > 3
            and (cluster.get("LanguageModel", NS, "yoruba") or {})["status"].get("kopf")
        ),
        what="status.kopf kept",
    )
