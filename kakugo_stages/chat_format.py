"""The student's chat format: which template, and how a training row becomes tokens.

The same function builds the examples the trainer sees and the ones the tests inspect,
so "the system prompt reaches the tokenized example" (recipe mistake 1) is tested on the
real path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

SHIPPED_TEMPLATES = ("granite-4", "chatml")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def load_chat_template(name_or_path: str) -> str:
    """A shipped template by name (granite-4) or a Jinja file by path."""
    if name_or_path in SHIPPED_TEMPLATES:
        return (resources.files("kakugo_stages") / "templates" / f"{name_or_path}.jinja").read_text(
            encoding="utf-8"
        )
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"chat template {name_or_path!r} is neither a shipped template "
            f"({', '.join(SHIPPED_TEMPLATES)}) nor a file"
        )
    template = path.read_text(encoding="utf-8")
    if "{% generation %}" not in template and "{%- generation %}" not in template:
        raise ValueError(
            f"chat template {path} has no {{% generation %}} markers: assistant-only loss "
            "needs them around each assistant turn and its end-of-turn token"
        )
    return template


def assistant_content(response: str, reasoning: str | None) -> str:
    """The assistant turn of a generated row: a think block, then the answer."""
    if reasoning is None:
        return response
    return f"{THINK_OPEN} {reasoning.strip()} {THINK_CLOSE} {response.strip()}"


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, str]], template: str, max_length: int | None = None
) -> dict[str, list[int]]:
    """input_ids and labels (-100 outside assistant turns) of one conversation."""
    enc = tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        truncation=max_length is not None,
        max_length=max_length,
    )
    ids = list(enc["input_ids"])
    mask = list(enc["assistant_masks"])
    labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    return {"input_ids": ids, "labels": labels}


def template_overhead(tokenizer: Any, template: str) -> int:
    """Tokens the template adds per message (role markers, end of turn), rounded up."""
    empty = [{"role": r, "content": ""} for r in ("system", "user", "assistant")]
    ids = tokenizer.apply_chat_template(
        empty, chat_template=template, tokenize=True, return_dict=True
    )["input_ids"]
    return -(-len(ids) // len(empty))
