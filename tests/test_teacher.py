"""Teacher client against the local fault-injecting OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import json
import logging
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kakugo_stages.redact import Redactor
from kakugo_stages.request_cache import RequestCache, request_key
from kakugo_stages.spec import SamplingSpec, TeacherEndpoint, TeacherSettings
from kakugo_stages.store import open_store
from kakugo_stages.teacher import (
    ChatResult,
    TeacherClient,
    TeacherError,
    _parse_retry_after,
    split_reasoning,
)
from tests.helpers.key_echoes import all_text, chat_body, leaks, wire_forms
from tests.helpers.teacher_server import Fault, FaultPlan, TeacherServer, chat_response, harmony

pytestmark = pytest.mark.timeout(60)

KEY_ENV = "KAKUGO_TEACHER_API_KEY"
SECRET = "sk-kakugo-test-SECRET-4f1d9c2b7a"


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def msgs(text: str = "Báwo ni?") -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer in Yoruba."}, {"role": "user", "content": text}]


def client(url: str, **kw: Any) -> TeacherClient:
    # Tiny backoff and timeout keep the fault tests fast.
    kw.setdefault("api_key_env", None)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("timeout", 2.0)
    return TeacherClient(url, "any-model", **kw)


async def chat_once(c: TeacherClient, text: str = "Báwo ni?", **kw: Any) -> ChatResult:
    async with c:
        return await c.chat(msgs(text), max_tokens=kw.pop("max_tokens", 64), **kw)


@pytest.fixture
def server() -> Iterator[TeacherServer]:
    with TeacherServer() as srv:
        yield srv


# --------------------------------------------------------------------------- reasoning


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        ("analysisLet me think.assistantfinalẸ kú àárọ̀!", "Let me think.", "Ẹ kú àárọ̀!"),
        ("analysis  Think\n assistantfinal\n Answer ", "Think", "Answer"),
        (
            "<|channel|>analysis<|message|>Think<|end|><|start|>assistant<|channel|>final"
            "<|message|>Answer<|return|>",
            "Think",
            "Answer",
        ),
        ("Just an answer.", None, "Just an answer."),
        ("analysis of the poem: it rhymes.", None, "analysis of the poem: it rhymes."),
        ("<|channel|>analysis<|message|>cut off mid-thou", "cut off mid-thou", ""),
        ("assistantfinalNo reasoning.", None, "No reasoning."),
        ("", None, ""),
    ],
)
def test_split_reasoning(text: str, reasoning: str | None, answer: str) -> None:
    assert split_reasoning(text) == (reasoning, answer)


@pytest.mark.parametrize(
    ("reply", "reasoning", "content"),
    [
        (chat_response("Answer", reasoning="Because."), "Because.", "Answer"),
        (
            chat_response("Answer", reasoning="Because.", reasoning_field="reasoning"),
            "Because.",
            "Answer",
        ),
        (chat_response(harmony("Because.", "Answer")), "Because.", "Answer"),
        ({"content": "Answer", "reasoning_content": "Why."}, "Why.", "Answer"),
        ("Plain answer.", None, "Plain answer."),
        # A reasoning field wins; the content is then left as sent.
        (chat_response("x assistantfinal y", reasoning="R"), "R", "x assistantfinal y"),
    ],
)
def test_reasoning_from_server(reply: Any, reasoning: str | None, content: str) -> None:
    with TeacherServer(lambda body: reply) as srv:
        r = run(chat_once(client(srv.url)))
    assert (r.reasoning, r.content, r.finish_reason, r.ok) == (reasoning, content, "stop", True)


# --------------------------------------------------------------------------- outcomes


def test_length_is_returned_not_ok_and_counted(server: TeacherServer) -> None:
    server.faults = FaultPlan(at={0: "length"})
    c = client(server.url)
    r = run(chat_once(c, "Sọ ìtàn gígùn kan fún mi"))
    assert r.finish_reason == "length" and not r.ok
    assert server.count == 1, "a finished 'length' answer is not retried"
    assert c.usage.failures == {"length": 1}
    assert c.usage.completion_tokens == r.completion_tokens > 0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("500", "http_500"),
        ("502", "http_502"),
        ("503", "http_503"),
        (Fault("429"), "http_429"),
        (Fault("http", status=408), "http_408"),
        (Fault("timeout", sleep=5), "timeout"),
        ("drop", "connection"),
        ("bad_json", "bad_json"),
        ("no_choices", "no_choices"),
    ],
)
def test_retryable_faults_recover(server: TeacherServer, fault: Any, reason: str) -> None:
    server.faults = FaultPlan(at={0: fault})
    c = client(server.url, timeout=0.5)
    r = run(chat_once(c))
    assert r.ok and r.content == "echo: Báwo ni?"
    assert server.count == 2
    assert c.usage.retries == 1 and c.usage.retry_reasons == {reason: 1}
    assert c.usage.http_requests == 2 and c.usage.failures == {}


def test_many_faults_at_once_all_recover(server: TeacherServer) -> None:
    server.faults = FaultPlan(
        rates={
            "500": 0.15,
            Fault("429"): 0.15,
            "drop": 0.1,
            "bad_json": 0.1,
            Fault("timeout", sleep=3): 0.05,
        },
        seed=3,
        max_per_body=2,
    )
    c = client(server.url, timeout=0.5, max_concurrency=8)

    async def go() -> list[ChatResult]:
        async with c:
            return await asyncio.gather(*(c.chat(msgs(f"q{i}"), max_tokens=32) for i in range(60)))

    results = run(go())
    assert [r.content for r in results] == [f"echo: q{i}" for i in range(60)]
    assert c.usage.retries == len(server.injected) > 0
    assert c.usage.http_requests == server.count == 60 + len(server.injected)


def test_retry_after_seconds_is_honoured(server: TeacherServer) -> None:
    server.faults = FaultPlan(at={0: Fault("429", retry_after="0.6")})
    t = time.monotonic()
    r = run(chat_once(client(server.url, backoff_max=10)))
    assert r.ok and time.monotonic() - t >= 0.6


def test_retry_after_http_date_is_honoured(server: TeacherServer) -> None:
    # HTTP-dates have whole seconds: now + 2 s rounds down to at least 1 s from now.
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    server.faults = FaultPlan(at={0: Fault("429", retry_after=when)})
    t = time.monotonic()
    r = run(chat_once(client(server.url, backoff_max=10)))
    assert r.ok and time.monotonic() - t >= 0.9


def test_retry_after_is_capped_by_backoff_max(server: TeacherServer) -> None:
    server.faults = FaultPlan(at={0: Fault("429", retry_after="120")})
    t = time.monotonic()
    r = run(chat_once(client(server.url, backoff_max=0.1)))
    assert r.ok and time.monotonic() - t < 5


def test_parse_retry_after() -> None:
    assert _parse_retry_after("1.5", None) == 1.5
    assert _parse_retry_after("3", "250") == 0.25  # retry-after-ms is more precise
    assert _parse_retry_after("soon", None) is None
    assert _parse_retry_after("-1", None) is None
    assert _parse_retry_after(None, None) is None
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert _parse_retry_after(past, None) == 0.0
    future = _parse_retry_after(email.utils.formatdate(time.time() + 30, usegmt=True), None)
    assert future is not None and 25 < future <= 30


def test_non_retryable_400_fails_at_once(server: TeacherServer) -> None:
    server.faults = FaultPlan(rates={"400": 1.0})
    c = client(server.url)
    with pytest.raises(TeacherError) as exc:
        run(chat_once(c))
    assert server.count == 1
    e = exc.value
    assert (e.reason, e.attempts, e.status) == ("http_400", 1, 400)
    assert isinstance(e.raw, dict) and e.raw["error"]["message"] == "injected 400"
    assert c.usage.failures == {"http_400": 1} and c.usage.retries == 0


def test_retries_exhausted(server: TeacherServer) -> None:
    server.faults = FaultPlan(rates={"500": 1.0})
    c = client(server.url, max_retries=2)
    with pytest.raises(TeacherError) as exc:
        run(chat_once(c))
    assert (exc.value.reason, exc.value.attempts) == ("http_500", 3)
    assert "http_500" in str(exc.value) and "3 attempt" in str(exc.value)
    assert server.count == 3
    assert c.usage.as_dict()["failures"] == {"http_500": 1}
    assert c.usage.retries == 2 and c.usage.failed == 1


def test_connection_refused_is_retried_then_fails() -> None:
    with TeacherServer() as srv:
        url = srv.url
    c = client(url, max_retries=1)
    with pytest.raises(TeacherError) as exc:
        run(chat_once(c))
    assert (exc.value.reason, exc.value.attempts) == ("connection", 2)


# --------------------------------------------------------------------------- concurrency


def test_concurrency_is_bounded() -> None:
    with TeacherServer(latency=0.05) as srv:
        c = client(srv.url, max_concurrency=5)

        async def go() -> None:
            async with c:
                await asyncio.gather(*(c.chat(msgs(f"q{i}"), max_tokens=8) for i in range(40)))

        run(go())
        assert srv.count == 40
        assert srv.max_in_flight == 5 == c.max_in_flight
        assert c.in_flight == 0


def test_cancelled_request_frees_its_slot() -> None:
    with TeacherServer(latency=5) as srv:
        c = client(srv.url, max_concurrency=1, timeout=30)

        async def go() -> None:
            async with c:
                task = asyncio.create_task(c.chat(msgs(), max_tokens=8))
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert c.in_flight == 0
                srv.latency = 0
                assert (await c.chat(msgs("next"), max_tokens=8)).ok

        run(go())


# --------------------------------------------------------------------------- requests


async def _three_samples(server: TeacherServer, seed: int) -> None:
    async with client(server.url, seed=seed) as c:
        for i in range(3):
            await c.chat(msgs(), max_tokens=100, temperature=0.7, top_p=0.9, sample_index=i)


def test_requests_are_plain_single_samples(server: TeacherServer) -> None:
    run(_three_samples(server, seed=42))
    bodies = server.requests
    assert all(b.get("n", 1) == 1 for b in bodies), "never n > 1"
    assert {b["model"] for b in bodies} == {"any-model"}
    assert all((b["max_tokens"], b["temperature"], b["top_p"]) == (100, 0.7, 0.9) for b in bodies)
    seeds = [b["seed"] for b in bodies]
    assert len(set(seeds)) == 3, "each sample gets its own seed"
    # Reproducible: a fresh client with the same seed sends the same seeds.
    server.reset()
    run(_three_samples(server, seed=42))
    assert [b["seed"] for b in server.requests] == seeds


def test_tokens_are_summed(server: TeacherServer) -> None:
    server.responder = lambda body: {
        "content": "ok",
        "usage": {"prompt_tokens": 11, "completion_tokens": 7},
    }
    c = client(server.url)

    async def go() -> None:
        async with c:
            await asyncio.gather(*(c.chat(msgs(f"{i}"), max_tokens=8) for i in range(5)))

    run(go())
    u = c.usage.as_dict()
    assert (u["requests"], u["prompt_tokens"], u["completion_tokens"]) == (5, 55, 35)


def test_from_settings(monkeypatch: pytest.MonkeyPatch, server: TeacherServer) -> None:
    monkeypatch.setenv("MY_TEACHER_KEY", SECRET)
    settings = TeacherSettings(
        endpoint=TeacherEndpoint(
            url=server.url, model="gpt-oss-120b", api_key_env="MY_TEACHER_KEY"
        ),
        sampling=SamplingSpec(temperature=0.5, top_p=0.8),
        max_concurrency=7,
        request_timeout_seconds=12.5,
        max_retries=3,
    )
    c = TeacherClient.from_settings(settings, base_url=server.url, model="gpt-oss-120b")
    assert (c.max_concurrency, c.timeout, c.max_retries) == (7, 12.5, 3)
    assert c.api_key_env == "MY_TEACHER_KEY"
    run(chat_once(c))
    assert server.authorizations == [f"Bearer {SECRET}"]
    assert (server.requests[0]["temperature"], server.requests[0]["top_p"]) == (0.5, 0.8)


# --------------------------------------------------------------------------- cache


def test_cache_replays_without_requests(server: TeacherServer, tmp_path: Path) -> None:
    store = open_store(str(tmp_path)).child("respond", "_cache")
    server.responder = lambda body: chat_response(
        harmony("thinking", body["messages"][-1]["content"].upper())
    )
    server.faults = FaultPlan(at={3: "length"})

    async def go(**kw: Any) -> tuple[list[ChatResult], TeacherClient]:
        async with client(server.url, cache=RequestCache(store), seed=5) as c:
            rs = await asyncio.gather(
                *(c.chat(msgs(f"q{i}"), max_tokens=16, **kw) for i in range(6))
            )
        return rs, c

    first, c1 = run(go())
    assert server.count == 6 and not any(r.cached for r in first)
    assert c1.usage.failures == {"length": 1}
    [cut] = [r for r in first if not r.ok]
    second, c2 = run(go())
    # The five answers that finished are replayed; the cut-off one is sent again, as a
    # new request (its next attempt: another key, another seed).
    assert server.count == 7
    assert [r.cached for r in second] == [r.ok for r in first]
    assert all(r.ok for r in second)
    assert [dataclasses.replace(r, cached=False) for r in second if r.cached] == [
        r for r in first if r.ok
    ]
    resent = next(r for r in second if not r.cached)
    assert (resent.attempt, resent.content) == (1, f"Q{first.index(cut)}")
    # Arrival 3 was cut off (the fault plan); arrival 6 is the same request sent again.
    assert server.requests[6]["messages"] == server.requests[3]["messages"]
    assert server.requests[6]["seed"] != server.requests[3]["seed"]
    assert (c2.usage.cached, c2.usage.resent, c2.usage.http_requests) == (5, 1, 1)
    assert c2.usage.failures == {}
    # Tokens: replays are not sent, but the ledger counts every answer paid for, once.
    assert c2.usage.sent_prompt_tokens == resent.prompt_tokens > 0
    assert c2.usage.prompt_tokens == c1.usage.prompt_tokens + resent.prompt_tokens
    assert c2.usage.completion_tokens == c1.usage.completion_tokens + resent.completion_tokens
    assert c2.usage.cached_prompt_tokens == c1.usage.prompt_tokens - cut.prompt_tokens

    third, c3 = run(go())
    assert server.count == 7 and all(r.cached for r in third)
    assert (c3.usage.prompt_tokens, c3.usage.sent_prompt_tokens) == (c2.usage.prompt_tokens, 0)

    fourth, _ = run(go(sample_index=1))
    assert server.count == 13, "another sample index is another request"
    assert not any(r.cached for r in fourth)

    files = sorted(
        p.relative_to(store.local_path()).as_posix() for p in store.local_path().rglob("*.json")
    )
    assert len(files) == 13
    assert all(f == f"{f.split('/')[1][:2]}/{f.split('/')[1]}" for f in files)
    # The cut-off answer is kept, marked rejected, with what it cost.
    entry = RequestCache(store).get_entry(cut.key)
    assert entry is not None and entry.rejected == "finish_length"
    assert entry.prompt_tokens == cut.prompt_tokens and entry.response == cut.raw


def test_rejected_answers_are_sent_again_attempt_by_attempt(
    server: TeacherServer, tmp_path: Path
) -> None:
    """An answer the caller rejects (e.g. it did not parse) is kept, marked, and never
    replayed: the next client sends the request as attempt 1, then 2; every answer of the
    chain stays in the ledger."""
    cache = RequestCache(open_store(str(tmp_path)))

    async def ask(reject: str | None = None, owner: int = 0) -> tuple[ChatResult, TeacherClient]:
        async with client(server.url, cache=cache, seed=1, owner=owner) as c:
            r = await c.chat(msgs("a list, please"), max_tokens=16)
            if reject:
                await c.reject(r, reject)
        return r, c

    first, c1 = run(ask(reject="bad_json"))
    second, c2 = run(ask(reject="bad_json"))
    third, c3 = run(ask())
    fourth, c4 = run(ask())
    assert [r.attempt for r in (first, second, third, fourth)] == [0, 1, 2, 2]
    assert [r.cached for r in (first, second, third, fourth)] == [False, False, False, True]
    assert server.count == 3
    seeds = [body["seed"] for body in server.requests]
    assert len(set(seeds)) == 3, "each attempt is a new request, with a seed of its own"
    assert (c2.usage.resent, c3.usage.resent, c4.usage.resent) == (1, 1, 0)
    tokens = first.prompt_tokens
    assert [c.usage.prompt_tokens for c in (c1, c2, c3, c4)] == [
        tokens,
        2 * tokens,
        3 * tokens,
        3 * tokens,
    ]
    assert [c.usage.sent_prompt_tokens for c in (c1, c2, c3, c4)] == [tokens] * 3 + [0]
    entries = [cache.get_entry(r.key) for r in (first, second, third)]
    assert [(e.attempt, e.rejected, e.owner) for e in entries if e] == [
        (0, "bad_json", 0),
        (1, "bad_json", 0),
        (2, None, 0),
    ]
    # Another owner (another shard asking the same thing) replays it, but did not pay.
    other, c5 = run(ask(owner=1))
    assert other.cached and (c5.usage.prompt_tokens, c5.usage.cached_prompt_tokens) == (
        0,
        tokens,
    )
    # The keys: attempt 0 is the plain request key, later ones add the attempt.
    base = {
        "messages": msgs("a list, please"),
        "temperature": 1,
        "top_p": 1,
        "max_tokens": 16,
        "sample_index": 0,
    }
    assert first.key == request_key(base) == request_key({**base, "attempt": 0})
    assert second.key == request_key({**base, "attempt": 1}) != first.key


def test_entries_written_before_the_ledger(server: TeacherServer, tmp_path: Path) -> None:
    """A cache of bare responses (before attempts and the ledger): finished answers are
    replayed and counted as paid, cut-off ones are sent again."""
    cache = RequestCache(open_store(str(tmp_path)))

    def key(text: str) -> str:
        return request_key(
            {
                "messages": msgs(text),
                "temperature": 1,
                "top_p": 1,
                "max_tokens": 16,
                "sample_index": 0,
            }
        )

    old = {"ok": "stop", "cut": "length"}
    for text, finish in old.items():
        (tmp_path / key(text)[:2]).mkdir(exist_ok=True)
        body = chat_response(f"old {text}", finish_reason=finish, prompt_tokens=10)
        (tmp_path / key(text)[:2] / f"{key(text)}.json").write_text(json.dumps(body))

    async def go() -> tuple[list[ChatResult], TeacherClient]:
        async with client(server.url, cache=cache, owner=3) as c:
            return [await c.chat(msgs(t), max_tokens=16) for t in old], c

    (ok, cut), c = run(go())
    assert ok.cached and ok.content == "old ok"
    assert not cut.cached and cut.attempt == 1 and cut.content.startswith("echo")
    assert server.count == 1
    assert c.usage.prompt_tokens == 10 + 10 + cut.prompt_tokens


def test_cache_layout_and_corrupt_entries(tmp_path: Path) -> None:
    cache = RequestCache(open_store(str(tmp_path)))
    key = request_key(
        {"messages": msgs(), "temperature": 1, "top_p": 1, "max_tokens": 8, "sample_index": 0}
    )
    assert cache.get(key) is None and key not in cache
    cache.put(key, {"choices": []})
    assert key in cache and (tmp_path / key[:2] / f"{key}.json").is_file()
    (tmp_path / key[:2] / f"{key}.json").write_text("{not json")
    assert cache.get(key) is None
    with pytest.raises(ValueError):
        cache.get("../../etc/passwd")


def test_request_key() -> None:
    base = {
        "messages": msgs(),
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 64,
        "sample_index": 0,
    }
    k = request_key(base)
    assert len(k) == 64
    # Only messages, sampling and sample index count; model, seed, n do not.
    assert request_key({**base, "model": "other", "seed": 3}) == k
    assert request_key({**base, "temperature": 1, "top_p": 1}) == k
    for change in (
        {"messages": msgs("other")},
        {"temperature": 0.7},
        {"top_p": 0.9},
        {"max_tokens": 65},
        {"sample_index": 1},
    ):
        assert request_key({**base, **change}) != k, change
    with pytest.raises(ValueError, match="sample_index"):
        request_key({k2: v for k2, v in base.items() if k2 != "sample_index"})


def test_unparsable_cache_entry_is_asked_again(server: TeacherServer, tmp_path: Path) -> None:
    cache = RequestCache(open_store(str(tmp_path)))
    key = request_key(
        {"messages": msgs(), "temperature": 1.0, "top_p": 1.0, "max_tokens": 64, "sample_index": 0}
    )
    cache.put(key, {"choices": []})
    r = run(chat_once(client(server.url, cache=cache)))
    assert r.ok and not r.cached and server.count == 1
    assert cache.get(key)["choices"][0]["message"]["content"] == "echo: Báwo ni?"


# --------------------------------------------------------------------------- the API key


def test_api_key_is_sent_but_never_leaks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's included

    def responder(body: dict[str, Any]) -> Any:
        text = body["messages"][-1]["content"]
        if text == "echo key":  # a misbehaving server that echoes the key back
            return f"your key is {SECRET}"
        return "fine"

    with TeacherServer(responder, api_key=SECRET) as srv:
        cache = RequestCache(open_store(str(tmp_path)))
        # Errors whose bodies echo the key, as some APIs do with a rejected key.
        echo = Fault("http", status=403, message=f"key {SECRET} not allowed")
        srv.faults = FaultPlan(
            when=lambda i, body, n: (
                echo
                if body["messages"][-1]["content"] == "forbidden"
                else Fault("500")
                if body["messages"][-1]["content"] == "broken"
                else None
            )
        )
        c = TeacherClient(
            srv.url, "m", cache=cache, max_retries=2, backoff_base=0.01, backoff_max=0.02, timeout=2
        )
        errors: list[TeacherError] = []

        async def go() -> list[ChatResult]:
            out = []
            async with c:
                out.append(await c.chat(msgs("hello"), max_tokens=8))
                out.append(await c.chat(msgs("echo key"), max_tokens=8))
                for text in ("forbidden", "broken"):
                    try:
                        await c.chat(msgs(text), max_tokens=8)
                    except TeacherError as e:
                        errors.append(e)
            return out

        results = run(go())
        assert set(srv.authorizations) == {f"Bearer {SECRET}"}, "the key was sent"

    assert results[0].content == "fine"
    assert SECRET not in results[1].content and "***" in results[1].content
    assert [e.reason for e in errors] == ["http_403", "http_500"]
    seen = [repr(c), str(c.__dict__), json.dumps(c.usage.as_dict()), repr(c.usage)]
    for e in errors:
        seen += [str(e), repr(e), json.dumps(e.raw), repr(e.__cause__), repr(e.__context__)]
    for r in results:
        seen += [repr(r), json.dumps(r.raw)]
    seen += [rec.getMessage() for rec in caplog.records]
    seen += [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    assert caplog.records, "the test must have produced logs to check"
    assert len(list(tmp_path.rglob("*.json"))) == 2
    for text in seen:
        assert SECRET not in text
    assert "Bearer" not in " ".join(rec.getMessage() for rec in caplog.records)


# A key with the characters that encoders escape: "/" (JSON's "\/"), "+" and "=".
SLASHED = "sk-kakugo/test+SECRET=4f1d9c2b7a/x"


@pytest.mark.parametrize("form", sorted(wire_forms(SLASHED)))
def test_redactor_finds_every_echo_of_the_key(form: str) -> None:
    redact = Redactor(SLASHED)
    wire = wire_forms(SLASHED)[form]
    # As stored after parsing (the JSON escapes undone), and as raw text.
    parsed = json.loads(f'"{wire}"')
    for text in (f"key: {parsed}!", f"key: {wire}!", json.dumps({"k": parsed})):
        out = redact.text(text)
        assert "***" in out and leaks(out, SLASHED) == [], (form, out)
    assert redact.value({parsed: [parsed, 1, None]}) == {
        redact.text(parsed): [redact.text(parsed), 1, None]
    }


def test_redactor_leaves_other_text_alone() -> None:
    redact = Redactor(SLASHED)
    texts = [
        "Ẹ kú àárọ̀! 100% \\/ &amp; a+b=c, sk-kakugo/test",
        base64.b64encode(b"another secret altogether").decode(),
        "",
    ]
    for text in texts:
        assert redact.text(text) == text
    assert Redactor(None).text(SLASHED) == SLASHED and not Redactor("")
    assert repr(redact) == "Redactor(***)" and SLASHED not in repr(redact)


def test_escaped_key_echoes_are_scrubbed_everywhere(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A gateway echoes the key back in every form, in answers and in error bodies: no
    stored file, result, error or log line holds it, whatever decoding is applied."""
    monkeypatch.setenv(KEY_ENV, SLASHED)
    caplog.set_level(logging.DEBUG)
    forms = wire_forms(SLASHED)

    def gateway(index: int, body: dict[str, Any], nth: int) -> Fault | None:
        kind, _, form = body["messages"][-1]["content"].partition(" ")
        wire = forms.get(form, "")
        if kind == "answer":
            return Fault("raw", body=chat_body(f"ok {wire}", f"I was sent {wire}"))
        if kind == "cut":
            return Fault("raw", body=chat_body(f"cut {wire}", wire, finish_reason="length"))
        if kind == "forbidden":
            error = '{"error":{"message":"key ' + wire + ' is not allowed","key":"' + wire + '"}}'
            return Fault("raw", status=403, body=error.encode())
        if kind == "gateway":  # a proxy's plain-text page
            return Fault("raw", status=502, body=f"upstream refused Bearer {wire}".encode())
        if kind == "broken":  # a 200 whose JSON is cut off, echo included
            return Fault("raw", body=chat_body(wire, wire)[:-20])
        return None

    with TeacherServer(api_key=SLASHED, faults=FaultPlan(when=gateway)) as srv:
        cache = RequestCache(open_store(str(tmp_path)))
        c = TeacherClient(
            srv.url, "m", cache=cache, max_retries=1, backoff_base=0.01, backoff_max=0.02
        )
        results: list[ChatResult] = []
        errors: list[TeacherError] = []

        async def go() -> None:
            async with c:
                for form in forms:
                    for kind in ("answer", "cut", "forbidden", "gateway", "broken"):
                        try:
                            results.append(await c.chat(msgs(f"{kind} {form}"), max_tokens=8))
                        except TeacherError as e:
                            errors.append(e)

        run(go())
        assert set(srv.authorizations) == {f"Bearer {SLASHED}"}, "the key was sent"

    assert len(results) == 2 * len(forms) and len(errors) == 3 * len(forms)
    assert {e.reason for e in errors} == {"http_403", "http_502", "bad_json"}
    assert all("***" in r.content and "***" in (r.reasoning or "") for r in results), results
    seen = [repr(c), str(c.__dict__), json.dumps(c.usage.as_dict())]
    for e in errors:
        seen += [str(e), repr(e), all_text(e.raw)]
    for r in results:
        seen += [repr(r), r.content, r.reasoning or "", all_text(r.raw)]
    seen += [rec.getMessage() for rec in caplog.records]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2 * len(forms)
    seen += [p.read_text(encoding="utf-8") for p in files]
    assert caplog.records
    for text in seen:
        assert leaks(text, SLASHED) == [], text


def test_wrong_key_is_a_non_retryable_401(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with TeacherServer(api_key="another-key") as srv:
        c = TeacherClient(srv.url, "m", backoff_base=0.01)
        with pytest.raises(TeacherError) as exc:
            run(chat_once(c))
    assert (exc.value.reason, exc.value.attempts) == ("http_401", 1)
    assert SECRET not in repr(exc.value)


def test_no_key_sends_no_authorization(
    monkeypatch: pytest.MonkeyPatch, server: TeacherServer
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    run(chat_once(TeacherClient(server.url, "m")))
    assert server.authorizations == [None]


# --------------------------------------------------------------------------- test server


def test_server_endpoints_and_rates_are_order_independent(server: TeacherServer) -> None:
    import urllib.request

    root = server.url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{root}/health") as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(f"{server.url}/models") as r:
        assert json.loads(r.read())["data"][0]["id"] == "teacher"
    plan_a = FaultPlan(rates={"500": 0.5}, seed=1)
    plan_b = FaultPlan(rates={"500": 0.5}, seed=1)
    bodies = [{"messages": msgs(f"q{i}")} for i in range(20)]
    a = [plan_a.pick(i, b) is not None for i, b in enumerate(bodies)]
    b = [plan_b.pick(i, body) is not None for i, body in reversed(list(enumerate(bodies)))]
    assert a == list(reversed(b)) and 0 < sum(a) < 20


def test_httpx_transport(server: TeacherServer) -> None:
    pytest.importorskip("httpx")
    server.faults = FaultPlan(at={0: "drop", 1: "500", 2: Fault("timeout", sleep=5)})
    c = client(server.url, transport="httpx", timeout=0.5)
    r = run(chat_once(c))
    assert r.ok and c.transport == "httpx"
    assert c.usage.retry_reasons == {"connection": 1, "http_500": 1, "timeout": 1}
