"""Model shapes for the GPU benchmarks: Granite 4.0 Micro and smaller versions of its
layout, built from a config with random weights (nothing can be downloaded on the GPU
machines), and the peak bf16 throughput of the GPUs MFU is computed against."""

from __future__ import annotations

from typing import Any

# ibm-granite/granite-4.0-micro (GraniteMoeHybrid layout, attention layers only, no
# experts): 40 layers, hidden 2560, 40 heads / 8 KV heads, MLP 8192, vocab 100,352, tied
# embeddings, RoPE. About 3.4B parameters.
SHAPES: dict[str, dict[str, Any]] = {
    "micro": dict(
        hidden_size=2560,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=8,
        intermediate_size=8192,
        shared_intermediate_size=8192,
        vocab_size=100352,
    ),
    "1b": dict(
        hidden_size=2048,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=6144,
        shared_intermediate_size=6144,
        vocab_size=100352,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        shared_intermediate_size=128,
        vocab_size=512,
    ),
}

PEAK_BF16_FLOPS = (  # dense, no sparsity; first match on torch.cuda.get_device_name()
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


def peak_flops(device: str) -> float | None:
    return next((f for name, f in PEAK_BF16_FLOPS if name in device), None)


def granite_config(
    shape: str,
    max_positions: int,
    *,
    vocab_size: int | None = None,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
) -> Any:
    """The GraniteMoeHybrid config of `shape`; `vocab_size` overrides the shape's (a model
    that a small test tokenizer can decode)."""
    from transformers import GraniteMoeHybridConfig

    dims = dict(SHAPES[shape])
    if vocab_size is not None:
        dims["vocab_size"] = vocab_size
    return GraniteMoeHybridConfig(
        layer_types=["attention"] * dims["num_hidden_layers"],
        num_local_experts=0,
        position_embedding_type="rope",
        rope_theta=10_000_000.0,
        tie_word_embeddings=True,
        max_position_embeddings=max(max_positions, 4096),
        embedding_multiplier=12.0,
        logits_scaling=10.0,
        residual_multiplier=0.22,
        attention_multiplier=0.015625,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=eos_token_id,
        **dims,
    )


def auto_shape(memory_gib: float) -> str:
    """Granite-4.0-Micro where its full fine-tune fits (weights, gradients and Adam states
    alone are ~54 GB, and 8k-token logits several more), else the ~1.4B version."""
    return "micro" if memory_gib >= 100 else "1b"
