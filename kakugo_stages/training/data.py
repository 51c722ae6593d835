"""The training mix as the trainer sees it: tokenized conversations with assistant-only
labels, packed into rows of at most `cutoff_len` tokens, and the collators that batch them.

Tokenization goes through `chat_format.tokenize_conversation`, the same function the
tests inspect, so the system prompt and the end-of-turn token reach the training
examples on the real path (recipe mistake 1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kakugo_stages.chat_format import tokenize_conversation
from kakugo_stages.store import ArtifactStore

IGNORE_INDEX = -100


def split_key(split: str) -> str:
    return f"dataset/data/{split}-00000-of-00001.parquet"


def load_split(store: ArtifactStore, split: str) -> list[dict[str, Any]]:
    """Rows of one split of the mix written by the filter stage ([] when absent)."""
    key = split_key(split)
    if not store.exists(key):
        return []
    return store.read_parquet(key)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class TokenTotals:
    """Exact token accounting of one split (the dataset card promises these)."""

    rows: int = 0
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    tokens_by_source: Counter[str] = field(default_factory=Counter)
    trained_tokens_by_source: Counter[str] = field(default_factory=Counter)
    examples_by_source: Counter[str] = field(default_factory=Counter)

    def add(self, ex: Example) -> None:
        self.examples += 1
        self.tokens += len(ex)
        self.trained_tokens += ex.trained_tokens
        self.tokens_by_source[ex.source] += len(ex)
        self.trained_tokens_by_source[ex.source] += ex.trained_tokens
        self.examples_by_source[ex.source] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "examples": self.examples,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "dropped": dict(sorted(self.dropped.items())),
            "examples_by_source": dict(sorted(self.examples_by_source.items())),
            "tokens_by_source": dict(sorted(self.tokens_by_source.items())),
            "trained_tokens_by_source": dict(sorted(self.trained_tokens_by_source.items())),
        }


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    # Parquet gives the list of structs back as dicts; keep only role and content.
    return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def tokenize_rows(
    rows: Iterable[dict[str, Any]], tokenizer: Any, template: str, cutoff_len: int
) -> tuple[list[Example], TokenTotals]:
    """Tokenize every row; drop (and count) rows over `cutoff_len` or without any
    assistant token. Rows are never truncated: a cut answer would lose its end-of-turn
    token and teach the student not to stop. The filter stage already drops rows over
    the cutoff by its estimate; this is the exact check."""
    totals = TokenTotals()
    examples: list[Example] = []
    for row in rows:
        totals.rows += 1
        enc = tokenize_conversation(tokenizer, _messages(row), template)
        ex = Example(enc["input_ids"], enc["labels"], str(row.get("source") or "unknown"))
        if len(ex) > cutoff_len:
            totals.dropped["over_cutoff_len"] += 1
            continue
        if ex.trained_tokens == 0:
            totals.dropped["no_assistant_tokens"] += 1
            continue
        examples.append(ex)
        totals.add(ex)
    return examples, totals


def pack_examples(lengths: Sequence[int], cutoff_len: int) -> list[list[int]]:
    """Greedy packing in dataset order (the mix is already shuffled): start a new row when
    the next example would not fit. Returns example indices per row."""
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if n > cutoff_len:
            raise ValueError(f"example {i} has {n} tokens, over cutoff_len {cutoff_len}")
        if current and used + n > cutoff_len:
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        packs.append(current)
    return packs


class TrainDataset:
    """A map-style dataset of rows: packed (several examples, position_ids restarting at
    each) or one example per row."""

    def __init__(self, examples: Sequence[Example], cutoff_len: int, packing: bool):
        self.examples = list(examples)
        groups = (
            pack_examples([len(e) for e in self.examples], cutoff_len)
            if packing
            else [[i] for i in range(len(self.examples))]
        )
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        seq_lens: list[int] = []
        for j in self.groups[i]:
            ex = self.examples[j]
            input_ids += ex.input_ids
            # The first token of an example is never a target: it would be "predicted"
            # from the previous example's last token.
            labels += [IGNORE_INDEX, *ex.labels[1:]]
            position_ids += range(len(ex))
            seq_lens.append(len(ex))
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "seq_lens": seq_lens,
        }

    @property
    def tokens(self) -> int:
        return sum(len(e) for e in self.examples)

    def row_lengths(self) -> list[int]:
        return [sum(len(self.examples[j]) for j in g) for g in self.groups]


class PackedCollator:
    """Padding-free batches: every row of the batch is flattened into one sequence of shape
    (1, total_tokens) with restarting position_ids (like transformers'
    DataCollatorWithFlattening). For flash attention it adds the varlen kwargs
    (cu_seq_lens_q/k, max_length_q/k); for sdpa/eager the packed-mask hook turns the
    position_ids into a block-diagonal mask (see attention.py)."""

    def __init__(self, flash_kwargs: bool):
        self.flash_kwargs = flash_kwargs

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        lens: list[int] = []
        for f in features:
            ids += f["input_ids"]
            labels += f["labels"]
            pos += f["position_ids"]
            lens += f["seq_lens"]
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
        }
        if self.flash_kwargs:
            cu = torch.tensor([0, *lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch.update(
                cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lens), max_length_k=max(lens)
            )
        return batch


class PaddedCollator:
    """One example per row, right-padded to the longest in the batch (the baseline, and
    the fallback for models whose layers cannot take packed rows)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = longest - len(f["input_ids"])
            ids.append(f["input_ids"] + [self.pad_token_id] * pad)
            labels.append(f["labels"] + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
