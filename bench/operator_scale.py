"""How the operator scales: apply N LanguageModels to the KMock emulator and measure.

For N in 10, 100, 500 (fresh emulator and fresh operator process each time):
- seconds from the first `create` until every LanguageModel has its first Job;
- the operator process's resident memory (RSS) once all are settled;
- API requests the operator made per LanguageModel (everything it sent to the emulator in
  that window, watches included, divided by N).

The emulator runs in this process (tests/operator/emulator.py); the operator runs as a
separate process (`python -m kakugo_operator.main`, the `kakugo operator` entry point), so
its RSS is its own. The last output line is one JSON object.

    python bench/operator_scale.py [--sizes 10,100,500]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.operator.k8s_emulator import Api, EmulatorThread  # noqa: E402

NS = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def manifest(i: int) -> dict:
    return {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": f"lm-{i:04d}", "namespace": NS},
        "spec": {
            "language": "Yoruba",
            "teacher": {"endpoint": {"url": "https://api.example.com/v1", "model": "m"}},
            "storage": {"uri": "s3://bench/runs"},
        },
    }


def first_jobs(emu: EmulatorThread) -> int:
    assert emu.emulator is not None
    n = 0
    for (resource, _, name), obj in list(emu.emulator.objects.items()):
        if resource.plural == "jobs" and name.endswith("-topics-1") and not obj.deleted:
            n += 1
    return n


def operator_requests(emu: EmulatorThread) -> int:
    # Everything except our own creates (the bench's client sends a distinct User-Agent).
    from tests.operator.k8s_emulator import Emulator

    return sum(n for agent, n in Emulator.by_agent.items() if agent != "python-httpx")


def run(n: int, timeout: float) -> dict:
    with EmulatorThread() as emu, tempfile.TemporaryDirectory() as tmp:
        kubeconfig = emu.kubeconfig(Path(tmp) / "config")
        health = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KAKUGO_RESYNC_SECONDS": "60",
            "KAKUGO_METRICS_PORT": str(free_port()),
        }
        cmd = [
            sys.executable,
            "-m",
            "kakugo_operator.main",
            "--liveness",
            f"http://127.0.0.1:{health}/healthz",
            "--quiet",
        ]
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "log", "w"),  # noqa: SIM115 - the child owns it
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=1).is_success:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError(
                    "the operator did not become ready: " + (Path(tmp) / "log").read_text()[-2000:]
                )
            time.sleep(1.0)  # watches established
            api = Api(emu.url)
            before = operator_requests(emu)
            started = time.monotonic()
            for i in range(n):
                api.create(manifest(i))
            created = time.monotonic() - started
            while first_jobs(emu) < n:
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"only {first_jobs(emu)} of {n} got a Job in {timeout}s")
                time.sleep(0.05)
            seconds = time.monotonic() - started
            time.sleep(3.0)  # let status writes and events settle before counting
            requests = operator_requests(emu) - before
            return {
                "n": n,
                "seconds_to_all_first_jobs": round(seconds, 3),
                "seconds_to_apply": round(created, 3),
                "per_object_seconds": round(seconds / n, 5),
                "rss_mb": round(rss_mb(proc.pid), 1),
                "requests_per_object": round(requests / n, 2),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    rows = [run(int(n), args.timeout) for n in args.sizes.split(",")]
    print(f"{'N':>5} {'s to all Jobs':>14} {'s/object':>10} {'RSS MB':>8} {'req/object':>11}")
    for r in rows:
        print(
            f"{r['n']:>5} {r['seconds_to_all_first_jobs']:>14.2f} "
            f"{r['per_object_seconds']:>10.4f} {r['rss_mb']:>8.1f} "
            f"{r['requests_per_object']:>11.2f}"
        )
    by_n = {r["n"]: r for r in rows}
    result: dict = {"rows": rows}
    if 10 in by_n and 500 in by_n:
        result["per_object_seconds_ratio_500_vs_10"] = round(
            by_n[500]["per_object_seconds"] / by_n[10]["per_object_seconds"], 3
        )
        result["requests_per_object_ratio_500_vs_10"] = round(
            by_n[500]["requests_per_object"] / by_n[10]["requests_per_object"], 3
        )
        result["rss_mb_at_500"] = by_n[500]["rss_mb"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
