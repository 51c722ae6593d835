"""Benchmark: rows/s of the filter + mix step over 50,000 synthetic rows.

About 35,000 generated rows (5% failed generations) and 15,000 translated conversations
(10% bad translations of every kind the filters know) with realistic lengths, through
`build_mix` (every filter, batched token counting, formatting, seeded shuffle, split)
and the dataset write (parquet + card) on a local store. The tokenizer is a byte-level
BPE trained here (vocab 16k) on text of the same shape: the Granite tokenizer cannot be
downloaded on this machine.

    python bench/filter_mix.py [--rows 50000]

The last line is one JSON object with `rows_per_s` (filter + mix + write) and `peak_rss_mb`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kakugo_stages.filters import FilterSettings, TokenCounter
from kakugo_stages.mix import MixResult, build_mix, write_dataset
from kakugo_stages.spec import MixConfig
from kakugo_stages.store import open_store

SYLLABLES = [
    "ba",
    "dá",
    "ẹ",
    "kọ́",
    "lá",
    "mi",
    "nà",
    "ọ",
    "ṣe",
    "tí",
    "wà",
    "yọ",
    "gbé",
    "jẹ",
    "fẹ́",
    "rí",
    "sọ",
    "kú",
    "àá",
    "ìlú",
    "ọjà",
    "èdè",
    "ilé",
    "oúnjẹ",
]
ENGLISH = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "at",
    "an",
    "not",
    "have",
    "which",
    "but",
    "they",
    "his",
    "one",
    "all",
    "were",
    "we",
    "when",
    "there",
    "can",
    "more",
    "if",
    "will",
    "would",
    "water",
    "city",
    "market",
    "language",
    "learn",
    "answer",
    "question",
    "people",
    "country",
    "history",
]


def words(rng: random.Random, n: int, english: bool = False) -> str:
    if english:
        return " ".join(rng.choice(ENGLISH) for _ in range(n))
    return " ".join(
        "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)
    )


def make_rows(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    n_gen = round(n * 0.7)
    generated = []
    for i in range(n_gen):
        source = ("topics", "scenarios", "contexts")[i % 3]
        prompt = words(rng, rng.randint(15, 80))
        if source == "contexts":
            prompt = words(rng, rng.randint(200, 600)) + "\n\n" + prompt
        row = {
            "id": f"{source}-{i:06d}",
            "source": source,
            "prompt": prompt,
            "user": prompt,
            "response": words(rng, rng.randint(80, 400)),
            "reasoning": words(rng, rng.randint(50, 300), english=True),
        }
        if rng.random() < 0.05:
            row["response"] = None  # a failed generation
        generated.append(row)
    translated = []
    for i in range(n - n_gen):
        turns = 2 * rng.randint(1, 2)
        original = [
            {
                "role": "user" if t % 2 == 0 else "assistant",
                "content": words(rng, rng.randint(20, 250), english=True),
            }
            for t in range(turns)
        ]
        messages = [
            {"role": m["role"], "content": words(rng, len(m["content"].split()))} for m in original
        ]
        if rng.random() < 0.10:  # a bad translation, of one of several kinds
            kind = rng.randrange(5)
            if kind == 0:
                messages = messages[:-1]
            elif kind == 1:
                messages[0]["role"] = "assistant"
            elif kind == 2:
                messages[0]["note"] = "translated"
            elif kind == 3:
                messages[-1]["content"] = words(rng, 1)
            else:
                messages[0]["content"] += " <image>"
        translated.append(
            {
                "id": f"translated-{i:06d}",
                "source": "translated",
                "original": original,
                "messages": messages,
            }
        )
    return generated, translated


def train_tokenizer(generated: list[dict], translated: list[dict]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sample = [r["response"] or "" for r in generated[:3000]] + [
        m["content"] for r in translated[:2000] for m in r["original"]
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        sample,
        trainers.BpeTrainer(
            vocab_size=16_000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def utf8(row: dict) -> int:
    """Bytes of a row's text fields (what the filters may have to tokenize)."""
    texts = [row.get(k) for k in ("prompt", "response", "reasoning")]
    texts += [m.get("content") for m in row.get("messages") or []]
    return sum(len(t.encode()) for t in texts if isinstance(t, str))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument(
        "--no-upstream-counts",
        action="store_true",
        help="Rows without the English turns' token counts: the filter measures them too.",
    )
    parser.add_argument(
        "--no-bounds",
        action="store_true",
        help="Count every translated turn (as for a tokenizer the word/byte bounds do not "
        "hold for, or text where they decide nothing).",
    )
    args = parser.parse_args()

    generated, translated = make_rows(args.rows)
    tokenizer = train_tokenizer(generated, translated)
    settings = FilterSettings(
        0.75, 25.0, ("<image>", "<video>", "<audio>"), 8000, tokenizer_name="bench-bpe"
    )
    counter = TokenCounter(tokenizer)
    counter.bounded = counter.bounded and not args.no_bounds
    print(f"tokenizer:          byte-level BPE, word/byte bounds apply: {counter.bounded}")
    calls: list[int] = []
    tokenize = counter._batch

    def counted(texts: list[str]) -> list[int]:
        calls.append(sum(len(t.encode()) for t in texts))
        return tokenize(texts)

    counter._batch = counted  # type: ignore[method-assign]  # to report bytes tokenized
    upstream = time.perf_counter()
    if not args.no_upstream_counts:
        # What the translate stage stores with each row: the English turns' token counts,
        # measured when it samples them (it waits on the teacher for hours after that).
        counts = iter(counter([m["content"] for r in translated for m in r["original"]]))
        for r in translated:
            r["original_tokens"] = [next(counts) for _ in r["original"]]
            r["original_tokenizer"] = "bench-bpe"
    upstream = time.perf_counter() - upstream
    rss_before = rss_mb()
    calls.clear()

    start = time.perf_counter()
    cpu = time.process_time()
    mix: MixResult = build_mix(generated, translated, settings, MixConfig(), counter, seed=0)
    t_mix = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(open_store(tmp), mix, "# bench\n")
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu

    total = len(generated) + len(translated)
    print(
        f"rows in:            {total:>8} ({len(generated)} generated, {len(translated)} translated)"
    )
    print(f"rows kept:          {mix.rows:>8}  dropped: {dict(mix.dropped)}")
    print(f"filter + mix:       {t_mix:8.2f} s  ({total / t_mix:,.0f} rows/s)")
    print(f"+ dataset write:    {elapsed:8.2f} s  ({total / elapsed:,.0f} rows/s), CPU {cpu:.2f} s")
    if not args.no_upstream_counts:
        print(f"(translate stage:   {upstream:8.2f} s measuring the English turns, not counted)")
    text_mb = sum(utf8(r) for r in generated) + sum(utf8(r) for r in translated)
    print(f"tokenized:          {sum(calls) / 1e6:8.1f} MB of {text_mb / 1e6:.1f} MB of text")
    print(f"peak RSS:           {rss_mb():8.0f} MB (after building the input: {rss_before:.0f})")
    print(
        json.dumps(
            {
                "rows": total,
                "rows_per_s": round(total / elapsed),
                "mix_rows_per_s": round(total / t_mix),
                "seconds": round(elapsed, 2),
                "peak_rss_mb": round(rss_mb()),
                "kept": mix.rows,
                "tokenized_mb": round(sum(calls) / 1e6, 1),
                "dropped": dict(mix.dropped),
            }
        )
    )


if __name__ == "__main__":
    main()
