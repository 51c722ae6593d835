"""Stage Pods on the real API server (1.20): pod templates merged over what the operator
builds come back from the API server as written and stay restricted; a Job on a Kueue
queue is suspended with its LanguageModel through its Workload, under the chart's RBAC.

What 1.20 cannot show, and where it is shown instead:
- Pod Security admission (`pod-security.kubernetes.io/enforce: restricted`) is 1.23+: the
  restricted rules are checked on the Pods read back from this API server (and on the Job
  controller's Pods) by tests/helpers/pod_security.py, and by checkov (tests/test_checkov.py).
- Job `spec.suspend` is 1.21+ (1.20 drops the field): a queued Job runs at once here, and
  Kueue's admission (resuming a suspended Job) and preemption (suspending it) are played
  on the emulator (tests/operator/test_kueue.py). Here the test plays the rest of Kueue's
  part: it installs a stand-in of Kueue's Workload CRD and makes the Workload Kueue would
  make for the Job; the operator, with the chart's RBAC, finds it and sets spec.active.
- `ttlSecondsAfterFinished` is alpha (off) in 1.20, so the API server drops it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from kakugo_stages.spec import HOME_DIR, POD_USER
from tests.e2e.e2e_support import NS, condition, custom, get_lm, manifest, wait_for
from tests.helpers.pod_security import restricted_violations

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

WORKLOAD_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "workloads.kueue.x-k8s.io"},
    "spec": {
        "group": "kueue.x-k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "Workload", "plural": "workloads", "singular": "workload"},
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def silent_teacher() -> Iterator[str]:
    """A teacher that accepts connections and never answers: the stage Pods keep running
    (waiting for it) while the test looks at them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def _apply(cluster: Any, tmp_path: Path, name: str, doc: dict[str, Any]) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    cluster.kubectl("apply", "-f", str(path))


def _job(kube: Any, name: str) -> dict[str, Any] | None:
    batch = kubernetes.client.BatchV1Api(kube)
    try:
        job = batch.read_namespaced_job(name, NS)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return kube.sanitize_for_serialization(job)


def _quiet_lm(name: str, teacher_url: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    doc = yaml.safe_load(manifest(name, teacher_url, tmp_path / "student", tmp_path / "store"))
    doc["spec"]["teacher"]["requestTimeoutSeconds"] = 600
    doc["spec"]["teacher"]["maxRetries"] = 0
    doc["spec"].setdefault("resources", {})["maxConcurrentStages"] = 1
    doc["spec"]["resources"].update(extra.pop("resources", {}))
    doc["spec"].update(extra)
    return doc


@pytest.mark.timeout(300)
def test_pod_templates_round_trip_and_stay_restricted(
    cluster: Any, kube: Any, operator: Any, silent_teacher: str, tmp_path: Path
) -> None:
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "stage-extras"}, "data": {"proxy.pac": "DIRECT"}}
    )
    core.create_namespaced_secret(
        NS, {"metadata": {"name": "hf-token"}, "stringData": {"token": "hf_e2e"}}
    )
    template = {
        "metadata": {"labels": {"team": "ml"}, "annotations": {"example.com/cost-center": "42"}},
        "spec": {
            "serviceAccountName": "kakugo-stages",
            "imagePullSecrets": [{"name": "regcred"}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}],
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 10,
                            "preference": {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "In", "values": ["a"]}
                                ]
                            },
                        }
                    ]
                }
            },
            "securityContext": {"runAsUser": 20000, "fsGroup": 20000},
            "volumes": [{"name": "extras", "configMap": {"name": "stage-extras"}}],
            "containers": [
                {
                    "env": [
                        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                        {"name": "HF_HOME", "value": f"{HOME_DIR}/.cache/hf"},
                    ],
                    "volumeMounts": [{"name": "extras", "mountPath": "/etc/extras"}],
                }
            ],
        },
    }
    doc = _quiet_lm(
        "templated",
        silent_teacher,
        tmp_path,
        resources={"podTemplates": [template], "topics": {"activeDeadlineSeconds": 3600}},
        huggingFace={"tokenSecretRef": {"name": "hf-token", "key": "token"}},
    )
    _apply(cluster, tmp_path, "templated", doc)
    job = wait_for(lambda: _job(kube, "templated-topics-1"), 60, "the topics Job")
    spec = job["spec"]
    assert spec["activeDeadlineSeconds"] == 3600
    assert "ttlSecondsAfterFinished" not in spec  # alpha in 1.20: dropped by the API server
    pod_template = spec["template"]
    meta, pod = pod_template["metadata"], pod_template["spec"]
    assert meta["labels"]["team"] == "ml" and meta["labels"]["kakugo.io/stage"] == "topics"
    assert meta["annotations"]["example.com/cost-center"] == "42"
    assert pod["serviceAccountName"] == "kakugo-stages"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml"}]
    assert pod["affinity"] == template["spec"]["affinity"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 20000,
        "runAsGroup": POD_USER,
        "fsGroup": 20000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HTTPS_PROXY"]["value"] == "http://proxy:3128"
    assert env["HF_HOME"]["value"] == f"{HOME_DIR}/.cache/hf"
    assert [e["name"] for e in container["env"]].count("HF_HOME") == 1
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/extras"]["name"] == "extras"
    assert (mounts[HOME_DIR]["subPath"], mounts["/tmp"]["subPath"]) == ("home", "tmp")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert volumes["extras"]["configMap"]["name"] == "stage-extras"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # As the API server defaulted it, and in the Pod the Job controller made: restricted.
    assert restricted_violations(pod_template) == []

    def running_pod() -> dict[str, Any] | None:
        pods = core.list_namespaced_pod(NS, label_selector="job-name=templated-topics-1")
        return next((kube.sanitize_for_serialization(p) for p in pods.items), None)

    created = wait_for(running_pod, 60, "the Job controller's Pod")
    assert restricted_violations({"metadata": created["metadata"], "spec": created["spec"]}) == []
    assert created["metadata"]["labels"]["team"] == "ml"
    lm = wait_for(
        lambda: (x := get_lm(kube, "templated")) and condition(x, "Reconciling") and x,
        30,
        "status",
    )
    assert condition(lm, "Stalled").get("status") != "True", lm.get("status")
    assert operator.forbidden() == []
    cluster.kubectl("delete", "languagemodel", "templated", "-n", NS, "--timeout=60s")


@pytest.mark.timeout(300)
def test_a_queued_job_is_suspended_through_its_workload(
    cluster: Any, kube: Any, operator: Any, silent_teacher: str, tmp_path: Path
) -> None:
    _apply(cluster, tmp_path, "workload-crd", WORKLOAD_CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/workloads.kueue.x-k8s.io"
    )
    doc = _quiet_lm("queued", silent_teacher, tmp_path, resources={"topics": {"queueName": "q"}})
    _apply(cluster, tmp_path, "queued", doc)
    job = wait_for(lambda: _job(kube, "queued-topics-1"), 60, "the queued Job")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    # The operator asked for suspend: true (Kueue would resume it); 1.20 drops the field.
    assert not job["spec"].get("suspend")
    # Kueue's part: the Workload it makes for the Job (and one of another Job).
    api = custom(kube)
    for name, uid in (("job-queued-topics-1-e2e", job["metadata"]["uid"]), ("job-other", "x")):
        api.create_namespaced_custom_object(
            "kueue.x-k8s.io",
            "v1beta1",
            NS,
            "workloads",
            {
                "apiVersion": "kueue.x-k8s.io/v1beta1",
                "kind": "Workload",
                "metadata": {"name": name, "labels": {"kueue.x-k8s.io/job-uid": uid}},
                "spec": {"active": True, "queueName": "q"},
            },
        )

    def active(name: str) -> Any:
        obj = api.get_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", NS, "workloads", name)
        return obj["spec"].get("active")

    wait_for(lambda: get_lm(kube, "queued")["status"]["phase"] == "Running", 60, "Running")
    cluster.kubectl(
        "patch",
        "languagemodel",
        "queued",
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"spec":{"suspend":true}}',
    )
    wait_for(lambda: active("job-queued-topics-1-e2e") is False, 60, "the Workload inactive")
    annotated = wait_for(
        lambda: (_job(kube, "queued-topics-1") or {})["metadata"].get("annotations"),
        30,
        "the Job annotated",
    )
    assert annotated["kakugo.io/kueue-active"] == "false"
    assert active("job-other") is True
    cluster.kubectl(
        "patch",
        "languagemodel",
        "queued",
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"spec":{"suspend":false}}',
    )
    wait_for(lambda: active("job-queued-topics-1-e2e") is True, 60, "the Workload active again")
    # The chart's RBAC allowed every request (the Workloads' list and patch included).
    assert operator.forbidden() == []
    cluster.kubectl("delete", "languagemodel", "queued", "-n", NS, "--timeout=60s")
