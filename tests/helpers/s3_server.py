"""A real S3 API on loopback for tests: moto's threaded server on 127.0.0.1 and a free port.

Import from test modules (``from s3_server import ...``) and wrap in fixtures there, so this
helper does not depend on any conftest.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

FAKE_ACCESS_KEY = "AKIAKAKUGOTESTKEY000"
# Distinctive so tests can assert that it never leaks into messages.
FAKE_SECRET_KEY = "kakugo-test-secret-DO-NOT-LOG-0123456789"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """Run a moto server on loopback; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def set_fake_aws_env(monkeypatch: pytest.MonkeyPatch, endpoint_url: str | None) -> None:
    """Point boto3 at ``endpoint_url`` with fake credentials, ignoring the host's AWS setup."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "AWS_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/kakugo-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/kakugo-aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if endpoint_url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint_url)


def create_bucket(endpoint_url: str, name: str | None = None, *, client: Any = None) -> str:
    """Create a fresh bucket (uses the fake credentials from the environment)."""
    import boto3

    name = name or f"kakugo-{uuid.uuid4().hex[:12]}"
    if client is None:
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name="us-east-1"
        )
    client.create_bucket(Bucket=name)
    return name
