"""From the stage to the worker: resolve the student, build the config, start one worker
process (or torchrun with one process per GPU) and read its result.

Training always runs in a child process. That keeps CUDA, NCCL/gloo process groups and
DeepSpeed's global state out of the stage process (and out of test processes), makes the
single- and multi-GPU paths the same, and lets the stage report a crashed worker as a
clean StageFailed with the worker's own error message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kakugo_stages.chat_format import load_chat_template
from kakugo_stages.resolved import RunSpec
from kakugo_stages.store import StoreError, open_store

from .config import TrainConfig

SCRATCH_ENV = "KAKUGO_SCRATCH_DIR"
#: Processes of a CPU run (gloo), to exercise the multi-process path without GPUs.
CPU_PROCESSES_ENV = "KAKUGO_TRAIN_CPU_PROCESSES"
WORKER_MODULE = "kakugo_stages.training.worker"


class TrainingFailed(RuntimeError):
    """The stage turns this into StageFailed."""


def scratch_dir(run: RunSpec) -> Path:
    """Local working space: checkpoints before upload, the downloaded student, the final
    model before upload. `KAKUGO_SCRATCH_DIR` points it at a big local disk."""
    root = Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "kakugo")
    return root / run.namespace / run.name / "train"


def resolve_model_dir(name: str, revision: str | None, dest: Path, field: str) -> str:
    """A local folder for a hub id, a local folder or an s3:// folder."""
    if name.startswith("s3://"):
        try:
            open_store(name).download_dir("", dest)
        except StoreError as exc:
            raise TrainingFailed(f"{field}: cannot download {name}: {exc}") from exc
        return str(dest)
    path = Path(name[len("file://") :] if name.startswith("file://") else name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise TrainingFailed(
                f"{field}: {path} is not a Hugging Face model folder (no config.json)"
            )
        return str(path.resolve())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, revision=revision)
    except Exception as exc:  # offline, gated, unknown repo, ...
        raise TrainingFailed(
            f"{field}: cannot load {name!r} ({type(exc).__name__}: {exc}). Without network "
            "access (HF_HUB_OFFLINE=1) set it to a local folder or an s3:// copy of the model"
        ) from exc


def prepare(run: RunSpec, max_steps: int = -1) -> TrainConfig:
    student = run.spec.student
    scratch = scratch_dir(run)
    scratch.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_dir(
        student.model, student.revision, scratch / "student", "student.model"
    )
    tokenizer_path = (
        resolve_model_dir(
            student.tokenizer, student.revision, scratch / "tokenizer", "student.tokenizer"
        )
        if student.tokenizer
        else model_path
    )
    try:
        template = load_chat_template(student.chat_template)
    except (OSError, ValueError) as exc:
        raise TrainingFailed(f"student.chatTemplate: {exc}") from exc
    config = TrainConfig.from_run(
        run,
        model_path=model_path,
        tokenizer_path=tokenizer_path,
        chat_template=template,
        scratch_dir=str(scratch),
        max_steps=max_steps,
    )
    if config.device == "cpu" and os.environ.get(CPU_PROCESSES_ENV):
        config = config.replace(nproc=int(os.environ[CPU_PROCESSES_ENV]))
    try:
        config.gradient_accumulation_steps  # noqa: B018 - checks that the batch divides
    except ValueError as exc:
        raise TrainingFailed(str(exc)) from exc
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(config_path: Path, result_path: Path, nproc: int) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`, the same program) with one process
    per GPU; a plain worker for one process."""
    worker = ["-m", WORKER_MODULE, str(config_path), str(result_path)]
    if nproc > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *worker,
        ]
    return [sys.executable, *worker]


def worker_env(nproc: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    if nproc == 1:
        # A one-process "world", so DeepSpeed and the Trainer take the same path as under
        # torchrun. torchrun sets these itself for several processes.
        env.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Linux: the worker gets SIGTERM when the stage process dies, even by SIGKILL.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_worker(config: TrainConfig) -> dict[str, Any]:
    if "WORLD_SIZE" in os.environ and os.environ.get("KAKUGO_TRAIN_ALLOW_NESTED") != "1":
        raise TrainingFailed(
            "the train stage was started under torchrun (WORLD_SIZE is set); start it as a "
            "single process: it launches torchrun itself with resources.train.gpus processes"
        )
    scratch = Path(config.scratch_dir)
    run_dir = scratch / "worker"
    # The store holds the checkpoints that count; local leftovers of a killed attempt
    # (possibly newer than the last uploaded one) must not be mixed in.
    for stale in (run_dir, scratch / "checkpoints", scratch / "resume"):
        shutil.rmtree(stale, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config_path = config.write(run_dir / "config.json")
    result_path = run_dir / "result.json"
    cmd = worker_command(config_path, result_path, config.nproc)
    proc = subprocess.Popen(cmd, env=worker_env(config.nproc), preexec_fn=_die_with_parent)
    try:
        code = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if code != 0 or not result_path.is_file():
        errors = sorted(run_dir.glob("error-*.txt"))
        cause = (
            errors[0].read_text(encoding="utf-8").split("\n\n", 1)[0]
            if errors
            else ("no error report (killed? out of memory?); see the worker's log above")
        )
        raise TrainingFailed(f"training worker exited with code {code}: {cause}")
    return json.loads(result_path.read_text(encoding="utf-8"))
