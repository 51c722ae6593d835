"""A small async wrapper over the Kubernetes client: dicts in, dicts out.

The official client is synchronous; calls run in threads so the operator's event loop
never blocks. A 409 on create means the object is already there: it is read back and
adopted, never treated as a failure (deterministic names make that safe). Any other
error of a create, patch or delete is a `Refused` naming the object, the verb and the API
server's own message, which the daemons put in the object's status and Events.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

_local = threading.local()
_generation = 0  # bumped by configure(): threads then build new clients


def configure() -> None:
    """In-cluster config, else the kubeconfig (KUBECONFIG), as Kopf's own login does."""
    global _generation
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        # Explicitly: the client reads KUBECONFIG only once, when it is imported.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    _generation += 1


def _client() -> kubernetes.client.ApiClient:
    # One client per thread: urllib3 pools are thread-safe, but the client's state is not.
    if getattr(_local, "generation", None) != _generation:
        if _generation == 0:
            configure()
        _local.client = kubernetes.client.ApiClient()
        _local.generation = _generation
    return _local.client


def api_path(
    api_version: str,
    plural: str,
    namespace: str | None,
    name: str | None = None,
    sub: str | None = None,
) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def _call(
    method: str,
    path: str,
    body: Any = None,
    content_type: str | None = None,
    query: list[tuple[str, Any]] | None = None,
    raw: bool = False,
) -> Any:
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    # Undecoded responses: we want plain dicts, not the client's model classes.
    result = _client().call_api(
        path,
        method,
        header_params=headers,
        body=body,
        query_params=query or [],
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _preload_content=False,
        _request_timeout=30,
    )
    text = result.data.decode("utf-8", errors="replace")
    return text if raw else json.loads(text or "null")


class NotFound(Exception):
    pass


#: Kinds by plural, for messages.
KINDS = {
    "configmaps": "ConfigMap",
    "deployments": "Deployment",
    "jobs": "Job",
    "languagefleets": "LanguageFleet",
    "languagemodels": "LanguageModel",
    "networkpolicies": "NetworkPolicy",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "pods": "Pod",
    "services": "Service",
    "teachers": "Teacher",
}


class Refused(Exception):
    """The API server refused to create, change or delete an object."""

    def __init__(self, verb: str, what: str, exc: ApiException):
        self.status = int(exc.status or 0)
        self.reason = str(exc.reason or "")
        try:
            body = json.loads(exc.body or "{}")
        except (TypeError, ValueError):
            body = {}
        detail = body.get("message") if isinstance(body, dict) else None
        self.message = str(detail or exc.body or exc.reason or "no message")
        if isinstance(body, dict) and body.get("reason"):
            self.reason = str(body["reason"])
        super().__init__(f"{verb} {what}: {self.status} {self.reason}: {self.message}")

    @property
    def permanent(self) -> bool:
        """The request itself is refused (invalid, forbidden, too large): sent again as
        it is, it is refused again. Server errors and throttling may pass."""
        return 400 <= self.status < 500 and self.status not in (408, 429)


def plural_of(kind: str) -> str:
    """The resource (plural) of a kind we create."""
    return next((p for p, k in KINDS.items() if k == kind), kind.lower() + "s")


def _what(plural: str, namespace: str | None, name: str, sub: str | None = None) -> str:
    kind = KINDS.get(plural, plural)
    where = f"{namespace}/{name}" if namespace else name
    return f"{sub} of {kind} {where}" if sub else f"{kind} {where}"


async def call(method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
    try:
        return await asyncio.to_thread(_call, method, path, body, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            raise NotFound(path) from exc
        raise


async def create(obj: dict[str, Any]) -> dict[str, Any]:
    """Create, or read back what is already there under that name (409 = adopt)."""
    meta = obj["metadata"]
    plural = plural_of(obj["kind"])
    path = api_path(obj["apiVersion"], plural, meta.get("namespace"))
    try:
        return await call("POST", path, obj)
    except ApiException as exc:
        if exc.status != 409:
            what = f"{obj['kind']} {meta.get('namespace')}/{meta['name']}"
            raise Refused("create", what, exc) from exc
        return await call("GET", f"{path}/{meta['name']}")


async def get(api_version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return await call("GET", api_path(api_version, plural, namespace, name))
    except NotFound:
        return None


async def list_objects(
    api_version: str, plural: str, namespace: str, label_selector: str | None = None
) -> list[dict[str, Any]] | None:
    """The objects of a kind in a namespace; None when the API server has no such kind."""
    query = [("labelSelector", label_selector)] if label_selector else []
    try:
        result = await call("GET", api_path(api_version, plural, namespace), query=query)
    except NotFound:
        return None
    return list((result or {}).get("items") or [])


async def merge_patch(
    api_version: str,
    plural: str,
    namespace: str,
    name: str,
    patch: dict[str, Any],
    sub: str | None = None,
) -> dict[str, Any] | None:
    try:
        return await call(
            "PATCH",
            api_path(api_version, plural, namespace, name, sub),
            patch,
            content_type="application/merge-patch+json",
        )
    except NotFound:
        return None
    except ApiException as exc:
        raise Refused("patch", _what(plural, namespace, name, sub), exc) from exc


async def delete(api_version: str, plural: str, namespace: str, name: str) -> None:
    try:
        await call(
            "DELETE",
            api_path(api_version, plural, namespace, name),
            {"propagationPolicy": "Background"},
        )
    except NotFound:
        pass
    except ApiException as exc:
        raise Refused("delete", _what(plural, namespace, name), exc) from exc


async def pod_log_tail(namespace: str, pod: str, lines: int) -> str:
    """The last lines of a Pod's log; empty when it cannot be read (Pod gone, no kubelet)."""
    try:
        text = await asyncio.wait_for(
            call(
                "GET",
                api_path("v1", "pods", namespace, pod, "log"),
                query=[("tailLines", lines)],
                raw=True,
            ),
            timeout=10,
        )
    except Exception:  # best effort: the message is complete without it
        return ""
    return str(text).strip()
