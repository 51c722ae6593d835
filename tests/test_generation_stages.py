"""The prompt-generation and response stages against the scripted, fault-injecting
teacher server: tree counts, kill-and-rerun, faults, thresholds, and the API key."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from kakugo_stages.cli import main
from kakugo_stages.manifest import parse_object
from kakugo_stages.request_cache import RequestCache
from kakugo_stages.resolved import RunSpec, run_spec
from kakugo_stages.stages import StageFailed, get_stage, run_stage
from kakugo_stages.store import StageOutput, open_store
from kakugo_stages.teacher import TeacherClient
from tests.helpers.full_disk import full_disk
from tests.helpers.key_echoes import chat_body, json_text, leaks, wire_forms
from tests.helpers.s3_server import create_bucket, free_port, moto_s3_server, set_fake_aws_env
from tests.helpers.teacher_scripts import digest, flaky, scripted_teacher
from tests.helpers.teacher_server import Fault, FaultPlan, TeacherServer
from tests.helpers.tiny_models import build_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "sk-kakugo-test-SECRET-4f9d1c"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def small_spec(
    url: str, storage: Path, tokenizer: Path, *, endpoint: dict[str, Any] | None = None, **data: Any
) -> RunSpec:
    """A LanguageModel at a tiny scale, talking to the test server (`endpoint`: more
    fields of teacher.endpoint)."""
    body = {
        "language": "Yoruba",
        "teacher": {
            "endpoint": {"url": url, "model": "scripted", **(endpoint or {})},
            "maxConcurrency": 8,
            "requestTimeoutSeconds": 1,
            "maxRetries": 6,
        },
        "student": {"model": str(tokenizer)},
        "storage": {"uri": str(storage)},
        "data": {
            "topics": {
                "generalSeeds": ["health", "sciences"],
                "languageSeeds": ["{language} culture"],
                "macroTopicsPerSeed": 3,
                "topicsPerMacroTopic": 2,
                "minPromptsPerTopic": 1,
                "maxPromptsPerTopic": 1,
                "shards": 2,
            },
            "scenarios": {
                "broadGeneral": 2,
                "broadLanguage": 1,
                "detailedPerBroad": 2,
                "promptsPerScenario": 2,
            },
            "contexts": {
                "source": {"path": str(FIXTURES / "fineweb2_yor_Latn.jsonl")},
                "maxDocuments": 5,
                "keepOneAbove": 10,
                "maxDocumentTokens": 40,
                "shards": 2,
            },
            "revise": {"shards": 2},
            "respond": {"shards": 3},
            **data,
        },
    }
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "yo-test", "namespace": "tests"},
        "spec": body,
    }
    return run_spec(parse_object(obj))


def fast_teacher(stage, shard: int) -> TeacherClient:
    """The stage's own client settings, with test-sized backoff."""
    from kakugo_stages.stages.base import teacher_target

    target = teacher_target(stage.run)
    return TeacherClient.from_settings(
        stage.run.spec.teacher,
        base_url=target.url,
        model=target.model,
        cache=RequestCache(stage.store.child(stage.name, "_cache")),
        backoff_base=0.01,
        backoff_max=0.05,
        seed=0,
    )


def run_all(run: RunSpec, stages=("topics", "scenarios", "contexts", "revise", "respond")):
    store = open_store(run.run_uri)
    return {
        name: run_stage(get_stage(name)(run, store), teacher_factory=fast_teacher)
        for name in stages
    }


def rows(run: RunSpec, stage: str) -> list[dict[str, Any]]:
    return list(StageOutput(open_store(run.run_uri), stage).iter_all_rows())


def totals(summary) -> dict[str, int]:
    return summary.as_dict()


def test_trees_give_expected_counts(tmp_path: Path, tokenizer_dir: Path) -> None:
    with TeacherServer(scripted_teacher) as srv:
        run = small_spec(srv.url, tmp_path, tokenizer_dir)
        out = run_all(run)
    topics = totals(out["topics"])
    # 3 seeds -> 9 macro-topics -> 18 topics; 30 subjects with 1 prompt each.
    assert topics["requests"] == 3 + 9 + 30 and topics["rows_out"] == 30
    scen = totals(out["scenarios"])
    # 2 broad lists; 3 broad scenarios -> 6 detailed; 9 scenarios x 2 prompts.
    assert scen["requests"] == 2 + 3 + 9 and scen["rows_out"] == 18
    ctx = totals(out["contexts"])
    # 5 of 12 documents; the corpus (12) is above keepOneAbove (10): one prompt each.
    assert ctx["requests"] == 5 and ctx["rows_out"] == 5
    revised = rows(run, "revise")
    assert len(revised) == 30 + 18 + 5
    n_revised = sum(r["revised"] for r in revised)
    assert 0.3 * len(revised) < n_revised < 0.7 * len(revised)
    assert totals(out["revise"])["requests"] == n_revised
    responded = rows(run, "respond")
    assert len(responded) == len(revised)
    assert all(r["response"].startswith("Ìdáhùn") and r["reasoning"] for r in responded)
    # Context rows carry their document, and the respond stage sent it to the teacher.
    ctx_rows = [r for r in responded if r["source"] == "contexts"]
    assert ctx_rows and all(r["user"].startswith(r["document"]) for r in ctx_rows)
    # Documents were cut to 40 student tokens.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert all(
        len(tok(r["document"], add_special_tokens=False)["input_ids"]) <= 40 for r in ctx_rows
    )
    # Layout of DESIGN.md: rows, stats and the marker of every shard.
    store = open_store(run.run_uri)
    for name, shards in (("topics", 2), ("contexts", 2), ("respond", 3)):
        for i in range(shards):
            for key in (
                f"{name}/shard-{i:05d}.jsonl",
                f"{name}/_stats/{i:05d}.json",
                f"{name}/_completed/{i:05d}",
                f"{name}/_raw/{i:05d}.jsonl",
            ):
                assert store.exists(key), key


def test_keep_all_prompts_of_a_small_corpus(tmp_path: Path, tokenizer_dir: Path) -> None:
    with TeacherServer(scripted_teacher) as srv:
        run = small_spec(srv.url, tmp_path, tokenizer_dir)
        body = run.spec.model_dump(by_alias=True, exclude_none=True)
        body["data"]["contexts"]["keepOneAbove"] = 100
        run = RunSpec(
            run.name, run.namespace, type(run.spec).model_validate(body), run.storage_root
        )
        out = run_all(run, ("contexts",))
    assert totals(out["contexts"])["rows_out"] == 5 * 3


def test_same_rows_on_rerun_and_no_request_sent_twice(tmp_path: Path, tokenizer_dir) -> None:
    with TeacherServer(scripted_teacher) as srv:
        run = small_spec(srv.url, tmp_path / "a", tokenizer_dir)
        run_all(run)
        first = {s: rows(run, s) for s in ("topics", "scenarios", "contexts", "respond")}
        sent = srv.count
        # Remove the completion markers and the rows: a rerun must rebuild the same rows
        # from the request cache without asking the teacher again.
        store = open_store(run.run_uri)
        for stage in first:
            for key in store.list(f"{stage}/"):
                if "/_cache/" not in key and not key.startswith(f"{stage}/_documents"):
                    store.delete(key)
        run_all(run)
        assert srv.count == sent
        assert {s: rows(run, s) for s in first} == first


def _kill_when(srv: TeacherServer, proc: subprocess.Popen, at: int) -> None:
    deadline = time.monotonic() + 60
    while srv.count < at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_midway_and_resume(tmp_path: Path, tokenizer_dir: Path) -> None:
    with TeacherServer(scripted_teacher, latency=0.02) as srv:
        clean = small_spec(srv.url, tmp_path / "clean", tokenizer_dir)
        run_all(clean, ("topics",))
        total = srv.count
        srv.reset()

        run = small_spec(srv.url, tmp_path / "killed", tokenizer_dir)
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(run.to_yaml(), encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "kakugo_stages.cli",
            "stage",
            "topics",
            "--spec",
            str(spec_file),
            "--no-progress",
        ]
        proc = subprocess.Popen(
            cmd, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        _kill_when(srv, proc, total // 2)
        assert proc.returncode == -signal.SIGKILL
        cache = open_store(run.run_uri).child("topics", "_cache")
        cached_before = len(cache.list())
        assert 0 < cached_before < total
        sent_before = srv.count
        srv.reset()
        done = subprocess.run(cmd, env={**os.environ}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        # Only requests without a cached answer went out again.
        assert srv.count == total - cached_before
        assert sent_before + srv.count >= total
    assert rows(run, "topics") == rows(clean, "topics")
    assert json.loads(done.stdout.strip().splitlines()[-1])["completed"] == 2


@pytest.mark.slow
def test_tokens_count_every_answer_across_kills(tmp_path: Path, tokenizer_dir: Path) -> None:
    """Seven kills mid-shard, then a run to the end: the summary reports the tokens of an
    uninterrupted run, not only those of the last process (the cache entries are the
    ledger: each answer received is recorded before it is used)."""
    with TeacherServer(scripted_teacher, latency=0.02) as srv:
        clean = small_spec(srv.url, tmp_path / "clean", tokenizer_dir)
        expected = run_all(clean, ("topics",))["topics"].as_dict()
        total = srv.count
        srv.reset()

        run = small_spec(srv.url, tmp_path / "killed", tokenizer_dir)
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(run.to_yaml(), encoding="utf-8")
        log_file = tmp_path / "termination-log"
        env = {**os.environ, "KAKUGO_TERMINATION_LOG": str(log_file)}
        cmd = [sys.executable, "-m", "kakugo_stages.cli", "stage", "topics"]
        cmd += ["--spec", str(spec_file), "--no-progress"]
        kills = 0
        for k in range(1, 8):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _kill_when(srv, proc, total * k // 8)
            kills += proc.returncode == -signal.SIGKILL
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        served = (srv.served_prompt_tokens, srv.served_completion_tokens)
    assert kills == 7
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(log_file.read_text()) == summary
    assert expected["prompt_tokens"] > 0 and summary["completed"] == 2
    tokens = (summary["prompt_tokens"], summary["completion_tokens"])
    assert tokens == (expected["prompt_tokens"], expected["completion_tokens"])
    # The killed processes received part of that; the last ones alone much less. Requests
    # on the wire when a process was killed were served but never received: not counted.
    stats = StageOutput(open_store(run.run_uri), "topics").all_stats().values()
    assert sum(s["teacher"]["sent_prompt_tokens"] for s in stats) < tokens[0]
    assert served[0] >= tokens[0] and served[1] >= tokens[1]
    assert rows(run, "topics") == rows(clean, "topics")


@pytest.mark.slow
def test_thirty_percent_faults_every_request_accounted(tmp_path: Path, tokenizer_dir) -> None:
    faults = FaultPlan(
        rates={
            "500": 0.08,
            "429": 0.05,
            "timeout": 0.04,
            "drop": 0.05,
            "length": 0.04,
            "bad_json": 0.04,
        },
        seed=7,
        max_per_body=2,
    )
    with TeacherServer(flaky(0.05), faults=faults, timeout_sleep=1.5) as srv:
        run = small_spec(srv.url, tmp_path, tokenizer_dir, maxFailureRate=0.5)
        out = run_all(run)
        injected = len(srv.injected)
        assert injected / srv.count > 0.2, (injected, srv.count)
    for name, summary in out.items():
        for shard_stats in StageOutput(open_store(run.run_uri), name).all_stats().values():
            rejected = sum(shard_stats["rejected"].values())
            assert shard_stats["requests"] == shard_stats["requests_ok"] + rejected, name
        assert summary.as_dict()["completed"] == summary.shards, name
    # Content faults end as rejects with their reason; transport faults were retried.
    reasons = {}
    for name in out:
        for s in StageOutput(open_store(run.run_uri), name).all_stats().values():
            for k, v in s["rejected"].items():
                reasons[k] = reasons.get(k, 0) + v
    assert reasons.get("finish_length", 0) > 0 and reasons.get("bad_json", 0) > 0
    # Respond: every prompt became a row or a counted reject.
    resp = StageOutput(open_store(run.run_uri), "respond").all_stats().values()
    assert sum(s["rows_in"] for s in resp) == sum(
        s["rows_out"] + sum(s["rejected"].values()) for s in resp
    )
    # A rejected row never reaches the outputs.
    assert all(r["response"] for r in rows(run, "respond"))


def with_teacher(run: RunSpec, **teacher: Any) -> RunSpec:
    body = run.spec.model_dump(by_alias=True, exclude_none=True)
    body["teacher"].update(teacher)
    return RunSpec(run.name, run.namespace, type(run.spec).model_validate(body), run.storage_root)


def test_rerun_sends_the_failed_requests_again(tmp_path: Path, tokenizer_dir: Path) -> None:
    """Cut-off and unparsable answers are sent again by a rerun, each with a new seed;
    answers that were used are replayed, never sent again; the rejects file keeps every
    run's rejects; the tokens in the stats are those of every answer the server sent."""
    faults = FaultPlan(rates={"length": 0.12}, seed=11)
    with TeacherServer(flaky(0.12), faults=faults) as srv:
        run = small_spec(srv.url, tmp_path, tokenizer_dir, maxFailureRate=0.08)
        store = open_store(run.run_uri)
        out = StageOutput(store, "topics")
        used: set[str] = set()  # requests whose answers were used (became rows or parents)
        pending: dict[int, set[str]] = {0: set(), 1: set()}  # rejected, per shard
        seeds: dict[str, set[int]] = {}
        rejects_per_shard = {0: 0, 1: 0}
        runs, failures = 0, 0
        while runs < 10:
            runs += 1
            before, stats_before = srv.count, out.all_stats()
            try:
                run_stage(get_stage("topics")(run, store), teacher_factory=fast_teacher)
                done = True
            except StageFailed as exc:
                assert "sends the failed requests again" in str(exc)
                done, failures = False, failures + 1
            sent = [json.dumps(b["messages"]) for b in srv.requests[before:]]
            assert used.isdisjoint(sent), "an answer that was used is never asked again"
            for shard, waiting in pending.items():
                assert waiting <= set(sent), f"shard {shard}: rejected requests not resent"
            for body in srv.requests[before:]:
                text = json.dumps(body["messages"])
                assert body["seed"] not in seeds.get(text, set()), "a resend has a new seed"
                seeds.setdefault(text, set()).add(body["seed"])
            for shard, stats in out.all_stats().items():
                if stats == stats_before.get(shard):
                    continue  # did not run
                rejects_per_shard[shard] += sum(stats["rejected"].values())
                raw = store.read_jsonl(f"topics/_raw/{shard:05d}.jsonl")
                used |= {json.dumps(r["messages"]) for r in raw if r["outcome"] == "ok"}
                rejected = {json.dumps(r["messages"]) for r in raw if r["outcome"] != "ok"}
                pending[shard] = set() if out.is_complete(shard) else rejected
            if done:
                break
        assert done and failures >= 1, (runs, failures)
        served = (srv.served_prompt_tokens, srv.served_completion_tokens)
    # Every run's rejects are in the shard's file, each naming its cache entry.
    for shard, count in rejects_per_shard.items():
        rejects = store.read_jsonl(f"topics/_rejects/{shard:05d}.jsonl")
        assert len(rejects) == count
        assert all(r["key"] and r["reason"] in ("bad_json", "finish_length") for r in rejects)
        for r in rejects:
            entry = RequestCache(store.child("topics", "_cache")).get_entry(r["key"])
            assert entry is not None and entry.rejected == r["reason"]
            assert entry.attempt == r["attempt"]
    assert sum(rejects_per_shard.values()) > 0
    # Tokens: every answer the server sent was paid for, rejected ones and earlier runs'
    # included, and counted once.
    stats = out.all_stats().values()
    paid = tuple(
        sum(s["teacher"][k] for s in stats) for k in ("prompt_tokens", "completion_tokens")
    )
    assert paid == served
    assert sum(s["teacher"]["resent"] for s in stats) > 0
    assert rows(run, "topics") and all(r["prompt"] for r in rows(run, "topics"))


def test_rerun_resends_without_seeds(tmp_path: Path, tokenizer_dir: Path) -> None:
    """With teacher.seedRequests off, a resent request is the same body again (a server
    sampling at temperature > 0 answers it anew); here the second answer finishes."""

    def cut_first_time(index: int, body: dict[str, Any], nth: int) -> str | None:
        return "length" if nth == 0 and int(digest(body), 16) % 4 == 0 else None

    with TeacherServer(scripted_teacher, faults=FaultPlan(when=cut_first_time)) as srv:
        run = small_spec(srv.url, tmp_path, tokenizer_dir, maxFailureRate=0.0)
        run = with_teacher(run, seedRequests=False)
        store = open_store(run.run_uri)
        with pytest.raises(StageFailed):
            run_stage(get_stage("contexts")(run, store), [0])
        cut = [srv.requests[i] for i, kind in srv.injected]
        assert cut and all("seed" not in body for body in srv.requests)
        srv.reset()
        summary = run_stage(get_stage("contexts")(run, store), [0])
        # Exactly the cut-off requests were sent again (the others replayed), unchanged.
        assert sorted(map(json.dumps, srv.requests)) == sorted(map(json.dumps, cut))
    assert summary.completed == [0]


def test_failure_rate_threshold_fails_the_stage(tmp_path: Path, tokenizer_dir: Path) -> None:
    with TeacherServer(flaky(0.5)) as srv:
        run = small_spec(srv.url, tmp_path, tokenizer_dir, maxFailureRate=0.2)
        store = open_store(run.run_uri)
        stage = get_stage("contexts")(run, store)
        log_file = tmp_path / "termination-log"
        with pytest.raises(StageFailed, match=r"above data.maxFailureRate 20.0%"):
            run_stage(stage, teacher_factory=fast_teacher, termination_log=str(log_file))
    assert not stage.output.completed_shards()
    assert store.read_jsonl("contexts/_rejects/00000.jsonl")[0]["reason"]
    summary = json.loads(log_file.read_text())
    assert summary["stage"] == "contexts" and "maxFailureRate" in summary["error"]


def test_broad_scenarios_are_retried_until_they_parse(tmp_path, tokenizer_dir) -> None:
    def broken_first_broad(body: dict[str, Any]) -> Any:
        text = body["messages"][-1]["content"]
        first_try = (
            body.get("seed") is not None and len(seen) < 2 and "most popular scenarios" in text
        )
        if first_try:
            seen.append(1)
            return "sorry, I cannot produce JSON today"
        return scripted_teacher(body)

    seen: list[int] = []
    with TeacherServer(broken_first_broad) as srv:
        run = small_spec(srv.url, tmp_path, tokenizer_dir, maxFailureRate=0.5)
        out = run_all(run, ("scenarios",))
    assert totals(out["scenarios"])["rows_out"] == 18
    assert totals(out["scenarios"])["rejected"] == {"bad_json": 2}


def test_api_key_never_leaks(tmp_path: Path, tokenizer_dir: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("KAKUGO_TEACHER_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    faults = FaultPlan(rates={"500": 0.2, "400": 0.05, "bad_json": 0.1}, seed=3, max_per_body=1)
    with TeacherServer(flaky(0.1), faults=faults, api_key=SECRET) as srv:
        run = small_spec(srv.url, tmp_path, tokenizer_dir, maxFailureRate=0.9)
        errors = []
        for name in ("topics", "scenarios", "contexts"):
            try:
                run_all(run, (name,))
            except StageFailed as exc:
                errors.append(repr(exc) + str(exc))
        assert srv.authorizations and all(a == f"Bearer {SECRET}" for a in srv.authorizations)
    leaked = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and SECRET in p.read_text(encoding="utf-8", errors="ignore")
    ]
    assert leaked == []
    assert SECRET not in caplog.text
    assert not any(SECRET in e for e in errors)


def test_escaped_key_echoes_never_reach_the_store(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch, caplog
) -> None:
    """A gateway echoes the key, escaped or encoded, in answers (kept, cut off, unparsable)
    and in error bodies: no file of the run, log line, error or summary holds it."""
    secret = "sk-kakugo/test+SECRET=77ab/c9"
    monkeypatch.setenv("KAKUGO_TEACHER_API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    forms = list(wire_forms(secret).values())

    def gateway(index: int, body: dict[str, Any], nth: int) -> Fault | None:
        h = int(digest(body), 16)
        wire = forms[h % len(forms)]
        answer = scripted_teacher(body)
        content = answer if isinstance(answer, str) else answer["content"]
        bucket = (h // len(forms)) % 10
        if bucket < 3:  # kept, with the echo in the reasoning
            return Fault("raw", body=chat_body(json_text(content), f"the key was {wire}"))
        if bucket == 3:  # cut off, the echo in the part that was sent
            return Fault("raw", body=chat_body(f"{wire} ...", "", finish_reason="length"))
        if bucket == 4:  # does not parse
            return Fault("raw", body=chat_body(f"no JSON, only {wire}", wire))
        if bucket == 5:
            error = '{"error":{"message":"key ' + wire + ' refused"}}'
            return Fault("raw", status=403, body=error.encode())
        if bucket == 6 and nth == 0:  # broken JSON once, then a good answer
            return Fault("raw", body=chat_body(wire, wire)[:-30])
        return None

    errors: list[str] = []
    with TeacherServer(scripted_teacher, faults=FaultPlan(when=gateway), api_key=secret) as srv:
        run = small_spec(srv.url, tmp_path / "run", tokenizer_dir, maxFailureRate=0.95)
        store = open_store(run.run_uri)
        for name in ("topics", "scenarios", "contexts"):
            try:
                run_stage(
                    get_stage(name)(run, store),
                    teacher_factory=fast_teacher,
                    termination_log=str(tmp_path / f"termination-{name}"),
                )
            except StageFailed as exc:
                errors.append(repr(exc) + str(exc))
        assert len(srv.injected) > 20
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    rejects = [
        r
        for p in files
        if "_rejects" in p.parts
        for r in store.read_jsonl(p.relative_to(tmp_path / "run" / "tests" / "yo-test").as_posix())
    ]
    assert {"finish_length", "http_403"} <= {r["reason"] for r in rejects}
    assert any(p.parent.name == "_raw" for p in files)
    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in files]
    texts += [rec.getMessage() for rec in caplog.records] + errors
    for text in texts:
        assert leaks(text, secret) == [], text[:500]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_s3_server() as url:
        yield url


def on_s3(run: RunSpec, uri: str, endpoint: str) -> RunSpec:
    body = run.spec.model_dump(by_alias=True, exclude_none=True)
    body["storage"] = {"uri": uri, "s3": {"endpointUrl": endpoint}}
    return RunSpec(run.name, run.namespace, type(run.spec).model_validate(body), uri)


def manifest_file(run: RunSpec, path: Path) -> Path:
    obj = run.to_manifest()
    obj.pop("resolved")
    path.write_text(yaml.safe_dump(obj, allow_unicode=True), encoding="utf-8")
    return path


def test_stage_and_run_use_the_spec_s3_endpoint(
    tmp_path: Path, tokenizer_dir: Path, moto_endpoint: str, monkeypatch
) -> None:
    """`kakugo stage` and `kakugo run` store on storage.s3.endpointUrl (here a moto S3),
    although the environment names another endpoint (nothing listens there) and nothing
    would reach AWS."""
    set_fake_aws_env(monkeypatch, None)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    bucket = create_bucket(moto_endpoint)
    with TeacherServer(scripted_teacher) as srv:
        local = small_spec(srv.url, tmp_path, tokenizer_dir)
        run = on_s3(local, f"s3://{bucket}/runs", moto_endpoint)
        spec = manifest_file(run, tmp_path / "lm.yaml")
        stage = CliRunner().invoke(main, ["stage", "topics", "--spec", str(spec), "--no-progress"])
        assert stage.exit_code == 0, stage.output
        assert json.loads(stage.stdout.strip().splitlines()[-1])["completed"] == 2
        sent = srv.count
        done = CliRunner().invoke(main, ["run", str(spec), "--until", "scenarios", "--no-progress"])
        assert done.exit_code == 0, done.output
        assert "✓ topics: already done" in done.output and srv.count > sent
    store = open_store(f"s3://{bucket}/runs/tests/yo-test", endpoint_url=moto_endpoint)
    assert store.list("topics/_completed/") == [
        "topics/_completed/00000",
        "topics/_completed/00001",
    ]
    assert store.exists("scenarios/_completed/00000") and store.exists("spec.yaml")
    assert store.exists("report.md")


@pytest.mark.timeout(120)
def test_storage_that_does_not_answer_fails_the_stage_clearly(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch
) -> None:
    set_fake_aws_env(monkeypatch, None)
    monkeypatch.setenv("KAKUGO_S3_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    log_file = tmp_path / "termination-log"
    monkeypatch.setenv("KAKUGO_TERMINATION_LOG", str(log_file))
    with socket.socket() as silent, TeacherServer(scripted_teacher) as srv:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # accepts connections, never answers
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        run = on_s3(small_spec(srv.url, tmp_path, tokenizer_dir), "s3://bucket-x/runs", endpoint)
        spec = manifest_file(run, tmp_path / "lm.yaml")
        for args in (["stage", "topics", "--spec", str(spec)], ["run", str(spec)]):
            result = CliRunner().invoke(main, [*args, "--no-progress"])
            assert result.exit_code == 1, result.output
            assert f"S3 endpoint {endpoint} did not answer" in result.output
            assert "partial report" not in result.output
            if args[0] == "stage":  # the operator reads it from the Pod's status
                summary = json.loads(log_file.read_text())
                assert summary["stage"] == "topics"
                assert f"S3 endpoint {endpoint} did not answer" in summary["error"]
        assert srv.count == 0


def test_full_disk_fails_the_stage_naming_the_path(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch
) -> None:
    """The disk fills up when the shard's rows are written: `kakugo stage` fails naming the
    file, leaves no temp file, and once there is room a rerun replays every answer."""
    with TeacherServer(scripted_teacher) as srv:
        run = small_spec(srv.url, tmp_path / "run", tokenizer_dir)
        spec = manifest_file(run, tmp_path / "lm.yaml")
        args = ["stage", "contexts", "--spec", str(spec), "--no-progress"]
        log_file = tmp_path / "termination-log"
        with monkeypatch.context() as m:
            full_disk(m, "close", match=".shard-00000.jsonl.tmp-")
            m.setenv("KAKUGO_TERMINATION_LOG", str(log_file))
            result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        path = Path(run.run_uri) / "contexts" / "shard-00000.jsonl"
        assert f"error: cannot write {path}: No space left on device" in result.output
        assert f"cannot write {path}" in json.loads(log_file.read_text())["error"]
        assert [p for p in tmp_path.rglob("*") if ".tmp-" in p.name] == []
        sent = [json.dumps(b["messages"]) for b in srv.requests]
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 0, again.output
        resent = [json.dumps(b["messages"]) for b in srv.requests[len(sent) :]]
        assert set(sent).isdisjoint(resent), "the answers were in the request cache"
    assert len(rows(run, "contexts")) == 5


def test_structured_output_sends_the_answer_schema(tmp_path: Path, tokenizer_dir: Path) -> None:
    with TeacherServer(scripted_teacher) as srv:
        run = small_spec(srv.url, tmp_path / "plain", tokenizer_dir)
        run_all(run, ("topics",))
        assert all("response_format" not in body for body in srv.requests)
        srv.reset()
        body = run.spec.model_dump(by_alias=True, exclude_none=True)
        body["teacher"]["structuredOutput"] = True
        structured = RunSpec(
            run.name,
            run.namespace,
            type(run.spec).model_validate(body),
            str(tmp_path / "structured"),
        )
        run_all(structured, ("topics",))
    formats = [b["response_format"] for b in srv.requests]
    assert len(formats) == 3 + 9 + 30
    macro = formats[0]["json_schema"]["schema"]["properties"]["topics"]
    assert formats[0]["type"] == "json_schema" and macro["maxItems"] == 3
    keys = {next(iter(f["json_schema"]["schema"]["properties"])) for f in formats}
    assert keys == {"topics", "prompts"}


def test_reset_redoes_complete_shards_from_the_cache(tmp_path: Path, tokenizer_dir) -> None:
    with TeacherServer(scripted_teacher) as srv:
        run = small_spec(srv.url, tmp_path, tokenizer_dir)
        run_all(run, ("contexts",))
        before = rows(run, "contexts")
        sent = srv.count
        store = open_store(run.run_uri)
        stage = get_stage("contexts")(run, store)
        # Without reset, complete shards are skipped; with it they are redone, and the
        # shared document sample is recomputed, from cached answers only.
        assert run_stage(stage, teacher_factory=fast_teacher).ran == []
        store.write_jsonl("contexts/_documents.jsonl", [])  # stale shared state
        again = run_stage(
            get_stage("contexts")(run, store), teacher_factory=fast_teacher, reset=True
        )
        assert again.ran == [0, 1] and srv.count == sent
    assert rows(run, "contexts") == before
