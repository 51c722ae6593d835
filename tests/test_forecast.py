"""The cost forecast (`kakugo plan`): counts from the spec, the demo's forecast against
the demo's own measured stats, calibration, fleets, the command line, `kakugo run`'s
refusal over budget and the report's forecast against actual."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from kakugo_operator.cli import plan_cmd
from kakugo_operator.plan import plan_file
from kakugo_operator.settings import OperatorSettings

from kakugo_stages import forecast as fc
from kakugo_stages.graph import TEACHER_STAGES
from kakugo_stages.manifest import load_manifests

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo-cpu.yaml"
DEMO_RUN = REPO / "tests" / "fixtures" / "demo_run"
H100 = Decimal("4.00")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo manifest names its local mirrors relative to the repository.
    monkeypatch.chdir(REPO)


def pricing() -> fc.Pricing:
    return fc.Pricing(lambda _p, _c: H100, "test: $4.00 for every GPU")


def demo_spec():
    return load_manifests(DEMO)[0].spec


def test_counts_follow_the_recipe() -> None:
    """The default spec plans the paper's counts: up to about 10.6k topic prompts (3 per
    subject) and 9.3k scenario prompts, 10k context prompts, 15k translations."""
    spec = load_manifests(REPO / "examples" / "yoruba.yaml")[0].spec
    counts = fc.count_requests(spec)
    subjects = 16 + 16 * 20 + 16 * 20 * 10
    assert subjects * 3 == 10_608  # the recipe's "up to about 10.6k"
    assert counts.prompts["topics"] == subjects * 2  # 1 to 3 prompts: 2 on average
    assert counts.prompts["scenarios"] == (60 + 60 * 30) * 5 == 9_300
    assert counts.prompts["contexts"] == 10_000
    assert counts.requests["respond"] == sum(counts.prompts.values())
    assert counts.requests["revise"] == sum(round(n / 2) for n in counts.prompts.values())
    assert counts.requests["translate"] == 15_000
    assert counts.requests["topics"] == 16 + 16 * 20 + subjects


def test_demo_forecast_against_the_demo_measured() -> None:
    """Uncalibrated, the demo's forecast is an upper bound of what the demo measured.

    Tolerances, and why: the spec's plan assumes every list the teacher writes is as long
    as asked and parses; the demo's 135M teacher truncated up to half its answers
    (finish_length) and repeated itself, so it sent between 0.25 and 1.0 of the planned
    requests (revise 13 of 52, contexts and translate all). The recipe's per-request means
    are for gpt-oss-120b with its reasoning, capped at the demo's maxTokens, so the
    forecast tokens are 3 to 9 times the 135M model's. Evaluation items come from the local
    mirrors and match exactly."""
    fcast = fc.forecast("demo-yoruba", demo_spec(), pricing())
    _, _, actual = fc.read_run(DEMO_RUN)
    for stage in TEACHER_STAGES:
        got, want = actual[stage], fcast.stage(stage)
        assert 0.2 * want.requests <= got.requests <= want.requests, stage
        tokens = got.prompt_tokens + got.completion_tokens
        assert 0.1 * (want.prompt_tokens + want.completion_tokens) <= tokens, stage
        assert tokens <= want.prompt_tokens + want.completion_tokens, stage
    assert fcast.stage("evaluate").rows == actual["evaluate"].rows_in == 62
    # The demo runs on CPUs only: nothing to pay.
    assert fcast.dollars == "0.0000" and all(s.gpus == 0 for s in fcast.stages)


def test_demo_forecast_calibrated_by_the_demo() -> None:
    """Calibrated by its own run, the demo's forecast reproduces what it measured.

    Tolerances: requests exactly (the learned shares are ratios of whole numbers); tokens
    per stage within 1% (means rounded to 0.1 token); training rows within 1 row and
    training tokens within 5% (the filters' share and the tokens per row are learned per
    source); the sum of the stages' seconds within 10% (the teacher's throughput is learned
    over all teacher stages together, not per stage)."""
    name, spec, actual = fc.read_run(DEMO_RUN)
    assert name == "demo-yoruba"
    assumptions = fc.calibrate(spec, actual, "the demo")
    fcast = fc.forecast("demo-yoruba", demo_spec(), pricing(), assumptions)
    for stage in TEACHER_STAGES:
        got, want = actual[stage], fcast.stage(stage)
        assert want.requests == got.requests, stage
        assert want.prompt_tokens == pytest.approx(got.prompt_tokens, rel=0.01), stage
        assert want.completion_tokens == pytest.approx(got.completion_tokens, rel=0.01), stage
    train = actual["train"].extra
    assert abs(fcast.training.rows - actual["train"].rows_in) <= 1
    assert fcast.training.tokens == pytest.approx(train["tokens"]["train"]["tokens"], rel=0.05)
    measured_s = sum(a.seconds for a in actual.values())
    forecast_s = sum(s.seconds for s in fcast.stages)
    assert forecast_s == pytest.approx(measured_s, rel=0.10)


def test_calibration_changes_the_means_and_scales_with_the_spec() -> None:
    _, spec, actual = fc.read_run(DEMO_RUN)
    before = fc.Assumptions()
    after = fc.calibrate(spec, actual, "the demo", before)
    for stage in TEACHER_STAGES:
        got = actual[stage]
        assert after.means[stage] != before.means[stage]
        assert after.means[stage].completion_tokens == pytest.approx(
            got.completion_tokens / got.requests, abs=0.1
        )
        assert "measured in the demo" in after.means[stage].source
    assert after.train_tokens_per_cpu_s.value == actual["train"].extra["tokens_per_s"]
    assert after.calibrated_from == "the demo"
    # What was learned carries over to a larger spec: twice the conversations, twice
    # the translate requests and tokens.
    bigger = demo_spec().model_copy(
        update={
            "data": demo_spec().data.model_copy(
                update={"translate": demo_spec().data.translate.model_copy(update={"samples": 24})}
            )
        }
    )
    one = fc.forecast("a", demo_spec(), pricing(), after).stage("translate")
    two = fc.forecast("b", bigger, pricing(), after).stage("translate")
    assert two.requests == 2 * one.requests
    assert two.completion_tokens == pytest.approx(2 * one.completion_tokens, abs=1)


def test_yoruba_forecast_prices_every_gpu_stage() -> None:
    ms = load_manifests(REPO / "examples" / "yoruba.yaml")
    lm = next(m for m in ms if m.kind == "LanguageModel")
    teacher = next(m for m in ms if m.kind == "Teacher")
    fcast = fc.forecast(lm.name, lm.spec, pricing(), teacher=teacher.spec)
    train = fcast.stage("train")
    assert train.gpus == 8 and train.gpu_type == "NVIDIA-H100-80GB-HBM3"
    # GPU-hours are rounded to 4 places in the forecast, dollars from the seconds
    assert abs(Decimal(train.dollars) - Decimal(str(train.gpu_hours)) * H100) < Decimal("0.01")
    # The served Teacher's 2 GPUs are paid for the time its tokens take.
    respond = fcast.stage("respond")
    assert respond.gpus == 2 and respond.gpu_hours > 0
    total = sum((Decimal(s.dollars) for s in fcast.stages), Decimal(0))
    assert fcast.dollars == str(total.quantize(Decimal("0.0001")))
    assert Decimal(fcast.teacher_dollars) + Decimal(fcast.gpu_dollars) == total
    # Every figure says what it rests on.
    assert all(s.assumptions for s in fcast.stages)
    # A hosted endpoint at half price (a Batch API) halves the teacher's dollars.
    raw = lm.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["teacher"] = {"endpoint": {"url": "https://api.example.com/v1", "model": "m"}}
    endpoint_spec = type(lm.spec).model_validate(raw)
    full = fc.forecast("x", endpoint_spec, pricing())
    batch = fc.Pricing(pricing().gpu_price, "t", token_price_factor=Decimal("0.5"))
    half = fc.forecast("x", endpoint_spec, batch)
    assert Decimal(half.teacher_dollars) == pytest.approx(
        Decimal(full.teacher_dollars) / 2, abs=Decimal("0.001")
    )
    # teacher.endpoint.batch: the spec's batch prices (half the default prices by default).
    raw["teacher"]["endpoint"]["batch"] = True
    in_batches = fc.forecast("x", type(lm.spec).model_validate(raw), pricing())
    assert Decimal(in_batches.teacher_dollars) == pytest.approx(
        Decimal(full.teacher_dollars) / 2, abs=Decimal("0.001")
    )
    assert "(teacher.endpoint.batchPrices)" in in_batches.stage("respond").assumptions[-1]


def test_fleet_total_is_the_sum_of_its_members() -> None:
    result = plan_file(REPO / "examples" / "fleet-small.yaml", OperatorSettings(), "defaults")
    assert not result.errors
    (fleet,) = result.fleets
    assert len(fleet.members) == 3
    assert Decimal(fleet.dollars) == sum(Decimal(m.dollars) for m in fleet.members)
    # Igbo's override translates 10,000 conversations instead of 15,000.
    igbo = next(m for m in fleet.members if m.language == "ibo_Latn")
    yoruba = next(m for m in fleet.members if m.language == "yor_Latn")
    assert igbo.stage("translate").requests == 10_000
    assert yoruba.stage("translate").requests == 15_000


def run_plan(*args: str) -> object:
    return CliRunner().invoke(plan_cmd, list(args), catch_exceptions=False)


def test_plan_json_parses_and_adds_up() -> None:
    res = run_plan("examples/yoruba.yaml", "--values", "helm/kakugo", "-o", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    (lm,) = data["languageModels"]
    assert lm["name"] == "yoruba" and lm["budget"] == "75.0000"
    total = sum(Decimal(s["dollars"]) for s in lm["stages"])
    assert Decimal(lm["dollars"]) == total
    assert "chart values helm/kakugo" in " ".join(lm["assumptions"])


def test_plan_table_flags_and_calibration() -> None:
    res = run_plan(
        "examples/demo-cpu.yaml",
        "--gpu-price",
        "NVIDIA-H100-80GB-HBM3=3.00",
        "--calibrate",
        str(DEMO_RUN),
    )
    assert res.exit_code == 0, res.output
    assert "demo-yoruba: yor_Latn, teacher served" in res.output
    assert "calibration run demo-yoruba" in res.output
    assert "means calibrated from" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu-price", "H100"], "expected PRODUCT[:CAPACITY]=DOLLARS"),
        (["--gpu-price", "NVIDIA-L4=cheap"], "not a price"),
        (["--output", "xml"], "'xml' is not one of"),
        (["--batch-discount", "1.5"], "--batch-discount"),
        (["--calibrate", "examples"], "not a run folder (no spec.yaml)"),
    ],
)
def test_plan_bad_flags_say_what_is_wrong(args: list[str], message: str) -> None:
    res = CliRunner().invoke(plan_cmd, ["examples/yoruba.yaml", *args])
    assert res.exit_code != 0
    assert message in res.output


def test_plan_of_a_file_without_models(tmp_path: Path) -> None:
    path = tmp_path / "teacher.yaml"
    path.write_text(
        "apiVersion: kakugo.io/v1alpha1\nkind: Teacher\nmetadata: {name: t}\nspec: {}\n"
    )
    res = CliRunner().invoke(plan_cmd, [str(path)])
    assert res.exit_code == 1 and "nothing to forecast" in res.output


def test_kakugo_run_refuses_over_budget(tmp_path: Path) -> None:
    import yaml

    from kakugo_stages.cli import main

    # The demo with an endpoint teacher (priced per token) and a budget of 1/100 cent.
    raw = yaml.safe_load(DEMO.read_text())
    raw["spec"]["teacher"] = {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "m"}}
    raw["spec"]["budget"] = {"maxDollars": "0.0001"}
    path = tmp_path / "over.yaml"
    path.write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"
    res = CliRunner().invoke(main, ["run", str(path), "--runs-dir", str(runs)])
    assert res.exit_code == 1
    assert "ForecastOverBudget" in res.output and "maxDollars $0.0001" in res.output
    assert "forecast, from the recipe's per-request means" in res.output
    assert not runs.exists() or not any(runs.rglob("spec.yaml"))  # nothing started


def test_report_shows_forecast_against_actual(tmp_path: Path) -> None:
    from kakugo_stages.report import forecast_section
    from kakugo_stages.resolved import RunSpec
    from kakugo_stages.store import open_store

    shutil.copytree(DEMO_RUN, tmp_path / "run")
    store = open_store((tmp_path / "run").as_uri())
    run = RunSpec("demo-yoruba", "default", demo_spec(), tmp_path.as_uri())
    lines = forecast_section(run, store, None)
    assert lines[0] == "## Forecast against actual"
    text = "\n".join(lines)
    respond = next(line for line in text.splitlines() if line.startswith("| respond |"))
    # planned 105 requests, 31 sent; the tokens as forecast and as measured
    assert respond.startswith("| respond | 105 | 31 |")
    assert "17160" in respond  # 5,595 prompt + 11,565 completion tokens measured


def test_plan_is_a_kakugo_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered like `kakugo render`, through the kakugo.commands entry point: it reads
    the operator's settings, so it lives in the operator package."""
    import importlib.metadata
    import tomllib

    from kakugo_stages.cli import main

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    commands = project["project"]["entry-points"]["kakugo.commands"]
    assert commands["plan"] == "kakugo_operator.cli:plan_cmd"
    points = importlib.metadata.EntryPoints(
        importlib.metadata.EntryPoint(name, value, "kakugo.commands")
        for name, value in commands.items()
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: points)
    result = CliRunner().invoke(main, ["plan", "examples/demo-cpu.yaml"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("demo-yoruba: yor_Latn, teacher served")


def test_kakugo_run_goes_on_with_proceed_or_once_started(tmp_path: Path) -> None:
    import yaml

    from kakugo_stages.cli import _forecast_gate
    from kakugo_stages.manifest import parse_object
    from kakugo_stages.resolved import run_spec
    from kakugo_stages.runner import local_run

    raw = yaml.safe_load(DEMO.read_text())
    raw["spec"]["teacher"] = {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "m"}}
    raw["spec"]["budget"] = {"maxDollars": "0.0001"}
    over = local_run(run_spec(parse_object(raw)), str(tmp_path / "runs"))
    with pytest.raises(SystemExit):
        _forecast_gate(over, None, None)
    # A run already under way is not refused: the spending gate holds it.
    folder = Path(over.run_uri.removeprefix("file://"))
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text("started")
    _forecast_gate(over, None, None)
    raw["spec"]["budget"]["onForecastOverBudget"] = "Proceed"
    proceed = local_run(run_spec(parse_object(raw)), str(tmp_path / "other"))
    _forecast_gate(proceed, None, None)


def test_counts_match_a_real_run_of_the_teacher_stages(tmp_path: Path) -> None:
    """The teacher stages of the stage tests' small spec, run for real against the scripted
    teacher (which writes exactly as many distinct items as asked): the forecast's
    requests are what the stages sent. Exactly where the spec decides the count; within
    15% for revise and respond, whose counts follow the topic prompts the teacher chose
    (1 to 3 per subject, the forecast takes the mean of 2); translate within 20% below
    (a sampled conversation that is too long is never sent)."""
    from kakugo_stages.store import StageOutput, open_store
    from tests.helpers.teacher_scripts import scripted_teacher
    from tests.helpers.teacher_server import TeacherServer
    from tests.helpers.tiny_models import build_tokenizer
    from tests.test_recipe import full_spec, run_teacher_stages

    tok = build_tokenizer(tmp_path / "tok")
    with TeacherServer(scripted_teacher) as srv:
        run = full_spec(srv.url, tmp_path / "run", tok)
        run_teacher_stages(run)
    store = open_store(run.run_uri)
    actual = fc.measured({s: StageOutput(store, s).all_stats() for s in TEACHER_STAGES})
    planned = fc.forecast(run.name, run.spec, pricing())
    for stage in ("topics", "scenarios", "contexts"):
        assert planned.stage(stage).requests == actual[stage].requests, stage
    # Conversations over maxSourceTokens (400 here) are dropped before they are asked:
    # the forecast assumes all of the sample fits.
    assert 0.8 * planned.stage("translate").requests <= actual["translate"].requests
    assert actual["translate"].requests <= planned.stage("translate").requests
    for stage in ("revise", "respond"):
        assert planned.stage(stage).requests == pytest.approx(actual[stage].requests, rel=0.15)
    # Calibrated by that run, its tokens come out as measured.
    assumptions = fc.calibrate(run.spec, actual, "the small run")
    again = fc.forecast(run.name, run.spec, pricing(), assumptions)
    for stage in TEACHER_STAGES:
        tokens = actual[stage].prompt_tokens + actual[stage].completion_tokens
        got = again.stage(stage)
        assert got.prompt_tokens + got.completion_tokens == pytest.approx(tokens, rel=0.01)


def test_review_and_publish_in_the_forecast() -> None:
    ms = load_manifests(REPO / "examples" / "yoruba.yaml")
    lm = next(m for m in ms if m.kind == "LanguageModel")
    teacher = next(m for m in ms if m.kind == "Teacher")
    plain = fc.forecast(lm.name, lm.spec, pricing(), teacher=teacher.spec)
    # Without their sections both are skipped: no time, no money, and they say why.
    for name in ("review", "publish"):
        stage = plain.stage(name)
        assert stage.seconds == 0 and Decimal(stage.dollars) == 0
        assert stage.assumptions == [f"skipped: spec.{name} is not set"]
    raw = lm.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["review"] = {"prompts": 40, "maxNewTokens": 512}
    raw["publish"] = {"huggingFace": {"modelRepo": "org/model"}}
    spec = type(lm.spec).model_validate(raw)
    both = fc.forecast(lm.name, spec, pricing(), teacher=teacher.spec)
    review = both.stage("review")
    evaluate = both.stage("evaluate")
    # The review runs on the evaluate stage's GPUs and is priced like it.
    assert review.gpus == evaluate.gpus and review.gpu_type == evaluate.gpu_type
    assert review.seconds > 0 and review.rows == 40
    assert Decimal(review.dollars) > 0 and "40 prompts x 2 models" in review.assumptions[0]
    assert both.stage("publish").seconds == 0
    assert Decimal(both.dollars) == Decimal(plain.dollars) + Decimal(review.dollars)
    assert both.wall_seconds == pytest.approx(plain.wall_seconds + review.seconds, abs=0.2)
