"""The local teacher of `kakugo run`: started, waited for, stopped; and when it cannot
start, an error that says why and what to do."""

from __future__ import annotations

import os
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from kakugo_stages.local_teacher import LocalTeacher, LocalTeacherError, server_command
from kakugo_stages.spec import TeacherSpec

CPU = TeacherSpec(
    model="/models/smollm2",
    served_model_name="smol",
    device="cpu",
    gpus=0,
    max_model_len=2048,
    max_num_seqs=8,
    extra_args=["--enforce-eager"],
)

# A stand-in for `python -m vllm.entrypoints.openai.api_server`: answers /v1/models.
FAKE_SERVER = textwrap.dedent("""
    import argparse, http.server, json
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int)
    args, _ = p.parse_known_args()
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "smol"}]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    print("fake vLLM starting", flush=True)
    http.server.HTTPServer(("127.0.0.1", args.port), H).serve_forever()
""")


def fake_vllm(tmp_path: Path, body: str) -> Path:
    mod = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    mod.mkdir(parents=True)
    for d in (mod, mod.parent, mod.parent.parent):
        (d / "__init__.py").write_text("")
    (mod / "api_server.py").write_text(body)
    return tmp_path / "fake"


def test_cpu_command() -> None:
    cmd = server_command(CPU, "/venv/bin/python", 8123)
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for part in (
        "--model /models/smollm2",
        "--served-model-name smol",
        "--port 8123",
        "--max-model-len 2048",
        "--max-num-seqs 8",
        "--dtype float32",
        "--enforce-eager",
    ):
        assert part in joined
    gpu = server_command(TeacherSpec(gpus=2, tensor_parallel_size=2), "python", 1)
    assert "--tensor-parallel-size 2" in " ".join(gpu) and "--dtype" not in gpu


def test_missing_vllm_virtualenv_says_make_teacher(tmp_path: Path) -> None:
    teacher = LocalTeacher(
        CPU.model_copy(update={"model": str(tmp_path)}),
        tmp_path / "log",
        python=str(tmp_path / "nope" / "bin" / "python"),
        echo=lambda _: None,
    )
    with pytest.raises(LocalTeacherError, match="make teacher"):
        teacher.start(timeout=5)


def test_missing_model_folder_says_make_models(tmp_path: Path) -> None:
    serve = CPU.model_copy(update={"model": str(tmp_path / "no-model")})
    teacher = LocalTeacher(serve, tmp_path / "log", python=sys.executable, echo=lambda _: None)
    with pytest.raises(LocalTeacherError, match="make models"):
        teacher.start(timeout=5)


def test_server_that_exits_shows_its_log_and_a_hint(tmp_path: Path) -> None:
    # This interpreter has no vllm: the server exits at once with "No module named vllm".
    serve = CPU.model_copy(update={"model": str(tmp_path)})
    teacher = LocalTeacher(
        serve, tmp_path / "server.log", python=sys.executable, echo=lambda _: None
    )
    with pytest.raises(LocalTeacherError) as info:
        teacher.start(timeout=30)
    message = str(info.value)
    assert "exited with code 1" in message and "No module named" in message
    assert "make teacher" in message and str(tmp_path / "server.log") in message


def test_start_wait_and_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fake_vllm(tmp_path, FAKE_SERVER)
    monkeypatch.setenv("PYTHONPATH", f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    serve = CPU.model_copy(update={"model": str(tmp_path)})
    notes: list[str] = []
    teacher = LocalTeacher(serve, tmp_path / "server.log", python=sys.executable, echo=notes.append)
    with teacher.running() as url:
        with urllib.request.urlopen(f"{url}/models", timeout=5) as resp:
            assert resp.status == 200
        proc = teacher.process
        assert proc is not None and proc.poll() is None
    assert proc.poll() is not None  # stopped with the block
    assert any("teacher ready" in n for n in notes) and "teacher stopped" in notes
    assert "fake vLLM starting" in (tmp_path / "server.log").read_text()
