"""Input corpora: a Hugging Face hub dataset read with `datasets` streaming, or a local
or S3 mirror of JSONL / JSON / parquet files. Corpora are never downloaded whole, and
every sample is seeded (recipe mistake 6)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from kakugo_stages.store import open_store

SHUFFLE_BUFFER = 10_000
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


def shuffled_records(
    *,
    path: str | None,
    dataset: str,
    config: str | None,
    split: str,
    seed: int,
    where: tuple[str, str] | None = None,
) -> tuple[Iterator[dict[str, Any]], int | None]:
    """Records of a corpus in a seeded random order, and the corpus size when known.

    A mirror `path` is read whole and shuffled (mirrors are samples already); a hub
    dataset is streamed through a shuffle buffer and its size is unknown (None).
    `where=(field, value)` keeps only records whose field equals value.
    """
    if path:
        rows = [row for store, key in _files(path) for row in _read(store, key)]
        if where:
            rows = [r for r in rows if r.get(where[0]) == where[1]]
        random.Random(seed).shuffle(rows)
        return iter(rows), len(rows)
    return _stream(dataset, config, split, seed, where), None


def _stream(
    dataset: str, config: str | None, split: str, seed: int, where: tuple[str, str] | None
) -> Iterator[dict[str, Any]]:
    try:
        from datasets import load_dataset

        stream = load_dataset(dataset, config, split=split, streaming=True)
        if where:
            field, value = where
            stream = stream.filter(lambda r: r.get(field) == value)
        yield from stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    except Exception as exc:  # datasets raises many types, also lazily: wrap at the boundary
        raise SourceError(
            f"cannot stream {dataset} (config {config}, split {split}): {exc}. Offline or "
            "air-gapped? Point the source's `path` at a local or s3:// mirror."
        ) from exc


def take(records: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return list(islice(records, n))
