"""`translate`: English instruction data translated whole by the teacher.

`samples` English conversations are drawn uniformly (seeded, reservoir sampling over the
whole stream) from Infinity-Instruct (`7M_core`, rows whose `langdetect` is `en`), or
from a mirror path; then, as the authors do, roles are mapped human -> user,
gpt -> assistant (system turns are dropped, other roles drop the conversation), and the
conversations over `maxSourceTokens` teacher-tokenizer tokens are dropped, so fewer than
`samples` are translated. Length is measured as the authors measure it: the tokens of
the conversation's printed list of messages. When the teacher's tokenizer cannot be
loaded (offline), the student's measures instead, and the stats say so. The sample is
written once to `translate/_sources.jsonl`.

Each conversation is translated in one request that returns the same list-of-messages
structure. Answers that do not parse are rejected here; the `filter` stage judges the
rest (turn count, roles, keys, length ratios).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kakugo_stages import prompts
from kakugo_stages.parsing import parse_messages
from kakugo_stages.sources import SourceError, sample_records
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage, StageFailed
from kakugo_stages.tokenization import (
    TokenizerError,
    count_tokens,
    load_tokenizer,
    student_tokenizer_name,
)

log = logging.getLogger("kakugo.stages.translate")

SOURCES = "translate/_sources.jsonl"
SOURCES_META = "translate/_sources.json"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def to_messages(record: dict[str, Any]) -> list[dict[str, str]] | None:
    """Infinity-Instruct `conversations` ({from, value}) -> chat messages, or None."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return None
    out = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        speaker, text = turn.get("from"), turn.get("value")
        if speaker == "system":
            continue
        if speaker not in ROLES or not isinstance(text, str):
            return None
        out.append({"role": ROLES[speaker], "content": text})
    return out or None


@register
class TranslateStage(Stage):
    name = "translate"

    data_section = "translate"

    def skip_reason(self) -> str | None:
        if "translated" not in self.run.spec.data.mix.sources:
            return "translated is not in data.mix.sources"
        if self.config.samples == 0:
            return "data.translate.samples is 0"
        return None

    def _length_tokenizer(self) -> tuple[Any, str]:
        cfg, student = self.config, self.run.spec.student
        if cfg.teacher_tokenizer:
            try:
                return load_tokenizer(cfg.teacher_tokenizer), cfg.teacher_tokenizer
            except TokenizerError as exc:
                log.warning("teacher tokenizer unavailable, measuring with the student's: %s", exc)
        name = student_tokenizer_name(student)
        return load_tokenizer(name, student.revision), f"{name} (student fallback)"

    def _student_turn_tokens(self, kept: list[dict[str, Any]]) -> str:
        """Per-turn student-token counts of the English turns, for the filter's ratio check
        (measured here, where the stage waits on the teacher anyway)."""
        student = self.run.spec.student
        name = student_tokenizer_name(student)
        counts = count_tokens(
            load_tokenizer(name, student.revision),
            [m["content"] for conv in kept for m in conv["messages"]],
        )
        pos = 0
        for conv in kept:
            conv["turn_tokens"] = counts[pos : pos + len(conv["messages"])]
            pos += len(conv["messages"])
        return name

    def conversations(self) -> list[dict[str, Any]]:
        """The sampled English conversations; computed once per run."""
        if not self.reset and self.store.exists(SOURCES_META) and self.store.exists(SOURCES):
            return self.store.read_jsonl(SOURCES)
        cfg, src = self.config, self.config.source
        try:
            tokenizer, measured_by = self._length_tokenizer()
            records, available = sample_records(
                path=src.path,
                dataset=src.dataset,
                config=src.config,
                split=src.split,
                seed=self.run.spec.data.seed,
                k=cfg.samples,
                where=(src.language_field, src.language_value),
            )
            dropped = {"bad_roles": 0, "too_long": 0}
            mapped = []
            for record in records:
                msgs = to_messages(record)
                if msgs is None:
                    dropped["bad_roles"] += 1
                else:
                    mapped.append((record, msgs))
            # The authors' measure: tokens of the printed list of {role, content} dicts.
            lengths = count_tokens(tokenizer, [str(msgs) for _, msgs in mapped])
            kept: list[dict[str, Any]] = []
            for (record, msgs), n in zip(mapped, lengths, strict=True):
                if n > cfg.max_source_tokens:
                    dropped["too_long"] += 1
                    continue
                kept.append(
                    {
                        "id": f"c{len(kept)}",
                        "source_id": record.get("id"),
                        "messages": msgs,
                        "source_tokens": n,
                    }
                )
        except (SourceError, TokenizerError) as exc:
            raise StageFailed(f"stage translate: {exc}") from exc
        if not kept:
            raise StageFailed(
                f"stage translate: no usable {src.language_value!r} conversation among the "
                f"{len(records)} sampled from {src.path or src.dataset} ({dropped})"
            )
        try:
            turn_tokenizer = self._student_turn_tokens(kept)
        except TokenizerError as exc:
            raise StageFailed(f"stage translate: {exc}") from exc
        self.store.write_jsonl(SOURCES, kept)
        self.store.write_json(
            SOURCES_META,
            {
                "conversations": len(kept),
                "sampled": len(records),
                "available": available,
                "dropped": dropped,
                "length_tokenizer": measured_by,
                "turn_tokenizer": turn_tokenizer,
            },
        )
        return kept

    async def run_shard(self, ctx: ShardContext) -> None:
        cfg, lang = self.config, self.language
        convs = self.mine(self.conversations(), ctx.shard)
        ctx.stats.rows_in = len(convs)
        meta = self.store.read_json(SOURCES_META)
        ctx.stats.extra.update(meta)

        async def translate(conv: dict[str, Any]) -> None:
            answer = await ctx.ask(
                conv["id"],
                prompts.translate_conversation(conv["messages"], lang),
                max_tokens=cfg.max_tokens,
                parse=parse_messages,
                schema=prompts.messages_schema(len(conv["messages"])),
            )
            if answer is None:
                return
            ctx.keep(
                {
                    "id": f"translated-{conv['id']}",
                    "source": "translated",
                    "source_id": conv["source_id"],
                    "original": conv["messages"],
                    "original_tokens": conv.get("turn_tokens"),
                    "original_tokenizer": meta.get("turn_tokenizer"),
                    "messages": answer[1],
                }
            )

        await asyncio.gather(*(translate(c) for c in convs))
        ctx.rows.sort(key=lambda r: r["id"])
