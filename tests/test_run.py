"""`kakugo run` end to end: every stage, tiny random models, the scripted test teacher;
killed midway and resumed; then the dataset, the model and the report are checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.teacher_scripts import scripted_teacher
from tests.helpers.teacher_server import TeacherServer
from tests.helpers.tiny_models import build_model, build_tokenizer

pytestmark = pytest.mark.slow  # whole pipelines, killed and resumed: not in `make unit`

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


def manifest(url: str, model: Path) -> str:
    ev = FIXTURES / "eval"
    return f"""
apiVersion: kakugo.io/v1alpha1
kind: LanguageModel
metadata: {{name: tiny-yoruba}}
spec:
  language: Yoruba
  teacher:
    endpoint: {{url: "{url}", model: scripted}}
    maxConcurrency: 8
  student: {{model: "{model}"}}
  data:
    topics: {{generalSeeds: [health], languageSeeds: ["{{language}} culture"],
              macroTopicsPerSeed: 2, topicsPerMacroTopic: 2}}
    scenarios: {{broadGeneral: 2, broadLanguage: 1, detailedPerBroad: 2, promptsPerScenario: 2}}
    contexts: {{source: {{path: "{FIXTURES / "fineweb2_yor_Latn.jsonl"}"}}, maxDocuments: 4,
               maxDocumentTokens: 60, shards: 2}}
    revise: {{shards: 2}}
    respond: {{shards: 2}}
    translate: {{source: {{path: "{FIXTURES / "infinity_instruct_7M_core.jsonl"}"}},
                samples: 6, shards: 2}}
    mix: {{validationFraction: 0.2}}
  training:
    device: cpu
    precision: fp32
    deepspeedStage: 0
    cutoffLen: 512
    gradientCheckpointing: false
    checkpointEverySteps: 2
    learningRate: 1.0e-3
  evaluation:
    device: cpu
    batchSize: 4
    flores: {{path: "{ev / "flores_plus"}", limit: 3, maxNewTokens: 8}}
    sib200: {{path: "{ev / "sib200"}", limit: 4}}
    belebele: {{path: "{ev / "belebele"}", limit: 5}}
    globalMmlu: {{path: "{ev / "global_mmlu"}", limit: 3}}
  review: {{prompts: 3, maxNewTokens: 8, device: cpu}}
"""


def kakugo(*args: str) -> list[str]:
    return [sys.executable, "-m", "kakugo_stages.cli", *args]


@pytest.mark.timeout(900)
def test_run_everything_kill_and_resume(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path / "tok")
    model = build_model(tmp_path / "student", tok)
    runs = tmp_path / "runs"
    run_dir = runs / "tiny-yoruba"
    env = {**os.environ, "KAKUGO_TRAIN_STEP_SLEEP": "1.0"}
    with TeacherServer(scripted_teacher) as srv:
        spec = tmp_path / "tiny.yaml"
        spec.write_text(manifest(srv.url, model), encoding="utf-8")
        cmd = kakugo("run", str(spec), "--runs-dir", str(runs), "--no-progress")

        # First run: killed while training, once a checkpoint is on the store.
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO
        )
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if list((run_dir / "train" / "checkpoints" / "_completed").glob("*")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before the kill:\n{proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sent = srv.count
        assert (run_dir / "filter" / "_completed" / "00000").exists()
        assert not (run_dir / "train" / "_completed" / "00000").exists()

        # Second run: continues. No teacher request is sent again; training resumes.
        done = subprocess.run(
            cmd, env={**os.environ}, capture_output=True, text=True, cwd=REPO, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert srv.count == sent
    err = done.stderr
    for stage in ("topics", "scenarios", "contexts", "revise", "respond", "translate", "filter"):
        assert f"✓ {stage}: already done" in err
    train_stats = json.loads((run_dir / "train" / "_stats" / "00000.json").read_text())
    assert train_stats["resumed_from_step"] > 0

    # The dataset, the model and the report.
    from datasets import load_dataset

    ds = load_dataset(str(run_dir / "dataset"))
    assert len(ds["train"]) > 0
    assert (run_dir / "model" / "model.safetensors").exists()
    assert (run_dir / "model" / "README.md").exists()
    results = json.loads((run_dir / "evaluation" / "results.json").read_text())
    assert set(results["tasks"]) >= {"sib200", "belebele"}
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert report.strip() in done.stdout  # the report is printed at the end
    for text in (
        "## Stages",
        "## Training data",
        "## Time and cost",
        "## Evaluation",
        "| belebele |",
        "![training loss](training-loss.png)",
        "![evaluation](evaluation.png)",
    ):
        assert text in report, text
    # The review page (spec.review): prompts of the validation split, both models' answers;
    # publish is skipped without spec.publish.
    key = json.loads((run_dir / "review" / "key.json").read_text(encoding="utf-8"))
    assert 1 <= len(key["prompts"]) <= 3
    assert f"Page {key['page']} · {len(key['prompts'])} request" in (
        run_dir / "review" / "index.html"
    ).read_text(encoding="utf-8")
    assert "The blinded review page is `review/index.html`" in report
    assert "| publish | skipped |" in report
    assert (run_dir / "training-loss.png").stat().st_size > 1000
    assert (run_dir / "evaluation.png").stat().st_size > 1000


def test_run_refuses_a_changed_spec_and_bad_stage_names(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kakugo_stages.cli import main

    tok = build_tokenizer(tmp_path / "tok")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(manifest("http://127.0.0.1:9/v1", tok), encoding="utf-8")
    runs = str(tmp_path / "runs")
    bad = CliRunner().invoke(main, ["run", str(spec), "--runs-dir", runs, "--until", "trian"])
    assert bad.exit_code == 1 and "--until 'trian' is not a stage" in bad.stderr
    order = CliRunner().invoke(
        main, ["run", str(spec), "--runs-dir", runs, "--from", "train", "--until", "topics"]
    )
    assert order.exit_code == 1 and "comes after" in order.stderr
    later = CliRunner().invoke(main, ["run", str(spec), "--runs-dir", runs, "--from", "train"])
    assert later.exit_code == 1 and "earlier stages are not finished" in later.stderr
    # The pinned spec.yaml of the run folder now exists: a different spec is refused.
    spec.write_text(spec.read_text().replace("samples: 6", "samples: 7"), encoding="utf-8")
    changed = CliRunner().invoke(main, ["run", str(spec), "--runs-dir", runs, "--from", "train"])
    assert changed.exit_code == 1 and "holds a run of a different spec" in changed.stderr
