"""`revise`: the teacher rewrites a seeded share (`data.revise.fraction`, half by default)
of all generated prompts to be more natural, add context, ask for a format, length or
style, or add related questions. A rewrite of a context prompt must not repeat its
document.

Every prompt leaves this stage: revised, or as it was. A failed revision request is
counted as rejected (and its raw answer kept) but never loses the prompt.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from kakugo_stages import prompts
from kakugo_stages.parsing import parse_string
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage

GENERATED = ("topics", "scenarios", "contexts")


def generation_skip_reason(stage: Stage) -> str | None:
    """Revise and respond have nothing to do when the mix takes no generated prompts."""
    if not set(GENERATED) & set(stage.run.spec.data.mix.sources):
        return "no generation method in data.mix.sources"
    return None


def generated_rows(stage: Stage) -> list[dict[str, Any]]:
    """All prompts of the generation stages in the mix, in a stable order."""
    sources = [s for s in GENERATED if s in stage.run.spec.data.mix.sources]
    return [row for s in sources for row in stage.input_rows(s)]


@register
class ReviseStage(Stage):
    name = "revise"

    data_section = "revise"

    def skip_reason(self) -> str | None:
        return generation_skip_reason(self)

    async def run_shard(self, ctx: ShardContext) -> None:
        cfg, lang = self.config, self.language
        rows = self.mine(generated_rows(self), ctx.shard)
        ctx.stats.rows_in = len(rows)

        async def revise(row: dict[str, Any]) -> dict[str, Any]:
            out = {**row, "original_prompt": row["prompt"], "revised": False}
            rng = ctx.rng(row["id"])
            if rng.random() >= cfg.fraction:
                return out
            style = rng.choice(prompts.REVISION_STYLES)
            answer = await ctx.ask(
                row["id"],
                prompts.revise_prompt(row["prompt"], style, lang, "document" in row),
                max_tokens=cfg.max_tokens,
                parse=partial(parse_string, key="improved_prompt"),
                schema=prompts.string_schema("improved_prompt"),
            )
            if answer is None:  # rejected and counted by ctx.ask; the prompt stays
                return out
            return {**out, "prompt": answer[1], "revised": True, "revision_style": style}

        for row in await asyncio.gather(*(revise(r) for r in rows)):
            ctx.keep(row)
