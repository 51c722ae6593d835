"""Benchmark: training tokens/s and model-FLOPs utilisation (MFU) of the train stage.

Ours: the train stage's own pieces (`kakugo_stages.training`): examples packed into rows
of up to `--cutoff` tokens with restarting position_ids, the attention the stage picks
(`auto`: flash-attention 2 varlen kwargs when flash-attn is installed, else FlexAttention
with a block-diagonal document mask on GPUs, sdpa with the same mask on CPU), bf16,
gradient checkpointing, the stage's TrainingArguments and DeepSpeed config (ZeRO-3 by
default, as the spec's default), per-device batch 1.
Baseline: a plain `transformers.Trainer`, no packing, padding to the longest example in a
batch of `--baseline-batch`, sdpa, bf16 autocast, gradient checkpointing (without it the
padded batches do not fit), no DeepSpeed.

Both train on the same synthetic chat examples (system + user + assistant, loss on the
assistant part) with a realistic length mix: 60 % short (64-512 tokens), 30 % medium
(512-2,048), 10 % long (2,048 to the cutoff). Tokens/s counts real (non-padding) tokens
only, measured from step `--skip` on (allocator warm-up, kernel compilation and
autotuning excluded), with a CUDA sync at each step end.

MFU = 6 x parameters x tokens/s / peak dense bf16 FLOP/s of the GPU (PaLM-style model
FLOPs: the recomputation of gradient checkpointing and the attention score FLOPs are not
counted, so it is a conservative figure). Peak: H100 SXM / H200 989 TFLOP/s, H100 PCIe
756, A100 312, L40S 362; unknown GPUs and CPUs give `mfu: null`.

    python bench/train_throughput.py                 # GPU: Granite-4.0-Micro shape
    python bench/train_throughput.py --scale 1b      # GPU with less memory: ~1.4B shape
    python bench/train_throughput.py --tiny          # CPU (the default without CUDA)
    python bench/train_throughput.py --zero 0 --runs ours --out ours-zero0.json

The last output line is one JSON object (also written to `--out`): device, tokens_per_s,
baseline_tokens_per_s, speedup, mfu, baseline_mfu and the settings.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The checkout last: an installed kakugo (gpu_check.sh installs one) comes first.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from granite_shapes import SHAPES, auto_shape, granite_config, peak_flops
from loaded_distributions import record_at_exit

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
        labels = [IGNORE_INDEX] * min(length, len(system) + user) + ids[len(system) + user :]
        examples.append(Example(ids, labels[:length], "synthetic"))
        total += length
    return examples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timing_callback(cuda: bool) -> Any:
    import torch
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def __init__(self) -> None:
            self.begin = time.perf_counter()
            self.points: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.points.append((time.perf_counter(), int(state.num_input_tokens_seen)))

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def first_steps(self, skip: int) -> float:
            """Seconds of the untimed warm-up steps (compilation, autotuning)."""
            skip = min(skip, len(self.points) - 2)
            return self.points[skip][0] - self.begin if self.points else 0.0

        def rate(self, skip: int) -> tuple[float, int, float]:
            skip = min(skip, len(self.points) - 2)
            (t0, n0), (t1, n1) = self.points[skip], self.points[-1]
            return (n1 - n0) / (t1 - t0), n1 - n0, t1 - t0

    return Timing()


def bench_config(args: argparse.Namespace, out: Path, cuda: bool) -> TrainConfig:
    return TrainConfig(
        run_uri=str(out),
        run_name="bench",
        namespace="bench",
        fingerprint="-",
        scratch_dir=str(out),
        language_name="-",
        language_code="xx",
        student_model="random",
        student_revision=None,
        model_path="-",
        tokenizer_path="-",
        chat_template_name="-",
        chat_template="-",
        device="cuda" if cuda else "cpu",
        nproc=1,
        epochs=1.0,
        learning_rate=1e-5,
        lr_scheduler="cosine",
        warmup_ratio=0.05,
        weight_decay=0.0,
        max_grad_norm=1.0,
        precision="bf16" if cuda else "fp32",
        cutoff_len=args.cutoff,
        packing=True,
        per_device_batch_size=1,
        global_batch_size=1,  # throughput per pass: one sequence per optimizer step
        eval_every_fraction=0.0,
        gradient_checkpointing=True,
        attn_implementation=args.attn,
        deepspeed_stage=args.zero,
        checkpoint_every_steps=10**9,
        save_total_limit=1,
        log_every_steps=10**9,
        seed=0,
        max_steps=-1,
    )


def _init_device(cuda: bool, zero: int) -> Any:
    """Where random weights are initialised: on the GPU (a 3.4B model takes a minute on
    the CPU), except under ZeRO-3, whose zero.Init places the partitions itself."""
    import contextlib

    import torch

    return torch.device("cuda") if cuda and zero != 3 else contextlib.nullcontext()


def run_ours(args: argparse.Namespace, examples: list[Example], cuda: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Trainer

    from kakugo_stages.training.deepspeed_config import resolve_precision
    from kakugo_stages.training.trainer import training_arguments

    out = Path(tempfile.mkdtemp(prefix="kakugo-bench-ours-"))
    config = bench_config(args, out, cuda)
    precision = resolve_precision(config.precision, config.device)
    impl = resolve_attn_implementation(config.attn_implementation, config.device)
    if args.zero:
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
        import deepspeed

        if not cuda:
            # One CPU process has no peer to share memory with: skip DeepSpeed's
            # shared-memory all-reduce op, a ~30 s JIT build (GPUs never build it).
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    targs = training_arguments(config, precision, out)
    # Packed rows carry no padding: count every token (there is no tokenizer here for the
    # Trainer's pad-token check, which would warn on every step).
    targs.include_num_input_tokens_seen = "all"
    dtype = torch.bfloat16 if (precision == "bf16" and args.zero) else torch.float32
    model_config = granite_config(args.shape, args.cutoff)
    started = time.perf_counter()
    with _init_device(cuda, args.zero):
        model = AutoModelForCausalLM.from_config(
            model_config, dtype=dtype, attn_implementation=impl
        )
    init_seconds = time.perf_counter() - started
    model.config.use_cache = False
    flash = impl in FLASH_IMPLEMENTATIONS
    if not flash:
        install_packed_mask_hook(model)
    timing = timing_callback(cuda)
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=TrainDataset(examples, args.cutoff, packing=True),
        data_collator=PackedCollator(flash_kwargs=flash),
        callbacks=[timing],
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    rate, tokens, seconds = timing.rate(args.skip)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del trainer, model
    gc.collect()
    return {
        "tokens_per_s": rate,
        "tokens": tokens,
        "seconds": seconds,
        "steps": len(timing.points),
        "attn_implementation": impl,
        "precision": precision,
        "peak_gib": peak_mem,
        "init_seconds": init_seconds,
        "train_wall_seconds": wall,
        "first_steps_seconds": timing.first_steps(args.skip),
    }


def run_baseline(args: argparse.Namespace, examples: list[Example], cuda: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from kakugo_stages.training.trainer import checkpointing_arguments

    out = Path(tempfile.mkdtemp(prefix="kakugo-bench-base-"))
    targs = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=1,
        learning_rate=1e-5,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        per_device_train_batch_size=args.baseline_batch,
        **checkpointing_arguments(True),
        bf16=cuda,
        use_cpu=not cuda,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10**9,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        seed=0,
    )
    with _init_device(cuda, 0):
        model = AutoModelForCausalLM.from_config(
            granite_config(args.shape, args.cutoff), dtype=torch.float32, attn_implementation="sdpa"
        )
    model.config.use_cache = False
    timing = timing_callback(cuda)
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=TrainDataset(examples, args.cutoff, packing=False),
        data_collator=PaddedCollator(0),
        callbacks=[timing],
    )
    trainer.train()
    rate, tokens, seconds = timing.rate(args.skip)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {
        "tokens_per_s": rate,
        "tokens": tokens,
        "seconds": seconds,
        "steps": len(timing.points),
        "peak_gib": peak_mem,
    }


def main() -> None:
    import torch

    record_at_exit()
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tiny",
        action="store_true",
        default=not cuda,
        help="toy model on CPU (default without CUDA)",
    )
    p.add_argument(
        "--scale",
        choices=("auto", "micro", "1b"),
        default="auto",
        help="GPU model shape: Granite-4.0-Micro (3.4B) or a ~1.4B version; auto: "
        "micro on GPUs with >= 100 GiB (full fine-tune states alone are ~54 GB "
        "and 8k-token logits several more), else 1b",
    )
    p.add_argument("--cutoff", type=int, default=None, help="cutoff_len (8000; tiny: 512)")
    p.add_argument(
        "--tokens", type=int, default=None, help="real tokens trained per run (GPU 300k; tiny 40k)"
    )
    p.add_argument("--baseline-batch", type=int, default=4)
    p.add_argument(
        "--runs",
        choices=("both", "ours", "baseline"),
        default="both",
        help="what to measure in this process (baseline first)",
    )
    p.add_argument(
        "--zero",
        type=int,
        choices=(0, 2, 3),
        default=None,
        help="ZeRO stage for ours (GPU: 3, the spec default; tiny: 0)",
    )
    p.add_argument(
        "--attn",
        default="auto",
        choices=("auto", "flash_attention_2", "flex_attention", "sdpa", "eager"),
        help="attention for ours, as training.attnImplementation (auto: the stage's choice)",
    )
    p.add_argument(
        "--skip",
        type=int,
        default=None,
        help="warm-up steps not timed (GPU 5: compilation; tiny 2)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    args = p.parse_args()
    if args.tiny:
        args.shape, cuda = "tiny", False
    elif args.scale == "auto":
        args.shape = auto_shape(torch.cuda.get_device_properties(0).total_memory / 2**30)
    else:
        args.shape = args.scale
    args.cutoff = args.cutoff or (512 if args.tiny else 8000)
    args.tokens = args.tokens or (40_000 if args.tiny else 300_000)
    args.zero = (0 if args.tiny else 3) if args.zero is None else args.zero
    args.skip = args.skip if args.skip is not None else (2 if args.tiny else 5)
    os.environ.setdefault(
        "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "kakugo" / "torch_extensions")
    )

    device = torch.cuda.get_device_name() if cuda else "cpu"
    vocab = SHAPES[args.shape]["vocab_size"]
    examples = synthetic_examples(args.tokens, args.cutoff, vocab, seed=0)
    # Before any run: under ZeRO-3, DeepSpeed's global state would partition this model too.
    params = sum(p.numel() for p in _shape_model_params(args))
    # Baseline first: the ZeRO-3 run leaves DeepSpeed's global state behind. A run that
    # fails (out of memory, a kernel that does not compile) is reported, and the other's
    # figures are kept.
    errors: dict[str, str] = {}
    base = ours = None
    for name, fn in (("baseline", run_baseline), ("ours", run_ours)):
        if args.runs not in ("both", name):
            continue
        try:
            result = fn(args, examples, cuda)
        except Exception as exc:  # any failure is a result to report
            hint = (
                "; try --scale 1b or a smaller --baseline-batch"
                if isinstance(exc, torch.cuda.OutOfMemoryError)
                else ""
            )
            errors[name] = f"{type(exc).__name__}: {str(exc)[:300]}{hint}"
            print(f"{name} failed: {errors[name]}", file=sys.stderr)
            if cuda:
                torch.cuda.empty_cache()
            continue
        if name == "baseline":
            base = result
        else:
            ours = result
    peak = peak_flops(device) if cuda else None
    mfu = 6 * params * ours["tokens_per_s"] / peak if peak and ours else None
    base_mfu = 6 * params * base["tokens_per_s"] / peak if peak and base else None
    speedup = ours["tokens_per_s"] / base["tokens_per_s"] if ours and base else None

    print(
        f"\ndevice {device} | model {args.shape} ({params / 1e9:.3f}B params) | "
        f"{len(examples)} examples, {sum(len(e) for e in examples):,} tokens, "
        f"cutoff {args.cutoff}"
        + (f" | ours: {ours['attn_implementation']}, ZeRO-{args.zero}" if ours else "")
    )
    print(
        f"{'run':<10}{'tokens/s':>12}{'MFU':>8}{'steps':>8}{'timed tok':>11}{'s':>8}"
        f"{'peak GiB':>10}"
    )
    for name, r, m in (("ours", ours, mfu), ("baseline", base, base_mfu)):
        if r is None:
            continue
        print(
            f"{name:<10}{r['tokens_per_s']:>12,.1f}{'-' if m is None else f'{m:.1%}':>8}"
            f"{r['steps']:>8}{r['tokens']:>11,}{r['seconds']:>8.2f}"
            f"{'-' if r['peak_gib'] is None else format(r['peak_gib'], '.1f'):>10}"
        )
    if speedup is not None:
        print(f"speedup {speedup:.2f}x")

    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    line = {
        "device": device,
        "model": args.shape,
        "params": params,
        "runs": args.runs,
        "tokens_per_s": rounded(ours and ours["tokens_per_s"], 1),
        "baseline_tokens_per_s": rounded(base and base["tokens_per_s"], 1),
        "speedup": rounded(speedup, 3),
        "mfu": rounded(mfu, 4),
        "baseline_mfu": rounded(base_mfu, 4),
        "attn_implementation": ours and ours["attn_implementation"],
        "precision": ours and ours["precision"],
        "zero_stage": args.zero if ours else None,
        "cutoff_len": args.cutoff,
        "baseline_batch": args.baseline_batch if base else None,
        "examples": len(examples),
        "tokens": sum(len(e) for e in examples),
        "peak_gib": rounded(ours and ours["peak_gib"], 2),
        "baseline_peak_gib": rounded(base and base["peak_gib"], 2),
        "init_seconds": rounded(ours and ours["init_seconds"], 2),
        "train_wall_seconds": rounded(ours and ours["train_wall_seconds"], 2),
        "warmup_seconds": rounded(ours and ours["first_steps_seconds"], 2),
        "versions": versions(),
        "errors": errors,
    }
    print(json.dumps(line))
    if args.out:
        args.out.write_text(json.dumps(line) + "\n", encoding="utf-8")
    if errors:
        sys.exit(1)


def _shape_model_params(args: argparse.Namespace) -> Any:
    """The parameters of the shape, counted on the meta device (no memory, no init)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(granite_config(args.shape, args.cutoff))
    return model.parameters()


def versions() -> dict[str, str | None]:
    import importlib.metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "accelerate", "deepspeed", "kakugo"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


if __name__ == "__main__":
    main()
