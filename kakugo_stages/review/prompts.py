"""The review's prompts: prompts of the run's own data that the student never trained on.

They come from the validation split of the training mix. The filter stage splits the
shuffled mix once; the train stage learns from the train split only and uses the
validation split for its validation loss, never for a gradient step. A validation prompt
can still equal a train prompt (translated rows are not deduplicated against generated
ones, and two sources may ask the same thing), so every prompt whose text, compared as
the filter's duplicate check compares prompts (words and case folding), is the user turn
of any train row is dropped. What is left was never in a training example.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from kakugo_stages.mix import DATASET_DIR
from kakugo_stages.store import ArtifactNotFound, ArtifactStore


class ReviewError(RuntimeError):
    """The review page or its results cannot be made; the message says why."""


@dataclass(frozen=True)
class Prompt:
    id: str  # the dataset row's id
    text: str


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def _user_turns(row: dict[str, Any]) -> list[str]:
    return [str(m["content"]) for m in row.get("messages") or [] if m.get("role") == "user"]


def _split(store: ArtifactStore, split: str) -> list[dict[str, Any]]:
    key = f"{DATASET_DIR}/data/{split}-00000-of-00001.parquet"
    try:
        return store.read_parquet(key)
    except ArtifactNotFound:
        return []


def held_out_prompts(store: ArtifactStore, n: int, seed: int) -> tuple[list[Prompt], int]:
    """Up to `n` held-out prompts in a seeded random order, and how many validation
    prompts were dropped because a train row has the same prompt."""
    validation = _split(store, "validation")
    if not validation:
        raise ReviewError(
            f"no validation split under {store.url(DATASET_DIR)}: the review shows prompts "
            "held out of training; run the filter stage with data.mix.validationFraction > 0"
        )
    trained = {_key(t) for row in _split(store, "train") for t in _user_turns(row)}
    seen: set[str] = set()
    candidates: list[Prompt] = []
    dropped = 0
    for row in sorted(validation, key=lambda r: str(r["id"])):
        turns = _user_turns(row)
        if not turns:
            continue
        key = _key(turns[0])
        if key in trained:
            dropped += 1
            continue
        if key in seen:
            continue
        seen.add(key)
        candidates.append(Prompt(str(row["id"]), turns[0]))
    rng = random.Random(seed)
    rng.shuffle(candidates)
    return candidates[:n], dropped
