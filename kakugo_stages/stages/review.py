"""`review`: the blinded side-by-side page for native speakers, when `spec.review` asks
for it (skipped otherwise). Held-out prompts of the validation split, answered greedily by
the base and the tuned model; writes `review/index.html` (self-contained: open it from the
bucket or a laptop) and its key `review/key.json`. Raters' files come back through
`kakugo review import`. One shard; GPU by default (`review.device`).
"""

from __future__ import annotations

from kakugo_stages.review.build import build_review
from kakugo_stages.review.prompts import ReviewError
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage, StageFailed


@register
class ReviewStage(Stage):
    name = "review"
    writes_rows = False  # the output is review/index.html and review/key.json

    def skip_reason(self) -> str | None:
        return "spec.review is not set" if self.run.spec.review is None else None

    async def run_shard(self, ctx: ShardContext) -> None:
        settings = self.run.spec.review
        assert settings is not None  # skip_reason
        for stage in ("filter", "train"):
            if self.missing_shards(stage):
                raise StageFailed(
                    f"stage review needs stage {stage} to be complete: run `kakugo stage "
                    f"{stage}` first"
                )
        try:
            out = build_review(self.run, self.store, settings)
        except ReviewError as exc:
            raise StageFailed(f"stage review: {exc}") from exc
        ctx.stats.rows_in = out["prompts"] + out["dropped_as_trained"]
        ctx.stats.rows_out = out["prompts"]
        if out["dropped_as_trained"]:
            ctx.drop("prompt_in_train_split", out["dropped_as_trained"])
        ctx.stats.extra.update(prompts=out["prompts"], page=out["page"], page_id=out["page_id"])
