"""The stage contract: a function of (resolved spec, shard) over the artifact store.

A `Stage` subclass implements `run_shard`. The machinery here does the rest, the same way
in a Job, in `kakugo run` and in tests:

- a completed shard (marker present) is skipped; a shard writes its rows, rejects, raw
  teacher log and stats, and its completion marker last;
- teacher requests go through one `TeacherClient` per shard whose cache lives in
  `<stage>/_cache/`, so a rerun replays the answers that were used instead of paying
  again, and sends again the requests whose answers were rejected (cut off, unparsable);
- every teacher request ends as exactly one of "ok" or "rejected by reason", so
  kept + rejected = requested always holds and is visible in the stats;
- the teacher tokens in the stats are those paid for the shard's requests over all its
  runs, killed ones included (the request cache is the ledger);
- a shard whose failure rate passes `data.maxFailureRate` keeps its outputs for audit
  but gets no marker, and the stage fails with a message saying what failed and why;
- the stage summary goes to the termination log for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kakugo_stages import graph
from kakugo_stages.batch import make_teacher_client
from kakugo_stages.contract import (
    DEFAULT_TERMINATION_LOG,
    TEACHER_API_KEY_ENV,
    TEACHER_MODEL_ENV,
    TEACHER_URL_ENV,
    TERMINATION_LIMIT,
    TERMINATION_LOG_ENV,
    served_model_name,
)
from kakugo_stages.graph import StageDecl
from kakugo_stages.parsing import ParseError
from kakugo_stages.request_cache import RequestCache
from kakugo_stages.resolved import RunSpec
from kakugo_stages.stages.progress_log import ProgressLog
from kakugo_stages.store import ArtifactNotFound, ArtifactStore, StageOutput, StoreError
from kakugo_stages.teacher import ChatResult, TeacherClient, TeacherError, rejected_reason

log = logging.getLogger("kakugo.stages")


class StageFailed(RuntimeError):
    """The stage could not finish: too many failures, missing inputs, bad settings."""


class StageInterrupted(RuntimeError):
    """The stage was asked to stop (Ctrl-C in `kakugo run`); finished shards and teacher
    answers are kept, so a rerun continues."""


@dataclass
class ShardStats:
    """Per-shard accounting, written to `<stage>/_stats/NNNNN.json`."""

    stage: str
    shard: int
    shards: int
    rows_in: int = 0
    rows_out: int = 0
    requests: int = 0
    requests_ok: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    teacher: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return sum(self.rejected.values())

    @property
    def failure_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "shard": self.shard,
            "shards": self.shards,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "requests": self.requests,
            "requests_ok": self.requests_ok,
            "rejected": dict(sorted(self.rejected.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "failure_rate": round(self.failure_rate, 6),
            "teacher": self.teacher,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }


@dataclass(frozen=True)
class TeacherTarget:
    url: str
    model: str
    api_key_env: str | None


def teacher_target(run: RunSpec) -> TeacherTarget:
    """Where the teacher is: the spec's endpoint, or the server the operator / local
    runner started for `ref` and `serve` (passed in the environment)."""
    settings = run.spec.teacher
    if settings.endpoint is not None:
        ep = settings.endpoint
        return TeacherTarget(ep.url, ep.model, ep.api_key_env)
    url, model = os.environ.get(TEACHER_URL_ENV), os.environ.get(TEACHER_MODEL_ENV)
    if not url:
        which = (
            f"teacher.ref names the Teacher {settings.ref.name!r}"
            if settings.ref is not None
            else "teacher.serve asks for a dedicated server"
        )
        raise StageFailed(
            f"{which}, but {TEACHER_URL_ENV} is not set. The operator sets it for stage Jobs "
            "and `kakugo run` sets it after starting the server; to run one stage by hand, "
            f"export {TEACHER_URL_ENV}=http://HOST:PORT/v1 (and {TEACHER_MODEL_ENV})."
        )
    if not model:
        model = served_model_name(settings.serve) if settings.serve else ""
    # The Teacher's API key, when its server requires one (the operator passes it from
    # the Secret); without it, requests go without Authorization.
    return TeacherTarget(url, model or "teacher", TEACHER_API_KEY_ENV)


class ShardContext:
    """What a running shard uses: its teacher, its outputs, and its accounting."""

    def __init__(
        self,
        stage: Stage,
        shard: int,
        teacher: TeacherClient | None,
        on_request: Callable[[], None] | None = None,
    ):
        self.stage = stage
        self.run = stage.run
        self.shard = shard
        self.teacher = teacher
        self.stats = ShardStats(stage.name, shard, stage.num_shards())
        self.rows: list[dict[str, Any]] = []
        self.rejects: list[dict[str, Any]] = []
        self.raw: list[dict[str, Any]] = []
        self._on_request = on_request

    def rng(self, *parts: object) -> random.Random:
        """A generator seeded by the spec's seed and the item, independent of the order in
        which concurrent requests finish (so reruns make the same choices)."""
        key = ":".join(str(p) for p in (self.run.spec.data.seed, self.stage.name, *parts))
        return random.Random(key)

    def keep(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def drop(self, reason: str, count: int = 1) -> None:
        self.stats.dropped[reason] += count

    def _scrub(self, record: dict[str, Any]) -> dict[str, Any]:
        # The client scrubs what it returns; this also covers what a stage passes in.
        return self.teacher.scrub(record) if self.teacher is not None else record

    def _reject(
        self,
        item: str,
        reason: str,
        messages: Any,
        answer: Any,
        key: str | None = None,
        attempt: int = 0,
    ) -> None:
        self.stats.rejected[reason] += 1
        self.rejects.append(
            self._scrub(
                {
                    "id": item,
                    "reason": reason,
                    "messages": messages,
                    "answer": answer,
                    # The cache entry of the answer (it is kept, marked rejected) and when.
                    "key": key,
                    "attempt": attempt,
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
        )

    async def ask(
        self,
        item: str,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        parse: Callable[[str], Any] | None = None,
        sample_index: int = 0,
        schema: dict[str, Any] | None = None,
    ) -> tuple[ChatResult, Any] | None:
        """One teacher request for `item`. Returns (result, parsed) when the answer finished
        with "stop" and `parse` accepted it; otherwise records the rejection and returns
        None. Every call counts as exactly one request, ok or rejected. `schema` is the
        answer's JSON schema, sent when `teacher.structuredOutput` is on."""
        assert self.teacher is not None, f"stage {self.stage.name} has no teacher"
        settings = self.run.spec.teacher
        response_format = (
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
            if schema is not None and settings.structured_output
            else None
        )
        self.stats.requests += 1
        try:
            result = await self.teacher.chat(
                messages,
                max_tokens=max_tokens,
                temperature=settings.sampling.temperature,
                top_p=settings.sampling.top_p,
                sample_index=sample_index,
                response_format=response_format,
                reasoning_effort=settings.reasoning_effort,
            )
        except TeacherError as exc:
            self._log_raw(item, messages, None, exc.reason)
            self._reject(item, exc.reason, messages, exc.raw, exc.key)
            return None
        finally:
            if self._on_request:
                self._on_request()
        if not result.ok:
            # The client stored the answer rejected already: a rerun sends it again.
            reason = rejected_reason(result)
            self._log_raw(item, messages, result, reason)
            self._reject(item, reason, messages, result.content, result.key, result.attempt)
            return None
        parsed: Any = result.content
        if parse is not None:
            try:
                parsed = parse(result.content)
            except ParseError as exc:
                # Not replayed on a rerun: the request is sent again instead.
                await self.teacher.reject(result, exc.reason)
                self._log_raw(item, messages, result, exc.reason)
                self._reject(item, exc.reason, messages, result.content, result.key, result.attempt)
                return None
        self._log_raw(item, messages, result, "ok")
        self.stats.requests_ok += 1
        return result, parsed

    def _log_raw(self, item: str, messages: Any, result: ChatResult | None, outcome: str) -> None:
        # Raw input and output beside the rows, for audit and re-parsing.
        self.raw.append(
            self._scrub(
                {
                    "id": item,
                    "outcome": outcome,
                    "messages": messages,
                    "content": result.content if result else None,
                    "reasoning": result.reasoning if result else None,
                    "finish_reason": result.finish_reason if result else None,
                    "cached": result.cached if result else False,
                    "attempt": result.attempt if result else None,
                }
            )
        )


class Stage(ABC):
    """One step of the pipeline. Subclasses set `name` and implement `run_shard`; what the
    stage reads, whether it uses the teacher, its shard count and its summary keys come
    from its declaration in `kakugo_stages.graph` (`decl`), the one place the graph is
    written down."""

    name: ClassVar[str]
    decl: ClassVar[StageDecl]
    #: False when the stage writes its own output format (and sets stats.rows_out).
    writes_rows: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            cls.decl = graph.decl(cls.name)

    @property
    def uses_teacher(self) -> bool:
        return self.decl.teacher

    @property
    def inputs(self) -> tuple[str, ...]:
        """Stages whose completed output this one reads."""
        return self.decl.inputs

    @property
    def summary_keys(self) -> tuple[str, ...]:
        """Keys of the shard stats copied into the termination summary (e.g. final loss)."""
        return self.decl.summary

    def __init__(self, run: RunSpec, store: ArtifactStore):
        self.run = run
        self.store = store  # the run's root: <storage>/<namespace>/<name>/
        self.output = StageOutput(store, self.name)
        #: Set by `run_stage(reset=True)`: files computed once per run are recomputed.
        self.reset = False

    def reset_shared(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Forget state shared by the shards that a reset must not reuse."""

    @property
    def language(self) -> str:
        return self.run.language.name

    #: The stage's own frozen section of `spec.data` (data stages), e.g. "topics".
    data_section: ClassVar[str | None] = None

    @property
    def config(self) -> Any:
        """This stage's settings: `spec.data.<data_section>` (recipe mistake 3: each stage
        has its own immutable config)."""
        if self.data_section is None:
            raise AttributeError(f"stage {self.name} has no data section")
        return getattr(self.run.spec.data, self.data_section)

    def num_shards(self) -> int:
        return self.decl.num_shards(self.run.spec_dict())

    def mine(self, items: Sequence[Any], shard: int) -> list[Any]:
        """A shard's share of the stage's work items: every num_shards()-th, from `shard`."""
        return list(items[shard :: self.num_shards()])

    def skip_reason(self) -> str | None:
        """Why this stage has nothing to do for this spec (an ablation), or None."""
        return None

    @abstractmethod
    async def run_shard(self, ctx: ShardContext) -> None:
        """Fill ctx.rows (and use ctx.ask / ctx.drop); the machinery writes everything."""

    def input_rows(self, stage: str) -> list[dict[str, Any]]:
        """Every row of an upstream stage; it must be complete, and declared as an input
        (the executors start a stage only once its declared inputs are complete)."""
        if stage not in self.inputs:
            raise StageFailed(
                f"stage {self.name} reads stage {stage}, which is not among its "
                f"declared inputs {self.inputs} (kakugo_stages/graph.py)"
            )
        upstream = StageOutput(self.store, stage)
        missing = self.missing_shards(stage)
        if missing:
            raise StageFailed(
                f"stage {self.name} needs stage {stage} to be complete, but its shards "
                f"{missing} are not: run `kakugo stage {stage}` first"
            )
        return list(upstream.iter_all_rows())

    def missing_shards(self, stage: str) -> list[int]:
        """Shards of a stage this one depends on that are not complete yet."""
        if stage not in self.inputs and stage not in graph.upstream(self.name):
            raise StageFailed(f"stage {self.name} does not depend on stage {stage}")
        from kakugo_stages.stages import get_stage  # registry imports the stage modules

        upstream = get_stage(stage)(self.run, self.store)
        done = upstream.output.completed_shards()
        return [i for i in range(upstream.num_shards()) if i not in done]


@dataclass
class StageSummary:
    stage: str
    shards: int
    completed: list[int]
    ran: list[int]
    stats: dict[int, dict[str, Any]]
    extra_keys: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        tot: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        for s in self.stats.values():
            for key in ("rows_in", "rows_out", "requests", "requests_ok"):
                tot[key] += s.get(key, 0)
            tot["prompt_tokens"] += s.get("teacher", {}).get("prompt_tokens", 0)
            tot["completion_tokens"] += s.get("teacher", {}).get("completion_tokens", 0)
            # The part paid at Batch API prices; absent (not 0) when no batch was used, so
            # summaries of synchronous runs stay as they were.
            for key in ("batch_prompt_tokens", "batch_completion_tokens"):
                if s.get("teacher", {}).get(key):
                    tot[key] += s["teacher"][key]
            tot["seconds"] += s.get("seconds", 0)
            rejected.update(s.get("rejected", {}))
        extra = {k: s[k] for s in self.stats.values() for k in self.extra_keys if k in s}
        return {
            "stage": self.stage,
            "shards": self.shards,
            "completed": len(self.completed),
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in tot.items()},
            "rejected": dict(rejected.most_common(8)),
            **extra,
        }


def write_termination_message(summary: dict[str, Any], path: str | None = None) -> None:
    """Write the short summary the operator reads from the Pod status, if there is a
    termination log (always in a Pod; locally only when the env var names a file)."""
    target = path or os.environ.get(TERMINATION_LOG_ENV)
    if target is None:
        if not Path(DEFAULT_TERMINATION_LOG).exists():
            return
        target = DEFAULT_TERMINATION_LOG
    text = json.dumps(summary, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > TERMINATION_LIMIT:
        slim = {k: v for k, v in summary.items() if k != "rejected"}
        text = json.dumps(slim, separators=(",", ":"), ensure_ascii=False)[:TERMINATION_LIMIT]
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as exc:  # a missing termination log must never fail a finished stage
        log.warning("cannot write termination message to %s: %s", target, exc)


def batch_records(stage: Stage, shard: int) -> ArtifactStore:
    """Where a shard's Batch API batches are recorded (`<stage>/_batches/NNNNN/`)."""
    return stage.store.child(stage.name, "_batches", f"{shard:05d}")


def _make_teacher(stage: Stage, shard: int) -> TeacherClient:
    target = teacher_target(stage.run)
    cache = RequestCache(stage.store.child(stage.name, "_cache"))
    return make_teacher_client(
        stage.run.spec.teacher,
        base_url=target.url,
        model=target.model,
        cache=cache,
        records=batch_records(stage, shard),
        label=f"{stage.name} shard {shard}",
        api_key_env=target.api_key_env,
        seed=stage.run.spec.data.seed if stage.run.spec.teacher.seed_requests else None,
    )


async def run_shard(
    stage: Stage,
    shard: int,
    *,
    teacher_factory: Callable[[Stage, int], TeacherClient] | None = None,
    on_request: Callable[[], None] | None = None,
    progress: ProgressLog | None = None,
) -> dict[str, Any]:
    """Run one shard to completion (or StageFailed). Returns its stats. `progress`
    counts its requests in the stage's progress lines."""
    out = stage.output
    if out.is_complete(shard):
        return out.read_stats(shard) or {}
    started = time.monotonic()
    failed: StageFailed | None = None
    skipped = stage.skip_reason()
    if skipped is not None:
        ctx = ShardContext(stage, shard, None, on_request)
        ctx.stats.extra["stage_skipped"] = skipped
    else:
        teacher = (teacher_factory or _make_teacher)(stage, shard) if stage.uses_teacher else None
        if teacher is not None:
            # The shard pays for the answers its client receives: their cache entries say
            # so, and a rerun of the shard counts them again as its own (the ledger).
            teacher.owner = shard
        ctx = ShardContext(stage, shard, teacher, on_request)
        if progress is not None:
            progress.watch(ctx.stats)
        try:
            await stage.run_shard(ctx)
        except StageFailed as exc:
            # A stage that gives up (e.g. a list that never parsed) still leaves its
            # rejects, raw log and stats for audit, without a marker.
            failed = exc
        finally:
            if teacher is not None:
                ctx.stats.teacher = teacher.usage.as_dict()
                await teacher.aclose()
    ctx.stats.seconds = time.monotonic() - started
    # Order: rows, rejects, raw log, stats; the marker last (only if the shard passed).
    if stage.writes_rows or skipped is not None:
        ctx.stats.rows_out = len(ctx.rows)
        out.write_rows(shard, ctx.rows)
    if stage.uses_teacher:
        _append_rejects(stage, shard, ctx.rejects)
        stage.store.write_jsonl(f"{stage.name}/_raw/{shard:05d}.jsonl", ctx.raw)
    stats = ctx.stats.as_dict()
    out.write_stats(shard, stats)
    if failed is not None:
        raise failed
    limit = stage.run.spec.data.max_failure_rate
    if ctx.stats.failure_rate > limit:
        reasons = ", ".join(f"{k}: {v}" for k, v in ctx.stats.rejected.most_common(5))
        raise StageFailed(
            f"stage {stage.name} shard {shard}: {ctx.stats.failures} of {ctx.stats.requests} "
            f"teacher requests failed ({ctx.stats.failure_rate:.1%}), above "
            f"data.maxFailureRate {limit:.1%} ({reasons}). Rejected answers are in "
            f"{stage.store.url(rejects_key(stage.name, shard))}. A rerun replays "
            "the answers that were used and sends the failed requests again."
        )
    out.mark_complete(shard)
    return stats


def rejects_key(stage: str, shard: int) -> str:
    """The rejects file of a shard: every rejected answer of every run of the shard."""
    return f"{stage}/_rejects/{shard:05d}.jsonl"


def _append_rejects(stage: Stage, shard: int, rejects: list[dict[str, Any]]) -> None:
    """Add this run's rejects to the shard's file (a rerun sends rejected requests again,
    so earlier rejects would otherwise be lost). Rewritten whole: stores have no append,
    and a rejects file is small."""
    key = rejects_key(stage.name, shard)
    earlier: list[dict[str, Any]] = []
    try:
        data = stage.store.read_bytes(key)
    except ArtifactNotFound:
        data = b""
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            earlier.append(json.loads(line))
        except ValueError:
            log.warning("%s line %d is not JSON; dropped", stage.store.url(key), number)
    stage.store.write_jsonl(key, [*earlier, *rejects])


def run_stage(
    stage: Stage,
    shards: Sequence[int] | None = None,
    *,
    teacher_factory: Callable[[Stage, int], TeacherClient] | None = None,
    progress: bool = False,
    termination_log: str | None = None,
    reset: bool = False,
    parallel: int = 1,
    stop: threading.Event | None = None,
    position: int | None = None,
    progress_every: float | None = None,
) -> StageSummary:
    """Run the given shards (default: every unfinished one), at most `parallel` at once,
    then write the stage summary to the termination log. Raises StageFailed after writing
    it; after a shard fails no other shard starts, and the running ones finish.

    `reset` redoes the given shards although they are complete (their inputs changed):
    markers go first, then rows and stats; the request cache stays, so unchanged requests
    are replayed, not paid for again. `stop`, set from another thread, cancels the running
    shards and raises StageInterrupted. `position` is the row of the progress bar when
    several stages show one. `progress_every`: without a bar, write a progress line
    (requests done of those issued, failures, rate, ETA, shards) every so many seconds,
    and once at the end (`progress_log.ProgressLog`)."""
    total = stage.num_shards()
    wanted = list(range(total)) if shards is None else list(shards)
    bad = [s for s in wanted if not 0 <= s < total]
    if bad:
        raise StageFailed(f"stage {stage.name} has {total} shard(s); no shard {bad[0]}")
    try:
        summary, failure = _run_stage(
            stage,
            wanted,
            total,
            teacher_factory,
            progress,
            reset,
            parallel,
            stop,
            position,
            progress_every,
        )
    except StoreError as exc:
        # The store failed (a full disk, an endpoint that does not answer): say so without
        # reading it again, which would fail (or wait) the same way.
        error = {"stage": stage.name, "shards": total, "error": str(exc)[:1000]}
        write_termination_message(error, termination_log)
        raise
    message = summary.as_dict()
    if failure is not None:
        message["error"] = str(failure)[:1000]
    write_termination_message(message, termination_log)
    if failure is not None:
        raise failure
    return summary


def _run_stage(
    stage: Stage,
    wanted: list[int],
    total: int,
    teacher_factory: Callable[[Stage, int], TeacherClient] | None,
    progress: bool,
    reset: bool,
    parallel: int,
    stop: threading.Event | None,
    position: int | None,
    progress_every: float | None = None,
) -> tuple[StageSummary, StageFailed | None]:
    if reset:
        stage.reset = True
        stage.reset_shared()
        for shard in wanted:
            stage.output.reset_shard(shard)
    done_before = stage.output.completed_shards()
    todo = [s for s in wanted if s not in done_before]
    bar = _progress_bar(stage.name, progress, position)
    lines = (
        ProgressLog(stage.name, len(wanted), progress_every, shards_done=len(wanted) - len(todo))
        if progress_every and bar is None
        else None
    )
    try:
        failure = asyncio.run(
            _run_shards(
                stage,
                todo,
                parallel,
                stop,
                teacher_factory=teacher_factory,
                on_request=bar.update_one if bar else None,
                progress=lines,
            )
        )
    finally:
        if bar:
            bar.close()
        if lines:
            lines.emit()
    summary = StageSummary(
        stage=stage.name,
        shards=total,
        completed=sorted(stage.output.completed_shards()),
        ran=todo,
        stats=stage.output.all_stats(),
        extra_keys=stage.summary_keys,
    )
    return summary, failure


#: How often a running stage looks at its stop event (seconds).
STOP_POLL_SECONDS = 0.2


async def _run_shards(
    stage: Stage,
    shards: list[int],
    parallel: int,
    stop: threading.Event | None,
    **kwargs: Any,
) -> StageFailed | None:
    """The shards on one event loop, at most `parallel` at once (as an Indexed Job's Pods
    run), each with its own teacher client. Returns the first failure."""
    gate = asyncio.Semaphore(max(parallel, 1))  # FIFO: shards start in order
    failures: list[StageFailed] = []
    progress: ProgressLog | None = kwargs.get("progress")

    async def one(shard: int) -> None:
        async with gate:
            if failures:
                return
            try:
                await run_shard(stage, shard, **kwargs)
            except StageFailed as exc:
                failures.append(exc)
            else:
                if progress is not None:
                    progress.shard_done()

    ticker = asyncio.create_task(progress.run()) if progress is not None else None
    try:
        return await _gather_shards(stage, shards, one, stop, failures)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def _gather_shards(
    stage: Stage,
    shards: list[int],
    one: Callable[[int], Any],
    stop: threading.Event | None,
    failures: list[StageFailed],
) -> StageFailed | None:
    work = asyncio.gather(*(one(s) for s in shards))
    # The stop event is a thread's, so it is polled; a cancelled shard writes nothing, and
    # its finished requests are in the request cache already.
    while stop is not None and not work.done():
        await asyncio.wait({work}, timeout=STOP_POLL_SECONDS)
        if stop.is_set() and not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise StageInterrupted(f"stage {stage.name} stopped before finishing")
    await work
    return failures[0] if failures else None


class _Bar:
    """A tqdm bar over teacher requests (the totals of a tree are not known upfront)."""

    def __init__(self, name: str, position: int | None = None):
        from tqdm.auto import tqdm

        # A bar at a given row (one of several stages) clears itself when done: another
        # stage takes the row next.
        self._bar = tqdm(
            desc=name, unit="req", dynamic_ncols=True, position=position, leave=position is None
        )

    def update_one(self) -> None:
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _progress_bar(name: str, enabled: bool, position: int | None = None) -> _Bar | None:
    return _Bar(name, position) if enabled else None
