"""Input corpora: a Hugging Face hub dataset read with `datasets` streaming, or a local
or S3 mirror of JSONL / JSON / parquet files. Corpora are never downloaded whole, and
every sample is seeded (recipe mistake 6)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kakugo_stages.store import open_store

_ROW_SUFFIXES = (".jsonl", ".json", ".parquet")


class SourceError(RuntimeError):
    """A corpus that cannot be read; the message says which and how to fix it."""


def _files(path: str) -> list[tuple[Any, str]]:
    """(store, key) of every row file at a path: one file, or a folder / prefix of them."""
    if path.startswith("s3://"):
        bucket_prefix = path.rstrip("/")
        store = open_store(bucket_prefix.rsplit("/", 1)[0])
        name = bucket_prefix.rsplit("/", 1)[1]
        if name.endswith(_ROW_SUFFIXES) and store.exists(name):
            return [(store, name)]
        store = open_store(bucket_prefix)
        keys = [k for k in store.list() if k.endswith(_ROW_SUFFIXES)]
    else:
        local = Path(path.removeprefix("file://")).expanduser()
        if local.is_file():
            return [(open_store(str(local.parent.resolve())), local.name)]
        if not local.is_dir():
            raise SourceError(f"corpus path {path} does not exist")
        store = open_store(str(local.resolve()))
        keys = [k for k in store.list() if k.endswith(_ROW_SUFFIXES)]
    if not keys:
        raise SourceError(f"no .jsonl, .json or .parquet files under {path}")
    return [(store, k) for k in sorted(keys)]


def _read(store: Any, key: str) -> Iterator[dict[str, Any]]:
    if key.endswith(".parquet"):
        yield from store.read_parquet(key)
    elif key.endswith(".jsonl"):
        yield from store.iter_jsonl(key)
    else:
        data = store.read_json(key)
        yield from data if isinstance(data, list) else [data]


def sample_records(
    *,
    path: str | None,
    dataset: str,
    config: str | None,
    split: str,
    seed: int,
    k: int,
    where: tuple[str, str] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """A uniform random sample of `k` records of a corpus (all of them when it has fewer),
    in a seeded random order, and the number of records it holds.

    `where=(field, value)` keeps only records whose field equals value; the count is of
    those. A mirror `path` (files read in name order) and a hub dataset (streamed with
    `datasets`, never downloaded whole) are read the same way: once, through a reservoir
    of `k` records (Algorithm R), so every record has the same chance whatever its place
    in the stream. The cost: the whole split goes over the wire once (time and network in
    proportion to the corpus; memory only for the `k` records kept). A shuffle buffer
    would stop early, but draws only from the first part of a stream.
    """
    records = _iter_files(path) if path else _stream(dataset, config, split)
    if where:
        field, value = where
        records = (r for r in records if r.get(field) == value)
    rng = random.Random(seed)
    sample, seen = reservoir(records, k, rng)
    rng.shuffle(sample)
    return sample, seen


def reservoir(
    records: Iterable[dict[str, Any]], k: int, rng: random.Random
) -> tuple[list[dict[str, Any]], int]:
    """Algorithm R: `k` records drawn uniformly without replacement from a stream of unknown
    length (in stream order until shuffled), and how many records the stream held."""
    sample: list[dict[str, Any]] = []
    seen = 0
    for record in records:
        if seen < k:
            sample.append(record)
        else:
            j = rng.randrange(seen + 1)
            if j < k:
                sample[j] = record
        seen += 1
    return sample, seen


def _iter_files(path: str) -> Iterator[dict[str, Any]]:
    for store, key in _files(path):
        yield from _read(store, key)


def _stream(dataset: str, config: str | None, split: str) -> Iterator[dict[str, Any]]:
    try:
        from datasets import load_dataset

        yield from load_dataset(dataset, config, split=split, streaming=True)
    except Exception as exc:  # datasets raises many types, also lazily: wrap at the boundary
        raise SourceError(
            f"cannot stream {dataset} (config {config}, split {split}): {exc}. Offline or "
            "air-gapped? Point the source's `path` at a local or s3:// mirror."
        ) from exc
