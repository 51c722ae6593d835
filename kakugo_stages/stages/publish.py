"""`publish`: the dataset, the model and its evaluation to the Hugging Face Hub, when
`spec.publish` asks for it (skipped otherwise). The work is in `kakugo_stages.publish.hub`:
one commit per repository, nothing sent twice. The token is `HF_TOKEN` (the operator sets
it from `publish.huggingFace.tokenSecretRef`). One shard, no teacher, no GPU.
"""

from __future__ import annotations

import os

from kakugo_stages.publish.hub import PUBLISHED, PublishError, publish_run
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage, StageFailed


@register
class PublishStage(Stage):
    name = "publish"
    writes_rows = False  # the output is publish/published.json and the Hub's commits

    def skip_reason(self) -> str | None:
        return "spec.publish is not set" if self.run.spec.publish is None else None

    async def run_shard(self, ctx: ShardContext) -> None:
        try:
            published = publish_run(self.run, self.store, token=os.environ.get("HF_TOKEN"))
        except PublishError as exc:
            raise StageFailed(f"stage publish: {exc}") from exc
        repos = published["repos"]
        ctx.stats.rows_in = sum(len(r["files"]) for r in repos.values())
        ctx.stats.rows_out = sum(1 for r in repos.values() if r["committed"])
        ctx.stats.extra.update(
            repos={kind: r["url"] for kind, r in repos.items()},
            commits={kind: r["commit"] for kind, r in repos.items()},
            published=self.store.url(PUBLISHED),
        )
