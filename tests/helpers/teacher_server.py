"""A scriptable OpenAI-compatible teacher server for tests, with fault injection.

Plain asyncio (no web framework), so it can do what real servers and proxies do when they
misbehave: drop a connection without answering, send a truncated JSON body, stall past
the client's timeout. Runs in a background thread on 127.0.0.1 and a free port::

    from tests.helpers.teacher_server import TeacherServer, FaultPlan, Fault, chat_response

    with TeacherServer(responder=lambda body: "Ẹ kú àárọ̀", faults=FaultPlan(at={0: "500"})) as srv:
        client = TeacherClient(srv.url, "any-model")
        ...
        assert srv.count == 2

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``,
``GET /stats`` (counters, for the benchmark), and the Batch API: ``POST /v1/files``
(multipart, purpose ``batch``), ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
``GET /v1/batches`` (newest first, ``limit``/``after``) and ``GET /v1/batches/{id}``. The
model name is never checked.

A batch moves one step per poll: validating, in_progress, then (unless
``srv.batch_faults.hold`` keeps it in progress) completed, or expired when
:class:`BatchFaults` says so. Its lines are answered by the responder when it completes,
in an order that is not the file's; :class:`BatchFaults` turns lines into error lines.
``srv.batch_lines`` counts the lines submitted per ``custom_id``, ``srv.batch_answered``
the lines answered (billed) per ``custom_id``.

A *responder* is ``(body: dict) -> str | dict | Fault`` (may be async):

* a ``str`` is the assistant content (``finish_reason`` "stop");
* a ``dict`` with ``choices`` is a full response (``usage``/``id``/... filled in if missing);
* any other ``dict`` is the message: ``content`` plus optionally ``reasoning_content`` /
  ``reasoning``, and the choice's ``finish_reason`` and the response's ``usage``;
* a :class:`Fault` injects that fault for this request (a plain string is always content).

Run it as its own process (the benchmark does)::

    python -m tests.helpers.teacher_server --latency 0.2 --content-chars 1500 --reasoning-chars 1500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import json
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAULT_KINDS",
    "BatchFaults",
    "Fault",
    "FaultPlan",
    "TeacherServer",
    "chat_response",
    "count_words",
    "echo_responder",
    "harmony",
]

#: Fault kinds the server can inject.
FAULT_KINDS = (
    "500",  # HTTP 500 with an OpenAI-style error body
    "502",
    "503",
    "429",  # HTTP 429 with Retry-After (Fault.retry_after, default "0")
    "400",  # HTTP 400: not retryable
    "http",  # any status: Fault.status
    "timeout",  # stall Fault.sleep seconds (default: the server's timeout_sleep), then answer
    "length",  # a normal answer cut short: finish_reason "length"
    "bad_json",  # HTTP 200 with a truncated JSON body
    "no_choices",  # HTTP 200 with "choices": []
    "drop",  # close the connection without answering
    "raw",  # send Fault.body verbatim with Fault.status (default 200): gateways' odd bytes
)

Responder = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    ``retry_after`` is sent verbatim (seconds or an HTTP-date) with 429 (and with 503 or
    ``http`` when not "0"); ``sleep`` is how long ``timeout`` stalls; ``status`` is the
    status of an ``http`` or ``raw`` fault; ``message`` replaces the error body's message;
    ``body`` is what a ``raw`` fault sends, byte for byte (e.g. JSON with escaped slashes).
    """

    kind: str
    retry_after: float | str | None = "0"
    sleep: float | None = None
    status: int | None = None
    message: str | None = None
    body: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {', '.join(FAULT_KINDS)}")


def _fault(f: Fault | str) -> Fault:
    return f if isinstance(f, Fault) else Fault(f)


def _body_digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class FaultPlan:
    """Which requests fail, and how.

    * ``at``: arrival index (0-based, over all chat requests) → fault;
    * ``rates``: fault → fraction of requests. The draw is a hash of (``seed``, request
      body, how many times this body was seen before), so it does not depend on arrival
      order: the same requests fail on every run, whatever the concurrency;
    * ``max_per_body``: at most this many rate-drawn faults for one distinct body, so its
      retries eventually succeed (``None``: no limit);
    * ``when``: ``(index, body, attempt_of_body) -> Fault | str | None``, for anything else.
    """

    at: Mapping[int, Fault | str] = field(default_factory=dict)
    rates: Mapping[Fault | str, float] = field(default_factory=dict)
    seed: int = 0
    max_per_body: int | None = None
    when: Callable[[int, dict[str, Any], int], Fault | str | None] | None = None
    _seen: dict[str, int] = field(default_factory=dict, repr=False)
    _drawn: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if sum(self.rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")

    def pick(self, index: int, body: dict[str, Any]) -> Fault | None:
        digest = _body_digest(body)
        nth = self._seen.get(digest, 0)
        self._seen[digest] = nth + 1
        if index in self.at:
            return _fault(self.at[index])
        if self.when is not None:
            chosen = self.when(index, body, nth)
            if chosen is not None:
                return _fault(chosen)
        if not self.rates:
            return None
        if self.max_per_body is not None and self._drawn.get(digest, 0) >= self.max_per_body:
            return None
        h = hashlib.sha256(f"{self.seed}|{nth}|{digest}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        acc = 0.0
        for f, rate in self.rates.items():
            acc += rate
            if u < acc:
                self._drawn[digest] = self._drawn.get(digest, 0) + 1
                return _fault(f)
        return None


# --------------------------------------------------------------------------- responses


def count_words(text: str | None) -> int:
    """The server's stand-in for a tokenizer: whitespace-separated words."""
    return len(text.split()) if text else 0


def harmony(reasoning: str, final: str) -> str:
    """Raw harmony text as a server without a reasoning parser returns it."""
    return f"analysis{reasoning}assistantfinal{final}"


def chat_response(
    content: str | None,
    *,
    reasoning: str | None = None,
    reasoning_field: str = "reasoning_content",
    finish_reason: str | None = "stop",
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    model: str = "teacher",
) -> dict[str, Any]:
    """A complete chat-completions response body."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message[reasoning_field] = reasoning
    if completion_tokens is None:
        completion_tokens = count_words(content) + count_words(reasoning)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens or 0,
            "completion_tokens": completion_tokens,
            "total_tokens": (prompt_tokens or 0) + completion_tokens,
        },
    }


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    total = 0
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            c = m.get("content")
            total += count_words(c if isinstance(c, str) else json.dumps(c))
    return total


def echo_responder(body: dict[str, Any]) -> str:
    """Default responder: echoes the last user message."""
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return f"echo: {m.get('content')}"
    return "echo:"


def _complete(result: Any, body: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a responder's return value into a full response body."""
    model = body.get("model") if isinstance(body.get("model"), str) else "teacher"
    if isinstance(result, str):
        resp = chat_response(result, model=model)
    elif isinstance(result, Mapping) and "choices" in result:
        resp = dict(result)
        resp.setdefault("id", f"chatcmpl-{uuid.uuid4().hex[:24]}")
        resp.setdefault("object", "chat.completion")
        resp.setdefault("created", int(time.time()))
        resp.setdefault("model", model)
        if "usage" not in resp:
            msg = (resp["choices"][0] or {}).get("message", {}) if resp["choices"] else {}
            done = count_words(msg.get("content")) + count_words(
                msg.get("reasoning_content") or msg.get("reasoning")
            )
            resp["usage"] = {"prompt_tokens": 0, "completion_tokens": done}
    elif isinstance(result, Mapping):
        message = {k: v for k, v in result.items() if k not in ("finish_reason", "usage")}
        message.setdefault("role", "assistant")
        resp = chat_response(None, model=model)
        resp["choices"][0]["message"] = message
        resp["choices"][0]["finish_reason"] = result.get("finish_reason", "stop")
        resp["usage"]["completion_tokens"] = count_words(message.get("content")) + count_words(
            message.get("reasoning_content") or message.get("reasoning")
        )
        if "usage" in result:
            resp["usage"] = dict(result["usage"])
    else:
        raise TypeError(f"responder returned {type(result).__name__}")
    usage = resp["usage"]
    if not usage.get("prompt_tokens"):
        usage["prompt_tokens"] = _prompt_tokens(body)
    usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    return resp


# --------------------------------------------------------------------------- HTTP


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""


@dataclass
class BatchFaults:
    """What goes wrong in batches.

    * ``hold``: while True, batches stay in progress (a stage waits; the test stops it);
    * ``line``: ``(custom_id, body, nth) -> "500" | "400" | "error" | None`` per line,
      ``nth`` counting this custom id's earlier lines: ``"500"``/``"400"`` answer the line
      in the error file with that status, ``"error"`` with an error object and no response;
    * ``expire``: ordinals (0-based, in creation order) of batches that expire after
      answering only the first half of their lines;
    * ``fail``: ordinals of batches that fail validation (no line answered).
    """

    hold: bool = False
    line: Callable[[str, dict[str, Any], int], str | None] | None = None
    expire: frozenset[int] = frozenset()
    fail: frozenset[int] = frozenset()


class _BadRequest(Exception):
    pass


def _parse_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body from ``buf[start:]``: (body, end offset), or None if incomplete."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError as e:
            raise _BadRequest("bad chunk size") from e
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # optional trailers, then a blank line
            return (bytes(out), end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests on it are answered in order."""

    def __init__(self, server: TeacherServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.pending: deque[_Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        # A client that gave up (timeout) must not keep counting as in flight.
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._parse()
        except _BadRequest:
            self._write(400, b'{"error":{"message":"malformed HTTP request"}}', close=True)
            return
        if self.pending and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve())

    def _parse(self) -> None:
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError as e:
                raise _BadRequest(lines[0]) from e
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                parsed = _parse_chunked(buf, end + 4)
                if parsed is None:
                    return
                body, stop = parsed
            else:
                n = int(headers.get("content-length") or 0)
                if len(buf) < end + 4 + n:
                    return
                body, stop = bytes(buf[end + 4 : end + 4 + n]), end + 4 + n
            del buf[:stop]
            path, _, query = target.partition("?")
            self.pending.append(_Request(method, path, headers, body, query))

    async def _serve(self) -> None:
        try:
            while self.pending:
                req = self.pending.popleft()
                keep = await self.server._handle(req, self)
                if not keep or req.headers.get("connection", "").lower() == "close":
                    if self.transport is not None:
                        self.transport.close()
                    return
        finally:
            self.task = None

    def _write(
        self,
        status: int,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if close:
            head.append("Connection: close")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        if close:
            self.transport.close()


def _error(message: str, type_: str = "server_error", code: int | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


class TeacherServer:
    """An OpenAI-compatible chat server in a background thread (see the module docstring).

    ``latency``: seconds every chat request waits before its answer (the benchmark's fixed
    per-request latency). ``api_key``: when set, requests without ``Authorization: Bearer
    <api_key>`` get 401. ``record=False`` keeps no request bodies (long benchmarks).
    ``timeout_sleep``: how long a ``timeout`` fault stalls unless the fault says otherwise.
    Attributes may be changed while it runs (``srv.faults = FaultPlan(...)``).
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        faults: FaultPlan | None = None,
        latency: float = 0.0,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_sleep: float = 30.0,
        record: bool = True,
        model_name: str = "teacher",
    ) -> None:
        self.responder: Responder = responder or echo_responder
        self.faults = faults or FaultPlan()
        self.latency = latency
        self.api_key = api_key
        self.host = host
        self.port = port
        self.timeout_sleep = timeout_sleep
        self.record = record
        self.model_name = model_name
        #: Bodies of chat requests, in arrival order (when ``record``).
        self.requests: list[dict[str, Any]] = []
        #: The Authorization header of each chat request (None when absent).
        self.authorizations: list[str | None] = []
        #: (arrival index, fault kind) of every injected fault.
        self.injected: list[tuple[int, str]] = []
        #: Tokens of every answer sent with a usage field (what a provider would bill).
        self.served_prompt_tokens = 0
        self.served_completion_tokens = 0
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        #: The Batch API: uploaded files, batches (by id, in creation order), and counters.
        self.batch_faults = BatchFaults()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.uploads = 0
        self.batch_lines: Counter[str] = Counter()
        self.batch_answered: Counter[str] = Counter()
        self._batch_inputs: dict[str, list[dict[str, Any]]] = {}
        self._line_seen: Counter[str] = Counter()
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients: ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    async def start_async(self) -> None:
        """Start serving on the running loop (for use inside an existing event loop)."""
        self._loop = asyncio.get_running_loop()
        # A deep backlog: a client opening 1,000+ connections at once must not hit SYN drops
        # (each costs a 1 s retransmit and would make the server look slow).
        self._server = await self._loop.create_server(
            lambda: _Connection(self), self.host, self.port, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_async(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None

    def start(self) -> TeacherServer:
        """Start in a background thread; returns once the port is bound."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as e:
                failure.append(e)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop_async())
                tasks = asyncio.all_tasks(loop)
                for t in tasks:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="teacher-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = None

    def __enter__(self) -> TeacherServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget recorded requests and counters (not the fault plan's memory of bodies)."""
        self.requests.clear()
        self.authorizations.clear()
        self.injected.clear()
        self.served_prompt_tokens = self.served_completion_tokens = 0
        self.count = 0
        self.max_in_flight = self.in_flight

    def stats(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "connections": len(self._connections),
            # Process CPU: meaningful when the server runs in its own process (benchmark).
            "cpu_seconds": time.process_time(),
            "faults": len(self.injected),
        }

    # ---- handling

    async def _handle(self, req: _Request, conn: _Connection) -> bool:
        """Answer one request; return False when the connection must close."""
        path = req.path.rstrip("/")
        if req.method == "GET" and path in ("/health", "/v1/health"):
            conn._write(200, b'{"status":"ok"}')
        elif req.method == "GET" and path == "/v1/models":
            conn._write(
                200,
                json.dumps(
                    {
                        "object": "list",
                        "data": [
                            {"id": self.model_name, "object": "model", "owned_by": "kakugo-tests"}
                        ],
                    }
                ).encode(),
            )
        elif req.method == "GET" and path == "/stats":
            conn._write(200, json.dumps(self.stats()).encode())
        elif req.method == "POST" and path == "/stats/reset":
            self.reset()
            conn._write(200, b"{}")
        elif req.method == "POST" and path == "/v1/chat/completions":
            return await self._chat(req, conn)
        elif path.startswith(("/v1/files", "/v1/batches")):
            if self.api_key is not None and req.headers.get("authorization") != (
                f"Bearer {self.api_key}"
            ):
                conn._write(401, _error("invalid API key", "invalid_request_error", 401))
            else:
                status, body = await self._batch_api(req, path)
                conn._write(status, body)
        else:
            conn._write(404, _error(f"no route {req.method} {req.path}", "not_found"))
        return True

    async def _chat(self, req: _Request, conn: _Connection) -> bool:
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            conn._write(
                400, _error(f"request body is not a JSON object: {e}", "invalid_request_error")
            )
            return True
        index = self.count
        self.count += 1
        auth = req.headers.get("authorization")
        if self.record:
            self.requests.append(body)
            self.authorizations.append(auth)
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            conn._write(401, _error("invalid API key", "invalid_request_error", 401))
            return True
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fault = self.faults.pick(index, body)
            if self.latency:
                await asyncio.sleep(self.latency)
            result: Any = None
            if fault is None:
                try:
                    result = self.responder(body)
                    if inspect.isawaitable(result):
                        result = await result
                except Exception as e:
                    conn._write(500, _error(f"responder failed: {type(e).__name__}: {e}"))
                    return True
                if isinstance(result, Fault):
                    fault = result
            if fault is not None:
                self.injected.append((index, fault.kind))
                return await self._inject(fault, body, conn)
            self._answer(conn, _complete(result, body))
            return True
        finally:
            self.in_flight -= 1

    # ---- the Batch API

    async def _batch_api(self, req: _Request, path: str) -> tuple[int, bytes]:
        parts = path.split("/")[2:]  # ["files", ...] or ["batches", ...]
        if req.method == "POST" and parts == ["files"]:
            return self._upload(req)
        if (
            req.method == "GET"
            and len(parts) == 3
            and parts[0] == "files"
            and parts[2] == "content"
        ):
            data = self.files.get(parts[1])
            return (200, data) if data is not None else (404, _error("no such file", "not_found"))
        if req.method == "POST" and parts == ["batches"]:
            return self._create_batch(req)
        if req.method == "GET" and parts == ["batches"]:
            return 200, json.dumps(self._list_batches(req.query)).encode()
        if req.method == "GET" and len(parts) == 2 and parts[0] == "batches":
            batch = self.batches.get(parts[1])
            if batch is None:
                return 404, _error("no such batch", "not_found")
            await self._advance(batch)
            return 200, json.dumps(batch).encode()
        return 404, _error(f"no route {req.method} {req.path}", "not_found")

    def _upload(self, req: _Request) -> tuple[int, bytes]:
        ctype = req.headers.get("content-type", "")
        if "boundary=" not in ctype:
            return 400, _error("expected multipart/form-data", "invalid_request_error")
        boundary = ctype.split("boundary=", 1)[1].strip().strip('"').encode()
        fields: dict[str, bytes] = {}
        filename = None
        for part in req.body.split(b"--" + boundary)[1:]:
            if part.startswith(b"--"):
                break
            head, _, content = part.partition(b"\r\n\r\n")
            disposition = head.decode("latin-1")
            name = disposition.split('name="', 1)[1].split('"', 1)[0]
            if 'filename="' in disposition:
                filename = disposition.split('filename="', 1)[1].split('"', 1)[0]
            fields[name] = content[:-2] if content.endswith(b"\r\n") else content
        if fields.get("purpose") != b"batch" or "file" not in fields:
            return 400, _error("expected purpose=batch and a file", "invalid_request_error")
        self.uploads += 1
        file_id = f"file-{uuid.uuid4().hex[:12]}"
        self.files[file_id] = fields["file"]
        info = {
            "id": file_id,
            "object": "file",
            "bytes": len(fields["file"]),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": "batch",
        }
        return 200, json.dumps(info).encode()

    def _create_batch(self, req: _Request) -> tuple[int, bytes]:
        try:
            ask = json.loads(req.body)
            data = self.files[ask["input_file_id"]]
            lines = [json.loads(line) for line in data.splitlines() if line.strip()]
        except (ValueError, KeyError, TypeError) as e:
            return 400, _error(f"bad batch request: {e!r}", "invalid_request_error")
        ids = [line.get("custom_id") for line in lines]
        if len(set(ids)) != len(ids) or ask.get("endpoint") != "/v1/chat/completions":
            return 400, _error("duplicate custom_id or wrong endpoint", "invalid_request_error")
        if any(line.get("url") != ask["endpoint"] for line in lines):
            return 400, _error("a line's url is not the batch's endpoint", "invalid_request_error")
        batch_id = f"batch_{uuid.uuid4().hex[:12]}"
        self.batch_lines.update(ids)
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": ask["endpoint"],
            "input_file_id": ask["input_file_id"],
            "completion_window": ask.get("completion_window"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "ordinal": len(self.batches),
        }
        self.batches[batch_id] = batch
        self._batch_inputs[batch_id] = lines
        return 200, json.dumps(batch).encode()

    def _list_batches(self, query: str) -> dict[str, Any]:
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        limit = int(params.get("limit") or 20)
        newest = list(reversed(self.batches.values()))
        if params.get("after"):
            ids = [b["id"] for b in newest]
            newest = newest[ids.index(params["after"]) + 1 :] if params["after"] in ids else []
        page = newest[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(newest) > limit,
        }

    async def _advance(self, batch: dict[str, Any]) -> None:
        faults = self.batch_faults
        if batch["status"] == "validating":
            batch["status"] = "failed" if batch["ordinal"] in faults.fail else "in_progress"
            return
        if batch["status"] != "in_progress" or faults.hold:
            return
        lines = self._batch_inputs[batch["id"]]
        answered = lines
        if batch["ordinal"] in faults.expire:
            answered = lines[: len(lines) // 2]
        output, errors = [], []
        for line in lines:
            cid = line["custom_id"]
            if line not in answered:
                errors.append(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex[:12]}",
                        "custom_id": cid,
                        "response": None,
                        "error": {"code": "batch_expired", "message": "not answered in time"},
                    }
                )
                continue
            nth = self._line_seen[cid]
            self._line_seen[cid] += 1
            fault = faults.line(cid, line["body"], nth) if faults.line else None
            if fault is not None:
                errors.append(self._error_line(cid, fault))
                continue
            result = self.responder(line["body"])
            if inspect.isawaitable(result):
                result = await result
            resp = _complete(result, line["body"])
            usage = resp["usage"]
            self.served_prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.served_completion_tokens += int(usage.get("completion_tokens") or 0)
            self.batch_answered[cid] += 1
            output.append(
                {
                    "id": f"batch_req_{uuid.uuid4().hex[:12]}",
                    "custom_id": cid,
                    "response": {"status_code": 200, "request_id": "req", "body": resp},
                    "error": None,
                }
            )
        # Not in the input's order: a client must match lines by custom_id.
        rng = random.Random(batch["id"])
        rng.shuffle(output)
        rng.shuffle(errors)
        for key, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{uuid.uuid4().hex[:12]}"
                self.files[file_id] = "".join(
                    json.dumps(r, ensure_ascii=False) + "\n" for r in rows
                ).encode()
                batch[key] = file_id
        batch["status"] = "expired" if batch["ordinal"] in faults.expire else "completed"
        batch["request_counts"] = {
            "total": len(lines),
            "completed": len(output),
            "failed": len(errors),
        }

    @staticmethod
    def _error_line(cid: str, fault: str) -> dict[str, Any]:
        line: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": cid}
        if fault == "error":
            line.update(response=None, error={"code": "server_error", "message": "injected"})
        else:
            status = int(fault)
            body = json.loads(_error(f"injected {status}"))
            line.update(response={"status_code": status, "body": body}, error=None)
        return line

    def _answer(self, conn: _Connection, resp: dict[str, Any]) -> None:
        usage = resp.get("usage") or {}
        self.served_prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.served_completion_tokens += int(usage.get("completion_tokens") or 0)
        conn._write(200, json.dumps(resp, ensure_ascii=False).encode())

    async def _inject(self, fault: Fault, body: dict[str, Any], conn: _Connection) -> bool:
        kind = fault.kind
        if kind in ("500", "502", "503", "400", "http"):
            status = (fault.status or 500) if kind == "http" else int(kind)
            # Servers may ask for a pause on 503 too; 429 always carries Retry-After below.
            headers = None
            if kind in ("503", "http") and fault.retry_after not in (None, "0"):
                headers = {"Retry-After": str(fault.retry_after)}
            conn._write(status, _error(fault.message or f"injected {status}"), headers=headers)
        elif kind == "429":
            headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            message = fault.message or "rate limited (injected)"
            conn._write(429, _error(message, "rate_limit_error", 429), headers=headers)
        elif kind == "timeout":
            await asyncio.sleep(self.timeout_sleep if fault.sleep is None else fault.sleep)
            self._answer(conn, _complete(echo_responder(body), body))
        elif kind == "length":
            result = self.responder(body)
            if inspect.isawaitable(result):
                result = await result
            resp = _complete(result if not isinstance(result, Fault) else "…", body)
            resp["choices"][0]["finish_reason"] = "length"
            msg = resp["choices"][0]["message"]
            if isinstance(msg.get("content"), str):
                msg["content"] = msg["content"][: max(1, len(msg["content"]) // 2)]
            self._answer(conn, resp)
        elif kind == "bad_json":
            conn._write(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
        elif kind == "no_choices":
            conn._write(
                200,
                json.dumps(
                    {
                        "id": "chatcmpl-empty",
                        "object": "chat.completion",
                        "choices": [],
                        "usage": {},
                    }
                ).encode(),
            )
        elif kind == "drop":
            if conn.transport is not None:
                conn.transport.abort()
            return False
        elif kind == "raw":
            conn._write(fault.status or 200, fault.body or b"")
        return True


# --------------------------------------------------------------------------- standalone


def _fixed_responder(content_chars: int, reasoning_chars: int) -> Responder:
    # Realistic sizes without per-request work: the body is built once.
    sentence = "ọ̀rọ̀ àti èdè yorùbá ni a ń kọ́ lónìí. "

    def text(n: int) -> str:
        return (sentence * (n // len(sentence) + 1))[:n]

    message = {"content": text(content_chars)}
    if reasoning_chars:
        message["reasoning_content"] = text(reasoning_chars)
    return lambda body: message


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--content-chars", type=int, default=0, help="0: echo the prompt")
    p.add_argument("--reasoning-chars", type=int, default=0)
    p.add_argument("--api-key-env", default=None, help="require the key in this variable")
    args = p.parse_args(argv)
    import os

    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    responder = (
        _fixed_responder(args.content_chars, args.reasoning_chars)
        if args.content_chars
        else echo_responder
    )
    server = TeacherServer(
        responder,
        latency=args.latency,
        host=args.host,
        port=args.port,
        record=False,
        api_key=os.environ.get(args.api_key_env) if args.api_key_env else None,
    )

    async def serve() -> None:
        await server.start_async()
        print(f"URL {server.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop_async()

    asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
