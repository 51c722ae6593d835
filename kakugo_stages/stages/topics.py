"""`topics`: topic-based prompts (the Nemotron-4 recipe).

Seeds (general, and specific to the language) expand to macro-topics, macro-topics to
topics, with one request template for both levels (the language-specific branch asks for
topics that matter to the language's speakers). Every seed, macro-topic and topic,
deduplicated, gets one request for at least `minPromptsPerTopic` and at most
`maxPromptsPerTopic` user prompts in the language, the teacher choosing how many (as the
authors ask; drawing a count and asking for exactly it gave about a third fewer). Seeds
are split across shards.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial

from kakugo_stages import prompts
from kakugo_stages.parsing import parse_string_list
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage


def norm(text: str) -> str:
    return " ".join(text.casefold().split())


@dataclass(frozen=True)
class Subject:
    id: str
    text: str
    seed: str
    level: str  # seed | macro_topic | topic
    specific: bool  # about the language's speakers


@register
class TopicsStage(Stage):
    name = "topics"

    data_section = "topics"

    def skip_reason(self) -> str | None:
        if "topics" not in self.run.spec.data.mix.sources:
            return "topics is not in data.mix.sources"
        return None

    def seeds(self) -> list[Subject]:
        cfg, out, seen = self.config, [], set()
        pairs = [(s, False) for s in cfg.general_seeds] + [
            (s.replace("{language}", self.language), True) for s in cfg.language_seeds
        ]
        for i, (text, specific) in enumerate(pairs):
            if norm(text) not in seen:
                seen.add(norm(text))
                out.append(Subject(f"s{i}", text, text, "seed", specific))
        return out

    async def _expand(
        self,
        ctx: ShardContext,
        parents: list[Subject],
        count: int,
        level: str,
        seen: set[str],
    ) -> list[Subject]:
        cfg, lang = self.config, self.language

        parse = partial(parse_string_list, key="topics", expected=count)
        answers = await asyncio.gather(
            *(
                ctx.ask(
                    p.id,
                    prompts.topic_list(p.text, count, lang, p.specific),
                    max_tokens=cfg.max_tokens,
                    parse=parse,
                    schema=prompts.list_schema("topics", count),
                )
                for p in parents
            )
        )
        children = []
        for parent, answer in zip(parents, answers, strict=True):
            if answer is None:
                continue
            for j, text in enumerate(answer[1]):
                if norm(text) in seen:
                    ctx.drop(f"duplicate_{level}")
                    continue
                seen.add(norm(text))
                children.append(
                    Subject(f"{parent.id}.{j}", text, parent.seed, level, parent.specific)
                )
        return children

    async def run_shard(self, ctx: ShardContext) -> None:
        cfg, lang = self.config, self.language
        seeds = self.mine(self.seeds(), ctx.shard)
        seen = {norm(s.text) for s in seeds}
        macros = await self._expand(ctx, seeds, cfg.macro_topics_per_seed, "macro_topic", seen)
        topics = await self._expand(ctx, macros, cfg.topics_per_macro_topic, "topic", seen)
        subjects = seeds + macros + topics
        ctx.stats.extra.update(seeds=len(seeds), macro_topics=len(macros), topics=len(topics))

        low, high = cfg.min_prompts_per_topic, cfg.max_prompts_per_topic

        async def prompts_for(subject: Subject) -> None:
            answer = await ctx.ask(
                subject.id,
                prompts.topic_prompts(subject.text, low, high, lang),
                max_tokens=cfg.max_tokens,
                parse=partial(parse_string_list, key="prompts", expected=high),
                schema=prompts.list_schema("prompts", high, low),
            )
            if answer is None:
                return
            for n, text in enumerate(answer[1]):
                ctx.keep(
                    {
                        "id": f"topics-{subject.id}-{n}",
                        "source": "topics",
                        "prompt": text,
                        "topic": subject.text,
                        "seed": subject.seed,
                        "level": subject.level,
                        "language_specific": subject.specific,
                    }
                )

        await asyncio.gather(*(prompts_for(s) for s in subjects))
        # Answers arrive in any order; the rows must not depend on it.
        ctx.rows.sort(key=lambda r: r["id"])
