"""Benchmark rows: from the hub, or from a local / s3:// mirror, into local files.

Every task reads `<config>/<split>` of one dataset, in the dataset's real schema:

| task        | dataset (spec default)        | config            | shots from   | scored  |
| ----------- | ----------------------------- | ----------------- | ------------ | ------- |
| FLORES-200  | openlanguagedata/flores_plus  | yor_Latn, eng_Latn| dev          | devtest |
| SIB-200     | Davlan/sib200                 | yor_Latn          | train        | test    |
| Belebele    | facebook/belebele             | yor_Latn          | test (others)| test    |
| Global-MMLU | CohereLabs/Global-MMLU        | yo                | dev          | test    |

flores_plus has one config per language variant with rows `id, iso_639_3, iso_15924,
glottocode, text, url, domain, topic, has_image, has_hyperlink, last_updated`; the
English and target sentences of one item share `id`, and we pair them into one row with
FLORES-200's own field names, `sentence_<code>`.

A mirror (`evaluation.<task>.path`, a folder or an s3:// prefix) uses the same layout,
one file per config and split: `<path>/<config>/<split>.jsonl` (or `.json`, `.parquet`).
The tests' fixtures under `tests/fixtures/eval/` are such mirrors.

Everything ends up as JSON-lines files in a per-run work folder, which the generated
lm-eval task files name with `dataset_path: json`: lm-eval never reaches the hub.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kakugo_stages.languages import Language
from kakugo_stages.spec import EvalTask, EvaluationSpec

log = logging.getLogger("kakugo.evaluation")

#: Result keys, in report order.
TASK_KEYS: tuple[str, ...] = ("flores_en-xx", "flores_xx-en", "sib200", "belebele", "global_mmlu")
ENGLISH = "eng_Latn"
_EXTENSIONS = ("jsonl", "json", "parquet")

#: Split names per task: (shots, scored).
SPLITS: dict[str, tuple[str, str]] = {
    "flores": ("dev", "devtest"),
    "sib200": ("train", "test"),
    "belebele": ("test", "test"),
    "global_mmlu": ("dev", "test"),
}

SIB200_CATEGORIES: tuple[str, ...] = (
    "science/technology",
    "travel",
    "politics",
    "sports",
    "health",
    "entertainment",
    "geography",
)


class EvaluationError(RuntimeError):
    """Evaluation cannot go on: missing or malformed data, a failing model or harness."""


@dataclass(frozen=True)
class PreparedTask:
    """One lm-eval task ready to run: its data files are local and complete."""

    key: str  # result key, e.g. "flores_en-xx"
    task_name: str  # lm-eval task name, e.g. "kakugo_flores_en_xx"
    metric: str  # lm-eval metric name: "acc" or "chrf++"
    shots: int
    n: int  # items scored
    data_files: dict[str, str]  # split -> local JSON-lines file
    shot_split: str
    scored_split: str
    source: str  # where the rows came from (hub id or mirror path), for results.json

    @property
    def same_split_shots(self) -> bool:
        """True when the shots come from the scored split (Belebele): lm-eval then removes
        the scored item from the pool (`ContextSampler.rm_eval_doc`)."""
        return self.shot_split == self.scored_split


# --------------------------------------------------------------------------- loading


RowLoader = Callable[[EvalTask, str, str, str], list[dict[str, Any]]]


def load_rows(task: EvalTask, dataset: str, config: str, split: str) -> list[dict[str, Any]]:
    """Rows of `config`/`split`: from the task's mirror if it has one, else the hub."""
    if task.path:
        return _mirror_rows(task.path, config, split)
    return _hub_rows(dataset, config, split)


def _mirror_rows(path: str, config: str, split: str) -> list[dict[str, Any]]:
    from kakugo_stages.store import ArtifactNotFound, StoreError, open_store

    try:
        store = open_store(path)
        for ext in _EXTENSIONS:
            key = f"{config}/{split}.{ext}"
            if not store.exists(key):
                continue
            if ext == "parquet":
                return store.read_parquet(key)
            if ext == "jsonl":
                return store.read_jsonl(key)
            data = store.read_json(key)
            return list(data if isinstance(data, list) else data.get("data", []))
    except (StoreError, ArtifactNotFound) as exc:
        raise EvaluationError(f"cannot read the mirror {path}: {exc}") from exc
    raise EvaluationError(
        f"the mirror {path} has no {config}/{split}.jsonl (or .json, .parquet); a mirror holds "
        "one file per dataset config and split, in the dataset's own schema"
    )


def _hub_rows(dataset: str, config: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - the eval extra installs it
        raise EvaluationError("the `datasets` package is needed to load benchmarks") from exc
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # datasets raises many types (hub, offline, config); wrap them
        raise EvaluationError(
            f"cannot load {dataset} config {config!r} split {split!r} from the hub: "
            f"{type(exc).__name__}: {exc}. Gated datasets need HF_TOKEN; offline runs need "
            "a mirror (evaluation.<task>.path)"
        ) from exc
    return [dict(row) for row in ds]


# --------------------------------------------------------------------------- preparing


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return str(path)


def _check_fields(rows: list[dict[str, Any]], fields: tuple[str, ...], what: str) -> None:
    if not rows:
        raise EvaluationError(f"{what}: no rows")
    missing = [f for f in fields if f not in rows[0]]
    if missing:
        raise EvaluationError(
            f"{what}: rows lack {missing} (have {sorted(rows[0])}); is it the real schema?"
        )


def _check_pool(what: str, pool: int, shots: int, same_split: bool) -> None:
    # With shots from the scored split, one pool item is always the scored one itself.
    need = shots + 1 if same_split else shots
    if pool < need:
        raise EvaluationError(
            f"{what}: {shots}-shot needs {need} items to draw shots from, found {pool}"
        )


def _limit(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    # The first `limit` items: the same ones for both models, in the dataset's order.
    return rows if limit is None else rows[:limit]


def _pair_flores(en: list[dict[str, Any]], xx: list[dict[str, Any]], code: str, what: str):
    _check_fields(en, ("id", "text"), f"{what} {ENGLISH}")
    _check_fields(xx, ("id", "text"), f"{what} {code}")
    by_id = {row["id"]: row for row in en}
    paired = []
    for row in xx:
        source = by_id.get(row["id"])
        if source is None:
            continue
        paired.append(
            {
                "id": row["id"],
                "domain": row.get("domain"),
                "topic": row.get("topic"),
                f"sentence_{ENGLISH}": source["text"],
                f"sentence_{code}": row["text"],
            }
        )
    if not paired:
        raise EvaluationError(f"{what}: no sentence id is shared by {ENGLISH} and {code}")
    return paired


def prepare_tasks(
    evaluation: EvaluationSpec,
    language: Language,
    workdir: Path,
    *,
    loader: RowLoader = load_rows,
) -> tuple[list[PreparedTask], dict[str, str]]:
    """Load every enabled task the language has into `workdir/data/`; return the prepared
    tasks (task files not written yet) and the skipped ones with their reasons."""
    prepared: list[PreparedTask] = []
    skipped: dict[str, str] = {}
    data = workdir / "data"
    code = language.code

    # FLORES-200: two directions over one pairing of English and target sentences.
    flores = evaluation.flores
    flores_keys = [f"flores_{d}" for d in ("en-xx", "xx-en")]
    if not flores.enabled:
        skipped.update(dict.fromkeys(flores_keys, "disabled in the spec"))
    elif not language.flores200:
        skipped.update(dict.fromkeys(flores_keys, f"FLORES-200 has no {language.label}"))
    elif code == ENGLISH:
        skipped.update(dict.fromkeys(flores_keys, "the target language is English"))
    else:
        shot_split, scored_split = SPLITS["flores"]
        files: dict[str, str] = {}
        counts: dict[str, int] = {}
        for split in (shot_split, scored_split):
            what = f"FLORES-200 {split}"
            en = loader(flores, flores.dataset, ENGLISH, split)
            xx = loader(flores, flores.dataset, code, split)
            rows = _pair_flores(en, xx, code, what)
            if split == scored_split:
                rows = _limit(rows, flores.limit)
            else:
                _check_pool(what, len(rows), flores.shots, same_split=False)
            files[split] = _write_jsonl(data / "flores" / f"{split}.jsonl", rows)
            counts[split] = len(rows)
        for direction in ("en-xx", "xx-en"):
            key = f"flores_{direction}"
            if direction not in flores.directions:
                skipped[key] = "direction not in evaluation.flores.directions"
                continue
            prepared.append(
                PreparedTask(
                    key=key,
                    task_name=f"kakugo_flores_{direction.replace('-', '_')}",
                    metric="chrf++",
                    shots=flores.shots,
                    n=counts[scored_split],
                    data_files=files,
                    shot_split=shot_split,
                    scored_split=scored_split,
                    source=flores.path or flores.dataset,
                )
            )

    mc_tasks: tuple[tuple[str, EvalTask, str | None, str, tuple[str, ...]], ...] = (
        (
            "sib200",
            evaluation.sib200,
            code if language.sib200 else None,
            "SIB-200",
            ("index_id", "category", "text"),
        ),
        (
            "belebele",
            evaluation.belebele,
            language.belebele_config,
            "Belebele",
            (
                "flores_passage",
                "question",
                "mc_answer1",
                "mc_answer2",
                "mc_answer3",
                "mc_answer4",
                "correct_answer_num",
            ),
        ),
        (
            "global_mmlu",
            evaluation.global_mmlu,
            language.global_mmlu,
            "Global-MMLU",
            ("question", "option_a", "option_b", "option_c", "option_d", "answer"),
        ),
    )
    for key, task, config, title, fields in mc_tasks:
        if not task.enabled:
            skipped[key] = "disabled in the spec"
            continue
        if config is None:
            skipped[key] = f"{title} has no {language.label}"
            continue
        shot_split, scored_split = SPLITS[key]
        dataset: str = task.dataset  # type: ignore[attr-defined]
        scored = loader(task, dataset, config, scored_split)
        _check_fields(scored, fields, f"{title} {config}/{scored_split}")
        scored = _limit(scored, task.limit)
        if key == "sib200":
            bad = sorted({r["category"] for r in scored} - set(SIB200_CATEGORIES))
            if bad:
                raise EvaluationError(f"SIB-200 {config}: unknown categories {bad}")
        files = {scored_split: _write_jsonl(data / key / f"{scored_split}.jsonl", scored)}
        if shot_split != scored_split:
            shots = loader(task, dataset, config, shot_split)
            _check_fields(shots, fields, f"{title} {config}/{shot_split}")
            _check_pool(f"{title} {shot_split}", len(shots), task.shots, same_split=False)
            files[shot_split] = _write_jsonl(data / key / f"{shot_split}.jsonl", shots)
        else:
            _check_pool(f"{title} {scored_split}", len(scored), task.shots, same_split=True)
        prepared.append(
            PreparedTask(
                key=key,
                task_name=f"kakugo_{key}",
                metric="acc",
                shots=task.shots,
                n=len(scored),
                data_files=files,
                shot_split=shot_split,
                scored_split=scored_split,
                source=task.path or dataset,
            )
        )
    order = {k: i for i, k in enumerate(TASK_KEYS)}
    prepared.sort(key=lambda t: order[t.key])
    return prepared, {k: skipped[k] for k in sorted(skipped, key=order.__getitem__)}
