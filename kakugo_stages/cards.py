"""Dataset and model cards (README.md with YAML metadata), written beside the artifacts."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from kakugo_stages.mix import SAMPLE_EVERY, MixResult
from kakugo_stages.resolved import RunSpec

LICENSE_NOTES = """\
- Generated rows (topics, scenarios, contexts) were written by the teacher model
  ({teacher}); check its licence and terms of use before redistributing its outputs.
- Context documents come from FineWeb-2 (ODC-By 1.0, subject to Common Crawl's terms of
  use) unless a mirror path was configured.
- Translated rows are translations of BAAI Infinity-Instruct conversations (CC BY-SA 4.0):
  share-alike applies to them.
"""


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _token_note(mix: MixResult) -> str:
    if not mix.estimated_sources:
        return "Token counts are exact, with the student's tokenizer and chat template."
    return (
        "Token counts of the rows the filters had to count (near the length cutoff or a "
        "ratio bound) are exact; for the other rows of "
        f"{', '.join(sorted(mix.estimated_sources))} they are estimated from their UTF-8 "
        f"size and the tokens per byte of a seeded 1-in-{SAMPLE_EVERY} sample (the train "
        "stage reports exact totals)."
    )


def mix_digest(mix: MixResult) -> str:
    """A digest of the rows of every split, in order: their ids and the length of every
    message. It tells two mixes apart without hashing their text (which costs as much as
    a tenth of the filter's time for 50,000 rows); with the run's name and spec
    fingerprint beside it, two runs' cards never match."""
    h = hashlib.blake2b(digest_size=8)
    for split, rows in (("train", mix.train), ("validation", mix.validation)):
        h.update(f"\0{split}\0{len(rows)}".encode())
        for row in rows:
            lengths = ",".join(str(len(m["content"])) for m in row["messages"])
            h.update(f"\0{row['id']}\0{lengths}".encode())
    return h.hexdigest()


def dataset_info(run: RunSpec, mix: MixResult, splits: dict[str, str]) -> dict[str, Any]:
    """The card's `dataset_info`: split sizes and the run's identity. Beyond telling the
    Hub what the splits hold, it keeps `datasets.load_dataset` from mixing up two runs:
    datasets 5.2 caches a local folder under a key made from its name (`dataset`) and its
    card's metadata, not its path, so two runs' `dataset/` folders with otherwise equal
    cards would share one cache entry and the second load would return the first's rows."""
    rows = {"train": len(mix.train), "validation": len(mix.validation)}
    return {
        "config_name": "default",
        "description": (
            f"Kakugo training mix of LanguageModel {run.namespace}/{run.name} "
            f"(spec {run.fingerprint()}, rows {mix_digest(mix)})"
        ),
        "splits": [{"name": s, "num_examples": rows[s]} for s in splits],
    }


def dataset_card(
    run: RunSpec, mix: MixResult, teacher: str, splits: dict[str, str], stage_stats: dict[str, Any]
) -> str:
    lang, spec = run.language, run.spec
    meta = {
        "language": [lang.iso639_1 or lang.iso639_3],
        "license": "other",
        "tags": ["kakugo", "synthetic", "instruction-tuning", "distillation"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": s, "path": key.removeprefix("dataset/")} for s, key in splits.items()
                ],
            }
        ],
        "dataset_info": dataset_info(run, mix, splits),
    }
    sources = sorted(set(mix.kept_by_source) | set(mix.dropped_by_source))
    counts = [
        (
            s,
            mix.kept_by_source[s],
            sum(mix.dropped_by_source.get(s, {}).values()),
            mix.tokens_by_source[s],
        )
        for s in sources
    ]
    total_tokens = sum(mix.tokens_by_source.values())
    drops = [(reason, n) for reason, n in mix.dropped.most_common()]
    data = spec.data
    params = {
        "language": f"{lang.name} ({lang.code})",
        "teacher": teacher,
        "student tokenizer": spec.student.tokenizer or spec.student.model,
        "seed": data.seed,
        "topics": f"{len(data.topics.general_seeds)}+{len(data.topics.language_seeds)} seeds, "
        f"{data.topics.macro_topics_per_seed} macro-topics each, "
        f"{data.topics.topics_per_macro_topic} topics each, "
        f"{data.topics.min_prompts_per_topic}-{data.topics.max_prompts_per_topic} "
        "prompts per subject",
        "scenarios": f"{data.scenarios.broad_general}+{data.scenarios.broad_language} broad, "
        f"{data.scenarios.detailed_per_broad} detailed each, "
        f"{data.scenarios.prompts_per_scenario} prompts each",
        "contexts": f"up to {data.contexts.max_documents} documents, "
        f"{data.contexts.max_document_tokens} tokens each",
        "revision": f"{data.revise.fraction:.0%} of prompts",
        "translation": f"{data.translate.samples} conversations of at most "
        f"{data.translate.max_source_tokens} tokens",
        "filters": f"token ratio in [{data.filter.min_token_ratio}, "
        f"{data.filter.max_token_ratio}], cutoff {spec.training.cutoff_len} tokens",
        "mix": f"sources {', '.join(data.mix.sources)}; reasoning "
        f"{'kept' if data.mix.reasoning else 'dropped'}; validation "
        f"{data.mix.validation_fraction:.0%}",
    }
    teacher_tokens = {
        name: (s.get("prompt_tokens", 0), s.get("completion_tokens", 0))
        for name, s in stage_stats.items()
    }
    return "\n".join(
        [
            "---",
            yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(),
            "---",
            "",
            f"# Kakugo instruction data for {lang.name}",
            "",
            f"Synthetic and translated instruction data in {lang.name} ({lang.code}), made by "
            f"the Kakugo pipeline (LanguageModel `{run.namespace}/{run.name}`). "
            f"{mix.rows} rows: {len(mix.train)} train, {len(mix.validation)} validation; "
            f"{mix.reasoning_rows} carry a `<think>` reasoning block under the think-first "
            "system prompt, the others the concise system prompt.",
            "",
            "## Rows by source",
            "",
            _table(
                [
                    *counts,
                    ("total", sum(c[1] for c in counts), sum(c[2] for c in counts), total_tokens),
                ],
                ("source", "kept", "dropped", "tokens (student)"),
            ),
            "",
            _token_note(mix),
            "",
            "## Why rows were dropped",
            "",
            _table(drops or [("(none)", 0)], ("reason", "rows")),
            "",
            "Every dropped row is listed with its reason in `filter/_excluded/00000.jsonl`.",
            "",
            "## Teacher tokens by stage",
            "",
            _table(
                [(k, p, c) for k, (p, c) in teacher_tokens.items()],
                ("stage", "prompt tokens", "completion tokens"),
            ),
            "",
            "## Recipe parameters",
            "",
            _table(list(params.items()), ("parameter", "value")),
            "",
            "## Licences",
            "",
            LICENSE_NOTES.format(teacher=teacher),
        ]
    )
