"""Per-request cache of teacher responses on the artifact store.

DESIGN.md: "Teacher requests are cached per request (key = hash of messages + sampling
params + sample index), so a crash mid-shard replays finished requests instead of paying
again." The cache lives in the stage's ``_cache/`` folder, one JSON object per request::

    <stage>/_cache/<key[:2]>/<key>.json      the server's raw response (HTTP 200, parsed)

The key covers exactly what DESIGN.md names and nothing else:

* ``messages`` (the full chat, roles and contents),
* the sampling parameters ``temperature``, ``top_p`` and ``max_tokens``,
* ``sample_index`` (so several samples of one prompt get separate entries).

The model name, the endpoint URL and the client's seed are NOT part of the key: a cache
belongs to one stage of one LanguageModel run, whose teacher is fixed by the resolved spec.
If you point an existing run at a different teacher model and want fresh answers, delete
the stage's ``_cache/`` folder (or the whole stage) first.

Responses are stored as the server sent them (after the client scrubbed any echo of the
API key); request headers are never stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from kakugo_stages.store import ArtifactNotFound, ArtifactStore, StoreError

__all__ = ["KEY_FIELDS", "RequestCache", "request_key"]

log = logging.getLogger("kakugo.teacher.cache")

#: The fields a request key is computed over (DESIGN.md: messages + sampling + sample index).
KEY_FIELDS = ("messages", "temperature", "top_p", "max_tokens", "sample_index")
#: Constraints on the answer that change it like a sampling parameter does; part of the
#: key only when the request sets them, so keys of requests without them never change.
OPTIONAL_KEY_FIELDS = ("response_format",)

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
        {f: _canonical(payload[f]) for f in OPTIONAL_KEY_FIELDS if payload.get(f) is not None}
    )
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored raw response, or ``None`` on a miss (or an unreadable entry)."""
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
        return value

    def put(self, key: str, response: Mapping[str, Any]) -> None:
        """Store ``response`` under ``key`` atomically (a reader never sees half an entry)."""
        path = self.path(key)
        # Compact JSON through the C encoder: the store's indented write_json takes the
        # pure-Python encoder path, a measurable share of the client's CPU per request.
        data = json.dumps(response, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            # No fsync: a cache entry lost in a power cut only costs asking again, and the
            # atomic rename still keeps half-written entries out.
            self.store.write_bytes(path, data, durable=False)
        except StoreError as e:
            log.warning("cannot write teacher cache entry %s: %s", path, e)

    def __contains__(self, key: str) -> bool:
        return self.store.exists(self.path(key))
