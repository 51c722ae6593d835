"""The language registry: names, aliases and codes of every language Kakugo knows.

``resolve("Yoruba")``, ``resolve("yo")`` and ``resolve("yor_Latn")`` all give the same
``Language``; ``search("yor")`` feeds ``kakugo languages QUERY``. See ``registry`` for the
data columns and the resolution rules.
"""

from kakugo_stages.languages.registry import (
    TASKS,
    AmbiguousLanguageError,
    Language,
    LanguageError,
    UnknownLanguageError,
    all_languages,
    normalize,
    resolve,
    search,
)

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
