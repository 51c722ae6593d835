"""Artifact store: one interface over local folders (``file://``) and S3 (``s3://bucket/prefix``).

Every stage reads its inputs and writes its outputs through an :class:`ArtifactStore`.
Writes are atomic: a reader sees either the previous object or the complete new one, never
a partial one. Local files are written under a hidden temp name and renamed into place; S3
objects appear only when a single PUT or a multipart upload completes. A local write that
fails (a full disk: ``ENOSPC`` from a write, the flush, ``fsync`` or ``close``) raises
:class:`StoreError` naming the path and leaves no temp file behind.

S3 calls are bounded: botocore's connect and read timeouts and a capped number of
attempts (:data:`S3_CONNECT_TIMEOUT`, :data:`S3_READ_TIMEOUT`, :data:`S3_MAX_ATTEMPTS`), so
an endpoint that does not answer fails the call with a message naming the endpoint
instead of hanging. A run's store is opened with :func:`open_run_store`, which uses the
spec's ``storage.s3`` endpoint and region.

Stage outputs follow the layout in DESIGN.md ("Where things are stored")::

    <stage>/shard-00000.jsonl      rows (jsonl or parquet)
    <stage>/_completed/00000       completion marker, written last
    <stage>/_stats/00000.json      per-shard stats
    <stage>/_cache/                teacher request cache

:class:`StageOutput` wraps those keys for one stage.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import pyarrow
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    from kakugo_stages.resolved import RunSpec

__all__ = [
    "ArtifactNotFound",
    "ArtifactStore",
    "FileStore",
    "InvalidKeyError",
    "S3Store",
    "StageOutput",
    "StoreError",
    "StoreURIError",
    "completed_key",
    "open_run_store",
    "open_store",
    "shard_key",
    "stats_key",
]

log = logging.getLogger(__name__)

ACCEPTED_FORMS = (
    "'s3://bucket[/prefix]', 'file:///absolute/path', '/absolute/path' or 'relative/path'"
)

# Hidden temp names of in-progress local writes: ".<name>.tmp-<32 hex>".
_TEMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")
# S3 bucket naming rules (lowercase, digits, dots, hyphens; 3-63 chars; alnum at both ends).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

_MiB = 1024 * 1024
#: Rows per parquet row group when writing rows.
PARQUET_BATCH = 4096

#: Bounds of one S3 call, so that an endpoint that does not answer fails it in bounded
#: time: seconds to connect, seconds to wait for each read, and attempts in all (botocore's
#: adaptive retries in between, backing off up to 20 s). Worst case about
#: attempts x (read timeout + backoff): under 4 minutes. The timeouts can be set with
#: KAKUGO_S3_CONNECT_TIMEOUT / KAKUGO_S3_READ_TIMEOUT, the attempts with AWS_MAX_ATTEMPTS.
S3_CONNECT_TIMEOUT = 5.0
S3_READ_TIMEOUT = 30.0
S3_MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_ENV = "KAKUGO_S3_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "KAKUGO_S3_READ_TIMEOUT"


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """A store operation failed (I/O error, S3 error, unreachable endpoint)."""


class StoreURIError(StoreError, ValueError):
    """A storage URI is malformed or uses an unsupported scheme."""


class InvalidKeyError(StoreError, ValueError):
    """A key is not a clean relative '/'-separated path."""


class ArtifactNotFound(StoreError, KeyError):
    """The requested key does not exist; the message names its URI."""

    def __str__(self) -> str:
        # KeyError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- keys


def _is_temp_name(name: str) -> bool:
    return bool(_TEMP_RE.match(name))


def _check_key(key: str, *, prefix: bool = False) -> str:
    """Validate a key (or, with ``prefix=True``, a listing prefix) and return it."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"key must be a string, got {type(key).__name__}")
    if prefix and key == "":
        return key
    if not key or key.startswith("/") or "\\" in key or "\0" in key:
        raise InvalidKeyError(f"invalid key {key!r}: keys are relative '/'-separated paths")
    parts = key.split("/")
    if prefix and parts[-1] == "":
        parts = parts[:-1]  # "topics/" is a valid prefix
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKeyError(f"invalid key {key!r}: empty, '.' or '..' path segment")
    if _is_temp_name(parts[-1]):
        raise InvalidKeyError(f"invalid key {key!r}: reserved temp-file name")
    return key


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


# --------------------------------------------------------------------------- base


class ArtifactStore(ABC):
    """A tree of artifacts addressed by relative keys such as ``topics/shard-00000.jsonl``."""

    uri: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # ---- backend primitives

    @abstractmethod
    def child(self, *parts: str) -> ArtifactStore:
        """A store rooted at a sub-prefix of this one (same backend and client)."""

    @abstractmethod
    def url(self, key: str = "") -> str:
        """Full URI of ``key`` (of the store root when empty)."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Atomically write ``data`` to ``key``.

        ``durable=False`` skips the fsyncs of a local write (still atomic, but may be lost
        in a power cut): for caches, where a lost entry only costs recomputing it.
        """

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Read a whole object; raises :class:`ArtifactNotFound`."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> builtins.list[str]:
        """Sorted keys under ``prefix`` (string prefix, recursive), without temp files."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; a missing key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete everything under ``prefix`` (incl. leftovers of crashed writes); count objects."""

    @abstractmethod
    def open_write(
        self, key: str, *, durable: bool = True
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        """Streaming atomic write: the object appears only if the block exits cleanly.

        Do not close the yielded file yourself.
        """

    @abstractmethod
    def open_read(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Open an object for streaming reads; raises :class:`ArtifactNotFound`."""

    @abstractmethod
    def upload_file(self, src: Path, key: str) -> None:
        """Atomically copy a local file to ``key``."""

    @abstractmethod
    def download_file(self, key: str, dest: Path) -> Path:
        """Atomically copy ``key`` to the local path ``dest``; return ``dest``."""

    def local_path(self, key: str = "") -> Path | None:
        """The real local path of ``key`` for libraries that need one; None when remote."""
        return None

    # ---- text and JSON

    def write_text(self, key: str, text: str) -> None:
        """Atomically write UTF-8 text."""
        self.write_bytes(key, text.encode("utf-8"))

    def read_text(self, key: str) -> str:
        """Read UTF-8 text."""
        return self.read_bytes(key).decode("utf-8")

    def write_json(self, key: str, obj: Any) -> None:
        """Atomically write one JSON document (UTF-8, indented, non-ASCII kept)."""
        self.write_text(key, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")

    def read_json(self, key: str) -> Any:
        """Read one JSON document."""
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"{self.url(key)} is not valid JSON: {e}") from e

    # ---- rows

    def write_jsonl(self, key: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Atomically write rows as JSON lines; return the row count.

        If ``rows`` raises midway, nothing is written and an earlier object stays intact.
        """
        count = 0
        with self.open_write(key) as f:
            for row in rows:
                if not isinstance(row, Mapping):
                    raise TypeError(f"row {count} is {type(row).__name__}, not a mapping")
                obj = row if isinstance(row, dict) else dict(row)
                f.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())
                f.write(b"\n")
                count += 1
        return count

    def iter_jsonl(self, key: str) -> Iterator[dict[str, Any]]:
        """Stream rows of a JSON-lines object."""
        with self.open_read(key) as f:
            # Split on b"\n" only: U+2028 and friends may appear raw inside JSON strings.
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise StoreError(f"{self.url(key)} line {lineno}: invalid JSON: {e}") from e

    def read_jsonl(self, key: str) -> builtins.list[dict[str, Any]]:
        """Read all rows of a JSON-lines object."""
        return list(self.iter_jsonl(key))

    def write_parquet(self, key: str, rows: Iterable[Mapping[str, Any]] | pyarrow.Table) -> int:
        """Atomically write rows (or a pyarrow Table) as parquet; return the row count."""
        import pyarrow as pa

        if isinstance(rows, pa.Table):
            return self.write_parquet_tables(key, [rows])
        # Row groups of PARQUET_BATCH rows: memory stays bounded however many rows come.
        # The schema is the first batch's; later batches are converted to it.
        it = iter(rows)

        def tables() -> Iterator[pyarrow.Table]:
            schema = None
            while batch := [
                r if isinstance(r, dict) else dict(r) for r in itertools.islice(it, PARQUET_BATCH)
            ]:
                table = pa.Table.from_pylist(batch, schema=schema)
                schema = table.schema
                yield table

        return self.write_parquet_tables(key, tables())

    def write_parquet_tables(self, key: str, tables: Iterable[pyarrow.Table]) -> int:
        """Atomically write tables of one schema as row groups of one parquet object (an
        iterator keeps only one table in memory); return the row count."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        written, writer = 0, None
        with self.open_write(key) as f:
            try:
                for table in tables:
                    if writer is None:
                        writer = pq.ParquetWriter(f, table.schema)
                    writer.write_table(table)
                    written += table.num_rows
                if writer is None:  # no rows: an empty file with an empty schema
                    pq.write_table(pa.table({}), f)
            finally:
                if writer is not None:
                    writer.close()
        return written

    def read_parquet(self, key: str) -> builtins.list[dict[str, Any]]:
        """Read all rows of a parquet object."""
        return self.read_parquet_table(key).to_pylist()

    def read_parquet_table(self, key: str) -> pyarrow.Table:
        """Read a parquet object as a pyarrow Table."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Parquet needs random access; S3 bodies are forward-only, so buffer them.
        local = self.local_path(key)
        source: Any = str(local) if local is not None else pa.BufferReader(self.read_bytes(key))
        if local is not None and not local.is_file():
            raise ArtifactNotFound(f"no such artifact: {self.url(key)}")
        try:
            return pq.read_table(source)
        except pa.ArrowException as e:
            raise StoreError(f"{self.url(key)} is not valid parquet: {e}") from e

    # ---- folders

    def upload_dir(self, src: Path, prefix: str) -> int:
        """Copy every file under local folder ``src`` to ``prefix/...``; return the count.

        Each file is atomic on its own; callers mark completion with a shard marker.
        """
        src = Path(src)
        if not src.is_dir():
            raise StoreError(f"not a directory: {src}")
        _check_key(prefix, prefix=True)
        count = 0
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            self.upload_file(path, _join(prefix, path.relative_to(src).as_posix()))
            count += 1
        return count

    def download_dir(self, prefix: str, dest: Path) -> Path:
        """Copy every object under ``prefix/`` into local folder ``dest``; return ``dest``."""
        dest = Path(dest)
        prefix = _check_key(prefix, prefix=True).strip("/")
        base = prefix + "/" if prefix else ""
        keys = self.list(base)
        if not keys:
            raise ArtifactNotFound(f"no artifacts under {self.url(prefix)}")
        for key in keys:
            self.download_file(key, dest / key[len(base) :])
        return dest


# --------------------------------------------------------------------------- local files


def _fsync_dir(path: Path) -> None:
    # Make a rename durable; not every filesystem lets you open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Errors that say the device cannot take the data: full, over quota, too big, read-only.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _disk_full(e: OSError) -> bool:
    return e.errno in _DISK_FULL


def _write_error(path: Path, e: OSError) -> StoreError:
    """A write failure naming the local path and the error (``ENOSPC``: the disk is full)."""
    name = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    reason = e.strerror or str(e) or type(e).__name__
    hint = " (the disk is full)" if e.errno == errno.ENOSPC else ""
    return StoreError(f"cannot write {path}: {reason}{f' [{name}]' if name else ''}{hint}")


def _discard(f: BinaryIO | None, tmp: Path) -> None:
    """Drop a failed write's temp file. Closing may fail again (the buffered data of a
    failed flush is flushed again, onto the same full disk); the descriptor is closed
    anyway, and the temp file must go whatever closing says."""
    if f is not None:
        with contextlib.suppress(OSError):
            f.close()
    with contextlib.suppress(OSError):
        tmp.unlink()


class FileStore(ArtifactStore):
    """Artifacts in a local (or mounted, e.g. PVC) folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.uri = self.root.as_uri()

    def _path(self, key: str, *, prefix: bool = False) -> Path:
        key = _check_key(key, prefix=prefix)
        return self.root.joinpath(*[p for p in key.split("/") if p])

    @contextlib.contextmanager
    def _errors(self, key: str, *, reading: bool = True) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            if not reading:
                raise StoreError(f"cannot write {self.url(key)}: {e.strerror or e}") from e
            raise ArtifactNotFound(f"no such artifact: {self.url(key)}") from e
        except OSError as e:
            raise StoreError(f"{self.url(key)}: {e.strerror or e}") from e

    def child(self, *parts: str) -> FileStore:
        rel = _check_key(_join(*parts))
        return FileStore(self._path(rel))

    def url(self, key: str = "") -> str:
        return self._path(key, prefix=True).as_uri() if key else self.uri

    def local_path(self, key: str = "") -> Path:
        return self._path(key, prefix=True)

    def write_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        with self.open_write(key, durable=durable) as f:
            f.write(data)

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors(key):
            return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _walk(self, prefix: str, *, temps: bool) -> Iterator[tuple[str, Path]]:
        # Start at the deepest directory named by the prefix; filter the rest as a string.
        _check_key(prefix, prefix=True)
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(head, prefix=True)
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            base = Path(dirpath)
            for name in filenames:
                if _is_temp_name(name) and not temps:
                    continue
                key = (base / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key, base / name

    def list(self, prefix: str = "") -> builtins.list[str]:
        return sorted(key for key, _ in self._walk(prefix, temps=False))

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._errors(key, reading=False), contextlib.suppress(FileNotFoundError):
            path.unlink()

    def delete_prefix(self, prefix: str) -> int:
        count = 0
        dirs: set[Path] = set()
        for key, path in list(self._walk(prefix, temps=True)):
            with self._errors(key, reading=False), contextlib.suppress(FileNotFoundError):
                path.unlink()
                count += not _is_temp_name(path.name)
            dirs.update(p for p in path.parents if p != self.root and self.root in p.parents)
        # Drop folders left empty, deepest first; the store root itself stays.
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        return count

    @contextlib.contextmanager
    def open_write(self, key: str, *, durable: bool = True) -> Iterator[BinaryIO]:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Not mkstemp: its 0600 mode would hide artifacts from other users of a shared PVC.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise _write_error(path, e) from e
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            _discard(None, tmp)
            raise
        try:
            yield f
        except BaseException as e:
            _discard(f, tmp)
            # A full disk seen by the caller's writes (or pyarrow's) names the path too.
            if isinstance(e, OSError) and not isinstance(e, StoreError) and _disk_full(e):
                raise _write_error(path, e) from e
            raise
        try:
            f.flush()
            if durable:
                os.fsync(f.fileno())
            f.close()
            os.replace(tmp, path)
        except BaseException as e:
            _discard(f, tmp)
            if isinstance(e, OSError):
                raise _write_error(path, e) from e
            raise
        if durable:
            _fsync_dir(path.parent)

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        with self._errors(key):
            f = path.open("rb")
        with f:
            yield f

    def upload_file(self, src: Path, key: str) -> None:
        with Path(src).open("rb") as fin, self.open_write(key) as fout:
            shutil.copyfileobj(fin, fout, _MiB)

    def download_file(self, key: str, dest: Path) -> Path:
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}")
        try:
            with self.open_read(key) as fin:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tmp.open("wb") as fout:
                    shutil.copyfileobj(fin, fout, _MiB)
            os.replace(tmp, dest)
        except BaseException as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(e, OSError) and not isinstance(e, StoreError) and _disk_full(e):
                raise _write_error(dest, e) from e
            raise
        return dest


# --------------------------------------------------------------------------- S3


def _default_transfer_config() -> TransferConfig:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 * _MiB, multipart_chunksize=64 * _MiB)


class S3Store(ArtifactStore):
    """Artifacts under ``s3://bucket/prefix`` (AWS S3, MinIO, Ceph RGW, ...)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        transfer_config: TransferConfig | None = None,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.transfer_config = transfer_config or _default_transfer_config()
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @property
    def client(self) -> Any:
        """The shared boto3 S3 client."""
        return self._client

    def _key(self, key: str, *, prefix: bool = False) -> str:
        key = _check_key(key, prefix=prefix)
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else f"{self.prefix}/"

    @contextlib.contextmanager
    def _errors(self, key: str = "") -> Iterator[None]:
        """Translate botocore errors at the boundary; messages carry URIs, never secrets."""
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ArtifactNotFound(f"no such artifact: {self.url(key)}") from e
            detail = err.get("Message") or code or "error"
            raise StoreError(
                f"S3 {e.operation_name} failed for {self.url(key)}: {code} "
                f"(HTTP {status}): {detail}"
            ) from e
        except (BotoCoreError, S3UploadFailedError, S3TransferFailedError) as e:
            if _unanswered(e):
                raise StoreError(self._unanswered_message(key, e)) from e
            raise StoreError(f"S3 request failed for {self.url(key)}: {e}") from e

    def _unanswered_message(self, key: str, e: BaseException) -> str:
        meta = self._client.meta
        config = meta.config
        attempts = (config.retries or {}).get("total_max_attempts")
        tried = f"{attempts} attempt(s), " if attempts else ""
        return (
            f"S3 endpoint {meta.endpoint_url} did not answer for {self.url(key)}: {e} (gave up "
            f"after {tried}connect timeout {config.connect_timeout:g}s, read timeout "
            f"{config.read_timeout:g}s). Check storage.s3.endpointUrl (or "
            "AWS_ENDPOINT_URL_S3) and that the endpoint is up and reachable from here."
        )

    def child(self, *parts: str) -> S3Store:
        rel = _check_key(_join(*parts))
        return S3Store(
            self._client, self.bucket, _join(self.prefix, rel), transfer_config=self.transfer_config
        )

    def url(self, key: str = "") -> str:
        if not key:
            return self.uri
        return f"s3://{self.bucket}/{self._key(key, prefix=True)}"

    def write_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        # S3 objects are durable once the PUT returns; there is nothing to skip.
        full = self._key(key)
        if len(data) >= self.transfer_config.multipart_threshold:
            with self._errors(key):
                self._upload(io.BytesIO(data), full)
            return
        with self._errors(key):
            # A single PUT is atomic: readers see the old object or the whole new one.
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data)

    def _upload(self, fileobj: BinaryIO, full_key: str) -> None:
        # s3transfer aborts a failed multipart upload, so no partial object ever appears.
        self._client.upload_fileobj(fileobj, self.bucket, full_key, Config=self.transfer_config)

    def read_bytes(self, key: str) -> bytes:
        full = self._key(key)
        with self._errors(key):
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
            with contextlib.closing(body):
                return body.read()

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self.bucket, Key=full)
        except ArtifactNotFound:
            return False
        return True

    def _iter_objects(self, full_prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for obj in page.get("Contents", ()):
                yield obj["Key"]

    def list(self, prefix: str = "") -> builtins.list[str]:
        full = self._key(prefix, prefix=True)
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors(prefix):
            keys = [
                k[strip:]
                for k in self._iter_objects(full)
                # Skip console-made "folder/" placeholders and any stray temp names.
                if not k.endswith("/") and not _is_temp_name(k.rsplit("/", 1)[-1])
            ]
        return sorted(keys)

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        full = self._key(prefix, prefix=True)
        count = 0
        with self._errors(prefix):
            batch: list[str] = []
            for k in self._iter_objects(full):
                batch.append(k)
                if len(batch) == 1000:  # the DeleteObjects limit
                    count += self._delete_batch(batch, prefix)
                    batch = []
            if batch:
                count += self._delete_batch(batch, prefix)
        self._abort_uploads(full)
        return count

    def _delete_batch(self, keys: builtins.list[str], prefix: str) -> int:
        resp = self._client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise StoreError(
                f"could not delete {len(errors)} objects under {self.url(prefix)}, e.g. "
                f"s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )
        return len(keys)

    def _abort_uploads(self, full_prefix: str) -> None:
        # Multipart uploads orphaned by killed writers are invisible but billed; best effort,
        # since some S3-compatible servers lack or forbid ListMultipartUploads.
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for up in page.get("Uploads", ()):
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
        except (BotoCoreError, ClientError) as e:
            log.debug("could not abort multipart uploads under %s: %s", full_prefix, e)

    @contextlib.contextmanager
    def open_write(self, key: str, *, durable: bool = True) -> Iterator[BinaryIO]:
        full = self._key(key)
        # Spool to memory, then disk; nothing reaches S3 until the block exits cleanly.
        with tempfile.SpooledTemporaryFile(max_size=8 * _MiB) as spool:
            try:
                yield spool  # type: ignore[misc]
            except OSError as e:
                if isinstance(e, StoreError) or not _disk_full(e):
                    raise
                raise StoreError(
                    f"cannot write {self.url(key)}: its local spool file in "
                    f"{tempfile.gettempdir()} failed: {e.strerror or e}"
                ) from e
            spool.seek(0)
            with self._errors(key):
                self._upload(spool, full)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        full = self._key(key)
        with self._errors(key):
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
        # BufferedReader gives fast line iteration over the forward-only body.
        with io.BufferedReader(body, buffer_size=_MiB) as f, self._errors(key):
            yield f

    def upload_file(self, src: Path, key: str) -> None:
        full = self._key(key)
        with self._errors(key):
            self._client.upload_file(str(src), self.bucket, full, Config=self.transfer_config)

    def download_file(self, key: str, dest: Path) -> Path:
        full = self._key(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(key):
            # s3transfer writes to a temp name beside dest and renames it on success.
            self._client.download_file(self.bucket, full, str(dest), Config=self.transfer_config)
        return dest


def _unanswered(e: BaseException) -> bool:
    """Whether a botocore failure (or the cause of a transfer failure) is the endpoint not
    answering: no connection, a timeout, a connection dropped mid-answer."""
    from botocore.exceptions import ConnectionError, HTTPClientError

    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionError | HTTPClientError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _seconds_from_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise StoreError(f"{name}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise StoreError(f"{name}={value!r} must be positive")
    return seconds


def _client_config(endpoint_url: str | None, override: Config | None) -> Config:
    from botocore.config import Config

    # Retry transient errors inside botocore, a capped number of times, with timeouts:
    # an endpoint that does not answer fails each call in bounded time (S3_* above).
    # AWS_MAX_ATTEMPTS / AWS_RETRY_MODE still win.
    retries: dict[str, Any] = {}
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        retries["total_max_attempts"] = S3_MAX_ATTEMPTS
    if "AWS_RETRY_MODE" not in os.environ:
        retries["mode"] = "adaptive"
    kwargs: dict[str, Any] = {
        "retries": retries,
        "connect_timeout": _seconds_from_env(CONNECT_TIMEOUT_ENV, S3_CONNECT_TIMEOUT),
        "read_timeout": _seconds_from_env(READ_TIMEOUT_ENV, S3_READ_TIMEOUT),
    }
    if endpoint_url:
        # MinIO and Ceph usually serve path-style URLs only, and many reject the default
        # CRC checksums that botocore >= 1.36 sends on every upload.
        kwargs["s3"] = {"addressing_style": "path"}
        if "AWS_REQUEST_CHECKSUM_CALCULATION" not in os.environ:
            kwargs["request_checksum_calculation"] = "when_required"
        if "AWS_RESPONSE_CHECKSUM_VALIDATION" not in os.environ:
            kwargs["response_checksum_validation"] = "when_required"
    config = Config(**kwargs)
    return config.merge(override) if override is not None else config


_loader: Any = None


def _botocore_session() -> Any:
    """A fresh botocore session sharing one model loader (client creation is 6x faster)."""
    import botocore.loaders
    import botocore.session

    global _loader
    if _loader is None:
        _loader = botocore.loaders.create_loader()
    # Fresh per client so credentials are read from the environment each time.
    session = botocore.session.get_session()
    session.register_component("data_loader", _loader)
    return session


def _s3_client(endpoint_url: str | None, region: str | None, client_config: Config | None) -> Any:
    import boto3

    endpoint_url = (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    if region is None and endpoint_url:
        region = "us-east-1"  # any region signs requests for MinIO/Ceph
    # A private session: the default one is not thread-safe to create clients from.
    session = boto3.session.Session(botocore_session=_botocore_session())
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=_client_config(endpoint_url, client_config),
    )


# --------------------------------------------------------------------------- open_store


def _uri_error(uri: str, problem: str) -> StoreURIError:
    return StoreURIError(f"bad storage URI {uri!r}: {problem}; accepted forms: {ACCEPTED_FORMS}")


def open_store(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    client_config: Config | None = None,
    transfer_config: TransferConfig | None = None,
) -> ArtifactStore:
    """Open the store at ``uri``: ``s3://bucket/prefix`` or a local path / ``file://`` URI.

    For S3, ``endpoint_url`` defaults to ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``
    (for MinIO/Ceph) and credentials come from boto3's default chain (environment variables,
    shared files, instance/pod identity). ``client_config`` is merged over the defaults
    (10 adaptive retries); ``transfer_config`` tunes multipart uploads.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise _uri_error(str(uri), "empty")
    if "://" not in uri and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        return FileStore(Path(uri))
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise _uri_error(uri, f"file URIs cannot name a host ({parts.netloc!r})")
        if parts.query or parts.fragment:
            raise _uri_error(uri, "query strings and fragments are not allowed")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise _uri_error(uri, "file URIs need an absolute path (file:///abs/path)")
        return FileStore(Path(path))
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise _uri_error(uri, "missing bucket name")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise _uri_error(
                uri,
                f"invalid bucket name {bucket!r} (3-63 lowercase letters, digits, '.' or '-')",
            )
        if parts.query or parts.fragment:
            raise _uri_error(uri, "query strings and fragments are not allowed")
        prefix = parts.path.strip("/")
        if prefix:
            try:
                _check_key(prefix)
            except InvalidKeyError as e:
                raise _uri_error(uri, f"invalid prefix {prefix!r}") from e
        return S3Store(
            _s3_client(endpoint_url, region, client_config),
            bucket,
            prefix,
            transfer_config=transfer_config,
        )
    raise _uri_error(uri, f"unsupported scheme {parts.scheme!r}")


def open_run_store(run: RunSpec, **kwargs: Any) -> ArtifactStore:
    """The store of a run (``run.run_uri``) with the spec's ``storage.s3`` endpoint and
    region, so a stage talks to the storage its spec names wherever it runs: in a Job (where
    the operator also exports them as ``AWS_ENDPOINT_URL_S3``/``AWS_DEFAULT_REGION``), in
    ``kakugo stage`` and in ``kakugo run``. The spec's values win over the environment's.
    ``kwargs`` go to :func:`open_store`."""
    storage = run.spec.storage
    s3 = storage.s3 if storage is not None else None
    if s3 is not None:
        kwargs.setdefault("endpoint_url", s3.endpoint_url)
        kwargs.setdefault("region", s3.region)
    return open_store(run.run_uri, **kwargs)


# --------------------------------------------------------------------------- stage layout


def _check_shard(shard: int) -> int:
    if isinstance(shard, bool) or not isinstance(shard, int) or shard < 0:
        raise ValueError(f"shard must be a non-negative int, got {shard!r}")
    return shard


def shard_key(stage: str, shard: int, ext: str = "jsonl") -> str:
    """Rows key of one shard, e.g. ``topics/shard-00000.jsonl``."""
    return f"{stage}/shard-{_check_shard(shard):05d}.{ext}"


def completed_key(stage: str, shard: int) -> str:
    """Completion-marker key of one shard, e.g. ``topics/_completed/00000``."""
    return f"{stage}/_completed/{_check_shard(shard):05d}"


def stats_key(stage: str, shard: int) -> str:
    """Stats key of one shard, e.g. ``topics/_stats/00000.json``."""
    return f"{stage}/_stats/{_check_shard(shard):05d}.json"


_ROW_FORMATS = ("jsonl", "parquet")


class StageOutput:
    """The sharded outputs of one stage: rows, completion markers, stats and cache."""

    def __init__(self, store: ArtifactStore, stage: str) -> None:
        _check_key(stage)
        self.store = store
        self.stage = stage.strip("/")

    def __repr__(self) -> str:
        return f"StageOutput({self.store.url(self.stage)!r})"

    @property
    def cache_prefix(self) -> str:
        """Prefix of the teacher request cache, ``<stage>/_cache/``."""
        return f"{self.stage}/_cache/"

    @property
    def cache(self) -> ArtifactStore:
        """A store rooted at the request cache."""
        return self.store.child(self.stage, "_cache")

    def shard_key(self, shard: int, ext: str = "jsonl") -> str:
        return shard_key(self.stage, shard, ext)

    def is_complete(self, shard: int) -> bool:
        return self.store.exists(completed_key(self.stage, shard))

    def completed_shards(self) -> set[int]:
        prefix = f"{self.stage}/_completed/"
        return {
            int(name) for key in self.store.list(prefix) if (name := key[len(prefix) :]).isdigit()
        }

    def mark_complete(self, shard: int) -> None:
        """Write the empty completion marker; call it after rows and stats are written."""
        self.store.write_bytes(completed_key(self.stage, shard), b"")

    def write_stats(self, shard: int, stats: Mapping[str, Any]) -> None:
        self.store.write_json(stats_key(self.stage, shard), dict(stats))

    def read_stats(self, shard: int) -> dict[str, Any] | None:
        try:
            return self.store.read_json(stats_key(self.stage, shard))
        except ArtifactNotFound:
            return None

    def all_stats(self) -> dict[int, dict[str, Any]]:
        prefix = f"{self.stage}/_stats/"
        out: dict[int, dict[str, Any]] = {}
        for key in self.store.list(prefix):
            name = key[len(prefix) :]
            if name.endswith(".json") and name[:-5].isdigit():
                out[int(name[:-5])] = self.store.read_json(key)
        return out

    def write_rows(
        self, shard: int, rows: Iterable[Mapping[str, Any]], *, fmt: str = "jsonl"
    ) -> int:
        """Atomically write a shard's rows as ``jsonl`` or ``parquet``; return the count."""
        if fmt not in _ROW_FORMATS:
            raise ValueError(f"fmt must be one of {_ROW_FORMATS}, got {fmt!r}")
        key = self.shard_key(shard, fmt)
        n = (
            self.store.write_jsonl(key, rows)
            if fmt == "jsonl"
            else self.store.write_parquet(key, rows)
        )
        # A rerun may switch formats; never leave two candidate row files for one shard.
        for other in _ROW_FORMATS:
            if other != fmt:
                self.store.delete(self.shard_key(shard, other))
        return n

    def _rows_key(self, shard: int) -> tuple[str, str]:
        for fmt in _ROW_FORMATS:
            key = self.shard_key(shard, fmt)
            if self.store.exists(key):
                return key, fmt
        where = self.store.url(self.shard_key(shard))
        raise ArtifactNotFound(f"no rows for shard {shard} at {where} (jsonl or parquet)")

    def iter_rows(self, shard: int) -> Iterator[dict[str, Any]]:
        key, fmt = self._rows_key(shard)
        if fmt == "jsonl":
            yield from self.store.iter_jsonl(key)
        else:
            yield from self.store.read_parquet(key)

    def read_rows(self, shard: int) -> list[dict[str, Any]]:
        return list(self.iter_rows(shard))

    def iter_all_rows(self) -> Iterator[dict[str, Any]]:
        """Rows of all completed shards, in shard order."""
        for shard in sorted(self.completed_shards()):
            yield from self.iter_rows(shard)

    def reset_shard(self, shard: int) -> None:
        """Forget a shard's outputs; the marker goes first so a crash never leaves it alone."""
        self.store.delete(completed_key(self.stage, shard))
        for fmt in _ROW_FORMATS:
            self.store.delete(self.shard_key(shard, fmt))
        self.store.delete(stats_key(self.stage, shard))
