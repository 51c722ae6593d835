"""`train`: full fine-tune of the student on the training mix.

Thin on purpose: it checks that the filter stage is complete, turns the frozen spec into a
`TrainConfig` and runs the worker (`kakugo_stages.training`), which trains under DeepSpeed,
mirrors checkpoints to `train/checkpoints/` (and resumes from the newest after a
preemption) and writes the model with its card to `model/`. One shard; no teacher.
"""

from __future__ import annotations

from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage, StageFailed
from kakugo_stages.training.launch import TrainingFailed, prepare, run_worker


@register
class TrainStage(Stage):
    name = "train"
    writes_rows = False  # the output is model/, not rows

    def reset_shared(self) -> None:
        # Checkpoints of a model trained on other inputs must never be resumed.
        self.store.delete_prefix("train/checkpoints/")

    async def run_shard(self, ctx: ShardContext) -> None:
        missing = self.missing_shards("filter")
        if missing:
            raise StageFailed(
                "stage train needs the training mix of stage filter, which is not complete: "
                "run `kakugo stage filter` first"
            )
        try:
            result = run_worker(prepare(self.run))
        except TrainingFailed as exc:
            raise StageFailed(f"stage train: {exc}") from exc
        train = result["tokens"]["train"]
        ctx.stats.rows_in = train["rows"]
        ctx.stats.rows_out = train["examples"]
        for reason, n in train["dropped"].items():
            ctx.drop(reason, n)
        ctx.stats.extra.update(result)
