"""`contexts`: prompts about documents written in the language.

Up to `maxDocuments` documents are sampled uniformly (seeded, reservoir sampling over
the whole stream) from FineWeb-2 for the language, or from a mirror path, and cut to
their first `maxDocumentTokens` student tokens. Task types are dealt out in turn by
`taskWeights` (translate, summarize, improve, classify, then question answering four
times: half are QA, as the authors' cycle has it), and `promptsPerDocument` prompts are
asked for each document; one of them is kept when the corpus holds more than
`keepOneAbove` documents, all of them otherwise, and at most `maxPrompts` in all (a
seeded choice among the prompt slots, made once from the sample so that every shard
agrees). The document travels with the prompt: the respond stage prepends it.

The sampled documents are written once to `contexts/_documents.jsonl`, so every shard
(and every rerun) works from the same sample without reading the corpus again.
"""

from __future__ import annotations

import asyncio
import random
from functools import partial
from typing import Any

from kakugo_stages import prompts
from kakugo_stages.parsing import parse_string_list
from kakugo_stages.sources import SourceError, sample_records
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage, StageFailed
from kakugo_stages.tokenization import (
    TokenizerError,
    cut_to_tokens,
    load_tokenizer,
    student_tokenizer_name,
)

DOCUMENTS = "contexts/_documents.jsonl"
DOCUMENTS_META = "contexts/_documents.json"


@register
class ContextsStage(Stage):
    name = "contexts"

    data_section = "contexts"

    def skip_reason(self) -> str | None:
        if "contexts" not in self.run.spec.data.mix.sources:
            return "contexts is not in data.mix.sources"
        if self.config.max_documents == 0:
            return "data.contexts.maxDocuments is 0"
        return None

    def _sample(self) -> tuple[list[dict[str, Any]], int]:
        cfg, src = self.config, self.config.source
        config = src.config or self.run.language.fineweb2
        if not src.path and config is None:
            raise StageFailed(
                f"FineWeb-2 has no subset for {self.run.language.label}: set "
                "data.contexts.source.config, or data.contexts.source.path to a mirror of "
                "documents in the language, or drop contexts from data.mix.sources"
            )
        return sample_records(
            path=src.path,
            dataset=src.dataset,
            config=config,
            split=src.split,
            seed=self.run.spec.data.seed,
            k=cfg.max_documents,
        )

    def documents(self) -> tuple[list[dict[str, Any]], int]:
        """The sampled, cut documents and the corpus size seen; computed once per run."""
        if not self.reset and self.store.exists(DOCUMENTS_META) and self.store.exists(DOCUMENTS):
            meta = self.store.read_json(DOCUMENTS_META)
            return self.store.read_jsonl(DOCUMENTS), int(meta["corpus_size"])
        cfg, student = self.config, self.run.spec.student
        try:
            rows, corpus_size = self._sample()
            tokenizer = load_tokenizer(student_tokenizer_name(student), student.revision)
        except (SourceError, TokenizerError) as exc:
            raise StageFailed(f"stage contexts: {exc}") from exc
        docs, empty = [], 0
        for i, row in enumerate(rows):
            text = row.get(cfg.source.text_field)
            if not isinstance(text, str) or not text.strip():
                empty += 1
                continue
            docs.append(
                {
                    "doc_id": f"d{i}",
                    "text": cut_to_tokens(tokenizer, text.strip(), cfg.max_document_tokens),
                    "source_id": row.get("id"),
                }
            )
        # Documents first, then the meta file that says they are complete.
        self.store.write_jsonl(DOCUMENTS, docs)
        self.store.write_json(
            DOCUMENTS_META, {"corpus_size": corpus_size, "documents": len(docs), "empty": empty}
        )
        return docs, corpus_size

    def plan(
        self, docs: list[dict[str, Any]], keep_one: bool
    ) -> tuple[dict[str, str], set[tuple[str, int]]]:
        """Each document's task type, and the prompt slots that may be kept: (doc_id, n)
        for the n-th prompt of a document (slot 0 only when one is kept per document),
        at most `maxPrompts` of them. Computed from the whole sample, so shards agree."""
        cfg = self.config
        dealt = deal_tasks(cfg.task_weights.model_dump(), len(docs))
        tasks = {d["doc_id"]: task for d, task in zip(docs, dealt, strict=True)}
        per_doc = 1 if keep_one else cfg.prompts_per_document
        slots = [(d["doc_id"], n) for d in docs for n in range(per_doc)]
        if len(slots) > cfg.max_prompts:
            rng = random.Random(f"{self.run.spec.data.seed}:contexts:max-prompts")
            slots = rng.sample(slots, cfg.max_prompts)
        return tasks, set(slots)

    async def run_shard(self, ctx: ShardContext) -> None:
        cfg, lang = self.config, self.language
        docs, corpus_size = self.documents()
        mine = self.mine(docs, ctx.shard)
        keep_one = corpus_size > cfg.keep_one_above
        tasks, slots = self.plan(docs, keep_one)
        ctx.stats.rows_in = len(mine)
        ctx.stats.extra.update(corpus_size=corpus_size, keep_one=keep_one)

        async def prompts_for(doc: dict[str, Any]) -> None:
            task = tasks[doc["doc_id"]]
            k = cfg.prompts_per_document
            answer = await ctx.ask(
                doc["doc_id"],
                prompts.context_prompts(doc["text"], task, k, lang),
                max_tokens=cfg.max_tokens,
                parse=partial(parse_string_list, key="prompts", expected=k),
                schema=prompts.list_schema("prompts", k),
            )
            if answer is None:
                return
            found = answer[1]
            chosen = [ctx.rng(doc["doc_id"], "keep").choice(found)] if keep_one else found
            if keep_one:
                ctx.drop("extra_context_prompt", len(found) - 1)
            for n, prompt in enumerate(chosen):
                if (doc["doc_id"], n) not in slots:
                    ctx.drop("over_max_prompts")
                    continue
                ctx.keep(
                    {
                        "id": f"contexts-{doc['doc_id']}-{n}",
                        "source": "contexts",
                        "prompt": prompt,
                        "document": doc["text"],
                        "task": task,
                    }
                )

        await asyncio.gather(*(prompts_for(d) for d in mine))
        ctx.rows.sort(key=lambda r: r["id"])


def deal_tasks(weights: dict[str, float], n: int) -> list[str]:
    """`n` task types dealt in turn by weight (smooth weighted round robin): every prefix
    holds each type in proportion to its weight, as closely as whole counts allow. With
    the recipe's weights (1, 1, 1, 1, 4) every 8 documents get each of the four tasks once
    and question answering four times, as the authors' cycle does."""
    names = [t for t in prompts.CONTEXT_TASKS if weights.get(t, 0) > 0]
    total = sum(weights[t] for t in names)
    credit = dict.fromkeys(names, 0.0)
    out = []
    for _ in range(n):
        for t in names:
            credit[t] += weights[t]
        best = max(names, key=lambda t: credit[t])  # ties: the first in CONTEXT_TASKS
        credit[best] -= total
        out.append(best)
    return out
