"""lm-eval task YAMLs, generated per run for any language.

lm-eval ships no generic FLORES-200 task and SIB-200 only for African languages, so
those two are ours. Belebele and Global-MMLU `include:` the harness's own templates (by
absolute path into the installed lm_eval package) and override only where the data is:
`dataset_path: json` with `dataset_kwargs.data_files` naming the local files. Every
file sets `num_fewshot` from the spec and `fewshot_split`; prompts are plain text (no
chat template), so the base and the tuned model see byte-identical prompts.

How the shots stay off the scored item:
- FLORES (dev → devtest), SIB-200 (train → test), Global-MMLU (dev → test) draw shots
  from another split than the scored one;
- Belebele has only `test`: lm-eval's sampler, when `fewshot_split == test_split`, is
  given the scored document and drops it from the pool before taking the shots
  (`ContextSampler.rm_eval_doc`, also in the harness template's `first_n` sampler).
  The tests check every prompt for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kakugo_stages.evaluation.data import ENGLISH, SIB200_CATEGORIES, PreparedTask
from kakugo_stages.languages import Language


def _harness_tasks() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def belebele_template() -> Path:
    return _harness_tasks() / "belebele" / "_default_template_yaml"


def global_mmlu_template(config: str) -> Path:
    """The harness's Global-MMLU (full) template of `config`; English's where the harness
    lacks the language (every language's template has the same English prompt)."""
    folder = _harness_tasks() / "global_mmlu" / "full"
    own = folder / config / f"_{config}_template_yaml"
    return own if own.is_file() else folder / "en" / "_en_template_yaml"


def _common(task: PreparedTask) -> dict[str, Any]:
    return {
        "task": task.task_name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": dict(task.data_files)},
        "test_split": task.scored_split,
        "fewshot_split": task.shot_split,
        "num_fewshot": task.shots,
        "metadata": {"version": 1.0, "kakugo_source": task.source},
    }


def flores_config(
    task: PreparedTask, language: Language, *, max_new_tokens: int, repetition_penalty: float
) -> dict[str, Any]:
    english, target = "English", language.name
    if task.key == "flores_en-xx":
        src_name, src, tgt_name, tgt = english, ENGLISH, target, language.code
    else:
        src_name, src, tgt_name, tgt = target, language.code, english, ENGLISH
    return {
        **_common(task),
        # Seeded random shots (simple_evaluate's fewshot_random_seed): the same for both
        # models, and not always the same three sentences for every item.
        "fewshot_config": {"sampler": "default"},
        "output_type": "generate_until",
        "doc_to_text": f"{src_name}: {{{{sentence_{src}}}}}\n{tgt_name}:",
        "doc_to_target": f"{{{{sentence_{tgt}}}}}",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "generation_kwargs": {
            # One sentence in, one sentence out: stop at the line end or the next shot.
            "until": ["\n", f"{src_name}:"],
            "do_sample": False,
            "temperature": 0.0,
            "max_gen_toks": max_new_tokens,
            "repetition_penalty": repetition_penalty,
        },
        # lm-eval's chrf++ is sacrebleu.corpus_chrf(word_order=2): corpus-level chrF++.
        "metric_list": [{"metric": "chrf++", "aggregation": "chrf++", "higher_is_better": True}],
    }


def sib200_config(task: PreparedTask) -> dict[str, Any]:
    topics = ", ".join(SIB200_CATEGORIES[:-1]) + " or " + SIB200_CATEGORIES[-1]
    return {
        **_common(task),
        "fewshot_config": {"sampler": "default"},
        "output_type": "multiple_choice",
        "doc_to_text": f"Topic of the text ({topics})?\nText: {{{{text}}}}\nTopic:",
        "doc_to_choice": list(SIB200_CATEGORIES),
        "doc_to_target": "{{category}}",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def belebele_config(task: PreparedTask) -> dict[str, Any]:
    # The harness template brings the prompt, choices, target and its first_n sampler.
    return {"include": str(belebele_template()), **_common(task)}


def global_mmlu_config(task: PreparedTask, config: str) -> dict[str, Any]:
    return {
        "include": str(global_mmlu_template(config)),
        **_common(task),
        # The template's first_n would give every item the first three dev rows, which in
        # the real data are all abstract_algebra; seeded random shots span the subjects.
        "fewshot_config": {"sampler": "default"},
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def write_task_files(
    tasks: list[PreparedTask],
    language: Language,
    folder: Path,
    *,
    max_new_tokens: int,
    repetition_penalty: float,
) -> dict[str, Path]:
    """One YAML per task in `folder` (the TaskManager's include path); key -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for task in tasks:
        if task.key.startswith("flores_"):
            cfg = flores_config(
                task, language, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty
            )
        elif task.key == "sib200":
            cfg = sib200_config(task)
        elif task.key == "belebele":
            cfg = belebele_config(task)
        elif task.key == "global_mmlu":
            cfg = global_mmlu_config(task, language.global_mmlu or "en")
        else:  # pragma: no cover - data.prepare_tasks makes only these keys
            raise ValueError(f"unknown task {task.key}")
        path = folder / f"{task.task_name}.yaml"
        path.write_text(
            yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8"
        )
        written[task.key] = path
    return written
