"""Batch mode (`teacher.endpoint.batch`): the teacher stages' requests through the scripted
server's Batch API, with failed lines, expired and failed batches, answers out of order,
and stages killed while they wait. Nothing is lost, sent twice or paid twice: the server
counts the lines submitted and answered per custom_id, the ledger must agree."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kakugo_stages.batch import BatchRecord, BatchTeacherClient, make_teacher_client
from kakugo_stages.cost import endpoint_token_cost
from kakugo_stages.request_cache import RequestCache, request_key
from kakugo_stages.resolved import load_run_spec
from kakugo_stages.spec import TeacherEndpoint, TeacherSettings
from kakugo_stages.stages import get_stage, run_stage
from kakugo_stages.store import StageOutput, open_store
from kakugo_stages.teacher import TeacherClient, TeacherError
from tests.helpers.s3_server import create_bucket, moto_s3_server, set_fake_aws_env
from tests.helpers.teacher_scripts import scripted_teacher
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


def _client(srv: TeacherServer, root: Path | str, **kwargs: Any) -> BatchTeacherClient:
    store = open_store(str(root), endpoint_url=kwargs.pop("endpoint_url", None))
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
        said: list[str] = []
        client = _client(srv, tmp_path, say=said.append)
        results = asyncio.run(_ask_all(client, 8))
        assert said[0] == (
            "teacher: 1 batch(es) with 8 request(s) from an earlier run are not finished; "
            "their requests wait for them instead of being sent again"
        )
        assert [r.content for r in results] == [f"echo: question number {i}" for i in range(8)]
        assert srv.uploads == 1 and list(srv.batches) == [record.batch_id]
        assert set(srv.batch_lines.values()) == {1}
        # Paid by this shard: the ledger counts the answers once, at batch prices.
        assert client.usage.batch_prompt_tokens == srv.served_prompt_tokens
        assert client.usage.batches == 0  # it created none


def test_records_on_s3_resume_the_same_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    with moto_s3_server() as endpoint:
        set_fake_aws_env(monkeypatch, endpoint)
        root = f"s3://{create_bucket(endpoint)}/runs/shard"
        with TeacherServer(echo_responder) as srv:
            srv.batch_faults = BatchFaults(hold=True)

            async def stopped() -> None:
                client = _client(srv, root, endpoint_url=endpoint)
                task = asyncio.ensure_future(_ask_all(client, 6))
                while not any(r["batch_id"] for r in _store_records(root, endpoint)):
                    await asyncio.sleep(0.02)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            asyncio.run(stopped())
            srv.batch_faults = BatchFaults()
            client = _client(srv, root, endpoint_url=endpoint)
            results = asyncio.run(_ask_all(client, 6))
            assert [r.content for r in results] == [f"echo: question number {i}" for i in range(6)]
            assert srv.uploads == len(srv.batches) == 1
            assert set(srv.batch_lines.values()) == {1}
            [record] = _store_records(root, endpoint)
            assert record["closed"] and record["batch_id"] in srv.batches


def _store_records(root: str, endpoint: str) -> list[dict[str, Any]]:
    store = open_store(root, endpoint_url=endpoint).child("_batches")
    return [store.read_json(k) for k in store.list()]


def test_a_batch_the_server_forgot_is_sent_again(tmp_path: Path) -> None:
    with TeacherServer(echo_responder) as srv:
        srv.batch_faults = BatchFaults(hold=True)

        async def forgotten() -> list[Any]:
            client = _client(srv, tmp_path)
            task = asyncio.ensure_future(_ask_all(client, 4))
            while not srv.batches:
                await asyncio.sleep(0.01)
            srv.batch_faults = BatchFaults()
            srv.batches.clear()  # GET /batches/{id} answers 404 from now on
            return await task

        results = asyncio.run(forgotten())
    assert [r.content for r in results] == [f"echo: question number {i}" for i in range(4)]
    assert len(srv.batches) == 1 and srv.uploads == 2
    assert set(srv.batch_answered.values()) == {1}
    lost, answered = sorted(_records(tmp_path), key=lambda r: r.status or "")
    assert lost.closed and lost.status is None and lost.outcome == {"answered": 0, "failed": 4}
    assert answered.closed and answered.status == "completed"


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


def test_the_spec_picks_the_client() -> None:
    endpoint = {"url": "http://h/v1", "model": "m"}
    tuned = {"batch": True, "batchPollSeconds": 5, "batchMaxRequests": 7, "batchMaxBytes": 9000}
    for given, batch in (({}, False), ({"batch": False}, False), (tuned, True)):
        settings = TeacherSettings.model_validate({"endpoint": {**endpoint, **given}})
        client = make_teacher_client(
            settings, base_url="http://h/v1", model="m", cache=None, records=None
        )
        assert isinstance(client, BatchTeacherClient) is batch
        assert client.batch_priced is batch
        if isinstance(client, BatchTeacherClient):
            assert (client.poll_seconds, client.max_lines, client.max_bytes) == (5, 7, 9000)


def test_batch_prices() -> None:
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
    # A partly given batchPrices keeps the batch default for the other price.
    partly = TeacherEndpoint.model_validate(
        {"url": "http://h/v1", "model": "m", "batchPrices": {"inputPerMillion": "0.05"}}
    )
    assert partly.batch_prices.output_per_million == Decimal("0.30")


# --------------------------------------------------------------------------- stages

BATCH = {"batch": True, "batchPollSeconds": 0.05}
TEACHER_STAGES = ("topics", "scenarios", "contexts", "revise", "respond", "translate")


def _some_lines_fail(custom_id: str, body: dict[str, Any], nth: int) -> str | None:
    # One line in five fails the first time it is sent; the same ones on every run.
    return "500" if nth == 0 and int(custom_id, 16) % 5 == 0 else None


def _error_lines(srv: TeacherServer) -> int:
    return sum(b["request_counts"]["failed"] for b in srv.batches.values())


def _assert_paid_once(srv: TeacherServer) -> None:
    """Every request submitted was answered, exactly once; a request was submitted again
    only for an error line (or a line its expired batch did not answer)."""
    assert srv.count == 0  # no synchronous request at all
    assert set(srv.batch_lines) == set(srv.batch_answered)
    assert set(srv.batch_answered.values()) == {1}
    assert sum(srv.batch_lines.values()) == len(srv.batch_answered) + _error_lines(srv)
    assert srv.uploads == len(srv.batches)  # one file per batch: none uploaded twice


def _wait_for(condition: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, (
            f"ended before {what}: {proc.stderr.read() if proc.stderr else ''}"
        )
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_stage_job_killed_while_waiting_reattaches_to_its_batch(
    tmp_path: Path,
    tokenizer_dir: Path,  # noqa: F811
) -> None:
    with TeacherServer(scripted_teacher) as srv:
        clean = small_spec(srv.url, tmp_path / "sync", tokenizer_dir)
        store = open_store(clean.run_uri)
        expected = run_stage(get_stage("topics")(clean, store)).as_dict()
        srv.reset()

        run = small_spec(srv.url, tmp_path / "batch", tokenizer_dir, endpoint=BATCH)
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(run.to_yaml(), encoding="utf-8")
        log_file = tmp_path / "termination-log"
        env = {**os.environ, "KAKUGO_TERMINATION_LOG": str(log_file)}
        cmd = [sys.executable, "-m", "kakugo_stages.cli", "stage", "topics"]
        cmd += ["--spec", str(spec_file), "--no-progress"]
        records = open_store(run.run_uri).child("topics", "_batches", "00000")
        srv.batch_faults = BatchFaults(hold=True, line=_some_lines_fail, expire=frozenset({1}))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def waiting() -> bool:
            names = records.list()
            ids = [records.read_json(n).get("batch_id") for n in names]
            return (
                bool(ids)
                and all(ids)
                and any(b["status"] == "in_progress" for b in srv.batches.values())
            )

        _wait_for(waiting, proc, "the first batch")
        time.sleep(0.2)  # a few polls
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        [held] = list(srv.batches)
        assert srv.uploads == 1 and srv.batch_answered == {}

        srv.batch_faults = BatchFaults(line=_some_lines_fail, expire=frozenset({1}))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        # Progress while waiting, where a Pod's log shows it.
        assert "[kakugo] topics shard 0: 1 batch(es) with" in done.stderr
        assert ": in_progress, 0 of " in done.stderr and " submitted (file " in done.stderr
        assert f"batch {held}: " not in done.stderr  # not submitted again
        # The restarted stage waited for the same batch, and sent nothing twice.
        assert srv.batches[held]["status"] == "completed"
        assert list(srv.batches.values())[1]["status"] == "expired"
        assert _error_lines(srv) > 0
        _assert_paid_once(srv)
        served = (srv.served_prompt_tokens, srv.served_completion_tokens)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(log_file.read_text()) == summary
    assert summary["completed"] == 2 and summary["requests"] == expected["requests"]
    # The ledger: what the server billed, all of it at batch prices; the same tokens as
    # the synchronous run (the scripted teacher's answers depend on the messages only).
    tokens = (summary["prompt_tokens"], summary["completion_tokens"])
    assert tokens == served == (expected["prompt_tokens"], expected["completion_tokens"])
    assert (summary["batch_prompt_tokens"], summary["batch_completion_tokens"]) == served
    assert "batch_prompt_tokens" not in expected
    assert rows(run, "topics") == rows(clean, "topics")
    stats = StageOutput(open_store(run.run_uri), "topics").all_stats()
    assert sum(s["teacher"]["batches"] for s in stats.values()) == len(srv.batches) - 1


def _run_manifest(url: str, tokenizer: Path) -> str:
    fixtures = Path(__file__).parent / "fixtures"
    return f"""
apiVersion: kakugo.io/v1alpha1
kind: LanguageModel
metadata: {{name: batch-yoruba}}
spec:
  language: Yoruba
  teacher:
    endpoint: {{url: "{url}", model: scripted, batch: true, batchPollSeconds: 0.05,
               prices: {{inputPerMillion: "1", outputPerMillion: "2"}},
               batchPrices: {{inputPerMillion: "0.5", outputPerMillion: "1"}}}}
    maxConcurrency: 8
  student: {{model: "{tokenizer}"}}
  data:
    topics: {{generalSeeds: [health], languageSeeds: ["{{language}} culture"],
              macroTopicsPerSeed: 2, topicsPerMacroTopic: 2}}
    scenarios: {{broadGeneral: 2, broadLanguage: 1, detailedPerBroad: 2, promptsPerScenario: 2}}
    contexts: {{source: {{path: "{fixtures / "fineweb2_yor_Latn.jsonl"}"}}, maxDocuments: 4,
               maxDocumentTokens: 60, shards: 2}}
    revise: {{shards: 2}}
    respond: {{shards: 2}}
    translate: {{source: {{path: "{fixtures / "infinity_instruct_7M_core.jsonl"}"}},
                samples: 6, shards: 2}}
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_in_batch_mode_interrupted_and_resumed(
    tmp_path: Path,
    tokenizer_dir: Path,  # noqa: F811
) -> None:
    runs = tmp_path / "runs"
    run_dir = runs / "batch-yoruba"
    with TeacherServer(scripted_teacher) as srv:
        spec = tmp_path / "batch.yaml"
        spec.write_text(_run_manifest(srv.url, tokenizer_dir), encoding="utf-8")
        cmd = [sys.executable, "-m", "kakugo_stages.cli", "run", str(spec)]
        cmd += ["--runs-dir", str(runs), "--until", "translate", "--no-progress"]
        srv.batch_faults = BatchFaults(hold=True, line=_some_lines_fail, expire=frozenset({2}))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # The four stages that read nothing wait for their first batches together.
        _wait_for(lambda: len(srv.batches) >= 4, proc, "four batches")
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0 and b"interrupted" in err, err[-2000:]
        held = set(srv.batches)
        assert srv.batch_answered == {}

        srv.batch_faults = BatchFaults(line=_some_lines_fail, expire=frozenset({2}))
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, done.stderr[-3000:]
        assert all(srv.batches[b]["status"] in ("completed", "expired") for b in held)
        _assert_paid_once(srv)
        served = (srv.served_prompt_tokens, srv.served_completion_tokens)
    store = open_store(str(run_dir))
    run = load_run_spec(run_dir / "spec.yaml")
    paid = [0, 0, 0, 0]
    for name in TEACHER_STAGES:
        out = StageOutput(store, name)
        assert len(out.completed_shards()) == get_stage(name)(run, store).num_shards(), name
        for s in out.all_stats().values():
            teacher = s["teacher"]
            for i, key in enumerate(
                (
                    "prompt_tokens",
                    "completion_tokens",
                    "batch_prompt_tokens",
                    "batch_completion_tokens",
                )
            ):
                paid[i] += teacher[key]
        assert list(out.iter_all_rows()), name
    assert (paid[0], paid[1]) == served == (paid[2], paid[3])
    # The report prices them at the batch prices.
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "teacher API (Batch API)" in report
