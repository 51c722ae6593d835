"""The typed training configuration, derived once from the frozen spec.

The worker process receives this (as JSON), never the raw spec: every value the trainer
uses is decided here, in one place, and cannot be changed by another step (recipe
mistake 3).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kakugo_stages.resolved import RunSpec

#: Keys of the run's store the train stage reads and writes.
DATASET_PREFIX = "dataset"
MODEL_PREFIX = "model"
CHECKPOINT_PREFIX = "train/checkpoints"
PROGRESS_KEY = "train/_progress.json"


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; immutable and JSON-serialisable."""

    # where
    run_uri: str
    run_name: str
    namespace: str
    fingerprint: str
    scratch_dir: str
    # what
    language_name: str
    language_code: str
    student_model: str  # as the spec names it (for the model card)
    student_revision: str | None
    model_path: str  # a local folder
    tokenizer_path: str  # a local folder
    chat_template_name: str
    chat_template: str
    # how
    device: Literal["cuda", "cpu"]
    nproc: int
    epochs: float
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    precision: Literal["bf16", "fp16", "fp32"]
    cutoff_len: int
    packing: bool
    per_device_batch_size: int
    #: Sequences per optimizer step over all processes; reached by gradient accumulation.
    global_batch_size: int
    #: Evaluate on the validation split every this fraction of the steps (0: at the end).
    eval_every_fraction: float
    gradient_checkpointing: bool
    attn_implementation: str
    deepspeed_stage: int
    checkpoint_every_steps: int
    save_total_limit: int
    log_every_steps: int
    seed: int
    #: The thinking toggle the mix trained (for the model card): the two system prompts,
    #: and whether generated rows carried their reasoning at all.
    think_system_prompt: str = ""
    concise_system_prompt: str = ""
    reasoning: bool = True
    #: Stop after this many optimizer steps (benchmarks, smoke runs); -1 = the full epochs.
    max_steps: int = -1
    #: The run store's S3 endpoint and region (`storage.s3`), so the worker process uses
    #: the storage the spec names, as the stage itself does.
    storage_endpoint_url: str | None = None
    storage_region: str | None = None

    @classmethod
    def from_run(
        cls,
        run: RunSpec,
        *,
        model_path: str,
        tokenizer_path: str,
        chat_template: str,
        scratch_dir: str,
        max_steps: int = -1,
    ) -> TrainConfig:
        spec = run.spec
        t = spec.training
        gpus = spec.resources.for_stage("train").gpus or 0
        # One process per GPU on cuda; a CPU run is one process (tests use gloo).
        nproc = max(1, gpus) if t.device == "cuda" else 1
        s3 = spec.storage.s3 if spec.storage is not None else None
        return cls(
            run_uri=run.run_uri,
            run_name=run.name,
            namespace=run.namespace,
            fingerprint=run.fingerprint(),
            scratch_dir=scratch_dir,
            language_name=run.language.name,
            language_code=run.language.code,
            student_model=spec.student.model,
            student_revision=spec.student.revision,
            model_path=model_path,
            tokenizer_path=tokenizer_path,
            chat_template_name=spec.student.chat_template,
            chat_template=chat_template,
            device=t.device,
            nproc=nproc,
            epochs=t.epochs,
            learning_rate=t.learning_rate,
            lr_scheduler=t.lr_scheduler,
            warmup_ratio=t.warmup_ratio,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            precision=t.precision,
            cutoff_len=t.cutoff_len,
            packing=t.packing,
            per_device_batch_size=t.per_device_batch_size,
            global_batch_size=t.global_batch_size,
            eval_every_fraction=t.eval_every_fraction,
            gradient_checkpointing=t.gradient_checkpointing,
            attn_implementation=t.attn_implementation,
            deepspeed_stage=t.deepspeed_stage,
            checkpoint_every_steps=t.checkpoint_every_steps,
            save_total_limit=t.save_total_limit,
            log_every_steps=t.log_every_steps,
            seed=t.seed,
            think_system_prompt=spec.data.mix.think_system_prompt,
            concise_system_prompt=spec.data.mix.concise_system_prompt,
            reasoning=spec.data.mix.reasoning,
            max_steps=max_steps,
            storage_endpoint_url=s3.endpoint_url if s3 is not None else None,
            storage_region=s3.region if s3 is not None else None,
        )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def gradient_accumulation_steps(self) -> int:
        """Passes per optimizer step, so that every step sees `global_batch_size` sequences
        whatever the process count (ValueError when it does not divide)."""
        per_pass = self.per_device_batch_size * self.nproc
        if self.global_batch_size % per_pass:
            raise ValueError(
                f"training.globalBatchSize {self.global_batch_size} is not a multiple of "
                f"perDeviceBatchSize x processes ({self.per_device_batch_size} x "
                f"{self.nproc} = {per_pass})"
            )
        return self.global_batch_size // per_pass

    def hyperparameters(self) -> dict[str, Any]:
        """The recipe as the model card and the stats report it."""
        return {
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "lr_scheduler": self.lr_scheduler,
            "warmup_ratio": self.warmup_ratio,
            "weight_decay": self.weight_decay,
            "max_grad_norm": self.max_grad_norm,
            "precision": self.precision,
            "cutoff_len": self.cutoff_len,
            "packing": self.packing,
            "per_device_batch_size": self.per_device_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "processes": self.nproc,
            "global_batch_size": self.global_batch_size,
            "eval_every_fraction": self.eval_every_fraction,
            "gradient_checkpointing": self.gradient_checkpointing,
            "attn_implementation": self.attn_implementation,
            "deepspeed_zero_stage": self.deepspeed_stage,
            "seed": self.seed,
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path
