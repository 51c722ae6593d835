"""Translation, the recipe's filters, and the training mix with its thinking toggle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kakugo_stages.chat_format import load_chat_template, tokenize_conversation
from kakugo_stages.filters import (
    FilterSettings,
    TokenCounter,
    check_generated,
    check_ratios,
    check_translation,
)
from kakugo_stages.manifest import parse_object
from kakugo_stages.mix import build_mix
from kakugo_stages.resolved import RunSpec, run_spec
from kakugo_stages.spec import CONCISE_SYSTEM_PROMPT, THINK_SYSTEM_PROMPT, MixConfig
from kakugo_stages.stages import get_stage, run_stage
from kakugo_stages.store import open_store
from tests.helpers.teacher_scripts import scripted_teacher
from tests.helpers.teacher_server import TeacherServer
from tests.helpers.tiny_models import build_tokenizer
from tests.test_generation_stages import FIXTURES, fast_teacher, run_all, small_spec

TAGS = ("<image>", "<video>", "<audio>")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def counter(tokenizer_dir: Path) -> TokenCounter:
    from transformers import AutoTokenizer

    return TokenCounter(AutoTokenizer.from_pretrained(tokenizer_dir))


def with_data(run: RunSpec, **data: Any) -> RunSpec:
    body = run.spec.model_dump(by_alias=True, exclude_none=True)
    for key, value in data.items():
        body["data"][key] = {**body["data"].get(key, {}), **value} if isinstance(
            value, dict) else value
    return RunSpec(run.name, run.namespace, type(run.spec).model_validate(body), run.storage_root)


def translate_spec(url: str, tmp: Path, tok: Path, **data: Any) -> RunSpec:
    run = small_spec(url, tmp, tok)
    return with_data(run, translate={
        "source": {"path": str(FIXTURES / "infinity_instruct_7M_core.jsonl")},
        "samples": 12, "maxSourceTokens": 400, "shards": 2, **data,
    })


# --------------------------------------------------------------------------- translate


def test_translate_samples_maps_roles_and_caps_length(tmp_path, tokenizer_dir) -> None:
    with TeacherServer(scripted_teacher) as srv:
        run = translate_spec(srv.url, tmp_path, tokenizer_dir)
        out = run_all(run, ("translate",))
    store = open_store(run.run_uri)
    meta = store.read_json("translate/_sources.json")
    sources = store.read_jsonl("translate/_sources.jsonl")
    assert meta["conversations"] == len(sources) == 12
    # The teacher's tokenizer cannot be loaded offline: the student's measured instead.
    assert meta["length_tokenizer"].endswith("(student fallback)")
    langs = {json.loads(line)["id"]: json.loads(line)
             for line in (FIXTURES / "infinity_instruct_7M_core.jsonl").open()}
    for conv in sources:
        record = langs[conv["source_id"]]
        assert record["langdetect"] == "en"
        assert conv["source_id"] != 102  # the long one is over 400 tokens
        assert conv["messages"][0]["role"] == "user"
        assert all(m["role"] in ("user", "assistant") for m in conv["messages"])
    rows = list(get_stage("translate")(run, store).output.iter_all_rows())
    assert len(rows) == 12 and out["translate"].as_dict()["requests"] == 12
    assert all(len(r["messages"]) == len(r["original"]) for r in rows)


def test_translate_sample_is_seeded(tmp_path, tokenizer_dir) -> None:
    with TeacherServer(scripted_teacher) as srv:
        a = translate_spec(srv.url, tmp_path / "a", tokenizer_dir, samples=5)
        b = translate_spec(srv.url, tmp_path / "b", tokenizer_dir, samples=5)
        c = with_data(translate_spec(srv.url, tmp_path / "c", tokenizer_dir, samples=5),
                      seed=7)
        ids = []
        for run in (a, b, c):
            store = open_store(run.run_uri)
            ids.append([s["source_id"] for s in get_stage("translate")(run, store)
                        .conversations()])
    assert ids[0] == ids[1] and ids[0] != ids[2]


# --------------------------------------------------------------------------- filters


def conv(*turns: str) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
            for i, t in enumerate(turns)]


@pytest.mark.parametrize(
    ("translated", "reason"),
    [
        ("not a list", "unparsable"),
        ([["user", "hi"]], "unparsable"),
        (conv("Báwo ni?"), "turn_count_mismatch"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
         "bad_alternation"),
        ([{"role": "user", "content": "a", "lang": "yo"}, {"role": "assistant", "content": "b"}],
         "extra_keys"),
        ([{"role": "user"}, {"role": "assistant", "content": "b"}], "missing_keys"),
        (conv("Báwo \ud800 ni?", "Dáadáa"), "invalid_utf8"),
        (conv("Báwo \ufffd ni?", "Dáadáa"), "invalid_utf8"),
        (conv("Wò <image> yìí", "Dáadáa"), "media_tag"),
        (conv("Báwo ni?", "Dáadáa ni"), None),
    ],
)
def test_translation_structure(translated: Any, reason: str | None) -> None:
    row = {"original": conv("How are you?", "Fine."), "messages": translated}
    assert check_translation(row, TAGS) == reason


def test_token_ratios_never_divide_by_zero() -> None:
    assert check_ratios([10, 10], [10, 20], 0.75, 25) is None
    assert check_ratios([10], [7], 0.75, 25) == "token_ratio"  # 0.7 < 0.75
    assert check_ratios([2], [51], 0.75, 25) == "token_ratio"  # 25.5 > 25
    assert check_ratios([0], [0], 0.75, 25) == "empty_turn"
    assert check_ratios([0], [5], 0.75, 25) == "token_ratio"
    assert check_ratios([5], [0], 0.75, 25) == "token_ratio"


def test_bounds_decide_only_what_they_know() -> None:
    from kakugo_stages.filters import UNDECIDED, check_ratio_bounds, token_bounds

    assert check_ratio_bounds([0], [token_bounds("", False)], 0.75, 25) == "empty_turn"
    # A whitespace-only turn may be no token for some tokenizers: it must be counted.
    assert check_ratio_bounds([0], [token_bounds("  ", False)], 0.75, 25) == UNDECIDED
    assert check_ratio_bounds([0], [token_bounds("  ", True)], 0.75, 25) == "token_ratio"
    assert check_ratio_bounds([4], [token_bounds("a b c", True)], 0.75, 25) is None
    assert check_ratio_bounds([4], [token_bounds("a b c", False)], 0.75, 25) == UNDECIDED
    assert check_ratio_bounds([40], [token_bounds("a b", True)], 0.75, 25) == "token_ratio"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "Báwo ni?", "response": None}, "failed_generation"),
        ({"prompt": "Báwo ni?"}, "failed_generation"),
        ({"prompt": "Báwo ni?", "response": 3}, "failed_generation"),
        ({"prompt": "  ", "response": "Dáadáa"}, "empty_prompt"),
        ({"prompt": "Báwo ni?", "response": " \n"}, "empty_response"),
        ({"prompt": "Báwo ni?", "response": "Dáadáa", "reasoning": 5}, "failed_generation"),
        ({"prompt": "<audio> gbọ́", "response": "Dáadáa"}, "media_tag"),
        ({"prompt": "Báwo ni?", "response": "Dáadáa", "reasoning": "hmm"}, None),
    ],
)
def test_generated_row_checks(row: dict, reason: str | None) -> None:
    assert check_generated(row, TAGS) == reason


def gen_row(i: int, source: str = "topics", reasoning: str | None = "I think.", **kw) -> dict:
    text = f"Ìbéèrè {source} {i}"
    return {"id": f"{source}-{i:03d}", "source": source, "prompt": text, "user": text,
            "response": f"Ìdáhùn {i}", "reasoning": reasoning, **kw}


def tr_row(i: int, **kw) -> dict:
    return {"id": f"translated-{i:03d}", "source": "translated",
            "original": conv(f"Question number {i}?", "An answer."),
            "messages": conv(f"Ìbéèrè nọ́mbà {i}?", "Ìdáhùn kan."), **kw}


SETTINGS = FilterSettings(0.75, 25.0, TAGS, 8000)


def test_mix_accounts_for_every_row_and_formats_them(counter: TokenCounter) -> None:
    generated = [gen_row(i) for i in range(40)] + [
        gen_row(100, response=None), gen_row(101, response=""), gen_row(1),  # dup prompt
        gen_row(102, prompt="x" * 20_000, user="x " * 9000),
    ]
    translated = [tr_row(i) for i in range(20)] + [
        tr_row(50, messages=conv("only one")),
        tr_row(51, messages=conv("", "Ìdáhùn"), original=conv("", "An answer.")),
    ]
    mix = build_mix(generated, translated, SETTINGS, MixConfig(), counter, seed=1)
    assert mix.rows + len(mix.excluded) == len(generated) + len(translated)
    assert dict(mix.dropped) == {"failed_generation": 1, "empty_response": 1,
                                 "duplicate_prompt": 1, "too_long": 1,
                                 "turn_count_mismatch": 1, "empty_turn": 1}
    assert len(mix.validation) == round(60 * 0.02)
    by_source = {r["source"]: r for r in mix.train + mix.validation}
    g = by_source["topics"]["messages"]
    assert g[0] == {"role": "system", "content": THINK_SYSTEM_PROMPT}
    assert g[2]["content"].startswith("<think> I think. </think> Ìdáhùn")
    t = by_source["translated"]["messages"]
    assert t[0] == {"role": "system", "content": CONCISE_SYSTEM_PROMPT}
    assert "<think>" not in json.dumps(t)
    assert mix.reasoning_rows == 40


def test_mix_shuffle_is_seeded(counter: TokenCounter) -> None:
    rows = [gen_row(i) for i in range(30)]
    order = [[r["id"] for r in build_mix(rows, [], SETTINGS, MixConfig(), counter, seed=s).train]
             for s in (1, 1, 2)]
    assert order[0] == order[1] != order[2]
    # Input order does not matter, only the seed does.
    again = build_mix(rows[::-1], [], SETTINGS, MixConfig(), counter, seed=1)
    assert [r["id"] for r in again.train] == order[0]


@pytest.mark.parametrize(
    ("mix_cfg", "sources", "thinking"),
    [
        ({"sources": ["topics", "scenarios", "contexts"]}, {"topics", "scenarios"}, True),
        ({"sources": ["translated"]}, {"translated"}, False),
        ({"reasoning": False}, {"topics", "scenarios", "translated"}, False),
        ({"sources": ["scenarios", "translated"]}, {"scenarios", "translated"}, True),
    ],
    ids=["generated-only", "translated-only", "no-reasoning", "subset"],
)
def test_ablations(counter: TokenCounter, mix_cfg: dict, sources: set, thinking: bool) -> None:
    generated = [gen_row(i) for i in range(10)] + [gen_row(i, "scenarios") for i in range(10)]
    translated = [tr_row(i) for i in range(10)]
    cfg = MixConfig.model_validate(mix_cfg)
    gen_in = generated if set(cfg.sources) - {"translated"} else []
    tr_in = translated if "translated" in cfg.sources else []
    mix = build_mix(gen_in, tr_in, SETTINGS, cfg, counter, seed=0)
    rows = mix.train + mix.validation
    assert {r["source"] for r in rows} == sources
    assert (mix.reasoning_rows > 0) is thinking
    if not cfg.reasoning:
        assert all("<think>" not in m["content"] for r in rows for m in r["messages"])


def test_rows_without_reasoning_do_not_get_the_think_prompt(counter: TokenCounter) -> None:
    mix = build_mix([gen_row(1, reasoning=None), gen_row(2, reasoning="  ")], [], SETTINGS,
                    MixConfig(validation_fraction=0), counter, seed=0)
    assert all(r["messages"][0]["content"] == CONCISE_SYSTEM_PROMPT for r in mix.train)


# --------------------------------------------------------------------------- token bounds
# The filters decide most rows from `word_count <= tokens <= utf8 bytes + 1` and tokenize
# only the rest; these tests show the bounds hold and never change a decision.

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def split_tokenizer() -> Any:
    """The Granite / Llama 3 layout: a Split regex, then byte-level without its regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.helpers.tiny_models import CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([CORPUS], trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def unbounded_tokenizers() -> list[Any]:
    """Layouts the bounds are not proven for: each must be refused."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.helpers.tiny_models import CORPUS

    out = []
    for layout in ("metaspace", "nfd", "no-regex"):
        tok = Tokenizer(models.BPE())
        if layout == "metaspace":
            tok.pre_tokenizer = pre_tokenizers.Metaspace()
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(use_regex=layout != "no-regex")
        if layout == "nfd":
            tok.normalizer = normalizers.NFD()
        tok.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=300))
        out.append(PreTrainedTokenizerFast(tokenizer_object=tok))
    return out


def random_text(rng: Any, words: int) -> str:
    pieces = ["Ẹ", "kú", "àárọ̀", "ṣé", "the", "fox", "12,345", "!!", "...", "ọjà", "日本語",
              "مرحبا", "<think>", "x=1;", "https://a.b/c", "\n", "  ", "\t", "—", "Lagos's"]
    return "".join(rng.choice(pieces) + rng.choice([" ", "", "\n", "  "])
                   for _ in range(words))


def test_word_and_byte_bounds_hold(counter: TokenCounter) -> None:
    import random

    from kakugo_stages.filters import token_bounds

    rng = random.Random(0)
    texts = [random_text(rng, rng.randint(0, 60)) for _ in range(400)]
    for tc in (counter, TokenCounter(split_tokenizer())):
        assert tc.bounded
        for text, n in zip(texts, tc(texts), strict=True):
            lower, upper = token_bounds(text, bounded=True)
            assert lower <= n <= upper, (text, lower, n, upper)
    for tokenizer in unbounded_tokenizers():
        assert not TokenCounter(tokenizer).bounded


def test_bounds_never_change_a_decision(counter: TokenCounter) -> None:
    """Rows at the edges (ratios around 0.75 and 25, empty turns, lengths around the
    cutoff) get the same verdicts with the bounds as with every turn counted."""
    import random

    class Counting(TokenCounter):
        texts = 0

        def __call__(self, texts: Any) -> list[int]:
            self.texts += len(texts)
            return super().__call__(texts)

    rng = random.Random(1)
    fast_counter, exact = Counting(counter.tokenizer), Counting(counter.tokenizer)
    exact.bounded = False
    generated, translated = [], []
    for i in range(150):
        prompt = random_text(rng, rng.randint(1, 40))
        generated.append(gen_row(i, prompt=prompt, user=prompt,
                                 response=random_text(rng, rng.randint(1, 120)),
                                 reasoning=random_text(rng, rng.randint(0, 80))))
    for i in range(300):
        turns = 2 * rng.randint(1, 2)
        original = [random_text(rng, rng.randint(0, 30)) for _ in range(turns)]
        # Translations from a tenth to thirty times the length of the source turn.
        messages = [random_text(rng, round(len(o.split()) * rng.choice(
            [0, 0.1, 0.5, 0.7, 0.75, 0.8, 1, 2, 10, 24, 26, 30]))) for o in original]
        translated.append({"id": f"translated-{i:03d}", "source": "translated",
                           "original": conv(*original), "messages": conv(*messages)})
    for limit in (8000, 300, 120):  # the cutoff: none, some and many rows too long
        settings = FilterSettings(0.75, 25.0, TAGS, limit, template_tokens=3)
        fast = build_mix(generated, translated, settings, MixConfig(), fast_counter, seed=0)
        slow = build_mix(generated, translated, settings, MixConfig(), exact, seed=0)
        assert [r["id"] for r in fast.train] == [r["id"] for r in slow.train]
        assert [(r["id"], r["reason"]) for r in fast.excluded] == [
            (r["id"], r["reason"]) for r in slow.excluded]
        assert len(fast.dropped) >= 2, fast.dropped  # the edges were reached
    assert fast.dropped["too_long"] and fast.dropped["token_ratio"]
    assert {r["source"] for r in fast.excluded if r["reason"] == "too_long"} == {
        "topics", "translated"}
    # The bounds decided some rows (else this proves nothing), not all (edges need counts).
    assert 0 < fast_counter.texts < exact.texts, (fast_counter.texts, exact.texts)


# --------------------------------------------------------------------------- the stage


def test_pipeline_to_dataset_and_the_trainer_sees_the_system_prompt(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    from datasets import load_dataset
    from transformers import AutoTokenizer

    with TeacherServer(scripted_teacher) as srv:
        run = translate_spec(srv.url, tmp_path, tokenizer_dir)
        run = with_data(run, mix={"validationFraction": 0.1})
        run_all(run, ("topics", "scenarios", "contexts", "revise", "respond", "translate"))
        store = open_store(run.run_uri)
        summary = run_stage(get_stage("filter")(run, store), teacher_factory=fast_teacher)
    stats = summary.stats[0]
    ds = load_dataset(str(Path(store.local_path("dataset"))))
    assert set(ds) == {"train", "validation"}
    excluded = store.read_jsonl("filter/_excluded/00000.jsonl")
    # The fixture's one conversation with an <image> tag is the only row the filter drops.
    assert [(e["source"], e["reason"]) for e in excluded] == [("translated", "media_tag")]
    assert "<image>" in json.dumps(excluded[0]["row"]["original"])
    assert len(ds["train"]) + len(ds["validation"]) == stats["rows_out"] == 53 + 11
    assert stats["kept_by_source"] == {"topics": 30, "scenarios": 18, "contexts": 5,
                                       "translated": 11}
    assert stats["dropped"] == {"media_tag": 1}
    card = store.read_text("dataset/README.md")
    for text in ("Yoruba (yor_Latn)", "| translated | 11 | 1 |", "| media_tag | 1 |",
                 "CC BY-SA 4.0", "ODC-By", "tokens (student)", "## Why rows were dropped"):
        assert text in card, text

    # What the trainer sees: the example tokenized with the student's chat template.
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    template = load_chat_template("granite-4")
    thinking = next(r for r in ds["train"] if r["reasoning"])
    ex = tokenize_conversation(tok, thinking["messages"], template)
    text = tok.decode(ex["input_ids"])
    assert THINK_SYSTEM_PROMPT in text  # recipe mistake 1: the system prompt was lost
    trained = tok.decode([t for t in ex["labels"] if t != -100])
    assert trained.startswith("<think>") and "</think>" in trained
    assert trained.endswith("<|end_of_text|>")  # the end of turn is learnt
    assert THINK_SYSTEM_PROMPT not in trained  # loss on assistant tokens only
    concise = next(r for r in ds["train"] if r["source"] == "translated")
    text = tok.decode(tokenize_conversation(tok, concise["messages"], template)["input_ids"])
    assert CONCISE_SYSTEM_PROMPT in text and "<think>" not in text


def test_two_runs_datasets_load_with_their_own_rows(tmp_path: Path, counter: TokenCounter) -> None:
    """datasets caches a local folder by its name and card, not its path: each run's card
    carries the run's identity and rows, so `runs/a/dataset` and `runs/b/dataset` (same
    folder name, same recipe) each load their own rows, also in one process."""
    from datasets import load_dataset

    from kakugo_stages.cards import dataset_card
    from kakugo_stages.mix import write_dataset

    folders = {}
    for name, n in (("a", 12), ("b", 20)):
        obj = {"apiVersion": "kakugo.io/v1alpha1", "kind": "LanguageModel",
               "metadata": {"name": name, "namespace": "tests"},
               "spec": {"language": "Yoruba",
                        "teacher": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "m"}},
                        "storage": {"uri": str(tmp_path / "runs")}}}
        run = run_spec(parse_object(obj))
        mix = build_mix([gen_row(i) for i in range(n)], [], SETTINGS,
                        MixConfig(validationFraction=0.0), counter, seed=1)
        store = open_store(run.run_uri)
        splits = {"train": "dataset/data/train-00000-of-00001.parquet"}
        write_dataset(store, mix, dataset_card(run, mix, "teacher", splits, {}))
        folders[name] = (Path(store.local_path("dataset")), n)
    assert folders["a"][0].name == folders["b"][0].name == "dataset"
    for folder, n in folders.values():
        assert len(load_dataset(str(folder))["train"]) == n
