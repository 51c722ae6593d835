"""`evaluate`: the tuned model against the base model, 3-shot, on FLORES-200 (chrF++ both
ways), SIB-200, Belebele and Global-MMLU (log-likelihood accuracy), on
lm-evaluation-harness. The work is in `kakugo_stages.evaluation`; this stage finds the
models, runs both over the same task files and writes

- `evaluation/results.json` (per task: metric, base, tuned, delta, n; skipped tasks),
- `evaluation/samples/<base|tuned>/<task>.jsonl` (per item; `evaluation.logSamples`),
- the evaluation table in the model card `model/README.md`, when there is one,
- a one-line `summary` in its stats for the operator's status.

One shard. Needs the train stage's `model/`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from kakugo_stages.evaluation import (
    EvaluationError,
    ModelRun,
    PreparedTask,
    build_base_results,
    build_results,
    evaluate_model,
    markdown_table,
    model_args_for,
    prepare_tasks,
    summary_line,
    update_model_card,
)
from kakugo_stages.evaluation.engine import SEED
from kakugo_stages.evaluation.taskfiles import write_task_files
from kakugo_stages.stages import register
from kakugo_stages.stages.base import ShardContext, Stage, StageFailed
from kakugo_stages.store import ArtifactNotFound, StoreError, open_store

log = logging.getLogger("kakugo.stages.evaluate")

RESULTS = "evaluation/results.json"
SAMPLES = "evaluation/samples"
MODEL = "model"
MODEL_CARD = "model/README.md"


@register
class EvaluateStage(Stage):
    name = "evaluate"
    writes_rows = False  # the output is evaluation/results.json

    # ---- models (tests override `lm_for` to inject scripted lm-eval models)

    def lm_for(self, role: str, pretrained: str) -> tuple[Any, dict[str, Any] | None]:
        """The lm-eval model for `role` ("base" or "tuned"): a registered model name with
        its arguments, or an `lm_eval.api.model.LM` instance (and None)."""
        evaluation, student = self.run.spec.evaluation, self.run.spec.student
        gpus = self.run.spec.resources.for_stage(self.name).gpus or 1
        if role == "base":
            tokenizer = os.path.expanduser(student.tokenizer) if student.tokenizer else None
            return model_args_for(
                evaluation, pretrained, revision=student.revision, tokenizer=tokenizer, gpus=gpus
            )
        return model_args_for(evaluation, pretrained, gpus=gpus)

    def _tuned_dir(self, work: Path) -> Path:
        self._check_train_done()
        local = self.store.local_path(MODEL)
        if local is not None:
            folder = local
        else:
            try:
                folder = self.store.download_dir(MODEL, work / "tuned")
            except ArtifactNotFound:
                folder = work / "tuned"
            except StoreError as exc:
                raise StageFailed(f"stage evaluate: cannot download the model: {exc}") from exc
        if not (folder / "config.json").is_file():
            raise StageFailed(
                f"stage evaluate: no trained model at {self.store.url(MODEL)} (config.json "
                "missing): run `kakugo stage train` first"
            )
        return folder

    def _check_train_done(self) -> None:
        try:
            missing = self.missing_shards("train")
        except KeyError:  # no train stage registered in this build: the folder decides
            return
        if missing:
            raise StageFailed(
                f"stage evaluate needs stage train to be complete (shards {missing} are "
                "not): run `kakugo stage train` first"
            )

    def _base_model(self, work: Path) -> str:
        model = self.run.spec.student.model
        if model.startswith("~"):
            return os.path.expanduser(model)  # lm-eval would take "~/..." for a hub id
        if not model.startswith("s3://"):
            return model  # a hub id or a local folder: transformers/vLLM read it directly
        try:
            return str(open_store(model).download_dir("", work / "base"))
        except StoreError as exc:
            raise StageFailed(f"stage evaluate: cannot download student.model: {exc}") from exc

    # ---- the shard

    def _score(
        self, work: Path, tuned_dir: Path | None
    ) -> tuple[list[PreparedTask], dict[str, str], dict[str, ModelRun]]:
        """Prepare the task files in `work` and score the models on them: the tuned model
        in `tuned_dir` (None: only the base model) and the base model when the spec
        compares (or when there is no tuned model)."""
        evaluation = self.run.spec.evaluation
        language = self.run.language
        try:
            tasks, skipped = prepare_tasks(evaluation, language, work)
            write_task_files(
                tasks,
                language,
                work / "tasks",
                max_new_tokens=evaluation.flores.max_new_tokens,
                repetition_penalty=evaluation.repetition_penalty,
            )
        except EvaluationError as exc:
            raise StageFailed(f"stage evaluate: {exc}") from exc
        for key, why in skipped.items():
            log.info("evaluate: skipping %s: %s", key, why)
        runs: dict[str, ModelRun] = {}
        roles = [] if tuned_dir is None else [("tuned", str(tuned_dir))]
        if evaluation.compare_base or tuned_dir is None:
            roles.append(("base", self._base_model(work)))
        for role, pretrained in roles:
            model, args = self.lm_for(role, pretrained)
            try:
                runs[role] = evaluate_model(
                    model,
                    args,
                    tasks,
                    work / "tasks",
                    label=role,
                    device=evaluation.device,
                    batch_size=evaluation.batch_size,
                    log_samples=evaluation.log_samples,
                    isolate=evaluation.backend == "vllm" and isinstance(model, str),
                )
            except EvaluationError as exc:
                raise StageFailed(f"stage evaluate: {exc}") from exc
        if "base" in runs:
            runs["base"].model = self.run.spec.student.model
        return tasks, skipped, runs

    def _settings(self) -> dict[str, Any]:
        evaluation = self.run.spec.evaluation
        return {
            "backend": evaluation.backend,
            "device": evaluation.device,
            "repetition_penalty": evaluation.repetition_penalty,
            "max_new_tokens": evaluation.flores.max_new_tokens,
            "seed": SEED,
        }

    def base_only(self) -> dict[str, Any]:
        """The base model's scores for the spec's language, before anything is trained
        (`kakugo evaluate --base-only`): the same task files, shots, seeds and settings as
        the stage, with only the base model. Reads and writes nothing in the run's store."""
        with tempfile.TemporaryDirectory(prefix="kakugo-eval-") as tmp:
            tasks, skipped, runs = self._score(Path(tmp), None)
        return build_base_results(
            self.run.language.code, tasks, skipped, runs["base"], settings=self._settings()
        )

    # ---- the shard

    async def run_shard(self, ctx: ShardContext) -> None:
        evaluation = self.run.spec.evaluation
        with tempfile.TemporaryDirectory(prefix="kakugo-eval-") as tmp:
            work = Path(tmp)
            tuned_dir = self._tuned_dir(work)
            tasks, skipped, runs = self._score(work, tuned_dir)
            runs["tuned"].model = self.store.url(MODEL)
        results = build_results(
            self.run.language.code,
            tasks,
            skipped,
            runs["tuned"],
            runs.get("base"),
            settings=self._settings(),
        )
        summary = summary_line(results)
        results["summary"] = summary
        if evaluation.log_samples:
            for role, run in runs.items():
                for key, samples in run.samples.items():
                    self.store.write_jsonl(f"{SAMPLES}/{role}/{key}.jsonl", samples)
        self.store.write_json(RESULTS, results)
        self._update_card(results)
        ctx.stats.rows_in = sum(t.n for t in tasks)
        ctx.stats.rows_out = len(tasks)
        ctx.stats.extra.update(
            summary=summary,
            evaluation={
                k: {"base": v["base"], "tuned": v["tuned"], "delta": v["delta"]}
                for k, v in results["tasks"].items()
            },
            skipped=skipped,
            results=self.store.url(RESULTS),
        )

    def _update_card(self, results: dict[str, Any]) -> None:
        if not self.store.exists(MODEL_CARD):
            log.info("evaluate: no model card at %s; table not added", self.store.url(MODEL_CARD))
            return
        card = self.store.read_text(MODEL_CARD)
        self.store.write_text(MODEL_CARD, update_model_card(card, markdown_table(results)))
