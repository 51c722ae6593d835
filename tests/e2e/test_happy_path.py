"""From `kubectl apply` to Ready on a real kube-apiserver, then `kubectl delete` removes
every child through the garbage collector.

The operator runs as the chart's ServiceAccount with exactly the chart's RBAC (conftest),
the real Job controller creates and completes the Jobs, the fake kubelet runs the Pods.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.e2e.e2e_support import NS, condition, get_lm, manifest, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

STAGES = ["topics", "scenarios", "contexts", "revise", "respond", "translate", "filter",
          "train", "evaluate"]
OWNED = "app.kubernetes.io/managed-by=kakugo-operator"


def children(kube: Any, name: str) -> dict[str, list[str]]:
    """The LanguageModel's Jobs, Pods and ConfigMaps (by the operator's labels)."""
    core, batch = kubernetes.client.CoreV1Api(kube), kubernetes.client.BatchV1Api(kube)
    sel = f"kakugo.io/languagemodel={name}"
    return {
        "jobs": [j.metadata.name for j in batch.list_namespaced_job(NS, label_selector=sel).items],
        "pods": [p.metadata.name for p in core.list_namespaced_pod(NS, label_selector=sel).items],
        "configmaps": [c.metadata.name
                       for c in core.list_namespaced_config_map(NS, label_selector=sel).items],
    }


@pytest.mark.timeout(900)
def test_apply_to_ready_and_delete(cluster: Any, kube: Any, operator: Any, kubelet: Any,
                                   teacher: Any, student: Path, tmp_path: Path) -> None:
    name = "tiny-yoruba"
    path = tmp_path / "lm.yaml"
    path.write_text(manifest(name, teacher.url, student, tmp_path / "store"))
    t0 = time.monotonic()
    applied = cluster.kubectl("apply", "-f", str(path))
    assert f"languagemodel.kakugo.io/{name} created" in applied.stdout

    lm = wait_ready(kube, name, operator)
    elapsed = time.monotonic() - t0
    print(f"\n{name}: Ready after {elapsed:.0f}s")
    status = lm["status"]

    # Every stage Succeeded, each with its condition, the object Ready and Succeeded.
    assert status["phase"] == "Succeeded"
    assert status["observedGeneration"] == lm["metadata"]["generation"]
    states = {s["name"]: s["state"] for s in status["stages"]}
    assert states == dict.fromkeys(STAGES, "Succeeded"), states
    for stage in STAGES:
        assert condition(lm, f"{stage.capitalize()}Complete")["status"] == "True", stage
    assert condition(lm, "Stalled").get("status") != "True"

    # The evaluation results and the cost, from the Pods' termination messages.
    evaluation = status["evaluation"]
    assert evaluation["summary"]
    assert {"sib200", "belebele"} <= set(evaluation["tasks"]), evaluation
    cost = status["cost"]
    assert float(cost["dollars"]) > 0, cost  # teacher tokens × the endpoint's prices
    assert "byStage" in cost
    topics = next(s for s in status["stages"] if s["name"] == "topics")
    assert topics["counts"]["requests"] > 0, topics  # from the termination message
    assert status["artifacts"]["evaluation"].endswith("/evaluation/results.json")
    store = tmp_path / "store" / NS / name
    assert (store / "evaluation" / "results.json").exists()
    assert (store / "model").is_dir()

    # The Job controller completed one Job per stage; the kubelet ran one Pod per Job.
    batch = kubernetes.client.BatchV1Api(kube)
    jobs = batch.list_namespaced_job(NS, label_selector=f"kakugo.io/languagemodel={name}")
    done = {j.metadata.labels["kakugo.io/stage"]: j for j in jobs.items}
    assert set(done) == set(STAGES)
    for stage, job in done.items():
        conds = {c.type: c.status for c in job.status.conditions or []}
        assert conds.get("Complete") == "True", (stage, job.status)
        assert job.status.succeeded == 1
        assert job.metadata.owner_references[0].kind == "LanguageModel"
    ran = [h for h in kubelet.history if h["pod"].startswith(f"{name}-")]
    assert sorted({h["argv"][2] for h in ran}) == sorted(STAGES)
    assert all(h["argv"][:2] == ["kakugo", "stage"] for h in ran)

    # The chart's RBAC was enough: nothing the operator asked for was refused.
    assert not operator.forbidden(), operator.forbidden()

    # kubectl get shows the printer columns.
    table = cluster.kubectl("get", "languagemodels", "-n", NS).stdout.splitlines()
    assert table[0].split() == ["NAME", "LANGUAGE", "PHASE", "READY", "COST", "AGE"], table
    row = next(line.split() for line in table[1:] if line.startswith(name))
    assert row[:5] == [name, "Yoruba", "Succeeded", "True", cost["dollars"]], row
    wide = cluster.kubectl("get", "languagemodels", "-n", NS, "-o", "wide").stdout
    assert wide.splitlines()[0].split()[-1] == "SCORE"
    assert evaluation["summary"].split()[0] in wide

    # kubectl delete: the finalizer goes, the garbage collector removes every child.
    before = children(kube, name)
    assert len(before["jobs"]) == len(STAGES) and before["configmaps"], before
    assert before["pods"], before
    cluster.kubectl("delete", "languagemodel", name, "-n", NS, "--wait=true", "--timeout=60s")
    assert get_lm(kube, name) is None
    deadline = time.monotonic() + 90
    left = children(kube, name)
    while any(left.values()) and time.monotonic() < deadline:
        time.sleep(1)
        left = children(kube, name)
    assert not any(left.values()), f"left after delete: {left}"
