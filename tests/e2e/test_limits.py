"""Size limits and refusals on the real API server.

A large spec is either refused when it is applied (past the CRD's bounds) or reconciled
and deleted like any other: Kopf's own state lives in `status.kopf` without the spec, so
no patch of Kopf's can overflow the 256 KiB of an object's annotations, which wedged an
object for good, finalizer included. An owned object the API server refuses is reported
in the owner's status and Events, with the API server's message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kakugo_stages import spec as limits
from tests.e2e.e2e_support import NS, condition, custom, get_lm, manifest, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

GROUP, VERSION = "kakugo.io", "v1alpha1"
KIB = 1024
UNWATCHED = "kakugo-e2e-unwatched"  # no operator here: only the API server's own behaviour
DEAD_TEACHER = "http://127.0.0.1:9/v1"


def _label_key(i: int) -> str:
    """A valid label key of LABEL_KEY_LENGTH characters (prefix 253 + "/" + name 63)."""
    prefix = ".".join([f"k{i:02d}", "a" * 63, "b" * 63, "c" * 63, "d" * 57])
    key = f"{prefix}/{'n' * 61}{i:02d}"
    assert len(key) == limits.LABEL_KEY_LENGTH
    return key


def _placement(tag: str) -> dict[str, Any]:
    """A stage's resources with nodeSelector and tolerations full, every string at its
    bound (suspended: no Job is made from them)."""
    return {
        "nodeSelector": {
            _label_key(i): f"{tag}{i:02d}".ljust(limits.LABEL_VALUE_LENGTH, "v")
            for i in range(limits.SELECTOR_ENTRIES)
        },
        "tolerations": [
            {
                "key": _label_key(i),
                "operator": "Equal",
                "value": f"{tag}{i:02d}".ljust(limits.LABEL_VALUE_LENGTH, "v"),
                "effect": "NoSchedule",
            }
            for i in range(limits.TOLERATIONS)
        ],
    }


def large_language_model(name: str, tmp_path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(
        manifest(name, DEAD_TEACHER, tmp_path / "student", tmp_path / "store", suspend=True)
    )
    spec = doc["spec"]
    prompt = ("Dáhùn ní èdè {language}. " * 200)[: limits.PROMPT_LENGTH]
    spec["data"]["respond"]["systemPrompt"] = prompt
    spec["data"]["mix"] = {"thinkSystemPrompt": prompt, "conciseSystemPrompt": prompt}
    seed = "x" * (limits.SEED_LENGTH - len("{language} ") - 2)
    spec["data"]["topics"]["generalSeeds"] = [f"{seed}{i:02d}" for i in range(limits.SEEDS)]
    spec["data"]["topics"]["languageSeeds"] = [
        f"{{language}} {seed}{i:02d}" for i in range(limits.SEEDS)
    ]
    stages = ["topics", "scenarios", "contexts", "revise", "respond", "translate"]
    stages += ["filter", "train", "evaluate"]
    spec["resources"] = {stage: _placement(stage[:3]) for stage in ["default", *stages]}
    return doc


@pytest.mark.timeout(240)
def test_large_spec_is_reconciled_and_deleted(
    cluster: Any, kube: Any, operator: Any, tmp_path: Path
) -> None:
    """A spec near the CRD's bounds (tests/test_crds.py: at most 144 KiB): kubectl apply
    takes it (its last-applied copy fits), the operator reconciles it, and it is deleted
    normally. Kopf's diff-base, which used to be a second copy of the spec in an annotation
    beside kubectl's, holds no spec now."""
    name = "large"
    doc = large_language_model(name, tmp_path)
    spec_size = len(json.dumps(doc["spec"], separators=(",", ":"), ensure_ascii=False))
    assert spec_size > 80 * KIB, spec_size
    path = tmp_path / "large.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    cluster.kubectl("apply", "-f", str(path))

    def reconciled() -> dict[str, Any] | None:
        lm = get_lm(kube, name) or {}
        st = lm.get("status") or {}
        ok = st.get("observedGeneration") == 1 and st.get("phase") == "Suspended"
        return lm if ok and (st.get("kopf") or {}).get("last-handled-configuration") else None

    lm = wait_for(reconciled, 90, "the large LanguageModel reconciled")
    annotations = lm["metadata"].get("annotations") or {}
    assert "kakugo.io/last-handled-configuration" not in annotations
    last_applied = annotations["kubectl.kubernetes.io/last-applied-configuration"]
    assert len(last_applied) > spec_size
    # Kopf's diff-base holds no spec: its size does not grow with it.
    essence = json.loads(lm["status"]["kopf"]["last-handled-configuration"])
    assert "spec" not in essence
    assert len(lm["status"]["kopf"]["last-handled-configuration"]) < 4 * KIB
    assert "kakugo.io/finalizer" in lm["metadata"]["finalizers"]
    print(f"\nspec {spec_size / KIB:.0f} KiB, kubectl's copy {len(last_applied) / KIB:.0f} KiB")

    done = cluster.kubectl("delete", "languagemodel", name, "-n", NS, "--timeout=60s")
    assert done.returncode == 0, done.stderr
    assert get_lm(kube, name) is None


@pytest.mark.timeout(120)
def test_spec_beyond_its_bounds_is_refused_at_apply(
    cluster: Any, kube: Any, crds: list[str], tmp_path: Path
) -> None:
    cluster.kubectl("create", "namespace", UNWATCHED, check=False)
    doc = yaml.safe_load(manifest("huge", DEAD_TEACHER, tmp_path, tmp_path / "store"))
    doc["metadata"]["namespace"] = UNWATCHED
    doc["spec"]["data"]["respond"]["systemPrompt"] = "x" * (300 * KIB)
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(doc))
    applied = cluster.kubectl("apply", "-f", str(path), check=False)
    assert applied.returncode != 0
    assert "spec.data.respond.systemPrompt" in applied.stderr, applied.stderr[-2000:]
    # Without kubectl's annotation (create, server-side apply, an API client): the same.
    with pytest.raises(kubernetes.client.ApiException) as exc:
        custom(kube).create_namespaced_custom_object(
            GROUP, VERSION, UNWATCHED, "languagemodels", doc
        )
    body = json.loads(exc.value.body)
    assert exc.value.status == 422, body
    assert "spec.data.respond.systemPrompt" in body["message"]
    assert f"should be at most {limits.PROMPT_LENGTH} chars long" in body["message"]


def _fleet(kube: Any, name: str) -> dict[str, Any] | None:
    try:
        return custom(kube).get_namespaced_custom_object(GROUP, VERSION, NS, "languagefleets", name)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


@pytest.mark.timeout(120)
def test_large_fleet_with_an_oversized_member_is_refused_at_apply(
    cluster: Any, kube: Any, operator: Any, tmp_path: Path
) -> None:
    """A fleet's overrides are bounded in keys, not in size, so the CRD cannot bound a
    fleet. The admission webhook validates every member as the operator would: a 300 KiB
    fleet (more than all annotations may hold) whose member is over its bounds is refused
    at apply time, naming the entry and the limit, and nothing is created. (A fleet whose
    members are all valid is reconciled whatever its size: Kopf's diff-base leaves the spec
    out, tests/operator/test_robustness.py.)"""
    lm = yaml.safe_load(manifest("x", DEAD_TEACHER, tmp_path / "student", tmp_path / "store"))
    template = {k: v for k, v in lm["spec"].items() if k != "language"}
    fleet = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LanguageFleet",
        "metadata": {"name": "large", "namespace": NS},
        "spec": {
            "suspend": True,
            "template": template,
            "languages": [
                {"language": "Yoruba"},
                {
                    "language": "Hausa",
                    "overrides": {"data": {"respond": {"systemPrompt": "x" * (300 * KIB)}}},
                },
            ],
        },
    }
    with pytest.raises(kubernetes.client.ApiException) as refused:
        custom(kube).create_namespaced_custom_object(GROUP, VERSION, NS, "languagefleets", fleet)
    assert refused.value.status == 422, refused.value
    body = refused.value.body or ""
    assert "spec.languages[1]" in body and "at most 4096" in body, body
    assert _fleet(kube, "large") is None
    assert get_lm(kube, "yor-latn") is None


@pytest.mark.timeout(180)
def test_refused_job_is_reported_in_status_and_events(
    cluster: Any, kube: Any, operator: Any, tmp_path: Path
) -> None:
    """A Job the API server refuses (tolerationSeconds on a NoSchedule toleration: the
    spec models do not check that rule, the Pod validation does) is reported, instead of
    retried in silence; the stall clears once the spec is fixed."""
    name = "refused"
    doc = yaml.safe_load(
        manifest(
            name,
            DEAD_TEACHER,
            tmp_path / "student",
            tmp_path / "store",
            resources={
                "default": {
                    "tolerations": [
                        {
                            "key": "dedicated",
                            "operator": "Exists",
                            "effect": "NoSchedule",
                            "tolerationSeconds": 30,
                        }
                    ]
                }
            },
        )
    )
    custom(kube).create_namespaced_custom_object(GROUP, VERSION, NS, "languagemodels", doc)

    def stalled() -> dict[str, Any] | None:
        cond = condition(get_lm(kube, name) or {}, "Stalled")
        return cond if cond.get("reason") == "OwnedObjectRefused" else None

    cond = wait_for(stalled, 90, "Stalled/OwnedObjectRefused")
    assert cond["status"] == "True"
    assert cond["message"].startswith(f"create Job {NS}/{name}-"), cond
    assert "422 Invalid" in cond["message"] and "NoExecute" in cond["message"], cond
    lm = get_lm(kube, name) or {}
    assert lm["status"]["phase"] == "Stalled"
    assert condition(lm, "Ready")["reason"] == "OwnedObjectRefused"

    core = kubernetes.client.CoreV1Api(kube)

    def warned() -> list[Any]:
        events = core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={name},reason=OwnedObjectRefused"
        ).items
        return [e for e in events if e.type == "Warning" and "NoExecute" in (e.message or "")]

    wait_for(warned, 60, "a Warning Event with the API server's message")

    # Fixed: the stall clears (suspended, so that no stage runs against the dead teacher).
    custom(kube).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "languagemodels",
        name,
        {"spec": {"resources": {"default": {"tolerations": None}}, "suspend": True}},
    )

    def cleared() -> dict[str, Any] | None:
        lm = get_lm(kube, name) or {}
        ok = condition(lm, "Stalled").get("status") == "False"
        return lm if ok and lm["status"].get("phase") == "Suspended" else None

    wait_for(cleared, 90, "the stall cleared")
    done = cluster.kubectl("delete", "languagemodel", name, "-n", NS, "--timeout=60s")
    assert done.returncode == 0, done.stderr
