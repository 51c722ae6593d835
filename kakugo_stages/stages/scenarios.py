"""`scenarios`: scenario-based prompts.

Two lists of broad scenarios of assistant use (the most popular uses of a chatbot, and
those specific to the language's speakers) are required: each is retried with a new
sample until it parses. Every broad scenario expands to detailed ones (the general
branch's without reference to the language, the specific branch's for its speakers),
and every scenario, broad and detailed, gets `promptsPerScenario` prompts in the
language. Broad scenarios are split across shards; each shard asks for the same broad
lists, which the request cache answers after the first.
"""

from __future__ import annotations

import asyncio
from functools import partial

from kakugo_stages import prompts
from kakugo_stages.parsing import parse_string_list
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage, StageFailed
from kakugo_stages.stages.topics import norm


@register
class ScenariosStage(Stage):
    name = "scenarios"

    data_section = "scenarios"

    def skip_reason(self) -> str | None:
        if "scenarios" not in self.run.spec.data.mix.sources:
            return "scenarios is not in data.mix.sources"
        return None

    async def _broad(self, ctx: ShardContext, count: int, specific: bool) -> list[str]:
        if count == 0:
            return []
        cfg = self.config
        item = "broad-language" if specific else "broad-general"
        for attempt in range(cfg.broad_max_attempts):
            answer = await ctx.ask(
                item,
                prompts.broad_scenarios(count, self.language, specific),
                max_tokens=cfg.max_tokens,
                parse=partial(parse_string_list, key="scenarios", expected=count),
                sample_index=attempt,
                schema=prompts.list_schema("scenarios", count),
            )
            if answer is not None:
                return answer[1]
        raise StageFailed(
            f"stage scenarios: the {item} scenario list did not parse in "
            f"{cfg.broad_max_attempts} attempts (data.scenarios.broadMaxAttempts); see "
            f"{self.store.url(f'scenarios/_rejects/{ctx.shard:05d}.jsonl')}"
        )

    async def run_shard(self, ctx: ShardContext) -> None:
        cfg, lang = self.config, self.language
        general, specific = await asyncio.gather(
            self._broad(ctx, cfg.broad_general, False),
            self._broad(ctx, cfg.broad_language, True),
        )
        seen: set[str] = set()
        broad: list[tuple[str, str]] = []
        for prefix, names in (("g", general), ("l", specific)):
            for i, text in enumerate(names):
                if norm(text) in seen:
                    ctx.drop("duplicate_scenario")
                    continue
                seen.add(norm(text))
                broad.append((f"{prefix}{i}", text))
        mine = self.mine(broad, ctx.shard)

        async def detailed(bid: str, text: str) -> list[tuple[str, str]]:
            if cfg.detailed_per_broad == 0:
                return []
            answer = await ctx.ask(
                bid,
                prompts.detailed_scenarios(
                    text, cfg.detailed_per_broad, lang, specific=bid.startswith("l")
                ),
                max_tokens=cfg.max_tokens,
                parse=partial(parse_string_list, key="scenarios", expected=cfg.detailed_per_broad),
                schema=prompts.list_schema("scenarios", cfg.detailed_per_broad),
            )
            return [(f"{bid}.{j}", d) for j, d in enumerate(answer[1])] if answer else []

        expanded = await asyncio.gather(*(detailed(b, t) for b, t in mine))
        scenarios = list(mine)
        for children in expanded:
            for sid, text in children:
                if norm(text) in seen:
                    ctx.drop("duplicate_scenario")
                    continue
                seen.add(norm(text))
                scenarios.append((sid, text))
        ctx.stats.extra.update(broad=len(mine), scenarios=len(scenarios))

        async def prompts_for(sid: str, text: str) -> None:
            k = cfg.prompts_per_scenario
            answer = await ctx.ask(
                sid,
                prompts.scenario_prompts(text, k, lang),
                max_tokens=cfg.max_tokens,
                parse=partial(parse_string_list, key="prompts", expected=k),
                schema=prompts.list_schema("prompts", k),
            )
            for n, prompt in enumerate(answer[1] if answer else []):
                ctx.keep(
                    {
                        "id": f"scenarios-{sid}-{n}",
                        "source": "scenarios",
                        "prompt": prompt,
                        "scenario": text,
                        "language_specific": sid.startswith("l"),
                    }
                )

        await asyncio.gather(*(prompts_for(s, t) for s, t in scenarios))
        ctx.rows.sort(key=lambda r: r["id"])
