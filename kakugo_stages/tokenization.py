"""Loading the student's tokenizer (hub id, local folder or s3:// folder) and measuring
or cutting text with it."""

from __future__ import annotations

import tempfile
import threading
from functools import cache
from pathlib import Path
from typing import Any

from kakugo_stages.store import open_store


class TokenizerError(RuntimeError):
    pass


# `kakugo run` runs stages in threads, and transformers' first import is not thread-safe
# (a second thread gets "cannot import name 'AutoTokenizer'"): loads go one at a time.
_LOADING = threading.Lock()


@cache
def load_tokenizer(name_or_path: str, revision: str | None = None) -> Any:
    """A transformers tokenizer; s3:// folders are downloaded to a temp folder first."""
    with _LOADING:
        return _load_tokenizer(name_or_path, revision)


def _load_tokenizer(name_or_path: str, revision: str | None) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the stage images install it
        raise TokenizerError("transformers is not installed: pip install 'kakugo[stages]'") from exc
    source = expand_path(name_or_path)
    if name_or_path.startswith("s3://"):
        dest = Path(tempfile.mkdtemp(prefix="kakugo-tok-"))
        open_store(name_or_path).download_dir("", dest)
        source = str(dest)
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision)
    except Exception as exc:  # transformers raises OSError, ValueError, HF errors...
        raise TokenizerError(
            f"cannot load tokenizer {name_or_path!r}: {exc}. Without network access, set "
            "student.tokenizer (or student.model) to a local folder or an s3:// copy."
        ) from exc


def cut_to_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The longest prefix of `text` that is at most `max_tokens` tokens, cut on a token
    boundary of the original text (not re-decoded, which would normalise it)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_tokens:
        return text
    # A prefix can tokenize differently at its edge (merges, split characters): step back
    # until the cut text itself fits.
    n = max_tokens
    while n > 0:
        cut = text[: offsets[n - 1][1]].rstrip()
        if len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= max_tokens:
            return cut
        n -= 1
    return ""


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts of many texts in one batched call."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def student_tokenizer_name(student: Any) -> str:
    """The student's tokenizer: `student.tokenizer`, else the model's own."""
    return student.tokenizer or student.model


def expand_path(name_or_path: str) -> str:
    """`~/models/x` -> `/home/me/models/x`; hub ids and URIs pass unchanged."""
    return str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
