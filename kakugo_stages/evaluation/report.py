"""What the evaluation hands on: results.json, the operator's summary, the model card table.

results.json (scores in points, 0-100; acc is the share of items answered right)::

    {"language": "yor_Latn",
     "tasks": {"belebele": {"metric": "acc", "base": 31.7, "tuned": 48.7, "delta": 17.0,
                            "n": 900, "shots": 3, "source": "facebook/belebele"}, ...},
     "skipped": {"global_mmlu": "disabled in the spec"},
     "models": {"base": "...", "tuned": "..."}, ...}
"""

from __future__ import annotations

import re
from typing import Any

from kakugo_stages.evaluation.data import TASK_KEYS, PreparedTask
from kakugo_stages.evaluation.engine import ModelRun

START, END = "<!-- kakugo:evaluation -->", "<!-- /kakugo:evaluation -->"

LABELS = {
    "flores_en-xx": "flores en→xx",
    "flores_xx-en": "flores xx→en",
    "sib200": "sib200",
    "belebele": "belebele",
    "global_mmlu": "global_mmlu",
}
TITLES = {
    "flores_en-xx": "FLORES-200 en→xx",
    "flores_xx-en": "FLORES-200 xx→en",
    "sib200": "SIB-200",
    "belebele": "Belebele",
    "global_mmlu": "Global-MMLU",
}
#: Summary order: the paper's headline numbers first.
SUMMARY_ORDER = ("belebele", "sib200", "flores_en-xx", "flores_xx-en", "global_mmlu")


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def prompts_identical(base: ModelRun | None, tuned: ModelRun) -> bool | None:
    """Whether both models were given the very same prompts (None when not logged)."""
    if base is None or not base.samples or not tuned.samples:
        return None
    return all(
        [s["prompt"] for s in base.samples.get(k, [])]
        == [s["prompt"] for s in tuned.samples.get(k, [])]
        for k in tuned.samples
    )


def build_results(
    language: str,
    tasks: list[PreparedTask],
    skipped: dict[str, str],
    tuned: ModelRun,
    base: ModelRun | None,
    *,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task in tasks:
        t = tuned.scores[task.key]
        b = base.scores[task.key] if base is not None else None
        out[task.key] = {
            "metric": task.metric,
            "base": _round(b),
            "tuned": _round(t),
            "delta": _round(t - b) if b is not None else None,
            "n": tuned.n.get(task.key, task.n),
            "shots": task.shots,
            "source": task.source,
        }
    return {
        "language": language,
        "tasks": out,
        "skipped": dict(skipped),
        "models": {"base": base.model if base else None, "tuned": tuned.model},
        "prompts_identical": prompts_identical(base, tuned),
        "seconds": {
            "base": round(base.seconds, 3) if base else None,
            "tuned": round(tuned.seconds, 3),
        },
        "settings": settings or {},
    }


def build_base_results(
    language: str,
    tasks: list[PreparedTask],
    skipped: dict[str, str],
    base: ModelRun,
    *,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """results.json's shape for the base model alone (`kakugo evaluate --base-only`): per
    task its metric, the base score, n, shots and source; no tuned model, no delta."""
    return {
        "language": language,
        "tasks": {
            task.key: {
                "metric": task.metric,
                "base": _round(base.scores[task.key]),
                "n": base.n.get(task.key, task.n),
                "shots": task.shots,
                "source": task.source,
            }
            for task in tasks
        },
        "skipped": dict(skipped),
        "models": {"base": base.model},
        "seconds": {"base": round(base.seconds, 3)},
        "settings": settings or {},
    }


def base_table(results: dict[str, Any]) -> str:
    """The base model's scores as a plain-text table for a terminal."""
    lines = [f"{'task':<18} {'metric':<7} {'base':>6} {'n':>5}"]
    for key in TASK_KEYS:
        row = results["tasks"].get(key)
        if row is not None:
            lines.append(f"{TITLES[key]:<18} {row['metric']:<7} {row['base']:>6.1f} {row['n']:>5}")
    for key, why in (results.get("skipped") or {}).items():
        lines.append(f"{TITLES.get(key, key):<18} skipped: {why}")
    return "\n".join(lines) + "\n"


def summary_line(results: dict[str, Any]) -> str:
    """One line for the operator's status: deltas where the base ran, else tuned scores,
    e.g. ``belebele +9.9, sib200 +8.8, flores en→xx +13.1``."""
    parts = []
    tasks = results["tasks"]
    for key in SUMMARY_ORDER:
        if key not in tasks:
            continue
        row = tasks[key]
        if row["delta"] is not None:
            parts.append(f"{LABELS[key]} {row['delta']:+.1f}")
        else:
            parts.append(f"{LABELS[key]} {row['tuned']:.1f}")
    return ", ".join(parts) if parts else "no task evaluated"


def markdown_table(results: dict[str, Any]) -> str:
    def fmt(x: float | None, sign: bool = False) -> str:
        if x is None:
            return "–"
        return f"{x:+.1f}" if sign else f"{x:.1f}"

    lines = [
        "| task | metric | base | tuned | delta | n |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key in TASK_KEYS:
        row = results["tasks"].get(key)
        if row is None:
            continue
        lines.append(
            f"| {TITLES[key]} | {row['metric']} | {fmt(row['base'])} | {fmt(row['tuned'])} "
            f"| {fmt(row['delta'], sign=True)} | {row['n']} |"
        )
    shots = sorted({r["shots"] for r in results["tasks"].values()})
    notes = [
        f"{'/'.join(map(str, shots)) or 3}-shot; accuracy in %, chrF++ (sacrebleu, "
        "word_order=2) at corpus level; base and tuned on identical prompts."
    ]
    if results.get("skipped"):
        notes.append(
            "Skipped: "
            + "; ".join(f"{TITLES.get(k, k)}: {why}" for k, why in results["skipped"].items())
            + "."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _replace_between_markers(card: str, table: str) -> str:
    body = f"{START}\n{table.rstrip()}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(card):
        return pattern.sub(lambda _: body, card, count=1)
    return card.rstrip() + "\n\n## Evaluation\n\n" + body + "\n"


def update_model_card(card: str, table: str) -> str:
    """The card with its evaluation section replaced by `table`. Uses the training
    package's helper when it exists, so there is one owner of the card's layout."""
    try:
        from kakugo_stages.training.model_card import update_evaluation_section
    except ImportError:
        return _replace_between_markers(card, table)
    return update_evaluation_section(card, table)
