"""The review's two steps on a run's store: build the page (`review/index.html` and its
key `review/key.json`), and import raters' files (`evaluation/review.json`, the model
card's "Human review" section)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kakugo_stages.chat_format import load_chat_template
from kakugo_stages.resolved import RunSpec
from kakugo_stages.review.answers import generate_answers
from kakugo_stages.review.page import build_page
from kakugo_stages.review.prompts import ReviewError, held_out_prompts
from kakugo_stages.review.results import markdown, merge, read_rater_file
from kakugo_stages.spec import ReviewSpec
from kakugo_stages.store import ArtifactNotFound, ArtifactStore, StoreError, open_store
from kakugo_stages.tokenization import expand_path

PAGE = "review/index.html"
KEY = "review/key.json"
RESULTS = "evaluation/review.json"
MODEL = "model"
MODEL_CARD = "model/README.md"
START, END = "<!-- kakugo:review -->", "<!-- /kakugo:review -->"


@contextmanager
def _model_folder(store: ArtifactStore, uri: str | None, what: str) -> Iterator[str]:
    """A local folder (or hub id) for a model: the run's model/ (uri None) or student.model."""
    if uri is not None and not uri.startswith("s3://"):
        yield expand_path(uri)
        return
    source = store if uri is None else open_store(uri)
    prefix = MODEL if uri is None else ""
    local = source.local_path(prefix)
    if local is not None:
        yield str(local)
        return
    with tempfile.TemporaryDirectory(prefix="kakugo-review-") as tmp:
        try:
            yield str(source.download_dir(prefix, Path(tmp) / "model"))
        except StoreError as exc:
            raise ReviewError(f"cannot download {what}: {exc}") from exc


def build_review(run: RunSpec, store: ArtifactStore, settings: ReviewSpec) -> dict[str, Any]:
    """Write the page and its key; return a summary (prompts, dropped, page URL)."""
    prompts, dropped = held_out_prompts(store, settings.prompts, settings.seed)
    if not prompts:
        raise ReviewError(
            "every validation prompt also occurs in the train split: there is nothing held "
            "out to show (raise data.mix.validationFraction)"
        )
    student = run.spec.student
    try:
        template = load_chat_template(student.chat_template)
    except (OSError, ValueError) as exc:
        raise ReviewError(f"student.chatTemplate: {exc}") from exc
    common: dict[str, Any] = {
        "chat_template": template,
        "system_prompt": run.spec.data.mix.concise_system_prompt,
        "max_new_tokens": settings.max_new_tokens,
        "repetition_penalty": settings.repetition_penalty,
        "device": settings.device,
    }
    if not store.exists(f"{MODEL}/config.json"):
        raise ReviewError(f"no trained model at {store.url(MODEL)}: run the train stage first")
    with _model_folder(store, None, "the tuned model") as tuned_dir:
        tuned = generate_answers(tuned_dir, tuned_dir, prompts, **common)
    with _model_folder(store, student.model, "student.model") as base_dir:
        tokenizer = expand_path(student.tokenizer) if student.tokenizer else base_dir
        base = generate_answers(base_dir, tokenizer, prompts, revision=student.revision, **common)
    page = build_page(
        prompts,
        tuned,
        base,
        seed=settings.seed,
        run=store.url(),
        language=run.language.name,
        code=run.language.code,
    )
    store.write_json(KEY, page.key)
    store.write_text(PAGE, page.html)
    return {
        "prompts": len(prompts),
        "dropped_as_trained": dropped,
        "page": store.url(PAGE),
        "page_id": page.key["page"],
    }


def _section(card: str, body: str) -> str:
    block = f"{START}\n{body.strip()}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(card):
        return pattern.sub(lambda _: block, card, count=1)
    return card.rstrip() + f"\n\n## Human review\n\n{block}\n"


def import_reviews(store: ArtifactStore, files: list[Path]) -> dict[str, Any]:
    """Merge raters' files with the page's key into evaluation/review.json; add the result
    to the model card. Returns the review."""
    try:
        key = store.read_json(KEY)
    except ArtifactNotFound:
        raise ReviewError(
            f"no review key at {store.url(KEY)}: build the page first (the review stage, or "
            "`kakugo review build`)"
        ) from None
    review = merge(key, [(str(f), read_rater_file(f)) for f in files])
    store.write_json(RESULTS, review)
    if store.exists(MODEL_CARD):
        store.write_text(MODEL_CARD, _section(store.read_text(MODEL_CARD), markdown(review)))
    return review
