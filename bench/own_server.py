"""The benchmarks' teacher server in its own process: `python SCRIPT --serve ARGS` (each
benchmark serves its own responder model of a batching server), started, waited for and
stopped."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def own_server(script: str, *args: str) -> Iterator[str]:
    """Yield the server's URL, the first line it prints (`URL http://...`)."""
    server = subprocess.Popen(
        [sys.executable, script, "--serve", *args], stdout=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        if not line.startswith("URL "):
            raise SystemExit(f"the teacher server did not start: {line!r}")
        yield line.split()[1]
    finally:
        server.terminate()
        server.wait(10)
