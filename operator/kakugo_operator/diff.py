"""Merge patches (RFC 7386) that say everything: what changed and what is gone.

A merge patch of only the changed top-level keys keeps stale nested keys (`{"artifacts":
{"dataset": ...}}` merged into `{"artifacts": {"dataset": ..., "model": ...}}` keeps
`model`). `merge_diff` walks both documents and writes null for every key that went away,
at any depth, so the object ends up equal to what the operator wanted. Lists are atomic in
a merge patch: a changed list is sent whole.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def merge_diff(have: Any, want: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that turns `have` into `want` (keys only in `have` become null; for a
    spec, the API server then re-applies schema defaults)."""
    have = have if isinstance(have, dict) else {}
    out: dict[str, Any] = {}
    for key, value in want.items():
        old = have.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            sub = merge_diff(old, value)
            if sub:
                out[key] = sub
        elif value != old or key not in have:
            out[key] = value
    for key in have:
        if key not in want:
            out[key] = None
    return out


def is_subset(want: Any, have: Any) -> bool:
    """Every value of `want` is in `have` (dicts compared key by key, lists item by item;
    the API server may have added defaults to `have`, also inside list items such as a
    Pod template's containers)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(is_subset(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(is_subset(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(want == have)


def digest(value: Any) -> str:
    """A short, stable hash of a JSON-able value (the desired state of an owned object)."""
    blob = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
