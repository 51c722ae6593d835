"""The train stage on CPU: a tiny random Granite-4-layout model, the tiny tokenizer, a
handful of chat rows, DeepSpeed ZeRO-3 over gloo.

The DeepSpeed tests run the real worker process (as the stage does); the first one of a
test session JIT-builds DeepSpeed's comm op (~30 s) into the session's
TORCH_EXTENSIONS_DIR (conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kakugo_stages.chat_format import load_chat_template, tokenize_conversation
from kakugo_stages.manifest import parse_object
from kakugo_stages.resolved import RunSpec, run_spec
from kakugo_stages.stages import StageFailed, get_stage, run_stage
from kakugo_stages.store import StageOutput, open_store
from kakugo_stages.training.attention import install_packed_mask_hook
from kakugo_stages.training.checkpoints import StoreCheckpoints
from kakugo_stages.training.config import TrainConfig
from kakugo_stages.training.data import (
    IGNORE_INDEX,
    PackedCollator,
    TrainDataset,
    pack_examples,
    tokenize_rows,
)
from kakugo_stages.training.deepspeed_config import deepspeed_config
from kakugo_stages.training.launch import worker_command, worker_env
from kakugo_stages.training.model_card import (
    EVAL_END,
    EVAL_START,
    update_evaluation_section,
)
from tests.helpers.tiny_models import build_model, build_tokenizer

# Real training runs (DeepSpeed workers, a JIT-built op): not in `make unit`.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "Before you answer, reason step by step inside <think> and </think>."
SOURCES = ("topics", "scenarios", "contexts", "translated")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path) -> Path:
    return build_model(tmp_path_factory.mktemp("model"), tok_dir)


@pytest.fixture(scope="module")
def tokenizer(tok_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def chat_rows(n: int) -> list[dict[str, Any]]:
    texts = [
        "Ẹ kú àárọ̀. Báwo ni o ṣe wà?",
        "Habari ya asubuhi. Soko limejaa watu leo.",
        "What is the capital of Nigeria?",
        "Àwọn ọmọdé ń ṣeré ní ìta.",
    ]
    rows = []
    for i in range(n):
        user = texts[i % 4] * (1 + i % 3)
        answer = texts[(i + 1) % 4] * (1 + (i * 7) % 4)
        rows.append(
            {
                "id": f"row-{i}",
                "source": SOURCES[i % 4],
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": f"<think> ok </think> {answer}"},
                ],
                "reasoning": i % 4 != 3,
            }
        )
    return rows


def make_run(
    tmp: Path,
    model: Path,
    *,
    rows: int = 24,
    filter_done: bool = True,
    gpus: int = 1,
    device: str = "cpu",
    **training: Any,
) -> RunSpec:
    body = {
        "language": "Yoruba",
        "teacher": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "unused"}},
        "student": {"model": str(model)},
        "storage": {"uri": str(tmp / "store")},
        "resources": {"train": {"gpus": gpus}},
        "training": {
            "device": device,
            "cutoffLen": 1024,
            "checkpointEverySteps": 3,
            "logEverySteps": 1,
            "gradientCheckpointing": True,
            # One sequence per step keeps these runs' step counts small and exact.
            "globalBatchSize": 1,
            **training,
        },
    }
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "yo-train", "namespace": "tests"},
        "spec": body,
    }
    run = run_spec(parse_object(obj))
    store = open_store(run.run_uri)
    data = chat_rows(rows)
    store.write_parquet("dataset/data/train-00000-of-00001.parquet", data[2:])
    store.write_parquet("dataset/data/validation-00000-of-00001.parquet", data[:2])
    if filter_done:
        StageOutput(store, "filter").mark_complete(0)
    (tmp / "spec.yaml").write_text(run.to_yaml(), encoding="utf-8")
    return run


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KAKUGO_SCRATCH_DIR", str(tmp_path / "scratch"))
    return tmp_path / "scratch"


# --------------------------------------------------------------------------- tokens


def test_assistant_mask_covers_end_of_turn_and_system_prompt_is_trained_input(
    tokenizer: Any,
) -> None:
    template = load_chat_template("granite-4")
    examples, totals = tokenize_rows(chat_rows(8), tokenizer, template, cutoff_len=256)
    assert totals.examples == 8 and totals.trained_tokens > 0
    eot = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    for ex in examples:
        trained = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
        assert trained, "empty assistant mask"
        assert trained[-1] == eot  # the student learns to stop
        # Exactly the assistant turn: its text decodes back, the user turn is not in it.
        assert "<think> ok </think>" in tokenizer.decode(trained)
        # Recipe mistake 1: the system prompt reaches the tokenized training example.
        assert SYSTEM in tokenizer.decode(ex.input_ids)
    # The packed rows the trainer sees carry the system prompt too.
    ds = TrainDataset(examples, cutoff_len=256, packing=True)
    assert sum(tokenizer.decode(ds[i]["input_ids"]).count(SYSTEM) for i in range(len(ds))) == 8
    assert totals.tokens_by_source.keys() == set(SOURCES)


def test_rows_over_cutoff_are_dropped_and_counted(tokenizer: Any) -> None:
    template = load_chat_template("granite-4")
    rows = chat_rows(4)
    lengths = [
        len(tokenize_conversation(tokenizer, r["messages"], template)["input_ids"]) for r in rows
    ]
    cutoff = sorted(lengths)[1]
    examples, totals = tokenize_rows(rows, tokenizer, template, cutoff_len=cutoff)
    assert totals.dropped["over_cutoff_len"] == sum(n > cutoff for n in lengths)
    assert len(examples) == sum(n <= cutoff for n in lengths)


def test_packing_is_greedy_bounded_and_restarts_positions() -> None:
    assert pack_examples([3, 4, 2, 5, 1], cutoff_len=7) == [[0, 1], [2, 3], [4]]
    from kakugo_stages.training.data import Example

    exs = [Example([1] * n, [5] * n, "topics") for n in (3, 4, 2)]
    ds = TrainDataset(exs, cutoff_len=7, packing=True)
    row = ds[0]
    assert row["position_ids"] == [0, 1, 2, 0, 1, 2, 3]
    assert row["labels"][0] == row["labels"][3] == IGNORE_INDEX  # no cross-example target
    batch = PackedCollator(flash_kwargs=True)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (1, 9)
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 7, 9] and batch["max_length_q"] == 4


@pytest.mark.parametrize(
    "impl",
    [
        "sdpa",
        "eager",
        # FlexAttention compiles its kernels (C++ on CPU: ~1 minute on 2 cores).
        pytest.param("flex_attention", marks=pytest.mark.slow),
    ],
)
def test_packed_examples_do_not_attend_to_each_other(model_dir: Path, impl: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=impl).eval()
    a, b = list(range(5, 25)), list(range(30, 42))
    row = {
        "input_ids": a + b,
        "labels": a + b,
        "position_ids": [*range(20), *range(12)],
        "seq_lens": [20, 12],
    }
    batch = PackedCollator(flash_kwargs=False)([row])
    batch.pop("labels")
    install_packed_mask_hook(model)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b])).logits[0]
        packed = model(**batch).logits[0, 20:]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)


def test_auto_attention_is_flash_then_flex_on_cuda_and_sdpa_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kakugo_stages.training import attention

    monkeypatch.setattr(attention, "flash_attn_available", lambda impl="": True)
    assert attention.resolve_attn_implementation("auto", "cuda") == "flash_attention_2"
    monkeypatch.setattr(attention, "flash_attn_available", lambda impl="": False)
    assert attention.resolve_attn_implementation("auto", "cuda") == "flex_attention"
    assert attention.resolve_attn_implementation("auto", "cpu") == "sdpa"
    monkeypatch.setattr(attention, "flex_attention_available", lambda: False)
    assert attention.resolve_attn_implementation("auto", "cuda") == "sdpa"
    with pytest.raises(attention.AttentionError, match="flex_attention needs torch"):
        attention.resolve_attn_implementation("flex_attention", "cuda")


# --------------------------------------------------------------------------- configs


def test_deepspeed_config_is_auto_where_the_trainer_decides() -> None:
    assert deepspeed_config(0, "bf16") is None
    ds = deepspeed_config(3, "bf16")
    assert ds["zero_optimization"]["stage"] == 3
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert ds[key] == "auto"
    assert ds["bf16"] == {"enabled": "auto"}
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "optimizer" not in ds and "scheduler" not in ds  # the Trainer's AdamW + cosine


def test_recipe_defaults_reach_the_trainer(tmp_path: Path, model_dir: Path) -> None:
    from kakugo_stages.training.trainer import training_arguments

    run = make_run(tmp_path, model_dir)
    body = run.spec.model_dump(by_alias=True)
    body["training"] = {"device": "cpu", "deepspeedStage": 0}
    spec = type(run.spec).model_validate(body)
    config = TrainConfig.from_run(
        RunSpec(run.name, run.namespace, spec, run.storage_root),
        model_path=str(model_dir),
        tokenizer_path=str(model_dir),
        chat_template="x",
        scratch_dir=str(tmp_path),
    )
    args = training_arguments(config, "fp32", tmp_path / "out", evaluate=True)
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (
        1e-5,
        1.0,
        1,
    )
    # The authors' 8 sequences per step (8 GPUs x 1): on one process, by accumulation.
    assert config.global_batch_size == 8 and args.gradient_accumulation_steps == 8
    # Validation every fifth of the run, as the authors evaluate.
    assert args.eval_strategy == "steps" and args.eval_steps == 0.2
    assert training_arguments(config, "fp32", tmp_path / "o2").eval_strategy == "no"
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.05
    assert args.activation_checkpointing and config.cutoff_len == 8000 and config.packing
    assert TrainConfig.from_json(config.to_json()) == config


def test_multi_gpu_runs_under_torchrun_with_the_spec_gpu_count(
    tmp_path: Path, model_dir: Path
) -> None:
    run = make_run(tmp_path, model_dir, gpus=4, device="cuda", globalBatchSize=8)
    config = TrainConfig.from_run(
        run, model_path="m", tokenizer_path="m", chat_template="x", scratch_dir=str(tmp_path)
    )
    # The global batch stays 8 whatever the GPU count: 4 GPUs accumulate 2 passes.
    assert config.nproc == 4 and config.global_batch_size == 8
    assert config.gradient_accumulation_steps == 2
    assert config.replace(nproc=8).gradient_accumulation_steps == 1
    with pytest.raises(ValueError, match="not a multiple"):
        config.replace(nproc=3).gradient_accumulation_steps  # noqa: B018
    cmd = worker_command(Path("c.json"), Path("r.json"), config.nproc)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert cmd[6:] == ["kakugo_stages.training.worker", "c.json", "r.json"]
    assert "RANK" not in worker_env(4, {}) and worker_env(1, {})["WORLD_SIZE"] == "1"
    single = worker_command(Path("c.json"), Path("r.json"), 1)
    assert single[1:3] == ["-m", "kakugo_stages.training.worker"]


def test_a_global_batch_the_gpus_cannot_share_is_refused(tmp_path: Path, model_dir) -> None:
    from kakugo_stages.manifest import ManifestError

    with pytest.raises(ManifestError, match=r"training.globalBatchSize.*multiple"):
        make_run(tmp_path, model_dir, gpus=3, device="cuda", globalBatchSize=8)


def test_evaluation_section_is_replaced_in_place() -> None:
    card = f"# m\n\n## Evaluation\n\n{EVAL_START}\npending\n{EVAL_END}\n\n## After\n"
    out = update_evaluation_section(card, "| task | base | tuned |")
    assert "pending" not in out and "| task | base | tuned |" in out and out.endswith("## After\n")
    assert update_evaluation_section(out, "v2").count(EVAL_START) == 1
    assert EVAL_START in update_evaluation_section("# no markers", "t")


@pytest.fixture
def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    if request.param == "file":
        yield open_store(str(tmp_path / "s"))
        return
    from tests.helpers.s3_server import create_bucket, moto_s3_server, set_fake_aws_env

    with moto_s3_server() as url:
        set_fake_aws_env(monkeypatch, url)
        yield open_store(f"s3://{create_bucket(url)}/runs/tests/yo")


@pytest.mark.parametrize("any_store", ["file", "s3"], indirect=True)
def test_checkpoints_without_marker_are_never_resumed(tmp_path: Path, any_store: Any) -> None:
    store = any_store
    ckpts = StoreCheckpoints(store, keep=2)
    for step in (2, 4, 6):
        src = tmp_path / f"c{step}"
        src.mkdir()
        (src / "trainer_state.json").write_text("{}")
        ckpts.upload(src, step)
    store.write_text("train/checkpoints/checkpoint-8/trainer_state.json", "{}")  # half upload
    assert ckpts.completed() == [4, 6] and ckpts.latest() == 6
    assert not store.list("train/checkpoints/checkpoint-2/")
    got = ckpts.download(6, tmp_path / "resume")
    assert got.name == "checkpoint-6" and (got / "trainer_state.json").read_text() == "{}"


# --------------------------------------------------------------------------- the stage


def test_missing_filter_output_fails_clearly(tmp_path: Path, model_dir: Path) -> None:
    run = make_run(tmp_path, model_dir, filter_done=False)
    with pytest.raises(StageFailed, match="kakugo stage filter"):
        run_stage(get_stage("train")(run, open_store(run.run_uri)))


def test_unloadable_student_names_the_field(tmp_path: Path, model_dir: Path) -> None:
    run = make_run(tmp_path, model_dir)
    body = run.spec.model_dump(by_alias=True)
    body["student"]["model"] = "ibm-granite/not-downloaded-here"
    spec = type(run.spec).model_validate(body)
    run = RunSpec(run.name, run.namespace, spec, run.storage_root)
    with pytest.raises(StageFailed, match=r"student.model.*local folder"):
        run_stage(get_stage("train")(run, open_store(run.run_uri)))


def _tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_zero3_training_changes_weights_and_writes_the_model(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two gloo processes under torchrun: the multi-GPU path (ZeRO-3 shards on two ranks,
    # rank 0 alone writing to the store) without GPUs.
    monkeypatch.setenv("KAKUGO_TRAIN_CPU_PROCESSES", "2")
    run = make_run(tmp_path, model_dir, learningRate=1e-3, deepspeedStage=3, globalBatchSize=2)
    store = open_store(run.run_uri)
    summary = run_stage(get_stage("train")(run, store))
    stats = StageOutput(store, "train").read_stats(0)
    assert stats["processes"] == 2
    assert summary.completed == [0] and stats["rows_in"] == 22 and stats["rows_out"] == 22
    assert stats["deepspeed_zero_stage"] == 3 and stats["packing"] is True
    assert stats["steps"] == stats["max_steps"] > 0 and stats["resumed_from_step"] == 0
    exact = stats["tokens"]["train"]
    # Tokens seen: the distributed sampler repeats a row or two so both ranks get as many.
    assert stats["train_tokens"] >= exact["tokens"] > exact["trained_tokens"] > 0
    assert sum(exact["tokens_by_source"].values()) == exact["tokens"]
    assert stats["tokens_per_s"] > 0 and stats["final_loss"] is not None
    model = store.local_path("model")
    for name in (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "README.md",
    ):
        assert (model / name).is_file(), name
    before, after = _tensors(model_dir), _tensors(model)
    changed = [k for k in before if not before[k].equal(after[k].to(before[k].dtype))]
    assert len(changed) > len(before) // 2
    card = (model / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and EVAL_START in card
    # Thinking on and off: the card shows both system prompts of the mix.
    mix = run.spec.data.mix
    assert f"thinking on: `{mix.think_system_prompt}`" in card
    assert f"thinking off: `{mix.concise_system_prompt}`" in card
    # Validation loss every fifth of the run, then at the end.
    history = stats["eval_loss_history"]
    assert len(history) >= 2 and history[-1][0] == stats["steps"]
    assert "validation loss by step" in card
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    assert "{% generation %}" in tok.chat_template
    progress = store.read_json("train/_progress.json")
    assert progress["step"] >= 1 and "eta_s" in progress and "tokens_per_s" in progress


def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path, model_dir: Path) -> None:
    # 12 unpacked rows, batch 1: 12 steps, a checkpoint every 3.
    run = make_run(tmp_path, model_dir, rows=14, packing=False, deepspeedStage=3)
    store = open_store(run.run_uri)
    ckpts = StoreCheckpoints(store)
    cmd = [
        sys.executable,
        "-m",
        "kakugo_stages.cli",
        "stage",
        "train",
        "--spec",
        str(tmp_path / "spec.yaml"),
        "--no-progress",
    ]
    env = {
        **os.environ,
        "KAKUGO_SCRATCH_DIR": str(tmp_path / "scratch"),
        # A slow step (test hook) so the kill lands mid-run whatever the machine's speed.
        "KAKUGO_TRAIN_STEP_SLEEP": "0.5",
    }
    log = (tmp_path / "first.log").open("wb")
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 240
    while ckpts.latest() is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_at = ckpts.latest()
    os.killpg(proc.pid, signal.SIGKILL)  # preemption: the whole Pod goes at once
    proc.wait()
    log.close()
    assert killed_at is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert not StageOutput(store, "train").is_complete(0)

    env.pop("KAKUGO_TRAIN_STEP_SLEEP")
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    stats = StageOutput(store, "train").read_stats(0)
    assert stats["resumed_from_step"] >= killed_at > 0
    assert stats["steps"] == stats["max_steps"] == 12 > stats["resumed_from_step"]
    assert "resuming from checkpoint" in out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["completed"] == 1
    card = (store.local_path("model") / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["base_model"] == str(model_dir)
