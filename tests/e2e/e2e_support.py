"""Helpers of the end-to-end tests: the operator as a local process under the chart's
RBAC, manifests, and reading LanguageModels back. Its own module name (not `conftest`), so
that the suite can be collected with the other test folders."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.cluster import Cluster, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
NS = "kakugo-e2e"  # where the LanguageModels live; the operator watches it
RELEASE_NS = "kakugo-system"  # the chart's release namespace (operator's ServiceAccount)
RELEASE = "kakugo"


def helm_template(cluster: Cluster, *sets: str) -> list[dict[str, Any]]:
    """`helm template` of the chart (namespaced mode, watching NS)."""
    cmd = [
        str(cluster.tools.helm),
        "template",
        RELEASE,
        str(REPO / "helm" / "kakugo"),
        "--namespace",
        RELEASE_NS,
        "--set",
        f"watch.namespaces={{{NS}}}",
    ]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


#: The operator's own webhook certificate lives this long in the suite (renewed at two
#: thirds), so that renewals happen while the other tests run and test_webhook sees one.
WEBHOOK_CERT_SECONDS = 45


class OperatorProcess:
    """`kakugo operator` as the chart's Deployment runs it, but as a local process. Its
    admission webhook listens on loopback; the chart's ValidatingWebhookConfiguration
    (applied here, with `webhook.url`) sends the API server there."""

    def __init__(self, cluster: Cluster, folder: Path) -> None:
        self.cluster = cluster
        self.folder = folder
        self.health_port, self.metrics_port = free_port(), free_port()
        self.webhook_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "operator.log"

    def setup(self) -> None:
        docs = helm_template(
            self.cluster,
            f"operator.healthPort={self.health_port}",
            f"metrics.port={self.metrics_port}",
            # Fast retries and resyncs for the tests.
            "stages.backoffBaseSeconds=1",
            "stages.backoffMaxSeconds=2",
            "operator.resyncSeconds=5",
            # The webhook on loopback, checked often, with short-lived certificates.
            f"webhook.url=https://127.0.0.1:{self.webhook_port}",
            f"webhook.port={self.webhook_port}",
            "webhook.checkSeconds=1",
            f"webhook.certificateLifetimeSeconds={WEBHOOK_CERT_SECONDS}",
        )
        self.rbac = [
            d
            for d in docs
            if d["kind"]
            in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
        ]
        kinds = sorted(d["kind"] for d in self.rbac)
        # Namespaced mode: the one cluster-wide rule is the webhook configuration's caBundle;
        # the other ClusterRoles are for people (aggregated into admin, edit and view).
        assert kinds == [
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ServiceAccount",
        ], kinds
        (binding,) = [d for d in self.rbac if d["kind"] == "ClusterRoleBinding"]
        assert binding["roleRef"]["name"].endswith("-webhook")
        (self.folder / "rbac.yaml").write_text(yaml.safe_dump_all(self.rbac))
        self.cluster.kubectl("apply", "-f", str(self.folder / "rbac.yaml"))
        # The webhook configuration, as the chart renders it. Kubernetes 1.20 does not label
        # namespaces with their name yet (1.21+ does): label NS for the namespaceSelector.
        self.cluster.kubectl(
            "label", "namespace", NS, f"kubernetes.io/metadata.name={NS}", "--overwrite"
        )
        (self.webhook_config,) = [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
        self.webhook_name = self.webhook_config["metadata"]["name"]
        (self.folder / "webhook.yaml").write_text(yaml.safe_dump(self.webhook_config))
        self.cluster.kubectl("apply", "-f", str(self.folder / "webhook.yaml"))
        (settings_cm,) = [
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-settings")
        ]
        self.settings = self.folder / "settings.yaml"
        self.settings.write_text(settings_cm["data"]["settings.yaml"])
        (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        self.args = list(container["args"])
        self.env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
        sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
        self.service_account = sa
        # A real ServiceAccount token (TokenRequest API), as a projected token would be.
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.cluster.api_client())
        req = core.create_namespaced_service_account_token(
            sa,
            RELEASE_NS,
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": 7200,
                    "audiences": ["https://kubernetes.default.svc"],
                },
            },
        )
        self.token = req.status.token
        self.kubeconfig = self.cluster.write_kubeconfig(
            self.folder / "operator.kubeconfig", self.token, f"sa-{sa}"
        )

    def start(self) -> None:
        """Start the process and wait until it is healthy and its webhook ready."""
        self.spawn()

        def healthy() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited:\n{self.log_tail()}")
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as r:
                return r.status == 200

        wait_until(healthy, 60, "the operator's /healthz")
        self.wait_ready()

    def spawn(self) -> None:
        """Start `kakugo operator` without waiting for it."""
        # This checkout's code, also where another copy of the project is installed in the
        # virtualenv (a git worktree): the `kakugo` script imports from PYTHONPATH first.
        code = os.pathsep.join(
            [str(REPO), str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        env = {
            **os.environ,
            **self.env,
            "PYTHONPATH": code,
            "KUBECONFIG": str(self.kubeconfig),
            "KAKUGO_OPERATOR_SETTINGS": str(self.settings),
            # insecure-skip-tls-verify: the apiserver's certificate is self-signed.
            "PYTHONWARNINGS": "ignore:Unverified HTTPS request",
        }
        for key in list(env):  # only the chart's settings, no developer overrides
            if key.startswith("KAKUGO_") and key not in (
                "KAKUGO_OPERATOR_SETTINGS",
                "KAKUGO_CACHE",
            ):
                env.pop(key)
        kakugo = Path(sys.executable).parent / "kakugo"
        assert self.args[0] == "operator", self.args
        self.out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(kakugo), *self.args],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.folder,
            start_new_session=True,
        )

    def ready(self) -> bool:
        """/readyz: started, and the webhook answers with a CA the configuration holds."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited:\n{self.log_tail()}")
            return self.ready()

        wait_until(ready, timeout, "the operator's /readyz (its admission webhook)")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def failed_reconciliations(self, name: str) -> int:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count(f"reconciliation of {NS}/{name} failed")

    def forbidden(self) -> list[str]:
        """Lines of the operator's log about requests RBAC refused (an HTTP 403, not the
        milliseconds of a timestamp such as `06:23:31,403` nor a piece of a uid such as
        `2899-403c`)."""
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if "forbidden" in line.lower() or re.search(r"(?<![\w,.:-])403(?![\w-])", line)
        ]


# ------------------------------------------------------------------ helpers for the tests


def manifest(name: str, teacher_url: str, student: Path, storage: Path, **extra: Any) -> str:
    """A tiny LanguageModel (the shape of tests/test_run.py, one shard everywhere)."""
    fixtures = REPO / "tests" / "fixtures"
    ev = fixtures / "eval"
    body = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "language": "Yoruba",
            "teacher": {
                "endpoint": {
                    "url": teacher_url,
                    "model": "scripted",
                    "prices": {"inputPerMillion": "0.15", "outputPerMillion": "0.60"},
                },
                "maxConcurrency": 8,
            },
            "student": {"model": str(student)},
            "storage": {"uri": f"file://{storage}"},
            # One shard per stage: 1.20 has no Indexed Jobs (completionMode is dropped).
            "data": {
                "topics": {
                    "generalSeeds": ["health"],
                    "languageSeeds": ["{language} culture"],
                    "macroTopicsPerSeed": 2,
                    "topicsPerMacroTopic": 2,
                    "shards": 1,
                },
                "scenarios": {
                    "broadGeneral": 2,
                    "broadLanguage": 1,
                    "detailedPerBroad": 2,
                    "promptsPerScenario": 2,
                    "shards": 1,
                },
                "contexts": {
                    "source": {"path": str(fixtures / "fineweb2_yor_Latn.jsonl")},
                    "maxDocuments": 4,
                    "maxDocumentTokens": 60,
                    "shards": 1,
                },
                "revise": {"shards": 1},
                "respond": {"shards": 1},
                "translate": {
                    "source": {"path": str(fixtures / "infinity_instruct_7M_core.jsonl")},
                    "samples": 6,
                    "shards": 1,
                },
            },
            "training": {
                "device": "cpu",
                "precision": "fp32",
                "deepspeedStage": 0,
                "cutoffLen": 512,
                "gradientCheckpointing": False,
                "checkpointEverySteps": 2,
                "learningRate": 1.0e-3,
            },
            "evaluation": {
                "device": "cpu",
                "batchSize": 4,
                "flores": {"path": str(ev / "flores_plus"), "limit": 3, "maxNewTokens": 8},
                "sib200": {"path": str(ev / "sib200"), "limit": 4},
                "belebele": {"path": str(ev / "belebele"), "limit": 5},
                "globalMmlu": {"path": str(ev / "global_mmlu"), "limit": 3},
            },
        },
    }
    for key, value in extra.items():
        body["spec"][key] = value
    return yaml.safe_dump(body, sort_keys=False)


def custom(kube: Any) -> Any:
    import kubernetes

    return kubernetes.client.CustomObjectsApi(kube)


def get_lm(kube: Any, name: str) -> dict[str, Any] | None:
    import kubernetes

    try:
        return custom(kube).get_namespaced_custom_object(
            "kakugo.io", "v1alpha1", NS, "languagemodels", name
        )
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == kind), {})


def wait_ready(
    kube: Any,
    name: str,
    op: OperatorProcess,
    timeout: float = 420,
    observe: Callable[[dict[str, Any]], None] | None = None,
    interval: float = 1.0,
) -> dict[str, Any]:
    """Until Ready=True (fails early on Stalled, with the operator's log). `observe` sees
    every LanguageModel read on the way."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = get_lm(kube, name) or {}
        if observe is not None:
            observe(last)
        if condition(last, "Ready").get("status") == "True":
            return last
        stalled = condition(last, "Stalled")
        if stalled.get("status") == "True":
            raise AssertionError(f"{name} stalled: {stalled}\n{op.log_tail()}")
        if op.proc is None or op.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{op.log_tail()}")
        if op.failed_reconciliations(name) > 20:
            raise AssertionError(f"{name}: the operator keeps failing:\n{op.log_tail()}")
        time.sleep(interval)
    status = json.dumps((last or {}).get("status"), indent=1)[-3000:]
    raise AssertionError(
        f"{name} not Ready after {timeout}s; status:\n{status}\noperator log:\n{op.log_tail()}"
    )


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll until check() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
