"""Progress lines of stages without a terminal (kakugo_stages/stages/progress_log.py): the
line itself, the counts it adds up, and `kakugo stage` writing them to stderr when there
is no progress bar (as in a Job's Pod). No timing is asserted: the clock is a fake, or
only the closing line is read."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from click.testing import CliRunner

from kakugo_stages.cli import main
from kakugo_stages.stages.progress_log import ProgressLog, duration, progress_line
from tests.helpers.teacher_scripts import scripted_teacher
from tests.helpers.teacher_server import TeacherServer
from tests.helpers.tiny_models import build_tokenizer
from tests.test_generation_stages import small_spec


def test_the_line_says_done_total_failures_rate_eta_and_shards() -> None:
    line = progress_line(
        "respond", done=1200, issued=3000, failed=12, elapsed=375.0, shards_done=0, shards_total=1
    )
    assert line == (
        "[kakugo] respond: 1200/3000 requests (40%), 12 failed, 3.2 req/s, ETA 9m22s, shards 0/1"
    )
    # Nothing answered yet: no rate, no ETA to give.
    assert progress_line(
        "topics", done=0, issued=8, failed=0, elapsed=10.0, shards_done=0, shards_total=2
    ).endswith("0/8 requests (0%), 0 failed, 0.0 req/s, ETA ?, shards 0/2")
    # All done: no ETA.
    assert "ETA" not in progress_line(
        "topics", done=8, issued=8, failed=1, elapsed=4.0, shards_done=2, shards_total=2
    )
    # Nothing issued (a stage without teacher requests, or not started).
    assert progress_line(
        "filter", done=0, issued=0, failed=0, elapsed=0.0, shards_done=0, shards_total=1
    ) == ("[kakugo] filter: 0/0 requests, 0 failed, 0.0 req/s, shards 0/1")
    assert [duration(s) for s in (0.4, 42, 562.4, 3725)] == ["0s", "42s", "9m22s", "1h2m5s"]


@dataclass
class Stats:
    requests: int = 0
    requests_ok: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def failures(self) -> int:
        return sum(self.rejected.values())


def test_the_log_adds_up_its_shards_and_writes_on_its_interval() -> None:
    now = [100.0]
    lines: list[str] = []
    log = ProgressLog("translate", 3, 60.0, shards_done=1, write=lines.append, clock=lambda: now[0])
    a, b = Stats(), Stats()
    log.watch(a)
    log.watch(b)
    a.requests, a.requests_ok = 10, 6
    b.requests, b.requests_ok, b.rejected["http_5xx"] = 20, 4, 2
    now[0] = 110.0
    log.emit()
    assert lines == [
        "[kakugo] translate: 12/30 requests (40%), 2 failed, 1.2 req/s, ETA 15s, shards 1/3"
    ]
    log.shard_done()
    assert log.line().endswith("shards 2/3")

    async def two_ticks() -> None:
        log.interval = 0.001
        task = asyncio.create_task(log.run())
        while len(lines) < 3:
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(two_ticks())
    assert len(lines) >= 3 and all(line.startswith("[kakugo] translate: ") for line in lines)


def test_kakugo_stage_without_a_tty_logs_progress_lines(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path / "tok")
    with TeacherServer(scripted_teacher) as srv:
        run = small_spec(srv.url, tmp_path / "store", tokenizer)
        spec = tmp_path / "spec.yaml"
        spec.write_text(run.to_yaml())
        result = CliRunner().invoke(
            main, ["stage", "topics", "--spec", str(spec), "--progress-every", "0.01"]
        )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("[kakugo] topics:")]
    assert lines, result.stderr
    # The closing line: every request issued is done, both shards complete.
    last = re.fullmatch(
        r"\[kakugo\] topics: (\d+)/(\d+) requests \(100%\), (\d+) failed, [\d.]+ req/s, "
        r"shards 2/2",
        lines[-1],
    )
    assert last, lines[-1]
    summary = yaml.safe_load(result.stdout.strip().splitlines()[-1])
    assert int(last.group(1)) == summary["requests"] > 0
    # --progress-every 0: no lines.
    with TeacherServer(scripted_teacher) as srv:
        run = small_spec(srv.url, tmp_path / "store2", tokenizer)
        spec.write_text(run.to_yaml())
        quiet = CliRunner().invoke(
            main, ["stage", "topics", "--spec", str(spec), "--progress-every", "0"]
        )
    assert quiet.exit_code == 0 and "[kakugo]" not in quiet.stderr
