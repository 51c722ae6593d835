"""Benchmark: rows/s and peak memory of the filter + mix step over 50,000 rows.

About 35,000 generated rows (5% failed generations) and 15,000 translated conversations
(10% bad translations of every kind the filters know), through `build_mix` (every filter,
batched token counting, formatting, seeded shuffle, split) and the dataset write (parquet
+ card) on a local store. Two kinds of text (`--text`):

- `realistic` (default): text shaped like real teacher output for Yoruba. Prompts,
  answers and context documents are in a Yoruba orthography (tone marks, under-dots,
  syllabic nasals; NFC, NFD and mixed documents, as scraped and generated text mixes
  them), reasoning traces and the translations' sources are English prose (sentences,
  punctuation, numbers, contractions, markdown lists), and a translation has about 1.25
  times the words of its English turn. The tokenizer is SmolLM2's (English-trained
  byte-level BPE, 49,152 tokens) if `make models` has put it in
  `${KAKUGO_CACHE:-~/.cache/kakugo}/models/SmolLM2-135M-Instruct`, else a byte-level BPE
  of the same shape trained here on English-like text (seeded, cached beside the models).
  Every diacritic costs bytes and tokens: a Yoruba word is about 7 bytes and 4 tokens
  (SmolLM2 gives the Yoruba UDHR article 1 4.2 tokens a word, this text 4.2), an English
  one 1.3 tokens.
- `synthetic`: the earlier rows, whose syllables and English words are about one token a
  word, with a byte-level BPE (16k) trained in the script on that text.

    python bench/filter_mix.py [--rows 50000] [--text realistic|synthetic]

The last line is one JSON object with `rows_per_s` (filter + mix + write), `peak_rss_mb`,
`tokenized_mb` (text counted exactly; `tokenizer_mb`: the part the tokenizer itself
counted, the rest went through `PieceCounter`), the text mode and the tokenizer used.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kakugo_stages.filters import FilterSettings, TokenCounter
from kakugo_stages.mix import MixResult, build_mix, write_dataset
from kakugo_stages.spec import MixConfig
from kakugo_stages.store import open_store

# --------------------------------------------------------------------------- synthetic

SYLLABLES = [
    "ba",
    "dá",
    "ẹ",
    "kọ́",
    "lá",
    "mi",
    "nà",
    "ọ",
    "ṣe",
    "tí",
    "wà",
    "yọ",
    "gbé",
    "jẹ",
    "fẹ́",
    "rí",
    "sọ",
    "kú",
    "àá",
    "ìlú",
    "ọjà",
    "èdè",
    "ilé",
    "oúnjẹ",
]
ENGLISH = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "at",
    "an",
    "not",
    "have",
    "which",
    "but",
    "they",
    "his",
    "one",
    "all",
    "were",
    "we",
    "when",
    "there",
    "can",
    "more",
    "if",
    "will",
    "would",
    "water",
    "city",
    "market",
    "language",
    "learn",
    "answer",
    "question",
    "people",
    "country",
    "history",
]


def words(rng: random.Random, n: int, english: bool = False) -> str:
    if english:
        return " ".join(rng.choice(ENGLISH) for _ in range(n))
    return " ".join(
        "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)
    )


def make_rows(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The synthetic rows: as many translated words as English ones, ~1 token a word."""
    rng = random.Random(seed)
    n_gen = round(n * 0.7)
    generated = []
    for i in range(n_gen):
        source = ("topics", "scenarios", "contexts")[i % 3]
        prompt = words(rng, rng.randint(15, 80))
        if source == "contexts":
            prompt = words(rng, rng.randint(200, 600)) + "\n\n" + prompt
        row = {
            "id": f"{source}-{i:06d}",
            "source": source,
            "prompt": prompt,
            "user": prompt,
            "response": words(rng, rng.randint(80, 400)),
            "reasoning": words(rng, rng.randint(50, 300), english=True),
        }
        if rng.random() < 0.05:
            row["response"] = None  # a failed generation
        generated.append(row)
    translated = []
    for i in range(n - n_gen):
        turns = 2 * rng.randint(1, 2)
        original = [
            {
                "role": "user" if t % 2 == 0 else "assistant",
                "content": words(rng, rng.randint(20, 250), english=True),
            }
            for t in range(turns)
        ]
        messages = [
            {"role": m["role"], "content": words(rng, len(m["content"].split()))} for m in original
        ]
        spoil(rng, messages, lambda: words(rng, 1))
        translated.append(
            {
                "id": f"translated-{i:06d}",
                "source": "translated",
                "original": original,
                "messages": messages,
            }
        )
    return generated, translated


def spoil(rng: random.Random, messages: list[dict], one_word) -> None:
    """Make 10% of translations bad, of one of the kinds the filters know."""
    if rng.random() >= 0.10:
        return
    kind = rng.randrange(5)
    if kind == 0:
        del messages[-1]
    elif kind == 1:
        messages[0]["role"] = "assistant"
    elif kind == 2:
        messages[0]["note"] = "translated"
    elif kind == 3:
        messages[-1]["content"] = one_word()
    else:
        messages[0]["content"] += " <image>"


def train_synthetic_tokenizer(generated: list[dict], translated: list[dict]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sample = [r["response"] or "" for r in generated[:3000]] + [
        m["content"] for r in translated[:2000] for m in r["original"]
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        sample,
        trainers.BpeTrainer(
            vocab_size=16_000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok)


# --------------------------------------------------------------------------- realistic


def wordlist(text: str) -> list[str]:
    return text.split()


#: Common English words, most frequent first (sampled with Zipf weights).
EN_WORDS = wordlist("""the of and to a in is that for it as with was on be by this are or from at
an not have which but they his one all were we when there can more if will would their
what about so you it's its been has had do some other into time than them these only
new also people how may like use most first can't don't many water world because each
between through during should well state both way after such example same number part
day year before over any system need help make work called important different find
long right know very still small large while place where life used even those every
answer question learn language country history city market school health family food
energy community children students teacher government money problem change process
means data information result however because both often three two four five years
value level group local family form power public common order point study research
following model support based care market plan area simple clear step steps good
better best main key you're we'll isn't there's example: note: first, second, finally,
""")
EN_LOAN = ["café", "naïve", "résumé", "fiancée", "São", "Zürich", "piñata", "jalapeño",
           "déjà", "façade", "über", "señor", "Pokémon", "—", "’s", "“quoted”", "…"]  # fmt: skip
EN_ONSETS = ["b", "bl", "br", "c", "ch", "cl", "cr", "d", "dr", "f", "fl", "fr", "g", "gl",
             "gr", "h", "j", "k", "l", "m", "n", "p", "ph", "pl", "pr", "qu", "r", "s", "sc",
             "sh", "sl", "sp", "st", "str", "t", "th", "tr", "v", "w", "wh", "y", "z"]  # fmt: skip
EN_VOWELS = ["a", "e", "i", "o", "u", "ea", "ee", "ai", "ou", "io", "y", "a", "e", "i", "o"]
EN_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "nt", "st", "ng", "ck", "ct", "rt",
            "ss", "x"]  # fmt: skip
EN_SUFFIXES = ["", "", "", "tion", "ing", "ed", "er", "ly", "ment", "ness", "ity", "al", "ous",
               "ive", "able", "s"]  # fmt: skip

#: Common Yoruba words (NFC), most frequent first: function words, then content words.
YO_WORDS = wordlist("""ní ti àti ó sí wọ́n kí ṣe jẹ́ fún pé ni kò yìí náà rẹ̀ mi wa a tí bí lè máa
gbogbo àwọn ń ọ̀pọ̀lọpọ̀ nǹkan ènìyàn láti lórí inú nígbà tàbí ṣùgbọ́n nítorí pẹ̀lú wà
kan òun ìyẹn bẹ́ẹ̀ gẹ́gẹ́ jù lọ dára púpọ̀ mọ̀ sọ rí fẹ́ gbà lọ́wọ́ ọ̀nà ìgbà ọjọ́ ọdún ọmọ
iṣẹ́ ìjọba orílẹ̀-èdè owó ìbéèrè ìdáhùn ẹ̀kọ́ ìmọ̀ sáyẹ́nsì pàtàkì ilé omi ìlú ọjà èdè
oúnjẹ àkókò ìwé ayé ara ìlera àìsàn oògùn dókítà olùkọ́ akẹ́kọ̀ọ́ ilé-ìwé ìtàn àṣà ẹ̀sìn
ọ̀rọ̀ èrò ìdàgbàsókè ètò ọrọ̀-ajé ìṣòro ojútùú àpẹẹrẹ àlàyé kọ̀ǹpútà fóònù ẹ̀rọ agbára
oòrùn òjò afẹ́fẹ́ igbó odò òkun ilẹ̀ oko àgbẹ̀ ọ̀gbìn ìdílé bàbá ìyá ọkọ aya ọ̀rẹ́ tuntun
àtijọ́ kékeré ńlá gíga díẹ̀ ṣáájú lẹ́yìn báyìí lónìí ọ̀la àná dáadáa yàtọ̀ kọ̀ọ̀kan àkọ́kọ́
kejì kẹta Yorùbá Nàìjíríà Èkó Ìbàdàn ṣàlàyé ṣàpèjúwe kọ́ kà kọ gbọ́ wò jẹ mu sùn jí rìn
ra tà ṣiṣẹ́ ràn bẹ̀rẹ̀ parí dáhùn béèrè ronú gbàgbọ́ nílò lò ìrànlọ́wọ́ ìbáṣepọ̀ àjọṣepọ̀
ìfẹ́ àlàáfíà ìdájọ́ òfin ẹ̀tọ́ ojúṣe ìgbésẹ̀ àkọsílẹ̀ ìpínlẹ̀ agbègbè ọ̀jọ̀gbọ́n ìwádìí
""")
YO_ONSETS = ["b", "d", "f", "g", "gb", "h", "j", "k", "l", "m", "n", "p", "r", "s", "ṣ", "t",
             "w", "y", "", ""]  # fmt: skip
YO_VOWELS = ["a", "e", "ẹ", "i", "o", "ọ", "u", "a", "i", "o"]
YO_TONES = ["\u0301", "\u0300", "", ""]  # high, low, mid (unmarked) twice as often


def zipf_sampler(vocab: list[str], rng: random.Random, s: float = 1.0):
    """`draw(k)`: k words of `vocab`, the i-th with weight 1 / (i + 1) ** s."""
    cum = list(itertools.accumulate(1 / (i + 1) ** s for i in range(len(vocab))))

    def draw(k: int) -> list[str]:
        total = cum[-1]
        return [vocab[bisect.bisect(cum, rng.random() * total)] for _ in range(k)]

    return draw


class RealisticText:
    """Seeded English and Yoruba prose with sentences, punctuation, numbers, lists."""

    def __init__(self, seed: int) -> None:
        self.rng = rng = random.Random(seed)
        en_tail = sorted({self._en_word() for _ in range(40_000)})
        rng.shuffle(en_tail)
        yo_tail = sorted({self._yo_word() for _ in range(40_000)})
        rng.shuffle(yo_tail)
        self.en_common = zipf_sampler(EN_WORDS, rng)
        self.en_tail = zipf_sampler(en_tail, rng, 0.8)
        self.yo_common = zipf_sampler(YO_WORDS, rng)
        self.yo_tail = zipf_sampler(yo_tail, rng, 0.8)

    def _en_word(self) -> str:
        r = self.rng
        stem = "".join(
            r.choice(EN_ONSETS) + r.choice(EN_VOWELS) + r.choice(EN_CODAS)
            for _ in range(r.choice((1, 1, 1, 2, 2)))
        )
        return stem + r.choice(EN_SUFFIXES)

    def _yo_word(self) -> str:
        r = self.rng
        word = "".join(
            r.choice(YO_ONSETS) + r.choice(YO_VOWELS) + r.choice(YO_TONES)
            for _ in range(r.choice((1, 2, 2, 3, 3, 4)))
        )
        return unicodedata.normalize("NFC", word)

    def _words(self, n: int, english: bool) -> list[str]:
        r = self.rng
        common, tail = (self.en_common, self.en_tail) if english else (self.yo_common, self.yo_tail)
        out = common(n)
        rare = 0.05 if english else 0.14  # English prose reuses its words more
        for i in range(n):
            x = r.random()
            if x < rare:
                out[i] = tail(1)[0]
            elif x < rare + 0.02:
                out[i] = str(r.choice((r.randint(1, 99), r.randint(1900, 2025), r.random() * 100)))
                out[i] = out[i][:5]
            elif english and x < rare + 0.023:
                out[i] = r.choice(EN_LOAN)
            elif x < rare + 0.03:
                out[i] = r.choice(("Lagos", "COVID-19", "UNESCO", "Python", "Africa", "%"))
        return out

    def prose(self, n: int, english: bool) -> str:
        """About `n` words in paragraphs of sentences; some paragraphs are lists."""
        r = self.rng
        words = self._words(n, english)
        paragraphs, sentences, i = [], [], 0
        listing = False
        while i < len(words):
            k = r.randint(6, 24)
            sentence = words[i : i + k]
            i += k
            sentence[0] = sentence[0][:1].upper() + sentence[0][1:]
            for j in range(len(sentence) - 1):
                if r.random() < 0.07:
                    sentence[j] += r.choice((",", ",", ";", ":"))
                elif r.random() < 0.01:
                    sentence[j] = f"**{sentence[j]}**"
            text = " ".join(sentence) + r.choice((".", ".", ".", "?", ":", "!"))
            sentences.append(f"{'- ' if r.random() < 0.5 else '1. '}{text}" if listing else text)
            if r.random() < 0.25 or i >= len(words):
                paragraphs.append(("\n" if listing else " ").join(sentences))
                sentences, listing = [], r.random() < 0.15
        return "\n\n".join(paragraphs)

    def yoruba(self, n: int) -> str:
        """Yoruba prose: most documents NFC, some NFD (as decomposed input often comes),
        some mixed (pieces pasted from both)."""
        text = self.prose(n, english=False)
        form = self.rng.random()
        if form < 0.2:
            return unicodedata.normalize("NFD", text)
        if form < 0.3:
            return " ".join(
                unicodedata.normalize("NFD", w) if self.rng.random() < 0.5 else w
                for w in text.split(" ")
            )
        return text

    def english(self, n: int) -> str:
        return self.prose(n, english=True)


def make_realistic_rows(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Rows of the same shape as `make_rows`, with Yoruba and English text that costs
    tokens as real text does; 1% of generated prompts repeat an earlier one."""
    text = RealisticText(seed)
    rng = random.Random(seed + 1)
    n_gen = round(n * 0.7)
    generated: list[dict] = []
    for i in range(n_gen):
        source = ("topics", "scenarios", "contexts")[i % 3]
        if generated and rng.random() < 0.01:
            prompt = rng.choice(generated)["prompt"]
        else:
            prompt = text.yoruba(rng.randint(15, 80))
            if source == "contexts":
                prompt = text.yoruba(rng.randint(200, 600)) + "\n\n" + prompt
        row = {
            "id": f"{source}-{i:06d}",
            "source": source,
            "prompt": prompt,
            "user": prompt,
            "response": text.yoruba(rng.randint(80, 400)),
            "reasoning": text.english(rng.randint(50, 300)),
        }
        if rng.random() < 0.05:
            row["response"] = None  # a failed generation
        generated.append(row)
    translated = []
    for i in range(n - n_gen):
        turns = 2 * rng.randint(1, 2)
        sizes = [rng.randint(20, 250) for _ in range(turns)]
        original = [
            {"role": "user" if t % 2 == 0 else "assistant", "content": text.english(k)}
            for t, k in enumerate(sizes)
        ]
        # A translation has about 1.25 times the words of its source turn.
        ratios = [min(1.6, max(0.9, rng.gauss(1.25, 0.12))) for _ in sizes]
        messages = [
            {"role": m["role"], "content": text.yoruba(max(1, round(k * x)))}
            for m, k, x in zip(original, sizes, ratios, strict=True)
        ]
        spoil(rng, messages, lambda: text.yoruba(1))
        translated.append(
            {
                "id": f"translated-{i:06d}",
                "source": "translated",
                "original": original,
                "messages": messages,
            }
        )
    return generated, translated


# --------------------------------------------------------------------------- tokenizers

SMOLLM2 = "SmolLM2-135M-Instruct"
TRAINED_VERSION = "english-bpe-49152-v1"


def cache_root() -> Path:
    return Path(os.environ.get("KAKUGO_CACHE") or "~/.cache/kakugo").expanduser()


def train_english_tokenizer(path: Path) -> None:
    """A byte-level BPE of SmolLM2's shape (GPT-2 pre-tokenizer, 49,152 tokens) trained on
    seeded English-like prose with a few accented loanwords and typographic marks, as an
    English web corpus has. Run in a child process, so its memory is not the bench's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = RealisticText(seed=12345)
    corpus = [text.english(random.Random(i).randint(50, 400)) for i in range(30_000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=49_152,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)


def realistic_tokenizer(choice: str):
    """(tokenizer, name, description): SmolLM2's if present (or required), else trained."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = cache_root() / "models" / SMOLLM2
    if choice in ("auto", "smollm2") and (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder), SMOLLM2, f"{SMOLLM2} ({folder})"
    if choice == "smollm2":
        sys.exit(f"no {SMOLLM2} tokenizer in {folder}: run `make models`")
    path = cache_root() / "bench" / f"{TRAINED_VERSION}.json"
    if not path.is_file():
        subprocess.run([sys.executable, __file__, "--train-tokenizer", str(path)], check=True)
    why = "" if choice == "trained" else f"; no {SMOLLM2} in {folder}"
    return (
        PreTrainedTokenizerFast(tokenizer_file=str(path)),
        TRAINED_VERSION,
        f"byte-level BPE of SmolLM2's shape trained on English-like text ({path}{why})",
    )


# --------------------------------------------------------------------------- measuring


class MeasuredCounter(TokenCounter):
    """Records the UTF-8 bytes it counts (`counted`, the filter's real work) and those it
    hands to the tokenizer (`tokenized`)."""

    counted = tokenized = 0

    def __call__(self, texts):
        def measured():
            for text in texts:
                self.counted += len(text.encode())
                yield text

        return super().__call__(measured())

    def _batch(self, texts: list[str]) -> list[int]:
        self.tokenized += sum(len(t.encode()) for t in texts)
        return super()._batch(texts)


def utf8(row: dict) -> int:
    """Bytes of a row's text fields (what the filters may have to tokenize)."""
    texts = [row.get(k) for k in ("prompt", "response", "reasoning")]
    texts += [m.get("content") for m in row.get("messages") or []]
    return sum(len(t.encode()) for t in texts if isinstance(t, str))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--text", choices=("realistic", "synthetic"), default="realistic")
    parser.add_argument(
        "--tokenizer",
        choices=("auto", "smollm2", "trained"),
        default="auto",
        help="Realistic text: SmolLM2's tokenizer if present (auto), required, or the "
        "English byte-level BPE trained here.",
    )
    parser.add_argument(
        "--no-upstream-counts",
        action="store_true",
        help="Rows without the English turns' token counts: the filter measures them too.",
    )
    parser.add_argument(
        "--no-bounds",
        action="store_true",
        help="Count every translated turn (as for a tokenizer the word/byte bounds do not "
        "hold for, or text where they decide nothing).",
    )
    parser.add_argument(
        "--no-pieces",
        action="store_true",
        help="Count with the tokenizer only (no PieceCounter), as before it existed.",
    )
    parser.add_argument("--train-tokenizer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_tokenizer:
        train_english_tokenizer(args.train_tokenizer)
        return

    if args.text == "synthetic":
        generated, translated = make_rows(args.rows)
        tokenizer = train_synthetic_tokenizer(generated, translated)
        name, described = "bench-bpe", "byte-level BPE (16k) trained on the synthetic rows"
    else:
        tokenizer, name, described = realistic_tokenizer(args.tokenizer)
        generated, translated = make_realistic_rows(args.rows)
    settings = FilterSettings(
        0.75, 25.0, ("<image>", "<video>", "<audio>"), 8000, tokenizer_name=name
    )
    counter = MeasuredCounter(tokenizer, pieces=not args.no_pieces)
    counter.bounded = counter.bounded and not args.no_bounds
    print(f"text:               {args.text}")
    print(f"tokenizer:          {described}")
    print(
        f"                    word/byte bounds apply: {counter.bounded}; "
        f"pieces counted in Python: {counter.pieces is not None}"
    )
    upstream = time.perf_counter()
    if not args.no_upstream_counts:
        # What the translate stage stores with each row: the English turns' token counts,
        # measured when it samples them (it waits on the teacher for hours after that).
        counts = iter(counter([m["content"] for r in translated for m in r["original"]]))
        for r in translated:
            r["original_tokens"] = [next(counts) for _ in r["original"]]
            r["original_tokenizer"] = name
    upstream = time.perf_counter() - upstream
    rss_input = rss_mb()
    counter.counted = counter.tokenized = 0

    start = time.perf_counter()
    cpu = time.process_time()
    mix: MixResult = build_mix(generated, translated, settings, MixConfig(), counter, seed=0)
    t_mix = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(open_store(tmp), mix, "# bench\n")
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu

    total = len(generated) + len(translated)
    text_mb = sum(utf8(r) for r in generated) + sum(utf8(r) for r in translated)
    print(
        f"rows in:            {total:>8} ({len(generated)} generated, {len(translated)} translated)"
    )
    print(f"rows kept:          {mix.rows:>8}  dropped: {dict(mix.dropped)}")
    print(f"filter + mix:       {t_mix:8.2f} s  ({total / t_mix:,.0f} rows/s)")
    print(f"+ dataset write:    {elapsed:8.2f} s  ({total / elapsed:,.0f} rows/s), CPU {cpu:.2f} s")
    if not args.no_upstream_counts:
        print(f"(translate stage:   {upstream:8.2f} s measuring the English turns, not counted)")
    print(
        f"counted:            {counter.counted / 1e6:8.1f} MB of {text_mb / 1e6:.1f} MB of text "
        f"({counter.tokenized / 1e6:.1f} MB by the tokenizer)"
    )
    peak = peak_rss_mb()
    print(f"peak RSS:           {peak:8.0f} MB (RSS with the input rows built: {rss_input:.0f})")
    print(
        json.dumps(
            {
                "text": args.text,
                "tokenizer": name,
                "rows": total,
                "rows_per_s": round(total / elapsed),
                "mix_rows_per_s": round(total / t_mix),
                "seconds": round(elapsed, 2),
                "cpu_seconds": round(cpu, 2),
                "peak_rss_mb": round(peak),
                "input_rss_mb": round(rss_input),
                "kept": mix.rows,
                "tokenized_mb": round(counter.counted / 1e6, 1),
                "tokenizer_mb": round(counter.tokenized / 1e6, 1),
                "text_mb": round(text_mb / 1e6, 1),
                "dropped": dict(mix.dropped),
            }
        )
    )


if __name__ == "__main__":
    main()
