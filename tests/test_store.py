"""Artifact store tests: every behaviour on a local folder and on a real S3 API (moto server)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError

from kakugo_stages.store import (
    ArtifactNotFound,
    ArtifactStore,
    FileStore,
    InvalidKeyError,
    S3Store,
    StageOutput,
    StoreError,
    StoreURIError,
    completed_key,
    open_run_store,
    open_store,
    shard_key,
    stats_key,
)
from tests.helpers.full_disk import DISK_FULL_STEPS, FullDisk, full_disk
from tests.helpers.s3_server import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    create_bucket,
    free_port,
    moto_s3_server,
    set_fake_aws_env,
)

YORUBA = "Ẹ kú àárọ̀! Báwo ni? Yorùbá ni èdè wa."
MiB = 1024 * 1024


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with moto_s3_server() as url:
        yield url


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    set_fake_aws_env(monkeypatch, moto_endpoint)
    return moto_endpoint


@pytest.fixture
def bucket(s3_env: str) -> str:
    name = f"kakugo-{uuid.uuid4().hex[:12]}"
    return create_bucket(s3_env, name, client=open_store(f"s3://{name}").client)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return open_store(str(tmp_path / "root"))
    name = request.getfixturevalue("bucket")
    # A prefix, so every test also checks that keys are relative to it.
    return open_store(f"s3://{name}/runs/default/yoruba")


def temp_files_on_disk(store: ArtifactStore) -> list[str]:
    root = store.local_path()
    if root is None or not root.exists():
        return []
    return [str(p) for p in root.rglob("*") if ".tmp-" in p.name]


def no_leftovers(store: ArtifactStore, key: str, earlier: bytes | None) -> None:
    """The state after an interrupted write: old version or nothing, and no temp files."""
    if earlier is None:
        assert not store.exists(key)
        assert store.list() == []
    else:
        assert store.read_bytes(key) == earlier
        assert store.list() == [key]
    assert temp_files_on_disk(store) == []


# --------------------------------------------------------------------------- roundtrips


def test_bytes_roundtrip_and_overwrite(store: ArtifactStore) -> None:
    assert not store.exists("a/b.bin")
    store.write_bytes("a/b.bin", b"\x00\x01first")
    assert store.exists("a/b.bin")
    assert store.read_bytes("a/b.bin") == b"\x00\x01first"
    store.write_bytes("a/b.bin", b"second")
    assert store.read_bytes("a/b.bin") == b"second"
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b""
    # A "folder" is not an object.
    assert not store.exists("a")


def test_text_and_json_keep_non_ascii(store: ArtifactStore) -> None:
    store.write_text("t.txt", YORUBA)
    assert store.read_text("t.txt") == YORUBA
    obj = {"language": "Yorùbá", "greeting": YORUBA, "n": [1, 2.5, None, True]}
    store.write_json("spec.json", obj)
    assert store.read_json("spec.json") == obj
    assert "Yorùbá" in store.read_bytes("spec.json").decode("utf-8")  # not \u-escaped


def test_jsonl_roundtrip(store: ArtifactStore) -> None:
    rows = [
        {"id": 0, "text": YORUBA},
        {"id": 1, "text": "line\nbreak and \u2028 separator", "tags": ["à", "ẹ"]},
        types.MappingProxyType({"id": 2, "nested": {"ọ̀": 1}}),
    ]
    assert store.write_jsonl("topics/shard-00000.jsonl", iter(rows)) == 3
    raw = store.read_bytes("topics/shard-00000.jsonl").decode("utf-8")
    assert raw.count("\n") == 3 and raw.endswith("\n")
    assert "Yorùbá" in raw
    expected = [dict(r) for r in rows]
    assert store.read_jsonl("topics/shard-00000.jsonl") == expected
    assert list(store.iter_jsonl("topics/shard-00000.jsonl")) == expected
    assert store.write_jsonl("empty.jsonl", []) == 0
    assert store.read_jsonl("empty.jsonl") == []


def test_jsonl_rejects_non_mapping_rows_and_writes_nothing(store: ArtifactStore) -> None:
    with pytest.raises(TypeError, match="row 1"):
        store.write_jsonl("x.jsonl", [{"a": 1}, ["not", "a", "dict"]])
    assert not store.exists("x.jsonl")


def test_jsonl_corrupt_line_names_uri(store: ArtifactStore) -> None:
    store.write_bytes("bad.jsonl", b'{"a": 1}\n{oops\n')
    with pytest.raises(StoreError, match="line 2") as info:
        store.read_jsonl("bad.jsonl")
    assert store.url("bad.jsonl") in str(info.value)


def test_parquet_roundtrip(store: ArtifactStore) -> None:
    rows = [{"id": i, "text": f"{YORUBA} {i}", "score": i / 2} for i in range(50)]
    assert store.write_parquet("mix/shard-00000.parquet", rows) == 50
    assert store.read_parquet("mix/shard-00000.parquet") == rows
    table = pa.table({"a": [1, 2], "b": ["ẹ", "ọ"]})
    assert store.write_parquet("t.parquet", table) == 2
    assert store.read_parquet_table("t.parquet").equals(table)
    with pytest.raises(ArtifactNotFound):
        store.read_parquet("missing.parquet")


# --------------------------------------------------------------------------- listing


def test_list_sorted_recursive_and_prefix_filtered(store: ArtifactStore) -> None:
    for key in ["b", "a/y/z.json", "ab", "a/x", "a/y/a"]:
        store.write_bytes(key, b"1")
    assert store.list() == ["a/x", "a/y/a", "a/y/z.json", "ab", "b"]
    assert store.list("a/") == ["a/x", "a/y/a", "a/y/z.json"]
    assert store.list("a") == ["a/x", "a/y/a", "a/y/z.json", "ab"]  # string prefix, like S3
    assert store.list("a/y/z") == ["a/y/z.json"]
    assert store.list("nope/") == []


def test_in_progress_write_is_invisible(store: ArtifactStore) -> None:
    store.write_bytes("d/k.txt", b"old")
    with store.open_write("d/k.txt") as f:
        f.write(b"new, half written")
        # Readers still see the old object, and listings show no temp file.
        assert store.read_bytes("d/k.txt") == b"old"
        assert store.list() == ["d/k.txt"]
        if isinstance(store, FileStore):
            assert len(temp_files_on_disk(store)) == 1  # the temp file really exists
        with store.open_write("d/new.txt") as g:
            g.write(b"x")
            assert not store.exists("d/new.txt")
            assert store.list("d/") == ["d/k.txt"]
    assert store.read_bytes("d/k.txt") == b"new, half written"
    assert store.list() == ["d/k.txt", "d/new.txt"]
    assert temp_files_on_disk(store) == []


def test_crash_leftover_temp_file_is_hidden_and_cleaned(tmp_path: Path) -> None:
    # A writer killed with SIGKILL leaves its temp file behind.
    store = FileStore(tmp_path)
    store.write_bytes("topics/shard-00000.jsonl", b"{}\n")
    (tmp_path / "topics" / f".shard-00001.jsonl.tmp-{'ab' * 16}").write_bytes(b"{")
    assert store.list() == ["topics/shard-00000.jsonl"]
    assert store.delete_prefix("topics/") == 1
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidKeyError):
        store.write_bytes(f"x/.a.tmp-{'0' * 32}", b"")


# --------------------------------------------------------------------------- interrupted writes


@pytest.mark.parametrize("earlier", [None, b'{"v":1}\n'], ids=["new-key", "overwrite"])
def test_interrupted_write_jsonl(store: ArtifactStore, earlier: bytes | None) -> None:
    key = "respond/shard-00003.jsonl"
    if earlier is not None:
        store.write_bytes(key, earlier)

    def rows() -> Iterator[dict]:
        for i in range(2000):
            if i == 1000:
                raise RuntimeError("teacher died")
            yield {"i": i, "text": YORUBA * 3}

    with pytest.raises(RuntimeError, match="teacher died"):
        store.write_jsonl(key, rows())
    no_leftovers(store, key, earlier)


@pytest.mark.parametrize("earlier", [None, b"old model"], ids=["new-key", "overwrite"])
def test_interrupted_open_write(store: ArtifactStore, earlier: bytes | None) -> None:
    key = "model/model.safetensors"
    if earlier is not None:
        store.write_bytes(key, earlier)
    with pytest.raises(KeyboardInterrupt), store.open_write(key) as f:
        f.write(b"\x01" * 100_000)
        raise KeyboardInterrupt  # even BaseException leaves nothing behind
    no_leftovers(store, key, earlier)


WRITES = {
    "bytes": lambda store, key: store.write_bytes(key, b"new" * 10_000),
    "jsonl": lambda store, key: store.write_jsonl(key, [{"a": "Ẹ kú"}] * 1000),
    "parquet": lambda store, key: store.write_parquet(key, [{"a": "Ẹ kú"}] * 1000),
    "json": lambda store, key: store.write_json(key, {"a": 1}),
}


@pytest.mark.parametrize("earlier", [None, b"old"], ids=["new-key", "overwrite"])
@pytest.mark.parametrize("how", sorted(WRITES))
@pytest.mark.parametrize("step", DISK_FULL_STEPS)
def test_disk_full_names_the_path_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, how: str, earlier: bytes | None
) -> None:
    store = open_store(str(tmp_path / "root"))
    key = f"topics/shard-00000.{how}"
    if earlier is not None:
        store.write_bytes(key, earlier)
    files = full_disk(monkeypatch, step)
    with pytest.raises(StoreError) as info:
        WRITES[how](store, key)
    monkeypatch.undo()
    message = str(info.value)
    assert f"cannot write {store.local_path(key)}: No space left on device" in message
    assert "[ENOSPC] (the disk is full)" in message
    no_leftovers(store, key, earlier)
    assert all(f._f.closed for f in files), "every descriptor is closed"


def test_disk_full_in_upload_and_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(str(tmp_path / "root"))
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\0" * 100_000)
    full_disk(monkeypatch, "write")
    with pytest.raises(StoreError, match=r"cannot write .*model\.bin: No space left"):
        store.upload_file(src, "model/model.bin")
    monkeypatch.undo()
    assert temp_files_on_disk(store) == [] and not store.exists("model/model.bin")
    store.upload_file(src, "model/model.bin")
    real_open = Path.open

    def full(self: Path, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = real_open(self, mode, *args, **kw)
        return FullDisk(f, "write") if "w" in mode else f

    monkeypatch.setattr(Path, "open", full)
    dest = tmp_path / "local" / "model.bin"
    with pytest.raises(StoreError, match=f"cannot write {dest}: No space left"):
        store.download_file("model/model.bin", dest)
    monkeypatch.undo()
    assert list((tmp_path / "local").iterdir()) == []


def test_s3_interrupted_multipart_upload_leaves_no_object(s3_env: str, bucket: str) -> None:
    store = open_store(
        f"s3://{bucket}/p",
        client_config=Config(retries={"max_attempts": 0}),
        transfer_config=TransferConfig(
            multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=1
        ),
    )
    assert isinstance(store, S3Store)
    client = store.client
    calls: list[str] = []

    def record(event_name: str, **kwargs: object) -> None:
        calls.append(event_name.rsplit(".", 1)[-1])

    client.meta.events.register("before-send.s3.*", record)
    payload = os.urandom(12 * MiB)

    # First a complete multipart upload, to show the size really goes multipart.
    store.write_bytes("big.bin", payload)
    assert store.read_bytes("big.bin") == payload
    assert calls.count("UploadPart") == 3 and "CompleteMultipartUpload" in calls

    # Then the network drops while part 2 is on the wire.
    def drop_part_2(request, **kwargs: object) -> None:
        if "partNumber=2" in request.url:
            raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register("before-send.s3.UploadPart", drop_part_2)
    calls.clear()
    with pytest.raises(StoreError) as info, store.open_write("big.bin") as f:
        f.write(b"\x02" * len(payload))
    assert "s3://" in str(info.value)
    assert "CreateMultipartUpload" in calls and "AbortMultipartUpload" in calls
    assert "CompleteMultipartUpload" not in calls
    assert store.read_bytes("big.bin") == payload  # the earlier version is intact
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    with pytest.raises(StoreError):
        store.write_bytes("fresh.bin", payload)
    assert not store.exists("fresh.bin")
    assert store.list() == ["big.bin"]


# --------------------------------------------------------------------------- child, url, delete


def test_child_store(store: ArtifactStore) -> None:
    run = store.child("ns", "yoruba")
    run.write_text("spec.yaml", "language: yor\n")
    assert store.list() == ["ns/yoruba/spec.yaml"]
    assert run.list() == ["spec.yaml"]
    assert run.child("topics").url("shard-00000.jsonl") == store.url(
        "ns/yoruba/topics/shard-00000.jsonl"
    )
    assert run.uri == store.url("ns/yoruba")
    if isinstance(store, S3Store):
        assert isinstance(run, S3Store) and run.client is store.client
    with pytest.raises(InvalidKeyError):
        store.child("..")
    with pytest.raises(InvalidKeyError):
        store.child("")


def test_urls(tmp_path: Path, s3_env: str) -> None:
    fs = open_store(str(tmp_path))
    assert fs.uri == tmp_path.as_uri()
    assert fs.url("topics/shard-00000.jsonl") == (tmp_path / "topics/shard-00000.jsonl").as_uri()
    s3 = open_store("s3://bucket-x/p/q/")
    assert s3.uri == "s3://bucket-x/p/q"
    assert s3.url("topics/shard-00000.jsonl") == "s3://bucket-x/p/q/topics/shard-00000.jsonl"
    assert open_store("s3://bucket-x").url("a") == "s3://bucket-x/a"


def test_delete_and_delete_prefix(store: ArtifactStore) -> None:
    for key in ["topics/shard-00000.jsonl", "topics/_completed/00000", "topicsx", "other/a"]:
        store.write_bytes(key, b"1")
    store.delete("other/a")
    store.delete("other/a")  # missing is fine
    assert store.delete_prefix("topics/") == 2
    assert store.list() == ["topicsx"]
    assert store.delete_prefix("") == 1
    assert store.list() == []
    assert store.delete_prefix("nothing/") == 0


def test_local_path(store: ArtifactStore, tmp_path: Path) -> None:
    if isinstance(store, FileStore):
        assert store.local_path("model") == tmp_path / "root" / "model"
        assert store.local_path() == tmp_path / "root"
    else:
        assert store.local_path("model") is None


def test_upload_and_download_dir(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "model-src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(70_000))
    assert store.upload_dir(src, "model") == 2
    assert store.list("model/") == ["model/config.json", "model/sub/weights.bin"]
    dest = store.download_dir("model", tmp_path / "model-dest")
    assert (dest / "config.json").read_text() == '{"a": 1}'
    assert (dest / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()
    assert sorted(p.name for p in dest.rglob("*")) == ["config.json", "sub", "weights.bin"]
    with pytest.raises(ArtifactNotFound):
        store.download_dir("no-model", tmp_path / "x")
    with pytest.raises(ArtifactNotFound):
        store.download_file("no-model/a", tmp_path / "x" / "a")
    assert not (tmp_path / "x" / "a").exists()


def test_file_store_respects_umask(tmp_path: Path) -> None:
    # A temp-file helper would create 0600 files, unreadable for other pods on a shared PVC.
    umask = os.umask(0)
    os.umask(umask)
    store = FileStore(tmp_path)
    store.write_bytes("a", b"1")
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o666 & ~umask


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("read_bytes", ()),
        ("read_text", ()),
        ("read_json", ()),
        ("read_jsonl", ()),
        ("read_parquet", ()),
    ],
)
def test_missing_key_raises_artifact_not_found(store: ArtifactStore, op: str, args: tuple) -> None:
    with pytest.raises(ArtifactNotFound) as info:
        getattr(store, op)("topics/shard-00009.jsonl", *args)
    assert isinstance(info.value, KeyError)
    assert store.url("topics/shard-00009.jsonl") in str(info.value)
    with pytest.raises(ArtifactNotFound), store.open_read("nope"):
        pass


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "./a", "a\\b"])
def test_invalid_keys(store: ArtifactStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.write_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.read_bytes(key)


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("s3://", "missing bucket"),
        ("s3:///prefix", "missing bucket"),
        ("gs://x", "unsupported scheme 'gs'"),
        ("s3://Bad_Bucket", "invalid bucket name 'Bad_Bucket'"),
        ("s3://ab", "invalid bucket name"),
        ("s3://bucket/a/../b", "invalid prefix"),
        ("s3://bucket/p?versionId=1", "query"),
        ("file://host/x", "cannot name a host"),
        ("file:relative", "absolute path"),
        ("", "empty"),
    ],
)
def test_bad_uris(uri: str, problem: str) -> None:
    with pytest.raises(StoreURIError, match="accepted forms") as info:
        open_store(uri)
    assert isinstance(info.value, ValueError)
    assert problem in str(info.value)
    assert repr(uri) in str(info.value)


def test_open_store_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: str) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_store("runs/local")
    assert isinstance(rel, FileStore) and rel.root == tmp_path / "runs" / "local"
    assert open_store(str(tmp_path)).local_path() == tmp_path
    spaced = open_store((tmp_path / "with space").as_uri())
    assert spaced.local_path() == tmp_path / "with space"
    assert open_store("file:///srv/x").local_path() == Path("/srv/x")

    s3 = open_store("s3://bucket-x/p")
    assert isinstance(s3, S3Store)
    assert s3.client.meta.endpoint_url == s3_env  # from AWS_ENDPOINT_URL_S3
    # Botocore's own retries, capped (5 attempts), adaptive; bounded waits.
    assert s3.client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 5}
    assert (s3.client.meta.config.connect_timeout, s3.client.meta.config.read_timeout) == (5, 30)
    explicit = open_store("s3://bucket-x/p", endpoint_url="http://127.0.0.1:1", region="eu-west-1")
    assert explicit.client.meta.endpoint_url == "http://127.0.0.1:1"
    assert explicit.client.meta.region_name == "eu-west-1"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    generic = open_store("s3://bucket-x")
    assert generic.client.meta.endpoint_url == "http://127.0.0.1:2"
    assert generic.client.meta.config.retries["total_max_attempts"] == 3


def test_unreachable_endpoint_raises_store_error_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    set_fake_aws_env(monkeypatch, None)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    store = open_store(
        "s3://bucket-x/p",
        endpoint_url=closed,
        client_config=Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}),
    )
    start = time.monotonic()
    for call in (
        lambda: store.read_bytes("k"),
        lambda: store.write_bytes("k", b"1"),
        lambda: store.list(),
        lambda: store.exists("k"),
    ):
        with pytest.raises(StoreError) as info:
            call()
        assert not isinstance(info.value, ArtifactNotFound)
        assert "s3://bucket-x/p" in str(info.value)
        assert FAKE_SECRET_KEY not in str(info.value)
    assert time.monotonic() - start < 5


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """A port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_endpoint_that_does_not_answer_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Bounded by the connect/read timeouts and the capped attempts (set small here with
    the environment knobs), then a StoreError naming the endpoint and the bounds."""
    set_fake_aws_env(monkeypatch, None)
    monkeypatch.setenv("KAKUGO_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("KAKUGO_S3_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with contextlib.ExitStack() as stack:
        if kind == "silent":
            endpoint = stack.enter_context(silent_endpoint())
        else:
            endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        store = open_store("s3://bucket-x/p", endpoint_url=endpoint)
        config = store.client.meta.config
        assert (config.connect_timeout, config.read_timeout) == (1, 0.5)
        calls = [
            lambda: store.read_bytes("k"),
            lambda: store.write_jsonl("rows.jsonl", [{"a": 1}]),
            lambda: store.exists("k"),
        ]
        if kind == "refused":  # fast: every call
            calls += [lambda: store.write_bytes("k", b"1"), lambda: store.list()]
        for call in calls:
            with pytest.raises(StoreError) as info:
                call()
            message = str(info.value)
            assert not isinstance(info.value, ArtifactNotFound)
            assert f"S3 endpoint {endpoint} did not answer for s3://bucket-x/p" in message
            assert "gave up after 2 attempt(s), connect timeout 1s, read timeout 0.5s" in message
            assert "storage.s3.endpointUrl" in message
            assert FAKE_SECRET_KEY not in message
            if kind == "silent":
                assert "Read timeout" in message


def test_s3_timeouts_from_the_environment_must_be_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_fake_aws_env(monkeypatch, None)
    monkeypatch.setenv("KAKUGO_S3_READ_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="KAKUGO_S3_READ_TIMEOUT='soon' is not a number"):
        open_store("s3://bucket-x/p", endpoint_url="http://127.0.0.1:1")


def run_on_s3(endpoint: str | None, uri: str = "s3://bucket-x/runs", region: str = "eu-west-3"):
    from kakugo_stages.manifest import parse_object
    from kakugo_stages.resolved import run_spec

    storage: dict = {"uri": uri}
    if endpoint is not None:
        storage["s3"] = {"endpointUrl": endpoint, "region": region}
    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "yo", "namespace": "team"},
        "spec": {
            "language": "Yoruba",
            "teacher": {"endpoint": {"url": "http://127.0.0.1:1/v1", "model": "m"}},
            "storage": storage,
        },
    }
    return run_spec(parse_object(obj))


def test_run_store_uses_the_spec_endpoint(
    s3_env: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """storage.s3.endpointUrl and region decide where a run's store is, over the
    environment (which the operator fills from the same spec for Jobs)."""
    from kakugo_stages.training.config import TrainConfig

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # dead
    run = run_on_s3(s3_env, f"s3://{bucket}/runs")
    store = open_run_store(run)
    assert store.client.meta.endpoint_url == s3_env
    assert store.client.meta.region_name == "eu-west-3"
    assert store.url() == f"s3://{bucket}/runs/team/yo"
    store.write_text("spec.yaml", "x")
    assert open_store(f"s3://{bucket}/runs/team/yo", endpoint_url=s3_env).read_text(
        "spec.yaml"
    ) == ("x")
    # Without storage.s3 the environment decides, as before.
    assert open_run_store(run_on_s3(None)).client.meta.endpoint_url.startswith("http://127.0.0.1:")
    # The training worker opens the store itself, from its config.
    config = TrainConfig.from_run(
        run, model_path="m", tokenizer_path="t", chat_template="", scratch_dir="/tmp/x"
    )
    assert (config.storage_endpoint_url, config.storage_region) == (s3_env, "eu-west-3")
    assert TrainConfig.from_json(config.to_json()) == config


def test_s3_errors_name_uri_never_credentials(s3_env: str) -> None:
    store = open_store("s3://no-such-bucket-kakugo/p")
    with pytest.raises(StoreError) as info:
        store.read_bytes("k")
    message = str(info.value)
    assert not isinstance(info.value, ArtifactNotFound)
    assert "NoSuchBucket" in message and "s3://no-such-bucket-kakugo/p/k" in message
    assert FAKE_SECRET_KEY not in message and FAKE_ACCESS_KEY not in message
    assert FAKE_SECRET_KEY not in repr(store)


# --------------------------------------------------------------------------- stage layout


def test_layout_key_helpers() -> None:
    assert shard_key("topics", 0) == "topics/shard-00000.jsonl"
    assert shard_key("mix", 12, "parquet") == "mix/shard-00012.parquet"
    assert completed_key("topics", 0) == "topics/_completed/00000"
    assert stats_key("topics", 7) == "topics/_stats/00007.json"
    with pytest.raises(ValueError):
        shard_key("topics", -1)


def test_stage_output_layout(store: ArtifactStore) -> None:
    out = StageOutput(store, "topics")
    assert out.write_rows(0, [{"topic": "Ọjà"}, {"topic": "Ilé-ìwé"}]) == 2
    out.write_stats(0, {"rows_out": 2, "dropped": {"too_long": 1}})
    assert not out.is_complete(0)
    out.mark_complete(0)
    assert store.list("topics/") == [
        "topics/_completed/00000",
        "topics/_stats/00000.json",
        "topics/shard-00000.jsonl",
    ]
    assert store.read_bytes("topics/_completed/00000") == b""
    assert out.is_complete(0)
    assert out.read_stats(0) == {"rows_out": 2, "dropped": {"too_long": 1}}
    assert out.read_stats(1) is None
    assert out.cache_prefix == "topics/_cache/"
    out.cache.write_json("ab/cd.json", {"answer": "bẹ́ẹ̀ni"})
    assert store.exists("topics/_cache/ab/cd.json")
    assert out.completed_shards() == {0}


def test_stage_output_all_rows_and_reset(store: ArtifactStore) -> None:
    out = StageOutput(store, "respond")
    out.write_rows(2, [{"i": 2}], fmt="parquet")
    out.mark_complete(2)
    out.write_rows(0, [{"i": 0}, {"i": 1}])
    out.write_stats(0, {"rows_out": 2})
    out.mark_complete(0)
    out.write_rows(1, [{"i": 99}])  # unfinished: no marker, so not part of the output
    out.write_stats(2, {"rows_out": 1})
    assert out.completed_shards() == {0, 2}
    assert list(out.iter_all_rows()) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert out.read_rows(2) == [{"i": 2}]
    assert out.all_stats() == {0: {"rows_out": 2}, 2: {"rows_out": 1}}

    out.write_rows(2, [{"i": 3}])  # a rerun switching format leaves one row file
    assert [k for k in store.list("respond/") if "shard-00002" in k] == [
        "respond/shard-00002.jsonl"
    ]
    out.reset_shard(0)
    assert not out.is_complete(0)
    assert out.read_stats(0) is None
    with pytest.raises(ArtifactNotFound):
        out.read_rows(0)
    assert out.completed_shards() == {2}
    with pytest.raises(ValueError):
        out.write_rows(3, [], fmt="csv")
