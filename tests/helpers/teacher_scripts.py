"""Scripted teacher answers for stage tests: a deterministic stand-in for gpt-oss.

`scripted_teacher(body)` reads what the request asks for (the JSON key and the count, or
range of counts, in our prompt templates) and answers with that many distinct items, each
carrying the request's digest, in a fenced JSON block;
a request without a JSON key (a response request) gets an answer in the language with a
reasoning trace. Every answer is a pure function of the request, so reruns match.
`flaky(fraction)` wraps it to answer some requests with text that is not JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_KEY = re.compile(r'single key "(\w+)"')
_RANGE = re.compile(r"\bWrite from (\d+) up to (\d+)\b")
_COUNT = re.compile(r"\bWrite (?:the )?(\d+)\b")
_FENCED = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def digest(body: dict[str, Any]) -> str:
    text = json.dumps(body.get("messages"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in body.get("messages") or [])


def count_asked(text: str, h: str) -> int:
    """How many items a request asks for; for a range (topic prompts), a number in it
    chosen by the request's digest, as a teacher left to choose would vary."""
    many = _RANGE.search(text)
    if many:
        low, high = int(many.group(1)), int(many.group(2))
        return low + int(h, 16) % (high - low + 1)
    found = _COUNT.search(text)
    assert found, f"no count in {text[:120]!r}"
    return int(found.group(1))


def scripted_teacher(body: dict[str, Any]) -> Any:
    text = _text(body)
    h = digest(body)
    key = _KEY.search(text)
    if key is None:
        return {
            "content": f"Ìdáhùn kúkúrú {h}: bẹ́ẹ̀ ni, ó ṣeé ṣe.",
            "reasoning_content": f"The user asks something; I answer briefly ({h}).",
        }
    name = key.group(1)
    if name == "messages":  # a translation: same turns, "translated" content
        source = json.loads(_FENCED.search(body["messages"][-1]["content"]).group(1))
        value = [{"role": m["role"], "content": f"(yo {h}) {m['content']}"} for m in source]
        return "```json\n" + json.dumps({"messages": value}, ensure_ascii=False) + "\n```"
    if name == "improved_prompt":
        value: Any = f"Ìbéèrè tí a tún kọ {h}"
    else:
        value = [f"{name} {h} {i}" for i in range(count_asked(text, h))]
    return "Here you are:\n```json\n" + json.dumps({name: value}, ensure_ascii=False) + "\n```"


def flaky(fraction: float):
    """A scripted teacher that answers `fraction` of requests (by hash) with broken JSON."""

    def respond(body: dict[str, Any]) -> Any:
        # The draw includes the request's seed: a new sample of the same request (another
        # sample_index) may succeed, as it would at temperature 1.
        draw = hashlib.sha256(f"{digest(body)}|{body.get('seed')}".encode()).hexdigest()
        if int(draw, 16) % 1000 < fraction * 1000:
            return '```json\n{"prompts": ["unterminated\n```'
        return scripted_teacher(body)

    return respond


#: A phrase of each teacher stage's prompt templates (kakugo_stages/prompts.py).
_STAGE_PHRASES = (
    ("topics", ("You come up with topics", 'related to "')),
    ("scenarios", ("You come up with scenarios", "this scenario:")),
    ("contexts", ("about the following text",)),
    ("revise", ("You rewrite prompts written in",)),
    ("translate", ("You translate from English into",)),
)


def stage_of(body: dict[str, Any]) -> str:
    """Which teacher stage sent a request, from its prompts (respond: the only request
    that asks for no JSON key; its system prompt may be the spec's own)."""
    text = _text(body)
    for stage, phrases in _STAGE_PHRASES:
        if any(p in text for p in phrases):
            return stage
    if text and not _KEY.search(text):
        return "respond"
    raise ValueError(f"no stage sends this prompt: {text[:80]!r}")
