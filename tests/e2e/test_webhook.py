"""The admission webhook on a real kube-apiserver (1.20): the API server calls the
operator's webhook over HTTPS on loopback, trusting the CA the operator wrote into the
chart's ValidatingWebhookConfiguration.

The attack of issue 17 — a user who may not read a Secret names it in a LanguageModel whose
teacher endpoint is her own server — is refused at apply time, naming the field and the
missing permission; a user who may read the Secret gets the same object in. Cross-field
errors are refused with their field paths; images outside the allowlist need permission to
create Pods. And no object gets in unchecked: not while the operator is down or restarting
(failurePolicy Fail), not across a renewal of the webhook's certificate.

Users are ServiceAccounts of the test namespace with TokenRequest tokens (real
authentication, RBAC-limited): alice may manage Kakugo's objects but read no Secret and
create no Pod; bob may also read the Secret `teacher-key`; carol may also create Pods.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from tests.e2e.cluster import Cluster
from tests.e2e.e2e_support import NS, OperatorProcess, get_lm, wait_for
from tests.e2e.test_negative import BROKEN, expected_fields
from tests.test_crds import CROSS_FIELD

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

DENIED = 'admission webhook "validate.kakugo.io" denied the request'
SECRET = "teacher-key"
ATTACKER = "http://127.0.0.1:9/v1"  # "her own server": nothing must ever be sent there
KAKUGO_RULE = {
    "apiGroups": ["kakugo.io"],
    "resources": ["languagemodels", "teachers", "languagefleets"],
    "verbs": ["create", "get", "list", "watch", "update", "patch", "delete"],
}
ROLES: dict[str, list[dict[str, Any]]] = {
    "alice": [KAKUGO_RULE],
    "bob": [
        KAKUGO_RULE,
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [SECRET]},
    ],
    "carol": [KAKUGO_RULE, {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}],
}


class User:
    def __init__(self, cluster: Cluster, name: str, kubeconfig: Path) -> None:
        self.cluster, self.name, self.kubeconfig = cluster, name, kubeconfig
        self.username = f"system:serviceaccount:{NS}:{name}"

    def kubectl(self, *args: str, input: str | None = None) -> Any:
        return self.cluster.kubectl(*args, kubeconfig=self.kubeconfig, check=False, input=input)

    def create(self, obj: dict[str, Any], *extra: str) -> Any:
        return self.kubectl("create", "-n", NS, "-f", "-", *extra, input=yaml.safe_dump(obj))


@pytest.fixture(scope="module")
def users(
    cluster: Cluster, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, User]:
    folder = tmp_path_factory.mktemp("users")
    cluster.kubectl(
        "create", "secret", "generic", SECRET, "-n", NS, "--from-literal=token=s3cr3t", check=False
    )
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    out = {}
    for name, rules in ROLES.items():
        docs = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": f"e2e-{name}"},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"e2e-{name}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": f"e2e-{name}",
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}],
            },
        ]
        cluster.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump_all(docs))
        token = core.create_namespaced_service_account_token(
            name,
            NS,
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": 3600,
                    "audiences": ["https://kubernetes.default.svc"],
                },
            },
        ).status.token
        kubeconfig = cluster.write_kubeconfig(folder / f"{name}.kubeconfig", token, name, NS)
        out[name] = User(cluster, name, kubeconfig)
    # RBAC as the users see it: the point of the test is that they lack these rights.
    alice = out["alice"]
    assert alice.kubectl("get", "secret", SECRET).returncode != 0
    assert alice.kubectl("auth", "can-i", "create", "pods").stdout.strip() == "no"
    assert out["bob"].kubectl("get", "secret", SECRET).returncode == 0
    return out


def language_model(name: str, **spec: Any) -> dict[str, Any]:
    """A suspended LanguageModel (the operator starts no stage) naming the Secret."""
    body = {
        "language": "Yoruba",
        "teacher": {
            "endpoint": {
                "url": ATTACKER,
                "model": "stolen",
                "apiKeySecretRef": {"name": SECRET, "key": "token"},
            }
        },
        "storage": {"uri": "file:///tmp/kakugo-e2e-webhook"},
        "suspend": True,
    }
    body.update(spec)
    return {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


def _denied(done: Any, *needles: str) -> str:
    out = done.stdout + done.stderr
    assert done.returncode != 0, f"admitted:\n{out}"
    assert DENIED in out, out
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    return str(out)


def _delete(cluster: Cluster, kind: str, name: str) -> None:
    cluster.kubectl("delete", kind, name, "-n", NS, "--ignore-not-found", "--wait=false")


@pytest.mark.timeout(300)
def test_a_user_cannot_send_a_secret_she_cannot_read(
    cluster: Cluster, kube: Any, users: dict[str, User]
) -> None:
    alice, bob = users["alice"], users["bob"]
    forbidden = f'User "{alice.username}" cannot get resource "secrets" in API group ""'
    # The attack: refused at apply time, naming the field and the missing permission.
    _denied(
        alice.create(language_model("attack")),
        "spec.teacher.endpoint.apiKeySecretRef",
        forbidden,
        f'(Secret "{SECRET}")',
    )
    assert get_lm(kube, "attack") is None
    # The same doors through storage: S3 credentials (envFrom) and a PVC.
    s3 = {"uri": "s3://bucket/runs", "s3": {"credentialsSecretRef": SECRET}}
    _denied(
        alice.create(language_model("attack-s3", storage=s3)),
        "spec.storage.s3.credentialsSecretRef",
        forbidden,
    )
    pvc = {"pvc": {"claimName": "shared-data", "mountPath": "/data"}}
    _denied(
        alice.create(language_model("attack-pvc", storage=pvc)),
        "spec.storage.pvc.claimName",
        'cannot get resource "persistentvolumeclaims"',
        "shared-data",
    )
    # Also through a fleet, whose members the operator would create for her.
    fleet = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageFleet",
        "metadata": {"name": "attack-fleet", "namespace": NS},
        "spec": {
            "languages": [{"language": "Ewe"}],
            "template": {k: v for k, v in language_model("x")["spec"].items() if k != "language"},
        },
    }
    _denied(alice.create(fleet), "spec.template.teacher.endpoint.apiKeySecretRef", forbidden)
    # bob may read the Secret: the same LanguageModel and fleet get in.
    done = bob.create(language_model("allowed"))
    assert done.returncode == 0, done.stderr
    done = bob.create(fleet)
    assert done.returncode == 0, done.stderr
    try:
        # The operator's own writes pass: it creates the member (its ServiceAccount may not
        # read the Secret; the fleet was checked for bob) and patches it when the template
        # changes.
        member = wait_for(lambda: get_lm(kube, "ewe-latn"), 60, "the fleet's member")
        assert member["spec"]["teacher"]["endpoint"]["apiKeySecretRef"]["name"] == SECRET
        patch = '{"spec": {"template": {"data": {"seed": 7}}}}'
        done = bob.kubectl("patch", "languagefleet", "attack-fleet", "--type=merge", "-p", patch)
        assert done.returncode == 0, done.stderr

        def seed() -> Any:
            return ((get_lm(kube, "ewe-latn") or {}).get("spec") or {}).get("data", {}).get("seed")

        wait_for(lambda: seed() == 7, 60, "the member patched by the operator")
    finally:
        _delete(cluster, "languagefleet", "attack-fleet")
    try:
        # alice may not take bob's object over: any spec change is checked again, with
        # every reference (a new URL would send bob's Secret to her server) ...
        patch = '{"spec": {"teacher": {"endpoint": {"url": "http://127.0.0.1:19/v1"}}}}'
        _denied(
            alice.kubectl("patch", "languagemodel", "allowed", "--type=merge", "-p", patch),
            "spec.teacher.endpoint.apiKeySecretRef",
            forbidden,
        )
        # ... but metadata is not a spec change (labels, annotations, finalizers pass).
        done = alice.kubectl("label", "languagemodel", "allowed", "team=a")
        assert done.returncode == 0, done.stderr
        lm = get_lm(kube, "allowed")
        assert lm is not None and lm["spec"]["teacher"]["endpoint"]["url"] == ATTACKER
    finally:
        _delete(cluster, "languagemodel", "allowed")


@pytest.mark.timeout(300)
def test_cross_field_errors_are_refused_at_apply_time(
    cluster: Cluster, users: dict[str, User]
) -> None:
    """What the CRD schema cannot state (and surfaced as Stalled/InvalidSpec before) is
    refused by the webhook, with the field paths of `kakugo validate`."""
    faults = sorted(
        p
        for p in BROKEN.glob("*.yaml")
        if p.stem in CROSS_FIELD
        and p.stem not in ("bad-kind", "yaml-syntax")
        # Faults in metadata are the API server's (and this test renames the objects).
        and not any(f.startswith("metadata") for f in expected_fields(p))
    )
    assert len(faults) >= 8, faults
    failures = []
    for path in faults:
        (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        doc["metadata"] = {"name": f"cross-{path.stem}", "namespace": NS}
        done = cluster.kubectl("create", "-f", "-", check=False, input=yaml.safe_dump(doc))
        out = done.stdout + done.stderr
        if done.returncode == 0:
            failures.append(f"{path.name}: admitted")
            cluster.kubectl("delete", "-f", "-", check=False, input=yaml.safe_dump(doc))
        elif DENIED not in out:
            failures.append(f"{path.name}: not refused by the webhook: {out}")
        else:
            missing = [f for f in expected_fields(path) if f not in out]
            if missing:
                failures.append(f"{path.name}: {missing} not named in: {out}")
    assert not failures, "\n".join(failures)


def _teacher(name: str, **spec: Any) -> dict[str, Any]:
    body = {"model": "tiny", "device": "cpu", "gpus": 0, **spec}
    return {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "Teacher",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


@pytest.mark.timeout(300)
def test_images_and_arguments_outside_the_allowlist_need_pod_creation(
    cluster: Cluster, operator: OperatorProcess, users: dict[str, User]
) -> None:
    alice, carol = users["alice"], users["carol"]
    cannot_pods = f'User "{alice.username}" cannot create resource "pods"'
    evil = _teacher("evil", image="registry.evil.example/vllm:latest")
    _denied(alice.create(evil), "spec.image", "registry.evil.example/vllm:latest", cannot_pods)
    args = _teacher("args", extraArgs=["--trust-remote-code"])
    _denied(alice.create(args), "spec.extraArgs", "'--trust-remote-code'", cannot_pods)
    served = language_model(
        "served-evil",
        teacher={"serve": {"model": "tiny", "device": "cpu", "gpus": 0, "image": "evil/vllm:1"}},
    )
    _denied(alice.create(served), "spec.teacher.serve.image", cannot_pods)
    # The chart's own teacher image needs nothing more.
    settings = yaml.safe_load(operator.settings.read_text())
    own = _teacher("own", image=settings["images"]["teacher"])
    done = alice.create(own, "--dry-run=server")
    assert done.returncode == 0, done.stderr
    # carol may create Pods: she could run any image anyway.
    assert carol.create(args, "--dry-run=server").returncode == 0
    done = carol.create(evil)
    assert done.returncode == 0, done.stderr
    _delete(cluster, "teacher", "evil")


def _serving_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        return tls.getpeercert(binary_form=True) or b""


def _ca_bundle(cluster: Cluster, op: OperatorProcess) -> str:
    done = cluster.kubectl(
        "get",
        "validatingwebhookconfiguration",
        op.webhook_name,
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    )
    return str(done.stdout)


@pytest.mark.timeout(300)
def test_certificate_renewal_lets_nothing_through(
    cluster: Cluster, operator: OperatorProcess, users: dict[str, User]
) -> None:
    """The operator renews its serving certificate in place (same CA, same caBundle):
    every request across the renewal is reviewed, none fails and none is admitted
    unchecked."""
    alice = users["alice"]
    first, bundle = _serving_certificate(operator.webhook_port), _ca_bundle(cluster, operator)
    attempts = 0
    deadline = time.monotonic() + 3 * 45  # WEBHOOK_CERT_SECONDS: renewed every 30 s
    while _serving_certificate(operator.webhook_port) == first:
        assert time.monotonic() < deadline, "the webhook certificate was not renewed"
        _denied(alice.create(language_model("during-renewal")), "apiKeySecretRef")
        attempts += 1
    # After the renewal: the same CA, and the webhook still answers (alice is refused for
    # her permissions, not for a failed call; a valid object gets in).
    assert _ca_bundle(cluster, operator) == bundle
    _denied(alice.create(language_model("after-renewal")), "apiKeySecretRef")
    done = alice.create(
        language_model("after-renewal", teacher={"ref": {"name": "t"}}), "--dry-run=server"
    )
    assert done.returncode == 0, done.stderr
    assert attempts >= 1


@pytest.mark.timeout(300)
def test_nothing_gets_in_while_the_webhook_is_down_or_restarting(
    cluster: Cluster, kube: Any, operator: OperatorProcess, users: dict[str, User]
) -> None:
    """failurePolicy Fail: with the operator stopped, even a valid create by the admin is
    refused; during the restart (a new CA, a stale caBundle until the operator writes the
    new one) nothing is admitted; afterwards the webhook decides again."""
    alice = users["alice"]
    assert operator.webhook_config["webhooks"][0]["failurePolicy"] == "Fail"  # the default
    valid = language_model("while-down", teacher={"ref": {"name": "t"}})
    bundle = _ca_bundle(cluster, operator)
    operator.stop()
    done = cluster.kubectl("create", "-f", "-", check=False, input=yaml.safe_dump(valid))
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "failed calling webhook" in out, out
    assert get_lm(kube, "while-down") is None
    done = alice.create(language_model("while-down-attack"))
    assert done.returncode != 0 and "failed calling webhook" in done.stderr, done.stderr
    # Restart; while it comes up (a new CA, the old one still in the caBundle until the
    # operator writes the new one), keep trying the attack and an invalid object.
    operator.spawn()
    invalid = language_model("restart-invalid", language="Klingon", teacher={"ref": {"name": "t"}})
    tries = 0
    while not operator.ready():
        if operator.proc is None or operator.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{operator.log_tail()}")
        done = alice.create(language_model("restart-attack"))
        assert done.returncode != 0, done.stdout
        done = cluster.kubectl("create", "-f", "-", check=False, input=yaml.safe_dump(invalid))
        assert done.returncode != 0, done.stdout
        tries += 1
    operator.wait_ready()
    assert tries >= 1
    assert get_lm(kube, "restart-attack") is None and get_lm(kube, "restart-invalid") is None
    assert _ca_bundle(cluster, operator) != bundle  # a new CA, written by the new operator
    _denied(alice.create(language_model("after-restart")), "spec.teacher.endpoint.apiKeySecretRef")
    done = cluster.kubectl("create", "-f", "-", check=False, input=yaml.safe_dump(valid))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: (get_lm(kube, "while-down") or {}).get("status"), 60, "the operator at work")
    _delete(cluster, "languagemodel", "while-down")
    assert not [
        line for line in operator.forbidden() if "localsubjectaccessreviews" in line.lower()
    ]
