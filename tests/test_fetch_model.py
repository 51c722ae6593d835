"""`kakugo fetch-model`: what the served model's init container runs (spec.serve) to copy
the tuned model from the run's storage to its scratch volume: from S3 (the endpoint from
the environment, as the operator sets it) and from a mounted PVC (a file path)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kakugo_stages.cli import main
from kakugo_stages.contract import SERVE_MODEL_DIR, fetch_model_command, served_model_uri
from kakugo_stages.store import open_store
from tests.helpers.s3_server import create_bucket, moto_s3_server, set_fake_aws_env

MODEL = {
    "config.json": b'{"model_type": "granitemoehybrid"}',
    "model.safetensors": bytes(range(256)) * 64,
    "tokenizer.json": b"{}",
    "chat_template.jinja": b"{{ messages }}",
}


def put_model(root: str) -> None:
    store = open_store(root)
    for key, data in MODEL.items():
        store.write_bytes(f"model/{key}", data)


def fetched(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in dest.iterdir()}


def test_the_command_the_operator_runs() -> None:
    uri = served_model_uri("s3://b/runs/ns/yoruba")
    assert fetch_model_command(uri) == ["kakugo", "fetch-model", uri, SERVE_MODEL_DIR]
    assert uri == "s3://b/runs/ns/yoruba/model" and SERVE_MODEL_DIR == "/scratch/model"


def test_fetch_from_a_pvc_path(tmp_path: Path) -> None:
    put_model(str(tmp_path / "runs" / "ns" / "yoruba"))
    dest = tmp_path / "scratch" / "model"
    uri = f"file://{tmp_path}/runs/ns/yoruba/model"
    result = CliRunner().invoke(main, ["fetch-model", uri, str(dest)])
    assert result.exit_code == 0, result.output
    assert fetched(dest) == MODEL
    assert "copied 4 file(s)" in result.output


def test_fetch_from_s3_with_the_endpoint_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with moto_s3_server() as endpoint:
        set_fake_aws_env(monkeypatch, endpoint)  # AWS_ENDPOINT_URL_S3, as in the Pod
        bucket = create_bucket(endpoint)
        put_model(f"s3://{bucket}/runs/ns/yoruba")
        dest = tmp_path / "model"
        uri = f"s3://{bucket}/runs/ns/yoruba/model"
        result = CliRunner().invoke(main, ["fetch-model", uri, str(dest)])
        assert result.exit_code == 0, result.output
        assert fetched(dest) == MODEL


def test_no_model_names_the_train_stage(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["fetch-model", str(tmp_path / "nothing" / "model"), str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    assert "config.json missing): the train stage must finish first" in result.output
    assert not (tmp_path / "out").exists()
