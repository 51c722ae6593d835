"""Per-request cache of teacher responses on the artifact store, and the usage ledger.

DESIGN.md: "Teacher requests are cached per request (key = hash of messages + sampling
params + sample index), so a crash mid-shard replays finished requests instead of paying
again." The cache lives in the stage's ``_cache/`` folder, one JSON object per answer::

    <stage>/_cache/<key[:2]>/<key>.json

The key covers exactly what DESIGN.md names and nothing else:

* ``messages`` (the full chat, roles and contents),
* the sampling parameters ``temperature``, ``top_p`` and ``max_tokens``,
* ``sample_index`` (so several samples of one prompt get separate entries),
* ``response_format`` and ``attempt``, only when set (so the keys of plain first attempts
  never change).

``attempt`` numbers the answers to one request whose earlier answers were rejected: a
truncated (``finish_reason: length``) or unparsable answer is kept, marked
``rejected``, and never replayed; the next run walks the chain attempt 0, 1, … to the first
answer that is not rejected (replayed) or the first missing one (sent, as a new request:
its key, and so the seed derived from it, differ from the earlier attempts'). Which
attempt comes next depends only on what the cache holds, never on timing.

The model name, the endpoint URL and the client's seed are NOT part of the key: a cache
belongs to one stage of one LanguageModel run, whose teacher is fixed by the resolved spec.
If you point an existing run at a different teacher model and want fresh answers, delete
the stage's ``_cache/`` folder (or the whole stage) first.

An entry (:class:`CacheEntry`) holds the server's response as it was sent (scrubbed of
any echo of the API key; request headers are never stored) and the ledger fields: the
tokens paid for it (``usage``, from the response and from any unusable HTTP-200 bodies of
the same request that were retried before it), the shard that paid (``owner``), its
``attempt`` and, when the answer was not used, why (``rejected``). The entry is written as
soon as the answer arrives, before anything uses it, so the tokens of every answer
received are on the store even when the process is killed the next moment; summed over a
shard's entries they are what the shard paid for (:class:`~kakugo_stages.teacher.TeacherUsage`).
Entries written before the ledger (the bare response) still read: attempt 0, no owner,
usage from the response. An answer that came through the Batch API is marked ``batch``: its
tokens are paid at the endpoint's batch prices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kakugo_stages.store import ArtifactNotFound, ArtifactStore, StoreError

__all__ = ["KEY_FIELDS", "CacheEntry", "RequestCache", "request_key"]

log = logging.getLogger("kakugo.teacher.cache")

#: The fields a request key is computed over (DESIGN.md: messages + sampling + sample index).
KEY_FIELDS = ("messages", "temperature", "top_p", "max_tokens", "sample_index")
#: Part of the key only when set, so keys of requests without them never change:
#: constraints on the answer that change it like a sampling parameter does (the answer
#: schema, a gpt-oss reasoning effort), and the attempt number of a request whose earlier
#: answers were rejected (0 is never written).
OPTIONAL_KEY_FIELDS = ("response_format", "reasoning_effort", "attempt")

#: Marks an entry written with the ledger fields (an older entry is the bare response).
ENTRY_FORMAT = 2

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def _canonical(value: Any) -> Any:
    # 1 and 1.0 must hash alike (a spec value may arrive as int or float); bools stay bools.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def request_key(payload: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``payload``'s :data:`KEY_FIELDS`.

    Canonical = sorted keys, no whitespace, UTF-8 (not ASCII-escaped), integral floats
    written as integers. Other entries of ``payload`` (``model``, ``seed``, ...) are
    ignored, so callers may pass the request body itself. Every key field must be present:
    a silently missing field would make different requests share one answer.
    """
    missing = [f for f in KEY_FIELDS if f not in payload]
    if missing:
        raise ValueError(f"request key needs {', '.join(missing)}")
    body = {f: _canonical(payload[f]) for f in KEY_FIELDS}
    body.update(
        {
            f: _canonical(payload[f])
            for f in OPTIONAL_KEY_FIELDS
            if payload.get(f) is not None and not (f == "attempt" and payload[f] == 0)
        }
    )
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tokens(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


@dataclass
class CacheEntry:
    """One stored answer and its ledger fields (see the module docstring).

    ``response`` is the server's body (None for a request that failed for good after
    paying for unusable answers: kept only for its tokens); ``usage`` the tokens paid
    (``prompt_tokens``, ``completion_tokens``); ``owner`` who paid (the shard index, or
    None); ``rejected`` why the answer was not used (then it is never replayed); ``batch``
    whether it came through the Batch API (its tokens are paid at batch prices).
    """

    response: dict[str, Any] | None
    attempt: int = 0
    owner: int | str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    rejected: str | None = None
    batch: bool = False

    @property
    def prompt_tokens(self) -> int:
        return _tokens(self.usage.get("prompt_tokens"))

    @property
    def completion_tokens(self) -> int:
        return _tokens(self.usage.get("completion_tokens"))

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "kakugo_cache": ENTRY_FORMAT,
            "attempt": self.attempt,
            "owner": self.owner,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            "rejected": self.rejected,
            "response": self.response,
        }
        if self.batch:  # written only when set: entries of synchronous answers stay as they were
            value["batch"] = True
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> CacheEntry:
        """An entry from its stored JSON; a bare response (written before the ledger) is
        attempt 0 with no owner, paid for with the tokens its ``usage`` names."""
        if value.get("kakugo_cache") is None:
            usage = value.get("usage")
            usage = usage if isinstance(usage, Mapping) else {}
            return cls(
                dict(value),
                usage={
                    "prompt_tokens": _tokens(usage.get("prompt_tokens")),
                    "completion_tokens": _tokens(usage.get("completion_tokens")),
                },
            )
        response = value.get("response")
        usage = value.get("usage")
        usage = usage if isinstance(usage, Mapping) else {}
        owner = value.get("owner")
        rejected = value.get("rejected")
        return cls(
            dict(response) if isinstance(response, Mapping) else None,
            attempt=_tokens(value.get("attempt")),
            owner=owner if isinstance(owner, int | str) else None,
            usage={
                "prompt_tokens": _tokens(usage.get("prompt_tokens")),
                "completion_tokens": _tokens(usage.get("completion_tokens")),
            },
            rejected=str(rejected) if rejected is not None else None,
            batch=value.get("batch") is True,
        )


class RequestCache:
    """Raw teacher responses by request key, on an :class:`ArtifactStore` (the ``_cache/`` child).

    ``get``/``put`` are blocking (local file or S3 I/O); the async client runs them in a
    worker thread. A cache that cannot be read or written degrades to a miss with a warning:
    losing a cache entry costs one request, failing the stage would cost the whole shard.
    """

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"RequestCache({self.store.url()!r})"

    @staticmethod
    def path(key: str) -> str:
        """Store key of a request key: ``<key[:2]>/<key>.json`` (256 fan-out folders)."""
        if not _KEY_RE.match(key):
            raise ValueError(f"not a request key (64 lowercase hex digits): {key!r}")
        return f"{key[:2]}/{key}.json"

    def get_entry(self, key: str) -> CacheEntry | None:
        """The stored entry, or ``None`` on a miss (or an unreadable entry)."""
        path = self.path(key)
        try:
            value = self.store.read_json(path)
        except ArtifactNotFound:
            return None
        except (StoreError, ValueError) as e:  # ValueError: corrupt JSON
            log.warning("teacher cache entry %s unreadable, treating as a miss: %s", path, e)
            return None
        if not isinstance(value, dict):
            log.warning("teacher cache entry %s is not a JSON object, treating as a miss", path)
            return None
        return CacheEntry.from_json(value)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored raw response, or ``None`` on a miss (or an unreadable entry)."""
        entry = self.get_entry(key)
        return entry.response if entry is not None else None

    def put_entry(self, key: str, entry: CacheEntry) -> None:
        """Store ``entry`` under ``key`` atomically (a reader never sees half an entry)."""
        path = self.path(key)
        # Compact JSON through the C encoder: the store's indented write_json takes the
        # pure-Python encoder path, a measurable share of the client's CPU per request.
        data = json.dumps(entry.to_json(), ensure_ascii=False, separators=(",", ":"))
        try:
            # No fsync: a cache entry lost in a power cut only costs asking again (and its
            # tokens in the ledger), and the atomic rename still keeps half-written
            # entries out.
            self.store.write_bytes(path, data.encode("utf-8"), durable=False)
        except StoreError as e:
            log.warning("cannot write teacher cache entry %s: %s", path, e)

    def put(self, key: str, response: Mapping[str, Any], **fields: Any) -> None:
        """Store ``response`` under ``key`` (``fields``: the other :class:`CacheEntry`
        fields; the usage defaults to the response's)."""
        if "usage" not in fields:
            usage = response.get("usage")
            usage = usage if isinstance(usage, Mapping) else {}
            fields["usage"] = {
                "prompt_tokens": _tokens(usage.get("prompt_tokens")),
                "completion_tokens": _tokens(usage.get("completion_tokens")),
            }
        self.put_entry(key, CacheEntry(dict(response), **fields))

    def __contains__(self, key: str) -> bool:
        return self.store.exists(self.path(key))
