"""A gateway that echoes the API key back, in the forms that slip past a plain search.

`wire_forms(secret)` gives the key as it may appear inside a JSON string on the wire:
JSON-escaped (``\\/`` for ``/``, ``\\u0073``), URL-encoded, HTML entities, and base64 at
each byte offset (as in an echoed ``Authorization: Basic …`` header). Parsing the JSON
turns the escaped ones back into the plain key. `leaks(text, secret)` says which of those
forms (decoded or not) a stored text still holds.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import re
import urllib.parse
from typing import Any


def wire_forms(secret: str) -> dict[str, str]:
    """name -> the key as written inside a JSON string by a misbehaving gateway."""
    pct = urllib.parse.quote(secret, safe="")
    return {
        "plain": secret,
        "json_slash": secret.replace("/", "\\/"),
        "json_unicode": "".join(f"\\u{ord(c):04x}" for c in secret),
        "json_mixed": "".join(
            f"\\u{ord(c):04X}" if i % 3 == 0 else c for i, c in enumerate(secret)
        ),
        "url": pct,
        "url_lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), pct),
        "url_form": urllib.parse.quote_plus(secret),
        "html": "".join(f"&#x{ord(c):X};" if not c.isalnum() else c for c in secret),
        "basic_auth": "Basic " + base64.b64encode(f"user:{secret}".encode()).decode(),
        "base64": base64.b64encode(secret.encode()).decode(),
        "base64_offset1": base64.b64encode(f"x{secret}".encode()).decode(),
        "base64_url": base64.urlsafe_b64encode(f"xy{secret}".encode()).decode(),
        "base64_url_encoded": urllib.parse.quote(
            base64.b64encode(f"Bearer {secret}".encode()).decode(), safe=""
        ),
    }


def chat_body(content: str, reasoning: str, finish_reason: str = "stop") -> bytes:
    """A chat-completions body with `content` and `reasoning` spliced in unescaped (they
    must already be valid inside a JSON string)."""
    return (
        '{"id":"chatcmpl-echo","object":"chat.completion","model":"m","choices":[{"index":0,'
        f'"message":{{"role":"assistant","content":"{content}","reasoning_content":"{reasoning}"'
        f'}},"finish_reason":"{finish_reason}"}}],'
        '"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}'
    ).encode()


def json_text(value: str) -> str:
    """`value` escaped for splicing into a JSON string (without the quotes)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


def _base64_decodings(text: str) -> list[str]:
    out = []
    for run in re.findall(r"[A-Za-z0-9+/_=-]{12,}", urllib.parse.unquote(text)):
        for shift in range(4):
            chunk = run[shift:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                with contextlib.suppress(ValueError):
                    out.append(decode(chunk).decode("utf-8", "replace"))
    return out


def leaks(text: str, secret: str) -> list[str]:
    """The forms of `secret` that `text` still holds, after every decoding we know."""
    found = [name for name, form in wire_forms(secret).items() if form in text]
    decoded = {
        "unescaped": text.replace("\\/", "/"),
        "unicode_escape": re.sub(
            r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text
        ).replace("\\/", "/"),
        "unquote": urllib.parse.unquote(text),
        "unquote_plus": urllib.parse.unquote_plus(text),
        "html": html.unescape(text),
    }
    found += [name for name, value in decoded.items() if secret in value]
    if any(secret in value for value in _base64_decodings(text)):
        found.append("base64")
    return found


def all_text(value: Any) -> str:
    """Every string of a JSON-like value, joined (keys included)."""
    return json.dumps(value, ensure_ascii=False)
