"""The recipe as the authors' scripts have it: what each stage sends the teacher, the
counts, and the table of docs/recipe.md held to the spec defaults. Several tests here
would fail if a mistake of the released scripts came back: a stage sending another
stage's token limit (a shared, mutated config), an answer matched to the wrong request
(batch results matched by position), a sample drawn from the start of a stream only."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kakugo_stages import prompts
from kakugo_stages.resolved import RunSpec
from kakugo_stages.sources import reservoir, sample_records
from kakugo_stages.spec import LanguageModelSpec
from kakugo_stages.stages import get_stage, run_stage
from kakugo_stages.stages.contexts import deal_tasks
from kakugo_stages.store import StageOutput, open_store
from tests.helpers.teacher_scripts import digest, scripted_teacher, stage_of
from tests.helpers.teacher_server import TeacherServer
from tests.helpers.tiny_models import build_tokenizer
from tests.test_generation_stages import FIXTURES, fast_teacher, small_spec

REPO = Path(__file__).resolve().parent.parent
TEACHER_STAGES = ("topics", "scenarios", "contexts", "revise", "respond", "translate")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def respec(run: RunSpec, **sections: dict[str, Any]) -> RunSpec:
    """`run` with spec sections merged in (`data={"topics": {...}}`, `teacher={...}`)."""
    body = run.spec.model_dump(by_alias=True, exclude_none=True)

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(body, sections)
    return RunSpec(run.name, run.namespace, type(run.spec).model_validate(body), run.storage_root)


def full_spec(url: str, tmp: Path, tok: Path, **sections: dict[str, Any]) -> RunSpec:
    """The small spec of the stage tests, with translation and topic-prompt ranges on."""
    run = small_spec(url, tmp, tok)
    base = {
        "data": {
            "topics": {"minPromptsPerTopic": 1, "maxPromptsPerTopic": 3},
            "translate": {
                "source": {"path": str(FIXTURES / "infinity_instruct_7M_core.jsonl")},
                "samples": 8,
                "maxSourceTokens": 400,
                "shards": 2,
            },
        }
    }
    return respec(respec(run, **base), **sections)


def run_teacher_stages(run: RunSpec) -> dict[str, Any]:
    store = open_store(run.run_uri)
    return {
        name: run_stage(get_stage(name)(run, store), teacher_factory=fast_teacher)
        for name in TEACHER_STAGES
    }


def rows(run: RunSpec, stage: str) -> list[dict[str, Any]]:
    return list(StageOutput(open_store(run.run_uri), stage).iter_all_rows())


def flat(text: str) -> str:
    """Text with its line ends and runs of spaces as single spaces."""
    return " ".join(text.split())


def h(messages: list[dict[str, str]]) -> str:
    """The scripted teacher's digest of a request with these messages."""
    return digest({"messages": messages})


# --------------------------------------------------------------------------- token limits


def test_each_stage_sends_its_own_token_limit(tmp_path: Path, tokenizer_dir: Path) -> None:
    """Every request body carries the max_tokens of the stage that sent it: the recipe's
    2,048 for prompt generation and 4,096 for responses and translations, and, when each
    stage has a limit of its own, that one. (The released scripts let the translation step
    overwrite the limit in a shared config, which every later request then inherited.)"""
    own = {
        "topics": 2001,
        "scenarios": 2002,
        "contexts": 2003,
        "revise": 2004,
        "respond": 4001,
        "translate": 4002,
    }
    with TeacherServer(scripted_teacher) as srv:
        run_teacher_stages(full_spec(srv.url, tmp_path / "recipe", tokenizer_dir))
        recipe = [(stage_of(b), b["max_tokens"]) for b in srv.requests]
        srv.reset()
        limits = {"data": {s: {"maxTokens": n} for s, n in own.items()}}
        run_teacher_stages(full_spec(srv.url, tmp_path / "own", tokenizer_dir, **limits))
        distinct = [(stage_of(b), b["max_tokens"]) for b in srv.requests]
    expected = {s: 4096 if s in ("respond", "translate") else 2048 for s in TEACHER_STAGES}
    for sent, limits_of in ((recipe, expected), (distinct, own)):
        by_stage: dict[str, set[int]] = {}
        for stage, limit in sent:
            by_stage.setdefault(stage, set()).add(limit)
        assert by_stage == {s: {n} for s, n in limits_of.items()}


# --------------------------------------------------------------------------- answers


def test_every_kept_answer_belongs_to_its_own_request(tmp_path: Path, tokenizer_dir) -> None:
    """The scripted teacher answers with a digest of the request: every kept row carries
    the digest of the request rebuilt from that row, so no answer was given to another
    row (the released scripts matched batch results to requests by position)."""
    with TeacherServer(scripted_teacher, latency=0.005) as srv:
        run = full_spec(srv.url, tmp_path, tokenizer_dir)
        run_teacher_stages(run)
    lang, cfg = run.language.name, run.spec.data
    topics = rows(run, "topics")
    assert topics
    for r in topics:
        asked = prompts.topic_prompts(
            r["topic"], cfg.topics.min_prompts_per_topic, cfg.topics.max_prompts_per_topic, lang
        )
        assert r["prompt"].startswith(f"prompts {h(asked)} "), r
    for r in rows(run, "scenarios"):
        asked = prompts.scenario_prompts(r["scenario"], cfg.scenarios.prompts_per_scenario, lang)
        assert r["prompt"].startswith(f"prompts {h(asked)} "), r
    for r in rows(run, "contexts"):
        asked = prompts.context_prompts(
            r["document"], r["task"], cfg.contexts.prompts_per_document, lang
        )
        assert r["prompt"].startswith(f"prompts {h(asked)} "), r
    revised = rows(run, "revise")
    assert any(r["revised"] for r in revised)
    for r in revised:
        if r["revised"]:
            asked = prompts.revise_prompt(r["original_prompt"], lang, r.get("document"))
            assert r["prompt"] == f"Ìbéèrè tí a tún kọ {h(asked)}", r
    responded = rows(run, "respond")
    assert len(responded) == len(revised)
    for r in responded:
        asked = prompts.response_messages(r["prompt"], lang, document=r.get("document"))
        assert r["user"] == asked[-1]["content"]
        assert f" {h(asked)}:" in r["response"] and f"({h(asked)})" in r["reasoning"], r
    translated = rows(run, "translate")
    assert translated
    for r in translated:
        code = h(prompts.translate_conversation(r["original"], lang))
        assert [m["content"] for m in r["messages"]] == [
            f"(yo {code}) {m['content']}" for m in r["original"]
        ], r


# --------------------------------------------------------------------------- prompts


def test_requests_carry_the_recipe_instructions(tmp_path: Path, tokenizer_dir: Path) -> None:
    """What the teacher receives, stage by stage: the prompt writer's system prompt with
    every prompt-writing request; 1 to 3 prompts per topic at the teacher's choice; the
    most popular broad scenarios; general detailed scenarios that never name the language;
    a reviser free to apply any change, shown the document of a context prompt; the
    response system prompt."""
    with TeacherServer(scripted_teacher) as srv:
        run = full_spec(srv.url, tmp_path, tokenizer_dir)
        run_teacher_stages(run)
        bodies = list(srv.requests)
    lang = run.language.name  # Yoruba
    writer = flat(prompts.PROMPT_WRITER_SYSTEM.replace("{language}", lang))
    # Every request is a system prompt and a user message; texts compared without line ends.
    assert {tuple(m["role"] for m in b["messages"]) for b in bodies} == {("system", "user")}
    assert all("reasoning_effort" not in b for b in bodies)  # unset: the server decides
    by_stage: dict[str, list[list[dict[str, str]]]] = {}
    for body in bodies:
        by_stage.setdefault(stage_of(body), []).append(
            [{**m, "content": flat(m["content"])} for m in body["messages"]]
        )
    systems = {s: Counter(msgs[0]["content"] for msgs in v) for s, v in by_stage.items()}
    # The prompt writer's system prompt goes with exactly the requests that write prompts.
    writes = [msgs for s in ("topics", "scenarios", "contexts") for msgs in by_stage[s]]
    asks_prompts = ['single key "prompts"' in m[1]["content"] for m in writes]
    assert any(asks_prompts)
    assert asks_prompts == [m[0]["content"] == writer for m in writes]
    assert "casual" in writer and "colloquial" in writer
    assert "never address the assistant" in writer
    # Topics: a range, the teacher choosing; the language-specific branch says so.
    topic_asks = [m[1]["content"] for m in by_stage["topics"] if m[0]["content"] == writer]
    assert topic_asks and all("Write from 1 up to 3 prompts" in t for t in topic_asks)
    lists = [m[1]["content"] for m in by_stage["topics"] if m[0]["content"] != writer]
    assert {"matter to people who speak Yoruba" in t for t in lists} == {True, False}
    # Scenarios: the most popular uses; the general branch's detailed ones are language-free.
    scen = [m[1]["content"] for m in by_stage["scenarios"] if m[0]["content"] != writer]
    broad = [t for t in scen if "most popular scenarios" in t]
    assert len(broad) == 2 and sum(lang in t for t in broad) == 1
    detailed = [t for t in scen if "for this task" in t]
    general = [t for t in detailed if lang not in t]
    assert general and len(general) < len(detailed)
    assert all("concise rather than detailed" in t for t in detailed)
    # Revision: any of five changes; a context prompt's reviser sees its document.
    revise = by_stage["revise"]
    assert all("alone or combined" in m[0]["content"] for m in revise)
    with_doc = [m for m in revise if "Context text:" in m[1]["content"]]
    assert with_doc and all("still refer to the text" in m[0]["content"] for m in with_doc)
    documents = {flat(r["document"]) for r in rows(run, "contexts")}
    assert all(any(d in m[1]["content"] for d in documents) for m in with_doc)
    # Responses: the recipe's response system prompt, with the language.
    (respond_system,) = systems["respond"]
    assert respond_system == flat(prompts.RESPONSE_SYSTEM_PROMPT.replace("{language}", lang))
    for phrase in (
        "follow the user's instructions correctly and completely",
        "unless the user asks",
        "as little formatting",
        "simple and conversational",
        "as short as it can be",
    ):
        assert phrase in respond_system
    assert "educated" not in respond_system


def test_topic_prompt_counts_are_the_teachers_choice(tmp_path: Path, tokenizer_dir) -> None:
    """One request per subject, for 1 to 3 prompts: the kept counts vary with the answers
    (the scripted teacher picks from the range by the request's digest), and no subject is
    asked twice."""
    with TeacherServer(scripted_teacher) as srv:
        run = full_spec(srv.url, tmp_path, tokenizer_dir)
        run_stage(get_stage("topics")(run, open_store(run.run_uri)), teacher_factory=fast_teacher)
        asks = [b for b in srv.requests if "Write from 1 up to 3" in b["messages"][-1]["content"]]
    per_topic = Counter(r["topic"] for r in rows(run, "topics"))
    assert len(asks) == len(per_topic) == 30
    assert set(per_topic.values()) == {1, 2, 3}


def test_reasoning_effort_is_sent_and_keys_the_cache(tmp_path: Path, tokenizer_dir) -> None:
    with TeacherServer(scripted_teacher) as srv:
        run = full_spec(srv.url, tmp_path, tokenizer_dir, teacher={"reasoningEffort": "high"})
        stage = get_stage("contexts")(run, open_store(run.run_uri))
        run_stage(stage, teacher_factory=fast_teacher)
        assert srv.requests and all(b["reasoning_effort"] == "high" for b in srv.requests)
        sent = srv.count
        # Another effort is another request: nothing is replayed from the cache.
        low = respec(run, teacher={"reasoningEffort": "low"})
        run_stage(
            get_stage("contexts")(low, open_store(low.run_uri)),
            teacher_factory=fast_teacher,
            reset=True,
        )
        assert srv.count == 2 * sent
        assert {b["reasoning_effort"] for b in srv.requests[sent:]} == {"low"}
    with pytest.raises(ValueError, match="reasoningEffort"):
        respec(run, teacher={"reasoningEffort": "extreme"})


# --------------------------------------------------------------------------- contexts


def test_context_prompts_are_capped_in_all(tmp_path: Path, tokenizer_dir: Path) -> None:
    """A small corpus keeps every prompt of every document, up to maxPrompts in all (the
    authors cap context prompts at 10,000, the same number as their documents)."""
    with TeacherServer(scripted_teacher) as srv:
        run = full_spec(srv.url, tmp_path, tokenizer_dir)
        run = respec(run, data={"contexts": {"keepOneAbove": 100, "maxPrompts": 7}})
        summary = run_stage(
            get_stage("contexts")(run, open_store(run.run_uri)), teacher_factory=fast_teacher
        ).as_dict()
    kept = rows(run, "contexts")
    assert summary["requests"] == 5 and len(kept) == 7
    stats = StageOutput(open_store(run.run_uri), "contexts").all_stats().values()
    assert sum(s["dropped"].get("over_max_prompts", 0) for s in stats) == 5 * 3 - 7
    assert len({r["document"] for r in kept}) > 1


def test_tasks_are_dealt_in_turn() -> None:
    weights = {
        "translate": 1,
        "summarize": 1,
        "improve": 1,
        "classify": 1,
        "question_answering": 4,
    }
    dealt = deal_tasks(weights, 80)
    for start in range(0, 80, 8):  # every 8 documents: each task once, QA four times
        assert Counter(dealt[start : start + 8]) == {
            "translate": 1,
            "summarize": 1,
            "improve": 1,
            "classify": 1,
            "question_answering": 4,
        }
    assert Counter(deal_tasks({**weights, "question_answering": 0, "classify": 2.5}, 11)) == {
        "translate": 2,
        "summarize": 2,
        "improve": 2,
        "classify": 5,
    }


def test_reservoir_sample_is_uniform() -> None:
    """Each of 100 records lands in a sample of 10 about equally often (seeded)."""
    hits: Counter[int] = Counter()
    for seed in range(2000):
        sample, seen = reservoir(({"i": i} for i in range(100)), 10, random.Random(seed))
        assert seen == 100 and len({r["i"] for r in sample}) == 10
        hits.update(r["i"] for r in sample)
    # Expected 200 each (binomial sd ~13): the first and last tenth as likely as the middle.
    assert all(140 < hits[i] < 260 for i in range(100)), hits
    few, seen = reservoir(({"i": i} for i in range(3)), 10, random.Random(0))
    assert seen == 3 and sorted(r["i"] for r in few) == [0, 1, 2]


def hub_dataset(root: Path, config: str, files: int, rows: int) -> Path:
    """A local dataset in the hub's layout (FineWeb-2's: data/<config>/train/*.parquet,
    configs declared in the card), which `datasets` streams as it streams the hub."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "data" / config / "train"
    folder.mkdir(parents=True)
    for f in range(files):
        ids = range(f * rows, (f + 1) * rows)
        table = pa.table(
            {"text": [f"Ìwé kẹta {i}: ọjà ń lọ dáadáa." for i in ids], "id": [str(i) for i in ids]}
        )
        pq.write_table(table, folder / f"{f:03d}_00000.parquet")
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        f"- config_name: {config}\n  data_files:\n  - split: train\n"
        f"    path: data/{config}/train/*\n---\n# A local copy in the hub layout\n",
        encoding="utf-8",
    )
    return root


def test_documents_stream_from_a_hub_layout_dataset(tmp_path: Path, tokenizer_dir) -> None:
    """The contexts stage's streaming path (no mirror `path`: `datasets` streams the
    dataset by name, here a local folder in the hub layout) samples uniformly from the
    whole stream and knows the corpus size. A shuffle buffer of 10,000 would draw all 300
    documents from the first third of these 30,000."""
    dataset = hub_dataset(tmp_path / "fineweb-2", "yor_Latn", files=3, rows=10_000)
    with TeacherServer(scripted_teacher) as srv:
        run = full_spec(srv.url, tmp_path / "run", tokenizer_dir)
        body = run.spec.model_dump(by_alias=True, exclude_none=True)
        body["data"]["contexts"]["source"] = {"dataset": str(dataset), "config": "yor_Latn"}
        body["data"]["contexts"]["maxDocuments"] = 300
        body["data"]["contexts"]["keepOneAbove"] = 10_000
        run = RunSpec(
            run.name, run.namespace, LanguageModelSpec.model_validate(body), run.storage_root
        )
        store = open_store(run.run_uri)
        summary = run_stage(get_stage("contexts")(run, store), teacher_factory=fast_teacher)
    meta = store.read_json("contexts/_documents.json")
    assert meta == {"corpus_size": 30_000, "documents": 300, "empty": 0}
    positions = [int(d["source_id"]) for d in store.read_jsonl("contexts/_documents.jsonl")]
    thirds = Counter(p // 10_000 for p in positions)
    assert all(60 < thirds[t] < 140 for t in range(3)), thirds  # 100 expected in each
    assert positions != sorted(positions)  # in random order, not stream order
    # The corpus holds more than keepOneAbove documents: one prompt each.
    assert summary.as_dict()["rows_out"] == 300
    # Seeded: the same sample again, from the stream, without the stored one.
    again, size = sample_records(
        path=None, dataset=str(dataset), config="yor_Latn", split="train", seed=42, k=300
    )
    assert size == 30_000 and [int(r["id"]) for r in again] == positions


# --------------------------------------------------------------------------- docs/recipe.md

RECIPE = REPO / "docs" / "recipe.md"
#: Spec defaults that are operational rather than the recipe's, so the table leaves them
#: out: shard counts, retries and failure limits, checkpoints and logs, kernels, seeds,
#: evaluation batch sizes and limits.
OPERATIONAL = re.compile(
    r"(^|\.)(shards|broadMaxAttempts|maxFailureRate|seed|checkpointEverySteps|saveTotalLimit|"
    r"logEverySteps|gradientCheckpointing|attnImplementation|device|batchSize|limit|"
    r"logSamples|backend|path|textField|split|enabled|compareBase|systemPrompt)$"
)


def recipe_rows() -> list[dict[str, str]]:
    """The rows of the table in docs/recipe.md, by column name."""
    lines = [ln for ln in RECIPE.read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
    header = [c.strip().lower() for c in lines[0].strip("|").split("|")]
    out = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out.append(dict(zip(header, cells, strict=True)))
    return out


def same(row: dict[str, str]) -> bool:
    """A row without a departure: its departure cell is "—" (a note may follow)."""
    return row["departure"].startswith("—")


def value_of(cell: str) -> Any:
    """The first `code` value of a cell as a spec value: 10,000 -> 10000, 1e-5, true."""
    found = re.search(r"`([^`]+)`", cell)
    assert found, f"no `value` in {cell!r}"
    text = found.group(1)
    if text in ("true", "false"):
        return text == "true"
    if text == "unset":
        return None
    number = text.replace(",", "")
    for kind in (int, float):
        try:
            return kind(number)
        except ValueError:
            pass
    return text


def spec_leaves(model: type, prefix: str = "") -> dict[str, Any]:
    """Every scalar default under a spec model, by camelCase path."""
    from pydantic import BaseModel

    out: dict[str, Any] = {}
    instance = model()
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        value = getattr(instance, name)
        if isinstance(value, BaseModel):
            out.update(spec_leaves(type(value), path + "."))
        else:
            out[path] = value
    return out


def defaults() -> dict[str, Any]:
    from kakugo_stages.spec import (
        DataSpec,
        EvaluationSpec,
        SamplingSpec,
        StudentSpec,
        TeacherEndpoint,
        TeacherSettings,
        TeacherSpec,
        TokenPrices,
        TrainingSpec,
    )

    out = {}
    for prefix, model in (
        ("data.", DataSpec),
        ("training.", TrainingSpec),
        ("evaluation.", EvaluationSpec),
        ("teacher.sampling.", SamplingSpec),
    ):
        out.update(spec_leaves(model, prefix))
    settings = TeacherSettings.model_fields
    for name in ("reasoning_effort", "structured_output", "seed_requests"):
        out[f"teacher.{settings[name].alias}"] = settings[name].default
    prices = TokenPrices()
    out["teacher.endpoint.prices.inputPerMillion"] = float(prices.input_per_million)
    out["teacher.endpoint.prices.outputPerMillion"] = float(prices.output_per_million)
    out["teacher.endpoint.batch"] = TeacherEndpoint.model_fields["batch"].default
    out["teacher.serve.model"] = TeacherSpec().model
    out["student.model"] = StudentSpec().model
    return out


def test_recipe_table_matches_the_spec_defaults() -> None:
    """docs/recipe.md names a spec field for every number of the recipe: its "ours" value
    is that field's default, a row without a departure has the authors' value, and every
    recipe default of the spec has a row. Neither the table nor the spec can drift."""
    table = recipe_rows()
    assert {"item", "spec field", "authors", "ours", "departure"} <= set(table[0])
    spec = defaults()
    documented: set[str] = set()
    for row in table:
        field = re.search(r"`([^`]+)`", row["spec field"])
        if field is None:
            continue
        path = field.group(1)
        assert path in spec, f"docs/recipe.md names {path}, which has no default here"
        documented.add(path)
        ours = value_of(row["ours"])
        default = spec[path]
        if isinstance(default, list):
            default = len(default)
        assert ours == default, f"{row['item']}: the table says {ours!r}, the spec {default!r}"
        if same(row):
            assert value_of(row["authors"]) == ours, row["item"]
    missing = sorted(p for p in spec if p not in documented and not OPERATIONAL.search(p))
    assert missing == [], f"recipe defaults without a row in docs/recipe.md: {missing}"


def test_recipe_table_lists_every_departure() -> None:
    text = RECIPE.read_text(encoding="utf-8")
    departures = [r for r in recipe_rows() if not same(r)]
    assert len(departures) >= 10
    for addition in (
        "duplicate",
        "packing",
        "FLORES+",
        "repetition penalty",
        "plain-text",
        "reservoir",
        "reasoningEffort",
        "maxPrompts",
        "globalBatchSize",
    ):
        assert addition.lower() in text.lower(), addition
