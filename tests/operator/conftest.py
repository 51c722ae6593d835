"""Operator tests: Kopf runs for real (KopfRunner) against the KMock emulator.

The tests act as the Job controller and the kubelet: they create the Pods of a Job and
write Job and Pod statuses (succeeded with termination messages, failed, evicted, ...).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.operator.k8s_emulator import Api, EmulatorThread
from tests.operator.operator_helpers import METRICS_PORT, Operator, free_port

# The kubernetes client reads KUBECONFIG once, at import: one path for the whole session,
# rewritten for each test's emulator.
KUBECONFIG = Path(tempfile.mkdtemp(prefix="kakugo-kube-")) / "config"
os.environ["KUBECONFIG"] = str(KUBECONFIG)


@pytest.fixture
def cluster() -> Iterator[Api]:
    with EmulatorThread() as emu:
        emu.kubeconfig(KUBECONFIG)
        api = Api(emu.url)
        api.emulator = emu  # type: ignore[attr-defined]
        yield api


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "KAKUGO_IMAGE_STAGES": "registry.test/kakugo-stages:1",
        "KAKUGO_IMAGE_TRAINER": "registry.test/kakugo-trainer:1",
        "KAKUGO_IMAGE_EVAL": "registry.test/kakugo-eval:1",
        "KAKUGO_IMAGE_TEACHER": "registry.test/vllm:1",
        "KAKUGO_STORAGE_URI": "s3://default-bucket/runs",
        "KAKUGO_BACKOFF_BASE_SECONDS": "0.5",
        "KAKUGO_BACKOFF_MAX_SECONDS": "1",
        "KAKUGO_RETRY_BUDGET": "2",
        "KAKUGO_RESYNC_SECONDS": "1",
        "KAKUGO_TEACHER_IDLE_SECONDS": "1",
        "KAKUGO_METRICS_PORT": str(METRICS_PORT),
        # The admission webhook listens on its own port in every test (nothing calls it
        # unless a test does: the emulator has no admission chain).
        "KAKUGO_WEBHOOK_PORT": str(free_port()),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KAKUGO_OPERATOR_SETTINGS", raising=False)
    return env


@pytest.fixture
def operator(cluster: Api, operator_env: dict[str, str]) -> Iterator[Operator]:
    op = Operator().start()
    try:
        yield op
    finally:
        op.stop()
