"""One training run, inside the worker process (one per GPU under torchrun).

Why the Hugging Face `Trainer` and not TRL's `SFTTrainer`: the examples are already
tokenized with assistant-only labels by `chat_format.tokenize_conversation` (the function
the tests check) and packed by `data.py`, which is exactly the part SFTTrainer would add;
what is left (DeepSpeed integration, checkpoint/resume, schedules, logging) is the
Trainer's, which SFTTrainer subclasses. SFTTrainer would re-template and re-tokenize the
mix with its own assistant-mask logic (a second path to keep correct) and add a
dependency that pins transformers ranges of its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from kakugo_stages.store import open_store

from .attention import (
    FLASH_IMPLEMENTATIONS,
    install_packed_mask_hook,
    packing_supported,
    resolve_attn_implementation,
)
from .checkpoints import StoreCheckpoints, store_checkpoint_callback
from .config import MODEL_PREFIX, TrainConfig
from .data import PackedCollator, PaddedCollator, TrainDataset, load_split, tokenize_rows
from .deepspeed_config import deepspeed_config, resolve_precision
from .model_card import render_model_card
from .progress import progress_callback

log = logging.getLogger("kakugo.training")

TORCH_EXTENSIONS_DEFAULT = Path.home() / ".cache" / "kakugo" / "torch_extensions"


#: Test hook: sleep this many seconds after each step, so a kill lands mid-run.
STEP_SLEEP_ENV = "KAKUGO_TRAIN_STEP_SLEEP"


def _slow_steps(seconds: float) -> Any:
    from transformers import TrainerCallback

    class SlowSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(seconds)

    return SlowSteps()


class TrainingError(RuntimeError):
    """A training run cannot start or finish; the message says what to change."""


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def prepare_environment(config: TrainConfig) -> None:
    """Process-wide settings, before torch.distributed or DeepSpeed start."""
    # DeepSpeed JIT-builds a communication op on first use (~30 s); build it once, outside
    # the repository and the scratch dir.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(TORCH_EXTENSIONS_DEFAULT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config.deepspeed_stage and config.device == "cpu":
        # ZeRO on CPU runs over gloo; the process group must exist before
        # TrainingArguments, or DeepSpeed tries its default (nccl/ccl) backend.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """Gradient checkpointing in the names of the installed transformers: 5.24 calls it
    `activation_checkpointing` (the old name is a deprecated alias); earlier releases,
    such as the 5.17 of the GPU machines, know only `gradient_checkpointing`."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {
        f"{prefix}_checkpointing": enabled,
        f"{prefix}_checkpointing_kwargs": {"use_reentrant": False},
    }


def training_arguments(
    config: TrainConfig, precision: str, output_dir: Path, evaluate: bool = False
) -> Any:
    """The Trainer's arguments. `evaluate`: there is a validation split, evaluated every
    `eval_every_fraction` of the steps (a float below 1 is a ratio of the run)."""
    from transformers import TrainingArguments

    ds = deepspeed_config(config.deepspeed_stage, precision)
    periodic = evaluate and config.eval_every_fraction > 0
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        # A float below 1 is a ratio of the steps (1.0 would mean one step).
        warmup_steps=min(float(config.warmup_ratio), 0.9999),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        **checkpointing_arguments(config.gradient_checkpointing),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        deepspeed=ds,
        use_cpu=config.device == "cpu",
        # Several CPU processes talk over gloo (GPUs: nccl, the default).
        ddp_backend="gloo" if config.device == "cpu" and _world_size() > 1 else None,
        save_strategy="steps",
        save_steps=config.checkpoint_every_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.log_every_steps,
        logging_first_step=True,
        eval_strategy="steps" if periodic else "no",
        eval_steps=config.eval_every_fraction if periodic else None,
        report_to="none",
        disable_tqdm=True,  # our progress callback draws the bar (with tokens/s and ETA)
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,  # our collators build the model inputs themselves
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


def train(config: TrainConfig) -> dict[str, Any]:
    """Train, checkpoint to the store, write `model/`; return the result (on every rank;
    only rank 0 writes to the store)."""
    prepare_environment(config)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer
    from transformers.trainer_callback import PrinterCallback

    started = time.monotonic()
    store = open_store(
        config.run_uri, endpoint_url=config.storage_endpoint_url, region=config.storage_region
    )
    scratch = Path(config.scratch_dir)
    precision = resolve_precision(config.precision, config.device)
    impl = resolve_attn_implementation(config.attn_implementation, config.device)

    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path)
    # The training template (generation markers) is also the one the model ships with,
    # so chat downstream formats prompts exactly as in training.
    tokenizer.chat_template = config.chat_template
    train_rows = load_split(store, "train")
    if not train_rows:
        raise TrainingError(
            f"no training rows at {store.url('dataset/data')}: rerun the filter stage"
        )
    train_examples, train_totals = tokenize_rows(
        train_rows, tokenizer, config.chat_template, config.cutoff_len
    )
    val_examples, val_totals = tokenize_rows(
        load_split(store, "validation"), tokenizer, config.chat_template, config.cutoff_len
    )
    if not train_examples:
        raise TrainingError(
            f"every training row was dropped ({dict(train_totals.dropped)}); "
            f"raise training.cutoffLen ({config.cutoff_len})?"
        )

    model_config = AutoConfig.from_pretrained(config.model_path)
    packing = config.packing
    if packing:
        ok, why = packing_supported(model_config)
        if not ok:
            log.warning("packing disabled: %s; training on padded batches", why)
            packing = False
    train_ds = TrainDataset(train_examples, config.cutoff_len, packing)
    val_ds = TrainDataset(val_examples, config.cutoff_len, packing) if val_examples else None
    flash = impl in FLASH_IMPLEMENTATIONS
    collator = (
        PackedCollator(flash_kwargs=flash)
        if packing
        else PaddedCollator(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
    )

    output_dir = scratch / "checkpoints"
    # TrainingArguments first: with ZeRO-3 it makes from_pretrained partition the weights
    # as they load (zero.Init) instead of materialising the full model on every rank.
    args = training_arguments(
        config, precision, output_dir, evaluate=val_ds is not None and len(val_ds) > 0
    )
    # bf16 weights only under DeepSpeed, which keeps fp32 master weights in the optimizer;
    # plain bf16 weights would round away lr-1e-5 updates. Without DeepSpeed the weights
    # stay fp32 and bf16 is autocast.
    dtype = torch.bfloat16 if (precision == "bf16" and config.deepspeed_stage) else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(
            config.model_path, dtype=dtype, attn_implementation=impl
        )
    except Exception as exc:  # transformers raises OSError, ValueError, ImportError...
        raise TrainingError(
            f"cannot load the student from {config.model_path} with "
            f"attn_implementation={impl}: {exc}"
        ) from exc
    model.config.use_cache = False  # no KV cache in training (and it fights checkpointing)
    if packing and not flash:
        install_packed_mask_hook(model)

    checkpoints = StoreCheckpoints(store, keep=config.save_total_limit)
    resume_step = checkpoints.latest()
    resume_path: Path | None = None
    if resume_step is not None:
        resume_path = scratch / "resume" / f"checkpoint-{resume_step}"
        if rank() == 0:
            checkpoints.download(resume_step, scratch / "resume")
        _barrier()
        log.info("resuming from checkpoint %d on the store", resume_step)

    progress_cb = progress_callback(store)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[store_checkpoint_callback(checkpoints), progress_cb],
    )
    # Our progress callback logs step, loss, tokens/s and ETA; the Trainer's printer would
    # repeat every log as a dict on stdout, where the CLI prints its JSON summary.
    trainer.remove_callback(PrinterCallback)
    if os.environ.get(STEP_SLEEP_ENV):
        trainer.add_callback(_slow_steps(float(os.environ[STEP_SLEEP_ENV])))
    output = trainer.train(resume_from_checkpoint=str(resume_path) if resume_path else None)
    progress = progress_cb.progress
    eval_loss = None
    if val_ds is not None and len(val_ds):
        eval_loss = trainer.evaluate().get("eval_loss")

    logged = [e for e in trainer.state.log_history if "loss" in e and "step" in e]
    losses = [e["loss"] for e in logged]
    evaluated = [e for e in trainer.state.log_history if "eval_loss" in e and "step" in e]
    result: dict[str, Any] = {
        # The whole curve, including steps before a resume (the checkpoint keeps them).
        "loss_history": [[e["step"], round(float(e["loss"]), 6)] for e in logged],
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "final_loss": losses[-1] if losses else None,
        "train_loss": output.training_loss,
        "eval_loss": eval_loss,
        # Validation loss every fifth of the run (training.evalEveryFraction), then at the end.
        "eval_loss_history": [[e["step"], round(float(e["eval_loss"]), 6)] for e in evaluated],
        "resumed_from_step": resume_step or 0,
        "train_tokens": int(trainer.state.num_input_tokens_seen or 0),
        "tokens_per_s": round(progress.tokens_per_second, 2) if progress else None,
        "worker_seconds": round(time.monotonic() - started, 3),
        "train_seconds": round(progress.seconds, 3) if progress else None,
        "packing": packing,
        "rows_per_step": config.global_batch_size,
        "packed_rows": len(train_ds),
        "attn_implementation": impl,
        "precision": precision,
        "deepspeed_zero_stage": config.deepspeed_stage,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "tokens": {"train": train_totals.as_dict(), "validation": val_totals.as_dict()},
    }

    final = scratch / "final"
    if rank() == 0 and final.exists():
        shutil.rmtree(final)
    _barrier()
    # Collective under ZeRO-3: every rank joins the gather of the 16-bit weights.
    trainer.save_model(str(final))
    if rank() == 0:
        tokenizer.save_pretrained(final)
        (final / "chat_template.jinja").write_text(config.chat_template, encoding="utf-8")
        (final / "README.md").write_text(
            render_model_card(config, result, store.url("dataset")), encoding="utf-8"
        )
        (final / "training_args.bin").unlink(missing_ok=True)
        # The previous attempt's files go first; the stage marker (written after this)
        # is what says the model is complete.
        store.delete_prefix(MODEL_PREFIX + "/")
        store.upload_dir(final, MODEL_PREFIX)
        result["model"] = store.url(MODEL_PREFIX)
    _barrier()
    return result
