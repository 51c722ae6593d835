"""Answers of one model to the review's prompts: transformers, greedy decoding, the
student's chat template and the concise system prompt (the one every non-reasoning
training row starts with), so base and tuned see exactly the same input."""

from __future__ import annotations

import gc
from typing import Any

from kakugo_stages.review.prompts import Prompt, ReviewError


def messages_for(prompt: Prompt, system_prompt: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": prompt.text},
    ]


def generate_answers(
    model_path: str,
    tokenizer_path: str,
    prompts: list[Prompt],
    *,
    chat_template: str,
    system_prompt: str,
    max_new_tokens: int,
    repetition_penalty: float,
    device: str,
    revision: str | None = None,
) -> list[str]:
    """One answer per prompt, in order. Greedy, so the page is reproducible."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the eval image installs them
        raise ReviewError(
            "the review needs torch and transformers: pip install 'kakugo[stages]'"
        ) from exc
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_path, revision=revision)
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_path,
            revision=revision,
            dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        )
        model = model.to(device)
    except (OSError, ValueError) as exc:
        raise ReviewError(f"cannot load the model {model_path}: {exc}") from exc
    model.eval()
    answers = []
    try:
        for prompt in prompts:
            inputs = tokenizer.apply_chat_template(
                messages_for(prompt, system_prompt),
                chat_template=chat_template,
                add_generation_prompt=True,
                return_dict=True,
                return_tensors="pt",
            ).to(device)
            with torch.no_grad():
                out = model.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    repetition_penalty=repetition_penalty,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
            new = out[0, inputs["input_ids"].shape[1] :]
            answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    finally:
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return answers
