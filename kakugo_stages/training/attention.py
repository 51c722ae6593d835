"""Attention kernels and packing without cross-example attention.

Packed examples share one row of the batch; what keeps one example from attending to
another depends on the attention implementation (checked against transformers 5.24):

- `flash_attention_2` / `flash_attention_3`: varlen kernels. The collator passes
  `cu_seq_lens_q/k` and `max_length_q/k` (the flash kwargs of
  `DataCollatorWithFlattening`); the model forwards them to every attention layer and
  the kernel never looks across a boundary. No mask is materialised. Granite 4's model
  does not forward `position_ids` to its attention layers, so the explicit kwargs are
  required: flash attention's own "infer from position_ids" path never sees them.
- `flex_attention` (PyTorch's FlexAttention, compiled by transformers): takes a
  `BlockMask`, which `create_causal_mask` builds from the same restarting `position_ids`
  when the model is loaded with this implementation. It skips the masked-out blocks, so
  packing costs almost nothing, and it needs no package beyond torch: `auto` picks it on
  cuda when flash-attn is missing (the GPU images may lack it: it is a large CUDA build).
  Same gap and same fix as sdpa below: the pre-hook hands the decoder the block mask.
- `sdpa` / `eager`: these need a mask. transformers derives a block-diagonal causal mask
  from restarting `position_ids` (`find_packed_sequence_indices`), but only in models that
  pass `position_ids` to `create_causal_mask` (Llama does; Granite 4's
  `GraniteMoeHybridModel` does not in 5.24). `install_packed_mask_hook` closes that gap:
  a forward pre-hook on the decoder builds the same block-diagonal mask with
  transformers' own `create_causal_mask` and hands it to the model precomputed. Cost: an
  O(L²) boolean mask per row (64 MB at 8,000 tokens) and sdpa's memory-efficient kernel
  instead of its flash kernel.
- Mamba / linear-attention layers (Granite 4 "H" models) carry state across the whole
  row; packing would leak between examples there, so packing is refused for them and the
  trainer falls back to padded batches.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

log = logging.getLogger("kakugo.training")

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")
#: Implementations that keep packed examples apart through a mask built by the pre-hook.
MASK_IMPLEMENTATIONS = ("flex_attention", "sdpa", "eager")


class AttentionError(ValueError):
    pass


def flash_attn_available(impl: str = "flash_attention_2") -> bool:
    module = "flash_attn_interface" if impl == "flash_attention_3" else "flash_attn"
    return importlib.util.find_spec(module) is not None


def flex_attention_available() -> bool:
    from transformers.utils import is_torch_flex_attn_available

    return bool(is_torch_flex_attn_available())


def resolve_attn_implementation(requested: str, device: str) -> str:
    """The implementation to load the model with. `auto` on cuda: flash-attention 2 when
    the package is installed, else FlexAttention (block-sparse, in torch itself), else
    sdpa; on cpu: sdpa (FlexAttention compiles C++ kernels there, minutes for nothing)."""
    if requested == "auto":
        if device == "cuda" and flash_attn_available():
            return "flash_attention_2"
        if device == "cuda" and flex_attention_available():
            return "flex_attention"
        return "sdpa"
    if requested == "flex_attention" and not flex_attention_available():
        raise AttentionError(
            "training.attnImplementation: flex_attention needs torch >= 2.5 with "
            "torch.nn.attention.flex_attention; use auto or sdpa"
        )
    if requested in FLASH_IMPLEMENTATIONS:
        if device != "cuda":
            raise AttentionError(
                f"training.attnImplementation: {requested} needs a GPU (training.device is "
                f"{device}); use sdpa or auto"
            )
        if not flash_attn_available(requested):
            package = (
                "flash-attn-3 (flash_attn_interface)" if requested.endswith("3") else ("flash-attn")
            )
            raise AttentionError(
                f"training.attnImplementation: {requested} but {package} is not installed in "
                "the trainer image; use auto or sdpa"
            )
    return requested


def packing_supported(model_config: Any) -> tuple[bool, str]:
    """Whether examples can share a row without leaking into each other: not when the
    model has recurrent (Mamba) layers, which carry state along the whole row."""
    types = getattr(model_config, "layer_types", None) or []
    recurrent = sorted({t for t in types if t not in ("attention", "full_attention")})
    if recurrent:
        return (
            False,
            f"the model has {', '.join(recurrent)} layers, which carry state across "
            "packed examples",
        )
    return True, ""


def _decoder(model: Any) -> Any:
    getter = getattr(model, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    return decoder if decoder is not None else getattr(model, "model", model)


def install_packed_mask_hook(model: Any) -> Any:
    """For flex_attention/sdpa/eager: build the block-diagonal causal mask of a packed
    row from its restarting position_ids before the decoder runs (a `BlockMask` for
    flex_attention, a boolean 4D mask otherwise: `create_causal_mask` picks by the
    model's implementation). Returns the hook handle."""
    import torch
    from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices

    decoder = _decoder(model)
    config = decoder.config
    # Hybrid Granite models take a {layer type: mask} mapping; others a 4D mask.
    mapping_types = sorted(set(getattr(config, "layers_block_type", None) or []))

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        position_ids = kwargs.get("position_ids")
        if kwargs.get("attention_mask") is not None or position_ids is None:
            return None
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            return None
        if find_packed_sequence_indices(position_ids) is None:
            return None  # one example per row: the plain causal mask is right
        ref = kwargs.get("input_ids")
        if ref is None:
            ref = kwargs["inputs_embeds"]
        batch, length = ref.shape[0], ref.shape[1]
        dtype = next(p for p in module.parameters()).dtype
        probe = torch.empty((batch, length, 0), dtype=dtype, device=position_ids.device)
        # The cache is the fourth parameter, positional: transformers 5.24 names it
        # `cache`, earlier releases (the GPU image's 5.17) `past_key_values`.
        mask = create_causal_mask(config, probe, None, None, position_ids=position_ids)
        if mapping_types:
            kwargs["attention_mask"] = {
                t: (mask if t in ("full_attention", "attention") else None)
                for t in {"full_attention", "linear_attention", *mapping_types}
            }
        else:
            kwargs["attention_mask"] = mask
        return args, kwargs

    return decoder.register_forward_pre_hook(hook, with_kwargs=True)
