"""Scrubbing a secret (the teacher's API key) out of anything that is stored or shown.

A misbehaving server or gateway may echo the key back, and not always as its plain bytes:
JSON-escaped (``\\/`` for ``/``, ``\\u0073`` for ``s``), URL-encoded (``%2F``, ``+``
for a space), as an HTML entity, or base64-encoded (``Authorization: Basic …`` echoed
back, where the key sits at any offset of the encoded text). :class:`Redactor` finds the
key in all of those forms, and in any mix of them (an encoder may escape only some
characters), and replaces each occurrence with ``***``.

It scrubs parsed values (:meth:`Redactor.value` walks dicts, lists and strings, keys
included), not only raw bytes: a parser turns an escaped echo back into the plain key, so
whatever is stored after parsing must be scrubbed after parsing.
"""

from __future__ import annotations

import base64
import re
from typing import Any

__all__ = ["REDACTED", "Redactor"]

REDACTED = "***"

#: Keys shorter than this are scrubbed in their plain and escaped forms only: their
#: base64 fragments would be too short to tell from ordinary text.
MIN_BASE64_SECRET = 8


def _hex_ci(value: int, width: int) -> str:
    """A regex for ``value`` in hex, either case, zero-padded to ``width``."""
    return "".join(f"[{d.upper()}{d.lower()}]" if d.isalpha() else d for d in f"{value:0{width}x}")


def _char_pattern(c: str) -> str:
    """Every way one character of the secret may be written in text we store."""
    code = ord(c)
    alts = [re.escape(c)]
    # URL (percent) encoding of its UTF-8 bytes; "+" for a space in form encoding.
    alts.append("".join("%" + _hex_ci(b, 2) for b in c.encode("utf-8")))
    if c == " ":
        alts.append(r"\+")
    # JSON / JavaScript escapes, possibly escaped again (JSON inside a JSON string):
    # \u0073, \\\u0073, \/, \\/ ... Every alternative starts with a literal character,
    # so the regex engine can skip ahead quickly.
    if code <= 0xFFFF:
        alts.append(r"\\+u" + _hex_ci(code, 4))
    if c == "/":
        alts.append(r"\\+/")
    # HTML numeric character references.
    alts.append(f"&#0*{code};")
    alts.append("&#[xX]0*" + _hex_ci(code, 1).lstrip("0") + ";")
    return "(?:" + "|".join(alts) + ")"


def _base64_fragments(secret: bytes) -> list[str]:
    """The parts of the secret's base64 text that do not depend on what surrounds it.

    In a longer base64 text the secret may start at any byte offset modulo 3; for each,
    only the characters made of the secret's bits alone are fixed. Standard and URL-safe
    alphabets both.
    """
    out: list[str] = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode("ascii").rstrip("=")
        # Leading characters that mix in the filler bytes: 0, 2 or 3 of them.
        head = (0, 2, 3)[offset]
        # Trailing characters that would mix in the next (unknown) byte.
        rest = (offset + len(secret)) % 3
        tail = (0, 1, 1)[rest]
        fragment = encoded[head : len(encoded) - tail]
        if fragment:
            out.append(fragment)
            out.append(fragment.replace("+", "-").replace("/", "_"))
    return out


class Redactor:
    """Replaces every echo of one secret with ``***`` (see the module docstring).

    A redactor without a secret changes nothing. Its ``repr`` never shows the secret.
    """

    __slots__ = ("_escapes", "_forms", "_pattern", "_plain", "_plain_bytes")

    def __init__(self, secret: str | None) -> None:
        self._plain = secret or None
        self._plain_bytes = secret.encode("utf-8") if secret else b""
        self._pattern: re.Pattern[str] | None = None
        self._forms: tuple[str, ...] = ()
        self._escapes: re.Pattern[str] | None = None
        if not secret:
            return
        forms = [secret]
        if len(secret) >= MIN_BASE64_SECRET:
            forms += _base64_fragments(secret.encode("utf-8"))
        # Longest first, so a longer form is replaced whole rather than a part of it.
        self._forms = tuple(sorted(set(forms), key=len, reverse=True))
        self._pattern = re.compile(
            "|".join("".join(_char_pattern(c) for c in form) for form in self._forms)
        )
        # Text without any escape character can hold the secret only as one of its plain
        # forms: two fast substring checks instead of the full regex (most answers).
        self._escapes = re.compile(r"[\\%&+]" if " " in secret else r"[\\%&]")

    def __repr__(self) -> str:
        return f"Redactor({REDACTED if self._plain else None})"

    def __bool__(self) -> bool:
        return self._plain is not None

    def text(self, text: str) -> str:
        """``text`` with every form of the secret replaced."""
        if self._pattern is None or not text:
            return text
        assert self._escapes is not None
        if self._escapes.search(text) is None and not any(f in text for f in self._forms):
            return text
        return self._pattern.sub(REDACTED, text)

    def raw(self, data: bytes) -> bytes:
        """``data`` with the secret's plain bytes replaced (before parsing, so that a body
        that does not parse is stored without them; :meth:`value` does the rest)."""
        if not self._plain_bytes or self._plain_bytes not in data:
            return data
        return data.replace(self._plain_bytes, REDACTED.encode())

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string (and dict key) scrubbed; values
        without the secret come back as they are."""
        if self._pattern is None:
            return value
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                (self.text(k) if isinstance(k, str) else k): self._walk(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._walk(v) for v in value]
        return value
