"""Progress as plain log lines, for stages that run without a terminal (a Job's Pod, CI).

The tqdm bar of `kakugo stage` shows only on a TTY; in a Pod, `kubectl logs` would show
nothing between the start and the summary. So when there is no bar, a line goes to stderr
at a fixed interval (and once at the end):

    [kakugo] respond: 1200/3000 requests (40%), 12 failed, 3.2 req/s, ETA 9m22s, shards 0/1

Requests count the teacher requests the stage has issued so far: a tree stage (topics,
scenarios) issues each level's requests once the level above has answered, so its total
grows as it goes, and the ETA is that of the requests known so far.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Protocol


class _Counts(Protocol):
    requests: int
    requests_ok: int

    @property
    def failures(self) -> int: ...


def duration(seconds: float) -> str:
    """3725 -> 1h2m5s; 42.4 -> 42s."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def progress_line(
    stage: str,
    *,
    done: int,
    issued: int,
    failed: int,
    elapsed: float,
    shards_done: int,
    shards_total: int,
) -> str:
    """One line: requests done of those issued, failures, rate, ETA, shards."""
    parts = [f"{done}/{issued} requests"]
    if issued:
        parts[0] += f" ({100 * done // issued}%)"
    parts.append(f"{failed} failed")
    rate = done / elapsed if elapsed > 0 else 0.0
    parts.append(f"{rate:.1f} req/s")
    left = issued - done
    if left > 0:
        parts.append(f"ETA {duration(left / rate)}" if rate > 0 else "ETA ?")
    parts.append(f"shards {shards_done}/{shards_total}")
    return f"[kakugo] {stage}: " + ", ".join(parts)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ProgressLog:
    """Adds up the request counts of the stage's running shards and writes a line every
    `interval` seconds (`run`, a task on the stage's event loop) and at the end."""

    def __init__(
        self,
        stage: str,
        shards_total: int,
        interval: float,
        *,
        shards_done: int = 0,
        write: Callable[[str], None] = _stderr,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.interval = interval
        self.shards_total = shards_total
        self.shards_done = shards_done
        self._write = write
        self._clock = clock
        self._started = clock()
        self._counts: list[_Counts] = []

    def watch(self, counts: _Counts) -> None:
        """Count this shard's requests (its ShardStats) from now on."""
        self._counts.append(counts)

    def shard_done(self) -> None:
        self.shards_done += 1

    def line(self) -> str:
        done = failed = issued = 0
        for c in self._counts:
            fails = c.failures
            issued += c.requests
            failed += fails
            done += c.requests_ok + fails
        return progress_line(
            self.stage,
            done=done,
            issued=issued,
            failed=failed,
            elapsed=self._clock() - self._started,
            shards_done=self.shards_done,
            shards_total=self.shards_total,
        )

    def emit(self) -> None:
        self._write(self.line())

    async def run(self) -> None:
        """Write a line every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.emit()
