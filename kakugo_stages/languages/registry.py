"""The language registry: one table of names, aliases and codes, with helpful errors.

The data lives in ``languages.tsv`` beside this module (tab-separated, UTF-8, one header
line, one language variant per row). It is the single source of truth and is checked by
hand: there is no generator. Columns:

``flores_code``
    FLORES-200 code (``yor_Latn``): ISO 639-3 + ``_`` + ISO 15924 script. Languages that
    are not in FLORES-200 still get a code of that shape (``chv_Cyrl``, ``sdh_Arab``, the
    romanized Belebele variants such as ``hin_Latn``). Unique; it is ``Language.code``.
``name``
    English name. ``aliases``: ``|``-separated other English names and endonyms.
``iso639_1``
    Two-letter code of the row's language, or empty. Script variants of one language
    carry the same code (``zh`` on ``zho_Hans`` and ``zho_Hant``).
``iso639_3``
    Three-letter code, the first part of ``flores_code``.
``script``
    ISO 15924 script code.
``fineweb2``
    The ``HuggingFaceFW/fineweb-2`` config (subset) name, or empty where FineWeb-2 has no
    subset for the language (English: FineWeb-2 excludes it). It is not always equal to the
    FLORES code: ``pes_Arab`` -> ``fas_Arab``, ``est_Latn`` -> ``ekk_Latn``, ``tgl_Latn``
    -> ``fil_Latn``, ``grn_Latn`` -> ``gug_Latn``, ``zho_Hans`` -> ``cmn_Hani``.
``flores200``, ``sib200``, ``belebele``
    ``1``/``0``: covered by FLORES-200 (204 variants), SIB-200 (205: FLORES-200 plus
    ``nqo_Nkoo``), Belebele (122 variants; its config name is the FLORES code).
``global_mmlu``
    The ``CohereForAI/Global-MMLU`` config name (``yo``), or empty (42 languages).
``extra_codes``
    ``|``-separated other codes that resolve to this row: macrolanguage codes (``swa`` ->
    Swahili ``swh_Latn``, ``fas``/``per`` -> ``pes_Arab``, ``msa`` -> ``zsm_Latn``),
    ISO 639-2/B codes (``ger``, ``fre``) and the like; only where unambiguous.
``default``
    ``1`` on the one row that wins when a query matches several rows equally well, ``0``
    elsewhere. Only script variants of one language use it: the standard script beats a
    romanization (``hin_Deva`` over ``hin_Latn``, ``arb_Arab`` over ``arb_Latn``) and
    Simplified Chinese beats Traditional (``zh``, ``zho``, ``cmn_Hani`` -> ``zho_Hans``).
    Languages that FLORES-200 ships in two equal scripts (``ace``, ``bjn``, ``kas``,
    ``knc``, ``min``, ``taq``) have no default: ``resolve("ace")`` is ambiguous and the
    error names both rows.

Resolution (``resolve``), on a normalized query (see ``normalize``):

1. a FLORES code (``yor_Latn``, ``yor-latn``, ``YOR_LATN``) is an exact hit;
2. then any other code: ISO 639-1, ISO 639-3, an extra code, a FineWeb-2 config name;
3. then an English name or alias, with or without diacritics.

Within the first tier that matches, one row wins; several rows win only through the
``default`` column, otherwise ``AmbiguousLanguageError`` lists every candidate. No match
at all raises ``UnknownLanguageError`` with the closest names as suggestions.
"""

import csv
import difflib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = [
    "TASKS",
    "AmbiguousLanguageError",
    "Language",
    "LanguageError",
    "UnknownLanguageError",
    "all_languages",
    "normalize",
    "resolve",
    "search",
]

TASKS: tuple[str, ...] = ("flores200", "sib200", "belebele", "global_mmlu")
"""Evaluation tasks the registry knows coverage for, in report order."""

COLUMNS: tuple[str, ...] = (
    "flores_code",
    "name",
    "aliases",
    "iso639_1",
    "iso639_3",
    "script",
    "fineweb2",
    "flores200",
    "sib200",
    "belebele",
    "global_mmlu",
    "extra_codes",
    "default",
)

_DATA_FILE = "languages.tsv"
_MAX_SUGGESTIONS = 5
_DEFAULT_SEARCH_LIMIT = 10


@dataclass(frozen=True, slots=True)
class Language:
    """One row of the registry: a language in one script."""

    code: str
    name: str
    aliases: tuple[str, ...]
    iso639_1: str | None
    iso639_3: str
    script: str
    fineweb2: str | None
    flores200: bool
    sib200: bool
    belebele: bool
    global_mmlu: str | None
    extra_codes: tuple[str, ...]
    default: bool = False

    @property
    def tasks(self) -> tuple[str, ...]:
        """The evaluation tasks that cover this language, among ``TASKS``."""
        covered = {
            "flores200": self.flores200,
            "sib200": self.sib200,
            "belebele": self.belebele,
            "global_mmlu": self.global_mmlu is not None,
        }
        return tuple(task for task in TASKS if covered[task])

    @property
    def label(self) -> str:
        """``"Yoruba (yor_Latn)"``: how messages name a language."""
        return f"{self.name} ({self.code})"

    @property
    def names(self) -> tuple[str, ...]:
        """The name followed by every alias."""
        return (self.name, *self.aliases)

    @property
    def codes(self) -> tuple[str, ...]:
        """Every code that can resolve to this row, the FLORES code first, no repeats."""
        found = [self.code, self.iso639_1, self.iso639_3, *self.extra_codes, self.fineweb2]
        return tuple(dict.fromkeys(c for c in found if c))

    @property
    def belebele_config(self) -> str | None:
        """The ``facebook/belebele`` config name (the FLORES code), if Belebele covers it."""
        return self.code if self.belebele else None

    def __str__(self) -> str:
        return self.label


class LanguageError(ValueError):
    """A language query that does not name exactly one language."""


class UnknownLanguageError(LanguageError):
    """No language matches the query. ``suggestions`` holds the closest ones."""

    def __init__(self, query: str, suggestions: Iterable[Language] = ()) -> None:
        self.query = query
        self.suggestions = tuple(suggestions)
        message = f"unknown language {query!r}"
        if self.suggestions:
            message += "; did you mean " + ", ".join(s.label for s in self.suggestions) + "?"
        else:
            message += "."
        hint = f"kakugo languages {_shell_word(query)}" if query.strip() else "kakugo languages"
        message += f" Run `{hint}` to search the known languages by name, alias or code."
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.query, self.suggestions))


class AmbiguousLanguageError(LanguageError):
    """The query matches several languages equally well. ``candidates`` lists them."""

    def __init__(self, query: str, candidates: Iterable[Language]) -> None:
        self.query = query
        self.candidates = tuple(candidates)
        listed = ", ".join(c.label for c in self.candidates)
        example = self.candidates[0].code if self.candidates else "yor_Latn"
        message = (
            f"language {query!r} is ambiguous: it matches {listed}. "
            f"Use the code of the one you mean, e.g. {example!r}."
        )
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.query, self.candidates))


# --------------------------------------------------------------------------- normalizing

# Letters that NFKD does not split into base + mark, folded to what people type instead.
_FOLD = str.maketrans(
    {
        "ø": "o",
        "ł": "l",
        "đ": "d",
        "ð": "d",
        "þ": "th",
        "æ": "ae",
        "œ": "oe",
        "ı": "i",
        "ʋ": "v",
        "ɓ": "b",
        "ɗ": "d",
        "ƙ": "k",
        "ƴ": "y",
        "ŋ": "ng",
        "ɛ": "e",
        "ɔ": "o",
    }
)
_APOSTROPHES = re.compile(r"['`´ʹʻʼʽ‘’]")
_SEPARATORS = re.compile(r"[\s\-_]+")


def normalize(text: str) -> str:
    """The form names and codes are compared in.

    NFKD, drop nonspacing marks (diacritics), casefold, fold a few letters without a
    decomposition (``ø`` -> ``o``), drop apostrophes, turn other punctuation into spaces,
    and collapse runs of whitespace, ``-`` and ``_`` into one space. ``"Yorùbá"``,
    ``"YORUBA"`` and ``" yoruba "`` all become ``"yoruba"``; ``"yor_Latn"`` and
    ``"yor-latn"`` become ``"yor latn"``.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    folded = _APOSTROPHES.sub("", kept.casefold().translate(_FOLD))
    spaced = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in folded)
    return _SEPARATORS.sub(" ", spaced).strip()


def _shell_word(text: str) -> str:
    word = " ".join(text.split())
    if re.fullmatch(r"[\w.\-]+", word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


# ------------------------------------------------------------------------------- loading


def _split(cell: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in cell.split("|") if part.strip())


def _flag(cell: str, column: str, line: int) -> bool:
    if cell not in ("0", "1"):
        raise ValueError(
            f"{_DATA_FILE} line {line}: column {column!r} must be 0 or 1, got {cell!r}"
        )
    return cell == "1"


def _parse(text: str) -> tuple[Language, ...]:
    rows = csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = tuple(next(rows, ()))
    if header != COLUMNS:
        raise ValueError(f"{_DATA_FILE}: header must be {COLUMNS!r}, got {header!r}")
    languages: list[Language] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(COLUMNS):
            raise ValueError(
                f"{_DATA_FILE} line {line}: expected {len(COLUMNS)} tab-separated columns, "
                f"got {len(row)}"
            )
        cell = dict(zip(COLUMNS, (c.strip() for c in row), strict=True))
        code = cell["flores_code"]
        if not re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", code):
            raise ValueError(f"{_DATA_FILE} line {line}: bad flores_code {code!r}")
        if code in seen:
            raise ValueError(f"{_DATA_FILE} line {line}: {code} repeats line {seen[code]}")
        seen[code] = line
        if not cell["name"]:
            raise ValueError(f"{_DATA_FILE} line {line}: {code} has no name")
        languages.append(
            Language(
                code=code,
                name=cell["name"],
                aliases=_split(cell["aliases"]),
                iso639_1=cell["iso639_1"] or None,
                iso639_3=cell["iso639_3"],
                script=cell["script"],
                fineweb2=cell["fineweb2"] or None,
                flores200=_flag(cell["flores200"], "flores200", line),
                sib200=_flag(cell["sib200"], "sib200", line),
                belebele=_flag(cell["belebele"], "belebele", line),
                global_mmlu=cell["global_mmlu"] or None,
                extra_codes=_split(cell["extra_codes"]),
                default=_flag(cell["default"], "default", line),
            )
        )
    return tuple(languages)


@cache
def all_languages() -> tuple[Language, ...]:
    """Every language in the registry, in table order (by FLORES code). Loaded once."""
    text = resources.files(__package__).joinpath(_DATA_FILE).read_text(encoding="utf-8")
    return _parse(text)


@dataclass(frozen=True, slots=True)
class _Index:
    flores: dict[str, Language]
    codes: dict[str, tuple[Language, ...]]
    names: dict[str, tuple[Language, ...]]


def _group(pairs: Iterable[tuple[str, Language]]) -> dict[str, tuple[Language, ...]]:
    grouped: dict[str, dict[str, Language]] = {}
    for key, lang in pairs:
        if key:
            grouped.setdefault(key, {})[lang.code] = lang
    return {key: tuple(by_code.values()) for key, by_code in grouped.items()}


@cache
def _index() -> _Index:
    langs = all_languages()
    flores = {normalize(lang.code): lang for lang in langs}
    codes = _group((normalize(code), lang) for lang in langs for code in lang.codes[1:])
    names = _group((normalize(name), lang) for lang in langs for name in lang.names)
    return _Index(flores=flores, codes=codes, names=names)


# ----------------------------------------------------------------------------- resolving


def _pick(query: str, candidates: tuple[Language, ...]) -> Language:
    if len(candidates) == 1:
        return candidates[0]
    defaults = [lang for lang in candidates if lang.default]
    if len(defaults) == 1:
        return defaults[0]
    raise AmbiguousLanguageError(query, candidates)


def resolve(query: str) -> Language:
    """The one language ``query`` names: a FLORES code, another code, a name or an alias.

    Case, diacritics, extra spaces, ``-`` and ``_`` do not matter. Raises
    ``UnknownLanguageError`` (with the closest matches) or ``AmbiguousLanguageError`` (with
    every candidate); both are ``ValueError``.
    """
    if not isinstance(query, str):
        raise TypeError(f"language must be a string, got {type(query).__name__}")
    key = normalize(query)
    if not key:
        raise UnknownLanguageError(query)
    index = _index()
    if key in index.flores:
        return index.flores[key]
    for table in (index.codes, index.names):
        if key in table:
            return _pick(query, table[key])
    raise UnknownLanguageError(query, _suggest(query))


def _suggest(query: str) -> list[Language]:
    """Closest languages for an error message: ``search``, or failing that looser spelling."""
    found = search(query, limit=_MAX_SUGGESTIONS)
    if found:
        return found
    whole: dict[str, list[Language]] = {}
    word: dict[str, list[Language]] = {}
    for lang in all_languages():
        for name in map(normalize, lang.names):
            whole.setdefault(name, []).append(lang)
            for part in name.split():
                word.setdefault(part, []).append(lang)
    texts = whole.keys() | word.keys()
    close = difflib.get_close_matches(normalize(query), texts, n=_MAX_SUGGESTIONS, cutoff=0.65)
    # A text that is a whole name ("arabic") names its language before the languages that
    # merely contain it as a word ("Egyptian Arabic").
    ranked = [lang for text in close for lang in (*whole.get(text, ()), *word.get(text, ()))]
    return list(dict.fromkeys(ranked))[:_MAX_SUGGESTIONS]


# ----------------------------------------------------------------------------- searching


def _similarity(key: str, text: str) -> float:
    matcher = difflib.SequenceMatcher(None, key, text, autojunk=False)
    if matcher.real_quick_ratio() < 0.8 or matcher.quick_ratio() < 0.8:
        return 0.0
    return matcher.ratio()


def _score(key: str, lang: Language) -> float:
    code_keys = [normalize(c) for c in lang.codes]
    name_keys = [normalize(n) for n in lang.names]
    if key == code_keys[0]:
        return 100.0
    if key in code_keys[1:]:
        return 95.0 + lang.default
    if key == name_keys[0]:
        return 90.0 + lang.default
    if key in name_keys:
        return 85.0 + lang.default
    if any(n.startswith(key) for n in name_keys):
        return 70.0
    if any(c.startswith(key) for c in code_keys):
        return 65.0
    words = [w for n in name_keys for w in n.split()]
    if any(w.startswith(key) for w in words):
        return 60.0
    if any(key in n for n in name_keys):
        return 50.0
    # Close spellings of a whole name or of one of its words. Below 0.8 short words match
    # too easily ("kurd" vs "urdu" is 0.75).
    fuzzy = max((_similarity(key, text) for text in (*name_keys, *words)), default=0.0)
    return 40.0 * fuzzy if fuzzy >= 0.8 else 0.0


def search(query: str, limit: int | None = None) -> list[Language]:
    """Languages matching ``query`` by name, alias or code, best first.

    Exact codes and names rank first, then prefixes, then substrings, then close
    spellings (``"Yorubba"`` finds Yoruba). An empty query lists every language by name.
    ``limit`` caps the result: by default 10 for a query, no cap for an empty one.
    """
    key = normalize(query)
    if not key:
        everything = sorted(all_languages(), key=lambda lang: (normalize(lang.name), lang.code))
        return everything if limit is None else everything[: max(limit, 0)]
    scored = [(score, lang) for lang in all_languages() if (score := _score(key, lang)) > 0]
    scored.sort(key=lambda item: (-item[0], normalize(item[1].name), item[1].code))
    cap = _DEFAULT_SEARCH_LIMIT if limit is None else max(limit, 0)
    return [lang for _, lang in scored[:cap]]
