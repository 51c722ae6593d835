"""The review page in a real browser: headless Chromium (Debian's package) driven over the
DevTools protocol (tests/helpers/cdp.py). A rater opens the page from disk, rates every
prompt by clicks and by the A/B/T keys, comments, saves the file (a real download), and
`kakugo review import` turns it into the expected numbers. On a 390x844 phone viewport
nothing overflows sideways (a screenshot is kept in the test's tmp dir).

Chromium comes from `make test-tools` (scripts/install_test_tools.sh). Without it the
tests skip with the reason, unless KAKUGO_E2E_REQUIRED is set: then they fail.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kakugo_stages.cli import main
from kakugo_stages.review.page import build_page
from kakugo_stages.review.prompts import Prompt
from kakugo_stages.stages import get_stage, run_stage
from kakugo_stages.store import open_store
from tests.helpers.cdp import Browser, find_chromium
from tests.helpers.finished_run import build_models, finish_run, make_run

pytestmark = pytest.mark.slow

CHROMIUM = find_chromium()
if CHROMIUM is None:
    _why = "Chromium is not installed: run `make test-tools` (apt-get install chromium)"
    if os.environ.get("KAKUGO_E2E_REQUIRED"):
        pytest.fail(_why + " (KAKUGO_E2E_REQUIRED is set)", pytrace=False)
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory):
    tok, base, tuned = build_models(tmp_path_factory.mktemp("models"))
    review = {"prompts": 4, "seed": 11, "maxNewTokens": 8, "device": "cpu"}
    run = make_run(tmp_path_factory.mktemp("runs"), tok, base, review=review)
    finish_run(run, tuned)
    store = open_store(run.run_uri)
    run_stage(get_stage("review")(run, store), progress=False)
    return run, store


@pytest.fixture
def browser(tmp_path: Path):
    with Browser.launch(tmp_path, CHROMIUM) as b:
        yield b


def _choices(b: Browser) -> list[str | None]:
    return b.eval(
        "[...document.querySelectorAll('article')].map(a => {"
        " const p = a.querySelector('button[aria-pressed=\"true\"]');"
        " return p ? p.dataset.choice : null; })"
    )


def _wait_download(folder: Path, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.glob("*.json") if not p.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no download in {folder}: {list(folder.iterdir())}")


def test_rate_by_clicks_and_keys_save_and_import(reviewed, browser: Browser, tmp_path: Path):
    _, store = reviewed
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.browser(
        "Browser.setDownloadBehavior",
        behavior="allow",
        downloadPath=str(downloads),
        eventsEnabled=True,
    )
    page = store.local_path("review/index.html")
    browser.navigate(page.as_uri())
    assert browser.eval("document.querySelectorAll('article').length") == 4
    assert browser.eval("document.getElementById('progress').textContent") == "0 of 4 rated"
    # Wide screen: the two answers side by side.
    columns = browser.eval(
        "getComputedStyle(document.querySelector('.answers')).gridTemplateColumns"
    )
    assert len(columns.split()) == 2

    # Clicks on the first two cards, then the keyboard: B and A rate the current card and
    # move to the next unrated one; K goes back, T calls it a tie.
    browser.click('#item-0 button[data-choice="A"]')
    browser.click('#item-1 button[data-choice="tie"]')
    browser.press("b")
    browser.press("a")
    assert _choices(browser) == ["A", "tie", "B", "A"]
    browser.press("k")
    browser.press("t")
    assert _choices(browser) == ["A", "tie", "tie", "A"]
    assert browser.eval("document.getElementById('progress').textContent") == "4 of 4 rated"

    # A comment; typing letters in it rates nothing.
    browser.click("#item-0 textarea")
    browser.type_text("Ó dára ")
    browser.press("b")
    assert _choices(browser) == ["A", "tie", "tie", "A"]

    # Saving without a name asks for one; with a name it downloads the file.
    browser.click("#save")
    assert "name" in browser.eval("document.getElementById('status').textContent")
    assert not list(downloads.iterdir())
    browser.click("#rater")
    browser.type_text("Adé Ọlá")
    browser.click("#save")
    saved = _wait_download(downloads)
    data = json.loads(saved.read_text(encoding="utf-8"))
    key = store.read_json("review/key.json")
    assert data["rater"] == "Adé Ọlá" and data["page"] == key["page"]
    assert saved.name == f"review-{key['page']}-ad-l.json"
    ids = [p["id"] for p in key["prompts"]]
    assert [r["prompt"] for r in data["ratings"]] == ids
    assert [r["choice"] for r in data["ratings"]] == ["A", "tie", "tie", "A"]
    assert data["ratings"][0]["comment"] == "Ó dára b"
    # The page never knew which side was which model.
    assert "tuned" not in json.dumps(data)

    result = CliRunner().invoke(main, ["review", "import", str(saved)])
    assert result.exit_code == 0, result.output
    review = store.read_json("evaluation/review.json")
    sides = [p["tuned_side"] for p in key["prompts"]]
    wins = sum(side == "A" for side in (sides[0], sides[3]))  # the two "A" picks
    assert review["per_rater"]["Adé Ọlá"]["tuned"] == wins
    assert review["per_rater"]["Adé Ọlá"]["base"] == 2 - wins
    assert review["overall"]["win_rate"] == (wins + 1) / 4
    assert review["prompts"][0]["comments"] == {"Adé Ọlá": "Ó dára b"}

    # Reloading keeps the work (the browser's storage), so a rater can stop and go on.
    browser.navigate(page.as_uri())
    assert _choices(browser) == ["A", "tie", "tie", "A"]


def test_phone_viewport_has_no_sideways_overflow(reviewed, browser: Browser, tmp_path: Path):
    _, store = reviewed
    # The run's page, and a page with unbroken long words and a long prompt.
    long_word = "Ọ̀" + "ṣ" * 400
    stress = build_page(
        [Prompt("p0", "Kí ni " + long_word + "?"), Prompt("p1", "Báwo ni?\n" * 30)],
        [long_word, "https://example.org/" + "a" * 300],
        ["ok", "Bẹ́ẹ̀ni " * 200],
        seed=0,
        run="r",
        language="Yoruba",
        code="yor_Latn",
    )
    stress_file = tmp_path / "stress.html"
    stress_file.write_text(stress.html, encoding="utf-8")
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        width=390,
        height=844,
        deviceScaleFactor=2,
        mobile=True,
    )
    for name, url in (
        ("run", store.local_path("review/index.html").as_uri()),
        ("stress", stress_file.as_uri()),
    ):
        browser.navigate(url)
        assert browser.eval("innerWidth") == 390
        widths = browser.eval("[document.documentElement.scrollWidth, innerWidth]")
        assert widths[0] <= widths[1], (name, widths)
        columns = browser.eval(
            "getComputedStyle(document.querySelector('.answers')).gridTemplateColumns"
        )
        assert len(columns.split()) == 1, columns  # stacked on a phone
        # Buttons are reachable and fit: every choice button lies inside the viewport width.
        assert browser.eval(
            "[...document.querySelectorAll('.choices button')]"
            ".every(b => b.getBoundingClientRect().right <= innerWidth)"
        )
        shot = browser.screenshot(tmp_path / f"review-{name}-390x844.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
