"""A run folder as a finished pipeline leaves it, made in seconds: the training mix
(`dataset/`, train and validation parquet splits and a card, through the filter stage's own
writer), a tiny random Granite as the tuned model (`model/`, with its card), the stage
markers of filter/train/evaluate, and `evaluation/results.json`.

The base model (`spec.student.model`) is another tiny Granite with a different seed, so
base and tuned answers differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kakugo_stages.manifest import parse_object
from kakugo_stages.mix import MixResult, MixRows, write_dataset
from kakugo_stages.resolved import RunSpec, run_spec
from kakugo_stages.spec import MixConfig
from kakugo_stages.store import StageOutput, open_store
from kakugo_stages.training.model_card import EVAL_END, EVAL_START
from tests.helpers.tiny_models import build_model, build_tokenizer

#: Prompts of the mix. Row ids say which split a row lands in; the last validation prompt
#: repeats a train prompt (different case and spacing), which review must never show.
TRAIN_PROMPTS = [f"Ṣàlàyé ọjà Èkó, apá {i}." for i in range(12)]
VALIDATION_PROMPTS = [f"Kí ni oúnjẹ aládùn {i}?" for i in range(8)] + ["ṣàlàyé  ỌJÀ Èkó, apá 3."]

RESULTS: dict[str, Any] = {
    "language": "yor_Latn",
    "tasks": {
        "flores_en-xx": {
            "metric": "chrf++",
            "base": 20.5,
            "tuned": 31.25,
            "delta": 10.75,
            "n": 50,
            "shots": 3,
            "source": "openlanguagedata/flores_plus",
        },
        "belebele": {
            "metric": "acc",
            "base": 31.7,
            "tuned": 48.7,
            "delta": 17.0,
            "n": 900,
            "shots": 3,
            "source": "facebook/belebele",
        },
        "sib200": {
            "metric": "acc",
            "base": 40.0,
            "tuned": 52.5,
            "delta": 12.5,
            "n": 204,
            "shots": 3,
            "source": "Davlan/sib200",
        },
    },
    "skipped": {"global_mmlu": "disabled in the spec"},
    "models": {"base": "base", "tuned": "model"},
}

CARD = f"""---
base_model: tiny-base
datasets:
- /runs/tests/yo-share/dataset
language:
- yo
library_name: transformers
---

# tiny-yoruba

A tiny test model.

## Evaluation

{EVAL_START}
| task | metric | base | tuned |
{EVAL_END}
"""


def make_run(
    root: Path, tokenizer: Path, base: Path, name: str = "yo-share", **spec: Any
) -> RunSpec:
    body = {
        "language": "Yoruba",
        "teacher": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "unused"}},
        "student": {"model": str(base)},
        "storage": {"uri": str(root)},
        "evaluation": {"device": "cpu"},
        **spec,
    }
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": name, "namespace": "tests"},
        "spec": body,
    }
    return run_spec(parse_object(obj))


def _row(i: int, prompt: str) -> dict[str, Any]:
    return {
        "id": f"gen-{i:04d}",
        "source": "topics",
        "prompt": prompt,
        "response": f"Ìdáhùn {i}.",
        "reasoning": None,
    }


def _scramble(folder: Path, seed: int) -> Path:
    """Redraw every weight from N(0, 0.5): a fresh tiny model with tied embeddings only
    echoes the prompt's last token (the same special token for any seed); wide random
    weights make two seeds answer differently, with ordinary tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)
    return folder


def build_models(folder: Path) -> tuple[Path, Path, Path]:
    """(tokenizer, base model, tuned model) folders under `folder`."""
    tok = build_tokenizer(folder / "tok")
    base = _scramble(build_model(folder / "base", tok, seed=1), seed=1)
    return tok, base, _scramble(build_model(folder / "tuned", tok, seed=2), seed=2)


def finish_run(run: RunSpec, tuned: Path) -> None:
    store = open_store(run.run_uri)
    cfg = MixConfig()
    mix = MixResult(MixRows(cfg), MixRows(cfg), [])
    for i, prompt in enumerate(TRAIN_PROMPTS):
        mix.train.append(_row(i, prompt), False)
    for i, prompt in enumerate(VALIDATION_PROMPTS):
        mix.validation.append(_row(100 + i, prompt), False)
    write_dataset(store, mix, "---\nlanguage:\n- yo\n---\n\n# the mix\n")
    for path in sorted(tuned.iterdir()):
        store.write_bytes(f"model/{path.name}", path.read_bytes())
    store.write_text("model/README.md", CARD)
    store.write_text("spec.yaml", run.to_yaml())
    store.write_json("evaluation/results.json", RESULTS)
    for stage in ("filter", "train", "evaluate"):
        StageOutput(store, stage).mark_complete(0)
