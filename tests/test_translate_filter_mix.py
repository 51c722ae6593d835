"""Translation, the recipe's filters, and the training mix with its thinking toggle."""

from __future__ import annotations

import json
import os
import random
import unicodedata
from collections import Counter
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
        body["data"][key] = (
            {**body["data"].get(key, {}), **value} if isinstance(value, dict) else value
        )
    return RunSpec(run.name, run.namespace, type(run.spec).model_validate(body), run.storage_root)


def translate_spec(url: str, tmp: Path, tok: Path, **data: Any) -> RunSpec:
    run = small_spec(url, tmp, tok)
    return with_data(
        run,
        translate={
            "source": {"path": str(FIXTURES / "infinity_instruct_7M_core.jsonl")},
            "samples": 12,
            "maxSourceTokens": 400,
            "shards": 2,
            **data,
        },
    )


# --------------------------------------------------------------------------- translate


def test_translate_samples_maps_roles_and_caps_length(tmp_path, tokenizer_dir) -> None:
    with TeacherServer(scripted_teacher) as srv:
        run = translate_spec(srv.url, tmp_path, tokenizer_dir, samples=20)
        out = run_all(run, ("translate",))
    store = open_store(run.run_uri)
    meta = store.read_json("translate/_sources.json")
    sources = store.read_jsonl("translate/_sources.jsonl")
    # As the authors do: sample, then drop the over-long (one of the 20 English records),
    # rather than sampling on until `samples` fit.
    assert meta["available"] == meta["sampled"] == 20
    assert meta["dropped"] == {"bad_roles": 0, "too_long": 1}
    assert meta["conversations"] == len(sources) == 19
    # The teacher's tokenizer cannot be loaded offline: the student's measured instead.
    assert meta["length_tokenizer"].endswith("(student fallback)")
    langs = {
        json.loads(line)["id"]: json.loads(line)
        for line in (FIXTURES / "infinity_instruct_7M_core.jsonl").open()
    }
    for conv in sources:
        record = langs[conv["source_id"]]
        assert record["langdetect"] == "en"
        assert conv["source_id"] != 102  # the long one is over 400 tokens
        assert conv["messages"][0]["role"] == "user"
        assert all(m["role"] in ("user", "assistant") for m in conv["messages"])
    rows = list(get_stage("translate")(run, store).output.iter_all_rows())
    assert len(rows) == 19 and out["translate"].as_dict()["requests"] == 19
    assert all(len(r["messages"]) == len(r["original"]) for r in rows)


def test_translate_drops_over_long_samples_without_drawing_more(tmp_path, tokenizer_dir) -> None:
    run = translate_spec("http://127.0.0.1:9/v1", tmp_path, tokenizer_dir, maxSourceTokens=170)
    conversations = get_stage("translate")(run, open_store(run.run_uri)).conversations()
    meta = open_store(run.run_uri).read_json("translate/_sources.json")
    assert meta["sampled"] == 12 and meta["dropped"]["too_long"] > 0
    assert len(conversations) == 12 - meta["dropped"]["too_long"] - meta["dropped"]["bad_roles"]
    assert conversations and all(c["source_tokens"] <= 170 for c in conversations)


def test_translate_sample_is_seeded(tmp_path, tokenizer_dir) -> None:
    with TeacherServer(scripted_teacher) as srv:
        a = translate_spec(srv.url, tmp_path / "a", tokenizer_dir, samples=5)
        b = translate_spec(srv.url, tmp_path / "b", tokenizer_dir, samples=5)
        c = with_data(translate_spec(srv.url, tmp_path / "c", tokenizer_dir, samples=5), seed=7)
        ids = []
        for run in (a, b, c):
            store = open_store(run.run_uri)
            ids.append([s["source_id"] for s in get_stage("translate")(run, store).conversations()])
    assert ids[0] == ids[1] and ids[0] != ids[2]


# --------------------------------------------------------------------------- filters


def conv(*turns: str) -> list[dict[str, str]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
    ]


@pytest.mark.parametrize(
    ("translated", "reason"),
    [
        ("not a list", "unparsable"),
        ([["user", "hi"]], "unparsable"),
        (conv("Báwo ni?"), "turn_count_mismatch"),
        (
            [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
            "bad_alternation",
        ),
        (
            [{"role": "user", "content": "a", "lang": "yo"}, {"role": "assistant", "content": "b"}],
            "extra_keys",
        ),
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
    return {
        "id": f"{source}-{i:03d}",
        "source": source,
        "prompt": text,
        "user": text,
        "response": f"Ìdáhùn {i}",
        "reasoning": reasoning,
        **kw,
    }


def tr_row(i: int, **kw) -> dict:
    return {
        "id": f"translated-{i:03d}",
        "source": "translated",
        "original": conv(f"Question number {i}?", "An answer."),
        "messages": conv(f"Ìbéèrè nọ́mbà {i}?", "Ìdáhùn kan."),
        **kw,
    }


SETTINGS = FilterSettings(0.75, 25.0, TAGS, 8000)


def test_mix_accounts_for_every_row_and_formats_them(counter: TokenCounter) -> None:
    generated = [gen_row(i) for i in range(40)] + [
        gen_row(100, response=None),
        gen_row(101, response=""),
        gen_row(1),  # dup prompt
        gen_row(102, prompt="x" * 20_000, user="x " * 9000),
    ]
    translated = [tr_row(i) for i in range(20)] + [
        tr_row(50, messages=conv("only one")),
        tr_row(51, messages=conv("", "Ìdáhùn"), original=conv("", "An answer.")),
    ]
    mix = build_mix(generated, translated, SETTINGS, MixConfig(), counter, seed=1)
    assert mix.rows + len(mix.excluded) == len(generated) + len(translated)
    assert dict(mix.dropped) == {
        "failed_generation": 1,
        "empty_response": 1,
        "duplicate_prompt": 1,
        "too_long": 1,
        "turn_count_mismatch": 1,
        "empty_turn": 1,
    }
    assert len(mix.validation) == round(60 * 0.02)
    by_source = {r["source"]: r for r in [*mix.train, *mix.validation]}
    g = by_source["topics"]["messages"]
    assert g[0] == {"role": "system", "content": THINK_SYSTEM_PROMPT}
    assert g[2]["content"].startswith("<think> I think. </think> Ìdáhùn")
    t = by_source["translated"]["messages"]
    assert t[0] == {"role": "system", "content": CONCISE_SYSTEM_PROMPT}
    assert "<think>" not in json.dumps(t)
    assert mix.reasoning_rows == 40


def test_mix_shuffle_is_seeded(counter: TokenCounter) -> None:
    rows = [gen_row(i) for i in range(30)]
    order = [
        [r["id"] for r in build_mix(rows, [], SETTINGS, MixConfig(), counter, seed=s).train]
        for s in (1, 1, 2)
    ]
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
    rows = [*mix.train, *mix.validation]
    assert {r["source"] for r in rows} == sources
    assert (mix.reasoning_rows > 0) is thinking
    if not cfg.reasoning:
        assert all("<think>" not in m["content"] for r in rows for m in r["messages"])


def test_rows_without_reasoning_do_not_get_the_think_prompt(counter: TokenCounter) -> None:
    mix = build_mix(
        [gen_row(1, reasoning=None), gen_row(2, reasoning="  ")],
        [],
        SETTINGS,
        MixConfig(validation_fraction=0),
        counter,
        seed=0,
    )
    assert all(r["messages"][0]["content"] == CONCISE_SYSTEM_PROMPT for r in mix.train)


# --------------------------------------------------------------------------- token bounds
# The filters decide most rows from `word_count <= tokens <= utf8 bytes + 1` and tokenize
# only the rest; these tests show the bounds hold and never change a decision.

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def split_tokenizer() -> Any:
    """The Granite / Llama 3 layout: a Split regex, then byte-level without its regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.helpers.tiny_models import CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [CORPUS],
        trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
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


#: Yoruba as real text has it: tone marks as combining diacritics or precomposed, under-dots,
#: syllabic nasals; decomposed (NFD) pieces beside composed ones.
YORUBA = [
    "Ẹ̀kọ́",
    "ìmọ̀",
    "sáyẹ́nsì",
    "ń",
    "ṣe",
    "pàtàkì",
    "àárọ̀",
    "ọjà",
    "ẹ̀tọ́",
    "kọ̀ǹpútà",
    "ọ̀pọ̀lọpọ̀",
    "Ẹ",
    "kú",
    "gẹ́gẹ́",
    "nǹkan",
    "m̀",
    "ọ̀rọ̀-ajé",
    "Ìbàdàn",
]
YORUBA += [unicodedata.normalize("NFD", w) for w in YORUBA]


def random_text(rng: Any, words: int) -> str:
    pieces = [
        "Ẹ",
        "kú",
        "àárọ̀",
        "ṣé",
        "the",
        "fox",
        "12,345",
        "!!",
        "...",
        "ọjà",
        "日本語",
        "مرحبا",
        "<think>",
        "x=1;",
        "https://a.b/c",
        "\n",
        "  ",
        "\t",
        "—",
        "Lagos's",
        *YORUBA,
    ]
    return "".join(rng.choice(pieces) + rng.choice([" ", "", "\n", "  "]) for _ in range(words))


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


class Counting(TokenCounter):
    """Counts the texts it is asked to count."""

    texts = 0

    def __call__(self, texts: Any) -> list[int]:
        texts = list(texts)
        self.texts += len(texts)
        return super().__call__(texts)


def reference(tokenizer: Any) -> Counting:
    """Every text counted by the tokenizer itself, no bound: what the verdicts must be."""
    ref = Counting(tokenizer, pieces=False)
    ref.bounded = False
    assert ref.pieces is None
    return ref


def same_verdicts(fast: Any, slow: Any) -> None:
    assert [r["id"] for r in fast.train] == [r["id"] for r in slow.train]
    assert [r["id"] for r in fast.validation] == [r["id"] for r in slow.validation]
    assert [(r["id"], r["reason"]) for r in fast.excluded] == [
        (r["id"], r["reason"]) for r in slow.excluded
    ]


def test_bounds_never_change_a_decision(counter: TokenCounter) -> None:
    """Rows at the edges (ratios around 0.75 and 25, empty turns, lengths around the
    cutoff, diacritic-heavy text) get the same verdicts with the bounds and the piece
    counter as with every turn counted by the tokenizer."""
    rng = random.Random(1)
    fast_counter, exact = Counting(counter.tokenizer), reference(counter.tokenizer)
    assert fast_counter.pieces is not None and fast_counter.bounded
    generated, translated = [], []
    for i in range(150):
        prompt = random_text(rng, rng.randint(1, 40))
        generated.append(
            gen_row(
                i,
                prompt=prompt,
                user=prompt,
                response=random_text(rng, rng.randint(1, 120)),
                reasoning=random_text(rng, rng.randint(0, 80)),
            )
        )
    for i in range(300):
        turns = 2 * rng.randint(1, 2)
        original = [random_text(rng, rng.randint(0, 30)) for _ in range(turns)]
        # Translations from a tenth to thirty times the length of the source turn.
        messages = [
            random_text(
                rng,
                round(
                    len(o.split()) * rng.choice([0, 0.1, 0.5, 0.7, 0.75, 0.8, 1, 2, 10, 24, 26, 30])
                ),
            )
            for o in original
        ]
        translated.append(
            {
                "id": f"translated-{i:03d}",
                "source": "translated",
                "original": conv(*original),
                "messages": conv(*messages),
            }
        )
    for limit in (8000, 300, 120):  # the cutoff: none, some and many rows too long
        settings = FilterSettings(0.75, 25.0, TAGS, limit, template_tokens=3)
        fast = build_mix(generated, translated, settings, MixConfig(), fast_counter, seed=0)
        slow = build_mix(generated, translated, settings, MixConfig(), exact, seed=0)
        same_verdicts(fast, slow)
        assert len(fast.dropped) >= 2, fast.dropped  # the edges were reached
    assert fast.dropped["too_long"] and fast.dropped["token_ratio"]
    assert {r["source"] for r in fast.excluded if r["reason"] == "too_long"} == {
        "topics",
        "translated",
    }
    # The bounds decided some rows (else this proves nothing), not all (edges need counts).
    assert 0 < fast_counter.texts < exact.texts, (fast_counter.texts, exact.texts)


def yoruba_text(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(YORUBA) + rng.choice(["", "", ",", ".", "?"]) for _ in range(words))
    return unicodedata.normalize(rng.choice(["NFC", "NFD"]), text) if rng.random() < 0.5 else text


def test_exact_edges_with_diacritics_keep_every_verdict(counter: TokenCounter) -> None:
    """Diacritic-heavy turns whose ratio to the English turn is exactly 0.75 or 25, or one
    token either side, and rows exactly at the cutoff or one token either side: the fast
    path (bounds, piece counter) keeps and drops exactly what the tokenizer does."""
    rng = random.Random(7)
    exact, fast = reference(counter.tokenizer), Counting(counter.tokenizer)
    name = "tiny"
    translated = []
    for i in range(240):
        messages = [yoruba_text(rng, rng.randint(1, 40)) for _ in range(2 * rng.randint(1, 2))]
        tokens = exact(messages)
        # The English turn's count (as the translate stage stores it) puts each turn at,
        # just inside or just outside an edge of [0.75, 25].
        originals = []
        for n in tokens:
            edge = rng.choice(
                [
                    n * 4 // 3,
                    -(-n * 4 // 3),
                    n * 4 // 3 + 1,
                    max(0, n * 4 // 3 - 1),  # 0.75
                    n // 25,
                    -(-n // 25),
                    n // 25 + 1,
                    max(0, n // 25 - 1),  # 25
                    n,
                ]
            )
            originals.append(edge)
        translated.append(
            {
                "id": f"translated-{i:03d}",
                "source": "translated",
                "original": conv(*(["English."] * len(messages))),
                "messages": conv(*messages),
                "original_tokens": originals,
                "original_tokenizer": name,
            }
        )
    generated = []
    for i in range(120):
        prompt = yoruba_text(rng, rng.randint(1, 60))
        generated.append(
            gen_row(
                i,
                prompt=prompt,
                user=prompt,
                response=yoruba_text(rng, rng.randint(1, 150)),
                reasoning=random_text(rng, rng.randint(0, 40)),
            )
        )
    # Cutoffs at the exact totals of some rows, and one token either side.
    base = FilterSettings(0.75, 25.0, TAGS, 1 << 30, template_tokens=3, tokenizer_name=name)
    everything = build_mix(generated, translated, base, MixConfig(), exact, seed=0)
    totals = sorted({t for t in _row_totals(everything, exact, base)})
    edges = rng.sample(totals, 6)
    limits = {t + d for t in edges for d in (-1, 0, 1)}
    reasons = Counter()
    for limit in sorted(limits):
        settings = FilterSettings(0.75, 25.0, TAGS, limit, template_tokens=3, tokenizer_name=name)
        slow = build_mix(generated, translated, settings, MixConfig(), exact, seed=0)
        same_verdicts(build_mix(generated, translated, settings, MixConfig(), fast, seed=0), slow)
        reasons.update(slow.dropped)
        if limit in edges:  # a row exactly at the cutoff is kept
            assert limit in _row_totals(slow, exact, settings)
    # Both edges of the ratio and the cutoff were met (kept at the edge, dropped past it).
    assert reasons["token_ratio"] and reasons["too_long"]
    ratios = [
        n / o
        for row in translated
        for n, o in zip(
            exact([m["content"] for m in row["messages"]]), row["original_tokens"], strict=True
        )
        if o
    ]
    assert 0.75 in ratios and 25 in ratios
    assert any(0.74 < r < 0.75 for r in ratios) and any(25 < r < 25.5 for r in ratios)


def _row_totals(mix: Any, count: TokenCounter, settings: FilterSettings) -> list[int]:
    """Exact token totals of the kept rows, as the cutoff sees them."""
    out = []
    for row in [*mix.train, *mix.validation]:
        texts = [m["content"] for m in row["messages"]]
        out.append(sum(count(texts)) + settings.template_tokens * len(texts))
    return out


# --------------------------------------------------------------------------- piece counter
# Exact counts of byte-level BPE text without the tokenizer's regex (piece_count.py): they
# must equal the tokenizer's on any text they give a count for.


def diacritic_tokenizer() -> Any:
    """A byte-level BPE trained on Yoruba with both normal forms: its merges join
    combining marks and the bytes of precomposed letters, unlike an English one's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(3)
    corpus = [yoruba_text(rng, 200) for _ in range(60)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=1200,
            special_tokens=["<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def smollm2_tokenizer() -> Any:
    folder = Path(os.environ.get("KAKUGO_CACHE") or "~/.cache/kakugo").expanduser() / (
        "models/SmolLM2-135M-Instruct"
    )
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"no SmolLM2 tokenizer in {folder} (make models)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


#: Text of every kind the counter must get right: Latin, Greek and Cyrillic scripts,
#: contractions in both cases, every kind of whitespace run, digits and fractions,
#: typographic punctuation, markup, characters with case-folding quirks, characters
#: str.split() and the tokenizer disagree on.
PIECES = [
    *YORUBA,
    "the",
    "Fox",
    "it's",
    "IT'S",
    "'s",
    "'S",
    "'ll",
    "'LL",
    "'re",
    "'ve",
    "'m",
    "'d",
    " 's",
    "''",
    "12,345",
    "3.5",
    "½",
    "²",
    "!!",
    "...",
    "—",
    "–",
    "…",
    "“",
    "”",
    "‘",
    "’",
    "«»",
    "<think>",
    "</think>",
    "**",
    "- ",
    "1. ",
    "x=1;",
    "https://a.b/c?d=e",
    "\n",
    "\n\n",
    "  ",
    "\t",
    "\r\n",
    " \n ",
    "\xa0",
    "\u2028",
    "\u2009",
    "\x1c",
    "\x85",
    "\u200b",
    "λόγος",
    "слово",
    "é",
    "ß",
    "ſ",
    "İ",
    "ı",
    "Å",
    "ǅ",
    "ʼ",
    "ˆ",
    "<|im",
    "|>",
    "\u0301",
    "\u0323\u0300",
]
#: ... and what it must refuse (the tokenizer counts those texts): other scripts and
#: characters, the added tokens' texts of the tokenizers tested.
RARE = [
    "٣",
    "\u3000",
    "\u180e",
    "日本語",
    "🙂",
    "مرحبا",
    "\u212a",
    "\u212b",
    "\ufeff",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|start_of_role|>",
]


def property_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    texts = ["", " ", "\n", "a", "'s", "Ẹ̀", "e\u0323\u0300"]
    for _ in range(n):
        texts.append(
            "".join(
                rng.choice(RARE if rng.random() < 0.03 else PIECES)
                + rng.choice(["", " ", "", "\n", "  ", "\t"])
                for _ in range(rng.randint(1, 30))
            )
        )
    return texts


@pytest.mark.parametrize("which", ["tiny", "diacritics", "smollm2"])
def test_piece_counts_equal_the_tokenizer(counter: TokenCounter, which: str) -> None:
    tokenizer = {
        "tiny": lambda: counter.tokenizer,
        "diacritics": diacritic_tokenizer,
        "smollm2": smollm2_tokenizer,
    }[which]()
    pieces = TokenCounter(tokenizer).pieces
    assert pieces is not None
    backend = tokenizer.backend_tokenizer
    added = [t.content for t in backend.get_added_tokens_decoder().values()]
    texts = property_texts(seed=len(which), n=3000)
    real = [len(e) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    counted = 0
    for text, n in zip(texts, real, strict=True):
        mine = pieces.count(text)
        if mine is None:  # only for what it cannot count
            assert pieces.refuse.search(text) or any(a in text for a in added), text
        else:
            assert mine == n, (text, mine, n)
            counted += 1
    assert counted > len(texts) // 2
    # Whole realistic documents, most of them counted here.
    rng = random.Random(5)
    docs = [yoruba_text(rng, rng.randint(50, 400)) for _ in range(40)]
    assert [pieces.count(d) for d in docs] == [
        len(e) for e in backend.encode_batch_fast(docs, add_special_tokens=False)
    ]


def test_token_counter_mixes_piece_counts_and_the_tokenizer(counter: TokenCounter) -> None:
    """Texts the piece counter refuses go to the tokenizer, in order, in batches."""
    texts = property_texts(seed=11, n=500)
    small = TokenCounter(counter.tokenizer)
    small.BATCH = 7
    assert small(iter(texts)) == reference(counter.tokenizer)(texts)


def test_piece_counter_refuses_other_layouts() -> None:
    """Layouts whose pieces or counts it cannot reproduce get no piece counter (their
    texts are tokenized); the Llama 3 / Granite layout is one of them."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from kakugo_stages.piece_count import PieceCounter
    from tests.helpers.tiny_models import CORPUS

    def trained(**layout: Any) -> Any:
        tok = Tokenizer(models.BPE(dropout=layout.pop("dropout", None)))
        tok.pre_tokenizer = layout.pop("pre", pre_tokenizers.ByteLevel(add_prefix_space=False))
        if "normalizer" in layout:
            tok.normalizer = layout.pop("normalizer")
        tok.train_from_iterator(
            [CORPUS],
            trainers.BpeTrainer(
                vocab_size=300,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            ),
        )
        if layout.pop("truncate", False):
            tok.enable_truncation(16)
        return tok

    assert PieceCounter.for_backend(trained()) is not None
    assert PieceCounter.for_backend(split_tokenizer().backend_tokenizer) is None
    for layout in (
        {"pre": pre_tokenizers.ByteLevel(add_prefix_space=True)},
        {"pre": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)},
        {"pre": pre_tokenizers.Metaspace()},
        {"normalizer": normalizers.NFC()},
        {"dropout": 0.1},
        {"truncate": True},
    ):
        assert PieceCounter.for_backend(trained(**dict(layout))) is None, layout


def test_word_count_splits_where_the_tokenizer_does(counter: TokenCounter) -> None:
    """U+001C..U+001F separate words for str.split() but not for the tokenizer's regex:
    "!", U+001C, "!" is one piece, so two words would not bound its tokens from below."""
    from kakugo_stages.filters import word_count

    assert word_count("!\x1c!") == 1 and word_count("a\x1fb c") == 2
    backend = counter.tokenizer.backend_tokenizer
    for text in ("!\x1c!", "--\x1d--\x1e--", "a\x1fb c"):
        assert word_count(text) <= len(backend.pre_tokenizer.pre_tokenize_str(text))


def test_seen_prompts_survive_hash_collisions(counter: TokenCounter, monkeypatch) -> None:
    """Prompts are remembered by hash; rows whose keys share a hash are told apart by
    their keys, so a collision never drops a row."""
    import kakugo_stages.mix as mix

    again = " ÌBÉÈRÈ  topics 3 "  # the same words as row 3's, in other case and spacing
    rows = [gen_row(i) for i in range(6)] + [gen_row(3, prompt=again, user=again)]
    rows[-1]["id"] = "topics-999"
    honest = build_mix(rows, [], SETTINGS, MixConfig(), counter, seed=0)
    monkeypatch.setattr(mix, "hash", lambda _key: 0, raising=False)
    colliding = build_mix(rows, [], SETTINGS, MixConfig(), counter, seed=0)
    assert dict(honest.dropped) == dict(colliding.dropped) == {"duplicate_prompt": 1}
    assert [r["id"] for r in colliding.excluded] == ["topics-999"]


def test_mix_rows_format_on_read(counter: TokenCounter) -> None:
    """A split formats its rows when read, the same each time, slices included."""
    from kakugo_stages.mix import generated_conversation, translated_conversation

    cfg = MixConfig(validation_fraction=0)
    mix = build_mix(
        [gen_row(1), gen_row(2, reasoning=None)], [tr_row(1)], SETTINGS, cfg, counter, seed=0
    )
    rows = list(mix.train)
    assert rows == mix.train[:] == [mix.train[i] for i in range(len(mix.train))]
    by_id = {r["id"]: r for r in rows}
    assert by_id["topics-001"]["messages"] == generated_conversation(gen_row(1), cfg)
    assert by_id["topics-001"]["reasoning"] and not by_id["topics-002"]["reasoning"]
    assert by_id["translated-001"]["messages"] == translated_conversation(tr_row(1), cfg)
    assert mix.reasoning_rows == 1


# --------------------------------------------------------------------------- the stage


def test_pipeline_to_dataset_and_the_trainer_sees_the_system_prompt(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    from datasets import load_dataset
    from transformers import AutoTokenizer

    with TeacherServer(scripted_teacher) as srv:
        # All 20 English conversations are sampled; the over-long one is dropped.
        run = translate_spec(srv.url, tmp_path, tokenizer_dir, samples=20)
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
    assert len(ds["train"]) + len(ds["validation"]) == stats["rows_out"] == 53 + 18
    assert stats["kept_by_source"] == {
        "topics": 30,
        "scenarios": 18,
        "contexts": 5,
        "translated": 18,
    }
    assert stats["dropped"] == {"media_tag": 1}
    card = store.read_text("dataset/README.md")
    for text in (
        "Yoruba (yor_Latn)",
        "| translated | 18 | 1 |",
        "| media_tag | 1 |",
        "CC BY-SA 4.0",
        "ODC-By",
        "tokens (student)",
        "## Why rows were dropped",
    ):
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
        obj = {
            "apiVersion": "kakugo.io/v1alpha1",
            "kind": "LanguageModel",
            "metadata": {"name": name, "namespace": "tests"},
            "spec": {
                "language": "Yoruba",
                "teacher": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "m"}},
                "storage": {"uri": str(tmp_path / "runs")},
            },
        }
        run = run_spec(parse_object(obj))
        mix = build_mix(
            [gen_row(i) for i in range(n)],
            [],
            SETTINGS,
            MixConfig(validationFraction=0.0),
            counter,
            seed=1,
        )
        store = open_store(run.run_uri)
        splits = {"train": "dataset/data/train-00000-of-00001.parquet"}
        write_dataset(store, mix, dataset_card(run, mix, "teacher", splits, {}))
        folders[name] = (Path(store.local_path("dataset")), n)
    assert folders["a"][0].name == folders["b"][0].name == "dataset"
    for folder, n in folders.values():
        assert len(load_dataset(str(folder))["train"]) == n
