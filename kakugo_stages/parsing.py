"""Defensive parsing of the teacher's JSON answers.

The teacher is asked for one JSON object in a fenced ```json block, but models wrap it
in prose, forget the fence, leave trailing commas, or stop halfway. Everything here
either returns a clean value or raises `ParseError` with a short, bounded `reason` that
goes into stats and the rejects file.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class ParseError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _candidates(text: str) -> list[str]:
    """Possible JSON texts, most likely first: fenced blocks (last first), then the
    outermost {...} span."""
    found = [m.group(1).strip() for m in _FENCE.finditer(text)][::-1]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        found.append(text[start : end + 1])
    return found


def _loads(candidate: str) -> Any:
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        return json.loads(_TRAILING_COMMA.sub(r"\1", candidate))


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object found in the answer."""
    if not text or not text.strip():
        raise ParseError("empty_answer")
    for candidate in _candidates(text):
        try:
            value = _loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ParseError("bad_json", text[:80])


def _clean(item: Any) -> str | None:
    if isinstance(item, str):
        stripped = item.strip()
        return stripped or None
    if isinstance(item, dict):
        # Some models answer [{"topic": "..."}]: take the single string value.
        values = [v for v in item.values() if isinstance(v, str)]
        return _clean(values[0]) if len(values) == 1 else None
    return None


def parse_string_list(text: str, key: str, *, expected: int | None = None) -> list[str]:
    """`{"<key>": ["...", ...]}` -> the non-empty strings, in order, without duplicates.

    `expected` caps the list: a teacher that gives more than asked is trimmed, not trusted.
    """
    obj = extract_json_object(text)
    value = obj.get(key)
    if value is None:
        # A one-key object under another name is still the list we asked for.
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ParseError("missing_key", key)
        value = lists[0]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ParseError("wrong_type", f"{key} is {type(value).__name__}")
    items, seen = [], set()
    for raw in value:
        item = _clean(raw)
        norm = " ".join(item.casefold().split()) if item else ""
        if item is None or norm in seen:
            continue
        seen.add(norm)
        items.append(item)
    if not items:
        raise ParseError("empty_list", key)
    return items[:expected] if expected else items


def parse_string(text: str, key: str) -> str:
    """`{"<key>": "..."}` -> the non-empty string."""
    obj = extract_json_object(text)
    value = _clean(obj.get(key))
    if value is None:
        raise ParseError("missing_key", key)
    return value


def parse_messages(text: str, key: str = "messages") -> list[Any]:
    """`{"messages": [{"role": ..., "content": ...}, ...]}` (or a bare list) -> the list,
    as given: the filter stage judges its roles and keys, so nothing is repaired here."""
    if not text or not text.strip():
        raise ParseError("empty_answer")
    for candidate in _candidates_with_lists(text):
        try:
            value = _loads(candidate)
        except json.JSONDecodeError:
            value = _python_literal(candidate)
            if value is None:
                continue
        if isinstance(value, dict):
            value = value.get(key)
        if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
            return value
    raise ParseError("bad_json", text[:80])


def _python_literal(candidate: str) -> Any:
    """A Python literal (`[{'role': 'user', ...}]`), which a teacher shown a printed list
    may answer with, as the authors' translation prompt invites; None if it is not one."""
    try:
        return ast.literal_eval(candidate)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _candidates_with_lists(text: str) -> list[str]:
    found = _candidates(text)
    start, end = text.find("["), text.rfind("]")
    if start != -1 and end > start:
        found.append(text[start : end + 1])
    return found
