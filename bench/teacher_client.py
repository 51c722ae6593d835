"""Benchmark the teacher client against a local OpenAI-compatible server with fixed latency.

    python bench/teacher_client.py                 # aiohttp (the default transport)
    python bench/teacher_client.py --transport both  # aiohttp and httpx, for comparison
    python bench/teacher_client.py --quick         # short windows, for a smoke run

The server (``tests/teacher_server.py``) runs in its own process, answers every request
after a fixed latency and has no concurrency limit; each point reports the server's own
CPU use and the most requests it had in flight, to show it is not the bottleneck.

Points (issue "Teacher client"): three realistic ones, concurrency 64 at 0.2 s latency,
256 at 1 s and 1,024 at 5 s (200-320 requests/s each), and a stress point, 1,024 at 0.2 s.
Per point, over a steady-state window (after the ramp-up, a whole number of latencies
long, so bursts of completions cannot bias the count):

* requests/s completed, and the ideal concurrency / latency;
* mean requests in flight (the client's own counter, sampled every 10 ms) against the
  configured concurrency;
* client CPU time per request (``time.process_time`` of this process, which runs only
  the client);
* time on the wire (Little's law: in flight / throughput; the time a call spends queued
  behind the semaphore is not included), client RSS (max of samples), server CPU share
  and server max in flight.

A fifth point, ``c256-l1+cache``, runs the 256 / 1 s point with the request cache on a
local folder, as a stage does (a miss and one atomic write per request).

The last line printed is one JSON object: ``inflight_ratio_min`` and
``cpu_ms_per_request_max`` over the realistic points, ``stress_rps``, ``stress_rss_mb``,
and every point's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kakugo_stages.request_cache import RequestCache  # noqa: E402
from kakugo_stages.store import open_store  # noqa: E402
from kakugo_stages.teacher import TeacherClient  # noqa: E402

SERVER = "tests.helpers.teacher_server"  # run as a module from the checkout

# (name, concurrency, latency seconds, window seconds)
REALISTIC = [
    ("c64-l0.2", 64, 0.2, 10.0),
    ("c256-l1", 256, 1.0, 10.0),
    ("c1024-l5", 1024, 5.0, 15.0),
]
STRESS = ("stress-c1024-l0.2", 1024, 0.2, 10.0)
# As a stage runs it: the request cache on a local artifact store (a cache miss, then a
# fsync'd atomic write, per request, both in worker threads). Not one of the points.
CACHED = ("c256-l1+cache", 256, 1.0, 10.0)

# A realistic request: a system prompt, a user prompt of ~600 characters (unique per
# request, so keys and bodies differ), max_tokens 4096; the answer carries ~1,500
# characters of reasoning and ~1,500 of content (set on the server command line).
SYSTEM = (
    "You are a helpful assistant who answers in fluent, natural Yoruba. Give correct "
    "information, use minimal formatting, never write URLs (say how to find them instead) "
    "and keep answers short. "
) * 2
USER = "Ṣàlàyé fún mi bí a ṣe ń gbin ẹ̀gẹ́ ní àkókò òjò, àti ohun tí a gbọdọ̀ ṣọ́ra fún. " * 6


@dataclass
class Point:
    name: str
    transport: str
    concurrency: int
    latency_s: float
    window_s: float
    requests: int
    rps: float
    ideal_rps: float
    mean_inflight: float
    inflight_ratio: float
    cpu_ms_per_request: float
    client_cpu_share: float
    mean_latency_s: float
    wire_latency_s: float
    rss_mb: float
    server_cpu_share: float
    server_max_inflight: int
    errors: int


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def server_process(latency: float):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            SERVER,
            "--latency",
            str(latency),
            "--content-chars",
            "1500",
            "--reasoning-chars",
            "1500",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("URL "):
            raise RuntimeError(f"server did not start: {line!r}")
        yield line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def run_point(
    url: str,
    name: str,
    concurrency: int,
    latency: float,
    window: float,
    transport: str,
    cache_dir: str | None = None,
) -> Point:
    root = url.rsplit("/v1", 1)[0]
    cache = RequestCache(open_store(cache_dir).child("_cache")) if cache_dir else None
    client = TeacherClient(
        url,
        "bench-teacher",
        api_key_env=None,
        max_concurrency=concurrency,
        timeout=max(30.0, latency * 5),
        max_retries=3,
        backoff_base=0.05,
        transport=transport,
        cache=cache,
    )
    stop = asyncio.Event()
    done = 0
    errors = 0
    latency_sum = 0.0
    counter = 0

    async def worker(i: int) -> None:
        nonlocal done, errors, latency_sum, counter
        # Stagger the first requests over one latency: a steady stream, not lock-step waves.
        await asyncio.sleep(latency * i / (2 * concurrency))
        while not stop.is_set():
            counter += 1
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{USER} ({counter})"},
            ]
            t = time.perf_counter()
            try:
                await client.chat(messages, max_tokens=4096, temperature=1.0)
            except Exception:
                errors += 1
            else:
                latency_sum += time.perf_counter() - t
                done += 1

    # Twice as many workers as slots: like a stage that queued a whole shard, the
    # semaphore always has a request waiting for the next free slot.
    tasks = [asyncio.create_task(worker(i)) for i in range(2 * concurrency)]
    warmup = max(1.0, 2 * latency)
    # A whole number of latencies, so completions cannot bunch at either end of the window.
    n_lat = max(1, math.ceil(window / latency))
    window = n_lat * latency
    await asyncio.sleep(warmup)

    srv0 = await asyncio.to_thread(_get_json, f"{root}/stats")
    t0, cpu0, done0, lat0 = time.perf_counter(), time.process_time(), done, latency_sum
    samples: list[int] = []
    rss = 0.0
    next_rss = 0.0
    while (now := time.perf_counter()) < t0 + window:
        samples.append(client.in_flight)
        if now >= next_rss:
            rss, next_rss = max(rss, _rss_mb()), now + 0.5
        await asyncio.sleep(0.01)
    t1, cpu1, done1, lat1 = time.perf_counter(), time.process_time(), done, latency_sum
    srv1 = await asyncio.to_thread(_get_json, f"{root}/stats")

    stop.set()
    # Cancel rather than drain: a slow client would otherwise spend minutes finishing the
    # requests queued behind its semaphore.
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()
    n = done1 - done0
    wall = t1 - t0
    mean_inflight = sum(samples) / len(samples)
    return Point(
        name=name,
        transport=client.transport,
        concurrency=concurrency,
        latency_s=latency,
        window_s=round(wall, 2),
        requests=n,
        rps=round(n / wall, 1),
        ideal_rps=round(concurrency / latency, 1),
        mean_inflight=round(mean_inflight, 1),
        inflight_ratio=round(mean_inflight / concurrency, 4),
        cpu_ms_per_request=round((cpu1 - cpu0) / max(n, 1) * 1000, 3),
        client_cpu_share=round((cpu1 - cpu0) / wall, 3),
        mean_latency_s=round((lat1 - lat0) / max(n, 1), 4),
        # Little's law: time on the wire = requests in flight / throughput.
        wire_latency_s=round(mean_inflight / max(n / wall, 1e-9), 4),
        rss_mb=round(rss, 1),
        server_cpu_share=round((srv1["cpu_seconds"] - srv0["cpu_seconds"]) / wall, 3),
        server_max_inflight=srv1["max_in_flight"],
        errors=errors,
    )


def bench(transport: str, quick: bool) -> dict:
    points: list[Point] = []
    for name, c, lat, window in [*REALISTIC, STRESS, CACHED]:
        window = min(window, 3.0) if quick else window
        with server_process(lat) as url, tempfile.TemporaryDirectory() as tmp:
            cache_dir = tmp if (name, c, lat) == CACHED[:3] else None
            points.append(asyncio.run(run_point(url, name, c, lat, window, transport, cache_dir)))
        p = points[-1]
        print(
            f"{p.name:<18} {p.transport:<7} {p.concurrency:>5} {p.latency_s:>5.1f} "
            f"{p.requests:>6} {p.rps:>8.1f} {p.ideal_rps:>7.1f} {p.mean_inflight:>8.1f} "
            f"{p.inflight_ratio:>6.1%} {p.cpu_ms_per_request:>7.3f} {p.client_cpu_share:>6.0%} "
            f"{p.wire_latency_s:>7.3f} {p.rss_mb:>6.1f} {p.server_cpu_share:>6.0%} "
            f"{p.server_max_inflight:>6} {p.errors:>4}",
            flush=True,
        )
    realistic = points[: len(REALISTIC)]
    stress, cached = points[len(REALISTIC)], points[len(REALISTIC) + 1]
    return {
        "transport": transport,
        "inflight_ratio_min": min(p.inflight_ratio for p in realistic),
        "cpu_ms_per_request_max": max(p.cpu_ms_per_request for p in realistic),
        "stress_rps": stress.rps,
        "stress_rss_mb": stress.rss_mb,
        "stress_cpu_ms_per_request": stress.cpu_ms_per_request,
        "stress_inflight_ratio": stress.inflight_ratio,
        "cache_cpu_ms_per_request": cached.cpu_ms_per_request,
        "cache_inflight_ratio": cached.inflight_ratio,
        "points": [asdict(p) for p in points],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="Teacher client benchmark.")
    ap.add_argument("--transport", choices=["aiohttp", "httpx", "both"], default="aiohttp")
    ap.add_argument("--quick", action="store_true", help="3 s windows (smoke run)")
    args = ap.parse_args()
    print(f"teacher client benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(
        f"{'point':<18} {'client':<7} {'conc':>5} {'lat_s':>5} {'reqs':>6} {'req/s':>8} "
        f"{'ideal':>7} {'inflight':>8} {'ratio':>6} {'cpu_ms':>7} {'c_cpu':>6} "
        f"{'wire_s':>7} {'rss_mb':>6} {'s_cpu':>6} {'s_max':>6} {'err':>4}"
    )
    transports = ["aiohttp", "httpx"] if args.transport == "both" else [args.transport]
    results = [bench(t, args.quick) for t in transports]
    summary = dict(results[0])
    if len(results) > 1:
        summary["compare"] = {
            r["transport"]: {k: v for k, v in r.items() if k != "points"} for r in results[1:]
        }
        summary["points"] = [p for r in results for p in r["points"]]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
