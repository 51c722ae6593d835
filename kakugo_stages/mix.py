"""The training mix: filtered rows -> chat conversations -> one shuffled dataset with a
train/validation split, written as a Hugging Face `datasets` folder with a card.

Generated rows get the think-first system prompt and a `<think> … </think>` block before
the answer (unless `data.mix.reasoning` is off, or the teacher gave no reasoning: then
the concise prompt and no block, so the toggle is always consistent). Translated rows
get the concise system prompt.
"""

from __future__ import annotations

import random
import zlib
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
    utf8_len,
)
from kakugo_stages.spec import MixConfig
from kakugo_stages.store import ArtifactStore

DATASET_DIR = "dataset"


@dataclass
class MixResult:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    kept_by_source: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_by_source: dict[str, Counter[str]] = field(default_factory=dict)
    tokens_by_source: Counter[str] = field(default_factory=Counter)
    #: Sources whose token totals are partly estimated (see _length_filter_generated).
    estimated_sources: set[str] = field(default_factory=set)
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
    _length_filter_generated(result, gen_ok, candidates, settings, count)

    # Translated rows: structure, then per-turn ratios and length from batched counts.
    tr_ok = []
    for row in translated:
        reason = check_translation(row, tags)
        if reason:
            _exclude(result, row, reason)
        else:
            tr_ok.append(row)
    original_counts, translated_counts = _translated_counts(tr_ok, settings, count)
    system_tokens = count([cfg.concise_system_prompt])[0] if tr_ok else 0
    overhead = settings.template_tokens
    pos = 0
    for row, o in zip(tr_ok, original_counts, strict=True):
        n_turns = len(row["messages"])
        t = translated_counts[pos : pos + n_turns]
        pos += n_turns
        reason = check_ratios(o, t, settings.min_ratio, settings.max_ratio)
        total = sum(t) + system_tokens + overhead * (n_turns + 1)
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


def _length_filter_generated(
    result: MixResult,
    rows: list[tuple[dict[str, Any], list[dict[str, str]]]],
    candidates: list[tuple[dict[str, Any], list[dict[str, str]]]],
    settings: FilterSettings,
    count: TokenCounter,
) -> None:
    """Drop generated rows over the cutoff, tokenizing only the rows that might be.

    A conversation's UTF-8 size (+1 per message for a tokenizer's prefix space, + the
    template's tokens) bounds its token count from above, so a row within the cutoff by
    that bound needs no tokenizer. Token totals for the card are exact for the rows that
    were counted and, for the rest, bytes times the tokens-per-byte of a seeded 1-in-20
    sample of each source (recorded as estimated).
    """
    overhead = settings.template_tokens + 1
    sizes = [sum(utf8_len(m["content"]) for m in conv) + overhead * len(conv)
             for _, conv in rows]
    must = [i for i, n in enumerate(sizes) if n > settings.max_tokens]
    must_set = set(must)
    sample = [i for i, (row, _) in enumerate(rows)
              if i not in must_set and _in_sample(row["id"])]
    counted = dict(zip(
        must + sample,
        _conversation_tokens([rows[i][1] for i in must + sample], count, overhead - 1),
        strict=True,
    ))
    ratio_num: Counter[str] = Counter()
    ratio_den: Counter[str] = Counter()
    for i in sample:
        source = rows[i][0]["source"]
        ratio_num[source] += counted[i]
        ratio_den[source] += sizes[i]
    for i, (row, conv) in enumerate(rows):
        source = row["source"]
        if i in counted:
            n = counted[i]
        else:
            ratio = ratio_num[source] / ratio_den[source] if ratio_den[source] else 1.0
            n = round(sizes[i] * ratio)
            result.estimated_sources.add(source)
        if i in counted and n > settings.max_tokens:
            _exclude(result, row, "too_long")
        else:
            candidates.append((row, conv))
            result.tokens_by_source[source] += n


def _translated_counts(
    rows: list[dict[str, Any]], settings: FilterSettings, count: TokenCounter
) -> tuple[list[list[int]], list[int]]:
    """Per-row token counts of the English turns and flat counts of the translated turns.

    The translate stage measures the English turns when it samples them (it tokenizes them
    anyway for its length cap); only rows without those counts are measured here."""
    known = [_known_original_tokens(row, settings.tokenizer_name) for row in rows]
    missing = iter(count([m["content"] for row, k in zip(rows, known, strict=True) if k is None
                          for m in row["original"]]))
    originals = [k if k is not None else [next(missing) for _ in row["original"]]
                 for row, k in zip(rows, known, strict=True)]
    return originals, count([m["content"] for row in rows for m in row["messages"]])


def _known_original_tokens(row: dict[str, Any], tokenizer: str | None) -> list[int] | None:
    counts = row.get("original_tokens")
    if (tokenizer is None or row.get("original_tokenizer") != tokenizer
            or not isinstance(counts, list) or len(counts) != len(row["original"])):
        return None
    return counts


def _in_sample(row_id: str) -> bool:
    return zlib.crc32(row_id.encode()) % 20 == 0


def _conversation_tokens(
    convs: list[list[dict[str, str]]], count: TokenCounter, per_message: int
) -> list[int]:
    counts = count([m["content"] for conv in convs for m in conv])
    out, pos = [], 0
    for conv in convs:
        out.append(sum(counts[pos : pos + len(conv)]) + per_message * len(conv))
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
