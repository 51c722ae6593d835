"""The evaluation as the Hub reads it: `model-index` in the model card's YAML metadata.

The Hub shows a model's benchmark results from the card's front matter, one entry per
(task, dataset) with its metrics (https://huggingface.co/docs/hub/model-cards#evaluation-results).
This module turns `evaluation/results.json` into that list and writes it, with the dataset
repository, into a card's metadata; the Markdown body is kept as it is.
"""

from __future__ import annotations

from typing import Any

import yaml

from kakugo_stages.evaluation.data import SPLITS
from kakugo_stages.evaluation.report import TITLES
from kakugo_stages.languages import Language
from kakugo_stages.spec import EvaluationSpec

#: results.json's task key -> (Hub task type, Hub task name).
TASK_TYPES: dict[str, tuple[str, str]] = {
    "flores_en-xx": ("translation", "Translation (English to the language)"),
    "flores_xx-en": ("translation", "Translation (the language to English)"),
    "sib200": ("text-classification", "Topic classification"),
    "belebele": ("question-answering", "Reading comprehension"),
    "global_mmlu": ("question-answering", "Multiple-choice knowledge"),
}
#: results.json's metric -> the Hub's metric type (Hugging Face `evaluate` names).
METRIC_TYPES: dict[str, str] = {"acc": "accuracy", "chrf++": "chrf"}


class CardError(ValueError):
    """A model card whose metadata cannot be read or extended."""


def _dataset(key: str, evaluation: EvaluationSpec, language: Language) -> dict[str, str]:
    """The Hub dataset a task scored: its id (the spec's, also when a mirror served the
    rows, since a mirror holds that dataset's files), config and scored split."""
    if key.startswith("flores"):
        task: Any = evaluation.flores
        config: str | None = language.code
        split = SPLITS["flores"][1]
    else:
        task = getattr(evaluation, key)
        config = {
            "sib200": language.code,
            "belebele": language.belebele_config,
            "global_mmlu": language.global_mmlu,
        }[key]
        split = SPLITS[key][1]
    out = {"name": TITLES.get(key, key), "type": task.dataset, "split": split}
    if config:
        out["config"] = config
    return out


def model_index(
    model_name: str, results: dict[str, Any], evaluation: EvaluationSpec, language: Language
) -> list[dict[str, Any]]:
    """The `model-index` of the tuned model: one result per evaluated task, with the tuned
    score as its metric value (the base model's score is in the card's table)."""
    entries = []
    for key, row in results.get("tasks", {}).items():
        if row.get("tuned") is None or key not in TASK_TYPES:
            continue
        task_type, task_name = TASK_TYPES[key]
        metric = str(row.get("metric", ""))
        metric_type = METRIC_TYPES.get(metric, metric)
        shots = row.get("shots")
        entries.append(
            {
                "task": {"type": task_type, "name": task_name},
                "dataset": _dataset(key, evaluation, language),
                "metrics": [
                    {
                        "type": metric_type,
                        "value": row["tuned"],
                        "name": f"{metric} ({shots}-shot)" if shots is not None else metric,
                        "verified": False,
                    }
                ],
                "source": {
                    "name": "Kakugo evaluate stage",
                    "url": "https://arxiv.org/abs/2601.14051",
                },
            }
        )
    return [{"name": model_name, "results": entries}]


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """A card's YAML metadata and its Markdown body."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---\n", 4)
    if end < 0:
        raise CardError("the card opens a YAML block with --- but never closes it")
    try:
        meta = yaml.safe_load(text[4:end]) or {}
    except yaml.YAMLError as exc:
        raise CardError(f"the card's YAML metadata does not parse: {exc}") from exc
    if not isinstance(meta, dict):
        raise CardError("the card's YAML metadata is not a mapping")
    return meta, text[end + len("\n---\n") :]


def join_card(meta: dict[str, Any], body: str) -> str:
    return (
        "---\n"
        + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
        + "---\n"
        + body
    )


def with_metadata(card: str, **fields: Any) -> str:
    """The card with these metadata fields set (others kept; None removes a field)."""
    meta, body = split_card(card)
    for key, value in fields.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return join_card(meta, body)
