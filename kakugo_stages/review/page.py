"""The review page: one self-contained HTML file (inline CSS and JS, the prompts and
answers as inline JSON), blinded and shuffled.

Blinding: for each prompt a seeded RNG puts the tuned answer on side A or B; the cards come
in a seeded random order. The page holds only the sides' texts; which side is which model is
in the key (`review/key.json`), which stays in the run folder and is read only when the
raters' files are imported.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

from kakugo_stages.review.prompts import Prompt

FORMAT = "kakugo-review/1"


@dataclass(frozen=True)
class Blinded:
    html: str
    key: dict[str, Any]  # page id, run, and per prompt: its text, answers, the tuned side


def _inline_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no `</script>` or `<!--` can close it."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def build_page(
    prompts: list[Prompt],
    tuned: list[str],
    base: list[str],
    *,
    seed: int,
    run: str,
    language: str,
    code: str,
) -> Blinded:
    if not (len(prompts) == len(tuned) == len(base)):
        raise ValueError("one tuned and one base answer per prompt")
    rng = random.Random(f"kakugo-review/{seed}")
    order = list(range(len(prompts)))
    rng.shuffle(order)
    items, sides = [], {}
    for i in order:
        p = prompts[i]
        tuned_side = rng.choice(("A", "B"))
        a, b = (tuned[i], base[i]) if tuned_side == "A" else (base[i], tuned[i])
        items.append({"id": p.id, "prompt": p.text, "a": a, "b": b})
        sides[p.id] = tuned_side
    page = hashlib.sha256(
        json.dumps({"run": run, "items": items}, ensure_ascii=False, sort_keys=True).encode()
    ).hexdigest()[:12]
    data = {"page": page, "run": run, "language": language, "code": code, "items": items}
    title = f"Which reply is better? {language} review"
    template = (resources.files("kakugo_stages") / "review" / "page.html").read_text(
        encoding="utf-8"
    )
    text = (
        template.replace("__TITLE__", html.escape(title))
        .replace("__LANGUAGE__", html.escape(language))
        .replace("__PAGE__", page)
        .replace("__COUNT__", f"{len(items)} request{'' if len(items) == 1 else 's'}")
        .replace("__DATA__", _inline_json(data))
    )
    key = {
        "format": FORMAT,
        "page": page,
        "run": run,
        "language": code,
        "seed": seed,
        "prompts": [
            {
                "id": prompts[i].id,
                "prompt": prompts[i].text,
                "tuned": tuned[i],
                "base": base[i],
                "tuned_side": sides[prompts[i].id],
            }
            for i in order
        ],
    }
    return Blinded(text, key)
