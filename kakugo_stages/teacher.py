"""Async client for the teacher: OpenAI-compatible chat completions, bounded, retried, cached.

One :class:`TeacherClient` serves one stage run (one shard). It

* sends one chat-completions request per call, never ``n > 1`` (``transformers serve``
  ignores it) and never relies on the server checking the model name;
* keeps at most ``max_concurrency`` requests on the wire (``asyncio.Semaphore``);
* retries 429, 408, 409, 5xx, timeouts, dropped connections and unparsable 200 bodies with
  full-jitter exponential backoff, honouring ``Retry-After`` (seconds or HTTP-date, and
  ``retry-after-ms``) up to ``backoff_max``; other 4xx fail at once;
* takes the reasoning from ``reasoning_content`` / ``reasoning``, or splits it off the
  content at a harmony ``analysis … assistantfinal`` marker (:func:`split_reasoning`);
* returns every parsable HTTP-200 answer, including ``finish_reason != "stop"``
  (:attr:`ChatResult.ok` is the success test; such results are counted as failures);
* caches each parsable answer on the artifact store (:class:`RequestCache`) as soon as it
  arrives, so a rerun replays it instead of paying again; an answer that was not used
  (``finish_reason != "stop"``, or refused by the caller through :meth:`TeacherClient.reject`)
  stays in the cache, marked rejected, and a rerun sends the request again as its next
  attempt (a new key, so a new seed) instead of replaying it;
* counts what was paid for in :attr:`TeacherClient.usage`: every answer received, once,
  including those received by earlier, killed or failed runs of the same shard (the cache
  entries are its ledger; see :mod:`kakugo_stages.request_cache`).

The API key is read from an environment variable (filled from a Secret by the operator).
It is sent only as ``Authorization: Bearer …`` and is never logged, stored, or put in an
exception: every body is scrubbed of it before and after parsing, in plain, JSON-escaped,
URL-encoded and base64 forms (:class:`~kakugo_stages.redact.Redactor`), so an escaped echo
that parsing turns back into the key is caught too; error texts are scrubbed, and
transport exceptions (which can carry request headers) are not chained into
:class:`TeacherError`.

:class:`~kakugo_stages.batch.BatchTeacherClient` (``teacher.endpoint.batch``) is this client
with one method changed, :meth:`TeacherClient._obtain` (how one attempt gets its answer): it
sends requests through the Batch API, and everything else (cache, ledger, rejects, seeds,
scrubbing) is the code below.

Transport: aiohttp. httpx can be chosen (``transport="httpx"``) but is not the default:
its connection pool checks every pooled connection with system calls on every request,
so its CPU per request grows with the concurrency (16 ms at 64, 250 ms at 256 on the
benchmark machine, against 0.2-0.6 ms for aiohttp); ``docs/benchmarks.md`` ("Teacher
client") has the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kakugo_stages.redact import REDACTED, Redactor
from kakugo_stages.request_cache import CacheEntry, RequestCache, request_key

if TYPE_CHECKING:
    from kakugo_stages.spec import TeacherSettings

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "ChatResult",
    "TeacherClient",
    "TeacherError",
    "TeacherUsage",
    "split_reasoning",
]

log = logging.getLogger("kakugo.teacher")

DEFAULT_API_KEY_ENV = "KAKUGO_TEACHER_API_KEY"

Transport = Literal["aiohttp", "httpx"]

# Statuses worth another try: rate limits, request timeouts, conflicts, server errors.
_RETRYABLE_4XX = frozenset({408, 409, 429})
# Statuses that get their own failure label; anything else collapses into http_4xx/http_5xx
# so metrics labels stay bounded whatever a server sends.
_NAMED_STATUSES = frozenset({400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504})
# finish_reason values that get their own label when a result is not ok.
_NAMED_FINISH = frozenset({"length", "content_filter", "tool_calls", "function_call"})
# Longest error detail kept in a message / the raw of a failed response.
_DETAIL_CHARS = 300
_RAW_CHARS = 4000

_REDACTED = REDACTED
# Idle keep-alive connections are dropped before the server drops them (uvicorn, under
# vLLM, closes them after 5 s): reusing one the server is closing fails the request.
_KEEPALIVE_S = 4.0


# --------------------------------------------------------------------------- reasoning

# Harmony output, raw: "analysis<reasoning>assistantfinal<answer>" when special tokens are
# skipped, or with them kept: "<|channel|>analysis<|message|>…<|end|><|start|>assistant
# <|channel|>final<|message|>…<|return|>".
_FINAL_MARKERS = ("<|channel|>final<|message|>", "assistantfinal")
_ANALYSIS_PREFIXES = ("<|start|>assistant", "<|channel|>analysis<|message|>", "analysis")
_ANALYSIS_SUFFIXES = ("<|start|>assistant", "<|end|>", "assistant")
_FINAL_SUFFIXES = ("<|return|>", "<|end|>")
_TOKEN_ANALYSIS = "<|channel|>analysis<|message|>"


def _strip_affixes(text: str, prefixes: Sequence[str], suffixes: Sequence[str]) -> str:
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if text.startswith(p):
                text, changed = text[len(p) :].lstrip(), True
        for s in suffixes:
            if text.endswith(s):
                text, changed = text[: -len(s)].rstrip(), True
    return text


def split_reasoning(text: str | None) -> tuple[str | None, str]:
    """Split harmony output into ``(reasoning, final answer)``.

    ``"analysisThink…assistantfinalAnswer"`` gives ``("Think…", "Answer")``. Text without a
    final-channel marker is all answer: ``(None, text)``; the one exception is text that
    opens with the explicit ``<|channel|>analysis<|message|>`` token, which is a trace cut
    off before its answer: ``(trace, "")``. A plain leading word "analysis" without a marker
    is left alone, since a real answer may start with it.
    """
    if not text:
        return None, ""
    for marker in _FINAL_MARKERS:
        i = text.find(marker)
        if i >= 0:
            reasoning = _strip_affixes(text[:i], _ANALYSIS_PREFIXES, _ANALYSIS_SUFFIXES)
            answer = _strip_affixes(text[i + len(marker) :], (), _FINAL_SUFFIXES)
            return reasoning or None, answer
    stripped = text.lstrip()
    if stripped.startswith(_TOKEN_ANALYSIS):
        reasoning = _strip_affixes(stripped, _ANALYSIS_PREFIXES, _ANALYSIS_SUFFIXES)
        return reasoning or None, ""
    return None, text


def _text_of(content: Any) -> str:
    # Some servers send content as a list of parts: [{"type": "text", "text": "..."}].
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ChatResult:
    """One teacher answer. ``raw`` is the server's JSON body (no headers, never the key).

    ``key`` and ``attempt`` name its cache entry (``key`` is None without a cache), for
    :meth:`TeacherClient.reject`.
    """

    content: str
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    raw: dict[str, Any] = field(repr=False)
    cached: bool = False
    key: str | None = field(default=None, repr=False)
    attempt: int = 0

    @property
    def ok(self) -> bool:
        """Only a completed answer counts (the recipe keeps ``finish_reason == "stop"``)."""
        return self.finish_reason == "stop"


class _Unparsable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _as_int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def parse_response(
    raw: Mapping[str, Any], *, cached: bool = False, key: str | None = None, attempt: int = 0
) -> ChatResult:
    """Build a :class:`ChatResult` from a chat-completions JSON body (raises on no choices)."""
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Unparsable("no_choices", "response has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _Unparsable("no_choices", "first choice has no message")
    content = _text_of(message.get("content"))
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        pass
    else:
        reasoning, content = split_reasoning(content)
    finish = choice.get("finish_reason")
    usage = raw.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return ChatResult(
        content=content,
        reasoning=reasoning,
        finish_reason=finish if isinstance(finish, str) else None,
        prompt_tokens=_as_int(usage.get("prompt_tokens")),
        completion_tokens=_as_int(usage.get("completion_tokens")),
        raw=dict(raw),
        cached=cached,
        key=key,
        attempt=attempt,
    )


def _finish_label(finish: str | None) -> str:
    if finish is None:
        return "no_finish_reason"
    return finish if finish in _NAMED_FINISH else "finish_other"


def _status_label(status: int) -> str:
    if status in _NAMED_STATUSES:
        return f"http_{status}"
    if 400 <= status < 500:
        return "http_4xx"
    if 500 <= status < 600:
        return "http_5xx"
    return "http_other"


class TeacherError(Exception):
    """A request failed for good: retries exhausted, or a non-retryable answer.

    ``reason`` is a short bounded label for stats and metrics (``http_500``, ``http_429``,
    ``http_4xx``, ``timeout``, ``connection``, ``bad_json``, ``no_choices``, ...);
    ``attempts`` counts requests sent; ``raw`` is the last response body, if any (for the
    rejects file); ``key`` the request's cache key. Never contains the API key.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        attempts: int,
        raw: dict[str, Any] | str | None = None,
        status: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts
        self.raw = raw
        self.status = status
        self.key = key

    def __repr__(self) -> str:
        return f"TeacherError(reason={self.reason!r}, attempts={self.attempts}, {str(self)!r})"


@dataclass
class TeacherUsage:
    """What one client's requests cost (one client per shard run).

    ``requests`` counts :meth:`TeacherClient.chat` calls, ``cached`` those answered from
    the cache, ``resent`` those sent again because their earlier answers were rejected,
    ``http_requests`` the requests actually sent (retries included), ``retries`` the extra
    attempts (by reason in ``retry_reasons``), ``failures`` the calls that did not end in
    ``finish_reason == "stop"`` by reason.

    ``prompt_tokens`` and ``completion_tokens`` are the tokens paid for these requests,
    from the ledger: every answer received for them, each counted once, whether it arrived
    in this run or in an earlier run of the same owner (a run that was killed, or failed)
    and was found in the cache, replayed or rejected. ``sent_*`` are the tokens of the
    answers received in this run alone; ``cached_*`` those of the answers replayed (paid
    earlier, by this owner or another). ``batch_*`` are the part of ``prompt_tokens`` and
    ``completion_tokens`` paid at Batch API prices (answers that came through a batch);
    ``batches`` and ``batch_lines`` count the batches this client created and the requests
    it put in them (a request sent again after an error line counts again).
    """

    requests: int = 0
    cached: int = 0
    resent: int = 0
    http_requests: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    retry_reasons: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sent_prompt_tokens: int = 0
    sent_completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    batches: int = 0
    batch_lines: int = 0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cached": self.cached,
            "resent": self.resent,
            "http_requests": self.http_requests,
            "retries": self.retries,
            "failed": self.failed,
            "failures": dict(sorted(self.failures.items())),
            "retry_reasons": dict(sorted(self.retry_reasons.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "sent_prompt_tokens": self.sent_prompt_tokens,
            "sent_completion_tokens": self.sent_completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cached_completion_tokens": self.cached_completion_tokens,
            "batch_prompt_tokens": self.batch_prompt_tokens,
            "batch_completion_tokens": self.batch_completion_tokens,
            "batches": self.batches,
            "batch_lines": self.batch_lines,
        }

    def merge(self, other: TeacherUsage) -> TeacherUsage:
        """Add ``other`` into this one (e.g. shards into a stage total); returns self."""
        for name in (
            "requests",
            "cached",
            "resent",
            "http_requests",
            "retries",
            "prompt_tokens",
            "completion_tokens",
            "sent_prompt_tokens",
            "sent_completion_tokens",
            "cached_prompt_tokens",
            "cached_completion_tokens",
            "batch_prompt_tokens",
            "batch_completion_tokens",
            "batches",
            "batch_lines",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in (
            (self.failures, other.failures),
            (self.retry_reasons, other.retry_reasons),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        return self


# --------------------------------------------------------------------------- transports


class _TransportTimeout(Exception):
    pass


class _TransportDropped(Exception):
    pass


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    retry_after: str | None
    retry_after_ms: str | None


class _AiohttpTransport:
    name = "aiohttp"

    def __init__(self, limit: int, timeout: float) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._limit = limit
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str | None] = {}

    def _get(self) -> Any:
        # Created on first use: a session binds to the running event loop.
        if self._session is None or self._session.closed:
            aiohttp = self._aiohttp
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=0,
                keepalive_timeout=_KEEPALIVE_S,
                ttl_dns_cache=300,
            )
            # Not trust_env: aiohttp would then look up proxies and ~/.netrc in a worker
            # thread on every request (measured: most of the client's CPU). The proxy is
            # looked up once per URL instead (_proxy_for).
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    def _proxy_for(self, url: str) -> str | None:
        # HTTP(S)_PROXY / NO_PROXY, as httpx and the openai SDK honour them.
        if url not in self._proxies:
            parts = urllib.parse.urlsplit(url)
            proxy = urllib.request.getproxies().get(parts.scheme)
            if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
                proxy = None
            self._proxies[url] = proxy
        return self._proxies[url]

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> _Response:
        return await self.request("POST", url, body, headers)

    async def request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> _Response:
        aiohttp = self._aiohttp
        proxy = self._proxy_for(url)
        try:
            async with self._get().request(
                method, url, data=body, headers=headers, proxy=proxy
            ) as resp:
                data = await resp.read()
                return _Response(
                    resp.status,
                    data,
                    resp.headers.get("Retry-After"),
                    resp.headers.get("retry-after-ms"),
                )
        except TimeoutError as e:  # aiohttp's timeout errors subclass TimeoutError
            raise _TransportTimeout(type(e).__name__) from None
        except aiohttp.ClientError as e:
            raise _TransportDropped(type(e).__name__) from None

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class _HttpxTransport:
    name = "httpx"

    def __init__(self, limit: int, timeout: float) -> None:
        import httpx

        self._httpx = httpx
        self._limit = limit
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _get(self) -> Any:
        if self._client is None or self._client.is_closed:
            httpx = self._httpx
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=self._limit,
                    max_keepalive_connections=self._limit,
                    keepalive_expiry=_KEEPALIVE_S,
                ),
                # No pool timeout: the semaphore already bounds requests to the pool size.
                timeout=httpx.Timeout(self._timeout, pool=None),
            )
        return self._client

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> _Response:
        return await self.request("POST", url, body, headers)

    async def request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> _Response:
        httpx = self._httpx
        try:
            resp = await self._get().request(method, url, content=body, headers=headers)
        except httpx.TimeoutException as e:
            raise _TransportTimeout(type(e).__name__) from None
        except httpx.TransportError as e:
            raise _TransportDropped(type(e).__name__) from None
        return _Response(
            resp.status_code,
            resp.content,
            resp.headers.get("retry-after"),
            resp.headers.get("retry-after-ms"),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client = None


def _make_transport(kind: str | None, limit: int, timeout: float) -> Any:
    # No silent fallback from aiohttp to httpx: at high concurrency httpx costs orders of
    # magnitude more CPU per request (docs/benchmarks.md), so it must be asked for by name.
    if kind in (None, "aiohttp"):
        try:
            return _AiohttpTransport(limit, timeout)
        except ImportError as e:
            raise ImportError(
                "the teacher client needs aiohttp: pip install 'kakugo[teacher]'"
            ) from e
    if kind == "httpx":
        return _HttpxTransport(limit, timeout)
    raise ValueError(f"transport must be 'aiohttp' or 'httpx', got {kind!r}")


def _raise_fd_limit(needed: int) -> None:
    # Each request in flight holds a socket; a soft RLIMIT_NOFILE of 1024 (a common
    # default) would turn concurrency 1024 into "too many open files" errors.
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            if new > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
                log.debug("raised the open-files limit from %d to %d", soft, new)


# --------------------------------------------------------------------------- client


class _Secret:
    """Holds the API key; prints as *** so a repr or a debugger dump cannot leak it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def __repr__(self) -> str:
        return _REDACTED if self._value else "None"

    __str__ = __repr__

    def get(self) -> str | None:
        return self._value


@dataclass
class _Failure:
    reason: str
    retryable: bool
    detail: str
    status: int | None = None
    raw: dict[str, Any] | str | None = None
    retry_after: float | None = None
    #: The usage field of an unusable answer that was still billed (a batch line).
    usage: Any = None


def _parse_retry_after(value: str | None, value_ms: str | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP-date)."""
    if value_ms:
        with contextlib.suppress(ValueError):
            ms = float(value_ms)
            if math.isfinite(ms) and ms >= 0:
                return ms / 1000
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        return max(0.0, when.timestamp() - time.time())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _derive_seed(seed: int, key: str) -> int:
    # One distinct, reproducible seed per request and attempt (servers that honour `seed`
    # then give the same answer on a cache-less rerun, and a new one to a request sent
    # again after its answer was rejected); 31 bits fit every server's integer type.
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class TeacherClient:
    """Async OpenAI-compatible chat client; see the module docstring for its behaviour.

    Use as ``async with TeacherClient(...) as client:`` (or call :meth:`aclose`), within one
    event loop (its semaphore and connection pool bind to the loop that first uses them).
    ``temperature`` and ``top_p`` set the defaults of :meth:`chat`; ``owner`` names who
    pays for its answers in the cache's ledger (a stage sets it to the shard index).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = DEFAULT_API_KEY_ENV,
        max_concurrency: int = 64,
        timeout: float = 600,
        max_retries: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        cache: RequestCache | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        transport: Transport | None = None,
        owner: int | str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {max_retries}")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must not be negative")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.cache = cache
        self.seed = seed
        self.temperature = temperature
        self.top_p = top_p
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env, "").strip() if api_key_env else ""
        self._key = _Secret(key or None)
        self._redact = Redactor(key or None)
        #: Who pays for the answers this client receives (the shard), recorded in their
        #: cache entries; entries of the same owner found later count as paid (the ledger).
        self.owner = owner
        # Cache keys already counted in usage (an answer counts once per client).
        self._booked: set[str] = set()
        self._url = f"{self.base_url}/chat/completions"
        self._sem = asyncio.Semaphore(max_concurrency)
        self._transport = _make_transport(transport, max_concurrency, self.timeout)
        # Jitter only shapes timing, so it need not be seeded.
        self._rng = random.Random()
        self.usage = TeacherUsage()
        #: Whether the answers this client receives are paid at Batch API prices.
        self.batch_priced = False
        #: Requests on the wire now, and the most at once (for tests and the benchmark).
        self.in_flight = 0
        self.max_in_flight = 0
        _raise_fd_limit(max_concurrency + 256)
        if api_key_env and not key:
            log.debug("no API key in $%s; sending requests without Authorization", api_key_env)

    @classmethod
    def from_settings(
        cls,
        settings: TeacherSettings,
        *,
        base_url: str,
        model: str,
        cache: RequestCache | None = None,
        api_key_env: str | None = None,
        **kwargs: Any,
    ) -> TeacherClient:
        """A client with the spec's concurrency, timeout, retries and sampling.

        The key variable defaults to ``teacher.endpoint.apiKeyEnv`` (else
        ``KAKUGO_TEACHER_API_KEY``). ``kwargs`` go to the constructor (``seed``, backoff).
        """
        if api_key_env is None:
            endpoint = getattr(settings, "endpoint", None)
            api_key_env = endpoint.api_key_env if endpoint is not None else DEFAULT_API_KEY_ENV
        kwargs.setdefault("temperature", settings.sampling.temperature)
        kwargs.setdefault("top_p", settings.sampling.top_p)
        return cls(
            base_url,
            model,
            api_key_env=api_key_env,
            max_concurrency=settings.max_concurrency,
            timeout=settings.request_timeout_seconds,
            max_retries=settings.max_retries,
            cache=cache,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"TeacherClient({self.base_url!r}, model={self.model!r}, "
            f"max_concurrency={self.max_concurrency}, transport={self._transport.name!r})"
        )

    @property
    def transport(self) -> str:
        return self._transport.name

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    # ---- scrubbing

    def _scrub(self, text: str) -> str:
        return self._redact.text(text)

    def _scrub_bytes(self, data: bytes) -> bytes:
        return self._redact.raw(data)

    def scrub(self, value: Any) -> Any:
        """``value`` (a string, or JSON-like data) with every echo of the API key replaced:
        plain, JSON-escaped, URL-encoded or base64 (:class:`~kakugo_stages.redact.Redactor`)."""
        return self._redact.value(value)

    # ---- requests

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key.get()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float | None = None,
        top_p: float | None = None,
        sample_index: int = 0,
        response_format: dict[str, Any] | None = None,
        reasoning_effort: str | None = None,
    ) -> ChatResult:
        """Send one chat request (or replay it from the cache) and return the answer.

        Returns every parsable HTTP-200 answer, including ``finish_reason != "stop"``:
        check :attr:`ChatResult.ok`. Raises :class:`TeacherError` when retries are spent
        or the server refuses the request (4xx other than 408/409/429).

        With a cache, the request's answers are looked up attempt by attempt: a rejected
        answer is skipped (its tokens still count, see :class:`TeacherUsage`), the first
        one that is not is replayed, and when there is none the request is sent as the
        next attempt, whose key (and so its seed) is its own.
        """
        temperature = self.temperature if temperature is None else temperature
        top_p = self.top_p if top_p is None else top_p
        request: dict[str, Any] = {
            "messages": messages,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_tokens": int(max_tokens),
            "sample_index": int(sample_index),
            "response_format": response_format,
        }
        if reasoning_effort is not None:
            # Part of the request (another effort is another answer); absent when unset,
            # so the keys of requests without it are those of earlier runs.
            request["reasoning_effort"] = reasoning_effort
        key, attempt = request_key(request), 0
        usage = self.usage
        usage.requests += 1
        if self.cache is not None:
            while True:
                entry = await asyncio.to_thread(self.cache.get_entry, key)
                if entry is None:
                    break
                result = self._replayable(key, attempt, entry)
                if result is _DAMAGED:
                    break  # not an answer: ask again in its place
                self._book(key, entry)
                if isinstance(result, ChatResult):
                    usage.cached += 1
                    usage.cached_prompt_tokens += result.prompt_tokens
                    usage.cached_completion_tokens += result.completion_tokens
                    return result
                attempt += 1
                key = request_key({**request, "attempt": attempt})
            if attempt:
                usage.resent += 1
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
            "top_p": float(top_p),
        }
        if response_format is not None:
            # OpenAI-style structured output; vLLM constrains decoding to the schema.
            body["response_format"] = response_format
        if reasoning_effort is not None:
            # gpt-oss's low/medium/high, a top-level field of vLLM's chat request.
            body["reasoning_effort"] = reasoning_effort
        if self.seed is not None:
            # From the attempt's key: an answer sent again gets a seed of its own, or a
            # server that honours seeds would give the same rejected answer again.
            body["seed"] = _derive_seed(self.seed, key)
        paid = _Paid()
        try:
            result = await self._obtain(key, attempt, body, paid)
        except TeacherError as exc:
            self._book_sent(key, paid)
            if paid and self.cache is not None:
                # Unusable answers that were paid for: kept for the ledger, never replayed.
                entry = CacheEntry(
                    None,
                    attempt,
                    self.owner,
                    paid.usage(),
                    rejected=exc.reason,
                    batch=self.batch_priced,
                )
                await asyncio.to_thread(self.cache.put_entry, key, entry)
            raise
        if self.cache is not None:
            result = dataclasses.replace(result, key=key, attempt=attempt)
        # A result marked cached by _obtain is one answer given to two identical requests
        # (a batch line): the first request paid for it and stores it.
        shared = result.cached
        if not shared:
            paid.add(result.prompt_tokens, result.completion_tokens)
        self._book_sent(key, paid)
        if not result.ok:
            self._count_failure(_finish_label(result.finish_reason))
        if self.cache is not None and not shared:
            # Stored before returning: once the caller has the answer, a crash must not
            # make the rerun pay for it again, and its tokens are in the ledger. A
            # "length" answer was paid for too; it is stored rejected, so a rerun sends
            # the request again instead of replaying it.
            entry = CacheEntry(
                result.raw,
                attempt,
                self.owner,
                paid.usage(),
                rejected=None if result.ok else rejected_reason(result),
                batch=self.batch_priced,
            )
            await asyncio.to_thread(self.cache.put_entry, key, entry)
        return result

    async def reject(self, result: ChatResult, reason: str) -> None:
        """Mark the cache entry of ``result`` rejected (e.g. its answer did not parse): it
        stays, for audit and for the ledger, but is never replayed; a rerun sends the
        request again as its next attempt. Without a cache, nothing to do."""
        if self.cache is None or result.key is None:
            return
        await asyncio.to_thread(self._mark_rejected, result, reason)

    def _mark_rejected(self, result: ChatResult, reason: str) -> None:
        assert self.cache is not None and result.key is not None
        entry = self.cache.get_entry(result.key)
        if entry is None or entry.response is None:  # its write failed: write it now
            usage = {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            }
            entry = CacheEntry(
                result.raw, result.attempt, self.owner, usage, batch=self.batch_priced
            )
        if entry.rejected != reason:
            entry.rejected = reason
            self.cache.put_entry(result.key, entry)

    def _replayable(self, key: str, attempt: int, entry: CacheEntry) -> ChatResult | object:
        """The answer to replay, :data:`_DAMAGED` for an entry that holds no answer, or
        :data:`_REJECTED` for an answer that must not be replayed."""
        if entry.rejected is not None:
            return _REJECTED
        if entry.response is None:
            return _DAMAGED
        try:
            # Scrubbed again: an entry written before escaped echoes were caught.
            result = parse_response(
                self._redact.value(entry.response), cached=True, key=key, attempt=attempt
            )
        except _Unparsable:
            log.warning("teacher cache entry %s has no answer; asking again", key[:12])
            return _DAMAGED
        # A cut-off answer stored before rejected answers were marked is not replayed.
        return result if result.ok else _REJECTED

    def _book(self, key: str, entry: CacheEntry) -> None:
        # The ledger: an answer found in the cache counts once per client, as paid when
        # this client's owner paid for it (a killed or failed earlier run of the shard;
        # entries from before the ledger have no owner), else only as replayed.
        if key in self._booked:
            return
        self._booked.add(key)
        if entry.owner is None or entry.owner == self.owner:
            self.usage.prompt_tokens += entry.prompt_tokens
            self.usage.completion_tokens += entry.completion_tokens
            if entry.batch:
                self.usage.batch_prompt_tokens += entry.prompt_tokens
                self.usage.batch_completion_tokens += entry.completion_tokens

    def _book_sent(self, key: str, paid: _Paid) -> None:
        if self.cache is not None:  # only entries met in the cache can be met twice
            self._booked.add(key)
        usage = self.usage
        usage.prompt_tokens += paid.prompt_tokens
        usage.completion_tokens += paid.completion_tokens
        usage.sent_prompt_tokens += paid.prompt_tokens
        usage.sent_completion_tokens += paid.completion_tokens
        if self.batch_priced:
            usage.batch_prompt_tokens += paid.prompt_tokens
            usage.batch_completion_tokens += paid.completion_tokens

    def _count_failure(self, reason: str) -> None:
        self.usage.failures[reason] = self.usage.failures.get(reason, 0) + 1

    async def _obtain(
        self, key: str, attempt: int, body: dict[str, Any], paid: _Paid
    ) -> ChatResult:
        """The server's answer to ``body`` (one attempt of a request, cache key ``key``):
        what the synchronous and the batch clients do differently. Raises
        :class:`TeacherError`; ``paid`` collects the tokens of unusable answers."""
        return await self._send(key, json.dumps(body, ensure_ascii=False).encode("utf-8"), paid)

    def _note_retry(self, reason: str) -> None:
        self.usage.retries += 1
        self.usage.retry_reasons[reason] = self.usage.retry_reasons.get(reason, 0) + 1

    def _failed(self, key: str, failure: _Failure, attempts: int) -> TeacherError:
        """Count a request that failed for good and build its error (to be raised outside
        any except block, so no transport exception, which may hold request headers, is
        chained in as __context__)."""
        self._count_failure(failure.reason)
        status = f" (HTTP {failure.status})" if failure.status is not None else ""
        message = self._scrub(
            f"teacher request {key[:12]} failed after {attempts} attempt(s): "
            f"{failure.reason}{status}: {failure.detail}"
        )
        log.warning("%s", message)
        return TeacherError(
            message,
            reason=failure.reason,
            attempts=attempts,
            raw=failure.raw,
            status=failure.status,
            key=key,
        )

    async def _send(self, key: str, data: bytes, paid: _Paid) -> ChatResult:
        headers = self._headers()
        attempts = 0
        while True:
            attempts += 1
            async with self._sem:
                self.in_flight += 1
                if self.in_flight > self.max_in_flight:
                    self.max_in_flight = self.in_flight
                self.usage.http_requests += 1
                try:
                    outcome = await self._attempt(data, headers, paid)
                finally:
                    self.in_flight -= 1
            if isinstance(outcome, ChatResult):
                return outcome
            failure = outcome
            if not failure.retryable or attempts > self.max_retries:
                break
            # The slot is released while waiting, so a few slow retries do not starve the
            # other requests; the bound is on requests on the wire.
            delay = self._backoff(attempts, failure.retry_after)
            self._note_retry(failure.reason)
            log.debug(
                "teacher request %s attempt %d failed (%s); retrying in %.2fs",
                key[:12],
                attempts,
                failure.reason,
                delay,
            )
            await asyncio.sleep(delay)
        raise self._failed(key, failure, attempts)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        # Full jitter (AWS architecture blog): uniform(0, min(cap, base * 2^n)).
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        delay = self._rng.uniform(0, ceiling)
        if retry_after is not None:
            # At least what the server asked for, plus up to 10% so a burst of 429s does not
            # come back all at once; never past backoff_max.
            delay = max(delay, retry_after * (1 + 0.1 * self._rng.random()))
        return min(delay, self.backoff_max)

    async def _attempt(
        self, data: bytes, headers: dict[str, str], paid: _Paid
    ) -> ChatResult | _Failure:
        try:
            resp = await self._transport.post(self._url, data, headers)
        except _TransportTimeout as e:
            return _Failure("timeout", True, f"no answer within {self.timeout:g}s ({e})")
        except _TransportDropped as e:
            return _Failure("connection", True, f"connection failed ({e})")
        # The key's plain bytes go first, so a body that does not parse is kept without
        # them; parsed values are scrubbed again, since parsing turns an escaped echo
        # ("sk-\/…", "\u0073k-…") back into the key.
        body = self._scrub_bytes(resp.body)
        if 200 <= resp.status < 300:
            try:
                raw = json.loads(body)
            except ValueError as e:
                return _Failure(
                    "bad_json",
                    True,
                    f"unparsable JSON body ({e})",
                    resp.status,
                    raw=self._text(body),
                )
            if not isinstance(raw, dict):
                return _Failure(
                    "bad_json",
                    True,
                    "JSON body is not an object",
                    resp.status,
                    raw=self._text(body),
                )
            raw = self._redact.value(raw)
            try:
                return parse_response(raw)
            except _Unparsable as e:
                # An answer without choices may still have been billed.
                paid.add_usage(raw.get("usage"))
                return _Failure(e.reason, True, str(e), resp.status, raw=raw)
        retryable = resp.status in _RETRYABLE_4XX or resp.status >= 500
        raw_err, detail = _error_body(body, self._redact)
        return _Failure(
            _status_label(resp.status),
            retryable,
            detail,
            resp.status,
            raw=raw_err,
            retry_after=_parse_retry_after(resp.retry_after, resp.retry_after_ms),
        )

    def _text(self, body: bytes) -> str:
        # Scrubbed whole, then cut: a cut first could leave part of an escaped key.
        return self._scrub(body.decode("utf-8", "replace"))[:_RAW_CHARS]


#: Outcomes of looking at a cache entry (TeacherClient._replayable).
_DAMAGED = object()
_REJECTED = object()


def rejected_reason(result: ChatResult) -> str:
    """The rejection label of an answer that did not finish with "stop"."""
    return f"finish_{result.finish_reason or 'none'}"


@dataclass
class _Paid:
    """Tokens paid for one request: its answer and any unusable answers before it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __bool__(self) -> bool:
        return bool(self.prompt_tokens or self.completion_tokens)

    def add(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def add_usage(self, usage: Any) -> None:
        if isinstance(usage, Mapping):
            self.add(_as_int(usage.get("prompt_tokens")), _as_int(usage.get("completion_tokens")))

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


def _error_body(body: bytes, redact: Redactor) -> tuple[dict[str, Any] | str | None, str]:
    """The error body (JSON object or truncated text) and a one-line detail for messages,
    both scrubbed of the key."""
    if not body:
        return None, "empty body"
    try:
        raw = json.loads(body)
    except ValueError:
        text = redact.text(body.decode("utf-8", "replace"))[:_RAW_CHARS]
        return text, " ".join(text.split())[:_DETAIL_CHARS]
    raw = redact.value(raw)
    detail: Any = raw
    if isinstance(raw, dict):
        err = raw.get("error", raw)
        detail = err.get("message", err) if isinstance(err, dict) else err
    text = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
    # json.dumps of a scrubbed value may escape it again; the text is scrubbed as it is.
    text = redact.text(text)
    return (raw if isinstance(raw, dict) else text), " ".join(text.split())[:_DETAIL_CHARS]
