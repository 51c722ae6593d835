"""Negative cases on the real API server: schema rejections (422 naming the field), the
status subresource kept apart from spec, conflicting updates, and a deleted running Pod.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from tests.e2e.e2e_support import NS, REPO, condition, custom, get_lm, manifest, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

GROUP, VERSION = "kakugo.io", "v1alpha1"
BROKEN = REPO / "tests" / "manifests" / "broken"
PLURALS = {
    "LanguageModel": "languagemodels",
    "LanguageFleet": "languagefleets",
    "Teacher": "teachers",
}
UNWATCHED = "kakugo-e2e-unwatched"  # no operator here: only the API server's own behaviour


def _cross_field() -> set[str]:
    """tests/test_crds.py's faults no structural schema (and no CEL on 1.20) states
    (CROSS_FIELD) and those the API server never sees (CLI_ONLY). Its DECODING faults stay
    here: the API server refuses them."""
    from tests.test_crds import CLI_ONLY, CROSS_FIELD

    return CROSS_FIELD | CLI_ONLY


# Faults whose `# expect:` lines name no field (the models' wording differs there).
FIELD_OVERRIDES = {"teacher-two": ["spec.teacher"], "teacher-none": ["spec.teacher"]}


def expected_fields(path: Path) -> list[str]:
    """The field paths named by the manifest's `# expect:` lines."""
    if path.stem in FIELD_OVERRIDES:
        return FIELD_OVERRIDES[path.stem]
    fields = []
    for line in path.read_text().splitlines():
        m = re.match(r"# expect: ((?:spec|metadata)\.[^:\s]+):", line)
        if m:
            fields.append(m.group(1))
    assert fields, f"{path.name}: no `# expect: spec.<field>:` line"
    return fields


SCHEMA_FAULTS = sorted(
    p for p in BROKEN.glob("*.yaml") if p.stem not in _cross_field() and p.stem != "unknown-field"
)


def _create(kube: Any, doc: dict[str, Any], namespace: str) -> Any:
    return custom(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[doc["kind"]], doc
    )


@pytest.mark.timeout(300)
def test_schema_rejects_malformed_manifests(cluster: Any, kube: Any, crds: list[str]) -> None:
    assert len(SCHEMA_FAULTS) >= 10, SCHEMA_FAULTS
    cluster.kubectl("create", "namespace", UNWATCHED, check=False)
    failures = []
    for path in SCHEMA_FAULTS:
        (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if not any(f.startswith("metadata.") for f in expected_fields(path)):
            doc["metadata"]["name"] = f"broken-{path.stem}"
        try:
            _create(kube, doc, UNWATCHED)
            failures.append(f"{path.name}: accepted")
            continue
        except kubernetes.client.ApiException as exc:
            body = json.loads(exc.body)
            message = body.get("message", "")
            if exc.status != 422 or body.get("reason") != "Invalid":
                failures.append(f"{path.name}: {exc.status} {body.get('reason')}: {message}")
                continue
        assert body["details"]["causes"], body
        for field in expected_fields(path):
            # 1.20 names a list, not its item: spec.data.mix.sources, not ...sources[1].
            field = re.sub(r"\[\d+\]", "", field)
            if field not in message:
                failures.append(f"{path.name}: {field} not named in {message!r}")
    assert not failures, "\n".join(failures)

    # kubectl reports the same 422 (exit 1, the field in the message).
    bad = cluster.kubectl(
        "apply", "-n", UNWATCHED, "-f", str(BROKEN / "bad-enum.yaml"), check=False
    )
    assert bad.returncode == 1 and "spec.training.lrScheduler" in bad.stderr, bad.stderr

    # An unknown field is not an error on 1.20 (no server-side field validation): the
    # structural schema prunes it.
    (doc,) = [d for d in yaml.safe_load_all((BROKEN / "unknown-field.yaml").read_text()) if d]
    doc["metadata"]["name"] = "pruned"
    created = _create(kube, doc, UNWATCHED)
    assert "topicz" not in created["spec"]["data"]
    assert "learningrate" not in created["spec"].get("training", {})


@pytest.mark.timeout(120)
def test_status_is_isolated_from_spec(cluster: Any, kube: Any, crds: list[str]) -> None:
    cluster.kubectl("create", "namespace", UNWATCHED, check=False)
    api = custom(kube)
    doc = yaml.safe_load(
        manifest("isolated", "http://127.0.0.1:9/v1", Path("/nonexistent"), Path("/tmp/unused"))
    )
    doc["metadata"]["namespace"] = UNWATCHED
    doc["status"] = {"phase": "Succeeded"}
    created = api.create_namespaced_custom_object(GROUP, VERSION, UNWATCHED, "languagemodels", doc)
    assert "status" not in created or not created["status"], created.get("status")
    assert created["metadata"]["generation"] == 1

    # A /status write changes only status: spec and generation stay.
    after = api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        UNWATCHED,
        "languagemodels",
        "isolated",
        {
            "status": {"phase": "Running", "observedGeneration": 1},
            "spec": {"language": "Hausa"},
            "metadata": {"labels": {"via": "status"}},
        },
    )
    assert after["status"]["phase"] == "Running"
    assert after["spec"]["language"] == "Yoruba"
    assert "via" not in (after["metadata"].get("labels") or {})
    assert after["metadata"]["generation"] == 1

    # A write of the object changes spec (and generation), never status.
    after = api.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        UNWATCHED,
        "languagemodels",
        "isolated",
        {"spec": {"suspend": True}, "status": {"phase": "Succeeded"}},
    )
    assert after["spec"]["suspend"] is True
    assert after["status"]["phase"] == "Running"
    assert after["metadata"]["generation"] == 2
    full = dict(after, spec={**after["spec"], "suspend": False}, status={"phase": "Stalled"})
    after = api.replace_namespaced_custom_object(
        GROUP, VERSION, UNWATCHED, "languagemodels", "isolated", full
    )
    assert after["status"]["phase"] == "Running" and after["metadata"]["generation"] == 3

    # A status write from a stale resourceVersion is refused with 409, not merged.
    stale = dict(created, status={"phase": "Pending"})
    with pytest.raises(kubernetes.client.ApiException) as exc:
        api.replace_namespaced_custom_object_status(
            GROUP, VERSION, UNWATCHED, "languagemodels", "isolated", stale
        )
    assert exc.value.status == 409
    final = api.get_namespaced_custom_object(
        GROUP, VERSION, UNWATCHED, "languagemodels", "isolated"
    )
    assert final["status"]["phase"] == "Running"


@pytest.mark.timeout(180)
def test_conflicting_update_is_retried_not_lost(
    cluster: Any, kube: Any, operator: Any, tmp_path: Path
) -> None:
    """Optimistic concurrency with the operator writing the same object.

    A client's update from a stale resourceVersion is refused (409); the client retries
    (read again, apply its change, write) and its change lands. Neither the other writer's
    change nor the operator's status is lost, and the operator picks up the new generation
    (observedGeneration, and status.cost.budget from the new spec). The operator itself
    writes status with merge patches on /status and never sends a resourceVersion, so its
    own writes cannot conflict with spec writes (see docs/architecture.md, End-to-end).
    """
    api = custom(kube)
    name = "conflict"
    doc = yaml.safe_load(
        manifest(name, "http://127.0.0.1:9/v1", tmp_path, tmp_path / "store", suspend=True)
    )
    api.create_namespaced_custom_object(GROUP, VERSION, NS, "languagemodels", doc)

    def suspended() -> dict[str, Any] | None:
        lm = get_lm(kube, name) or {}
        st = lm.get("status") or {}
        return lm if st.get("phase") == "Suspended" and st.get("observedGeneration") == 1 else None

    lm = _wait(suspended, 60, "the operator's first status")
    conditions_before = {c["type"] for c in lm["status"]["conditions"]}

    stale = get_lm(kube, name)
    assert stale is not None
    # Another writer gets in between (a label: no new generation).
    api.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "languagemodels",
        name,
        {"metadata": {"labels": {"other-writer": "yes"}}},
    )
    stale["spec"]["budget"] = {"maxDollars": "5"}
    with pytest.raises(kubernetes.client.ApiException) as exc:
        api.replace_namespaced_custom_object(GROUP, VERSION, NS, "languagemodels", name, stale)
    assert exc.value.status == 409, exc.value
    assert "the object has been modified" in json.loads(exc.value.body)["message"]

    # Retry on conflict: read, change, write again.
    tries = 0
    while tries < 5:
        tries += 1
        fresh = get_lm(kube, name)
        assert fresh is not None
        fresh["spec"]["budget"] = {"maxDollars": "5"}
        try:
            api.replace_namespaced_custom_object(GROUP, VERSION, NS, "languagemodels", name, fresh)
            break
        except kubernetes.client.ApiException as err:
            assert err.status == 409
    else:
        raise AssertionError("the update never landed")
    print(f"\nupdate landed on retry {tries}")

    def caught_up() -> dict[str, Any] | None:
        lm = get_lm(kube, name) or {}
        st = lm.get("status") or {}
        return lm if st.get("observedGeneration") == 2 else None

    lm = _wait(caught_up, 60, "observedGeneration 2")
    assert lm["metadata"]["generation"] == 2
    assert lm["metadata"]["labels"]["other-writer"] == "yes"  # the other writer's change
    assert lm["spec"]["budget"]["maxDollars"] == "5"  # ours
    assert float(lm["status"]["cost"]["budget"]) == 5.0, lm["status"]["cost"]
    assert lm["status"]["phase"] == "Suspended"
    assert conditions_before <= {c["type"] for c in lm["status"]["conditions"]}
    assert "kakugo.io/finalizer" in lm["metadata"]["finalizers"]  # Kopf's own patch
    cluster.kubectl("delete", "languagemodel", name, "-n", NS, "--timeout=60s")


@pytest.mark.timeout(900)
def test_deleted_running_pod_is_retried(
    cluster: Any,
    kube: Any,
    operator: Any,
    kubelet: Any,
    teacher: Any,
    student: Path,
    tmp_path: Path,
) -> None:
    """`kubectl delete pod` of the running train Pod: the stage runs again, Ready anyway."""
    name = "retried"
    path = tmp_path / "lm.yaml"
    path.write_text(manifest(name, teacher.url, student, tmp_path / "store"))
    cluster.kubectl("apply", "-f", str(path))

    def running_train_pod() -> str | None:
        for run in list(kubelet.runs.values()):
            if (
                run.name.startswith(f"{name}-train-")
                and run.proc is not None
                and run.proc.poll() is None
            ):
                return run.name
        if condition(get_lm(kube, name) or {}, "Ready").get("status") == "True":
            raise AssertionError("Ready before the train Pod was caught running")
        return None

    pod = _wait(running_train_pod, 420, "a running train Pod", interval=0.1)
    cluster.kubectl("delete", "pod", pod, "-n", NS, "--wait=false")
    lm = wait_ready(kube, name, operator)

    train = [h for h in kubelet.history if h["pod"].startswith(f"{name}-train-")]
    killed = [h for h in train if h["pod"] == pod]
    assert killed and killed[0]["deleted"], train
    assert any(h["exitCode"] == 0 and h["pod"] != pod for h in train), train
    stage = next(s for s in lm["status"]["stages"] if s["name"] == "train")
    assert stage["state"] == "Succeeded"
    print(
        f"\ntrain after the deleted Pod: attempt {stage.get('attempt')}, "
        f"disruptions {stage.get('disruptions')}, failures {stage.get('failures')}, "
        f"pods run: {[(h['pod'], h['exitCode'], h['deleted']) for h in train]}"
    )
    assert stage.get("failures", 0) == 0  # taken away is not a failure
    cluster.kubectl("delete", "languagemodel", name, "-n", NS, "--timeout=60s")


def _wait(check: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
