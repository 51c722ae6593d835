"""`kakugo chat`: in a pseudo-terminal on the tiny random Granite (start, ask, see the
streamed answer, switch the system prompt, reset, exit), the errors without a model, and
the session's history within the context."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kakugo_stages.chat import ChatError, ChatSession, command, fit, without_thinking
from kakugo_stages.chat_format import load_chat_template
from kakugo_stages.manifest import parse_object
from kakugo_stages.resolved import RunSpec, run_spec
from kakugo_stages.spec import CONCISE_SYSTEM_PROMPT, THINK_SYSTEM_PROMPT
from kakugo_stages.stages import get_stage
from kakugo_stages.store import StageOutput, open_store

REPO = Path(__file__).resolve().parent.parent
MAX_NEW = 8
#: One streamed answer, up to the next prompt (the text may hold anything, newlines too).
ANSWER = r"(?s)model> (.*?)\nyou> "


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Granite with its own random output layer: with tied embeddings a
    random model repeats the prompt's last token (a special one, so the reply would be
    empty text) whatever the system prompt; untied it writes text that depends on it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.tiny_models import build_model, build_tokenizer

    tok = build_tokenizer(tmp_path_factory.mktemp("tok"))
    tied = build_model(tmp_path_factory.mktemp("tiny-granite"), tok)
    model = AutoModelForCausalLM.from_pretrained(tied)
    model.config.tie_word_embeddings = False
    torch.manual_seed(1)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    torch.nn.init.normal_(head.weight, std=0.5)
    model.lm_head = head
    folder = tmp_path_factory.mktemp("tiny-untied")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tied).save_pretrained(folder)
    return folder


def make_run(storage: Path, student: str) -> tuple[RunSpec, Path]:
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "yo-chat", "namespace": "tests"},
        "spec": {
            "language": "Yoruba",
            "teacher": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "unused"}},
            "student": {"model": student},
            "storage": {"uri": str(storage)},
        },
    }
    manifest = storage.parent / "yo-chat.yaml"
    manifest.write_text(yaml.safe_dump(obj), encoding="utf-8")
    return run_spec(parse_object(obj)), manifest


def train(run: RunSpec, model: Path) -> None:
    """What a finished train stage leaves: model/ and its completion markers."""
    store = open_store(run.run_uri)
    store.upload_dir(model, "model")
    for shard in range(get_stage("train")(run, store).num_shards()):
        StageOutput(store, "train").mark_complete(shard)


def greedy(model_dir: Path, messages: list[dict[str, str]]) -> str:
    """The reply the tuned model must give, computed here without the chat code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok.apply_chat_template(
        messages,
        chat_template=load_chat_template("granite-4"),
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    torch.set_num_threads(1)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return str(tok.decode(out[0, ids.shape[-1] :], skip_special_tokens=True))


class Terminal:
    """The CLI in a pseudo-terminal (os.openpty): type lines, read what it shows."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator")]),
            "OMP_NUM_THREADS": "1",
            "TERM": "dumb",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kakugo_stages.cli", "chat", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            if m := re.search(pattern, self.seen):
                self.seen = self.seen[m.end() :]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in the terminal; it shows:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the process closed the terminal
                    data = b""
                if not data and self.proc.poll() is not None:
                    raise AssertionError(f"exited ({self.proc.returncode}) showing:\n{self.seen}")
                self.seen += data.decode("utf-8", errors="replace").replace("\r\n", "\n")

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


@pytest.mark.slow
def test_chat_in_a_terminal(tmp_path: Path, tiny_model: Path) -> None:
    run, manifest = make_run(tmp_path / "storage", str(tiny_model))
    train(run, tiny_model)
    tuned = Path(run.run_uri) / "model"
    term = Terminal(
        [str(manifest), "--backend", "transformers", "--max-new-tokens", str(MAX_NEW)], tmp_path
    )
    try:
        term.expect(r"tuned \(.*model\) on transformers; thinking on")
        term.expect(r"you> ")
        # 1. A message: the streamed answer is the model's greedy reply to the thinking
        #    system prompt and the message.
        term.type("Báwo ni?")
        first = greedy(tuned, [sys_msg(THINK_SYSTEM_PROMPT), user("Báwo ni?")])
        # Text, and another text under the other system prompt: the checks below can tell.
        assert first.strip() and first != greedy(
            tuned, [sys_msg(CONCISE_SYSTEM_PROMPT), user("Báwo ni?")]
        )
        shown = term.expect(ANSWER).group(1)
        assert shown == first
        # 2. Switch to the concise prompt: the next answer is the reply to it, with the
        #    first exchange kept as history.
        term.type("/think off")
        term.expect(re.escape(f"(thinking off: system prompt {CONCISE_SYSTEM_PROMPT!r})"))
        term.expect(r"you> ")
        term.type("Ẹ ṣé")
        second = greedy(
            tuned,
            [
                sys_msg(CONCISE_SYSTEM_PROMPT),
                user("Báwo ni?"),
                {"role": "assistant", "content": without_thinking(first)},
                user("Ẹ ṣé"),
            ],
        )
        assert second != greedy(
            tuned,
            [
                sys_msg(THINK_SYSTEM_PROMPT),
                user("Báwo ni?"),
                {"role": "assistant", "content": without_thinking(first)},
                user("Ẹ ṣé"),
            ],
        )
        assert term.expect(ANSWER).group(1) == second
        # 3. /reset forgets it: the same message now gets the answer without history.
        term.type("/reset")
        term.expect(r"\(conversation forgotten\)\nyou> ")
        term.type("Ẹ ṣé")
        alone = greedy(tuned, [sys_msg(CONCISE_SYSTEM_PROMPT), user("Ẹ ṣé")])
        assert alone != second
        assert term.expect(ANSWER).group(1) == alone
        # 4. /exit leaves cleanly.
        term.type("/exit")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()


@pytest.mark.slow
def test_chat_with_the_base_model_before_training(tmp_path: Path, tiny_model: Path) -> None:
    _, manifest = make_run(tmp_path / "storage", str(tiny_model))
    args = ["--base", "--no-think", "--backend", "transformers", "--max-new-tokens", "4"]
    term = Terminal([str(manifest), *args], tmp_path)
    try:
        term.expect(rf"base \({re.escape(str(tiny_model))}\) on transformers; thinking off")
        term.expect(r"you> ")
        term.type("/think")
        term.expect(r"\(thinking is off; /think on or /think off\)")
        os.write(term.master, b"\x04")  # Ctrl-D leaves too
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()


def test_no_model_yet_names_the_train_stage(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kakugo_stages.cli import main

    run, manifest = make_run(tmp_path / "storage", "unused/model")
    result = CliRunner().invoke(main, ["chat", str(manifest)])
    assert result.exit_code == 1
    assert "no tuned model: the train stage must finish first" in result.output
    assert "train shards [0] are not complete" in result.output
    # Markers without a model folder (deleted): the same stage is named.
    for shard in range(get_stage("train")(run, open_store(run.run_uri)).num_shards()):
        StageOutput(open_store(run.run_uri), "train").mark_complete(shard)
    result = CliRunner().invoke(main, ["chat", str(manifest)])
    assert result.exit_code == 1 and "the train stage must finish first" in result.output
    # A folder that is no run.
    result = CliRunner().invoke(main, ["chat", str(tmp_path)])
    assert result.exit_code == 1 and "holds no spec.yaml" in result.output


# --------------------------------------------------------------------------- the session


def sys_msg(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


class WordBackend:
    """Counts a token per word; a context of `context` tokens."""

    name = "words"

    def __init__(self, context: int) -> None:
        self.context = context

    def count(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 1 for m in messages)

    def stream(self, messages: list[dict[str, str]]) -> Any:
        yield "ok"


def test_history_is_dropped_oldest_first_to_fit_the_context() -> None:
    session = ChatSession("think", "concise")
    session.add("one two three", "<think> long thoughts here </think> a b")
    session.add("four five", "c")
    # The assistant turn is kept without its thinking.
    assert session.history[1] == {"role": "assistant", "content": "a b"}
    backend = WordBackend(context=16)
    # system 2 + (4 + 3) + (3 + 2) + user 2 = 16, plus 2 new tokens: the first exchange goes.
    assert fit(session, backend, "six", max_new_tokens=2) == 1
    assert [m["content"] for m in session.history] == ["four five", "c"]
    assert fit(session, backend, "six", max_new_tokens=2) == 0
    with pytest.raises(ChatError, match=r"too long.*context \(16 tokens\)"):
        fit(session, backend, " ".join(["w"] * 20), max_new_tokens=2)
    assert session.history == []


def test_commands_switch_the_system_prompt_reset_and_exit() -> None:
    session = ChatSession("think", "concise")
    shown: list[str] = []
    assert session.messages("hi")[0] == sys_msg("think")
    assert command("/think off", session, shown.append)
    assert session.messages("hi")[0] == sys_msg("concise") and not session.thinking
    assert command("/think ON", session, shown.append) and session.thinking
    session.add("a", "b")
    assert command("/reset", session, shown.append) and session.history == []
    assert command("/nope", session, shown.append) and "unknown command /nope" in shown[-1]
    assert not command("/exit", session, shown.append)
    assert not command("/quit", session, shown.append)


def test_ctrl_c_stops_the_answer_not_the_chat() -> None:
    from kakugo_stages.chat import Sampling, repl

    closed: list[bool] = []

    class Interrupted(WordBackend):
        def stream(self, messages: list[dict[str, str]]) -> Any:
            try:
                yield "half"
                raise KeyboardInterrupt
            finally:
                closed.append(True)

    lines = iter(["hello", "/exit"])
    shown: list[str] = []
    session = ChatSession("think", "concise")
    repl(session, Interrupted(100), Sampling(max_new_tokens=4), lambda _: next(lines), shown.append)
    assert "".join(shown) == "model> half [stopped]\n"
    assert closed == [True]  # the generation was told to end
    assert session.history[-1] == {"role": "assistant", "content": "half"}
