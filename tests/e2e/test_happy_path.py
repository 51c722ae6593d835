"""From `kubectl apply` to Ready on a real kube-apiserver, then `kubectl delete` removes
every child through the garbage collector. The LanguageModel serves its model (spec.serve):
the server's Deployment and Service appear once it is Ready, are accepted by the API
server under the chart's RBAC, roll the retrained model out and go with it.

The operator runs as the chart's ServiceAccount with exactly the chart's RBAC (conftest),
the real Job controller creates and completes the Jobs, the fake kubelet runs the Pods.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from kakugo_stages.graph import STAGES
from tests.e2e.e2e_support import NS, condition, get_lm, manifest, wait_for, wait_ready
from tests.helpers.pod_security import restricted_violations

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

OWNED = "app.kubernetes.io/managed-by=kakugo-operator"


def children(kube: Any, name: str) -> dict[str, list[str]]:
    """The LanguageModel's Jobs, Pods and ConfigMaps (by the operator's labels)."""
    core, batch = kubernetes.client.CoreV1Api(kube), kubernetes.client.BatchV1Api(kube)
    sel = f"kakugo.io/languagemodel={name}"
    return {
        "jobs": [j.metadata.name for j in batch.list_namespaced_job(NS, label_selector=sel).items],
        "pods": [p.metadata.name for p in core.list_namespaced_pod(NS, label_selector=sel).items],
        "configmaps": [
            c.metadata.name for c in core.list_namespaced_config_map(NS, label_selector=sel).items
        ],
    }


def served(kube: Any, name: str) -> dict[str, Any]:
    """The served model's Deployment and Service as the API server holds them."""
    apps, core = kubernetes.client.AppsV1Api(kube), kubernetes.client.CoreV1Api(kube)
    sel = f"kakugo.io/serve={name}"
    out: dict[str, Any] = {}
    for kind, items in (
        ("deployment", apps.list_namespaced_deployment(NS, label_selector=sel).items),
        ("service", core.list_namespaced_service(NS, label_selector=sel).items),
    ):
        if items:
            out[kind] = kube.sanitize_for_serialization(items[0])
    return out


def model_version(deploy: dict[str, Any]) -> str:
    return deploy["spec"]["template"]["metadata"]["annotations"]["kakugo.io/model-version"]


@pytest.mark.timeout(900)
def test_apply_to_ready_and_delete(
    cluster: Any,
    kube: Any,
    operator: Any,
    kubelet: Any,
    teacher: Any,
    student: Path,
    tmp_path: Path,
) -> None:
    name = "tiny-yoruba"
    path = tmp_path / "lm.yaml"
    serve = {"device": "cpu", "gpus": 0, "idleSeconds": 0}  # 0: never scaled down
    path.write_text(manifest(name, teacher.url, student, tmp_path / "store", serve=serve))
    t0 = time.monotonic()
    applied = cluster.kubectl("apply", "-f", str(path))
    assert f"languagemodel.kakugo.io/{name} created" in applied.stdout

    together: list[list[str]] = []  # the stages running at once, as status showed them

    def observe(obj: dict[str, Any]) -> None:
        running = ((obj.get("status") or {}).get("progress") or {}).get("stages") or []
        if running and running not in together:
            together.append(running)

    lm = wait_ready(kube, name, operator, observe=observe, interval=0.2)
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
    # No spec.review, no spec.publish: their Jobs ran, skipped, and made nothing.
    assert "review" not in status["artifacts"] and "published" not in status["artifacts"]

    # The stage DAG: the stages that read no other stage ran at once (the first status the
    # operator wrote lists every root stage's Job; maxConcurrentStages is 4 by default).
    assert ["topics", "scenarios", "contexts", "translate"] in together, together
    assert all(len(t) <= 4 for t in together), together
    assert status["progress"]["stages"] == [] and status["progress"]["stagesDone"] == len(STAGES)

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

    # spec.serve: once Ready, the server's Deployment and Service, owned by the object.
    objs = wait_for(lambda: len(s := served(kube, name)) == 2 and s, 60, "the served model")
    deploy, svc = objs["deployment"], objs["service"]
    for obj in (deploy, svc):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["kind"] == "LanguageModel" and owner["blockOwnerDeletion"] is True
    assert deploy["spec"]["replicas"] == 1
    pod = deploy["spec"]["template"]
    assert restricted_violations(pod) == []  # as the API server defaulted it
    (init,) = pod["spec"]["initContainers"]
    model_uri = f"file://{store}/model"
    assert init["command"] == ["kakugo", "fetch-model", model_uri, "/scratch/model"]
    (vllm,) = pod["spec"]["containers"]
    assert vllm["args"][vllm["args"].index("--model") + 1] == "/scratch/model"
    assert svc["spec"]["ports"][0]["port"] == 8000
    serving = wait_for(lambda: (get_lm(kube, name) or {})["status"].get("serve"), 30, "serve")
    assert serving["url"] == f"http://{name}-serve.{NS}.svc:8000/v1"
    assert serving["model"] == name
    assert (
        model_version(deploy)
        == serving["modelVersion"]
        == (next(s for s in status["stages"] if s["name"] == "train")["fingerprint"])
    )
    # No Deployment controller here: no replica gets ready, the condition says so.
    assert condition(get_lm(kube, name) or {}, "Serving")["reason"] == "Starting"
    # The init container's command copies this run's model (here, outside a Pod).
    scratch = tmp_path / "scratch-model"
    copied = subprocess.run(
        [sys.executable, "-m", "kakugo_stages.cli", *init["command"][1:3], str(scratch)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert copied.returncode == 0, copied.stderr
    assert (scratch / "config.json").is_file() and (scratch / "chat_template.jinja").is_file()

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

    # A change of training reruns train and evaluate; until they succeed again, the status
    # holds no model, no evaluation and no finish time for them: a status patch removes
    # what is gone (a shallow merge patch would keep the old nested values).
    cluster.kubectl(
        "patch",
        "languagemodel",
        name,
        "-n",
        NS,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"training": {"learningRate": 2.0e-3}}}),
    )

    def rerunning() -> dict[str, Any] | None:
        obj = get_lm(kube, name) or {}
        st = obj.get("status") or {}
        return obj if st.get("observedGeneration") == 2 else None

    changed = wait_for(rerunning, 60, "observedGeneration 2")["status"]
    # Retraining: the server is scaled to zero (its model is being replaced).
    assert changed["serve"]["phase"] == "WaitingForModel", changed["serve"]
    wait_for(lambda: served(kube, name)["deployment"]["spec"]["replicas"] == 0, 30, "serve at zero")
    assert "model" not in changed["artifacts"] and "evaluation" not in changed["artifacts"]
    assert changed["artifacts"]["dataset"] == status["artifacts"]["dataset"]
    assert "evaluation" not in changed, changed.get("evaluation")
    again = {s["name"]: s for s in changed["stages"]}
    assert again["train"]["state"] in ("Pending", "Running") and again["train"]["reset"]
    assert "finishedAt" not in again["train"] and "extra" not in again["train"]["counts"]
    assert again["filter"]["state"] == "Succeeded"
    lm = wait_ready(kube, name, operator)
    assert lm["status"]["evaluation"]["summary"]
    # Ready again: the retrained model rolls out (a new version) and is served at once.
    new_train = next(s for s in lm["status"]["stages"] if s["name"] == "train")
    assert new_train["fingerprint"] != serving["modelVersion"]

    def rolled_out() -> bool:
        d = served(kube, name)["deployment"]
        return model_version(d) == new_train["fingerprint"] and d["spec"]["replicas"] == 1

    wait_for(rolled_out, 30, "the new model rolled out")
    assert not operator.forbidden(), operator.forbidden()
    assert lm["status"]["artifacts"]["model"] == status["artifacts"]["model"]
    assert {s["name"]: s["attempt"] for s in lm["status"]["stages"]} == {
        **dict.fromkeys(STAGES, 1),
        "train": 2,
        "evaluate": 2,
        # Downstream of evaluate: their inputs moved, so they ran again (and skipped again).
        "review": 2,
        "publish": 2,
    }

    # kubectl delete: the finalizer goes, the garbage collector removes every child.
    before = children(kube, name)
    # One Job per attempt: a second for train, evaluate, review and publish.
    assert len(before["jobs"]) == len(STAGES) + 4 and before["configmaps"], before
    assert before["pods"], before
    cluster.kubectl("delete", "languagemodel", name, "-n", NS, "--wait=true", "--timeout=60s")
    assert get_lm(kube, name) is None
    deadline = time.monotonic() + 90
    left = children(kube, name)
    while any(left.values()) and time.monotonic() < deadline:
        time.sleep(1)
        left = children(kube, name)
    assert not any(left.values()), f"left after delete: {left}"
    # The served model's Deployment and Service go the same way.
    wait_for(lambda: served(kube, name) == {}, 60, "the served model's objects deleted")
