"""The evaluate stage: lm-eval task files, shots, scoring, results, model card.

Data: the fixtures under tests/fixtures/eval/ (real dataset schemas, our own sentences).
Models: scripted lm-eval models that must answer right (100) or wrong (0), a tiny random
Granite through the real `hf` backend, and SmolLM2-135M-Instruct (scripts/setup_smollm2.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from lm_eval.api.model import LM

from kakugo_stages.evaluation import EvaluationError, evaluate_model, prepare_tasks
from kakugo_stages.evaluation.report import TITLES
from kakugo_stages.evaluation.taskfiles import write_task_files
from kakugo_stages.languages import resolve
from kakugo_stages.manifest import parse_object
from kakugo_stages.resolved import RunSpec, run_spec
from kakugo_stages.spec import EvaluationSpec
from kakugo_stages.stages import StageFailed, get_stage, run_stage
from kakugo_stages.store import StageOutput, open_store
from tests.helpers.smollm2 import setup_smollm2

pytestmark = pytest.mark.slow  # lm-eval over real (tiny) models: not in `make unit`

REPO = Path(__file__).resolve().parent.parent
EVAL = Path(__file__).parent / "fixtures" / "eval"

CARD = """# yo-test

A tuned model.

## Evaluation

<!-- kakugo:evaluation -->
Not evaluated yet.
<!-- /kakugo:evaluation -->

## License
"""
ALL_KEYS = ("flores_en-xx", "flores_xx-en", "sib200", "belebele", "global_mmlu")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "device": "cpu",
        "batchSize": 4,
        "flores": {"path": str(EVAL / "flores_plus"), "maxNewTokens": 24},
        "sib200": {"path": str(EVAL / "sib200")},
        "belebele": {"path": str(EVAL / "belebele")},
        "globalMmlu": {"path": str(EVAL / "global_mmlu")},
    }
    for key, value in overrides.items():
        body[key] = {**body[key], **value} if isinstance(value, dict) else value
    return body


def make_run(
    storage: Path, language: str = "Yoruba", student: str = "base-model", **evaluation: Any
) -> RunSpec:
    body = {
        "language": language,
        "teacher": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "unused"}},
        "student": {"model": student},
        "storage": {"uri": str(storage)},
        "evaluation": eval_body(**evaluation),
    }
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "yo-test", "namespace": "tests"},
        "spec": body,
    }
    return run_spec(parse_object(obj))


def mark_trained(run: RunSpec) -> None:
    """What a finished train stage leaves besides model/: its completion markers."""
    store = open_store(run.run_uri)
    train = get_stage("train")(run, store)
    for shard in range(train.num_shards()):
        StageOutput(store, "train").mark_complete(shard)


def put_tuned_model(run: RunSpec, card: bool = True) -> None:
    store = open_store(run.run_uri)
    store.write_json("model/config.json", {"model_type": "llama"})
    if card:
        store.write_text("model/README.md", CARD)
    mark_trained(run)


# --------------------------------------------------------------------------- scripted models


def gold(req) -> str:
    """The right continuation, read from the scored document itself."""
    doc, task = req.doc, req.task_name
    if task == "kakugo_sib200":
        return doc["category"]
    if task == "kakugo_belebele":
        return "ABCD"[int(doc["correct_answer_num"]) - 1]
    if task == "kakugo_global_mmlu":
        return doc["answer"]
    if task == "kakugo_flores_en_xx":
        return doc["sentence_yor_Latn"]
    if task == "kakugo_flores_xx_en":
        return doc["sentence_eng_Latn"]
    raise AssertionError(f"unexpected task {task}")


class ScriptedLM(LM):
    """Log-likelihood and generation scripted from the gold answers: `right=True` always
    picks the gold choice and writes the reference; `right=False` never does."""

    def __init__(self, right: bool) -> None:
        super().__init__()
        self.right = right
        self.contexts: list[tuple[str, str]] = []

    def loglikelihood(self, requests):
        out = []
        for req in requests:
            context, continuation = req.args
            self.contexts.append((req.task_name, context))
            is_gold = continuation.strip() == gold(req)
            good = is_gold == self.right
            out.append((0.0 if good else -10.0, good))
        return out

    def loglikelihood_rolling(self, requests):  # pragma: no cover - no task uses it
        raise NotImplementedError

    def generate_until(self, requests):
        out = []
        for req in requests:
            self.contexts.append((req.task_name, req.args[0]))
            out.append(gold(req) if self.right else "")
        return out


def scripted_stage(right_tuned: bool, right_base: bool):
    base_cls = get_stage("evaluate")

    class Scripted(base_cls):  # type: ignore[valid-type, misc]
        models: dict[str, ScriptedLM] = {}  # noqa: RUF012 - per-class record for asserts

        def lm_for(self, role, pretrained):
            lm = ScriptedLM(right_tuned if role == "tuned" else right_base)
            type(self).models[role] = lm
            return lm, None

    return Scripted


# --------------------------------------------------------------------------- data + files


def test_prepare_reads_fixture_mirrors_and_writes_task_files(tmp_path: Path) -> None:
    evaluation = EvaluationSpec.model_validate(eval_body())
    tasks, skipped = prepare_tasks(evaluation, resolve("Yoruba"), tmp_path)
    assert [t.key for t in tasks] == list(ALL_KEYS) and skipped == {}
    by_key = {t.key: t for t in tasks}
    assert by_key["flores_en-xx"].n == 12 and by_key["sib200"].n == 14
    assert by_key["belebele"].n == 12 and by_key["global_mmlu"].n == 12
    # Shots from another split everywhere but Belebele, which has only test.
    assert {k: (t.shot_split, t.scored_split) for k, t in by_key.items()} == {
        "flores_en-xx": ("dev", "devtest"),
        "flores_xx-en": ("dev", "devtest"),
        "sib200": ("train", "test"),
        "belebele": ("test", "test"),
        "global_mmlu": ("dev", "test"),
    }
    paired = read_jsonl(Path(by_key["flores_en-xx"].data_files["devtest"]))
    assert paired[0]["sentence_eng_Latn"] == "The new phone has a large screen."
    assert paired[0]["sentence_yor_Latn"].startswith("Fóònù tuntun")
    files = write_task_files(
        tasks, resolve("Yoruba"), tmp_path / "tasks", max_new_tokens=16, repetition_penalty=1.05
    )
    import yaml

    flores = yaml.safe_load(files["flores_en-xx"].read_text())
    assert flores["dataset_path"] == "json" and flores["num_fewshot"] == 3
    assert flores["generation_kwargs"]["repetition_penalty"] == 1.05
    assert flores["metric_list"][0]["metric"] == "chrf++"
    belebele = yaml.safe_load(files["belebele"].read_text())
    assert belebele["include"].endswith("belebele/_default_template_yaml")
    mmlu = yaml.safe_load(files["global_mmlu"].read_text())
    assert mmlu["include"].endswith("global_mmlu/full/yo/_yo_template_yaml")


def test_missing_and_disabled_tasks_are_listed_as_skipped(tmp_path: Path) -> None:
    # A language that Belebele and SIB-200 cover but Global-MMLU does not.
    lang = resolve("zul_Latn")
    assert lang.global_mmlu is None and lang.belebele
    evaluation = EvaluationSpec.model_validate(eval_body(sib200={"enabled": False}))
    calls: list[tuple[str, str]] = []

    def loader(task, dataset, config, split):
        calls.append((config, split))
        raise EvaluationError("no data in this test")

    with pytest.raises(EvaluationError):
        prepare_tasks(evaluation, lang, tmp_path, loader=loader)
    evaluation = EvaluationSpec.model_validate(
        eval_body(sib200={"enabled": False}, belebele={"enabled": False}, flores={"enabled": False})
    )
    tasks, skipped = prepare_tasks(evaluation, lang, tmp_path, loader=loader)
    assert tasks == []
    assert skipped["global_mmlu"] == "Global-MMLU has no Zulu (zul_Latn)"
    assert skipped["sib200"] == "disabled in the spec"
    assert set(skipped) == set(ALL_KEYS)


def test_too_few_items_for_the_shots_is_a_clear_error(tmp_path: Path) -> None:
    evaluation = EvaluationSpec.model_validate(eval_body(belebele={"limit": 3}))
    with pytest.raises(EvaluationError, match=r"Belebele test: 3-shot needs 4 items"):
        prepare_tasks(evaluation, resolve("Yoruba"), tmp_path)


def test_mirror_without_the_language_is_a_clear_error(tmp_path: Path) -> None:
    evaluation = EvaluationSpec.model_validate(eval_body())
    with pytest.raises(EvaluationError, match=r"has no hau_Latn/dev.jsonl"):
        prepare_tasks(evaluation, resolve("Hausa"), tmp_path)


# --------------------------------------------------------------------------- scoring wired


def _count_shots(task: str, prompt: str) -> int:
    cue = {
        "kakugo_sib200": "\nTopic:",
        "kakugo_belebele": "\nAnswer:",
        "kakugo_global_mmlu": "\nAnswer:",
        "kakugo_flores_en_xx": "\nYoruba:",
        "kakugo_flores_xx_en": "\nEnglish:",
    }[task]
    return prompt.count(cue) - 1  # the scored item ends with the cue too


def _item_text(task: str, doc: dict[str, Any]) -> str:
    return {
        "kakugo_sib200": doc.get("text"),
        "kakugo_belebele": doc.get("question"),
        "kakugo_global_mmlu": doc.get("question"),
        "kakugo_flores_en_xx": doc.get("sentence_eng_Latn"),
        "kakugo_flores_xx_en": doc.get("sentence_yor_Latn"),
    }[task]


def test_right_model_scores_100_wrong_model_0_and_results_are_written(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    put_tuned_model(run)
    stage_cls = scripted_stage(right_tuned=True, right_base=False)
    store = open_store(run.run_uri)
    summary = run_stage(stage_cls(run, store))
    assert summary.completed == [0]
    results = store.read_json("evaluation/results.json")
    assert results["language"] == "yor_Latn" and results["skipped"] == {}
    assert results["prompts_identical"] is True
    for key in ALL_KEYS:
        row = results["tasks"][key]
        assert row["tuned"] == 100.0, (key, row)
        assert row["shots"] == 3
        if row["metric"] == "acc":
            assert row["base"] == 0.0, (key, row)
        else:
            assert row["metric"] == "chrf++" and row["base"] == 0.0
        assert row["delta"] == round(row["tuned"] - row["base"], 2)
    assert results["tasks"]["sib200"]["n"] == 14 and results["tasks"]["belebele"]["n"] == 12
    # Per-item logs for both models; the operator's summary line; the model card table.
    samples = store.read_jsonl("evaluation/samples/tuned/belebele.jsonl")
    assert len(samples) == 12 and all(s["acc"] == 1.0 for s in samples)
    stats = store.read_json("evaluate/_stats/00000.json")
    assert stats["summary"].startswith("belebele +100.0, sib200 +100.0, flores en→xx +100.0")
    card = store.read_text("model/README.md")
    assert "| Belebele | acc | 0.0 | 100.0 | +100.0 | 12 |" in card
    assert "Not evaluated yet." not in card and card.endswith("## License\n")
    assert card.count("<!-- kakugo:evaluation -->") == 1


def test_every_task_is_3_shot_and_never_shows_the_scored_item(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    put_tuned_model(run, card=False)
    stage_cls = scripted_stage(right_tuned=True, right_base=True)
    store = open_store(run.run_uri)
    run_stage(stage_cls(run, store))
    lm = stage_cls.models["tuned"]
    seen_tasks = set()
    # Every request the model got: exactly 3 shots, and the scored item's own text once
    # (a shot that was the scored item would show it twice).
    for task, prompt in lm.contexts:
        seen_tasks.add(task)
        assert _count_shots(task, prompt) == 3, (task, prompt)
    assert seen_tasks == {
        "kakugo_sib200",
        "kakugo_belebele",
        "kakugo_global_mmlu",
        "kakugo_flores_en_xx",
        "kakugo_flores_xx_en",
    }
    for key, fixture, field in (
        ("belebele", EVAL / "belebele/yor_Latn/test.jsonl", "question"),
        ("sib200", EVAL / "sib200/yor_Latn/test.jsonl", "text"),
        ("global_mmlu", EVAL / "global_mmlu/yo/test.jsonl", "question"),
        ("flores_en-xx", EVAL / "flores_plus/eng_Latn/devtest.jsonl", "text"),
    ):
        items = read_jsonl(fixture)
        samples = store.read_jsonl(f"evaluation/samples/tuned/{key}.jsonl")
        assert len(samples) == len(items)
        for sample in samples:
            item = items[sample["doc_id"]]
            assert sample["prompt"].count(item[field]) == 1, (key, sample["doc_id"])
    # Belebele's shots come from its only split: the first items are in every other
    # item's shots, so they are the ones the exclusion has to work for.
    first = read_jsonl(EVAL / "belebele/yor_Latn/test.jsonl")[0]
    bel = store.read_jsonl("evaluation/samples/tuned/belebele.jsonl")
    assert sum(first["question"] in s["prompt"] for s in bel) == len(bel)


def test_compare_base_false_scores_only_the_tuned_model(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        compareBase=False,
        logSamples=False,
        flores={"directions": ["xx-en"]},
        globalMmlu={"enabled": False},
    )
    put_tuned_model(run)
    stage_cls = scripted_stage(right_tuned=True, right_base=True)
    store = open_store(run.run_uri)
    run_stage(stage_cls(run, store))
    assert set(stage_cls.models) == {"tuned"}
    results = store.read_json("evaluation/results.json")
    assert results["tasks"]["sib200"]["base"] is None
    assert results["tasks"]["sib200"]["delta"] is None
    assert results["skipped"] == {
        "flores_en-xx": "direction not in evaluation.flores.directions",
        "global_mmlu": "disabled in the spec",
    }
    assert not store.list("evaluation/samples/")
    assert "| SIB-200 | acc | – | 100.0 | – | 14 |" in store.read_text("model/README.md")


def test_missing_model_fails_with_a_clear_message(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    stage = scripted_stage(True, True)(run, open_store(run.run_uri))
    with pytest.raises(StageFailed, match=r"needs stage train to be complete"):
        run_stage(stage)
    mark_trained(run)  # train marked done, but its model folder is gone
    stage = scripted_stage(True, True)(run, open_store(run.run_uri))
    with pytest.raises(StageFailed, match=r"no trained model at .*model .*kakugo stage train"):
        run_stage(stage)


# --------------------------------------------------------------------------- real models


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch):
    """One torch thread for the real-model tests: on a busy 2-core machine, two OpenMP
    threads that spin-wait for each other made SmolLM2's generation 25x slower (130 s
    instead of 5 s per batch). The env var reaches spawned processes too."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The tiny random Granite-4 layout the other stage tests use.
    from tests.helpers.tiny_models import build_model, build_tokenizer

    tok = build_tokenizer(tmp_path_factory.mktemp("tok"))
    return build_model(tmp_path_factory.mktemp("tiny-granite"), tok)


@pytest.mark.usefixtures("one_thread")
def test_hf_backend_runs_every_task_with_a_tiny_model(tmp_path: Path, tiny_model: Path) -> None:
    # The real path: lm-eval's `hf` model on CPU, base and tuned both the tiny model.
    run = make_run(
        tmp_path,
        student=str(tiny_model),
        flores={"limit": 4, "maxNewTokens": 6},
        sib200={"limit": 6},
        belebele={"limit": 6},
        globalMmlu={"limit": 6},
    )
    store = open_store(run.run_uri)
    store.upload_dir(tiny_model, "model")
    store.write_text("model/README.md", CARD)
    mark_trained(run)
    run_stage(get_stage("evaluate")(run, store))
    results = store.read_json("evaluation/results.json")
    assert results["prompts_identical"] is True
    for key in ALL_KEYS:
        row = results["tasks"][key]
        assert 0.0 <= row["base"] <= 100.0 and 0.0 <= row["tuned"] <= 100.0, (key, row)
        # The same weights on the same prompts: the same scores.
        assert row["base"] == row["tuned"] and row["delta"] == 0.0
    assert results["tasks"]["flores_en-xx"]["n"] == 4 and results["tasks"]["sib200"]["n"] == 6
    assert results["settings"]["device"] == "cpu"


@pytest.mark.usefixtures("one_thread")
def test_a_model_can_run_in_its_own_process(tmp_path: Path, tiny_model: Path) -> None:
    # How the stage runs vLLM (GPU memory is only freed when the process ends); the
    # plumbing is the same for `hf`, which is what a CPU can check.
    evaluation = EvaluationSpec.model_validate(
        eval_body(
            flores={"enabled": False},
            belebele={"enabled": False},
            globalMmlu={"enabled": False},
            sib200={"limit": 4},
        )
    )
    tasks, _ = prepare_tasks(evaluation, resolve("Yoruba"), tmp_path)
    write_task_files(
        tasks, resolve("Yoruba"), tmp_path / "tasks", max_new_tokens=4, repetition_penalty=1.05
    )
    args = {"pretrained": str(tiny_model), "dtype": "float32"}
    inline = evaluate_model("hf", args, tasks, tmp_path / "tasks", label="t", device="cpu")
    spawned = evaluate_model(
        "hf", args, tasks, tmp_path / "tasks", label="t", device="cpu", isolate=True
    )
    assert spawned.scores == inline.scores and spawned.n == {"sib200": 4}
    assert [s["prompt"] for s in spawned.samples["sib200"]] == [
        s["prompt"] for s in inline.samples["sib200"]
    ]


def smollm2_dir() -> Path:
    folder = setup_smollm2.model_dir()
    if not setup_smollm2.is_complete(folder):
        pytest.skip(
            f"SmolLM2-135M-Instruct not set up at {folder}: run "
            "`.venv/bin/python scripts/setup_smollm2.py` first"
        )
    return folder


@pytest.mark.usefixtures("one_thread")
def test_smollm2_translates_the_flores_fixture(tmp_path: Path) -> None:
    """A real small instruct model gets a non-trivial chrF++. SmolLM2-135M knows no
    Yoruba, so this uses the fixture's French sentences, French→English (one direction
    and four sentences keep it fast on two cores; it scored ~59, and ~28 English→French)."""
    import sacrebleu

    model = smollm2_dir()
    evaluation = EvaluationSpec.model_validate(
        eval_body(
            flores={"limit": 4, "maxNewTokens": 24, "directions": ["xx-en"]},
            sib200={"enabled": False},
            belebele={"enabled": False},
            globalMmlu={"enabled": False},
        )
    )
    tasks, _ = prepare_tasks(evaluation, resolve("French"), tmp_path)
    write_task_files(
        tasks, resolve("French"), tmp_path / "tasks", max_new_tokens=24, repetition_penalty=1.05
    )
    out = evaluate_model(
        "hf",
        {"pretrained": str(model), "dtype": "float32"},
        tasks,
        tmp_path / "tasks",
        label="smollm2",
        device="cpu",
        batch_size=4,
    )
    xx_en = out.scores["flores_xx-en"]
    assert out.n["flores_xx-en"] == 4
    assert xx_en > 10.0, out.samples["flores_xx-en"]
    assert set(out.scores) == {"flores_xx-en"}
    # lm-eval's chrf++ is sacrebleu's corpus chrF++ (word_order=2) over the same answers.
    samples = out.samples["flores_xx-en"]
    ours = (
        sacrebleu.CHRF(word_order=2)
        .corpus_score([s["answer"] for s in samples], [[s["target"] for s in samples]])
        .score
    )
    assert ours == pytest.approx(xx_en, abs=1e-6)


# --------------------------------------------------------------------------- base only


def write_manifest(path: Path, run: RunSpec) -> Path:
    manifest = {k: v for k, v in run.to_manifest().items() if k != "resolved"}
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.usefixtures("one_thread")
def test_base_only_scores_the_base_model_before_anything_ran(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `kakugo evaluate --base-only FILE`: the stage's path with the base model alone, on
    # the real `hf` backend; no model/ and no train stage exist, and nothing is stored.
    from click.testing import CliRunner

    from kakugo_stages.cli import main

    storage = tmp_path / "storage"
    run = make_run(
        storage,
        student=str(tiny_model),
        flores={"limit": 4, "maxNewTokens": 6},
        sib200={"limit": 6},
        belebele={"limit": 6},
        globalMmlu={"enabled": False},
    )
    manifest = write_manifest(tmp_path / "yo.yaml", run)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["evaluate", "--base-only", str(manifest)])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "yo-test-base-evaluation.json").read_text(encoding="utf-8"))
    assert scores["language"] == "yor_Latn"
    assert set(scores["tasks"]) == {"flores_en-xx", "flores_xx-en", "sib200", "belebele"}
    assert scores["skipped"] == {"global_mmlu": "disabled in the spec"}
    assert scores["models"] == {"base": str(tiny_model)}
    for key, row in scores["tasks"].items():
        assert 0.0 <= row["base"] <= 100.0 and "tuned" not in row, (key, row)
        # Printed as a table, one row per task with its score and n.
        line = next(x for x in result.output.splitlines() if x.startswith(TITLES[key]))
        assert line.split()[-2:] == [f"{row['base']:.1f}", str(row["n"])]
    assert scores["tasks"]["flores_en-xx"]["n"] == 4 and scores["tasks"]["sib200"]["n"] == 6
    assert "Global-MMLU" in result.output and "skipped: disabled in the spec" in result.output
    assert not storage.exists()  # nothing paid for, nothing written to the run's storage

    # The same scores as the evaluate stage gives the base model (same code path).
    store = open_store(run.run_uri)
    store.upload_dir(tiny_model, "model")
    mark_trained(run)
    run_stage(get_stage("evaluate")(run, store))
    staged = store.read_json("evaluation/results.json")
    assert {k: r["base"] for k, r in staged["tasks"].items()} == {
        k: r["base"] for k, r in scores["tasks"].items()
    }


def test_evaluate_without_base_only_points_at_the_stage(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kakugo_stages.cli import main

    manifest = write_manifest(tmp_path / "yo.yaml", make_run(tmp_path / "s"))
    result = CliRunner().invoke(main, ["evaluate", str(manifest)])
    assert result.exit_code == 1
    assert "kakugo stage evaluate" in result.output


def test_base_only_with_a_missing_mirror_fails_naming_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kakugo_stages.cli import main

    run = make_run(tmp_path / "s", sib200={"path": str(tmp_path / "nowhere")})
    manifest = write_manifest(tmp_path / "yo.yaml", run)
    result = CliRunner().invoke(main, ["evaluate", "--base-only", str(manifest)])
    assert result.exit_code == 1
    assert "error: stage evaluate:" in result.output and "nowhere" in result.output
