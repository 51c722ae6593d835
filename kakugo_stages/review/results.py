"""Raters' files merged into `evaluation/review.json`, with the page's key.

A rater's choice of side A or B is mapped back to "tuned", "base" or "tie" with the key
(`review/key.json`); the page never held that mapping.

Numbers:
- win rate of the tuned model over the base model = (wins + ties / 2) / ratings, per rater
  and over every rating of every rater;
- its 95% confidence interval is the Wilson score interval, with ties counted as half a
  win (the overall interval treats every rating as independent, which ratings of one
  prompt by several raters are not: read it as a lower bound on the uncertainty);
- agreement between raters on the prompts they both rated: Cohen's kappa per pair of
  raters, and Fleiss' kappa over the prompts every rater rated when there are three or
  more raters (categories tuned / base / tie).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

from kakugo_stages.review.page import FORMAT
from kakugo_stages.review.prompts import ReviewError

CHOICES = ("A", "B", "tie")
OUTCOMES = ("tuned", "base", "tie")
Z95 = 1.959963984540054


def wilson(wins: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion wins/n (wins may be fractional)."""
    if n == 0:
        return (0.0, 1.0)
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items (None: undefined)."""
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in OUTCOMES) / (n * n)
    if expected == 1:
        return None  # both raters gave one and the same label to everything
    return (observed - expected) / (1 - expected)


def fleiss_kappa(table: list[list[str]]) -> float | None:
    """Fleiss' kappa: `table` holds, per item, the labels of the same number of raters."""
    if not table or len(table[0]) < 2:
        return None
    m = len(table[0])
    n = len(table)
    totals: Counter[str] = Counter()
    agreement = 0.0
    for labels in table:
        counts = Counter(labels)
        totals.update(counts)
        agreement += (sum(c * c for c in counts.values()) - m) / (m * (m - 1))
    p_bar = agreement / n
    p_e = sum((totals[k] / (n * m)) ** 2 for k in OUTCOMES)
    if p_e == 1:
        return None
    return (p_bar - p_e) / (1 - p_e)


def _summary(outcomes: list[str]) -> dict[str, Any]:
    c = Counter(outcomes)
    n = len(outcomes)
    wins = c["tuned"] + c["tie"] / 2
    low, high = wilson(wins, n)
    return {
        "ratings": n,
        "tuned": c["tuned"],
        "base": c["base"],
        "tie": c["tie"],
        "win_rate": round(wins / n, 4) if n else None,
        "ci95": [round(low, 4), round(high, 4)],
    }


def read_rater_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReviewError(f"{path}: not a readable review file: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReviewError(f"{path}: not a Kakugo review file (format {FORMAT!r} expected)")
    if not str(data.get("rater") or "").strip():
        raise ReviewError(f"{path}: the file names no rater")
    return data


def merge(key: dict[str, Any], files: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """evaluation/review.json from the page's key and the raters' files (name, content)."""
    sides = {p["id"]: p["tuned_side"] for p in key["prompts"]}
    by_rater: dict[str, dict[str, dict[str, str]]] = {}
    for name, data in files:
        if data.get("page") != key["page"]:
            raise ReviewError(
                f"{name}: rates page {data.get('page')!r}, but this run's page is "
                f"{key['page']!r} (a file of another run, or of a rebuilt page)"
            )
        rater = str(data["rater"]).strip()
        mine = by_rater.setdefault(rater, {})
        for r in data.get("ratings") or []:
            pid, choice = r.get("prompt"), r.get("choice")
            if pid not in sides:
                raise ReviewError(f"{name}: prompt {pid!r} is not on the page")
            if choice not in CHOICES:
                raise ReviewError(f"{name}: prompt {pid!r}: choice {choice!r} is not A, B or tie")
            outcome = "tie" if choice == "tie" else ("tuned" if choice == sides[pid] else "base")
            # A rater's later file wins over an earlier one for the same prompt.
            mine[pid] = {"outcome": outcome, "choice": choice, "comment": r.get("comment") or ""}
    raters = sorted(by_rater)
    per_rater = {r: _summary([v["outcome"] for v in by_rater[r].values()]) for r in raters}
    overall = _summary([v["outcome"] for r in raters for v in by_rater[r].values()])
    pairs = []
    for x, y in combinations(raters, 2):
        shared = sorted(set(by_rater[x]) & set(by_rater[y]))
        kappa = cohen_kappa(
            [by_rater[x][p]["outcome"] for p in shared], [by_rater[y][p]["outcome"] for p in shared]
        )
        pairs.append({"raters": [x, y], "prompts": len(shared), "cohen_kappa": _round(kappa)})
    agreement: dict[str, Any] = {"pairs": pairs}
    if len(raters) >= 3:
        common = sorted(set.intersection(*(set(by_rater[r]) for r in raters)))
        table = [[by_rater[r][p]["outcome"] for r in raters] for p in common]
        agreement["fleiss_kappa"] = _round(fleiss_kappa(table))
        agreement["fleiss_prompts"] = len(common)
    prompts = []
    for p in key["prompts"]:
        votes = {r: by_rater[r][p["id"]] for r in raters if p["id"] in by_rater[r]}
        prompts.append(
            {
                "id": p["id"],
                "outcomes": {r: v["outcome"] for r, v in votes.items()},
                "comments": {r: v["comment"] for r, v in votes.items() if v["comment"]},
            }
        )
    return {
        "page": key["page"],
        "run": key.get("run"),
        "language": key.get("language"),
        "method": "win rate = (tuned wins + ties/2) / ratings; 95% Wilson score interval; "
        "Cohen's kappa per rater pair, Fleiss' kappa over prompts every rater rated (3+ raters)",
        "prompts_on_page": len(key["prompts"]),
        "raters": raters,
        "overall": overall,
        "per_rater": per_rater,
        "agreement": agreement,
        "prompts": prompts,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def markdown(review: dict[str, Any]) -> str:
    """The review as a Markdown section body (model card and run report)."""
    o = review["overall"]

    def row(name: str, s: dict[str, Any]) -> str:
        rate = "–" if s["win_rate"] is None else f"{100 * s['win_rate']:.1f}%"
        low, high = s["ci95"]
        return (
            f"| {name} | {s['ratings']} | {s['tuned']} | {s['base']} | {s['tie']} | {rate} "
            f"| {100 * low:.1f}–{100 * high:.1f}% |"
        )

    n = review["prompts_on_page"]
    lines = [
        f"Native speakers compared the tuned model's and the base model's replies to {n} "
        f"prompt{'' if n == 1 else 's'} held out of training, blinded (sides A/B assigned at "
        "random per prompt) and in random order.",
        "",
        "| rater | ratings | tuned better | base better | tie | tuned win rate | 95% CI |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *(row(r, review["per_rater"][r]) for r in review["raters"]),
        row("**all raters**", o),
        "",
        "Win rate counts a tie as half a win; the interval is Wilson's score interval.",
    ]
    pairs = [p for p in review["agreement"]["pairs"] if p["cohen_kappa"] is not None]
    if pairs:
        lines.append(
            "Agreement (Cohen's kappa): "
            + "; ".join(
                f"{p['raters'][0]} / {p['raters'][1]}: {p['cohen_kappa']:.2f} "
                f"on {p['prompts']} prompts"
                for p in pairs
            )
            + "."
        )
    if review["agreement"].get("fleiss_kappa") is not None:
        lines.append(
            f"Fleiss' kappa over the {review['agreement']['fleiss_prompts']} prompts every "
            f"rater rated: {review['agreement']['fleiss_kappa']:.2f}."
        )
    return "\n".join(lines) + "\n"
