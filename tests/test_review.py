"""Review by native speakers: held-out prompts, the blinded page, answers of the tiny base
and tuned models, the statistics, `kakugo review import` into review.json, the model card
and the run report. The page in a real browser: tests/test_review_browser.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kakugo_stages.chat_format import load_chat_template
from kakugo_stages.cli import main
from kakugo_stages.report import render
from kakugo_stages.review.answers import generate_answers
from kakugo_stages.review.page import build_page
from kakugo_stages.review.prompts import Prompt, ReviewError, held_out_prompts
from kakugo_stages.review.results import cohen_kappa, fleiss_kappa, merge, wilson
from kakugo_stages.spec import MixConfig
from kakugo_stages.stages import get_stage, run_stage
from kakugo_stages.store import open_store
from tests.helpers.finished_run import (
    TRAIN_PROMPTS,
    VALIDATION_PROMPTS,
    build_models,
    finish_run,
    make_run,
)

REVIEW = {"prompts": 5, "seed": 7, "maxNewTokens": 12, "device": "cpu"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory, models):
    """A finished run whose review stage ran (tiny models, CPU)."""
    tok, base, tuned = models
    run = make_run(tmp_path_factory.mktemp("runs"), tok, base, review=REVIEW)
    finish_run(run, tuned)
    store = open_store(run.run_uri)
    summary = run_stage(get_stage("review")(run, store), progress=False)
    return run, store, summary


# --------------------------------------------------------------------------- prompts


def test_prompts_are_held_out_and_never_a_train_prompt(reviewed) -> None:
    _, store, _ = reviewed
    prompts, dropped = held_out_prompts(store, 100, seed=1)
    texts = [p.text for p in prompts]
    assert dropped == 1  # "ṣàlàyé  ỌJÀ Èkó, apá 3." is train prompt 3 in other case/spacing
    assert sorted(texts) == sorted(VALIDATION_PROMPTS[:-1])
    assert not set(texts) & set(TRAIN_PROMPTS)
    # Seeded: the same seed gives the same choice and order, another seed another order.
    assert held_out_prompts(store, 100, seed=1)[0] == prompts
    assert [p.text for p in held_out_prompts(store, 100, seed=2)[0]] != texts
    assert len(held_out_prompts(store, 3, seed=1)[0]) == 3


def test_no_validation_split_is_a_clear_error(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    with pytest.raises(ReviewError, match=r"validationFraction"):
        held_out_prompts(store, 5, seed=0)


# --------------------------------------------------------------------------- the page


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(f"p{i}", f"Ìbéèrè {i}") for i in range(n)]


def _page_data(html: str) -> dict:
    match = re.search(r'<script id="review-data" type="application/json">(.*?)</script>', html)
    assert match
    return json.loads(match.group(1))


def test_the_page_is_blinded_shuffled_and_self_contained() -> None:
    prompts = _prompts(30)
    tuned = [f"tuned answer {i}" for i in range(30)]
    base = [f"base answer {i}" for i in range(30)]
    page = build_page(
        prompts, tuned, base, seed=3, run="/runs/x", language="Yoruba", code="yor_Latn"
    )
    data = _page_data(page.html)
    # Which side is tuned is only in the key, and it varies per prompt.
    sides = {p["id"]: p["tuned_side"] for p in page.key["prompts"]}
    assert set(sides.values()) == {"A", "B"}
    for item in data["items"]:
        i = int(item["id"][1:])
        want = (tuned[i], base[i]) if sides[item["id"]] == "A" else (base[i], tuned[i])
        assert (item["a"], item["b"]) == want
    assert "tuned_side" not in page.html and '"tuned"' not in page.html
    # A seeded random order; the same seed gives the same page.
    order = [item["id"] for item in data["items"]]
    assert order != [p.id for p in prompts] and sorted(order) == sorted(p.id for p in prompts)
    again = build_page(
        prompts, tuned, base, seed=3, run="/runs/x", language="Yoruba", code="yor_Latn"
    )
    assert again.html == page.html
    other = build_page(
        prompts, tuned, base, seed=4, run="/runs/x", language="Yoruba", code="yor_Latn"
    )
    assert other.key["page"] != page.key["page"]
    # No server, no network: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)=["']?https?:""", page.html)
    assert "@import" not in page.html and "fetch(" not in page.html


def test_answers_cannot_break_out_of_the_page() -> None:
    evil = "</script><script>alert(1)</script><!-- & é"
    page = build_page(
        [Prompt("p0", evil)], [evil], ["ok"], seed=0, run="r", language="Yoruba", code="yor_Latn"
    )
    assert page.html.count("</script>") == 2  # the data block and the page's own script
    assert _page_data(page.html)["items"][0]["prompt"] == evil


# --------------------------------------------------------------------------- the stage


def test_review_stage_writes_page_and_key_with_greedy_answers(reviewed, models) -> None:
    _, store, summary = reviewed
    tok, base, tuned = models
    assert summary.stats[0]["prompts"] == 5
    assert summary.stats[0]["page"] == store.url("review/index.html")
    key = store.read_json("review/key.json")
    data = _page_data(store.read_text("review/index.html"))
    assert [i["id"] for i in data["items"]] == [p["id"] for p in key["prompts"]]
    # The answers are the models' own greedy answers with the student's chat template and
    # the concise system prompt (recomputed here for two prompts).
    prompts = [Prompt(p["id"], p["prompt"]) for p in key["prompts"][:2]]
    common = {
        "chat_template": load_chat_template("granite-4"),
        "system_prompt": MixConfig().concise_system_prompt,
        "max_new_tokens": 12,
        "repetition_penalty": 1.05,
        "device": "cpu",
    }
    assert generate_answers(str(tuned), str(tuned), prompts, **common) == [
        p["tuned"] for p in key["prompts"][:2]
    ]
    assert generate_answers(str(base), str(tok), prompts, **common) == [
        p["base"] for p in key["prompts"][:2]
    ]
    assert any(p["tuned"] != p["base"] for p in key["prompts"])


def test_review_stage_skips_without_spec_review(tmp_path: Path, models) -> None:
    tok, base, tuned = models
    run = make_run(tmp_path, tok, base)
    finish_run(run, tuned)
    store = open_store(run.run_uri)
    summary = run_stage(get_stage("review")(run, store), progress=False)
    assert summary.stats[0]["stage_skipped"] == "spec.review is not set"
    assert not store.exists("review/index.html")


# --------------------------------------------------------------------------- statistics


def test_wilson_interval() -> None:
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(5, 10)
    assert abs((low + high) / 2 - 0.5) < 1e-12


def test_kappas() -> None:
    a = ["tuned", "tuned", "base", "tie", "tuned", "base"]
    assert cohen_kappa(a, a) == 1.0
    b = ["tuned", "base", "base", "tie", "tuned", "tuned"]
    # observed 4/6; expected (3*3 + 2*2 + 1*1)/36 = 14/36
    assert cohen_kappa(a, b) == pytest.approx((4 / 6 - 14 / 36) / (1 - 14 / 36))
    assert cohen_kappa(["tie"] * 3, ["tie"] * 3) is None
    # Fleiss: perfect agreement is 1; two items, three raters, worked by hand.
    assert fleiss_kappa([["tuned"] * 3, ["base"] * 3]) == 1.0
    table = [["tuned", "tuned", "base"], ["base", "base", "base"]]
    p_bar = ((4 + 1 - 3) / 6 + (9 - 3) / 6) / 2
    p_e = (2 / 6) ** 2 + (4 / 6) ** 2
    assert fleiss_kappa(table) == pytest.approx((p_bar - p_e) / (1 - p_e))


def _rater_file(key: dict, rater: str, choices: dict[str, str]) -> dict:
    return {
        "format": "kakugo-review/1",
        "page": key["page"],
        "run": key["run"],
        "rater": rater,
        "ratings": [{"prompt": p, "choice": c, "comment": ""} for p, c in choices.items()],
    }


def test_merge_maps_sides_back_to_models() -> None:
    prompts = _prompts(4)
    page = build_page(
        prompts, ["t"] * 4, ["b"] * 4, seed=1, run="r", language="Yoruba", code="yor_Latn"
    )
    key = page.key
    tuned_side = {p["id"]: p["tuned_side"] for p in key["prompts"]}
    other = {"A": "B", "B": "A"}
    # Ann prefers tuned on p0..p2 and calls p3 a tie; Ben agrees except p2 (base).
    ann = {"p0": tuned_side["p0"], "p1": tuned_side["p1"], "p2": tuned_side["p2"], "p3": "tie"}
    ben = {**ann, "p2": other[tuned_side["p2"]]}
    review = merge(
        key,
        [("ann.json", _rater_file(key, "Ann", ann)), ("ben.json", _rater_file(key, "Ben", ben))],
    )
    assert review["per_rater"]["Ann"] | {} == {
        "ratings": 4,
        "tuned": 3,
        "base": 0,
        "tie": 1,
        "win_rate": 0.875,
        "ci95": [round(x, 4) for x in wilson(3.5, 4)],
    }
    assert review["per_rater"]["Ben"]["win_rate"] == 0.625
    assert review["overall"]["win_rate"] == 0.75 and review["overall"]["ratings"] == 8
    (pair,) = review["agreement"]["pairs"]
    assert pair["prompts"] == 4
    assert pair["cohen_kappa"] == round(
        cohen_kappa(["tuned", "tuned", "tuned", "tie"], ["tuned", "tuned", "base", "tie"]), 4
    )
    with pytest.raises(ReviewError, match="rates page"):
        merge(key, [("x.json", {**_rater_file(key, "Cy", ann), "page": "0" * 12})])
    with pytest.raises(ReviewError, match="not A, B or tie"):
        merge(key, [("x.json", _rater_file(key, "Cy", {"p0": "C"}))])


def test_import_writes_review_json_card_and_report(reviewed, tmp_path: Path) -> None:
    run, store, _ = reviewed
    key = store.read_json("review/key.json")
    tuned_side = {p["id"]: p["tuned_side"] for p in key["prompts"]}
    ids = list(tuned_side)
    files = []
    for rater, picks in (
        ("Adé", {p: tuned_side[p] for p in ids}),  # tuned everywhere
        ("Bọ́lá", {**{p: tuned_side[p] for p in ids[:3]}, ids[3]: "tie", ids[4]: "tie"}),
        ("Ṣọlá", {p: "tie" for p in ids}),
    ):
        path = tmp_path / f"{rater}.json"
        path.write_text(json.dumps(_rater_file(key, rater, picks)), encoding="utf-8")
        files.append(str(path))
    result = CliRunner().invoke(main, ["review", "import", *files])  # the run from the files
    assert result.exit_code == 0, result.output
    review = store.read_json("evaluation/review.json")
    assert review["raters"] == sorted(["Adé", "Bọ́lá", "Ṣọlá"])
    assert review["per_rater"]["Adé"]["win_rate"] == 1.0
    assert review["per_rater"]["Bọ́lá"]["win_rate"] == 0.8
    assert review["per_rater"]["Ṣọlá"]["win_rate"] == 0.5
    assert review["overall"]["win_rate"] == round((5 + 4 + 2.5) / 15, 4)
    assert review["agreement"]["fleiss_prompts"] == 5
    assert review["agreement"]["fleiss_kappa"] is not None
    assert "all raters: tuned" in result.output and "Fleiss' kappa" in result.output
    card = store.read_text("model/README.md")
    assert "## Human review" in card and "76.7%" in card
    report = render(run, store)
    assert "## Human review" in report and "76.7%" in report
    # Importing again replaces the section instead of adding another.
    CliRunner().invoke(main, ["review", "import", *files, "--run", str(store.local_path())])
    assert store.read_text("model/README.md").count("## Human review") == 1


def test_review_build_command_on_a_run_folder(tmp_path: Path, models) -> None:
    tok, base, tuned = models
    run = make_run(tmp_path, tok, base)  # no spec.review: the command's defaults and options
    finish_run(run, tuned)
    store = open_store(run.run_uri)
    folder = str(store.local_path())
    args = ["review", "build", folder, "--prompts", "2", "--max-new-tokens", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 prompts (1 left out: also in the train split)" in result.output
    assert f"page: {store.url('review/index.html')}" in result.output
    assert len(store.read_json("review/key.json")["prompts"]) == 2
    bad = CliRunner().invoke(main, ["review", "build", folder, "--prompts", "5000"])
    assert bad.exit_code == 1 and "--prompts" in bad.output
    missing = CliRunner().invoke(main, ["review", "build", str(tmp_path / "nothing-here")])
    assert missing.exit_code == 1 and "LanguageModel" in missing.output


def test_import_refuses_files_of_other_pages_and_mixed_runs(reviewed, tmp_path: Path) -> None:
    _, store, _ = reviewed
    key = store.read_json("review/key.json")
    ids = [p["id"] for p in key["prompts"]]
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_rater_file(key, "Adé", {ids[0]: "A"})), encoding="utf-8")
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({**_rater_file(key, "Bọ́lá", {ids[0]: "B"}), "run": "file:///elsewhere"}),
        encoding="utf-8",
    )
    mixed = CliRunner().invoke(main, ["review", "import", str(good), str(other)])
    assert mixed.exit_code == 1 and "--run" in mixed.output
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**_rater_file(key, "Cy", {}), "page": "f" * 12}), encoding="utf-8")
    result = CliRunner().invoke(
        main, ["review", "import", str(stale), "--run", str(store.local_path())]
    )
    assert result.exit_code == 1 and "rebuilt page" in result.output
    junk = tmp_path / "junk.json"
    junk.write_text("{}", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["review", "import", str(junk), "--run", str(store.local_path())]
    )
    assert result.exit_code == 1 and "not a Kakugo review file" in result.output


def test_the_page_counts_its_requests_in_words() -> None:
    one = build_page(_prompts(1), ["t"], ["b"], seed=0, run="r", language="Yoruba", code="y")
    two = build_page(
        _prompts(2), ["t"] * 2, ["b"] * 2, seed=0, run="r", language="Yoruba", code="y"
    )
    assert f"Page {one.key['page']} · 1 request ·" in one.html
    assert f"Page {two.key['page']} · 2 requests ·" in two.html


def test_the_report_counts_the_review_on_the_evaluate_stages_gpus(tmp_path: Path, models) -> None:
    tok, base, _ = models
    run = make_run(tmp_path, tok, base, review={"device": "cuda"})
    report = render(run, open_store(run.run_uri))
    stages = report.split("## Stages", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip(): line for line in stages.splitlines() if line.startswith("| ")
    }
    assert rows["review"].rstrip().endswith("| 1 |")  # resources.evaluate's one GPU
    assert rows["publish"].rstrip().endswith("| CPU |")
