"""Benchmark: wall time of the evaluate stage with its `hf` backend (lm-evaluation-harness
on transformers), base and tuned model, over the shipped evaluation fixtures.

The stage runs exactly as in a Job (`run_stage` of `evaluate` on a run folder whose
`model/` holds the "tuned" model): task files from `tests/fixtures/eval` (FLORES en→xx and
xx→en, SIB-200, Belebele, Global-MMLU; 3-shot, 62 scored items), the base model loaded
from `student.model`, the tuned one from the store, each scored by lm-eval in turn.

The model is a random Granite layout (`--scale`: Granite-4.0-Micro on GPUs with >= 100
GiB, the ~1.4B version below) with the vocabulary of a tokenizer trained here on the
fixtures' text (nothing can be downloaded on the GPU machines): random weights never
emit the end of a line, so every FLORES item generates `--max-new-tokens` tokens, the
worst case of the generation part. bf16 on GPUs, fp32 on the CPU.

    python bench/eval_throughput.py                  # GPU
    python bench/eval_throughput.py --tiny           # CPU (the default without CUDA)

The last output line is one JSON object (also written to `--out`): device, model shape,
seconds of the whole stage and per model, scored items, items/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The checkout last (tests.helpers; an installed kakugo, as gpu_check.sh installs one,
# comes first).
sys.path.append(str(Path(__file__).resolve().parent.parent))

from granite_shapes import auto_shape, granite_config
from loaded_distributions import record_at_exit

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "eval"


def fixture_text() -> str:
    """Every string of the fixtures, so the tokenizer knows the evaluated languages."""
    parts: list[str] = []
    for path in sorted(FIXTURES.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                parts += [v for v in json.loads(line).values() if isinstance(v, str)]
    return "\n".join(parts)


def build_models(folder: Path, shape: str, cuda: bool) -> tuple[Path, int]:
    """Tokenizer and random model saved as one Hugging Face folder; returns it and the
    parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.tiny_models import build_tokenizer

    build_tokenizer(folder, vocab_size=4096, extra_text=fixture_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = granite_config(
        shape,
        4096,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return folder, params


def run_spec_for(storage: Path, student: Path, cuda: bool, batch: int, max_new_tokens: int) -> Any:
    from kakugo_stages.manifest import parse_object
    from kakugo_stages.resolved import run_spec

    body = {
        "language": "Yoruba",
        "teacher": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "unused"}},
        "student": {"model": str(student)},
        "storage": {"uri": str(storage)},
        "evaluation": {
            "backend": "hf",
            "device": "cuda" if cuda else "cpu",
            "batchSize": batch,
            "flores": {"path": str(FIXTURES / "flores_plus"), "maxNewTokens": max_new_tokens},
            "sib200": {"path": str(FIXTURES / "sib200")},
            "belebele": {"path": str(FIXTURES / "belebele")},
            "globalMmlu": {"path": str(FIXTURES / "global_mmlu")},
        },
    }
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "eval-bench", "namespace": "bench"},
        "spec": body,
    }
    return run_spec(parse_object(obj))


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
    p.add_argument("--scale", choices=("auto", "micro", "1b"), default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="evaluation.batchSize (8)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="evaluation.flores.maxNewTokens (the spec's 256; tiny: 16)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    args = p.parse_args()
    if args.tiny:
        shape, cuda = "tiny", False
    elif args.scale == "auto":
        shape = auto_shape(torch.cuda.get_device_properties(0).total_memory / 2**30)
    else:
        shape = args.scale
    max_new = args.max_new_tokens or (16 if args.tiny else 256)

    from kakugo_stages.stages import get_stage, run_stage
    from kakugo_stages.store import StageOutput, open_store

    with tempfile.TemporaryDirectory(prefix="kakugo-eval-bench-") as tmp:
        started = time.perf_counter()
        model_dir, params = build_models(Path(tmp) / "model", shape, cuda)
        build_seconds = time.perf_counter() - started
        run = run_spec_for(Path(tmp) / "store", model_dir, cuda, args.batch_size, max_new)
        store = open_store(run.run_uri)
        store.upload_dir(model_dir, "model")  # what a finished train stage leaves
        StageOutput(store, "train").mark_complete(0)
        stage = get_stage("evaluate")(run, store)
        started = time.perf_counter()
        run_stage(stage)
        stage_seconds = time.perf_counter() - started
        results = store.read_json("evaluation/results.json")

    items = sum(t["n"] for t in results["tasks"].values())
    per_model = results.get("seconds") or {}
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        f"\ndevice {device} | model {shape} ({params / 1e9:.3f}B params) | "
        f"{items} items per model, batch {args.batch_size}, FLORES up to {max_new} new tokens"
    )
    print(
        f"stage {stage_seconds:.1f} s (tuned {per_model.get('tuned')} s, base "
        f"{per_model.get('base')} s); model build {build_seconds:.1f} s"
    )
    line = {
        "device": device,
        "model": shape,
        "params": params,
        "backend": "hf",
        "stage_seconds": round(stage_seconds, 2),
        "model_seconds": per_model,
        "items_per_model": items,
        "items_per_s": round(2 * items / stage_seconds, 3),
        "tasks": {k: v["n"] for k, v in results["tasks"].items()},
        "batch_size": args.batch_size,
        "max_new_tokens": max_new,
        "build_seconds": round(build_seconds, 2),
    }
    print(json.dumps(line))
    if args.out:
        args.out.write_text(json.dumps(line) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
