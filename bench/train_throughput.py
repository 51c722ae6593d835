"""Benchmark: training tokens/s and model-FLOPs utilisation (MFU) of the train stage.

Ours: the train stage's own pieces (`kakugo_stages.training`): examples packed into rows
of up to `--cutoff` tokens with restarting position_ids, flash-attention 2 varlen kwargs
when flash-attn is installed (else sdpa with the block-diagonal packed mask), bf16,
gradient checkpointing, the stage's TrainingArguments and DeepSpeed config (ZeRO-3 by
default, as the spec's default), per-device batch 1.
Baseline: a plain `transformers.Trainer`, no packing, padding to the longest example in a
batch of `--baseline-batch`, sdpa, bf16 autocast, gradient checkpointing (without it the
padded batches do not fit), no DeepSpeed.

Both train on the same synthetic chat examples (system + user + assistant, loss on the
assistant part) with a realistic length mix: 60 % short (64-512 tokens), 30 % medium
(512-2,048), 10 % long (2,048 to the cutoff). Tokens/s counts real (non-padding) tokens
only, measured from step `--skip` on (allocator warm-up, kernel autotuning excluded), with
a CUDA sync at each step end.

MFU = 6 x parameters x tokens/s / peak dense bf16 FLOP/s of the GPU (PaLM-style model
FLOPs: the recomputation of gradient checkpointing and the attention score FLOPs are not
counted, so it is a conservative figure). Peak: H100 SXM / H200 989 TFLOP/s, H100 PCIe
756, A100 312, L40S 362; unknown GPUs and CPUs give `mfu: null`.

    python bench/train_throughput.py                 # GPU: Granite-4.0-Micro shape
    python bench/train_throughput.py --scale 1b      # GPU with less memory: ~1.4B shape
    python bench/train_throughput.py --tiny          # CPU (the default without CUDA)

The last output line is one JSON object: device, tokens_per_s, baseline_tokens_per_s,
speedup, mfu, baseline_mfu and the settings.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kakugo_stages.training.attention import (
    FLASH_IMPLEMENTATIONS,
    install_packed_mask_hook,
    resolve_attn_implementation,
)
from kakugo_stages.training.config import TrainConfig
from kakugo_stages.training.data import (
    IGNORE_INDEX,
    Example,
    PackedCollator,
    PaddedCollator,
    TrainDataset,
)

# ibm-granite/granite-4.0-micro (GraniteMoeHybrid layout, attention layers only, no
# experts): 40 layers, hidden 2560, 40 heads / 8 KV heads, MLP 8192, vocab 100,352, tied
# embeddings, RoPE. About 3.4B parameters.
SHAPES: dict[str, dict[str, Any]] = {
    "micro": dict(hidden_size=2560, num_hidden_layers=40, num_attention_heads=40,
                  num_key_value_heads=8, intermediate_size=8192,
                  shared_intermediate_size=8192, vocab_size=100352),
    "1b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=6144, shared_intermediate_size=6144,
               vocab_size=100352),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, shared_intermediate_size=128,
                 vocab_size=512),
}
PEAK_BF16_FLOPS = (  # dense, no sparsity; first match on torch.cuda.get_device_name()
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
    ("L40S", 362e12),
)


def granite_config(shape: str, max_positions: int) -> Any:
    from transformers import GraniteMoeHybridConfig

    dims = SHAPES[shape]
    return GraniteMoeHybridConfig(
        layer_types=["attention"] * dims["num_hidden_layers"], num_local_experts=0,
        position_embedding_type="rope", rope_theta=10_000_000.0, tie_word_embeddings=True,
        max_position_embeddings=max(max_positions, 4096), embedding_multiplier=12.0,
        logits_scaling=10.0, residual_multiplier=0.22, attention_multiplier=0.015625,
        pad_token_id=0, eos_token_id=1, bos_token_id=1, **dims,
    )


def synthetic_examples(n_tokens: int, cutoff: int, vocab: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    examples, total = [], 0
    system = [rng.randrange(10, vocab) for _ in range(24)]  # one fixed system prompt
    while total < n_tokens:
        r = rng.random()
        lo, hi = (64, 512) if r < 0.6 else (512, 2048) if r < 0.9 else (2048, cutoff)
        length = rng.randint(min(lo, cutoff), min(hi, cutoff))
        user = max(1, int((length - len(system)) * rng.uniform(0.2, 0.5)))
        body = [rng.randrange(10, vocab) for _ in range(length - len(system))]
        ids = (system + body)[:length]
        labels = [IGNORE_INDEX] * min(length, len(system) + user) + ids[len(system) + user:]
        examples.append(Example(ids, labels[:length], "synthetic"))
        total += length
    return examples


def peak_flops(device: str) -> float | None:
    return next((f for name, f in PEAK_BF16_FLOPS if name in device), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timing_callback(cuda: bool) -> Any:
    import torch
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.points.append((time.perf_counter(), int(state.num_input_tokens_seen)))

        def rate(self, skip: int) -> tuple[float, int, float]:
            skip = min(skip, len(self.points) - 2)
            (t0, n0), (t1, n1) = self.points[skip], self.points[-1]
            return (n1 - n0) / (t1 - t0), n1 - n0, t1 - t0

    return Timing()


def bench_config(args: argparse.Namespace, out: Path, cuda: bool) -> TrainConfig:
    return TrainConfig(
        run_uri=str(out), run_name="bench", namespace="bench", fingerprint="-",
        scratch_dir=str(out), language_name="-", language_code="xx", student_model="random",
        student_revision=None, model_path="-", tokenizer_path="-", chat_template_name="-",
        chat_template="-", device="cuda" if cuda else "cpu", nproc=1, epochs=1.0,
        learning_rate=1e-5, lr_scheduler="cosine", warmup_ratio=0.05, weight_decay=0.0,
        max_grad_norm=1.0, precision="bf16" if cuda else "fp32", cutoff_len=args.cutoff,
        packing=True, per_device_batch_size=1, gradient_accumulation_steps=1,
        gradient_checkpointing=True, attn_implementation="auto", deepspeed_stage=args.zero,
        checkpoint_every_steps=10**9, save_total_limit=1, log_every_steps=10**9,
        seed=0, max_steps=-1,
    )


def run_ours(args: argparse.Namespace, examples: list[Example], cuda: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Trainer

    from kakugo_stages.training.deepspeed_config import resolve_precision
    from kakugo_stages.training.trainer import training_arguments

    out = Path(tempfile.mkdtemp(prefix="kakugo-bench-ours-"))
    config = bench_config(args, out, cuda)
    precision = resolve_precision(config.precision, config.device)
    impl = resolve_attn_implementation("auto", config.device)
    if args.zero:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    targs = training_arguments(config, precision, out)
    # Packed rows carry no padding: count every token (there is no tokenizer here for the
    # Trainer's pad-token check, which would warn on every step).
    targs.include_num_input_tokens_seen = "all"
    dtype = torch.bfloat16 if (precision == "bf16" and args.zero) else torch.float32
    model_config = granite_config(args.shape, args.cutoff)
    model = AutoModelForCausalLM.from_config(model_config, dtype=dtype,
                                             attn_implementation=impl)
    model.config.use_cache = False
    flash = impl in FLASH_IMPLEMENTATIONS
    if not flash:
        install_packed_mask_hook(model)
    params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                 for p in model.parameters())
    timing = timing_callback(cuda)
    trainer = Trainer(model=model, args=targs,
                      train_dataset=TrainDataset(examples, args.cutoff, packing=True),
                      data_collator=PackedCollator(flash_kwargs=flash), callbacks=[timing])
    trainer.train()
    rate, tokens, seconds = timing.rate(args.skip)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del trainer, model
    gc.collect()
    return {"tokens_per_s": rate, "tokens": tokens, "seconds": seconds, "params": params,
            "steps": len(timing.points), "attn_implementation": impl,
            "precision": precision, "peak_gib": peak_mem}


def run_baseline(args: argparse.Namespace, examples: list[Example],
                 cuda: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    out = Path(tempfile.mkdtemp(prefix="kakugo-bench-base-"))
    targs = TrainingArguments(
        output_dir=str(out), num_train_epochs=1, learning_rate=1e-5, lr_scheduler_type="cosine",
        warmup_steps=0.05, per_device_train_batch_size=args.baseline_batch,
        activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False},
        bf16=cuda, use_cpu=not cuda, save_strategy="no", report_to="none",
        disable_tqdm=True, logging_steps=10**9, remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", seed=0,
    )
    model = AutoModelForCausalLM.from_config(granite_config(args.shape, args.cutoff),
                                             dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    timing = timing_callback(cuda)
    trainer = Trainer(model=model, args=targs,
                      train_dataset=TrainDataset(examples, args.cutoff, packing=False),
                      data_collator=PaddedCollator(0), callbacks=[timing])
    trainer.train()
    rate, tokens, seconds = timing.rate(args.skip)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {"tokens_per_s": rate, "tokens": tokens, "seconds": seconds,
            "steps": len(timing.points), "peak_gib": peak_mem}


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", default=not cuda,
                   help="toy model on CPU (default without CUDA)")
    p.add_argument("--scale", choices=("auto", "micro", "1b"), default="auto",
                   help="GPU model shape: Granite-4.0-Micro (3.4B) or a ~1.4B version; auto: "
                   "micro on GPUs with >= 100 GiB (full fine-tune states alone are ~54 GB "
                   "and 8k-token logits several more), else 1b")
    p.add_argument("--cutoff", type=int, default=None, help="cutoff_len (8000; tiny: 512)")
    p.add_argument("--tokens", type=int, default=None,
                   help="real tokens trained per run (GPU 300k; tiny 40k)")
    p.add_argument("--baseline-batch", type=int, default=4)
    p.add_argument("--zero", type=int, choices=(0, 2, 3), default=None,
                   help="ZeRO stage for ours (GPU: 3, the spec default; tiny: 0)")
    p.add_argument("--skip", type=int, default=None, help="warm-up steps not timed")
    args = p.parse_args()
    if args.tiny:
        args.shape, cuda = "tiny", False
    elif args.scale == "auto":
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        args.shape = "micro" if memory >= 100 else "1b"
    else:
        args.shape = args.scale
    args.cutoff = args.cutoff or (512 if args.tiny else 8000)
    args.tokens = args.tokens or (40_000 if args.tiny else 300_000)
    args.zero = (0 if args.tiny else 3) if args.zero is None else args.zero
    args.skip = args.skip if args.skip is not None else (2 if args.tiny else 3)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                          str(Path.home() / ".cache" / "kakugo" / "torch_extensions"))

    device = torch.cuda.get_device_name() if cuda else "cpu"
    vocab = SHAPES[args.shape]["vocab_size"]
    examples = synthetic_examples(args.tokens, args.cutoff, vocab, seed=0)
    # Baseline first: the ZeRO-3 run leaves DeepSpeed's global state behind.
    try:
        base = run_baseline(args, examples, cuda)
        ours = run_ours(args, examples, cuda)
    except torch.cuda.OutOfMemoryError as exc:
        print(json.dumps({"device": device, "model": args.shape, "error": f"out of memory: "
                          f"{str(exc)[:200]}; try --scale 1b or a smaller --baseline-batch"}))
        sys.exit(1)
    peak = peak_flops(device) if cuda else None
    flops_per_token = 6 * ours["params"]
    mfu = flops_per_token * ours["tokens_per_s"] / peak if peak else None
    base_mfu = flops_per_token * base["tokens_per_s"] / peak if peak else None
    speedup = ours["tokens_per_s"] / base["tokens_per_s"]

    print(f"\ndevice {device} | model {args.shape} ({ours['params'] / 1e9:.3f}B params) | "
          f"{len(examples)} examples, {sum(len(e) for e in examples):,} tokens, "
          f"cutoff {args.cutoff}")
    print(f"{'run':<10}{'tokens/s':>12}{'MFU':>8}{'steps':>8}{'timed tok':>11}{'s':>8}"
          f"{'peak GiB':>10}")
    for name, r, m in (("ours", ours, mfu), ("baseline", base, base_mfu)):
        print(f"{name:<10}{r['tokens_per_s']:>12,.1f}{'-' if m is None else f'{m:.1%}':>8}"
              f"{r['steps']:>8}{r['tokens']:>11,}{r['seconds']:>8.2f}"
              f"{'-' if r['peak_gib'] is None else format(r['peak_gib'], '.1f'):>10}")
    print(f"speedup {speedup:.2f}x")
    print(json.dumps({
        "device": device,
        "model": args.shape,
        "params": ours["params"],
        "tokens_per_s": round(ours["tokens_per_s"], 1),
        "baseline_tokens_per_s": round(base["tokens_per_s"], 1),
        "speedup": round(speedup, 3),
        "mfu": None if mfu is None else round(mfu, 4),
        "baseline_mfu": None if base_mfu is None else round(base_mfu, 4),
        "attn_implementation": ours["attn_implementation"],
        "precision": ours["precision"],
        "zero_stage": args.zero,
        "cutoff_len": args.cutoff,
        "baseline_batch": args.baseline_batch,
        "examples": len(examples),
    }))


if __name__ == "__main__":
    main()
