"""The training mix: filtered rows -> chat conversations -> one shuffled dataset with a
train/validation split, written as a Hugging Face `datasets` folder with a card.

Generated rows get the think-first system prompt and a `<think> … </think>` block before
the answer (unless `data.mix.reasoning` is off, or the teacher gave no reasoning: then
the concise prompt and no block, so the toggle is always consistent). Translated rows
get the concise system prompt.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kakugo_stages.chat_format import assistant_content
from kakugo_stages.filters import (
    FilterSettings,
    TokenCounter,
    check_generated,
    check_ratios,
    check_translation,
)
from kakugo_stages.spec import MixConfig
from kakugo_stages.store import ArtifactStore

DATASET_DIR = "dataset"
#: Tokens a chat template adds per message (role markers, end of turn), for length checks.
TEMPLATE_TOKENS_PER_MESSAGE = 5


@dataclass
class MixResult:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    kept_by_source: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_by_source: dict[str, Counter[str]] = field(default_factory=dict)
    tokens_by_source: Counter[str] = field(default_factory=Counter)
    reasoning_rows: int = 0

    @property
    def rows(self) -> int:
        return len(self.train) + len(self.validation)


def _exclude(result: MixResult, row: dict[str, Any], reason: str) -> None:
    source = row.get("source", "unknown")
    result.dropped[reason] += 1
    result.dropped_by_source.setdefault(source, Counter())[reason] += 1
    result.excluded.append({"id": row.get("id"), "source": source, "reason": reason,
                            "row": row})


def generated_conversation(row: dict[str, Any], cfg: MixConfig) -> list[dict[str, str]]:
    reasoning = row.get("reasoning") if cfg.reasoning else None
    reasoning = reasoning if reasoning and reasoning.strip() else None
    system = cfg.think_system_prompt if reasoning is not None else cfg.concise_system_prompt
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": row.get("user") or row["prompt"]},
        {"role": "assistant", "content": assistant_content(row["response"], reasoning)},
    ]


def translated_conversation(row: dict[str, Any], cfg: MixConfig) -> list[dict[str, str]]:
    return [{"role": "system", "content": cfg.concise_system_prompt}, *row["messages"]]


def build_mix(
    generated: list[dict[str, Any]],
    translated: list[dict[str, Any]],
    settings: FilterSettings,
    cfg: MixConfig,
    count: TokenCounter,
    seed: int,
) -> MixResult:
    """Filter, format, shuffle and split. Every input row is either kept or excluded with
    its reason."""
    result = MixResult([], [], [])
    tags = settings.media_tags
    candidates: list[tuple[dict[str, Any], list[dict[str, str]]]] = []

    # Generated rows: structure first, then one batched token count of what is left.
    seen_prompts: set[str] = set()
    gen_ok = []
    for row in generated:
        if row.get("source") not in cfg.sources:
            _exclude(result, row, "source_not_in_mix")
            continue
        reason = check_generated(row, tags)
        if reason is None:
            key = " ".join((row.get("user") or row["prompt"]).split()).casefold()
            reason = "duplicate_prompt" if key in seen_prompts else None
            seen_prompts.add(key)
        if reason:
            _exclude(result, row, reason)
        else:
            gen_ok.append((row, generated_conversation(row, cfg)))
    lengths = _conversation_tokens([conv for _, conv in gen_ok], count)
    for (row, conv), n in zip(gen_ok, lengths, strict=True):
        if n > settings.max_tokens:
            _exclude(result, row, "too_long")
        else:
            candidates.append((row, conv))
            result.tokens_by_source[row["source"]] += n

    # Translated rows: structure, then per-turn ratios and length from one batched count.
    tr_ok = []
    for row in translated:
        reason = check_translation(row, tags)
        if reason:
            _exclude(result, row, reason)
        else:
            tr_ok.append(row)
    flat_orig = [m["content"] for row in tr_ok for m in row["original"]]
    flat_tr = [m["content"] for row in tr_ok for m in row["messages"]]
    orig_counts, tr_counts = count(flat_orig), count(flat_tr)
    system_tokens = count([cfg.concise_system_prompt])[0] if tr_ok else 0
    pos = 0
    for row in tr_ok:
        n_turns = len(row["messages"])
        o, t = orig_counts[pos : pos + n_turns], tr_counts[pos : pos + n_turns]
        pos += n_turns
        reason = check_ratios(o, t, settings.min_ratio, settings.max_ratio)
        total = sum(t) + system_tokens + TEMPLATE_TOKENS_PER_MESSAGE * (n_turns + 1)
        if reason is None and total > settings.max_tokens:
            reason = "too_long"
        if reason:
            _exclude(result, row, reason)
        else:
            candidates.append((row, translated_conversation(row, cfg)))
            result.tokens_by_source["translated"] += total

    # One shuffled dataset: order by id first, so the shuffle depends on the seed only.
    candidates.sort(key=lambda rc: rc[0]["id"])
    random.Random(seed).shuffle(candidates)
    n_val = round(len(candidates) * cfg.validation_fraction)
    if cfg.validation_fraction > 0 and n_val == 0 and len(candidates) > 1:
        n_val = 1
    for i, (row, conv) in enumerate(candidates):
        thinks = conv[0]["content"] == cfg.think_system_prompt
        out = {"id": row["id"], "source": row["source"], "messages": conv,
               "reasoning": thinks}
        (result.validation if i < n_val else result.train).append(out)
        result.kept_by_source[row["source"]] += 1
        result.reasoning_rows += thinks
    return result


def _conversation_tokens(convs: list[list[dict[str, str]]], count: TokenCounter) -> list[int]:
    flat = [m["content"] for conv in convs for m in conv]
    counts = count(flat)
    out, pos = [], 0
    for conv in convs:
        out.append(sum(counts[pos : pos + len(conv)]) + TEMPLATE_TOKENS_PER_MESSAGE * len(conv))
        pos += len(conv)
    return out


def write_dataset(store: ArtifactStore, result: MixResult, card: str) -> dict[str, str]:
    """Parquet splits + README card under `dataset/`, loadable with
    `datasets.load_dataset(<folder>)` (the card's YAML names the splits' files)."""
    files = {}
    for split, rows in (("train", result.train), ("validation", result.validation)):
        key = f"{DATASET_DIR}/data/{split}-00000-of-00001.parquet"
        if rows:
            store.write_parquet(key, rows)
            files[split] = key
        else:
            store.delete(key)
    store.write_text(f"{DATASET_DIR}/README.md", card)
    return files
