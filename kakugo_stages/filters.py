"""Row filters of the recipe: pure functions over rows, with batched token counting.

Each check returns the reason a row is dropped, or None. Reasons are short and stable:
they appear in stats, the exclusions file and the dataset card.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kakugo_stages.piece_count import PieceCounter
from kakugo_stages.spec import FilterConfig


@dataclass(frozen=True)
class FilterSettings:
    """What the filters need from the spec, gathered once."""

    min_ratio: float
    max_ratio: float
    media_tags: tuple[str, ...]
    max_tokens: int  # the training cutoff
    template_tokens: int = 5  # tokens the chat template adds per message
    #: Name of the student tokenizer: per-turn counts measured with it upstream are reused.
    tokenizer_name: str | None = None

    @classmethod
    def from_spec(
        cls,
        cfg: FilterConfig,
        cutoff_len: int,
        template_tokens: int = 5,
        tokenizer_name: str | None = None,
    ) -> FilterSettings:
        return cls(
            cfg.min_token_ratio,
            cfg.max_token_ratio,
            tuple(cfg.media_tags),
            cutoff_len,
            template_tokens,
            tokenizer_name,
        )


def has_media(texts: Sequence[str], tags: Sequence[str]) -> bool:
    return any(tag in text for text in texts for tag in tags)


def is_valid_utf8(text: str) -> bool:
    """Encodable as UTF-8 (no lone surrogates) and free of U+FFFD, the mark a decoder leaves
    where it met bytes that were not UTF-8."""
    if text.isascii():  # O(1): CPython knows it
        return True
    if "\ufffd" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_generated(row: dict[str, Any], tags: Sequence[str]) -> str | None:
    """Structure and content of a generated row (before token counting)."""
    response, prompt = row.get("response"), row.get("user", row.get("prompt"))
    # A failed generation is never text (recipe mistake 2: None became "None").
    if response is None or not isinstance(response, str):
        return "failed_generation"
    if not isinstance(prompt, str) or not prompt.strip():
        return "empty_prompt"
    if not response.strip():
        return "empty_response"
    reasoning = row.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        return "failed_generation"
    texts = [prompt, response, reasoning or ""]
    if not all(is_valid_utf8(t) for t in texts):
        return "invalid_utf8"
    if has_media(texts, tags):
        return "media_tag"
    return None


def check_translation(row: dict[str, Any], tags: Sequence[str]) -> str | None:
    """Structure of a translated conversation against its English source."""
    original, translated = row.get("original"), row.get("messages")
    if not isinstance(translated, list) or not all(isinstance(m, dict) for m in translated):
        return "unparsable"
    if not isinstance(original, list) or len(translated) != len(original):
        return "turn_count_mismatch"
    for i, message in enumerate(translated):
        if set(message) != {"role", "content"}:
            return "extra_keys" if {"role", "content"} <= set(message) else "missing_keys"
        if message["role"] != ("user" if i % 2 == 0 else "assistant"):
            return "bad_alternation"
        if not isinstance(message["content"], str):
            return "unparsable"
        if not is_valid_utf8(message["content"]):
            return "invalid_utf8"
    texts = [m["content"] for m in translated] + [m.get("content") or "" for m in original]
    if has_media(texts, tags):
        return "media_tag"
    return None


#: What `check_ratio_bounds` says when bounds cannot decide: count the turns.
UNDECIDED = "undecided"


def check_ratios(
    original_lengths: Sequence[int], translated_lengths: Sequence[int], lo: float, hi: float
) -> str | None:
    """Every turn's translated/original token ratio within [lo, hi]. An empty turn never
    divides by zero: empty on both sides is an empty turn, empty on one side is out of
    range."""
    return check_ratio_bounds(original_lengths, [(t, t) for t in translated_lengths], lo, hi)


def check_ratio_bounds(
    original_lengths: Sequence[int],
    translated_bounds: Sequence[tuple[int, int]],
    lo: float,
    hi: float,
) -> str | None:
    """`check_ratios` over (lower, upper) bounds of the translated turns' counts: the same
    reason (or None) whenever the bounds decide it, else `UNDECIDED`. Turns are judged in
    order, so the first failing turn names the reason either way."""
    for o, (a, b) in zip(original_lengths, translated_bounds, strict=True):
        if o == 0:
            if b == 0:
                return "empty_turn"
            if a >= 1:
                return "token_ratio"
            return UNDECIDED
        if lo <= a / o and b / o <= hi:
            continue
        if b / o < lo or a / o > hi:
            return "token_ratio"
        return UNDECIDED
    return None


def token_bounds(text: str, bounded: bool, size: int | None = None) -> tuple[int, int]:
    """(lower, upper) token count of a text without tokenizing it: exact for an empty text;
    with a `TokenCounter.bounded` tokenizer, at least one token per word (and one for any
    non-empty text) and at most one per byte, +1 for a prefix space. Other tokenizers may
    give a whitespace-only text no token at all, so nothing is known. `size`: the text's
    `utf8_len` if the caller has it."""
    if not text:
        return 0, 0
    if not bounded:
        return 0, 1 << 40
    return max(1, word_count(text)), (utf8_len(text) if size is None else size) + 1


class TokenCounter:
    """Exact token counts of many texts.

    For a GPT-2-style byte-level BPE (SmolLM2's) most texts are counted by a
    `PieceCounter` (the tokenizer's regex in Python's `re`, each distinct piece counted
    once by its BPE model: several times faster on text with diacritics); the rest go to
    the tokenizer in batched calls, bounded so memory stays flat however many texts come
    in. `bounded` says whether `word_count(text) <= tokens <= utf8_len(text) + 1` holds
    for this tokenizer (see `words_bound_tokens`): then a filter can often decide without
    counting.
    """

    BATCH = 2048

    def __init__(self, tokenizer: Any, pieces: bool = True):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(
            tokenizer, "_tokenizer", None
        )
        self._fast = getattr(backend, "encode_batch_fast", None) if backend else None
        self.bounded = backend is not None and words_bound_tokens(backend)
        self.pieces = PieceCounter.for_backend(backend) if backend and pieces else None

    def _batch(self, texts: list[str]) -> list[int]:
        if self._fast is not None:
            # No offsets, no Python lists of ids: several times faster than __call__.
            return [len(e) for e in self._fast(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def __call__(self, texts: Iterable[str]) -> list[int]:
        out: list[int] = []
        batch: list[str] = []
        at: list[int] = []  # where the batch's counts go in `out`
        count = self.pieces.count if self.pieces is not None else None
        for text in texts:
            n = count(text) if count is not None else None
            if n is None:
                at.append(len(out))
                batch.append(text)
                n = -1
            out.append(n)
            if len(batch) == self.BATCH:
                self._flush(batch, at, out)
        if batch:
            self._flush(batch, at, out)
        return out

    def _flush(self, batch: list[str], at: list[int], out: list[int]) -> None:
        for i, n in zip(at, self._batch(batch), strict=True):
            out[i] = n
        batch.clear()
        at.clear()


def utf8_len(text: str) -> int:
    """Bytes of a text in UTF-8: an upper bound of its token count for byte-level BPE and
    SentencePiece tokenizers alike, since every token covers at least one byte."""
    return len(text.encode("utf-8"))


#: Python's str.split() splits at U+001C..U+001F, the tokenizers' regex `\s` does not (they
#: are not Unicode White_Space): "!", U+001C, "!" is one piece to the tokenizer.
_SEPARATORS = str.maketrans("\x1c\x1d\x1e\x1f", "xxxx")


def word_count(text: str) -> int:
    """Whitespace-separated words (Unicode White_Space): a lower bound of the token count
    for tokenizers that split words apart before their model runs (`words_bound_tokens`)."""
    if "\x1c" in text or "\x1d" in text or "\x1e" in text or "\x1f" in text:
        text = text.translate(_SEPARATORS)
    return len(text.split())


#: Texts on which `words_bound_tokens` checks its bounds: scripts, digits, punctuation,
#: runs of spaces and newlines, markup.
_PROBES = (
    "Ẹ kú àárọ̀, ṣé dáadáa ni? Ọjà ńlá wà ní ìlú wa.",
    "The  quick\tbrown fox -- jumped over 12,345 lazy dogs!!!\n\n  Done.",
    "def f(x):\n    return x ** 2  # square\n",
    "Habari za asubuhi? Ninafurahi kukuona.   Karibu sana…",
    "¿Qué tal? Ça va très bien, merci. 日本語のテキスト。 مرحبا بالعالم",
    '<think>\nplan</think>\n\nanswer: [1, 2, 3] {"a": "b"} https://example.com/a?b=c',
)


def words_bound_tokens(backend: Any) -> bool:
    """Whether `word_count(t) <= tokens(t) <= utf8_len(t) + 1` for every text `t`.

    The upper bound holds for byte-level BPE (every token covers at least one byte; +1 for
    a prefix space) without a normalizer that could add bytes. The lower bound holds when
    the pre-tokenizer never joins two whitespace-separated words into one piece (GPT-2's
    regex, or a `Split` regex of that family before a byte-level step) and no added token
    contains whitespace: every word is then at least one token. Known structures only,
    then checked on probe texts; anything else gets False (the filters tokenize).
    """
    try:
        config = json.loads(backend.to_str())
    except (AttributeError, ValueError, TypeError):
        return False
    if config.get("normalizer") is not None or (config.get("model") or {}).get("type") != "BPE":
        return False
    if any(
        any(c.isspace() for c in t.get("content", "")) for t in config.get("added_tokens") or []
    ):
        return False
    pre = config.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        if not pre.get("use_regex", True):
            return False
    elif pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if (
            not steps
            or steps[-1].get("type") != "ByteLevel"
            or any(
                step.get("type") != "Split"
                or step.get("invert")
                or step.get("behavior") != "Isolated"
                for step in steps[:-1]
            )
        ):
            return False
    else:
        return False
    for text in _PROBES:
        # No piece spans two words (offsets are into the original text).
        spans = [text[a:b] for _, (a, b) in backend.pre_tokenizer.pre_tokenize_str(text)]
        if any(word_count(span) > 1 for span in spans):
            return False
        n = len(backend.encode(text, add_special_tokens=False).ids)
        if not word_count(text) <= n <= utf8_len(text) + 1:
            return False
    return True
