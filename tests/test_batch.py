"""Batch mode (`teacher.endpoint.batch`): the teacher stages' requests through the scripted
server's Batch API, with failed lines, expired and failed batches, answers out of order,
and stages killed while they wait. Nothing is lost, sent twice or paid twice: the server
counts the lines submitted and answered per custom_id, the ledger must agree."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kakugo_stages.batch import BatchRecord, BatchTeacherClient
from kakugo_stages.cost import endpoint_token_cost
from kakugo_stages.request_cache import RequestCache, request_key
from kakugo_stages.spec import TeacherEndpoint
from kakugo_stages.store import open_store
from kakugo_stages.teacher import TeacherClient, TeacherError
from tests.helpers.teacher_server import BatchFaults, TeacherServer, echo_responder
from tests.test_generation_stages import rows, small_spec, tokenizer_dir  # noqa: F401

# --------------------------------------------------------------------------- the client


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question number {i}"}]


def _key(i: int, attempt: int = 0) -> str:
    request = {
        "messages": _messages(i),
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 64,
        "sample_index": 0,
        "response_format": None,
    }
    return request_key({**request, "attempt": attempt} if attempt else request)


def _client(srv: TeacherServer, root: Path, **kwargs: Any) -> BatchTeacherClient:
    store = open_store(str(root))
    kwargs.setdefault("max_retries", 3)
    return BatchTeacherClient(
        srv.url,
        "m",
        cache=RequestCache(store.child("_cache")),
        records=store.child("_batches"),
        poll_seconds=0.01,
        linger=0.05,
        backoff_base=0.001,
        backoff_max=0.01,
        owner=0,
        **kwargs,
    )


async def _ask_all(client: TeacherClient, n: int) -> list[Any]:
    async def one(i: int) -> Any:
        try:
            return await client.chat(_messages(i), max_tokens=64)
        except TeacherError as exc:
            return exc

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.aclose()


def _records(root: Path) -> list[BatchRecord]:
    store = open_store(str(root)).child("_batches")
    return [BatchRecord.from_json(store.read_json(k)) for k in sorted(store.list())]


def test_answers_are_matched_by_custom_id_cached_and_paid_once(tmp_path: Path) -> None:
    with TeacherServer(echo_responder) as srv:
        client = _client(srv, tmp_path)
        results = asyncio.run(_ask_all(client, 25))
        # The output file is shuffled: each answer must still be its own request's.
        assert [r.content for r in results] == [f"echo: question number {i}" for i in range(25)]
        assert srv.count == 0 and srv.uploads == 1 and len(srv.batches) == 1
        assert set(srv.batch_lines) == {_key(i) for i in range(25)}
        assert set(srv.batch_lines.values()) == {1} and set(srv.batch_answered.values()) == {1}
        usage = client.usage
        assert usage.batches == 1 and usage.batch_lines == 25
        paid = (srv.served_prompt_tokens, srv.served_completion_tokens)
        assert (usage.prompt_tokens, usage.completion_tokens) == paid
        assert (usage.batch_prompt_tokens, usage.batch_completion_tokens) == paid
        [record] = _records(tmp_path)
        assert record.closed and record.status == "completed"
        assert record.batch_id in srv.batches and set(record.lines) == set(srv.batch_lines)
        cache = RequestCache(open_store(str(tmp_path)).child("_cache"))
        entry = cache.get_entry(_key(3))
        assert entry is not None and entry.batch and entry.owner == 0

        # Asked again: every answer replays from the cache, nothing is submitted.
        again = _client(srv, tmp_path)
        replayed = asyncio.run(_ask_all(again, 25))
        assert all(r.cached for r in replayed) and srv.uploads == 1
        assert (again.usage.batch_prompt_tokens, again.usage.batch_completion_tokens) == paid


def test_failed_lines_go_into_the_next_batch_then_are_rejected(tmp_path: Path) -> None:
    always, bad_request, twice = _key(0), _key(1), {_key(2), _key(3)}

    def line(custom_id: str, body: dict[str, Any], nth: int) -> str | None:
        if custom_id == always:
            return "500"
        if custom_id == bad_request:
            return "400"  # the request's own fault: not sent again
        if custom_id in twice and nth < 2:
            return "error" if custom_id == _key(2) else "503"
        return None

    with TeacherServer(echo_responder) as srv:
        srv.batch_faults = BatchFaults(line=line)
        client = _client(srv, tmp_path, max_retries=3)
        results = asyncio.run(_ask_all(client, 10))
    assert isinstance(results[0], TeacherError) and results[0].reason == "http_500"
    assert results[0].attempts == 4
    assert isinstance(results[1], TeacherError) and results[1].reason == "http_400"
    assert [r.content for r in results[2:]] == [f"echo: question number {i}" for i in range(2, 10)]
    assert srv.batch_lines[always] == 4 and srv.batch_lines[bad_request] == 1
    assert srv.batch_lines[_key(2)] == srv.batch_lines[_key(3)] == 3
    assert all(srv.batch_lines[_key(i)] == 1 for i in range(4, 10))
    # Every line answered once; four batches (the first, then the retries).
    assert set(srv.batch_answered.values()) == {1} and len(srv.batch_answered) == 8
    assert len(srv.batches) == 4 and client.usage.batches == 4
    assert client.usage.failures == {"http_400": 1, "http_500": 1}
    assert client.usage.retry_reasons == {"batch_error": 2, "http_503": 2, "http_500": 3}
    assert all(r.closed for r in _records(tmp_path))


def test_an_expired_batch_keeps_its_answers_and_resubmits_the_rest(tmp_path: Path) -> None:
    with TeacherServer(echo_responder) as srv:
        srv.batch_faults = BatchFaults(expire=frozenset({0}), fail=frozenset({1}))
        client = _client(srv, tmp_path)
        results = asyncio.run(_ask_all(client, 12))
    assert [r.content for r in results] == [f"echo: question number {i}" for i in range(12)]
    statuses = [b["status"] for b in srv.batches.values()]
    assert statuses == ["expired", "failed", "completed"]
    first, second, third = (srv._batch_inputs[b] for b in srv.batches)
    assert len(first) == 12 and len(second) == len(third) == 6
    assert set(srv.batch_answered.values()) == {1} and len(srv.batch_answered) == 12
    assert client.usage.retry_reasons == {"batch_expired": 6, "batch_failed": 6}
    assert sorted(str(r.status) for r in _records(tmp_path)) == sorted(statuses)


def test_a_restarted_client_waits_for_its_batch_instead_of_sending_again(
    tmp_path: Path,
) -> None:
    with TeacherServer(echo_responder) as srv:
        srv.batch_faults = BatchFaults(hold=True)

        async def stopped_while_waiting() -> None:
            client = _client(srv, tmp_path)
            task = asyncio.ensure_future(_ask_all(client, 8))
            while not srv.batches or not _records(tmp_path)[0].batch_id:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # a few polls, in progress
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(stopped_while_waiting())
        [record] = _records(tmp_path)
        assert not record.closed and srv.uploads == 1
        srv.batch_faults = BatchFaults()
        client = _client(srv, tmp_path)
        results = asyncio.run(_ask_all(client, 8))
        assert [r.content for r in results] == [f"echo: question number {i}" for i in range(8)]
        assert srv.uploads == 1 and list(srv.batches) == [record.batch_id]
        assert set(srv.batch_lines.values()) == {1}
        # Paid by this shard: the ledger counts the answers once, at batch prices.
        assert client.usage.batch_prompt_tokens == srv.served_prompt_tokens
        assert client.usage.batches == 0  # it created none


def test_a_batch_created_but_not_recorded_is_found_not_created_again(tmp_path: Path) -> None:
    """The process stopped between creating the batch and saving its id: the record holds
    the file id, and the restarted client adopts the batch made from that file."""
    with TeacherServer(echo_responder) as srv:
        srv.batch_faults = BatchFaults(hold=True)

        async def stopped() -> None:
            client = _client(srv, tmp_path)
            task = asyncio.ensure_future(_ask_all(client, 5))
            while not srv.batches or not _records(tmp_path)[0].batch_id:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(stopped())
        store = open_store(str(tmp_path)).child("_batches")
        [name] = store.list()
        value = store.read_json(name)
        batch_id, value["batch_id"] = value["batch_id"], None
        store.write_json(name, value)
        srv.batch_faults = BatchFaults()
        results = asyncio.run(_ask_all(_client(srv, tmp_path), 5))
    assert [r.content for r in results] == [f"echo: question number {i}" for i in range(5)]
    assert list(srv.batches) == [batch_id] and srv.uploads == 1
    assert _records(tmp_path)[0].batch_id == batch_id


def test_batch_bounds_split_the_queue(tmp_path: Path) -> None:
    with TeacherServer(echo_responder) as srv:
        client = _client(srv, tmp_path, max_lines=4)
        results = asyncio.run(_ask_all(client, 10))
        assert len(results) == 10 and [len(v) for v in srv._batch_inputs.values()] == [4, 4, 2]
        srv_b = len(srv.batches)
    with TeacherServer(echo_responder) as srv:
        client = _client(srv, tmp_path / "b", max_bytes=1)  # one request per file
        asyncio.run(_ask_all(client, 3))
        assert len(srv.batches) == 3 and srv_b == 3


def test_identical_requests_share_one_line_and_are_paid_once(tmp_path: Path) -> None:
    with TeacherServer(echo_responder) as srv:
        client = _client(srv, tmp_path)

        async def twice() -> list[Any]:
            try:
                return await asyncio.gather(
                    *(client.chat(_messages(1), max_tokens=64) for _ in range(2))
                )
            finally:
                await client.aclose()

        a, b = asyncio.run(twice())
    assert a.content == b.content and srv.batch_lines[_key(1)] == 1
    assert client.usage.prompt_tokens == srv.served_prompt_tokens


def test_batch_prices_and_the_mode_switch() -> None:
    endpoint = TeacherEndpoint.model_validate({"url": "http://h/v1", "model": "m", "batch": True})
    assert endpoint.batch_prices.input_per_million == Decimal("0.075")
    assert endpoint.batch_prices.output_per_million == Decimal("0.30")
    # 2M prompt + 1M completion tokens, half of each through batches.
    cost = endpoint_token_cost(
        2_000_000,
        1_000_000,
        endpoint,
        batch_prompt_tokens=1_000_000,
        batch_completion_tokens=500_000,
    )
    assert cost == Decimal("0.15") + Decimal("0.075") + Decimal("0.30") + Decimal("0.15")
