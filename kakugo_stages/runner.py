"""`kakugo run`: every stage in order on one machine, with the same stage code as the
cluster. Resumable: finished shards are skipped and cached teacher requests replayed, so
running it again continues where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from kakugo_stages.contract import TEACHER_MODEL_ENV, TEACHER_URL_ENV, served_model_name
from kakugo_stages.graph import STAGES, TEACHER_STAGES
from kakugo_stages.local_teacher import LocalTeacher
from kakugo_stages.resolved import LOCAL_STORAGE_ROOT, RunSpec
from kakugo_stages.stages import get_stage, run_stage
from kakugo_stages.stages.base import Stage, StageFailed
from kakugo_stages.store import ArtifactStore, open_store

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


def run_pipeline(
    run: RunSpec, options: RunOptions, echo: Callable[[str], None] = print
) -> RunSpec:
    """Run the selected stages; returns the (local) RunSpec whose folder holds the run."""
    run = local_run(run, options.runs_dir)
    stages = selected_stages(options.from_stage, options.until)
    store = open_store(run.run_uri)
    _pin_spec(run, store, options.force_spec)
    echo(f"run {run.name}: {run.language.name} ({run.language.code}) in {store.url()}")

    impls = {name: get_stage(name)(run, store) for name in stages}
    missing_before = _missing_inputs(run, store, stages[0])
    if missing_before:
        raise RunError(
            f"--from {stages[0]}: earlier stages are not finished ({', '.join(missing_before)}); "
            f"run `kakugo run` without --from, or with --from {missing_before[0]}"
        )
    teacher_work = [n for n in stages if n in TEACHER_STAGES and _unfinished(impls[n])
                    and impls[n].skip_reason() is None]
    last_teacher = teacher_work[-1] if teacher_work else None

    with ExitStack() as stack:
        for name in stages:
            stage = impls[name]
            if not _unfinished(stage):
                echo(f"✓ {name}: already done")
                continue
            if name == (teacher_work[0] if teacher_work else None):
                stack.enter_context(_teacher_env(run, store, echo))
            reason = stage.skip_reason()
            echo(f"▶ {name}" + (f" (skipped: {reason})" if reason else ""))
            try:
                summary = run_stage(stage, progress=options.progress and reason is None)
            except StageFailed as exc:
                raise RunError(f"stage {name} failed: {exc}") from exc
            totals = summary.as_dict()
            echo(f"✓ {name}: {totals.get('rows_out', 0)} rows"
                 + (f", {totals['requests']} teacher requests" if totals.get("requests") else "")
                 + (f", rejected {totals['rejected']}" if totals.get("rejected") else ""))
            if name == last_teacher:
                stack.close()  # stop the local teacher as soon as no stage needs it
    return run


def _missing_inputs(run: RunSpec, store: ArtifactStore, first: str) -> list[str]:
    """Stages before `first` that are not finished."""
    out = []
    for name in STAGES[: STAGES.index(first)]:
        stage = get_stage(name)(run, store)
        if _unfinished(stage):
            out.append(name)
    return out


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

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
