"""The teacher through an OpenAI-compatible Batch API: half the price, hours not seconds.

:class:`BatchTeacherClient` is a :class:`~kakugo_stages.teacher.TeacherClient`: the stages
call the same ``chat`` and ``reject``, and every answer goes through the same request
cache, ledger, parsing and reject accounting. Only how an answer is obtained differs:

* ``chat`` calls that miss the cache are queued; once no new request has come for
  ``linger`` seconds (the stage's wave of concurrent requests is all queued) or the queue
  fills a batch (``max_lines`` requests, ``max_bytes`` of JSONL), the queue is written as
  one JSONL file (``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
  "body"}`` per line, the body the synchronous client would send), uploaded
  (``POST /files``, purpose ``batch``) and made a batch (``POST /batches``, window 24 h);
* a batch is polled (``GET /batches/{id}``) every ``poll_seconds`` until it is completed,
  failed, expired or cancelled; then its output and error files are downloaded
  (``GET /files/{id}/content``) and each line is matched to its request by ``custom_id``,
  which is the request's cache key (recipe mistake 4: never by position);
* each answer is stored in the request cache, then the batch's record is closed, then the
  waiting ``chat`` calls get their answers. Error lines, non-200 lines and the lines an
  expired, failed or cancelled batch did not answer go into a later batch, at most
  ``max_retries`` times (then the request is rejected as the synchronous client rejects a
  request whose retries are spent); a 4xx line the synchronous client would not retry is
  rejected at once.

Resuming: each batch has a record on the store (``records``: the stage's
``_batches/<shard>/``) holding its request keys with their attempts, its input file id
(saved before the batch is created) and its batch id (saved before waiting). A restarted
client reads the records that are not closed: a request whose key is in one waits for
that batch again instead of being sent; a record with a file but no batch id (the process
stopped while creating the batch) looks for a batch made from that file among the
server's batches before creating one. So a request is paid once however often the stage
is stopped, and an answer that arrives for a request nobody asks any more still goes into
the cache for a later run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kakugo_stages.request_cache import CacheEntry, RequestCache
from kakugo_stages.store import ArtifactNotFound, ArtifactStore, StoreError
from kakugo_stages.teacher import (
    _RETRYABLE_4XX,
    ChatResult,
    TeacherClient,
    _error_body,
    _Failure,
    _Paid,
    _parse_retry_after,
    _status_label,
    _TransportDropped,
    _TransportTimeout,
    _Unparsable,
    parse_response,
    rejected_reason,
)

if TYPE_CHECKING:
    from kakugo_stages.spec import TeacherSettings

__all__ = ["BATCH_URL", "BatchRecord", "BatchTeacherClient", "make_teacher_client"]

log = logging.getLogger("kakugo.teacher.batch")

#: The endpoint every line of a batch names (chat completions, as the synchronous client).
BATCH_URL = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
#: Statuses after which a batch changes no more.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: How many pages of the server's batch list are searched for a batch made from a file.
_LIST_PAGES = 10
#: How long a downloaded result file's text may be kept in an error detail.
_DETAIL_CHARS = 300


@dataclass
class BatchRecord:
    """What the store keeps of one batch (``<records>/<name>.json``).

    ``lines``: custom id (the request's cache key) → attempt; ``input_file_id`` is saved
    before the batch is created, ``batch_id`` before waiting for it; ``closed`` once its
    answers are in the request cache (a closed record is never waited for again).
    """

    name: str
    lines: dict[str, int]
    input_file_id: str | None = None
    batch_id: str | None = None
    closed: bool = False
    status: str | None = None
    created: float = field(default_factory=time.time)
    outcome: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_file_id": self.input_file_id,
            "batch_id": self.batch_id,
            "closed": self.closed,
            "status": self.status,
            "created": self.created,
            "outcome": self.outcome,
            "lines": self.lines,
        }

    @classmethod
    def from_json(cls, value: Any) -> BatchRecord:
        if not isinstance(value, Mapping):
            raise ValueError("not a batch record")
        lines = value.get("lines")
        if not isinstance(value.get("name"), str) or not isinstance(lines, Mapping):
            raise ValueError("not a batch record")
        outcome = value.get("outcome")
        return cls(
            name=value["name"],
            lines={str(k): int(v) for k, v in lines.items()},
            input_file_id=_str_or_none(value.get("input_file_id")),
            batch_id=_str_or_none(value.get("batch_id")),
            closed=value.get("closed") is True,
            status=_str_or_none(value.get("status")),
            created=float(value.get("created") or 0),
            outcome=dict(outcome) if isinstance(outcome, Mapping) else {},
        )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class _ApiError(Exception):
    """A Batch API call failed for good (after retries); holds the failure."""

    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


@dataclass
class _Queued:
    attempt: int
    line: bytes


Outcome = ChatResult | _Failure


class BatchTeacherClient(TeacherClient):
    """A :class:`TeacherClient` that sends its requests through the Batch API (see the
    module docstring). ``records`` is where the batches' records live (one folder per
    shard: a client reattaches only to its own shard's batches); ``poll_seconds`` how often
    a batch is polled; ``max_lines``/``max_bytes`` bound one batch's input file;
    ``linger`` how long the queue waits for more requests before it is sent."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        records: ArtifactStore | None = None,
        poll_seconds: float = 60.0,
        max_lines: int = 50_000,
        max_bytes: int = 100_000_000,
        linger: float = 1.0,
        label: str = "teacher",
        say: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, model, **kwargs)
        #: Who is waiting (the stage and shard), in progress lines.
        self.label = label
        self._say_line = say or _stderr_line
        if not poll_seconds > 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        if max_lines < 1 or max_bytes < 1:
            raise ValueError("max_lines and max_bytes must be at least 1")
        self.batch_priced = True
        self.records = records
        self.poll_seconds = float(poll_seconds)
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.linger = max(0.0, float(linger))
        self._queue: dict[str, _Queued] = {}
        self._queue_bytes = 0
        self._last_arrival = 0.0
        self._dispatcher: asyncio.Task[None] | None = None
        # Requests waiting for an outcome, by custom id; several for identical requests.
        self._waiters: dict[str, list[asyncio.Future[Outcome]]] = {}
        # Requests in a batch that is not closed, by custom id.
        self._pending: dict[str, BatchRecord] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # Answers of closed batches that no request was waiting for (yet).
        self._orphans: dict[str, ChatResult] = {}
        self._loaded = False
        self._load_lock = asyncio.Lock()

    @classmethod
    def for_endpoint(
        cls,
        settings: TeacherSettings,
        *,
        base_url: str,
        model: str,
        cache: RequestCache | None,
        records: ArtifactStore | None,
        **kwargs: Any,
    ) -> BatchTeacherClient:
        """A batch client with the spec's poll interval and batch bounds."""
        endpoint = settings.endpoint
        if endpoint is not None:
            kwargs.setdefault("poll_seconds", endpoint.batch_poll_seconds)
            kwargs.setdefault("max_lines", endpoint.batch_max_requests)
            kwargs.setdefault("max_bytes", endpoint.batch_max_bytes)
        client = cls.from_settings(
            settings, base_url=base_url, model=model, cache=cache, records=records, **kwargs
        )
        assert isinstance(client, BatchTeacherClient)
        return client

    def __repr__(self) -> str:
        return f"BatchTeacherClient({self.base_url!r}, model={self.model!r})"

    def _say(self, message: str) -> None:
        # Waiting takes hours: say what is happening where `kubectl logs` shows it (the
        # stages configure no logging, so an INFO record would not).
        text = self._scrub(f"{self.label}: {message}")
        log.debug("%s", text)
        self._say_line(text)

    async def aclose(self) -> None:
        tasks = [t for t in (self._dispatcher, *self._watchers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            # A cancelled wait loses nothing: the batch is recorded and a rerun waits again.
            try:
                await task
            except (asyncio.CancelledError, Exception) as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    log.debug("batch task ended with %r", exc)
        self._watchers.clear()
        self._dispatcher = None
        await super().aclose()

    # ---- one request

    async def _obtain(
        self, key: str, attempt: int, body: dict[str, Any], paid: _Paid
    ) -> ChatResult:
        await self._load()
        tries = 0
        while True:
            tries += 1
            outcome, shared = await self._outcome(key, attempt, body)
            if isinstance(outcome, ChatResult):
                return dataclasses.replace(outcome, cached=True) if shared else outcome
            failure = outcome
            if not shared:
                paid.add_usage(failure.usage)
            if not failure.retryable or tries > self.max_retries:
                raise self._failed(key, failure, tries)
            # Back into the next batch: no backoff, a batch takes long enough.
            self._note_retry(failure.reason)
            log.debug("teacher request %s: %s in its batch; sent again", key[:12], failure.reason)

    async def _outcome(self, key: str, attempt: int, body: dict[str, Any]) -> tuple[Outcome, bool]:
        """The outcome of the request's next batch line, and whether it is another
        request's (an identical request already waiting: one line answers both)."""
        orphan = self._orphans.pop(key, None)
        if orphan is not None:
            return orphan, False
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, [])
        shared = bool(waiters)
        waiters.append(future)
        if not shared:
            record = self._pending.get(key)
            if record is not None:
                self._watch(record)  # sent by an earlier run, or earlier in this one
            else:
                self._enqueue(key, attempt, body)
        return await future, shared

    # ---- records on the store

    async def _load(self) -> None:
        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded:
                return
            records = await asyncio.to_thread(self._read_records)
            for record in records:
                for custom_id in record.lines:
                    self._pending[custom_id] = record
            if records:
                waiting = sum(len(r.lines) for r in records)
                self._say(
                    f"{len(records)} batch(es) with {waiting} request(s) from an earlier run "
                    "are not finished; their requests wait for them instead of being sent again"
                )
            self._loaded = True

    def _read_records(self) -> list[BatchRecord]:
        if self.records is None:
            return []
        out = []
        for name in sorted(self.records.list()):
            if not name.endswith(".json"):
                continue
            try:
                record = BatchRecord.from_json(self.records.read_json(name))
            except ArtifactNotFound:
                continue
            except (ValueError, TypeError) as exc:
                log.warning("batch record %s unreadable, ignored: %s", self.records.url(name), exc)
                continue
            if not record.closed:
                out.append(record)
        return out

    async def _save(self, record: BatchRecord) -> None:
        if self.records is None:
            return
        try:
            await asyncio.to_thread(
                self.records.write_json, f"{record.name}.json", record.to_json()
            )
        except StoreError as exc:
            # Without its record a restart would send these requests again: stop here.
            raise _ApiError(
                _Failure("batch_record", False, f"cannot record batch {record.name}: {exc}")
            ) from None

    # ---- queue → batches

    def _enqueue(self, key: str, attempt: int, body: dict[str, Any]) -> None:
        line = {"custom_id": key, "method": "POST", "url": BATCH_URL, "body": body}
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        self._queue[key] = _Queued(attempt, data)
        self._queue_bytes += len(data)
        self._last_arrival = time.monotonic()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    def _full(self) -> bool:
        return len(self._queue) >= self.max_lines or self._queue_bytes >= self.max_bytes

    async def _dispatch(self) -> None:
        while self._queue:
            # Wait for the stage's wave of requests to be queued: one batch, not many.
            while not self._full():
                quiet = time.monotonic() - self._last_arrival
                if quiet >= self.linger:
                    break
                await asyncio.sleep(self.linger - quiet)
            lines = self._take()
            try:
                await self._submit(lines)
            except Exception as exc:
                # A bug must reach the stage, not leave its requests waiting forever.
                self._fail_waiters(lines, exc)
                raise

    def _fail_waiters(self, keys: Any, exc: BaseException) -> None:
        for key in keys:
            for future in self._waiters.pop(key, []):
                if not future.done():
                    future.set_exception(exc)

    def _take(self) -> dict[str, _Queued]:
        taken: dict[str, _Queued] = {}
        size = 0
        for key, queued in self._queue.items():
            if taken and (len(taken) >= self.max_lines or size + len(queued.line) > self.max_bytes):
                break
            taken[key] = queued
            size += len(queued.line)
        for key in taken:
            del self._queue[key]
        self._queue_bytes -= size
        return taken

    async def _submit(self, lines: dict[str, _Queued]) -> None:
        record = BatchRecord(
            name=f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}",
            lines={key: q.attempt for key, q in lines.items()},
        )
        for key in lines:
            self._pending[key] = record
        data = b"".join(q.line for q in lines.values())
        try:
            record.input_file_id = await self._upload(record.name, data)
            # Before the batch is created: a restart finds the file and looks for its batch.
            await self._save(record)
            await self._create(record, suspect=False)
        except _ApiError as exc:
            log.warning("could not submit a batch of %d request(s): %s", len(lines), exc)
            # Nothing is known to run: these requests may go into another batch.
            await self._settle(record, {}, default=exc.failure, close=record.batch_id is None)
            return
        self.usage.batches += 1
        self.usage.batch_lines += len(lines)
        self._say(
            f"batch {record.batch_id}: {len(lines)} request(s), {len(data)} bytes submitted "
            f"(file {record.input_file_id})"
        )
        self._watch(record)

    async def _upload(self, name: str, data: bytes) -> str:
        boundary = f"kakugo-{uuid.uuid4().hex}"
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                "batch\r\n".encode(),
                f"--{boundary}\r\nContent-Disposition: form-data; "
                f'name="file"; filename="{name}.jsonl"\r\n'
                "Content-Type: application/jsonl\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        answer = await self._api_json(
            "POST", "/files", body, f"multipart/form-data; boundary={boundary}"
        )
        file_id = _str_or_none(answer.get("id"))
        if file_id is None:
            raise _ApiError(_Failure("batch_api", False, "the file upload answered no file id"))
        return file_id

    async def _create(self, record: BatchRecord, *, suspect: bool) -> None:
        """Create the batch of ``record``'s file, or adopt the one an earlier try created
        (``suspect``: a try may have created it without our knowing), and save its id."""
        assert record.input_file_id is not None
        batch_id = await self._find_batch(record.input_file_id) if suspect else None
        if batch_id is None:
            payload = {
                "input_file_id": record.input_file_id,
                "endpoint": BATCH_URL,
                "completion_window": COMPLETION_WINDOW,
            }
            data = json.dumps(payload).encode()
            # Not retried blindly: a lost answer may hide a created batch, which a second
            # POST would pay for again; the list is searched before each new try.
            tries = 0
            while True:
                tries += 1
                try:
                    answer = await self._api_json(
                        "POST", "/batches", data, "application/json", retries=0
                    )
                    break
                except _ApiError as exc:
                    if not exc.failure.retryable or tries > self.max_retries:
                        raise
                    await asyncio.sleep(self._backoff(tries, exc.failure.retry_after))
                    batch_id = await self._find_batch(record.input_file_id)
                    if batch_id is not None:
                        answer = {"id": batch_id}
                        break
            batch_id = _str_or_none(answer.get("id"))
            if batch_id is None:
                raise _ApiError(_Failure("batch_api", False, "batch creation answered no id"))
        record.batch_id = batch_id
        await self._save(record)

    async def _find_batch(self, input_file_id: str) -> str | None:
        after: str | None = None
        for _ in range(_LIST_PAGES):
            path = "/batches?limit=100" + (f"&after={after}" if after else "")
            page = await self._api_json("GET", path)
            data = page.get("data")
            if not isinstance(data, list):
                return None
            for batch in data:
                if isinstance(batch, dict) and batch.get("input_file_id") == input_file_id:
                    found = _str_or_none(batch.get("id"))
                    if found is not None:
                        self._say(f"found batch {found}, made from file {input_file_id}")
                        return found
            after = _str_or_none(page.get("last_id"))
            if not page.get("has_more") or after is None:
                return None
        return None

    # ---- waiting

    def _watch(self, record: BatchRecord) -> None:
        task = self._watchers.get(record.name)
        if task is None or task.done():
            loop = asyncio.get_running_loop()
            self._watchers[record.name] = loop.create_task(self._wait(record))

    async def _wait(self, record: BatchRecord) -> None:
        try:
            if record.batch_id is None:
                # A record saved between upload and creation (the process stopped there).
                await self._create(record, suspect=True)
            batch = await self._poll(record)
            outcomes = await self._results(record, batch)
        except Exception as exc:
            if not isinstance(exc, _ApiError):
                # A bug must reach the stage, not leave its requests waiting forever.
                self._watchers.pop(record.name, None)
                self._fail_waiters(record.lines, exc)
                raise
            failure = exc.failure
            # The batch may still run and be billed: the record stays open, so the requests
            # wait for it again (a retry here, or a rerun) rather than being sent twice.
            lost = failure.status == 404
            if lost:
                failure = dataclasses.replace(failure, reason="batch_lost", retryable=True)
            log.warning("batch %s of %s: %s", record.batch_id, record.name, failure.detail)
            await self._settle(record, {}, default=failure, close=lost)
            return
        status = str(batch.get("status"))
        unanswered = _Failure(
            f"batch_{status}" if status in TERMINAL else "batch_error",
            True,
            f"batch {record.batch_id} ended {status} before answering this request",
        )
        await self._settle(record, outcomes, default=unanswered, close=True, status=status)

    async def _poll(self, record: BatchRecord) -> dict[str, Any]:
        started = time.monotonic()
        last = None
        while True:
            try:
                batch = await self._api_json("GET", f"/batches/{record.batch_id}")
            except _ApiError as exc:
                if exc.failure.retryable:
                    # An outage while waiting hours: keep waiting, the batch runs on.
                    log.warning("batch %s: cannot poll (%s); trying again", record.batch_id, exc)
                    await asyncio.sleep(self.poll_seconds)
                    continue
                raise
            status = str(batch.get("status"))
            if status in TERMINAL:
                return batch
            counts = batch.get("request_counts")
            counts = counts if isinstance(counts, dict) else {}
            progress = (
                status,
                counts.get("completed"),
                counts.get("failed"),
                counts.get("total"),
            )
            if progress != last:
                self._say(
                    f"batch {record.batch_id}: {status}, {counts.get('completed', '?')} of "
                    f"{counts.get('total', len(record.lines))} done, "
                    f"{counts.get('failed', 0)} failed, waited "
                    f"{_elapsed(time.monotonic() - started)}"
                )
                last = progress
            await asyncio.sleep(self.poll_seconds)

    async def _results(self, record: BatchRecord, batch: Mapping[str, Any]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        for which in ("output_file_id", "error_file_id"):
            file_id = _str_or_none(batch.get(which))
            if file_id is None:
                continue
            text = await self._api_bytes("GET", f"/files/{file_id}/content")
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except ValueError:
                    log.warning(
                        "batch %s: line %d of file %s is not JSON", record.batch_id, number, file_id
                    )
                    continue
                custom_id = value.get("custom_id") if isinstance(value, dict) else None
                if not isinstance(custom_id, str) or custom_id not in record.lines:
                    log.warning(
                        "batch %s: file %s line %d answers no request of this batch",
                        record.batch_id,
                        file_id,
                        number,
                    )
                    continue
                outcome = self._line_outcome(value)
                # An answer wins over an error line for the same request.
                if custom_id not in outcomes or isinstance(outcome, ChatResult):
                    outcomes[custom_id] = outcome
        return outcomes

    def _line_outcome(self, value: Mapping[str, Any]) -> Outcome:
        value = self._redact.value(value)
        response = value.get("response")
        if isinstance(response, Mapping):
            status = response.get("status_code")
            body = response.get("body")
            if status == 200:
                if not isinstance(body, Mapping):
                    return _Failure("bad_json", True, "batch line body is not an object", 200)
                try:
                    return parse_response(body)
                except _Unparsable as exc:
                    return _Failure(
                        exc.reason, True, str(exc), 200, raw=dict(body), usage=body.get("usage")
                    )
            if isinstance(status, int):
                raw, detail = _error_body(json.dumps(body).encode(), self._redact)
                retryable = status in _RETRYABLE_4XX or status >= 500
                return _Failure(_status_label(status), retryable, detail, status, raw=raw)
        error = value.get("error")
        code = error.get("code") if isinstance(error, Mapping) else None
        message = error.get("message") if isinstance(error, Mapping) else None
        # OpenAI's codes for lines a batch never ran; anything else is one label (bounded).
        reason = code if code in ("batch_expired", "batch_cancelled") else "batch_error"
        detail = self._scrub(str(message or code or "the batch returned no answer"))
        raw_error = dict(error) if isinstance(error, Mapping) else None
        return _Failure(reason, True, detail[:_DETAIL_CHARS], raw=raw_error)

    async def _settle(
        self,
        record: BatchRecord,
        outcomes: Mapping[str, Outcome],
        *,
        default: _Failure,
        close: bool,
        status: str | None = None,
    ) -> None:
        """Store the answers, close the record (``close``), then give each waiting request
        its outcome (``default`` for those without one). In that order: once the record
        is closed a restart sends its requests again unless their answers are cached."""
        answers = {k: o for k, o in outcomes.items() if isinstance(o, ChatResult)}
        if self.cache is not None and answers:
            await asyncio.to_thread(self._store_answers, record, answers)
        if close and record.input_file_id is not None:  # else nothing was sent to record
            record.closed = True
            record.status = status
            record.outcome = {
                "answered": len(answers),
                "failed": len(record.lines) - len(answers),
            }
            try:
                await self._save(record)
            except _ApiError as exc:
                log.warning("%s", exc)
        for custom_id in record.lines:
            if self._pending.get(custom_id) is record:
                del self._pending[custom_id]
            outcome = outcomes.get(custom_id, default)
            waiters = self._waiters.pop(custom_id, [])
            for future in waiters:
                if not future.done():
                    future.set_result(outcome)
            if not waiters and isinstance(outcome, ChatResult):
                self._orphans[custom_id] = outcome
        if not close:
            # Still open: a later request for one of its keys waits for the batch again.
            for custom_id in record.lines:
                self._pending.setdefault(custom_id, record)
        self._watchers.pop(record.name, None)

    def _store_answers(self, record: BatchRecord, answers: Mapping[str, ChatResult]) -> None:
        assert self.cache is not None
        for custom_id, result in answers.items():
            entry = CacheEntry(
                result.raw,
                record.lines[custom_id],
                self.owner,
                {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                },
                rejected=None if result.ok else rejected_reason(result),
                batch=True,
            )
            self.cache.put_entry(custom_id, entry)

    # ---- HTTP

    async def _api_bytes(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        content_type: str | None = None,
        *,
        retries: int | None = None,
    ) -> bytes:
        """One Batch API call, retried as chat requests are; the body, scrubbed of the key."""
        headers = self._headers()
        headers["Accept"] = "*/*"
        if content_type is None:
            headers.pop("Content-Type", None)
        else:
            headers["Content-Type"] = content_type
        url = f"{self.base_url}{path}"
        limit = self.max_retries if retries is None else retries
        attempts = 0
        while True:
            attempts += 1
            try:
                resp = await self._transport.request(method, url, data, headers)
            except _TransportTimeout as exc:
                failure = _Failure("timeout", True, f"{method} {path}: no answer ({exc})")
            except _TransportDropped as exc:
                failure = _Failure(
                    "connection", True, f"{method} {path}: connection failed ({exc})"
                )
            else:
                body = self._scrub_bytes(resp.body)
                if 200 <= resp.status < 300:
                    return body
                raw, detail = _error_body(body, self._redact)
                failure = _Failure(
                    _status_label(resp.status),
                    resp.status in _RETRYABLE_4XX or resp.status >= 500,
                    f"{method} {path}: HTTP {resp.status}: {detail}",
                    resp.status,
                    raw=raw,
                    retry_after=_parse_retry_after(resp.retry_after, resp.retry_after_ms),
                )
            if not failure.retryable or attempts > limit:
                raise _ApiError(failure)
            await asyncio.sleep(self._backoff(attempts, failure.retry_after))

    async def _api_json(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        content_type: str | None = None,
        *,
        retries: int | None = None,
    ) -> dict[str, Any]:
        body = await self._api_bytes(method, path, data, content_type, retries=retries)
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            text = body.decode("utf-8", "replace")[:_DETAIL_CHARS]
            raise _ApiError(
                _Failure("bad_json", True, f"{method} {path}: not a JSON object: {text!r}")
            )
        return self._redact.value(value)


def _elapsed(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _stderr_line(text: str) -> None:
    print(f"[kakugo] {text}", file=sys.stderr, flush=True)


def make_teacher_client(
    settings: TeacherSettings,
    *,
    base_url: str,
    model: str,
    cache: RequestCache | None,
    records: ArtifactStore | None,
    api_key_env: str | None = None,
    label: str = "teacher",
    **kwargs: Any,
) -> TeacherClient:
    """The stages' teacher client: through the Batch API when ``teacher.endpoint.batch``
    is on (``records``: where its batches are recorded), else one request at a time. The
    one place that looks at the mode; both clients have the same interface."""
    endpoint = settings.endpoint
    if endpoint is not None and endpoint.batch:
        return BatchTeacherClient.for_endpoint(
            settings,
            base_url=base_url,
            model=model,
            cache=cache,
            records=records,
            api_key_env=api_key_env,
            label=label,
            **kwargs,
        )
    return TeacherClient.from_settings(
        settings, base_url=base_url, model=model, cache=cache, api_key_env=api_key_env, **kwargs
    )
