"""The DeepSpeed config, generated from the training config.

Values the HF Trainer also knows are left as "auto": its DeepSpeed integration fills them
from TrainingArguments (batch sizes, accumulation, clipping, bf16/fp16, bucket sizes from
the hidden size), so the two can never disagree. No "optimizer" or "scheduler" block: the
Trainer's torch AdamW and its cosine-with-warmup schedule are used, which keeps the
schedule identical with and without DeepSpeed and avoids DeepSpeed's fused-Adam JIT build
(the trainer image installs DeepSpeed without prebuilt ops). Gradient checkpointing is a
Trainer argument (the model's own checkpointing), not DeepSpeed's activation
checkpointing, which is for Megatron-style models.
"""

from __future__ import annotations

from typing import Any


def resolve_precision(precision: str, device: str) -> str:
    """bf16 where the hardware supports it, fp32 elsewhere (CPU, pre-Ampere GPUs)."""
    if precision == "fp32" or device != "cuda":
        return "fp32"
    import torch

    if precision == "bf16":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "fp16" if torch.cuda.is_available() else "fp32"


def deepspeed_config(zero_stage: int, precision: str) -> dict[str, Any] | None:
    """The config for `TrainingArguments(deepspeed=...)`; None when zero_stage is 0."""
    if zero_stage == 0:
        return None
    zero: dict[str, Any] = {
        "stage": zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        # Recipe: no offload (the GPUs hold the 3B model's shards).
        "offload_optimizer": {"device": "none"},
        "offload_param": {"device": "none"},
    }
    if zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_max_live_parameters=1e9,
            stage3_max_reuse_distance=1e9,
            # save_model() gathers the full 16-bit weights, so the final model is a
            # normal safetensors checkpoint rather than ZeRO shards.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    else:
        zero.update(allgather_partitions=True, allgather_bucket_size=2e8, reduce_scatter=True)
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        # "auto" follows TrainingArguments(bf16=..., fp16=...), which follow `precision`.
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # the progress callback reports; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
