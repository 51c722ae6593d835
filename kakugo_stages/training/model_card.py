"""The model card (`model/README.md`): base model, data, recipe, training results, and an
evaluation section that the evaluate stage fills through `update_evaluation_section`."""

from __future__ import annotations

import re
from typing import Any

import yaml

EVAL_START = "<!-- kakugo:evaluation -->"
EVAL_END = "<!-- /kakugo:evaluation -->"
EVAL_PENDING = "_Not evaluated yet: the `evaluate` stage writes its results here._"

_EVAL_RE = re.compile(re.escape(EVAL_START) + r".*?" + re.escape(EVAL_END), re.DOTALL)


def update_evaluation_section(card_text: str, table_md: str) -> str:
    """Replace the evaluation block of a card with `table_md` (Markdown). A card without
    the markers gets an "## Evaluation" section appended, so the call never loses data."""
    block = f"{EVAL_START}\n{table_md.strip()}\n{EVAL_END}"
    if _EVAL_RE.search(card_text):
        return _EVAL_RE.sub(lambda _: block, card_text, count=1)
    return card_text.rstrip() + f"\n\n## Evaluation\n\n{block}\n"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def render_model_card(config: Any, result: dict[str, Any], dataset_uri: str) -> str:
    """The card of the trained model. `config` is the TrainConfig, `result` the trainer's."""
    header = {
        "base_model": config.student_model,
        "language": [config.language_code.split("_")[0]],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["kakugo", "distillation", "full-fine-tune", config.language_code],
        "datasets": [dataset_uri],
    }
    # What actually ran: precision, kernel and packing as resolved on the hardware.
    hyperparameters = {
        **config.hyperparameters(),
        **{
            k: result[k]
            for k in ("precision", "attn_implementation", "packing", "processes")
            if k in result
        },
    }
    tokens = result.get("tokens", {}).get("train", {})
    by_source = tokens.get("tokens_by_source", {})
    trained_by_source = tokens.get("trained_tokens_by_source", {})
    examples_by_source = tokens.get("examples_by_source", {})
    source_rows = "\n".join(
        f"| {s} | {examples_by_source.get(s, 0):,} | {by_source[s]:,} | "
        f"{trained_by_source.get(s, 0):,} |"
        for s in sorted(by_source)
    )
    results = {
        "optimizer steps": result.get("steps"),
        "final training loss": _round(result.get("final_loss")),
        "validation loss": _round(result.get("eval_loss")),
        "validation loss by step": ", ".join(
            f"{step}: {loss:.4f}" for step, loss in result.get("eval_loss_history", [])
        )
        or None,
        "training tokens (all / assistant)": f"{tokens.get('tokens', 0):,} / "
        f"{tokens.get('trained_tokens', 0):,}",
        "tokens per second": result.get("tokens_per_s"),
        "training seconds": result.get("train_seconds"),
        "resumed from step": result.get("resumed_from_step"),
    }
    return (
        "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n"
        f"# {config.run_name}: {config.student_model} fine-tuned for {config.language_name}\n\n"
        f"A full fine-tune of `{config.student_model}` on synthetic and translated "
        f"{config.language_name} instruction data made by the Kakugo pipeline "
        "(arXiv 2601.14051): a teacher model wrote prompts and answers in the language and "
        "translated English instruction data.\n\n"
        "## Data\n\n"
        f"The training mix is at `{dataset_uri}` (see its dataset card). Exact token counts "
        "of what was trained, after the chat template:\n\n"
        "| source | examples | tokens | assistant tokens (loss) |\n| --- | --- | --- | --- |\n"
        f"{source_rows}\n\n"
        "## Recipe\n\n"
        "Full fine-tune with the Hugging Face Trainer and DeepSpeed; loss on assistant tokens "
        "only (end-of-turn token included), examples packed without attention across "
        f"examples. Chat template: `{config.chat_template_name}` (shipped in "
        "`chat_template.jinja`).\n\n" + _table(hyperparameters) + "\n\n"
        "## Training results\n\n" + _table(results) + "\n\n" + usage_section(config) + "\n"
        "## Evaluation\n\n"
        f"{EVAL_START}\n{EVAL_PENDING}\n{EVAL_END}\n"
    )


def usage_section(config: Any) -> str:
    """How to chat with the model, thinking on and off: the system prompt picks the mode,
    as in training (generated rows with the teacher's reasoning start with the thinking
    prompt, every other row with the concise one)."""
    code = (
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        "tok = AutoTokenizer.from_pretrained(PATH)\n"
        "model = AutoModelForCausalLM.from_pretrained(PATH)\n\n"
        f"THINK = {config.think_system_prompt!r}\n"
        f"CONCISE = {config.concise_system_prompt!r}\n\n"
        "thinking = True  # False: a direct answer, no <think> block\n"
        "messages = [\n"
        '    {"role": "system", "content": THINK if thinking else CONCISE},\n'
        '    {"role": "user", "content": "..."},\n'
        "]\n"
        "inputs = tok.apply_chat_template(\n"
        '    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"\n'
        ")\n"
        "out = model.generate(**inputs, max_new_tokens=1024, repetition_penalty=1.05)\n"
        'text = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)\n'
        'answer = text.split("</think>")[-1].strip()  # the reply without the thinking\n'
        "```\n"
    )
    if config.reasoning:
        modes = (
            "The system prompt switches thinking on or off, as in training: with the first "
            "prompt below the model thinks inside `<think> … </think>` before it answers; "
            "with the second it answers at once. Use one of the two, word for word.\n\n"
            f"- thinking on: `{config.think_system_prompt}`\n"
            f"- thinking off: `{config.concise_system_prompt}`\n\n"
        )
    else:
        modes = (
            "This model was trained without the teacher's reasoning (`data.mix.reasoning: "
            "false`): every row had the concise system prompt, so thinking cannot be "
            f"switched on. Use `{config.concise_system_prompt}` as the system prompt.\n\n"
        )
    return (
        "## Usage\n\n" + modes + code + "\nA repetition penalty of 1.05 keeps low-resource "
        "generation from looping, as the recipe's authors advise.\n"
    )
