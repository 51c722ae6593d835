"""gitops/: Argo CD health checks and actions run by a real Lua runtime (lupa) against
sample objects and against statuses the operator's own `decide()` writes; the kstatus
reading Flux makes of those statuses; the kustomize fleet example rendered by kubectl."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kakugo_operator.reconcile import Observed, decide
from kakugo_operator.settings import OperatorSettings
from openapi_schema_validator import OAS30Validator

from kakugo_stages.crds import all_crds
from tests.helpers.packaging_tools import INSTALL_HINT, REPO, run, tool

ARGO = REPO / "gitops" / "argocd" / "kakugo.io"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------ Lua


@pytest.fixture(scope="module")
def lua() -> Any:
    try:
        import lupa
    except ImportError:
        pytest.skip(f"lupa is not installed: {INSTALL_HINT}")
    try:  # Argo CD runs gopher-lua, a Lua 5.1: prefer lupa's Lua 5.1 build
        from lupa import lua51 as runtime
    except ImportError:
        runtime = lupa
    return runtime.LuaRuntime(unpack_returned_tuples=True)


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        table = lua.table()
        for k, v in value.items():
            table[k] = _to_lua(lua, v)
        return table
    if isinstance(value, list):
        table = lua.table()
        for i, v in enumerate(value, 1):
            table[i] = _to_lua(lua, v)
        return table
    return value


def _from_lua(lua: Any, value: Any) -> Any:
    if lua.eval("type")(value) != "table":
        return value
    items = dict(value.items())
    if (
        items
        and all(isinstance(k, int) for k in items)
        and sorted(items) == list(range(1, len(items) + 1))
    ):
        return [_from_lua(lua, items[i]) for i in range(1, len(items) + 1)]
    return {k: _from_lua(lua, v) for k, v in items.items()}


def run_lua(lua: Any, path: Path, obj: dict[str, Any]) -> Any:
    """Run a script as Argo CD does: `obj` in scope, the script's return value out."""
    fn = lua.execute("return function(obj)\n" + path.read_text() + "\nend")
    return _from_lua(lua, fn(_to_lua(lua, copy.deepcopy(obj))))


def health(lua: Any, kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    hs = run_lua(lua, ARGO / kind / "health.lua", obj)
    assert hs["status"] in (
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
        "Missing",
        "Unknown",
    ), hs
    assert isinstance(hs.get("message"), str) and hs["message"], hs
    return hs["status"], hs["message"]


def cond(kind: str, status: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-26T12:00:00Z",
    }


def lm(status: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "yoruba", "namespace": "kakugo", "generation": generation},
        "spec": {"language": "Yoruba", "teacher": {"ref": {"name": "t"}}, **spec},
    }
    if status is not None:
        obj["status"] = status
    return obj


def conds(ready: tuple, reconciling: tuple, stalled: tuple, suspended: tuple) -> list:
    return [
        cond("Ready", *ready),
        cond("Reconciling", *reconciling),
        cond("Stalled", *stalled),
        cond("Suspended", *suspended),
    ]


SAMPLES = {
    "no-status": (lm(), "Progressing", "Waiting for the Kakugo operator"),
    "old-generation": (
        lm(
            {
                "observedGeneration": 1,
                "phase": "Succeeded",
                "conditions": conds(
                    (True, "Succeeded"),
                    (False, "Done"),
                    (False, "NotStalled"),
                    (False, "NotSuspended"),
                ),
            },
            generation=2,
        ),
        "Progressing",
        "generation 2",
    ),
    "ready": (
        lm(
            {
                "observedGeneration": 1,
                "phase": "Succeeded",
                "cost": {"dollars": "41.2000"},
                "evaluation": {"summary": "belebele +9.9"},
                "conditions": conds(
                    (True, "Succeeded", "every stage succeeded"),
                    (False, "Done"),
                    (False, "NotStalled"),
                    (False, "NotSuspended"),
                ),
            }
        ),
        "Healthy",
        "belebele +9.9; $41.2000",
    ),
    "running": (
        lm(
            {
                "observedGeneration": 1,
                "phase": "Running",
                "cost": {"dollars": "3.1"},
                "progress": {"stages": ["respond", "translate"], "stagesDone": 4, "stagesTotal": 9},
                "conditions": conds(
                    (False, "StagesRunning"),
                    (True, "StagesRunning", "Job(s) yoruba-respond-1, yoruba-translate-1 running"),
                    (False, "NotStalled"),
                    (False, "NotSuspended"),
                ),
            }
        ),
        "Progressing",
        "stages respond, translate (4/9 done)",
    ),
    "stalled": (
        lm(
            {
                "observedGeneration": 1,
                "phase": "Stalled",
                "conditions": conds(
                    (False, "StageFailed"),
                    (False, "StageFailed"),
                    (True, "StageFailed", "stage train failed 4 times"),
                    (False, "NotSuspended"),
                ),
            }
        ),
        "Degraded",
        "StageFailed: stage train failed 4 times",
    ),
    "budget": (
        lm(
            {
                "observedGeneration": 1,
                "phase": "Stalled",
                "conditions": conds(
                    (False, "BudgetExceeded"),
                    (False, "BudgetExceeded"),
                    (True, "BudgetExceeded", "spent $50.1 of $50"),
                    (False, "NotSuspended"),
                ),
            }
        ),
        "Degraded",
        "BudgetExceeded",
    ),
    "invalid": (
        lm(
            {
                "observedGeneration": 1,
                "phase": "Stalled",
                "conditions": conds(
                    (False, "InvalidSpec"),
                    (False, "InvalidSpec"),
                    (True, "InvalidSpec", "spec.language: unknown language"),
                    (False, "Spec"),
                ),
            }
        ),
        "Degraded",
        "InvalidSpec: spec.language",
    ),
    "suspended": (
        lm(
            {
                "observedGeneration": 1,
                "phase": "Suspended",
                "conditions": conds(
                    (False, "Suspended"),
                    (True, "Suspended"),
                    (False, "NotStalled"),
                    (True, "SuspendRequested"),
                ),
            },
            suspend=True,
        ),
        "Suspended",
        "spec.suspend",
    ),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_language_model_health(lua: Any, name: str) -> None:
    obj, expected, message = SAMPLES[name]
    status, text = health(lua, "LanguageModel", obj)
    assert (status, message in text) == (expected, True), text


def fleet(status: dict[str, Any] | None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageFleet",
        "metadata": {"name": "west-africa", "namespace": "kakugo", "generation": generation},
        "spec": {
            "languages": [{"language": "yo"}, {"language": "ha"}, {"language": "ig"}],
            "template": {},
            **spec,
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


FLEETS = {
    "no-status": (fleet(None), "Progressing", "Waiting"),
    "partially-stalled": (
        fleet(
            {
                "observedGeneration": 1,
                "languages": 3,
                "ready": 1,
                "running": 1,
                "stalled": 1,
                "cost": {"dollars": "60.00"},
            }
        ),
        "Degraded",
        "1 of 3 languages stalled",
    ),
    "running": (
        fleet({"observedGeneration": 1, "languages": 3, "ready": 1, "running": 2, "stalled": 0}),
        "Progressing",
        "1/3 ready, 2 running",
    ),
    "ready": (
        fleet(
            {
                "observedGeneration": 1,
                "languages": 3,
                "ready": 3,
                "running": 0,
                "stalled": 0,
                "conditions": [cond("Ready", True, "AllReady")],
            }
        ),
        "Healthy",
        "3/3 ready",
    ),
    "suspended": (
        fleet(
            {"observedGeneration": 1, "languages": 3, "ready": 0, "running": 0, "stalled": 0},
            suspend=True,
        ),
        "Suspended",
        "spec.suspend",
    ),
    "stalled-condition": (
        fleet(
            {
                "observedGeneration": 1,
                "languages": 3,
                "ready": 0,
                "running": 0,
                "stalled": 0,
                "conditions": [cond("Stalled", True, "InvalidTemplate", "bad")],
            }
        ),
        "Degraded",
        "InvalidTemplate: bad",
    ),
    "old-generation": (
        fleet({"observedGeneration": 1, "languages": 3, "ready": 3}, generation=3),
        "Progressing",
        "generation 3",
    ),
}


@pytest.mark.parametrize("name", list(FLEETS))
def test_language_fleet_health(lua: Any, name: str) -> None:
    obj, expected, message = FLEETS[name]
    status, text = health(lua, "LanguageFleet", obj)
    assert (status, message in text) == (expected, True), text


# Statuses written by the operator itself (the pure decide()), not hand-made samples.

SPEC = {
    "language": "Yoruba",
    "teacher": {"endpoint": {"url": "https://api.example.com/v1", "model": "m"}},
    "storage": {"uri": "s3://kakugo-artifacts/runs"},
}


def _decided(
    spec: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1
) -> dict[str, Any]:
    obs = Observed(
        name="yoruba",
        namespace="kakugo",
        generation=generation,
        spec=spec,
        status=status or {},
        jobs=[],
        pods=[],
        teacher=None,
        now=NOW,
    )
    return decide(obs, OperatorSettings()).status.dump()


def _all_succeeded() -> dict[str, Any]:
    status = _decided(SPEC)
    for entry in status["stages"]:
        entry.update(state="Succeeded", attempt=1, job=f"yoruba-{entry['name']}-1")
    return _decided(SPEC, status)


def operator_statuses() -> dict[str, tuple[dict[str, Any], dict[str, Any], str, str]]:
    """name -> (spec, status, Argo CD health, kstatus)."""
    return {
        "running": (SPEC, _decided(SPEC), "Progressing", "InProgress"),
        "invalid": (
            {**SPEC, "language": "Klingon"},
            _decided({**SPEC, "language": "Klingon"}),
            "Degraded",
            "Failed",
        ),
        "suspended": (
            {**SPEC, "suspend": True},
            _decided({**SPEC, "suspend": True}),
            "Suspended",
            "InProgress",
        ),
        "succeeded": (SPEC, _all_succeeded(), "Healthy", "Current"),
    }


@pytest.mark.parametrize("name", ["running", "invalid", "suspended", "succeeded"])
def test_health_of_operator_written_statuses(lua: Any, name: str) -> None:
    spec, status, expected, _ = operator_statuses()[name]
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "yoruba", "namespace": "kakugo", "generation": 1},
        "spec": spec,
        "status": status,
    }
    assert health(lua, "LanguageModel", obj)[0] == expected, status.get("conditions")


def kstatus(obj: dict[str, Any]) -> str:
    """sigs.k8s.io/cli-utils kstatus for a custom resource (what Flux's health checks use):
    observedGeneration behind -> InProgress; Reconciling=True -> InProgress;
    Stalled=True -> Failed; otherwise Current."""
    status = obj.get("status") or {}
    generation = obj["metadata"].get("generation")
    if generation is not None and status.get("observedGeneration", generation) < generation:
        return "InProgress"
    by_type = {c["type"]: c for c in status.get("conditions") or []}
    if by_type.get("Reconciling", {}).get("status") == "True":
        return "InProgress"
    if by_type.get("Stalled", {}).get("status") == "True":
        return "Failed"
    return "Current"


@pytest.mark.parametrize("name", ["running", "invalid", "suspended", "succeeded"])
def test_conditions_are_kstatus_compatible(name: str) -> None:
    spec, status, _, expected = operator_statuses()[name]
    obj = {"metadata": {"generation": 1}, "spec": spec, "status": status}
    assert kstatus(obj) == expected
    # Condition hygiene kstatus and Flux rely on: the abnormal-true types, each with a
    # reason and the generation it describes.
    types = {c["type"] for c in status["conditions"]}
    assert {"Ready", "Reconciling", "Stalled"} <= types
    for c in status["conditions"]:
        assert c["status"] in ("True", "False") and c["reason"]
        assert c["observedGeneration"] == 1 and c["lastTransitionTime"]
    # A new generation is InProgress until the operator has seen it.
    assert kstatus({**obj, "metadata": {"generation": 2}}) == "InProgress"


@pytest.mark.parametrize("kind", ["LanguageModel", "LanguageFleet"])
def test_actions(lua: Any, kind: str) -> None:
    base = SAMPLES["stalled"][0] if kind == "LanguageModel" else FLEETS["partially-stalled"][0]
    actions = run_lua(lua, ARGO / kind / "actions/discovery.lua", base)
    assert set(actions) == {"suspend", "resume", "retry"}
    assert actions["suspend"]["disabled"] is False and actions["resume"]["disabled"] is True
    assert actions["retry"]["disabled"] is False
    suspended = run_lua(lua, ARGO / kind / "actions/suspend/action.lua", base)
    assert suspended["spec"]["suspend"] is True
    assert {k: v for k, v in suspended["spec"].items() if k != "suspend"} == {
        k: v for k, v in base["spec"].items() if k != "suspend"
    }
    assert suspended["status"] == base["status"]
    actions = run_lua(lua, ARGO / kind / "actions/discovery.lua", suspended)
    assert actions["suspend"]["disabled"] is True and actions["resume"]["disabled"] is False
    resumed = run_lua(lua, ARGO / kind / "actions/resume/action.lua", suspended)
    assert resumed["spec"]["suspend"] is False
    retried = run_lua(lua, ARGO / kind / "actions/retry/action.lua", base)
    stamp = retried["metadata"]["annotations"]["kakugo.io/retry"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert retried["spec"] == base["spec"]
    healthy = SAMPLES["ready"][0] if kind == "LanguageModel" else FLEETS["ready"][0]
    assert run_lua(lua, ARGO / kind / "actions/discovery.lua", healthy)["retry"]["disabled"]


def test_argocd_cm_patch_matches_the_lua_files() -> None:
    doc = yaml.safe_load((REPO / "gitops/argocd/argocd-cm-patch.yaml").read_text())
    data = doc["data"]
    for kind in ("LanguageModel", "LanguageFleet"):
        assert (
            data[f"resource.customizations.health.kakugo.io_{kind}"]
            == (ARGO / kind / "health.lua").read_text()
        )
        actions = yaml.safe_load(data[f"resource.customizations.actions.kakugo.io_{kind}"])
        assert actions["discovery.lua"] == (ARGO / kind / "actions/discovery.lua").read_text()
        assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
            a: (ARGO / kind / f"actions/{a}/action.lua").read_text()
            for a in ("suspend", "resume", "retry")
        }


# ------------------------------------------------------------------ kustomize and Flux


def _validator(kind: str) -> OAS30Validator:
    plural = {
        "LanguageModel": "languagemodels",
        "LanguageFleet": "languagefleets",
        "Teacher": "teachers",
    }[kind]
    crd = all_crds()[f"{plural}.kakugo.io.yaml"]
    return OAS30Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("path", ["base", "overlays/prod"])
def test_kustomize_fleet_renders_valid_objects(path: str, tmp_path: Path) -> None:
    from kakugo_stages.manifest import load_documents

    kubectl = tool("kubectl")
    out = run([kubectl, "kustomize", str(REPO / "gitops/kustomize/fleet" / path)]).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert sorted(d["kind"] for d in docs) == ["LanguageFleet", "Teacher"]
    for doc in docs:
        errors = [e.message for e in _validator(doc["kind"]).iter_errors(doc)]
        assert not errors, f"{doc['kind']}: {errors}"
    # The manifest loader (what `kakugo validate` runs) accepts them too.
    (tmp_path / "out.yaml").write_text(out)
    assert len(load_documents(tmp_path / "out.yaml")) == 2
    fleet_doc = next(d for d in docs if d["kind"] == "LanguageFleet")
    if path == "overlays/prod":
        assert fleet_doc["metadata"]["namespace"] == "kakugo-prod"
        assert fleet_doc["spec"]["maxConcurrent"] == 3
        assert fleet_doc["spec"]["template"]["budget"]["maxDollars"] == "60"
        assert fleet_doc["spec"]["template"]["resources"]["train"]["capacityType"] == "spot"
        assert [m["language"] for m in fleet_doc["spec"]["languages"]][-1] == "Ewe"
        assert fleet_doc["metadata"]["labels"]["kakugo.io/environment"] == "prod"
    else:
        assert fleet_doc["metadata"]["namespace"] == "kakugo"
        assert fleet_doc["spec"]["maxConcurrent"] == 1


def test_kakugo_validate_accepts_the_fleet(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kakugo_stages.cli import main as cli

    out = run(
        [tool("kubectl"), "kustomize", str(REPO / "gitops/kustomize/fleet/overlays/prod")]
    ).stdout
    (tmp_path / "fleet.yaml").write_text(out)
    result = CliRunner().invoke(cli, ["validate", "-q", str(tmp_path / "fleet.yaml")])
    assert result.exit_code == 0, result.output


def test_flux_example_points_at_real_paths() -> None:
    docs = list(yaml.safe_load_all((REPO / "gitops/flux/kakugo.yaml").read_text()))
    release = next(d for d in docs if d["kind"] == "HelmRelease")
    assert (REPO / release["spec"]["chart"]["spec"]["chart"] / "Chart.yaml").exists()
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    assert (REPO / kustomization["spec"]["path"] / "kustomization.yaml").exists()


def _member_status(phase: str) -> dict[str, Any]:
    ready = phase == "Succeeded"
    stalled = phase == "Stalled"
    return {
        "observedGeneration": 1,
        "phase": phase,
        "cost": {"dollars": "1.0000"},
        "conditions": conds(
            (ready, "Succeeded" if ready else phase),
            (not ready and not stalled, phase),
            (
                stalled,
                "StageFailed" if stalled else "NotStalled",
                "stage train failed" if stalled else "",
            ),
            (False, "NotSuspended"),
        ),
    }


def _fleet_status(phases: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec, status) the operator's decide_fleet writes for members in these phases."""
    fleet_mod = pytest.importorskip("kakugo_operator.fleet")
    langs = ["Yoruba", "Hausa", "Igbo"][: len(phases)]
    spec = {
        "languages": [{"language": lang} for lang in langs],
        "template": {k: v for k, v in SPEC.items() if k != "language"},
    }
    plan = fleet_mod.decide_fleet("west", "kakugo", 1, spec, {}, [], {}, NOW)
    children = []
    for obj, phase in zip(plan.create, phases, strict=True):
        children.append({**obj, "status": _member_status(phase)})
    taken = {c["metadata"]["name"]: "west" for c in children}
    plan = fleet_mod.decide_fleet(
        "west", "kakugo", 1, spec, plan.status.dump(), children, taken, NOW
    )
    return spec, plan.status.dump()


@pytest.mark.parametrize(
    ("phases", "expected", "kstat"),
    [
        (["Succeeded", "Stalled", "Running"], "Degraded", "InProgress"),
        (["Succeeded", "Succeeded", "Stalled"], "Degraded", "Failed"),
        (["Succeeded", "Running", "Running"], "Progressing", "InProgress"),
        (["Succeeded", "Succeeded", "Succeeded"], "Healthy", "Current"),
    ],
)
def test_health_of_operator_written_fleet_statuses(
    lua: Any, phases: list[str], expected: str, kstat: str
) -> None:
    spec, status = _fleet_status(phases)
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageFleet",
        "metadata": {"name": "west", "namespace": "kakugo", "generation": 1},
        "spec": spec,
        "status": status,
    }
    hs, message = health(lua, "LanguageFleet", obj)
    assert hs == expected, (message, status.get("conditions"))
    assert kstatus(obj) == kstat
