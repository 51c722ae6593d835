"""`filter`: every filter of the recipe over the translated and generated rows, then the
training mix (see `mix.py`), written as a Hugging Face dataset with its card under
`dataset/`. Every dropped row is counted by reason and written, with its reason, to
`filter/_excluded/00000.jsonl`. One shard: the mix is one shuffled dataset.
"""

from __future__ import annotations

from kakugo_stages.cards import dataset_card
from kakugo_stages.chat_format import load_chat_template, template_overhead
from kakugo_stages.filters import FilterSettings, TokenCounter
from kakugo_stages.mix import build_mix, write_dataset
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage, StageFailed, teacher_target
from kakugo_stages.stages.revise import GENERATED
from kakugo_stages.store import StageOutput
from kakugo_stages.tokenization import TokenizerError, load_tokenizer, student_tokenizer_name

EXCLUDED = "filter/_excluded/00000.jsonl"


@register
class FilterStage(Stage):
    name = "filter"
    writes_rows = False  # the rows are the dataset under dataset/

    def _teacher_name(self) -> str:
        try:
            return teacher_target(self.run).model
        except StageFailed:
            t = self.run.spec.teacher
            return t.serve.model if t.serve else (t.ref.name if t.ref else "teacher")

    async def run_shard(self, ctx: ShardContext) -> None:
        spec = self.run.spec
        sources = spec.data.mix.sources
        generated = self.input_rows("respond") if set(GENERATED) & set(sources) else []
        translated = self.input_rows("translate") if "translated" in sources else []
        ctx.stats.rows_in = len(generated) + len(translated)
        student = spec.student
        try:
            tokenizer = load_tokenizer(student_tokenizer_name(student), student.revision)
        except TokenizerError as exc:
            raise StageFailed(f"stage filter: {exc}") from exc
        try:
            template = load_chat_template(student.chat_template)
        except (OSError, ValueError) as exc:
            raise StageFailed(f"stage filter: student.chatTemplate: {exc}") from exc
        settings = FilterSettings.from_spec(
            spec.data.filter,
            spec.training.cutoff_len,
            template_overhead(tokenizer, template),
            tokenizer_name=student_tokenizer_name(spec.student),
        )
        mix = build_mix(
            generated, translated, settings, spec.data.mix, TokenCounter(tokenizer), spec.data.seed
        )
        if mix.rows == 0:
            raise StageFailed(
                f"stage filter: no row survived the filters ({dict(mix.dropped)}); see "
                f"{self.store.url(EXCLUDED)}"
            )
        self.store.write_jsonl(EXCLUDED, mix.excluded)
        stage_stats = {}
        for name in ("topics", "scenarios", "contexts", "revise", "respond", "translate"):
            shards = StageOutput(self.store, name).all_stats()
            stage_stats[name] = {
                "prompt_tokens": sum(
                    s.get("teacher", {}).get("prompt_tokens", 0) for s in shards.values()
                ),
                "completion_tokens": sum(
                    s.get("teacher", {}).get("completion_tokens", 0) for s in shards.values()
                ),
            }
        # The dataset's files are written before its card, and the card before the marker.
        files = write_dataset(
            self.store,
            mix,
            dataset_card(self.run, mix, self._teacher_name(), _split_files(mix), stage_stats),
        )
        for reason, n in mix.dropped.items():
            ctx.drop(reason, n)
        ctx.stats.rows_out = mix.rows
        ctx.stats.extra.update(
            train=len(mix.train),
            validation=len(mix.validation),
            kept_by_source=dict(mix.kept_by_source),
            tokens_by_source=dict(mix.tokens_by_source),
            reasoning_rows=mix.reasoning_rows,
            dataset=self.store.url("dataset"),
            files=files,
        )


def _split_files(mix) -> dict[str, str]:
    return {
        split: f"dataset/data/{split}-00000-of-00001.parquet"
        for split, rows in (("train", mix.train), ("validation", mix.validation))
        if rows
    }
