"""The teacher phase of `kakugo run`: one stage at a time, then as the DAG.

    python bench/teacher_phase.py                 # 32 slots, 8 per stage Pod, ~2,000 requests
    python bench/teacher_phase.py --scale 0.5     # half the data, for a smoke run

What it runs: `kakugo_stages.runner.run_pipeline` with `--until translate` (the six teacher
stages: topics, scenarios, contexts, revise, respond, translate) for Yoruba, once with
`resources.maxConcurrentStages: 1` (one stage at a time, in graph order) and once with
the default (4: the DAG), each from empty storage (no cached teacher answers). Both runs
use the same executor and settings otherwise: shards per stage are the recipe's defaults
and run `resources.<stage>.parallelism` (`--parallelism`, 4) at once, as their Jobs' Pods
would. A third run (`--no-serial` skips it) is the executor as it was before the DAG: one
stage and one shard at a time.

The data is the recipe's shape at about 1/36 of its size, so that every stage keeps its
share of the teacher requests (respond 38 %, translate 21 %, revise 17 %, contexts 14 %,
topics 7 %, scenarios 3 %): 6 seeds x 4 macro-topics x 3 topics, 8 broad x 6
detailed scenarios, 280 documents (one prompt kept each), half of the prompts revised,
420 conversations translated. Documents and conversations are the test fixtures, made
distinct by an index.

The teacher is the scripted test server (`tests/helpers/teacher_server.py` answering with
`tests/helpers/teacher_scripts.scripted_teacher`) in its own process, as a batching
server with a fixed number of slots (vLLM's `--max-num-seqs`): a request takes
`--latency` seconds, stretched by `--slowdown` as the slots fill (admitted while k others
run: latency x (1 + slowdown x k / (slots - 1))); requests beyond the slots wait for one.
The server samples how many slots are busy every `--sample-ms`; `teacher_busy_fraction`
is the mean busy slots / slots over the DAG run.

Settings: the recipe's teacher serves 256 sequences at once and each stage Pod keeps 64
requests in flight (teacher.maxConcurrency); here 32 slots and 8 per Pod keep that 1:4
ratio at a size two CPU cores can drive (~100 requests/s at 0.25 s).

The last line printed is one JSON object with `linear_seconds`, `dag_seconds`, `speedup`
and `teacher_busy_fraction`, the serial run's figures, and the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from own_server import own_server  # bench/, this script's folder

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
sys.path.insert(0, str(REPO))

# ------------------------------------------------------------------ the server (own process)


class SlotResponder:
    """The scripted teacher behind a fixed number of slots; samples busy slots per stage."""

    def __init__(self, slots: int, latency: float, slowdown: float, sample_ms: float) -> None:
        self.slots, self.latency, self.slowdown = slots, latency, slowdown
        self.interval = sample_ms / 1000
        self.gate: asyncio.Semaphore | None = None
        self.active: Counter[str] = Counter()  # stage -> requests holding a slot
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.started = time.monotonic()

    async def __call__(self, body: dict[str, Any]) -> Any:
        from tests.helpers.teacher_scripts import scripted_teacher, stage_of

        if self.gate is None:  # made on the server's loop, with the sampler
            self.gate = asyncio.Semaphore(self.slots)
            asyncio.get_running_loop().create_task(self._sample())
        stage = stage_of(body)
        async with self.gate:
            others = sum(self.active.values())
            self.active[stage] += 1
            try:
                stretch = 1 + self.slowdown * others / max(self.slots - 1, 1)
                await asyncio.sleep(self.latency * stretch)
                return scripted_teacher(body)
            finally:
                self.active[stage] -= 1

    async def _sample(self) -> None:
        while True:
            at = time.monotonic() - self.started
            self.samples.append((round(at, 3), {k: v for k, v in self.active.items() if v}))
            await asyncio.sleep(self.interval)

    def reset(self) -> None:
        self.samples.clear()
        self.started = time.monotonic()


def serve(slots: int, latency: float, slowdown: float, sample_ms: float) -> None:
    from tests.helpers.teacher_server import TeacherServer

    responder = SlotResponder(slots, latency, slowdown, sample_ms)

    class SamplingServer(TeacherServer):
        """/stats/reset also starts a new sample window; /stats returns it."""

        def reset(self) -> None:
            super().reset()
            responder.reset()

        def stats(self) -> dict[str, Any]:
            return {**super().stats(), "samples": responder.samples}

    server = SamplingServer(responder, record=False)

    async def main() -> None:
        await server.start_async()
        print(f"URL {server.url}", flush=True)
        await asyncio.Event().wait()  # until killed

    asyncio.run(main())


# ------------------------------------------------------------------ the client


def corpora(folder: Path, documents: int, conversations: int) -> tuple[Path, Path]:
    """The fixture corpora, repeated with an index so that every request is distinct."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [json.loads(x) for x in (FIXTURES / "fineweb2_yor_Latn.jsonl").open()]
    convs = [json.loads(x) for x in (FIXTURES / "infinity_instruct_7M_core.jsonl").open()]
    doc_path, conv_path = folder / "documents.jsonl", folder / "conversations.jsonl"
    with doc_path.open("w", encoding="utf-8") as out:
        for i in range(documents):
            doc = docs[i % len(docs)]
            out.write(
                json.dumps(
                    {**doc, "id": f"d{i}", "text": f"{doc['text']} ({i})"}, ensure_ascii=False
                )
                + "\n"
            )
    with conv_path.open("w", encoding="utf-8") as out:
        for i in range(conversations):
            conv = convs[i % len(convs)]
            turns = [{**t, "value": f"{t['value']} ({i})"} for t in conv["conversations"]]
            out.write(
                json.dumps({**conv, "id": i, "conversations": turns}, ensure_ascii=False) + "\n"
            )
    return doc_path, conv_path


def spec(
    url: str,
    storage: Path,
    tokenizer: Path,
    corpus: tuple[Path, Path],
    stages: int,
    parallelism: int,
    concurrency: int,
    scale: float,
) -> Any:
    from kakugo_stages.manifest import parse_object
    from kakugo_stages.resolved import run_spec

    def n(x: int) -> int:
        return max(1, round(x * scale))

    body = {
        "language": "Yoruba",
        "teacher": {
            "endpoint": {"url": url, "model": "scripted"},
            "maxConcurrency": concurrency,
            "requestTimeoutSeconds": 120,
        },
        "student": {"model": str(tokenizer)},
        "storage": {"uri": str(storage)},
        "resources": {"maxConcurrentStages": stages, "default": {"parallelism": parallelism}},
        # Shard counts are the recipe's defaults (topics 1, scenarios 1, contexts 4,
        # revise 4, respond 8, translate 8).
        "data": {
            "topics": {
                "generalSeeds": ["health", "sciences", "arts", "daily life"],
                "languageSeeds": ["{language} culture", "{language} history"],
                "macroTopicsPerSeed": n(4),
                "topicsPerMacroTopic": 3,
            },
            "scenarios": {
                "broadGeneral": 4,
                "broadLanguage": 4,
                "detailedPerBroad": n(6),
                "promptsPerScenario": 5,
            },
            "contexts": {
                "source": {"path": str(corpus[0])},
                "maxDocuments": n(280),
                "keepOneAbove": 100,
                "maxDocumentTokens": 200,
            },
            "translate": {
                "source": {"path": str(corpus[1])},
                "samples": n(420),
                "teacherTokenizer": None,
            },
        },
    }
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "yoruba", "namespace": "bench"},
        "spec": body,
    }
    return run_spec(parse_object(obj))


def server_stats(url: str, reset: bool = False) -> dict[str, Any]:
    base = url.removesuffix("/v1")
    if reset:
        httpx.post(f"{base}/stats/reset", timeout=10)
        return {}
    return httpx.get(f"{base}/stats", timeout=30).json()


def run_mode(
    name: str,
    stages: int,
    parallelism: int,
    url: str,
    root: Path,
    tokenizer: Path,
    corpus: tuple[Path, Path],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from kakugo_stages.runner import RunOptions, run_pipeline

    run = spec(
        url, root / name, tokenizer, corpus, stages, parallelism, args.concurrency, args.scale
    )
    log: list[tuple[float, str]] = []
    server_stats(url, reset=True)
    started = time.monotonic()
    run_pipeline(
        run,
        RunOptions(until="translate", progress=False),
        echo=lambda m: log.append((time.monotonic() - started, m)),
    )
    wall = time.monotonic() - started
    stats = server_stats(url)
    samples = [(t, s) for t, s in stats["samples"] if t <= wall]
    busy = sum(min(sum(s.values()), args.slots) for _, s in samples) / len(samples) / args.slots
    return {
        "wall_seconds": round(wall, 3),
        "requests": stats["count"],
        "busy": round(busy, 3),
        "samples": samples,
        "log": log,
    }


def timeline(result: dict[str, Any], slots: int, step: float) -> list[str]:
    """Per stage, when it started and finished; per `step` seconds, busy slots by stage."""
    lines = [f"    {t:6.1f} s  {m}" for t, m in result["log"] if m[0] in "▶✓✗"]
    buckets: dict[int, list[dict[str, int]]] = {}
    for t, s in result["samples"]:
        buckets.setdefault(int(t // step), []).append(s)
    for b, group in sorted(buckets.items()):
        mean: Counter[str] = Counter()
        for s in group:
            mean.update(s)
        share = " ".join(f"{k} {v / len(group):.0f}" for k, v in sorted(mean.items()))
        busy = sum(mean.values()) / len(group) / slots
        lines.append(f"    {b * step:5.0f}-{(b + 1) * step:<3.0f} s  busy {busy:4.0%}  {share}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--slots", type=int, default=32, help="requests the server serves at once")
    p.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="teacher.maxConcurrency (requests in flight per stage shard)",
    )
    p.add_argument("--latency", type=float, default=0.25, help="seconds per request")
    p.add_argument(
        "--slowdown", type=float, default=0.25, help="extra latency of a full server, as a fraction"
    )
    p.add_argument(
        "--parallelism",
        type=int,
        default=4,
        help="resources.default.parallelism: shards of a stage at once",
    )
    p.add_argument(
        "--serial",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the executor as it was: one stage and one shard at a time",
    )
    p.add_argument("--scale", type=float, default=1.0, help="data size, 1: ~2,000 requests")
    p.add_argument("--sample-ms", type=float, default=20, help="server sampling interval")
    p.add_argument(
        "--timeline",
        type=float,
        default=0,
        metavar="SECONDS",
        help="print busy slots by stage per this many seconds",
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.slots, args.latency, args.slowdown, args.sample_ms)
        return

    from tests.helpers.tiny_models import build_tokenizer

    with (
        own_server(
            __file__,
            "--slots",
            str(args.slots),
            "--latency",
            str(args.latency),
            "--slowdown",
            str(args.slowdown),
            "--sample-ms",
            str(args.sample_ms),
        ) as url,
        tempfile.TemporaryDirectory(prefix="kakugo-teacher-phase-") as tmp,
    ):
        root = Path(tmp)
        tokenizer = build_tokenizer(root / "tokenizer")
        corpus = corpora(root / "corpus", 400, 600)
        # Warm-up (imports, tokenizer, corpus reading) outside the clock.
        warm = argparse.Namespace(**{**vars(args), "scale": 0.05})
        run_mode("warmup", 4, args.parallelism, url, root, tokenizer, corpus, warm)
        results = {
            "linear": run_mode("linear", 1, args.parallelism, url, root, tokenizer, corpus, args),
            "dag": run_mode("dag", 4, args.parallelism, url, root, tokenizer, corpus, args),
        }
        if args.serial:
            results["serial"] = run_mode("serial", 1, 1, url, root, tokenizer, corpus, args)
    for name, result in results.items():
        print(
            f"{name:<7} {result['wall_seconds']:7.2f} s  {result['requests']} requests, "
            f"teacher busy {result['busy']:.0%}"
        )
        if args.timeline:
            print("\n".join(timeline(result, args.slots, args.timeline)))
    linear, dag, serial = results["linear"], results["dag"], results.get("serial")
    speedup = linear["wall_seconds"] / dag["wall_seconds"]
    print(
        json.dumps(
            {
                "linear_seconds": linear["wall_seconds"],
                "dag_seconds": dag["wall_seconds"],
                "speedup": round(speedup, 3),
                "teacher_busy_fraction": dag["busy"],
                "linear_busy_fraction": linear["busy"],
                **(
                    {
                        "serial_seconds": serial["wall_seconds"],
                        "serial_busy_fraction": serial["busy"],
                        "speedup_vs_serial": round(serial["wall_seconds"] / dag["wall_seconds"], 3),
                    }
                    if serial
                    else {}
                ),
                "requests": dag["requests"],
                "slots": args.slots,
                "concurrency_per_shard": args.concurrency,
                "parallelism": args.parallelism,
                "latency_seconds": args.latency,
                "slowdown": args.slowdown,
                "scale": args.scale,
                "max_concurrent_stages": {"linear": 1, "dag": 4},
                "cpus": os.cpu_count(),
                "load": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
