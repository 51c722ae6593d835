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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

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
from kakugo_stages.store import ArtifactStore

if TYPE_CHECKING:
    import pyarrow

DATASET_DIR = "dataset"
#: 1 row in SAMPLE_EVERY (by a hash of its id) is tokenized whole, for token estimates.
SAMPLE_EVERY = 50
#: Rows per parquet row group of the dataset: rows are formatted one group at a time, and
#: a group of 1,024 long conversations is already ~15 MB of text (4,096 cost +80 MB RSS).
ROW_GROUP = 1024


class MixRows(Sequence[dict[str, Any]]):
    """The rows of one split, formatted (system prompt, think block, messages) when read:
    the mix holds a reference to each input row, not a formatted copy, so its memory does
    not grow with the text (the dataset write formats one row group at a time)."""

    def __init__(self, cfg: MixConfig) -> None:
        self.cfg = cfg
        self._rows: list[tuple[dict[str, Any], bool]] = []  # (input row, translated)

    def append(self, row: dict[str, Any], translated: bool) -> None:
        self._rows.append((row, translated))

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self._format(*row) for row in self._rows[i]]
        return self._format(*self._rows[i])

    def _format(self, row: dict[str, Any], translated: bool) -> dict[str, Any]:
        conv = (translated_conversation if translated else generated_conversation)(row, self.cfg)
        return {
            "id": row["id"],
            "source": row["source"],
            "messages": conv,
            "reasoning": conv[0]["content"] == self.cfg.think_system_prompt,
        }


@dataclass
class MixResult:
    train: MixRows
    validation: MixRows
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
    result.excluded.append({"id": row.get("id"), "source": source, "reason": reason, "row": row})


def _reasoning(row: dict[str, Any], cfg: MixConfig) -> str | None:
    reasoning = row.get("reasoning") if cfg.reasoning else None
    # isspace() stops at the first non-space character; strip() would copy the text.
    return reasoning if reasoning and not reasoning.isspace() else None


def generated_conversation(row: dict[str, Any], cfg: MixConfig) -> list[dict[str, str]]:
    reasoning = _reasoning(row, cfg)
    system = cfg.think_system_prompt if reasoning is not None else cfg.concise_system_prompt
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": row.get("user") or row["prompt"]},
        {"role": "assistant", "content": assistant_content(row["response"], reasoning)},
    ]


def translated_conversation(row: dict[str, Any], cfg: MixConfig) -> list[dict[str, str]]:
    return [{"role": "system", "content": cfg.concise_system_prompt}, *row["messages"]]


def _prompt_key(row: dict[str, Any]) -> str:
    """What makes two generated prompts the same: words and case folding."""
    return " ".join((row.get("user") or row["prompt"]).split()).casefold()


class _SeenPrompts:
    """Prompts seen so far, compared by `_prompt_key`. It holds the key's hash and the
    row, not the key: prompts carry whole context documents, and a set of their keys
    was the largest thing the filter built. A hash shared by two rows is settled by
    comparing their keys, so a collision never drops a row."""

    def __init__(self) -> None:
        self._rows: dict[int, list[dict[str, Any]]] = {}

    def seen(self, row: dict[str, Any]) -> bool:
        """Whether a row with the same key was seen before; remembers this one if not."""
        key = _prompt_key(row)
        same_hash = self._rows.setdefault(hash(key), [])
        if any(_prompt_key(other) == key for other in same_hash):
            return True
        same_hash.append(row)
        return False


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
    result = MixResult(MixRows(cfg), MixRows(cfg), [])
    tags = settings.media_tags
    candidates: list[tuple[dict[str, Any], bool]] = []  # (row, translated)

    prompts = _SeenPrompts()
    gen_ok = []
    for row in generated:
        if row.get("source") not in cfg.sources:
            _exclude(result, row, "source_not_in_mix")
            continue
        reason = check_generated(row, tags)
        if reason is None and prompts.seen(row):
            reason = "duplicate_prompt"
        if reason:
            _exclude(result, row, reason)
        else:
            gen_ok.append(row)
    _length_filter_generated(result, gen_ok, candidates, settings, cfg, count)

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
    candidates.sort(key=lambda rt: rt[0]["id"])
    random.Random(seed).shuffle(candidates)
    n_val = round(len(candidates) * cfg.validation_fraction)
    if cfg.validation_fraction > 0 and n_val == 0 and len(candidates) > 1:
        n_val = 1
    for i, (row, is_translated) in enumerate(candidates):
        (result.validation if i < n_val else result.train).append(row, is_translated)
        result.kept_by_source[row["source"]] += 1
        result.reasoning_rows += _system_prompt(row, is_translated, cfg) == cfg.think_system_prompt
    return result


def _system_prompt(row: dict[str, Any], translated: bool, cfg: MixConfig) -> str:
    """The system prompt a row's conversation starts with, without formatting the rest."""
    if not translated and _reasoning(row, cfg) is not None:
        return cfg.think_system_prompt
    return cfg.concise_system_prompt


def _length_filter_generated(
    result: MixResult,
    rows: list[dict[str, Any]],
    candidates: list[tuple[dict[str, Any], bool]],
    settings: FilterSettings,
    cfg: MixConfig,
    count: TokenCounter,
) -> None:
    """Drop generated rows over the cutoff, tokenizing only what might decide it.

    A message's UTF-8 size (+1 for a tokenizer's prefix space) bounds its token count from
    above, so a row within the cutoff by that bound needs no tokenizer. For a row over it,
    the largest message not yet counted is tokenized, round after round (batched), until
    the bound fits or every message is counted: a long context document is often all it
    takes. Token totals for the card are exact for counted rows and, for the rest, bytes
    times the tokens-per-byte of a seeded sample of each source (recorded as estimated).
    Conversations are formatted when measured and not kept.
    """
    per_message = settings.template_tokens

    def texts(i: int) -> list[str]:
        return [m["content"] for m in generated_conversation(rows[i], cfg)]

    sizes = [[utf8_len(t) + 1 for t in texts(i)] for i in range(len(rows))]
    exact: dict[int, dict[int, int]] = {}

    def bound(i: int) -> int:
        known = exact.get(i, {})
        return sum(known.get(j, n) for j, n in enumerate(sizes[i])) + per_message * len(sizes[i])

    sample = [i for i, row in enumerate(rows) if _in_sample(row["id"])]
    counts = iter(count(t for i in sample for t in texts(i)))  # whole rows: tokens per byte
    for i in sample:
        exact[i] = {j: next(counts) for j in range(len(sizes[i]))}

    def undecided(i: int) -> bool:
        return bound(i) > settings.max_tokens and len(exact.get(i, {})) < len(sizes[i])

    pending = [i for i in range(len(rows)) if undecided(i)]
    while pending:
        todo = []
        for i in pending:
            known = exact.setdefault(i, {})
            j = max((j for j in range(len(sizes[i])) if j not in known), key=lambda j: sizes[i][j])
            todo.append((i, j))
        for (i, j), n in zip(todo, count(texts(i)[j] for i, j in todo), strict=True):
            exact[i][j] = n
        pending = [i for i in pending if undecided(i)]

    # Tokens per byte-bound of each source's sample, for the messages left uncounted.
    ratio_num: Counter[str] = Counter()
    ratio_den: Counter[str] = Counter()
    for i in sample:
        source = rows[i]["source"]
        ratio_num[source] += sum(exact[i].values())
        ratio_den[source] += sum(sizes[i])
    for i, row in enumerate(rows):
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
        candidates.append((row, False))
        result.tokens_by_source[source] += n


def _ratio_and_length_filter_translated(
    result: MixResult,
    rows: list[dict[str, Any]],
    candidates: list[tuple[dict[str, Any], bool]],
    settings: FilterSettings,
    cfg: MixConfig,
    count: TokenCounter,
) -> None:
    """Every turn's translated/original token ratio within [min, max] and the row within
    the cutoff. Bounds decide most turns (see `token_bounds`); the rows they cannot
    decide, and a seeded sample for the card's token totals, are counted (batched)."""
    if not rows:
        return
    originals = _original_counts(rows, settings, count)
    system_tokens = count([cfg.concise_system_prompt])[0]
    overhead = settings.template_tokens
    lo, hi, limit = settings.min_ratio, settings.max_ratio, settings.max_tokens
    sizes = [[utf8_len(m["content"]) for m in row["messages"]] for row in rows]
    bounds = [
        [
            token_bounds(m["content"], count.bounded, size)
            for m, size in zip(row["messages"], sizes[r], strict=True)
        ]
        for r, row in enumerate(rows)
    ]

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
    counts = iter(count(m["content"] for r in todo for m in rows[r]["messages"]))
    for r in todo:
        bounds[r] = [(n, n) for n in (next(counts) for _ in rows[r]["messages"])]
        verdicts[r] = verdict(r)
    # Tokens per byte of the counted rows, for the rows only bounds decided.
    counted = [r for r in todo if verdicts[r] is None]
    num = sum(bounds[r][i][0] for r in counted for i in range(len(bounds[r])))
    den = sum(sum(sizes[r]) for r in counted)
    ratio = num / den if den else 1.0
    for r, row in enumerate(rows):
        if verdicts[r] is not None:
            _exclude(result, row, str(verdicts[r]))
            continue
        if all(a == b for a, b in bounds[r]):
            turns = sum(a for a, _ in bounds[r])
        else:
            turns = round(ratio * sum(sizes[r]))
            result.estimated_sources.add("translated")
        candidates.append((row, True))
        result.tokens_by_source["translated"] += (
            turns + system_tokens + overhead * (len(bounds[r]) + 1)
        )


def _original_counts(
    rows: list[dict[str, Any]], settings: FilterSettings, count: TokenCounter
) -> list[list[int]]:
    """Per-row token counts of the English turns.

    The translate stage measures the English turns when it samples them (it tokenizes them
    anyway for its length cap); only rows without those counts are measured here."""
    known = [_known_original_tokens(row, settings.tokenizer_name) for row in rows]
    missing = iter(
        count(
            [
                m["content"]
                for row, k in zip(rows, known, strict=True)
                if k is None
                for m in row["original"]
            ]
        )
    )
    return [
        k if k is not None else [next(missing) for _ in row["original"]]
        for row, k in zip(rows, known, strict=True)
    ]


def _known_original_tokens(row: dict[str, Any], tokenizer: str | None) -> list[int] | None:
    counts = row.get("original_tokens")
    if (
        tokenizer is None
        or row.get("original_tokenizer") != tokenizer
        or not isinstance(counts, list)
        or len(counts) != len(row["original"])
    ):
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
            store.write_parquet_tables(
                key, (mix_table(rows[i : i + ROW_GROUP]) for i in range(0, len(rows), ROW_GROUP))
            )
            files[split] = key
        else:
            store.delete(key)
    store.write_text(f"{DATASET_DIR}/README.md", card)
    return files


def mix_table(rows: Sequence[dict[str, Any]]) -> pyarrow.Table:
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
        pa.StructArray.from_arrays(
            [
                pa.array(roles, pa.string()),
                # encode() only makes valid UTF-8: a view, no check.
                pa.array([c.encode() for c in contents], pa.binary()).view(pa.string()),
            ],
            ["role", "content"],
        ),
    )
    return pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "source": pa.array([r["source"] for r in rows], pa.string()),
            "messages": messages,
            "reasoning": pa.array([r["reasoning"] for r in rows], pa.bool_()),
        }
    )
