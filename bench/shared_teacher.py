"""A shared teacher: two languages' teacher stages one after the other, then at the same time.

    python bench/shared_teacher.py            # latency 0.2 s, batch 64, 8 per language
    python bench/shared_teacher.py --quick    # smaller trees, for a smoke run

What it runs: the real teacher stages (topics, scenarios, contexts, revise, respond,
translate; `kakugo_stages.stages.run_stage`, every shard, as a stage Job does) for two
languages (Yoruba, Swahili) at a small scale, against the scripted test teacher
(`tests/teacher_server.py` with `tests/teacher_scripts.scripted_teacher`), run in its own
process so that its CPU does not compete with the clients.

The server models continuous batching (vLLM): it serves up to `--batch` requests at once,
each taking `--latency` seconds, stretched by `--slowdown` as the batch fills: a request
admitted while k others run takes latency x (1 + slowdown x k / (batch - 1)), so a full
batch is (1 + slowdown) times slower per request than a lone one (decode steps get slower
as the batch grows; 0.25 by default). Requests beyond the batch wait for a free slot.
Each language sends at most `--concurrency` requests at once (teacher.maxConcurrency of
one stage Pod), below the batch size: one language alone leaves the server partly idle.

- sequential: language A's six stages, then language B's (two fleets of one);
- shared: both languages at once, one thread each (a LanguageFleet's members run their
  teacher stages at the same time against one Teacher).

Each run starts from empty storage (no cached teacher answers). Wall time covers the
teacher stages only (processes and the tokenizer are ready before the clock starts). The
clients share this process's GIL in the shared run, which slows them, not the server:
the speedup is if anything understated. The last line printed is one JSON object with
`speedup` = sequential seconds / shared seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from own_server import own_server  # bench/, this script's folder

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO))

TEACHER_STAGES = ("topics", "scenarios", "contexts", "revise", "respond", "translate")
LANGUAGES = ("Yoruba", "Swahili")


# ------------------------------------------------------------------ the server (own process)


class BatchingResponder:
    """Up to `batch` requests at once, `latency` each (stretched by `slowdown` as the batch
    fills); the answer is the scripted teacher's."""

    def __init__(self, batch: int, latency: float, slowdown: float) -> None:
        self.batch, self.latency, self.slowdown = batch, latency, slowdown
        self.slots: asyncio.Semaphore | None = None
        self.active = 0

    async def __call__(self, body: dict[str, Any]) -> Any:
        from tests.helpers.teacher_scripts import scripted_teacher

        if self.slots is None:  # created on the server's loop
            self.slots = asyncio.Semaphore(self.batch)
        async with self.slots:
            others = self.active
            self.active += 1
            try:
                stretch = 1 + self.slowdown * others / max(self.batch - 1, 1)
                await asyncio.sleep(self.latency * stretch)
                return scripted_teacher(body)
            finally:
                self.active -= 1


def serve(batch: int, latency: float, slowdown: float) -> None:
    from tests.helpers.teacher_server import TeacherServer

    server = TeacherServer(BatchingResponder(batch, latency, slowdown), record=False)

    async def main() -> None:
        await server.start_async()
        print(f"URL {server.url}", flush=True)
        await asyncio.Event().wait()  # until killed

    asyncio.run(main())


# ------------------------------------------------------------------ the clients


def spec(
    language: str, url: str, storage: Path, tokenizer: Path, concurrency: int, quick: bool
) -> Any:
    from kakugo_stages.manifest import parse_object
    from kakugo_stages.resolved import run_spec

    fixtures = TESTS / "fixtures"
    scale = 1 if quick else 2
    body = {
        "language": language,
        "teacher": {
            "endpoint": {"url": url, "model": "scripted"},
            "maxConcurrency": concurrency,
            "requestTimeoutSeconds": 60,
        },
        "student": {"model": str(tokenizer)},
        "storage": {"uri": str(storage)},
        "data": {
            "topics": {
                "generalSeeds": ["health", "sciences", "arts"][: 1 + scale],
                "languageSeeds": ["{language} culture"],
                "macroTopicsPerSeed": 3 * scale,
                "topicsPerMacroTopic": 2 * scale,
                "minPromptsPerTopic": 1,
                "maxPromptsPerTopic": 1,
                "shards": 2,
            },
            "scenarios": {
                "broadGeneral": 2 * scale,
                "broadLanguage": scale,
                "detailedPerBroad": 2 * scale,
                "promptsPerScenario": 2,
            },
            "contexts": {
                "source": {"path": str(fixtures / "fineweb2_yor_Latn.jsonl")},
                "maxDocuments": 10,
                "keepOneAbove": 10,
                "maxDocumentTokens": 40,
                "shards": 2,
            },
            "revise": {"shards": 2},
            "respond": {"shards": 2},
            "translate": {
                "source": {"path": str(fixtures / "infinity_instruct_7M_core.jsonl")},
                "samples": 12,
                "maxSourceTokens": 400,
                "shards": 2,
                "teacherTokenizer": None,
            },
        },
    }
    name = language.lower()
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": body,
    }
    return run_spec(parse_object(obj))


def teacher_stages(run: Any) -> dict[str, Any]:
    """Every teacher stage of one language, in order, as their Jobs would run them."""
    from kakugo_stages.stages import get_stage, run_stage
    from kakugo_stages.store import open_store

    store = open_store(run.run_uri)
    out: dict[str, Any] = {"requests": 0, "seconds": {}}
    started = time.monotonic()
    for name in TEACHER_STAGES:
        t0 = time.monotonic()
        summary = run_stage(get_stage(name)(run, store), termination_log=os.devnull).as_dict()
        out["seconds"][name] = round(time.monotonic() - t0, 3)
        out["requests"] += int(summary.get("requests", 0))
    out["total_seconds"] = round(time.monotonic() - started, 3)
    return out


def server_stats(url: str, reset: bool = False) -> dict[str, Any]:
    base = url.removesuffix("/v1")
    if reset:
        httpx.post(f"{base}/stats/reset", timeout=10)
        return {}
    return httpx.get(f"{base}/stats", timeout=10).json()


def run_mode(
    mode: str, url: str, root: Path, tokenizer: Path, concurrency: int, quick: bool
) -> dict[str, Any]:
    runs = [
        spec(lang, url, root / mode / lang.lower(), tokenizer, concurrency, quick)
        for lang in LANGUAGES
    ]
    server_stats(url, reset=True)
    results: dict[str, Any] = {}
    errors: list[BaseException] = []
    started = time.monotonic()
    if mode == "sequential":
        for run in runs:
            results[run.name] = teacher_stages(run)
    else:

        def one(run: Any) -> None:
            try:
                results[run.name] = teacher_stages(run)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    wall = time.monotonic() - started
    stats = server_stats(url)
    return {
        "wall_seconds": round(wall, 3),
        "languages": results,
        "server_requests": stats["count"],
        "server_max_in_flight": stats["max_in_flight"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    p.add_argument("--batch", type=int, default=64, help="requests the server serves at once")
    p.add_argument(
        "--slowdown", type=float, default=0.25, help="extra latency of a full batch, as a fraction"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="teacher.maxConcurrency per language (one stage Pod)",
    )
    p.add_argument("--quick", action="store_true", help="smaller trees")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.batch, args.latency, args.slowdown)
        return
    if args.concurrency * len(LANGUAGES) > args.batch:
        print(
            f"note: 2 x --concurrency ({2 * args.concurrency}) is above --batch "
            f"({args.batch}): the shared run queues at the server",
            flush=True,
        )

    from tests.helpers.tiny_models import build_tokenizer

    with (
        own_server(
            __file__,
            "--batch",
            str(args.batch),
            "--latency",
            str(args.latency),
            "--slowdown",
            str(args.slowdown),
        ) as url,
        tempfile.TemporaryDirectory(prefix="kakugo-shared-teacher-") as tmp,
    ):
        root = Path(tmp)
        tokenizer = build_tokenizer(root / "tokenizer")
        # Warm-up (imports, tokenizer load) outside the clock.
        run_mode("warmup", url, root, tokenizer, args.concurrency, True)
        sequential = run_mode("sequential", url, root, tokenizer, args.concurrency, args.quick)
        shared = run_mode("shared", url, root, tokenizer, args.concurrency, args.quick)
    per_language = [r["requests"] for r in sequential["languages"].values()]
    for mode, result in (("sequential", sequential), ("shared", shared)):
        print(
            f"{mode:<10} {result['wall_seconds']:7.2f} s  "
            f"{result['server_requests']} requests, server max in flight "
            f"{result['server_max_in_flight']}"
        )
        for name, r in result["languages"].items():
            stages = " ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items())
            print(
                f"    {name:<8} {r['total_seconds']:6.2f} s  {r['requests']} requests  ({stages})"
            )
    speedup = sequential["wall_seconds"] / shared["wall_seconds"]
    print(f"speedup {speedup:.2f}x")
    print(
        json.dumps(
            {
                "speedup": round(speedup, 3),
                "sequential_seconds": sequential["wall_seconds"],
                "shared_seconds": shared["wall_seconds"],
                "requests_per_language": per_language,
                "server_max_in_flight": {
                    "sequential": sequential["server_max_in_flight"],
                    "shared": shared["server_max_in_flight"],
                },
                "latency_seconds": args.latency,
                "batch": args.batch,
                "slowdown": args.slowdown,
                "concurrency_per_language": args.concurrency,
                "quick": args.quick,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
