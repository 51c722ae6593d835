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
from typing import TYPE_CHECKING, Any

from kakugo_stages.chat_format import assistant_content
from kakugo_stages.filters import (
    UNDECIDED,
    FilterSettings,
    TokenCounter,
    check_generated,
    check_ratio_bounds,
    check_translation,
    token_bounds,
    utf8_len,
)
from kakugo_stages.spec import MixConfig
from kakugo_stages.store import PARQUET_BATCH, ArtifactStore

if TYPE_CHECKING:
    import pyarrow

DATASET_DIR = "dataset"
#: 1 row in SAMPLE_EVERY (by a hash of its id) is tokenized whole, for token estimates.
SAMPLE_EVERY = 50


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

    # Translated rows: structure, then per-turn ratios and length (bounds, else counts).
    tr_ok = []
    for row in translated:
        reason = check_translation(row, tags)
        if reason:
            _exclude(result, row, reason)
        else:
            tr_ok.append(row)
    _ratio_and_length_filter_translated(result, tr_ok, candidates, settings, cfg, count)

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
    """Drop generated rows over the cutoff, tokenizing only what might decide it.

    A message's UTF-8 size (+1 for a tokenizer's prefix space) bounds its token count from
    above, so a row within the cutoff by that bound needs no tokenizer. For a row over it,
    the largest message not yet counted is tokenized, round after round (batched), until
    the bound fits or every message is counted: a long context document is often all it
    takes. Token totals for the card are exact for counted rows and, for the rest, bytes
    times the tokens-per-byte of a seeded sample of each source (recorded as estimated).
    """
    per_message = settings.template_tokens
    sizes = [[utf8_len(m["content"]) + 1 for m in conv] for _, conv in rows]
    exact: dict[int, dict[int, int]] = {}

    def bound(i: int) -> int:
        known = exact.get(i, {})
        return sum(known.get(j, n) for j, n in enumerate(sizes[i])) + per_message * len(
            sizes[i])

    sample = [i for i, (row, _) in enumerate(rows) if _in_sample(row["id"])]
    _count_messages(rows, sample, exact, count)  # whole rows, for the tokens-per-byte
    def undecided(i: int) -> bool:
        return bound(i) > settings.max_tokens and len(exact.get(i, {})) < len(sizes[i])

    pending = [i for i in range(len(rows)) if undecided(i)]
    while pending:
        todo = []
        for i in pending:
            known = exact.setdefault(i, {})
            j = max((j for j in range(len(sizes[i])) if j not in known),
                    key=lambda j: sizes[i][j])
            todo.append((i, j))
        counts = count([rows[i][1][j]["content"] for i, j in todo])
        for (i, j), n in zip(todo, counts, strict=True):
            exact[i][j] = n
        pending = [i for i in pending if undecided(i)]

    # Tokens per byte-bound of each source's sample, for the messages left uncounted.
    ratio_num: Counter[str] = Counter()
    ratio_den: Counter[str] = Counter()
    for i in sample:
        source = rows[i][0]["source"]
        ratio_num[source] += sum(exact[i].values())
        ratio_den[source] += sum(sizes[i])
    for i, (row, conv) in enumerate(rows):
        source = row["source"]
        n = bound(i)
        known = exact.get(i, {})
        if len(known) < len(sizes[i]):  # within the cutoff by the bound
            ratio = ratio_num[source] / ratio_den[source] if ratio_den[source] else 1.0
            rest = sum(size for j, size in enumerate(sizes[i]) if j not in known)
            n = n - rest + round(rest * ratio)
            result.estimated_sources.add(source)
        elif n > settings.max_tokens:
            _exclude(result, row, "too_long")
            continue
        candidates.append((row, conv))
        result.tokens_by_source[source] += n


def _count_messages(rows: list[tuple[dict[str, Any], list[dict[str, str]]]], which: list[int],
                    exact: dict[int, dict[int, int]], count: TokenCounter) -> None:
    """Exact counts of every message of the rows `which`, in one batched call."""
    counts = iter(count([m["content"] for i in which for m in rows[i][1]]))
    for i in which:
        exact[i] = {j: next(counts) for j in range(len(rows[i][1]))}


def _ratio_and_length_filter_translated(
    result: MixResult,
    rows: list[dict[str, Any]],
    candidates: list[tuple[dict[str, Any], list[dict[str, str]]]],
    settings: FilterSettings,
    cfg: MixConfig,
    count: TokenCounter,
) -> None:
    """Every turn's translated/original token ratio within [min, max] and the row within
    the cutoff. Bounds decide most turns (see `token_bounds`); the rows they cannot
    decide, and a seeded sample for the card's token totals, are tokenized (batched)."""
    if not rows:
        return
    originals = _original_counts(rows, settings, count)
    system_tokens = count([cfg.concise_system_prompt])[0]
    overhead = settings.template_tokens
    lo, hi, limit = settings.min_ratio, settings.max_ratio, settings.max_tokens
    bounds = [[token_bounds(m["content"], count.bounded) for m in row["messages"]]
              for row in rows]

    def verdict(r: int) -> str | None:
        reason = check_ratio_bounds(originals[r], bounds[r], lo, hi)
        if reason is not None:
            return reason
        fixed = system_tokens + overhead * (len(bounds[r]) + 1)
        if sum(a for a, _ in bounds[r]) + fixed > limit:
            return "too_long"
        if sum(b for _, b in bounds[r]) + fixed > limit:
            return UNDECIDED
        return None

    verdicts = [verdict(r) for r in range(len(rows))]
    sample = {r for r, row in enumerate(rows) if _in_sample(row["id"])}
    todo = [r for r, v in enumerate(verdicts) if v == UNDECIDED or r in sample]
    counts = iter(count([m["content"] for r in todo for m in rows[r]["messages"]]))
    for r in todo:
        bounds[r] = [(n, n) for n in (next(counts) for _ in rows[r]["messages"])]
        verdicts[r] = verdict(r)
    # Tokens per byte of the counted rows, for the rows only bounds decided.
    counted = [r for r in todo if verdicts[r] is None]
    num = sum(bounds[r][i][0] for r in counted for i in range(len(bounds[r])))
    den = sum(utf8_len(m["content"]) for r in counted for m in rows[r]["messages"])
    ratio = num / den if den else 1.0
    for r, row in enumerate(rows):
        if verdicts[r] is not None:
            _exclude(result, row, str(verdicts[r]))
            continue
        if all(a == b for a, b in bounds[r]):
            turns = sum(a for a, _ in bounds[r])
        else:
            turns = round(ratio * sum(utf8_len(m["content"]) for m in row["messages"]))
            result.estimated_sources.add("translated")
        candidates.append((row, translated_conversation(row, cfg)))
        result.tokens_by_source["translated"] += turns + system_tokens + overhead * (
            len(bounds[r]) + 1)


def _original_counts(
    rows: list[dict[str, Any]], settings: FilterSettings, count: TokenCounter
) -> list[list[int]]:
    """Per-row token counts of the English turns.

    The translate stage measures the English turns when it samples them (it tokenizes them
    anyway for its length cap); only rows without those counts are measured here."""
    known = [_known_original_tokens(row, settings.tokenizer_name) for row in rows]
    missing = iter(count([m["content"] for row, k in zip(rows, known, strict=True) if k is None
                          for m in row["original"]]))
    return [k if k is not None else [next(missing) for _ in row["original"]]
            for row, k in zip(rows, known, strict=True)]


def _known_original_tokens(row: dict[str, Any], tokenizer: str | None) -> list[int] | None:
    counts = row.get("original_tokens")
    if (tokenizer is None or row.get("original_tokenizer") != tokenizer
            or not isinstance(counts, list) or len(counts) != len(row["original"])):
        return None
    return counts


def _in_sample(row_id: str) -> bool:
    return zlib.crc32(row_id.encode()) % SAMPLE_EVERY == 0


def write_dataset(store: ArtifactStore, result: MixResult, card: str) -> dict[str, str]:
    """Parquet splits + README card under `dataset/`, loadable with
    `datasets.load_dataset(<folder>)` (the card's YAML names the splits' files)."""
    files = {}
    for split, rows in (("train", result.train), ("validation", result.validation)):
        key = f"{DATASET_DIR}/data/{split}-00000-of-00001.parquet"
        if rows:
            store.write_parquet_tables(key, (
                mix_table(rows[i : i + PARQUET_BATCH]) for i in range(0, len(rows),
                                                                      PARQUET_BATCH)))
            files[split] = key
        else:
            store.delete(key)
    store.write_text(f"{DATASET_DIR}/README.md", card)
    return files


def mix_table(rows: list[dict[str, Any]]) -> pyarrow.Table:
    """Rows of the mix as an Arrow table, built column by column (flat lists of strings
    convert in C; `Table.from_pylist` walks every nested dict in Python). Contents go in
    as bytes: converting a `str` makes CPython keep a UTF-8 copy inside the string for as
    long as it lives, which for the whole mix is hundreds of MB."""
    import pyarrow as pa

    offsets, roles, contents = [0], [], []
    for row in rows:
        for message in row["messages"]:
            roles.append(message["role"])
            contents.append(message["content"])
        offsets.append(len(roles))
    messages = pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.StructArray.from_arrays([pa.array(roles, pa.string()),
                                    pa.array([c.encode() for c in contents],
                                             pa.binary()).cast(pa.string())],
                                   ["role", "content"]))
    return pa.table({
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "messages": messages,
        "reasoning": pa.array([r["reasoning"] for r in rows], pa.bool_()),
    })
