"""A small Hugging Face Hub on loopback for the publish tests (aiohttp, background thread).

It implements the part of the Hub's HTTP API that `huggingface_hub`'s `create_repo`,
`create_branch`, `repo_info` and `create_commit` call, as read in huggingface_hub 2.4's
hf_api.py, _commit_api.py and lfs.py:

- `POST /api/repos/create` (409 with the URL when the repo exists),
- `POST /api/validate-yaml` (a README's metadata must parse),
- `GET /api/{type}s/{repo}[/revision/{rev}]` (the head commit),
- `POST /api/{type}s/{repo}/branch/{branch}`,
- `POST /api/{type}s/{repo}/preupload/{rev}`: upload mode per file and the oid the path
  has on the branch (git blob sha1 for regular files, sha256 for LFS ones), which the
  client compares with its own to drop unchanged files,
- `POST /{prefix}{repo}.git/info/lfs/objects/batch`: upload and verify actions, none for an
  object the server already stores,
- `PUT /lfs/{oid}` (the content must hash to the oid) and `POST /lfs-verify/{oid}`,
- `POST /api/{type}s/{repo}/commit/{rev}`: NDJSON of a header, base64 `file`s and
  `lfsFile`s; refused (and nothing committed) when an LFS object was never uploaded.

It never advertises Xet; the tests switch huggingface_hub to plain LFS (see
test_publish.py). Every request is logged in `requests`; anything else gets a 404 and is
logged in `unknown`. `fail_lfs_puts` makes the next LFS PUTs fail with a 403.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web

#: Paths whose files the Hub stores in LFS regardless of size (part of .gitattributes).
LFS_SUFFIXES = (".safetensors", ".parquet", ".bin", ".pt", ".png")
LFS_SIZE = 10 * 1024  # small, so that tests exercise both modes with small files


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    description: str
    files: dict[str, bytes]  # the whole tree after the commit (LFS files: their content)


@dataclass
class Repo:
    kind: str
    repo_id: str
    private: bool
    branches: dict[str, list[Commit]] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content
    lfs_paths: set[str] = field(default_factory=set)

    def head(self, branch: str) -> Commit | None:
        commits = self.branches.get(branch)
        return commits[-1] if commits else None


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.lfs_puts: list[str] = []  # oids uploaded, in order
        self.commit_payloads: list[list[dict[str, Any]]] = []
        self.fail_lfs_puts = 0
        #: (path, Authorization header) of every request.
        self.tokens: list[tuple[str, str | None]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---- helpers for tests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def repo(self, kind: str, repo_id: str) -> Repo:
        return self.repos[(kind, repo_id)]

    def commits(self, kind: str, repo_id: str, branch: str = "main") -> list[Commit]:
        return self.repos[(kind, repo_id)].branches.get(branch, [])

    def tree(self, kind: str, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        head = self.repo(kind, repo_id).head(branch)
        return dict(head.files) if head else {}

    # ---- server

    def _prefix(self, kind: str) -> str:
        return "" if kind == "model" else f"{kind}s/"

    def _find(self, request: web.Request) -> Repo:
        kind = request.match_info["type"].removesuffix("s")
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "Repository not found"}),
                content_type="application/json",
                headers={"X-Error-Code": "RepoNotFound"},
            )
        return repo

    def _commit(
        self, repo: Repo, branch: str, title: str, desc: str, files: dict[str, bytes]
    ) -> Commit:
        parent = repo.head(branch)
        seed = f"{parent.oid if parent else ''}\0{title}\0" + "\0".join(
            f"{p}:{hashlib.sha256(c).hexdigest()}" for p, c in sorted(files.items())
        )
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), title, desc, files)
        repo.branches.setdefault(branch, []).append(commit)
        return commit

    @web.middleware
    async def _log(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        self.tokens.append((request.path, request.headers.get("Authorization")))
        return await handler(request)

    async def create_repo(self, request: web.Request) -> web.Response:
        body = await request.json()
        kind = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}"
        url = f"{self.url}/{self._prefix(kind)}{repo_id}"
        if (kind, repo_id) in self.repos:
            return web.json_response(
                {"error": "You already created this repo", "url": url}, status=409
            )
        repo = Repo(kind, repo_id, body.get("visibility") == "private")
        self.repos[(kind, repo_id)] = repo
        attributes = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
        self._commit(repo, "main", "initial commit", "", {".gitattributes": attributes.encode()})
        return web.json_response({"url": url, "name": repo_id})

    async def validate_yaml(self, request: web.Request) -> web.Response:
        body = await request.json()
        content: str = body["content"]
        if content.startswith("---\n"):
            end = content.find("\n---\n", 4)
            try:
                meta = yaml.safe_load(content[4:end])
            except yaml.YAMLError as exc:
                return web.json_response({"errors": [{"message": str(exc)}]}, status=400)
            if not isinstance(meta, dict):
                return web.json_response({"errors": [{"message": "not a mapping"}]}, status=400)
        return web.json_response({"errors": [], "warnings": []})

    async def repo_info(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        branch = request.match_info.get("rev", "main")
        head = repo.head(branch)
        if head is None:
            return web.json_response(
                {"error": f"Invalid rev id: {branch}"},
                status=404,
                headers={"X-Error-Code": "RevisionNotFound"},
            )
        return web.json_response(
            {
                "id": repo.repo_id,
                "sha": head.oid,
                "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(head.files)],
            }
        )

    async def create_branch(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        branch = request.match_info["branch"]
        if branch in repo.branches:
            return web.json_response({"error": "Reference already exists"}, status=409)
        main = repo.head("main")
        repo.branches[branch] = [main] if main else []
        return web.json_response({})

    def _mode(self, path: str, size: int, sample: bytes) -> str:
        if path.endswith(LFS_SUFFIXES) or size > LFS_SIZE or b"\0" in sample:
            return "lfs"
        return "regular"

    async def preupload(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        head = repo.head(request.match_info["rev"])
        tree = head.files if head else {}
        out = []
        for f in (await request.json())["files"]:
            path = f["path"]
            mode = self._mode(path, f["size"], base64.b64decode(f["sample"]))
            oid = None
            if path in tree:
                content = tree[path]
                oid = (
                    hashlib.sha256(content).hexdigest()
                    if path in repo.lfs_paths
                    else git_blob_sha1(content)
                )
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return web.json_response({"files": out, "commitOid": head.oid if head else None})

    async def lfs_batch(self, request: web.Request) -> web.Response:
        kind = request.match_info.get("type", "models").removesuffix("s")
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            return web.json_response({"message": "Repository not found"}, status=404)
        body = await request.json()
        objects = []
        for obj in body["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in repo.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs/{kind}/{repo_id}/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/lfs-verify/{kind}/{repo_id}/{obj['oid']}"},
                }
            objects.append(entry)
        return web.json_response({"transfer": "basic", "objects": objects})

    async def lfs_put(self, request: web.Request) -> web.Response:
        if self.fail_lfs_puts > 0:
            self.fail_lfs_puts -= 1
            return web.json_response({"message": "injected upload failure"}, status=403)
        repo = self.repos[
            (
                request.match_info["kind"],
                f"{request.match_info['org']}/{request.match_info['name']}",
            )
        ]
        oid = request.match_info["oid"]
        data = await request.read()
        if hashlib.sha256(data).hexdigest() != oid:
            return web.json_response({"message": "content does not match its oid"}, status=400)
        repo.lfs[oid] = data
        self.lfs_puts.append(oid)
        return web.Response(status=200)

    async def lfs_verify(self, request: web.Request) -> web.Response:
        repo = self.repos[
            (
                request.match_info["kind"],
                f"{request.match_info['org']}/{request.match_info['name']}",
            )
        ]
        body = await request.json()
        oid = request.match_info["oid"]
        if body.get("oid") != oid or oid not in repo.lfs or len(repo.lfs[oid]) != body.get("size"):
            return web.json_response({"message": "object not stored"}, status=404)
        return web.json_response({})

    async def commit(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        branch = request.match_info["rev"]
        lines = [json.loads(line) for line in (await request.read()).splitlines() if line.strip()]
        self.commit_payloads.append(lines)
        header = next(item["value"] for item in lines if item["key"] == "header")
        head = repo.head(branch)
        files = dict(head.files) if head else {}
        lfs_paths = set(repo.lfs_paths)
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs_paths.discard(value["path"])
            elif item["key"] == "lfsFile":
                content = repo.lfs.get(value["oid"])
                if content is None or len(content) != value["size"]:
                    missing = f"LFS object {value['oid']} of {value['path']} was never uploaded"
                    return web.json_response({"error": missing}, status=400)
                files[value["path"]] = content
                lfs_paths.add(value["path"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
        repo.lfs_paths = lfs_paths
        commit = self._commit(repo, branch, header["summary"], header.get("description", ""), files)
        repo_url = f"{self.url}/{self._prefix(repo.kind)}{repo.repo_id}"
        return web.json_response(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{repo_url}/commit/{commit.oid}",
            }
        )

    async def fallback(self, request: web.Request) -> web.Response:
        self.unknown.append((request.method, request.path))
        return web.json_response({"error": f"not implemented: {request.path}"}, status=404)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._log], client_max_size=1 << 30)
        repo = "/api/{type:models|datasets}/{org}/{name}"
        app.router.add_post("/api/repos/create", self.create_repo)
        app.router.add_post("/api/validate-yaml", self.validate_yaml)
        app.router.add_post(repo + "/preupload/{rev:.+}", self.preupload)
        app.router.add_post(repo + "/commit/{rev:.+}", self.commit)
        app.router.add_post(repo + "/branch/{branch:.+}", self.create_branch)
        app.router.add_get(repo + "/revision/{rev:.+}", self.repo_info)
        app.router.add_get(repo, self.repo_info)
        app.router.add_post(
            "/{type:datasets}/{org}/{name}.git/info/lfs/objects/batch", self.lfs_batch
        )
        app.router.add_post("/{org}/{name}.git/info/lfs/objects/batch", self.lfs_batch)
        app.router.add_put("/lfs/{kind}/{org}/{name}/{oid}", self.lfs_put)
        app.router.add_post("/lfs-verify/{kind}/{org}/{name}/{oid}", self.lfs_verify)
        app.router.add_route("*", "/{tail:.*}", self.fallback)
        return app

    def start(self) -> HubServer:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self._runner = web.AppRunner(self._app())
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            ready.set()
            loop.run_forever()
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="hub-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
