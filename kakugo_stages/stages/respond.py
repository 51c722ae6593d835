"""`respond`: the teacher answers every (revised) prompt in the language, with the
recipe's system prompt (fluent, native, correct; instructions followed fully; the
language unless the user asks otherwise; minimal formatting unless asked; no URLs; a
simple, conversational tone; as short as possible). The reasoning trace is kept: it
becomes the student's <think> block. Only answers that finished with "stop" and are not
empty become rows; the rest are rejected and counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kakugo_stages import prompts
from kakugo_stages.parsing import ParseError
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage
from kakugo_stages.stages.revise import generation_skip_reason


def _non_empty(text: str) -> str:
    if not text or not text.strip():
        raise ParseError("empty_answer")
    return text.strip()


@register
class RespondStage(Stage):
    name = "respond"

    data_section = "respond"

    def skip_reason(self) -> str | None:
        return generation_skip_reason(self)

    async def run_shard(self, ctx: ShardContext) -> None:
        cfg, lang = self.config, self.language
        rows = self.mine(self.input_rows("revise"), ctx.shard)
        ctx.stats.rows_in = len(rows)

        async def respond(row: dict[str, Any]) -> None:
            messages = prompts.response_messages(
                row["prompt"], lang, cfg.system_prompt, document=row.get("document")
            )
            answer = await ctx.ask(row["id"], messages, max_tokens=cfg.max_tokens, parse=_non_empty)
            if answer is None:
                return
            result, text = answer
            ctx.keep(
                {
                    **row,
                    "user": messages[-1]["content"],
                    "response": text,
                    "reasoning": result.reasoning,
                }
            )

        await asyncio.gather(*(respond(r) for r in rows))
        ctx.rows.sort(key=lambda r: r["id"])
