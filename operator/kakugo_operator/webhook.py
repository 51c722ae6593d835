"""The validating admission webhook: served by the operator, through Kopf.

- **Reviews** (`review`, registered with `@kopf.on.validate` in handlers.py for
  LanguageModels, Teachers and LanguageFleets, CREATE and UPDATE): an update that leaves
  the spec alone passes (finalizers, labels, annotations); otherwise the object must be
  valid (`admission.validation_errors`: what the operator would call `InvalidSpec`, 422)
  and, unless the request comes from a trusted user (the operator's own ServiceAccount),
  its author must be allowed to use what it names (`admission.problems`, 403), which is
  asked of the API server with one LocalSubjectAccessReview per question, for the
  requesting user (username, uid, groups, extra).
- **Serving** (`WebhookServer`, Kopf's custom-server protocol: `settings.admission.server`):
  HTTPS on `webhookPort`, one route per handler id (`/validate`). The chart's
  ValidatingWebhookConfiguration points at it (its Service, or a URL); Kopf does not manage
  that configuration (`settings.admission.managed` stays None): the chart owns its rules
  and its failurePolicy, and the operator needs no right to create webhook configurations.
- **Certificates** (`Tls`): either the operator's own (a CA made at start, kept in memory
  only, and a serving certificate it signs, renewed in place at two thirds of its lifetime
  without restarting the server or changing the CA), whose CA the operator writes into
  the configuration's `caBundle` (`webhookConfiguration`) and keeps there; or files from
  outside (`webhookCertDir`: cert-manager's Secret, whose CA cert-manager's injector writes
  into the `caBundle`), reloaded in place when they change.
- **Readiness**: the webhook is ready when it listens and, with its own certificate, the
  configuration carries its CA (`WebhookState.ready`: a readiness gate of `/readyz`).
  Kopf's `/healthz` (liveness) connects to it over TLS.

A stale `caBundle` (an operator restart makes a new CA), a stopped operator or a webhook
that is not ready makes the API server fail the call, and with `failurePolicy: Fail` the
request is refused, never admitted unchecked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp.web
import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kakugo_operator import admission, k8s
from kakugo_operator.settings import OperatorSettings

logger = logging.getLogger("kakugo.webhook")

#: The handler id: Kopf routes `/<id>` to it; the chart's configuration calls that path.
HANDLER_ID = "validate"
PATH = f"/{HANDLER_ID}"
OPERATIONS: tuple[Literal["CREATE", "UPDATE"], ...] = ("CREATE", "UPDATE")
WEBHOOK_CONFIGURATIONS = "admissionregistration.k8s.io/v1"
CA_LIFETIME = timedelta(days=3650)
#: Backdating of notBefore: clocks of the API server and the operator may differ.
CLOCK_SKEW = timedelta(minutes=5)

Ask = Callable[[str, Mapping[str, Any], admission.Question], Awaitable[bool]]


# ------------------------------------------------------------------ reviews


async def subject_access(
    namespace: str, userinfo: Mapping[str, Any], question: admission.Question
) -> bool:
    """Ask the API server whether the requesting user may do `question` in `namespace`:
    a LocalSubjectAccessReview (namespaced: the chart grants it with a Role in every
    watched namespace)."""
    spec: dict[str, Any] = {
        "user": userinfo.get("username") or "",
        "resourceAttributes": question.attributes(namespace),
    }
    for key in ("uid", "groups", "extra"):
        if userinfo.get(key):
            spec[key] = userinfo[key]
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": namespace},
        "spec": spec,
    }
    path = k8s.api_path("authorization.k8s.io/v1", "localsubjectaccessreviews", namespace)
    result = await k8s.call("POST", path, body)
    return bool(((result or {}).get("status") or {}).get("allowed"))


async def review(
    *,
    plural: str,
    operation: str | None,
    namespace: str | None,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    userinfo: Mapping[str, Any],
    settings: OperatorSettings,
    ask: Ask = subject_access,
) -> None:
    """Allow (return) or refuse (raise `kopf.AdmissionError`) one request."""
    kind = admission.KINDS.get(plural)
    if kind is None or operation not in OPERATIONS or new is None:
        return  # deletes (and anything else) are never blocked
    if operation == "UPDATE" and not admission.spec_changed(old, new):
        return
    meta = new.get("metadata") or {}
    namespace = namespace or meta.get("namespace") or ""
    name = meta.get("name") or meta.get("generateName") or ""
    spec = new.get("spec")
    errors = admission.validation_errors(kind, name, namespace, spec, settings)
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)
    user = str(userinfo.get("username") or "")
    if user in settings.admission_trusted_users:
        return
    allow = admission.Allowlist.of(settings)
    found = admission.uses(kind, spec)
    asked = admission.questions(found, allow)
    try:
        results = await asyncio.gather(*(ask(namespace, userinfo, q) for q in asked))
    except Exception as exc:  # fail closed, saying why
        logger.warning("SubjectAccessReview failed for %s: %r", user, exc)
        raise kopf.AdmissionError(
            f"the Kakugo operator could not check the permissions of {user!r}: {_short(exc)}",
            code=500,
        ) from None
    refused = admission.problems(
        found, dict(zip(asked, results, strict=True)), user, namespace, allow
    )
    if refused:
        raise kopf.AdmissionError("; ".join(refused), code=403)


def _short(exc: Exception) -> str:
    """An API error in one line: its status and the server's message."""
    status = getattr(exc, "status", None)
    if status is None:
        return repr(exc)
    try:
        message = json.loads(getattr(exc, "body", None) or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {status} {getattr(exc, 'reason', '')}: {message or ''}".strip(": ")


# ------------------------------------------------------------------ certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def make_ca(now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA for the webhook's serving certificates (ECDSA P-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("kakugo-operator webhook CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_serving(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: tuple[str, ...],
    now: datetime,
    lifetime: timedelta,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A serving certificate for `hosts` (DNS names and IP addresses), signed by `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "kakugo-operator"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate and key into the context (the ssl module reads only files: a
    private temporary file, removed at once)."""
    fd, path = tempfile.mkstemp(prefix="kakugo-webhook-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem + cert_pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


class Tls:
    """The serving certificate and its SSL context. The context is built once and its
    certificate replaced in place, so a renewal never restarts the server: a handshake
    uses the certificate the context holds when it starts."""

    def __init__(self, settings: OperatorSettings, now: datetime | None = None) -> None:
        self.settings = settings
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.cert_dir = Path(settings.webhook_cert_dir) if settings.webhook_cert_dir else None
        self.lifetime = timedelta(seconds=settings.webhook_cert_lifetime_seconds)
        self.ca_pem: bytes | None = None
        self.not_after: datetime | None = None
        self.renew_at: datetime | None = None
        self.serial: int | None = None
        self._files_digest: str | None = None
        now = now or datetime.now(UTC)
        if self.cert_dir is None:
            self._ca, self._ca_key = make_ca(now)
            self.ca_pem = _pem(self._ca)
        self.refresh(now)

    @property
    def ca_bundle(self) -> str | None:
        """The CA the API server must trust (base64 PEM), for the operator's own."""
        return base64.b64encode(self.ca_pem).decode("ascii") if self.ca_pem else None

    def refresh(self, now: datetime | None = None) -> bool:
        """Renew the operator's own certificate when due, or reload changed files; True
        when the served certificate changed."""
        now = now or datetime.now(UTC)
        if self.cert_dir is not None:
            return self._reload_files()
        if self.renew_at is not None and now < self.renew_at:
            return False
        cert, key = make_serving(
            self._ca, self._ca_key, self.settings.webhook_hosts, now, self.lifetime
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _load_chain(self.context, _pem(cert), key_pem)
        self._served(cert, now)
        logger.info(
            "webhook serving certificate %x for %s, valid until %s",
            cert.serial_number,
            ", ".join(self.settings.webhook_hosts),
            self.not_after,
        )
        return True

    def _served(self, cert: x509.Certificate, now: datetime) -> None:
        self.serial = cert.serial_number
        self.not_after = cert.not_valid_after_utc
        start = max(cert.not_valid_before_utc + CLOCK_SKEW, now - self.lifetime)
        self.renew_at = start + (self.not_after - start) * 2 / 3

    def _reload_files(self) -> bool:
        assert self.cert_dir is not None
        crt, key = self.cert_dir / "tls.crt", self.cert_dir / "tls.key"
        try:
            cert_pem, key_pem = crt.read_bytes(), key.read_bytes()
        except OSError as exc:
            if self._files_digest is None:
                raise RuntimeError(f"webhook certificate: {exc}") from None
            logger.warning("webhook certificate files unreadable, keeping the old: %s", exc)
            return False
        digest = hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest()
        if digest == self._files_digest:
            return False
        try:
            _load_chain(self.context, cert_pem, key_pem)
        except ssl.SSLError as exc:  # halfway through an update: try again next time
            if self._files_digest is None:
                raise
            logger.warning("webhook certificate files not loadable yet: %s", exc)
            return False
        self._files_digest = digest
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.serial, self.not_after = cert.serial_number, cert.not_valid_after_utc
        logger.info("webhook serving certificate %x loaded from %s", self.serial, self.cert_dir)
        return True


# ------------------------------------------------------------------ the configuration


async def ensure_ca_bundle(name: str, ca_bundle: str) -> bool:
    """Make every webhook of the ValidatingWebhookConfiguration `name` trust `ca_bundle`
    (a JSON patch of the entries that differ, guarded by the resourceVersion and the
    entries' names). False when the configuration is missing or has no webhooks."""
    path = k8s.api_path(WEBHOOK_CONFIGURATIONS, "validatingwebhookconfigurations", None, name)
    try:
        config = await k8s.call("GET", path)
    except k8s.NotFound:
        logger.warning("ValidatingWebhookConfiguration %s not found (yet)", name)
        return False
    webhooks = (config or {}).get("webhooks") or []
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(webhooks):
        if (hook.get("clientConfig") or {}).get("caBundle") != ca_bundle:
            ops += [
                {"op": "test", "path": f"/webhooks/{i}/name", "value": hook.get("name")},
                {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle},
            ]
    if ops:
        if version := (config.get("metadata") or {}).get("resourceVersion"):
            ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": version})
        await k8s.call("PATCH", path, ops, content_type="application/json-patch+json")
        logger.info("caBundle of ValidatingWebhookConfiguration %s set", name)
    return bool(webhooks)


# ------------------------------------------------------------------ the server


@dataclass
class WebhookState:
    """What the probes read: set by the server's task, read by /readyz (a thread)."""

    host: str = "127.0.0.1"
    port: int = 0
    serving: bool = False
    ca_current: bool | None = None  # None: not managed (cert-manager's injector is)
    last_error: str | None = None
    #: Set while the webhook can answer the API server: the readiness gate.
    ready: threading.Event = field(default_factory=threading.Event)

    def update(self) -> None:
        if self.serving and self.ca_current is not False:
            self.ready.set()
        else:
            self.ready.clear()


class WebhookServer:
    """HTTPS for Kopf's admission handlers (Kopf's server protocol: called with Kopf's
    `WebhookFn`, it yields the client configuration once it listens). After that it
    keeps the certificate renewed and the configuration's caBundle current."""

    def __init__(
        self, settings: OperatorSettings, state: WebhookState, tls: Tls | None = None
    ) -> None:
        self.settings = settings
        self.state = state
        self.tls = tls or Tls(settings)

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            try:
                data = await request.json()
            except ValueError as exc:
                raise aiohttp.web.HTTPBadRequest(reason=f"not JSON: {exc}") from None
            try:
                response = await fn(
                    data,
                    webhook=request.match_info.get("id") or None,
                    headers=dict(request.headers),
                    sslpeer={},
                )
            except Exception as exc:  # a bad review request (unknown resource, no user)
                logger.warning("admission request not served: %r", exc)
                raise aiohttp.web.HTTPBadRequest(reason=str(exc)[:200] or None) from None
            return aiohttp.web.json_response(response)

        # Old and new object of a big fleet fit easily; aiohttp's default is 1 MiB.
        app = aiohttp.web.Application(client_max_size=16 * 1024 * 1024)
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            port = self.settings.webhook_port
            site = aiohttp.web.TCPSite(
                runner, self.settings.webhook_address, port, ssl_context=self.tls.context
            )
            await site.start()
            address = self.settings.webhook_address
            self.state.host = "127.0.0.1" if address in ("", "0.0.0.0", "::") else address
            self.state.port, self.state.serving = port, True
            logger.info(
                "admission webhook listening on https://%s:%d", self.settings.webhook_address, port
            )
            config = kopf.WebhookClientConfig(
                url=f"https://{self.settings.webhook_hosts[0]}:{port}"
            )
            if self.tls.ca_bundle:
                config["caBundle"] = self.tls.ca_bundle
            await self.maintain()
            yield config
            while True:
                await asyncio.sleep(self.pause())
                await self.maintain()
        finally:
            self.state.serving = False
            self.state.update()
            await runner.cleanup()

    def pause(self) -> float:
        """Until the next check, or the renewal if sooner."""
        pause = self.settings.webhook_check_seconds
        if self.tls.renew_at is not None:
            until = (self.tls.renew_at - datetime.now(UTC)).total_seconds()
            pause = min(pause, max(until, 0.5))
        return pause

    async def maintain(self) -> None:
        """Renew or reload the certificate; keep the configuration's caBundle current."""
        try:
            self.tls.refresh()
        except Exception as exc:  # keep serving the certificate it has
            logger.warning("webhook certificate not renewed: %r", exc)
        name, bundle = self.settings.webhook_configuration, self.tls.ca_bundle
        if name and bundle:
            try:
                self.state.ca_current = await ensure_ca_bundle(name, bundle)
                self.state.last_error = None
            except Exception as exc:  # not allowed, conflict, API down: again next time
                self.state.ca_current = False
                self.state.last_error = repr(exc)
                logger.warning("caBundle of %s not updated: %r", name, exc)
        self.state.update()


class NoWebhookServer:
    """`webhookPort: 0`: Kopf needs a server for its admission handlers; this one never
    listens (nothing calls a webhook that no configuration names)."""

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        await asyncio.Event().wait()
        yield kopf.WebhookClientConfig()  # pragma: no cover - never reached


async def alive(state: WebhookState, timeout: float = 3.0) -> bool:
    """A TLS handshake with the webhook succeeds (liveness)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(state.host, state.port, ssl=context), timeout
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True
