"""`kakugo run`: the stage graph on one machine, with the same stage code as the cluster.
Stages run as a DAG (every stage whose inputs are complete may start, at most
`resources.maxConcurrentStages` at once), so independent teacher stages share the
teacher's batch. Resumable: finished shards are skipped and cached teacher requests
replayed, so running it again continues where it stopped.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kakugo_stages.contract import TEACHER_MODEL_ENV, TEACHER_URL_ENV, served_model_name
from kakugo_stages.graph import STAGES, TEACHER_STAGES, ready, upstream
from kakugo_stages.local_teacher import LocalTeacher
from kakugo_stages.resolved import LOCAL_STORAGE_ROOT, RunSpec
from kakugo_stages.spec import ResourcesSpec
from kakugo_stages.stages import get_stage, run_stage
from kakugo_stages.stages.base import Stage, StageFailed, StageSummary
from kakugo_stages.store import ArtifactStore, open_run_store

SPEC_FILE = "spec.yaml"


class RunError(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class RunOptions:
    from_stage: str | None = None
    until: str | None = None
    runs_dir: str = LOCAL_STORAGE_ROOT
    progress: bool = True
    force_spec: bool = False  # continue although the spec changed


def local_run(run: RunSpec, runs_dir: str) -> RunSpec:
    """Without `spec.storage`, a local run lives in <runs_dir>/<name>."""
    if run.spec.storage is not None or run.uri is not None:
        return run
    return replace(run, uri=str(Path(runs_dir).expanduser().resolve() / run.name))


def selected_stages(from_stage: str | None, until: str | None) -> list[str]:
    for name, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in STAGES:
            raise RunError(f"{name} {value!r} is not a stage; stages: {', '.join(STAGES)}")
    start = STAGES.index(from_stage) if from_stage else 0
    end = STAGES.index(until) + 1 if until else len(STAGES)
    if start >= end:
        raise RunError(f"--from {from_stage} comes after --until {until}")
    return list(STAGES[start:end])


def _pin_spec(run: RunSpec, store: ArtifactStore, force: bool) -> None:
    """Write the resolved spec; refuse to continue a run made from a different spec,
    whose finished shards would otherwise be silently reused."""
    text = run.to_yaml()
    if store.exists(SPEC_FILE) and not force:
        from kakugo_stages.resolved import load_run_spec

        local = store.local_path(SPEC_FILE)
        old = load_run_spec(local) if local is not None else None
        if old is not None and old.fingerprint() != run.fingerprint():
            raise RunError(
                f"{store.url()} holds a run of a different spec (fingerprint "
                f"{old.fingerprint()}, now {run.fingerprint()}). Finished stages would not "
                "be redone. Give the LanguageModel a new name, delete that folder, or pass "
                "--force-spec to continue with the new spec anyway."
            )
    store.write_text(SPEC_FILE, text)


def _unfinished(stage: Stage) -> bool:
    return len(stage.output.completed_shards()) < stage.num_shards()


def _missing_inputs(run: RunSpec, store: ArtifactStore, stages: list[str]) -> list[str]:
    """Unfinished stages outside the selection that a selected stage reads, in run order."""
    outside = {u for name in stages for u in upstream(name)} - set(stages)
    return [n for n in STAGES if n in outside and _unfinished(get_stage(n)(run, store))]


def run_pipeline(run: RunSpec, options: RunOptions, echo: Callable[[str], None] = print) -> RunSpec:
    """Run the selected stages; returns the (local) RunSpec whose folder holds the run."""
    run = local_run(run, options.runs_dir)
    stages = selected_stages(options.from_stage, options.until)
    store = open_run_store(run)  # with the spec's storage.s3 endpoint and region
    _pin_spec(run, store, options.force_spec)
    echo(f"run {run.name}: {run.language.name} ({run.language.code}) in {store.url()}")

    impls = {name: get_stage(name)(run, store) for name in stages}
    missing_before = _missing_inputs(run, store, stages)
    if missing_before:
        raise RunError(
            f"--from {stages[0]}: earlier stages are not finished ({', '.join(missing_before)}); "
            f"run `kakugo run` without --from, or with --from {missing_before[0]}"
        )
    todo = []
    for name in stages:
        if _unfinished(impls[name]):
            todo.append(name)
        else:
            echo(f"✓ {name}: already done")
    teacher_work = {n for n in todo if n in TEACHER_STAGES and impls[n].skip_reason() is None}
    if options.progress:
        echo = _above_bars(echo)

    with ExitStack() as stack:
        # The teacher's environment is process-wide: set it before any stage thread starts.
        # The teacher stages come first in the graph, so this is also just before the first
        # of them.
        teacher = stack.enter_context(_teacher_env(run, store, echo)) if teacher_work else None

        def finished(done: set[str]) -> None:
            if teacher is not None and teacher_work <= done:
                teacher.stop_server()  # as soon as no stage needs it

        _Executor(impls, todo, run.spec.resources, options.progress, echo, finished).run()
    return run


@dataclass
class _Outcome:
    stage: str
    summary: StageSummary | None = None
    error: BaseException | None = None


class _Executor:
    """Runs the stages as a DAG: every stage whose inputs are complete may start, at most
    `resources.maxConcurrentStages` at once (1: one at a time, in graph order).

    Each running stage is `run_stage` in a thread of its own. Threads, not one event loop
    around `run_shard`, because stages hold blocking work that would stall every other
    stage's requests on a shared loop: corpus sampling and tokenization in contexts and
    translate, the filter's token counts, the training subprocess. In its thread a stage
    runs exactly as in a Job (its own event loop, its shards `resources.<stage>.parallelism`
    at once, like the Job's Pods). Only this thread starts stages, echoes and touches
    os.environ; Ctrl-C reaches only it, and it stops the others through `stop`.
    """

    def __init__(
        self,
        impls: dict[str, Stage],
        todo: list[str],
        resources: ResourcesSpec,
        progress: bool,
        echo: Callable[[str], None],
        finished: Callable[[set[str]], None],
    ):
        self.impls, self.todo, self.resources = impls, todo, resources
        self.progress, self.echo, self.finished = progress, echo, finished
        self.limit = resources.max_concurrent_stages
        # Finished, or outside the selection (whose inputs were checked to be complete).
        self.done: set[str] = set(STAGES) - set(todo)
        self.running: dict[str, int] = {}  # stage -> its progress bar's row
        self.failed: dict[str, BaseException] = {}
        self.results: queue.Queue[_Outcome] = queue.Queue()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def run(self) -> None:
        try:
            while True:
                if not self.failed:  # after a failure nothing new starts
                    self._start_ready()
                if not self.running:
                    break
                self._collect(self.results.get())
        except BaseException as exc:  # Ctrl-C (or a bug here): stop the stages, then go
            self.stop.set()
            if isinstance(exc, KeyboardInterrupt) and self.running:
                self.echo(
                    f"interrupted: stopping {', '.join(self.running)} (finished shards "
                    "and teacher answers are kept; run again to continue)"
                )
            for thread in self.threads:  # a second Ctrl-C stops waiting
                thread.join()
            raise
        self._raise_failures()

    def _start_ready(self) -> None:
        waiting = [n for n in self.todo if n not in self.running and n not in self.failed]
        for name in ready(self.done, waiting):
            if len(self.running) >= self.limit:
                return
            stage = self.impls[name]
            reason = stage.skip_reason()
            self.echo(f"▶ {name}" + (f" (skipped: {reason})" if reason else ""))
            row = min(set(range(self.limit)) - set(self.running.values()))
            self.running[name] = row
            kwargs = dict(
                progress=self.progress and reason is None,
                position=row if self.limit > 1 else None,
                parallel=self.resources.for_stage(name).parallelism or 1,
                stop=self.stop,
            )
            # Daemon: a second Ctrl-C must not wait for a stage that ignores its stop event.
            thread = threading.Thread(
                target=self._work, args=(stage, kwargs), name=name, daemon=True
            )
            self.threads.append(thread)
            thread.start()

    def _work(self, stage: Stage, kwargs: dict[str, Any]) -> None:
        try:
            self.results.put(_Outcome(stage.name, summary=run_stage(stage, **kwargs)))
        except BaseException as exc:  # handed to the main thread
            self.results.put(_Outcome(stage.name, error=exc))

    def _collect(self, outcome: _Outcome) -> None:
        name = outcome.stage
        del self.running[name]
        if outcome.error is not None:
            self.failed[name] = outcome.error
            self.echo(f"✗ {name}: {outcome.error}")
            if self.running:
                self.echo(f"  no new stage starts; waiting for {', '.join(self.running)}")
            return
        self.done.add(name)
        totals = outcome.summary.as_dict() if outcome.summary else {}
        self.echo(
            f"✓ {name}: {totals.get('rows_out', 0)} rows"
            + (f", {totals['requests']} teacher requests" if totals.get("requests") else "")
            + (f", rejected {totals['rejected']}" if totals.get("rejected") else "")
        )
        self.finished(self.done)

    def _raise_failures(self) -> None:
        # A stage that failed as stages fail becomes one RunError naming them all; anything
        # else (a bug, the store) is raised as it is, as when stages ran one by one.
        unexpected = [e for e in self.failed.values() if not isinstance(e, StageFailed)]
        if unexpected:
            raise unexpected[0]
        if len(self.failed) == 1:
            [(name, exc)] = self.failed.items()
            raise RunError(f"stage {name} failed: {exc}") from exc
        if self.failed:
            lines = "\n".join(f"  {name}: {exc}" for name, exc in self.failed.items())
            raise RunError(f"stages {', '.join(self.failed)} failed:\n{lines}") from next(
                iter(self.failed.values())
            )


def _above_bars(echo: Callable[[str], None]) -> Callable[[str], None]:
    """An echo that prints above the progress bars instead of through them."""
    from tqdm.auto import tqdm

    def write(message: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            echo(message)

    return write


class _teacher_env:
    """Make the teacher reachable for the stages: start the local server for `serve`,
    nothing for `endpoint` (the spec has the URL), the environment for `ref`."""

    def __init__(self, run: RunSpec, store: ArtifactStore, echo: Callable[[str], None]):
        self.run, self.store, self.echo = run, store, echo
        self.server: LocalTeacher | None = None
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> _teacher_env:
        teacher = self.run.spec.teacher
        if teacher.serve is not None:
            log = self.store.local_path("teacher/server.log")
            log = log if log is not None else Path(f"./kakugo-teacher-{self.run.name}.log")
            self.server = LocalTeacher(teacher.serve, log, echo=self.echo)
            url = self.server.start()
            self._set(TEACHER_URL_ENV, url)
            self._set(TEACHER_MODEL_ENV, served_model_name(teacher.serve))
        elif teacher.ref is not None and not os.environ.get(TEACHER_URL_ENV):
            raise RunError(
                f"teacher.ref names the Teacher {teacher.ref.name!r}, a cluster resource. "
                "For `kakugo run` use teacher.serve (a local vLLM) or teacher.endpoint, or "
                f"export {TEACHER_URL_ENV} with the URL of a running server."
            )
        return self

    def _set(self, key: str, value: str) -> None:
        self.saved[key] = os.environ.get(key)
        os.environ[key] = value

    def stop_server(self) -> None:
        """Stop the local server; the environment stays until the run ends (stage threads
        may be reading it)."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __exit__(self, *exc: object) -> None:
        self.stop_server()
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
