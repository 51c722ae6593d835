"""The stage DAG and the owned objects on a real kube-apiserver: stages that read no other
stage run at once within `spec.resources.maxConcurrentStages`, a failed stage stops only
the stages that read it, and a served Teacher is kept at `spec.teacher.serve` (re-created
when deleted, its Deployment rolled out when the spec changes)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from tests.e2e.e2e_support import NS, condition, custom, get_lm, manifest, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

GROUP, VERSION = "kakugo.io", "v1alpha1"


def states(obj: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["state"] for s in (obj.get("status") or {}).get("stages") or []}


@pytest.mark.timeout(600)
def test_dag_bound_and_a_failed_stage(
    cluster: Any,
    kube: Any,
    operator: Any,
    kubelet: Any,
    teacher: Any,
    student: Path,
    tmp_path: Path,
) -> None:
    name = "dag"
    doc = yaml.safe_load(
        manifest(
            name, teacher.url, student, tmp_path / "store", resources={"maxConcurrentStages": 2}
        )
    )
    # contexts reads a mirror that does not exist: it fails on every attempt.
    doc["spec"]["data"]["contexts"]["source"]["path"] = str(tmp_path / "missing.jsonl")
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cluster.kubectl("apply", "-f", str(path))

    together: list[list[str]] = []  # the stages running at once, as status showed them
    most_pods = 0  # stage processes the fake kubelet ran at once

    def settled() -> dict[str, Any] | None:
        nonlocal most_pods
        obj = get_lm(kube, name) or {}
        running = ((obj.get("status") or {}).get("progress") or {}).get("stages") or []
        if running and running not in together:
            together.append(running)
        pods = [
            r
            for r in list(kubelet.runs.values())
            if r.name.startswith(f"{name}-") and r.proc is not None and r.proc.poll() is None
        ]
        most_pods = max(most_pods, len(pods))
        done = (
            condition(obj, "Stalled").get("status") == "True"
            and condition(obj, "Reconciling").get("status") == "False"
        )
        return obj if done else None

    lm = wait_for(settled, 420, "contexts to fail for good and the rest to settle", interval=0.1)
    status = lm["status"]
    # Two stages at once, never more (the bound), the first two in run order first.
    assert together[0] == ["topics", "scenarios"], together
    assert all(len(t) <= 2 for t in together), together
    assert most_pods <= 2, most_pods
    # contexts failed for good; the stages that read nothing of it went on and succeeded;
    # revise (which reads contexts) and everything after it never started.
    assert states(lm) == {
        "topics": "Succeeded",
        "scenarios": "Succeeded",
        "contexts": "Failed",
        "revise": "Pending",
        "respond": "Pending",
        "translate": "Succeeded",
        "filter": "Pending",
        "train": "Pending",
        "evaluate": "Pending",
        "review": "Pending",
        "publish": "Pending",
    }, states(lm)
    stalled = condition(lm, "Stalled")
    assert stalled["reason"] == "StageFailed" and "stage contexts failed" in stalled["message"]
    assert status["phase"] == "Stalled"
    batch = kubernetes.client.BatchV1Api(kube)
    jobs = {
        j.metadata.name
        for j in batch.list_namespaced_job(
            NS, label_selector=f"kakugo.io/languagemodel={name}"
        ).items
    }
    contexts = next(s for s in status["stages"] if s["name"] == "contexts")
    assert contexts["failures"] == contexts["attempt"] >= 2, contexts  # retried, then Failed
    assert jobs == {
        f"{name}-topics-1",
        f"{name}-scenarios-1",
        f"{name}-translate-1",
        *(f"{name}-contexts-{a}" for a in range(1, contexts["attempt"] + 1)),
    }, jobs
    assert not [h for h in kubelet.history if h["pod"].startswith(f"{name}-revise-")]
    cluster.kubectl("delete", "languagemodel", name, "-n", NS, "--timeout=60s")


def _teacher(kube: Any, name: str) -> dict[str, Any] | None:
    try:
        return custom(kube).get_namespaced_custom_object(GROUP, VERSION, NS, "teachers", name)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _deployment(kube: Any, name: str) -> Any:
    try:
        return kubernetes.client.AppsV1Api(kube).read_namespaced_deployment(name, NS)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _arg(deploy: Any, flag: str) -> str:
    args = deploy.spec.template.spec.containers[0].args
    return args[args.index(flag) + 1]


@pytest.mark.timeout(300)
def test_served_teacher_is_kept_at_the_spec(
    cluster: Any, kube: Any, operator: Any, tmp_path: Path
) -> None:
    name = "served"
    tname = f"{name}-teacher"
    doc = yaml.safe_load(
        manifest(name, "http://127.0.0.1:9/v1", tmp_path, tmp_path / "store", suspend=True)
    )
    doc["spec"]["teacher"] = {
        "serve": {"model": "tiny", "device": "cpu", "gpus": 0, "maxNumSeqs": 4}
    }
    custom(kube).create_namespaced_custom_object(GROUP, VERSION, NS, "languagemodels", doc)
    first = wait_for(lambda: _teacher(kube, tname), 60, "the served Teacher")
    deploy = wait_for(lambda: _deployment(kube, tname), 60, "its Deployment")
    assert _arg(deploy, "--max-num-seqs") == "4"
    assert deploy.metadata.owner_references[0].uid == first["metadata"]["uid"]

    # Deleted: the LanguageModel creates it again, and the new Teacher its Deployment (the
    # garbage collector took the old one with the old Teacher).
    cluster.kubectl("delete", "teacher", tname, "-n", NS, "--wait=true", "--timeout=60s")
    again = wait_for(
        lambda: (
            (t := _teacher(kube, tname)) and t["metadata"]["uid"] != first["metadata"]["uid"] and t
        ),
        60,
        "the served Teacher re-created",
    )
    lm = get_lm(kube, name) or {}
    assert again["metadata"]["ownerReferences"][0]["uid"] == lm["metadata"]["uid"]
    deploy = wait_for(
        lambda: (
            (d := _deployment(kube, tname))
            and d.metadata.owner_references[0].uid == again["metadata"]["uid"]
            and d
        ),
        90,
        "the re-created Teacher's Deployment",
    )
    old_hash = deploy.metadata.annotations["kakugo.io/template-hash"]

    # A change of spec.teacher.serve reaches the served Teacher and rolls out to its
    # Deployment (new args, new template hash).
    cluster.kubectl(
        "patch",
        "languagemodel",
        name,
        "-n",
        NS,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"teacher": {"serve": {"maxNumSeqs": 6}}}}),
    )
    wait_for(
        lambda: ((_teacher(kube, tname) or {}).get("spec") or {}).get("maxNumSeqs") == 6,
        60,
        "serve reaches the Teacher",
    )
    deploy = wait_for(
        lambda: (d := _deployment(kube, tname)) and _arg(d, "--max-num-seqs") == "6" and d,
        60,
        "the Deployment rolled out",
    )
    assert deploy.metadata.annotations["kakugo.io/template-hash"] != old_hash
    assert _arg(deploy, "--model") == "tiny"
    time.sleep(2)  # a few resyncs: the rollout is not repeated (the hash is current)
    assert _deployment(kube, tname).metadata.generation == deploy.metadata.generation
    assert not operator.forbidden(), operator.forbidden()
    cluster.kubectl("delete", "languagemodel", name, "-n", NS, "--timeout=60s")
