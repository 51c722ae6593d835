"""Scripted teacher answers for stage tests: a deterministic stand-in for gpt-oss.

`scripted_teacher(body)` reads what the request asks for (the JSON key and the count in
our prompt templates) and answers with that many distinct items in a fenced JSON block;
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
_COUNT = re.compile(r"\b(?:List|Name|Write|Describe) (\d+)\b")


def digest(body: dict[str, Any]) -> str:
    text = json.dumps(body.get("messages"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def scripted_teacher(body: dict[str, Any]) -> Any:
    text = body["messages"][-1]["content"]
    h = digest(body)
    key = _KEY.search(text)
    if key is None:
        return {
            "content": f"Ìdáhùn kúkúrú {h}: bẹ́ẹ̀ ni, ó ṣeé ṣe.",
            "reasoning_content": f"The user asks something; I answer briefly ({h}).",
        }
    name = key.group(1)
    if name == "messages":  # a translation: same turns, "translated" content
        source = json.loads(text.rsplit("```json", 1)[1].split("```", 1)[0])
        value = [{"role": m["role"], "content": f"(yo {h}) {m['content']}"} for m in source]
        return "```json\n" + json.dumps({"messages": value}, ensure_ascii=False) + "\n```"
    if name == "improved_prompt":
        value: Any = f"Ìbéèrè tí a tún kọ {h}"
    else:
        count = int(_COUNT.search(text).group(1))
        value = [f"{name} {h} {i}" for i in range(count)]
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
    ("topics", ("We are collecting subjects", "take the sub-area", "about\nthe topic")),
    ("scenarios", ("broad kinds of situation", "Take this broad situation", "Situation:")),
    ("contexts", ("A user will paste it",)),
    ("revise", ("Rewrite it so that it is a better",)),
    ("translate", ("Translate the conversation below",)),
)


def stage_of(body: dict[str, Any]) -> str:
    """Which teacher stage sent a request, from its prompt (respond: a system prompt)."""
    messages = body.get("messages") or []
    if messages and messages[0].get("role") == "system":
        return "respond"
    text = messages[-1]["content"] if messages else ""
    for stage, phrases in _STAGE_PHRASES:
        if any(p in text for p in phrases):
            return stage
    raise ValueError(f"no stage sends this prompt: {text[:80]!r}")
