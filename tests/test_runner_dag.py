"""`kakugo run` runs the stage graph as a DAG: independent stages overlap at the teacher,
`maxConcurrentStages: 1` runs them one at a time in graph order, a failure stops new starts
while the running stages finish, reruns resume, --from/--until select stages, Ctrl-C
stops. The teacher stages only (`--until translate`); the server tells stages apart by
their prompts. No timings are asserted: waits are bounded only so that a broken executor
fails instead of hanging."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kakugo_stages.graph import TEACHER_STAGES
from kakugo_stages.manifest import parse_object
from kakugo_stages.resolved import RunSpec, run_spec
from kakugo_stages.runner import RunError, RunOptions, run_pipeline
from kakugo_stages.store import StageOutput, open_store
from tests.helpers.teacher_scripts import scripted_teacher, stage_of
from tests.helpers.teacher_server import Fault, TeacherServer
from tests.helpers.tiny_models import build_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent
#: The stages that read no other stage.
INDEPENDENT = {"topics", "scenarios", "contexts", "translate"}
#: Long enough for any healthy run on a loaded machine; only a broken executor waits it out.
PATIENCE = 60.0


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def spec(
    url: str, storage: Path, tokenizer: Path, max_stages: int | None = None, **data: Any
) -> RunSpec:
    body: dict[str, Any] = {
        "language": "Yoruba",
        "teacher": {
            "endpoint": {"url": url, "model": "scripted"},
            "maxConcurrency": 4,
            "requestTimeoutSeconds": 120,
        },
        "student": {"model": str(tokenizer)},
        "storage": {"uri": str(storage)},
        "data": {
            "topics": {
                "generalSeeds": ["health"],
                "languageSeeds": ["{language} culture"],
                "macroTopicsPerSeed": 2,
                "topicsPerMacroTopic": 2,
            },
            "scenarios": {
                "broadGeneral": 2,
                "broadLanguage": 1,
                "detailedPerBroad": 2,
                "promptsPerScenario": 2,
                "broadMaxAttempts": 1,
            },
            "contexts": {
                "source": {"path": str(FIXTURES / "fineweb2_yor_Latn.jsonl")},
                "maxDocuments": 4,
                "maxDocumentTokens": 40,
                "shards": 2,
            },
            "revise": {"shards": 2},
            "respond": {"shards": 2},
            "translate": {
                "source": {"path": str(FIXTURES / "infinity_instruct_7M_core.jsonl")},
                "samples": 4,
                "shards": 2,
            },
            **data,
        },
    }
    if max_stages is not None:
        body["resources"] = {"maxConcurrentStages": max_stages}
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "dag", "namespace": "tests"},
        "spec": body,
    }
    return run_spec(parse_object(obj))


def waiter(condition: Callable[[], bool]) -> Callable[[], Awaitable[None]]:
    """Waits until `condition` holds; after PATIENCE from its making, no longer waits (one
    deadline for all requests, so that a broken executor fails the test soon)."""
    deadline = time.monotonic() + PATIENCE

    async def wait() -> None:
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    return wait


class StageTeacher:
    """The scripted teacher, logging which stages have requests in flight. `hold(stage)`
    may delay an answer; `answer` replaces the scripted one."""

    def __init__(
        self,
        hold: Callable[[str], Awaitable[None]] | None = None,
        answer: Callable[[dict[str, Any]], Any] = scripted_teacher,
    ) -> None:
        self.hold, self.answer = hold, answer
        self.in_flight: Counter[str] = Counter()
        self.arrived: list[str] = []
        #: (sequence number, "start" or "end", stage, stages in flight after the event)
        self.events: list[tuple[int, str, str, frozenset[str]]] = []
        self._seq = itertools.count()

    def _log(self, kind: str, stage: str) -> None:
        now = frozenset(s for s, n in self.in_flight.items() if n)
        self.events.append((next(self._seq), kind, stage, now))

    async def __call__(self, body: dict[str, Any]) -> Any:
        stage = stage_of(body)
        self.arrived.append(stage)
        self.in_flight[stage] += 1
        self._log("start", stage)
        try:
            if self.hold is not None:
                await self.hold(stage)
            return self.answer(body)
        finally:
            self.in_flight[stage] -= 1
            self._log("end", stage)

    def first(self, stage: str) -> int:
        return min(n for n, kind, s, _ in self.events if kind == "start" and s == stage)

    def last(self, stage: str) -> int:
        return max(n for n, kind, s, _ in self.events if kind == "end" and s == stage)


def complete(run: RunSpec, stage: str) -> bool:
    from kakugo_stages.stages import get_stage

    impl = get_stage(stage)(run, open_store(run.run_uri))
    return len(StageOutput(impl.store, stage).completed_shards()) == impl.num_shards()


def test_independent_stages_overlap_and_dependents_wait(tmp_path: Path, tokenizer_dir) -> None:
    # Every independent stage's requests wait until all four have one at the server: with
    # the DAG they all arrive; one at a time they never would (and the assert below fails).
    teacher = StageTeacher()
    all_arrived = waiter(lambda: set(teacher.arrived) >= INDEPENDENT)

    async def hold(stage: str) -> None:
        if stage in INDEPENDENT:
            await all_arrived()

    teacher.hold = hold
    lines: list[str] = []
    with TeacherServer(teacher) as srv:
        run = spec(srv.url, tmp_path / "runs", tokenizer_dir)  # default: 4 stages at once
        run_pipeline(run, RunOptions(until="translate", progress=False), echo=lines.append)
    assert run.spec.resources.max_concurrent_stages == 4
    together = max((now for *_, now in teacher.events), key=len)
    assert together >= INDEPENDENT, together
    # revise reads topics, scenarios and contexts; respond reads revise.
    assert teacher.first("revise") > max(
        teacher.last(s) for s in ("topics", "scenarios", "contexts")
    )
    assert teacher.first("respond") > teacher.last("revise")
    assert all(complete(run, s) for s in TEACHER_STAGES)
    assert sorted(line for line in lines if line.startswith("▶")) == sorted(
        f"▶ {s}" for s in TEACHER_STAGES
    )


def test_one_stage_at_a_time_in_graph_order(tmp_path: Path, tokenizer_dir: Path) -> None:
    teacher = StageTeacher()
    lines: list[str] = []
    with TeacherServer(teacher) as srv:
        run = spec(srv.url, tmp_path / "runs", tokenizer_dir, max_stages=1)
        run_pipeline(run, RunOptions(until="translate", progress=False), echo=lines.append)
    assert all(len(now) <= 1 for *_, now in teacher.events)
    assert list(dict.fromkeys(teacher.arrived)) == list(TEACHER_STAGES)
    steps = [line.split(":")[0] for line in lines if line[0] in "▶✓"]
    assert steps == [mark for s in TEACHER_STAGES for mark in (f"▶ {s}", f"✓ {s}")]


def test_a_failure_stops_new_starts_lets_running_finish_and_resumes(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    # Two at a time: topics and scenarios start. Scenarios' broad list is refused (HTTP 400,
    # not retried, not cached), so it fails at once; topics' answers wait until the runner
    # has reported that failure.
    lines: list[str] = []
    failed = lambda: any(line.startswith("✗ scenarios") for line in lines)  # noqa: E731
    reported = waiter(failed)

    async def hold(stage: str) -> None:
        if stage == "topics":
            await reported()

    def answer(body: dict[str, Any]) -> Any:
        return Fault("400") if stage_of(body) == "scenarios" else scripted_teacher(body)

    teacher = StageTeacher(hold, answer)
    with TeacherServer(teacher) as srv:
        run = spec(srv.url, tmp_path / "runs", tokenizer_dir, max_stages=2)
        # Either broad list may be the one that fails first (both are asked at once).
        with pytest.raises(RunError, match=r"^stage scenarios failed: .*broad-(general|language)"):
            run_pipeline(run, RunOptions(until="translate", progress=False), echo=lines.append)
        assert failed()
        assert set(teacher.arrived) == {"topics", "scenarios"}
        assert complete(run, "topics")  # it finished after the failure; its work is kept
        assert not complete(run, "scenarios")
        assert not any(line.startswith(("▶ contexts", "▶ translate")) for line in lines)

        # The rerun resumes: topics is done, its requests are not sent again.
        srv.responder = again = StageTeacher()
        lines.clear()
        run_pipeline(run, RunOptions(until="translate", progress=False), echo=lines.append)
    assert "✓ topics: already done" in lines
    assert "topics" not in again.arrived
    assert all(complete(run, s) for s in TEACHER_STAGES)


def test_from_and_until_select_stages(tmp_path: Path, tokenizer_dir: Path) -> None:
    teacher = StageTeacher()
    with TeacherServer(teacher) as srv:
        run = spec(srv.url, tmp_path / "runs", tokenizer_dir)
        run_pipeline(run, RunOptions(until="scenarios", progress=False), echo=lambda m: None)
        assert set(teacher.arrived) == {"topics", "scenarios"}

        # revise reads contexts, which is outside the selection and not finished.
        with pytest.raises(
            RunError,
            match=r"--from revise: earlier stages are not finished "
            r"\(contexts\); .* with --from contexts",
        ):
            run_pipeline(run, RunOptions(from_stage="revise", progress=False), echo=lambda m: None)

        teacher.arrived.clear()
        run_pipeline(
            run,
            RunOptions(from_stage="contexts", until="revise", progress=False),
            echo=lambda m: None,
        )
        assert set(teacher.arrived) == {"contexts", "revise"}
        assert complete(run, "revise") and not complete(run, "translate")

        # translate reads nothing: it may run alone although respond is not finished.
        teacher.arrived.clear()
        run_pipeline(
            run,
            RunOptions(from_stage="translate", until="translate", progress=False),
            echo=lambda m: None,
        )
        assert set(teacher.arrived) == {"translate"}
        assert not complete(run, "respond")


def test_ctrl_c_stops_the_running_stages_and_a_rerun_continues(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    manifest = tmp_path / "dag.yaml"
    with TeacherServer(scripted_teacher, latency=0.2) as srv:
        run = spec(srv.url, tmp_path / "runs", tokenizer_dir)
        manifest.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kakugo.io/v1alpha1",
                    "kind": "LanguageModel",
                    "metadata": {"name": "dag", "namespace": "tests"},
                    "spec": run.spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
                }
            ),
            encoding="utf-8",
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kakugo_stages.cli",
                "run",
                str(manifest),
                "--until",
                "translate",
                "--no-progress",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + PATIENCE
        while srv.count < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=PATIENCE)
        assert proc.returncode != 0
        assert "interrupted: stopping" in err, err
        assert "Traceback" not in err, err
        assert not complete(run, "respond")
        sent = srv.count

        srv.reset()
        run_pipeline(run, RunOptions(until="translate", progress=False), echo=lambda m: None)
        assert all(complete(run, s) for s in TEACHER_STAGES)
    # The answers received before the interrupt came from the request cache.
    from kakugo_stages.stages import get_stage

    store = open_store(run.run_uri)
    asked = sum(
        s["requests"]
        for name in TEACHER_STAGES
        for s in get_stage(name)(run, store).output.all_stats().values()
    )
    assert srv.count < asked, (sent, srv.count, asked)
