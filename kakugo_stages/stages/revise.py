"""`revise`: the teacher rewrites a seeded share (`data.revise.fraction`, half by default)
of each generation method's prompts (an exact share, as the authors' per-file sample
is), free to apply any of five changes, together or alone: more natural and casual
language, added context, another format, style or length limit, a longer prompt where it
asks for elaboration, related questions. For a context prompt the reviser sees the
document and must keep referring to it without repeating it.

Every prompt leaves this stage: revised, or as it was. A failed revision request is
counted as rejected (and its raw answer kept) but never loses the prompt.
"""

from __future__ import annotations

import asyncio
import random
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

    def chosen(self, rows: list[dict[str, Any]]) -> set[str]:
        """The ids of the prompts to revise: `fraction` of each source's prompts, drawn
        (seeded) from the whole input, so every shard agrees."""
        out: set[str] = set()
        for source in GENERATED:
            ids = [r["id"] for r in rows if r.get("source") == source]
            rng = random.Random(f"{self.run.spec.data.seed}:revise:{source}")
            out.update(rng.sample(ids, round(len(ids) * self.config.fraction)))
        return out

    async def run_shard(self, ctx: ShardContext) -> None:
        cfg, lang = self.config, self.language
        every = generated_rows(self)
        chosen = self.chosen(every)
        rows = self.mine(every, ctx.shard)
        ctx.stats.rows_in = len(rows)

        async def revise(row: dict[str, Any]) -> dict[str, Any]:
            out = {**row, "original_prompt": row["prompt"], "revised": False}
            if row["id"] not in chosen:
                return out
            answer = await ctx.ask(
                row["id"],
                prompts.revise_prompt(row["prompt"], lang, row.get("document")),
                max_tokens=cfg.max_tokens,
                parse=partial(parse_string, key="improved_prompt"),
                schema=prompts.string_schema("improved_prompt"),
            )
            if answer is None:  # rejected and counted by ctx.ask; the prompt stays
                return out
            return {**out, "prompt": answer[1], "revised": True}

        for row in await asyncio.gather(*(revise(r) for r in rows)):
            ctx.keep(row)
