"""The admission webhook: the pure decision (admission.py: which fields name which Secrets,
PVCs, images and arguments; the questions; the messages; the allowlists; validation), the
review (webhook.review with a scripted API server), the certificates, and the webhook as
the operator serves it (KopfRunner against the emulator, which answers the reviews).

The same checks run against a real API server in tests/e2e/test_webhook.py."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import kopf
import pytest
from cryptography import x509
from kakugo_operator import admission, webhook
from kakugo_operator.admission import Allowlist, Question, Use
from kakugo_operator.settings import OperatorSettings

from tests.operator.k8s_emulator import Api, Emulator
from tests.operator.operator_helpers import (
    METRICS_PORT,
    NS,
    Operator,
    language_model,
    wait_for,
)

SETTINGS = OperatorSettings(
    images={"teacher": "registry.test/vllm:1"},
    storage_uri="s3://default/runs",
    admission_trusted_users=("system:serviceaccount:kakugo-system:kakugo",),
    allowed_images=("registry.test/approved/*",),
    allowed_extra_args=("--enable-prefix-caching", "--max-num-batched-tokens"),
)
ALLOW = Allowlist.of(SETTINGS)
ENDPOINT = {
    "url": "https://evil.example/v1",
    "model": "m",
    "apiKeySecretRef": {"name": "openai-key", "key": "token"},
}
SERVE = {
    "model": "tiny",
    "device": "cpu",
    "gpus": 0,
    "image": "evil.example/vllm:1",
    "extraArgs": ["--trust-remote-code", "--max-num-batched-tokens", "4096"],
    "hfTokenSecretRef": {"name": "hf", "key": "token"},
}


def lm_spec(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(language_model("x")["spec"])
    body.update(spec)
    return body


# ------------------------------------------------------------------ what an object uses


def test_uses_of_a_language_model() -> None:
    spec = lm_spec(
        teacher={"endpoint": ENDPOINT},
        storage={"pvc": {"claimName": "shared", "mountPath": "/mnt"}},
    )
    assert admission.uses("LanguageModel", spec) == [
        Use("spec.teacher.endpoint.apiKeySecretRef", "secret", "openai-key"),
        Use("spec.storage.pvc.claimName", "pvc", "shared"),
    ]
    spec = lm_spec(teacher={"serve": SERVE})  # language_model() has S3 credentials
    assert admission.uses("LanguageModel", spec) == [
        Use("spec.teacher.serve.hfTokenSecretRef", "secret", "hf"),
        Use("spec.teacher.serve.image", "image", "evil.example/vllm:1"),
        Use("spec.teacher.serve.extraArgs", "args", tuple(SERVE["extraArgs"])),
        Use("spec.storage.s3.credentialsSecretRef", "secret", "kakugo-s3"),
    ]
    # Nothing named: nothing to ask (and null values from defaults are no names).
    plain = lm_spec(teacher={"ref": {"name": "shared"}}, storage={"uri": "s3://bucket/runs"})
    plain["teacher"]["serve"] = None
    assert admission.uses("LanguageModel", plain) == []


def test_uses_of_a_teacher() -> None:
    assert admission.uses("Teacher", {**SERVE, "extraArgs": []}) == [
        Use("spec.hfTokenSecretRef", "secret", "hf"),
        Use("spec.image", "image", "evil.example/vllm:1"),
    ]


def test_uses_of_a_fleet_name_the_template_or_the_override() -> None:
    """A member's values come from the template or from its entry's overrides."""
    template = {k: v for k, v in lm_spec(teacher={"endpoint": ENDPOINT}).items() if k != "language"}
    spec = {
        "template": template,
        "languages": [
            {"language": "Yoruba"},
            {
                "language": "Hausa",
                "overrides": {
                    "storage": {"pvc": {"claimName": "hausa"}, "uri": None, "s3": None},
                    "teacher": {"serve": {"image": "registry.test/approved/vllm:2"}},
                },
            },
        ],
    }
    assert admission.uses("LanguageFleet", spec) == [
        Use("spec.template.teacher.endpoint.apiKeySecretRef", "secret", "openai-key"),
        Use("spec.template.storage.s3.credentialsSecretRef", "secret", "kakugo-s3"),
        Use(
            "spec.languages[1].overrides.teacher.serve.image",
            "image",
            "registry.test/approved/vllm:2",
        ),
        Use("spec.languages[1].overrides.storage.pvc.claimName", "pvc", "hausa"),
    ]


# ------------------------------------------------------------------ settings and allowlists


def test_webhook_settings_from_the_environment() -> None:
    from kakugo_operator import settings as settings_mod

    loaded = settings_mod.load(
        {
            "KAKUGO_WEBHOOK_PORT": "0",
            "KAKUGO_ALLOWED_IMAGES": "registry.example/vllm/*, other/image:1",
            "KAKUGO_ALLOWED_EXTRA_ARGS": "--enable-prefix-caching",
            "KAKUGO_ADMISSION_TRUSTED_USERS": "system:serviceaccount:ops:kakugo",
            "KAKUGO_WEBHOOK_CONFIGURATION": "",
        }
    )
    assert loaded.webhook_port == 0
    assert loaded.allowed_images == ("registry.example/vllm/*", "other/image:1")
    assert loaded.allowed_extra_args == ("--enable-prefix-caching",)
    assert loaded.admission_trusted_users == ("system:serviceaccount:ops:kakugo",)
    assert loaded.webhook_configuration is None
    with pytest.raises(settings_mod.SettingsError, match="webhookHosts"):
        settings_mod.from_mapping({"webhookHosts": []})
    with pytest.raises(settings_mod.SettingsError, match="webhookCertLifetimeSeconds"):
        settings_mod.from_mapping({"webhookCertLifetimeSeconds": 1})


def test_images_allowlist() -> None:
    assert ALLOW.image_allowed("registry.test/vllm:1")  # the operator's own
    assert ALLOW.image_allowed("registry.test/approved/vllm@sha256:abc")  # a prefix entry
    assert not ALLOW.image_allowed("registry.test/vllm:2")  # exact: another tag is another image
    assert not ALLOW.image_allowed("registry.test/approved")  # the prefix needs its slash
    assert not ALLOW.image_allowed("registry.test/approvedx/vllm:1")
    default = Allowlist.of(OperatorSettings())
    assert default.images == tuple(OperatorSettings().images.values())
    assert default.extra_args == ()


def test_extra_args_allowlist() -> None:
    refused = ALLOW.refused_args
    assert refused(["--enable-prefix-caching", "--max-num-batched-tokens", "8192"]) == []
    assert refused(["--max_num_batched_tokens=8192"]) == []  # vLLM reads _ as -
    # A flag outside the list is refused with its values; a leading value is positional.
    assert refused(["--trust-remote-code", "--enable-prefix-caching"]) == ["--trust-remote-code"]
    assert refused(["--chat-template", "/etc/passwd"]) == ["--chat-template"]
    assert refused(["serve", "--enable-prefix-caching"]) == ["serve"]
    assert refused(["--trust_remote_code"]) == ["--trust_remote_code"]
    # A flag hidden as the value of an allowed one is still a flag.
    assert refused(["--max-num-batched-tokens", "--trust-remote-code"]) == ["--trust-remote-code"]
    assert Allowlist.of(OperatorSettings()).refused_args(["--enable-prefix-caching"]) == [
        "--enable-prefix-caching"
    ]


# ------------------------------------------------------------------ questions and answers


def test_questions_are_asked_once_and_pods_only_when_needed() -> None:
    found = [
        Use("spec.a", "secret", "k"),
        Use("spec.b", "secret", "k"),
        Use("spec.c", "pvc", "p"),
        Use("spec.d", "image", "registry.test/vllm:1"),
        Use("spec.e", "args", ("--enable-prefix-caching",)),
    ]
    assert admission.questions(found, ALLOW) == [
        Question("get", "secrets", "k"),
        Question("get", "persistentvolumeclaims", "p"),
    ]
    found += [Use("spec.f", "image", "evil/vllm:1"), Use("spec.g", "args", ("--x",))]
    assert admission.questions(found, ALLOW)[-1] == admission.CREATE_PODS
    assert admission.questions(found, ALLOW).count(admission.CREATE_PODS) == 1
    assert Question("get", "secrets", "k").attributes("ns") == {
        "namespace": "ns",
        "verb": "get",
        "group": "",
        "resource": "secrets",
        "name": "k",
    }
    assert "name" not in admission.CREATE_PODS.attributes("ns")


def test_problems_name_the_field_and_the_missing_permission() -> None:
    found = admission.uses("LanguageModel", lm_spec(teacher={"serve": SERVE}))
    user = "system:serviceaccount:team:alice"
    out = admission.problems(found, {}, user, "team", ALLOW)
    assert out[0] == (
        'spec.teacher.serve.hfTokenSecretRef: User "system:serviceaccount:team:alice" cannot get '
        'resource "secrets" in API group "" in the namespace "team" (Secret "hf"): the operator '
        "would hand this Secret to the pipeline for you, so you must be allowed to read it yourself"
    )
    assert out[1].startswith(
        'spec.teacher.serve.image: image "evil.example/vllm:1" is not allowed (operator setting '
        "allowedImages and the operator's own images: "
    )
    assert out[1].endswith(
        f'User "{user}" cannot create resource "pods" in API group "" in the namespace "team": '
        "only users who may create Pods may run other images"
    )
    assert out[2].startswith(
        "spec.teacher.serve.extraArgs: server argument(s) '--trust-remote-code' not allowed "
        "(operator setting allowedExtraArgs: --enable-prefix-caching, --max-num-batched-tokens)"
    )
    assert 'cannot create resource "pods"' in out[2]
    assert out[3].startswith("spec.storage.s3.credentialsSecretRef: User")
    assert len(out) == 4
    # Who may create Pods may choose images and arguments, but still needs the Secrets.
    answers = {admission.CREATE_PODS: True, Question("get", "secrets", "hf"): True}
    assert [p.split(":")[0] for p in admission.problems(found, answers, user, "team", ALLOW)] == [
        "spec.storage.s3.credentialsSecretRef"
    ]
    pvc = [Use("spec.storage.pvc.claimName", "pvc", "shared")]
    (message,) = admission.problems(pvc, {}, "bob", "team", ALLOW)
    assert message.startswith(
        'spec.storage.pvc.claimName: User "bob" cannot get resource "persistentvolumeclaims" '
        'in API group "" in the namespace "team" (PersistentVolumeClaim "shared"): the stage '
        "Pods would mount it"
    )


def test_only_spec_changes_are_reviewed() -> None:
    old = {"metadata": {"finalizers": []}, "spec": {"a": 1}}
    assert not admission.spec_changed(old, {"metadata": {"finalizers": ["x"]}, "spec": {"a": 1}})
    assert admission.spec_changed(old, {"spec": {"a": 2}})


# ------------------------------------------------------------------ validation


def test_validation_gives_the_operators_field_paths() -> None:
    errors = admission.validation_errors(
        "LanguageModel",
        "x",
        NS,
        lm_spec(teacher={"serve": {"model": "m", "device": "cuda", "gpus": 0}}),
        SETTINGS,
    )
    (error,) = errors
    assert error.startswith("spec.teacher.serve.gpus: got 0 but device is cuda")
    # The operator's setting matters: no storage and no default storage is InvalidSpec.
    no_storage = lm_spec()
    del no_storage["storage"]
    assert admission.validation_errors("LanguageModel", "x", NS, no_storage, SETTINGS) == []
    (error,) = admission.validation_errors("LanguageModel", "x", NS, no_storage, OperatorSettings())
    assert error.startswith("spec.storage.uri: required; the operator has no default storage")
    (error,) = admission.validation_errors(
        "Teacher", "t", NS, {"gpus": 1, "tensorParallelSize": 2}, SETTINGS
    )
    assert error.startswith("spec.gpus: got 1; must be at least tensorParallelSize")
    assert admission.validation_errors("Teacher", "t", NS, {}, SETTINGS) == []


def test_validation_of_a_fleet_covers_every_member() -> None:
    template = {k: v for k, v in lm_spec().items() if k != "language"}
    fleet = {
        "template": template,
        "languages": [
            {"language": "Yoruba"},
            {
                "language": "Hausa",
                "overrides": {"training": {"device": "cuda"}, "resources": {"train": {"gpus": 0}}},
            },
            {"language": "Klingon"},
        ],
    }
    errors = admission.validation_errors("LanguageFleet", "west", NS, fleet, SETTINGS)
    assert len(errors) == 2, errors
    assert errors[0].startswith("spec.languages[1] (Hausa): spec.resources.train.gpus: is 0")
    assert errors[1].startswith("spec.languages[2].language: ")
    del template["storage"]
    errors = admission.validation_errors("LanguageFleet", "west", NS, fleet, OperatorSettings())
    assert "spec.languages[0] (Yoruba): spec.storage.uri: required" in errors[0]
    errors = admission.validation_errors("LanguageFleet", "west", NS, {"languages": []}, SETTINGS)
    assert [e.split(":")[0] for e in errors] == ["spec.languages", "spec.template"]


# ------------------------------------------------------------------ the review


class Server:
    """A scripted API server for webhook.review: answers questions from `granted`."""

    def __init__(self, granted: set[tuple[str, Question]] | None = None) -> None:
        self.granted = granted or set()
        self.asked: list[tuple[str, str, Question]] = []

    async def __call__(self, namespace: str, userinfo: Any, q: Question) -> bool:
        self.asked.append((namespace, userinfo["username"], q))
        return (userinfo["username"], q) in self.granted


def run_review(
    server: Any, operation: str = "CREATE", old: Any = None, user: str = "alice", **spec: Any
) -> None:
    new = {"metadata": {"name": "x", "namespace": NS}, "spec": lm_spec(**spec)}
    asyncio.run(
        webhook.review(
            plural="languagemodels",
            operation=operation,
            namespace=NS,
            old=old,
            new=new,
            userinfo={"username": user, "uid": "u1", "groups": ["team"]},
            settings=SETTINGS,
            ask=server,
        )
    )


def test_review_refuses_what_the_author_may_not_read() -> None:
    server = Server()
    with pytest.raises(kopf.AdmissionError) as refused:
        run_review(server, teacher={"endpoint": ENDPOINT})
    assert refused.value.code == 403
    message = str(refused.value)
    assert message.startswith('spec.teacher.endpoint.apiKeySecretRef: User "alice" cannot get')
    assert "; spec.storage.s3.credentialsSecretRef: " in message
    assert [q for _, _, q in server.asked] == [
        Question("get", "secrets", "openai-key"),
        Question("get", "secrets", "kakugo-s3"),
    ]
    # Allowed to read both: admitted.
    server = Server({("alice", Question("get", "secrets", s)) for s in ("openai-key", "kakugo-s3")})
    run_review(server, teacher={"endpoint": ENDPOINT})


def test_review_of_updates_deletes_and_the_operator() -> None:
    body = {"metadata": {"name": "x"}, "spec": lm_spec(teacher={"endpoint": ENDPOINT})}
    # A metadata-only update (a finalizer, the fleet's admission annotation): no question,
    # not even validation (an old object that no longer validates can still be deleted).
    server = Server()
    invalid = {"metadata": {"name": "x"}, "spec": {"language": "Klingon"}}
    for operation in ("UPDATE", "DELETE"):
        asyncio.run(
            webhook.review(
                plural="languagemodels",
                operation=operation,
                namespace=NS,
                old=invalid,
                new={**invalid, "metadata": {"name": "x", "finalizers": ["kakugo.io/finalizer"]}},
                userinfo={"username": "alice"},
                settings=SETTINGS,
                ask=server,
            )
        )
    assert server.asked == []
    # A spec change is reviewed in full: every reference, also the unchanged ones (a new
    # endpoint URL would send the old Secret elsewhere).
    with pytest.raises(kopf.AdmissionError):
        run_review(
            server, operation="UPDATE", old=body, teacher={"endpoint": {**ENDPOINT, "model": "n"}}
        )
    # The operator's own writes (fleet members, served Teachers) come from objects already
    # reviewed for their authors: validated, but no question asked.
    server = Server()
    run_review(
        server, teacher={"endpoint": ENDPOINT}, user="system:serviceaccount:kakugo-system:kakugo"
    )
    assert server.asked == []
    with pytest.raises(kopf.AdmissionError) as refused:
        run_review(server, language="Klingon", user="system:serviceaccount:kakugo-system:kakugo")
    assert refused.value.code == 422 and str(refused.value).startswith("spec.language: ")


def test_review_fails_closed_when_it_cannot_ask() -> None:
    async def broken(namespace: str, userinfo: Any, q: Question) -> bool:
        raise RuntimeError("the API server is away")

    with pytest.raises(kopf.AdmissionError) as refused:
        run_review(broken, teacher={"endpoint": ENDPOINT})
    assert refused.value.code == 500
    assert "could not check the permissions of 'alice'" in str(refused.value)


def test_review_images_and_arguments() -> None:
    serve = {**SERVE, "hfTokenSecretRef": None}
    with pytest.raises(kopf.AdmissionError) as refused:
        run_review(Server(), teacher={"serve": serve}, storage={"uri": "s3://bucket/runs"})
    assert [p.split(":")[0] for p in str(refused.value).split("; ")] == [
        "spec.teacher.serve.image",
        "spec.teacher.serve.extraArgs",
    ]
    run_review(
        Server({("alice", admission.CREATE_PODS)}),
        teacher={"serve": serve},
        storage={"uri": "s3://bucket/runs"},
    )
    allowed = {**serve, "image": "registry.test/vllm:1", "extraArgs": ["--enable-prefix-caching"]}
    server = Server()
    run_review(server, teacher={"serve": allowed}, storage={"uri": "s3://bucket/runs"})
    assert server.asked == []


def test_subject_access_review_carries_the_whole_user(monkeypatch: pytest.MonkeyPatch) -> None:
    from kakugo_operator import k8s

    sent: list[tuple[str, str, Any]] = []

    async def call(method: str, path: str, body: Any = None, **_: Any) -> Any:
        sent.append((method, path, body))
        return {**body, "status": {"allowed": True}}

    monkeypatch.setattr(k8s, "call", call)
    user = {"username": "alice", "uid": "42", "groups": ["team", "system:authenticated"]}
    user["extra"] = {"scopes": ["a"]}  # type: ignore[assignment]
    assert asyncio.run(webhook.subject_access("team", user, Question("get", "secrets", "k")))
    ((method, path, body),) = sent
    assert method == "POST"
    assert path == "/apis/authorization.k8s.io/v1/namespaces/team/localsubjectaccessreviews"
    assert body["kind"] == "LocalSubjectAccessReview"
    assert body["spec"] == {
        "user": "alice",
        "uid": "42",
        "groups": ["team", "system:authenticated"],
        "extra": {"scopes": ["a"]},
        "resourceAttributes": {
            "namespace": "team",
            "verb": "get",
            "group": "",
            "resource": "secrets",
            "name": "k",
        },
    }


# ------------------------------------------------------------------ certificates


def _handshake(tls: webhook.Tls, cadata: bytes, host: str) -> x509.Certificate:
    """Serve `tls` on a free port and connect as the API server would (verifying)."""

    async def run() -> bytes:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=tls.context)
        port = server.sockets[0].getsockname()[1]
        client = ssl.create_default_context(cadata=cadata.decode())
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname=host
            )
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            return bytes(der)
        finally:
            server.close()
            await server.wait_closed()

    return x509.load_der_x509_certificate(asyncio.run(run()))


def test_own_certificate_is_trusted_and_renewed_under_the_same_ca() -> None:
    settings = OperatorSettings(
        webhook_hosts=("kakugo-webhook.ns.svc", "127.0.0.1"), webhook_cert_lifetime_seconds=3000
    )
    start = datetime.now(UTC) - timedelta(seconds=2500)  # made a while ago, still valid
    tls = webhook.Tls(settings, now=start)
    assert tls.ca_pem is not None and tls.ca_bundle == base64.b64encode(tls.ca_pem).decode()
    first = _handshake(tls, tls.ca_pem, "kakugo-webhook.ns.svc")
    assert _handshake(tls, tls.ca_pem, "127.0.0.1").serial_number == first.serial_number
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls, tls.ca_pem, "elsewhere.example")
    with pytest.raises(ssl.SSLCertVerificationError):  # another operator's CA
        _handshake(tls, webhook.Tls(settings).ca_pem or b"", "127.0.0.1")
    # Renewed at two thirds of its lifetime, in place: same context, same CA.
    assert tls.renew_at is not None
    assert timedelta(seconds=1990) < tls.renew_at - start < timedelta(seconds=2010)
    assert tls.refresh(start + timedelta(seconds=1000)) is False
    assert tls.refresh() is True  # now: past two thirds
    second = _handshake(tls, tls.ca_pem, "127.0.0.1")
    assert second.serial_number != first.serial_number
    assert second.issuer == first.issuer


def test_certificate_files_are_reloaded_when_they_change(tmp_path: Path) -> None:
    issuer = webhook.Tls(OperatorSettings(webhook_hosts=("127.0.0.1",)))
    assert issuer.ca_pem is not None

    def write(serial_hint: str) -> None:
        now = datetime.now(UTC)
        cert, key = webhook.make_serving(
            issuer._ca, issuer._ca_key, ("127.0.0.1", serial_hint), now, timedelta(hours=1)
        )
        from cryptography.hazmat.primitives import serialization

        (tmp_path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / "tls.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    write("a.example")
    tls = webhook.Tls(OperatorSettings(webhook_cert_dir=str(tmp_path)))
    assert tls.ca_bundle is None  # cert-manager's injector writes the caBundle
    first = _handshake(tls, issuer.ca_pem, "a.example")
    assert tls.refresh() is False
    write("b.example")
    assert tls.refresh() is True
    second = _handshake(tls, issuer.ca_pem, "b.example")
    assert second.serial_number != first.serial_number
    (tmp_path / "tls.key").write_text("half-written")  # mid-update: keep serving the old
    assert tls.refresh() is False
    assert _handshake(tls, issuer.ca_pem, "b.example").serial_number == second.serial_number
    with pytest.raises(RuntimeError, match="webhook certificate"):
        webhook.Tls(OperatorSettings(webhook_cert_dir=str(tmp_path / "missing")))


# ------------------------------------------------------------------ served by the operator

CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


def admission_review(
    obj: dict[str, Any], user: str, operation: str = "CREATE", **extra: Any
) -> dict:
    plural = {"LanguageModel": "languagemodels", "LanguageFleet": "languagefleets"}[obj["kind"]]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "kakugo.io", "version": "v1alpha1", "kind": obj["kind"]},
            "resource": {"group": "kakugo.io", "version": "v1alpha1", "resource": plural},
            "operation": operation,
            "namespace": NS,
            "name": obj["metadata"]["name"],
            "userInfo": {"username": user, "uid": "1", "groups": ["system:authenticated"]},
            "object": obj,
            **extra,
        },
    }


@pytest.fixture
def webhook_env(monkeypatch: pytest.MonkeyPatch, operator_env: dict[str, str]) -> int:
    port = int(operator_env["KAKUGO_WEBHOOK_PORT"])
    monkeypatch.setenv("KAKUGO_WEBHOOK_CONFIGURATION", "kakugo-test")
    monkeypatch.setenv("KAKUGO_WEBHOOK_CHECK_SECONDS", "0.5")
    monkeypatch.setenv("KAKUGO_ADMISSION_TRUSTED_USERS", "system:serviceaccount:kakugo:op")
    monkeypatch.setattr(Emulator, "permissions", {"bob": {("get", "secrets", None)}})
    return port


def test_the_operator_serves_the_webhook(cluster: Api, webhook_env: int) -> None:
    port = webhook_env

    def readyz() -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{METRICS_PORT}/readyz")
        except httpx.HTTPError:  # not listening yet
            return None

    op = Operator().start()
    try:

        def health() -> Any:
            try:
                return httpx.get(op.liveness).json()["kakugo"]["webhook"]
            except (httpx.HTTPError, ValueError, KeyError):  # not up yet
                return None

        # Serving, but not ready while the configuration's caBundle is not its CA (there is
        # no configuration yet). Kopf keeps a probe's result for 10 s.
        stale = {"serving": True, "ready": False, "caBundle": "stale"}
        wait_for(lambda: health() == stale, timeout=60, what="the webhook serving")
        assert readyz().text == "waiting for: webhook\n"
        cluster.http.post(
            CONFIGURATIONS,
            json={
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "kakugo-test"},
                "webhooks": [{"name": "validate.kakugo.io", "clientConfig": {"url": "x"}}],
            },
        ).raise_for_status()

        def ca() -> bytes | None:
            config = cluster.http.get(f"{CONFIGURATIONS}/kakugo-test").json()
            bundle = config["webhooks"][0]["clientConfig"].get("caBundle")
            return base64.b64decode(bundle) if bundle else None

        cadata = wait_for(ca, timeout=60, what="the caBundle")
        wait_for(lambda: readyz().status_code == 200, timeout=60, what="ready")
        # The API server's view: HTTPS trusted through the caBundle.
        client = httpx.Client(verify=ssl.create_default_context(cadata=cadata.decode()))
        url = f"https://127.0.0.1:{port}{webhook.PATH}"

        def answer(review: dict[str, Any]) -> dict[str, Any]:
            r = client.post(url, json=review)
            r.raise_for_status()
            assert r.json()["response"]["uid"] == review["request"]["uid"]
            return r.json()["response"]

        lm = language_model("attack", teacher={"endpoint": ENDPOINT})
        refused = answer(admission_review(lm, "alice"))
        assert refused["allowed"] is False and refused["status"]["code"] == 403
        assert refused["status"]["message"].startswith(
            'spec.teacher.endpoint.apiKeySecretRef: User "alice" cannot get resource "secrets"'
        )
        assert answer(admission_review(lm, "bob"))["allowed"] is True
        invalid = language_model(
            "bad", training={"device": "cuda"}, resources={"train": {"gpus": 0}}
        )
        refused = answer(admission_review(invalid, "bob"))
        assert refused["status"]["code"] == 422
        assert refused["status"]["message"].startswith("spec.resources.train.gpus: is 0")
        # Deletes and the status subresource pass; so does the operator's own write.
        assert answer(admission_review(invalid, "alice", "DELETE", oldObject=invalid))["allowed"]
        status = admission_review(
            invalid, "alice", "UPDATE", oldObject=invalid, subResource="status"
        )
        assert answer(status)["allowed"] is True
        assert answer(admission_review(lm, "system:serviceaccount:kakugo:op"))["allowed"] is True
        # A fleet: its template's Secret is its author's to read.
        template = {k: v for k, v in lm["spec"].items() if k != "language"}
        fleet = {
            "apiVersion": "kakugo.io/v1alpha1",
            "kind": "LanguageFleet",
            "metadata": {"name": "west", "namespace": NS},
            "spec": {"languages": [{"language": "Ewe"}], "template": template},
        }
        refused = answer(admission_review(fleet, "alice"))
        assert refused["status"]["message"].startswith(
            "spec.template.teacher.endpoint.apiKeySecretRef: "
        )
        assert answer(admission_review(fleet, "bob"))["allowed"] is True
        # A stale caBundle (say, a chart re-applied) is put back.
        stale = {"url": "x", "caBundle": base64.b64encode(b"other").decode()}
        cluster.http.patch(
            f"{CONFIGURATIONS}/kakugo-test",
            content=json.dumps(
                {"webhooks": [{"name": "validate.kakugo.io", "clientConfig": stale}]}
            ),
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()
        assert ca() == b"other"
        wait_for(lambda: ca() == cadata, timeout=60, what="the caBundle restored")
    finally:
        op.stop()
