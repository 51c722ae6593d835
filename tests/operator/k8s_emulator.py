"""The KMock Kubernetes emulator, with what KMock 0.8 lacks for Kopf, run on its own thread.

Fills uid, resourceVersion, creationTimestamp, generation, namespace and generateName on
create; bumps resourceVersion (and generation on spec changes) on patch; keeps a `/status`
patch to the status; adds `kind` to lists; loads the built-in resources and our CRDs into
discovery; serves Pod logs. Tests talk to it over HTTP (`Api`), like kubectl would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import httpx
import kmock
import yaml
from kmock._internal import apps, enums, rendering
from kmock._internal.k8s import KubernetesObjectNotFoundError

REPO = Path(__file__).resolve().parents[2]


class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator + metadata filling and status-subresource semantics."""

    _rv = itertools.count(1)
    logs: dict[tuple[str, str], str] = {}  # noqa: RUF012 - (namespace, pod) -> log text
    #: What LocalSubjectAccessReviews answer: user -> allowed (verb, resource, name) triples
    #: (name None: any name). Everything else is refused.
    permissions: dict[str, set[tuple[str, str, str | None]]] = {}  # noqa: RUF012
    by_agent: dict[str, int] = {}  # noqa: RUF012 - requests per client (User-Agent product)

    async def _handle(self, request: rendering.Request) -> Any:
        if str(request.url.path).endswith("/localsubjectaccessreviews"):
            return aiohttp.web.json_response(self._review(request))
        # KMock keeps every request and re-filters the whole history on each new one
        # (quadratic); nothing here asserts on that history, so keep only the current one.
        del self._requests[:-1]
        for payload in self._payloads:
            if getattr(payload, "_requests", None):
                payload._requests.clear()
        agent = str(request.headers.get("User-Agent", ""))
        Emulator.by_agent[agent.split("/")[0]] = Emulator.by_agent.get(agent.split("/")[0], 0) + 1
        action = request.action
        data = request.data if isinstance(request.data, dict) else None
        if action == enums.action.UPDATE and isinstance(request.data, list):
            # JSON patch: no optimistic concurrency here (KMock answers a failed `test`
            # with a 500 that Kopf would retry forever); bump resourceVersion.
            ops = [op for op in request.data if op.get("op") != "test"]
            ops.append(
                {"op": "replace", "path": "/metadata/resourceVersion", "value": str(next(self._rv))}
            )
            request.data[:] = ops
        if request.resource is not None and action is not None and data is not None:
            if action == enums.action.CREATE:
                meta = data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault(
                    "creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                )
                meta["resourceVersion"] = str(next(self._rv))
                meta.setdefault("generation", 1)
            elif action == enums.action.UPDATE:
                is_status = str(request.url.path).endswith("/status")
                if is_status:  # the status subresource changes nothing but status
                    for key in list(data):
                        if key != "status":
                            del data[key]
                else:
                    data.pop("status", None)
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = str(next(self._rv))
                if not is_status and "spec" in data:
                    current = self._current(request)
                    meta["generation"] = (
                        int((current or {}).get("metadata", {}).get("generation") or 1) + 1
                    )
        return await super()._handle(request)

    @staticmethod
    def _review(request: rendering.Request) -> dict[str, Any]:
        """A LocalSubjectAccessReview, answered from `Emulator.permissions`."""
        review = dict(request.data) if isinstance(request.data, dict) else {}
        spec = review.get("spec") or {}
        attrs = spec.get("resourceAttributes") or {}
        granted = Emulator.permissions.get(spec.get("user") or "", set())
        verb, resource = attrs.get("verb"), attrs.get("resource")
        allowed = (verb, resource, None) in granted or (
            verb,
            resource,
            attrs.get("name"),
        ) in granted
        return {**review, "status": {"allowed": allowed}}

    # KMock finds an object by scanning all of them (O(N) per request); with hundreds of
    # objects (the benchmark) that, not the operator, would be measured. Look up by key.
    def _lookup(
        self, request: rendering.Request, namespace: str | None = None, name: str | None = None
    ) -> Any:
        key = (request.resource, namespace or request.namespace, name or request.name)
        obj = self.objects[key] if key in self.objects else None  # noqa: SIM401 - no .get()
        if obj is None or obj.deleted:
            return None
        return obj

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        if request.name is None:
            return await super()._serve_fetch(request)
        obj = self._lookup(request)
        if obj is None:
            raise KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: rendering.Request) -> Any:
        meta = (request.data or {}).get("metadata", {})
        obj = self._lookup(request, meta.get("namespace"), meta.get("name"))
        return obj.raw if obj is not None else await super()._serve_create(request)

    async def _serve_update(self, request: rendering.Request) -> Any:
        key = (request.resource, request.namespace, request.name)
        if request.name is not None and key in self.objects:
            return self.objects[key].last.raw
        return await super()._serve_update(request)

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects:
            return dict(self.objects[key].raw)
        return None

    async def _serve_list(self, request: rendering.Request) -> Any:
        result = await super()._serve_list(request)
        res = request.resource
        kind = self.resources[res].kind if res is not None and res in self.resources else None
        result["kind"] = f"{kind or 'Object'}List"
        result["apiVersion"] = "v1"
        return result


#: Kueue's Workload (v1beta1), for the tests that play Kueue (tests/operator/test_kueue.py).
KUEUE_WORKLOADS = "kueue.x-k8s.io/v1beta1/workloads"


def load_resources(emu: Emulator) -> None:
    emu.resources.load_bundled()
    emu.resources[KUEUE_WORKLOADS] = {
        "kind": "Workload",
        "singular": "workload",
        "namespaced": True,
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        "shortnames": [],
        "subresources": ["status"],
    }
    for path in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            emu.resources[f"{spec['group']}/{version['name']}/{spec['names']['plural']}"] = {
                "kind": spec["names"]["kind"],
                "singular": spec["names"]["singular"],
                "namespaced": spec["scope"] == "Namespaced",
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                "shortnames": spec["names"].get("shortNames", []),
                "subresources": list(version.get("subresources", {})),
            }


class EmulatorThread:
    """The emulator on a background thread with its own event loop."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: Emulator | None = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="kmock")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        emu = Emulator()
        load_resources(emu)
        emu["get", re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log")] << self._log
        async with emu, apps.Server(emu) as server:
            self.emulator = emu
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def _log(self, request: rendering.Request) -> bytes:
        parts = str(request.url.path).split("/")
        return Emulator.logs.get((parts[4], parts[6]), "").encode()

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "kmock",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                    "users": [{"name": "kmock", "user": {"token": "test"}}],
                    "contexts": [
                        {"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}
                    ],
                }
            )
        )
        return path


PLURALS = {
    "LanguageModel": ("kakugo.io/v1alpha1", "languagemodels"),
    "Teacher": ("kakugo.io/v1alpha1", "teachers"),
    "Job": ("batch/v1", "jobs"),
    "Pod": ("v1", "pods"),
    "Event": ("v1", "events"),
    "ConfigMap": ("v1", "configmaps"),
    "Deployment": ("apps/v1", "deployments"),
    "Service": ("v1", "services"),
    "Workload": ("kueue.x-k8s.io/v1beta1", "workloads"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "LanguageFleet": ("kakugo.io/v1alpha1", "languagefleets"),
}


class Api:
    """kubectl for tests: create, get, list, merge-patch, delete over HTTP."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)
        self.requests = 0

    def path(
        self, kind: str, namespace: str | None, name: str | None = None, sub: str | None = None
    ) -> str:
        api_version, plural = PLURALS[kind]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        r = self.http.post(self.path(obj["kind"], meta.get("namespace", "default")), json=obj)
        r.raise_for_status()
        return r.json()

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        r = self.http.get(self.path(kind, namespace, name))
        return None if r.status_code == 404 else r.json()

    def list(self, kind: str, namespace: str | None = None, **labels: str) -> list[dict]:
        r = self.http.get(self.path(kind, namespace))
        r.raise_for_status()
        items = r.json()["items"]
        # KMock ignores label selectors: filter here.
        return [
            i
            for i in items
            if all(
                (i["metadata"].get("labels") or {}).get(k.replace("__", "/").replace("_", ".")) == v
                for k, v in labels.items()
            )
        ]

    def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        r = self.http.patch(
            self.path(kind, namespace, name, sub),
            content=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        r.raise_for_status()
        return r.json()

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.http.delete(self.path(kind, namespace, name))
