"""Publish a run to the Hugging Face Hub: the dataset and the model, one commit each.

For each repository the files are gathered locally first (the run's `dataset/` or
`model/`, downloaded when the store is S3), then sent with one `create_commit`:

- huggingface_hub asks the Hub's `preupload` endpoint for each file's upload mode and the
  oid the file has on the branch now; files whose content is already there are dropped from
  the commit, and LFS objects the Hub already stores are not sent again (the LFS batch
  answer has no upload action for them). Publishing the same run twice uploads nothing and
  makes no commit.
- The commit is made only after every LFS upload succeeded, and it is one commit, so a
  failure halfway leaves the branch as it was: a retry uploads what is missing and commits.
- Each commit carries `kakugo.json`: the run, the fingerprint of what made the files (the
  stage graph's fingerprint of `filter` for the dataset, of `evaluate` for the model and its
  card: every spec path they depend on, and not `publish` itself) and the sha256 of every
  file of the commit, so a repository says what complete upload it holds.

Errors of huggingface_hub and of the network are wrapped in `PublishError`, whose message
names the manifest field to fix.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kakugo_stages.graph import fingerprints
from kakugo_stages.publish.model_index import CardError, model_index, split_card, with_metadata
from kakugo_stages.resolved import RunSpec
from kakugo_stages.spec import HubPublishSpec
from kakugo_stages.store import ArtifactNotFound, ArtifactStore, StoreError

RepoKind = Literal["dataset", "model"]
DATASET: RepoKind = "dataset"
MODEL: RepoKind = "model"
RESULTS = "evaluation/results.json"
MARKER = "kakugo.json"
PUBLISHED = "publish/published.json"
#: Files of model/ that are not part of the model (the trainer's leftovers, if any).
_SKIPPED_NAMES = ("training_args.bin", "trainer_state.json")


class PublishError(RuntimeError):
    """Publishing failed; the message says which field or setting to fix."""


@dataclass(frozen=True)
class RepoResult:
    kind: RepoKind
    repo_id: str
    revision: str
    url: str
    commit: str
    committed: bool  # False: everything was there already
    files: dict[str, str]  # path in repo -> sha256

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "url": self.url,
            "commit": self.commit,
            "committed": self.committed,
            "files": self.files,
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _local_folder(store: ArtifactStore, prefix: str) -> Iterator[Path]:
    """The run's folder `prefix` on local disk (downloaded from S3 into a temp folder)."""
    local = store.local_path(prefix)
    if local is not None:
        if not local.is_dir():
            raise PublishError(f"nothing to publish: {store.url(prefix)} does not exist")
        yield local
        return
    with tempfile.TemporaryDirectory(prefix=f"kakugo-publish-{prefix}-") as tmp:
        try:
            folder = store.download_dir(prefix, Path(tmp) / prefix)
        except StoreError as exc:
            raise PublishError(f"cannot read {store.url(prefix)}: {exc}") from exc
        yield folder


def _files(folder: Path) -> dict[str, Path]:
    """Path in repo -> local file, for every file under `folder` (sorted, hidden skipped)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(p.startswith((".", "_")) for p in rel.split("/")):
            continue
        if path.name in _SKIPPED_NAMES:
            continue
        out[rel] = path
    return out


#: The stage whose graph fingerprint identifies what a repository holds.
_MADE_BY: dict[RepoKind, str] = {"dataset": "filter", "model": "evaluate"}


def made_by(run: RunSpec, kind: RepoKind) -> str:
    """The fingerprint of the stage that made a repository's files (see the docstring)."""
    return fingerprints(run.spec_dict())[_MADE_BY[kind]]


def _marker(run: RunSpec, kind: RepoKind, files: dict[str, str]) -> bytes:
    """kakugo.json: deterministic (no times), so an unchanged run commits nothing new."""
    body = {
        "kakugo": kind,
        "run": f"{run.namespace}/{run.name}",
        "language": run.language.code,
        "made_by": {"stage": _MADE_BY[kind], "fingerprint": made_by(run, kind)},
        "files": dict(sorted(files.items())),
    }
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()


def _model_card(run: RunSpec, store: ArtifactStore, card: str, hub: HubPublishSpec) -> str:
    """model/README.md with the evaluation as model-index and the dataset's Hub id."""
    try:
        results = store.read_json(RESULTS)
    except ArtifactNotFound:
        results = None
    name = (hub.model_repo or run.name).split("/")[-1]
    fields: dict[str, Any] = {}
    if results is not None:
        fields["model-index"] = model_index(name, results, run.spec.evaluation, run.language)
    try:
        meta = split_card(card)[0]
        if hub.dataset_repo is not None:
            fields["datasets"] = [hub.dataset_repo]
        else:
            # The trainer names the mix by its storage URI: a path or s3:// URI means
            # nothing on the Hub (and a local path says where the run lived).
            fields["datasets"] = [d for d in meta.get("datasets") or [] if _hub_id(d)] or None
        if meta.get("base_model") is not None and not _hub_id(str(meta["base_model"])):
            # A student read from a folder or a bucket: the Hub refuses a base_model that
            # is not one of its repositories.
            fields["base_model"] = None
        return with_metadata(card, **fields)
    except CardError as exc:
        raise PublishError(f"{store.url(MODEL + '/README.md')}: {exc}") from exc


def _hub_id(name: str) -> bool:
    """Whether a card's reference names a Hub repository (not a path or a URI)."""
    return "://" not in name and not name.startswith(("/", "~", "."))


def _wrap(exc: Exception, field: str, repo_id: str) -> PublishError:
    """A clear message for what huggingface_hub or the network raised."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return PublishError(
            "publishing needs the Hub, but HF_HUB_OFFLINE is set: unset it for `kakugo "
            "publish` (or the publish stage)"
        )
    status = None
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
    if isinstance(exc, RepositoryNotFoundError) or status in (401, 403):
        return PublishError(
            f"{field}: the Hub refused access to {repo_id} (HTTP {status}): check that the token "
            "(HF_TOKEN, --token-file, or publish.huggingFace.tokenSecretRef) may write to it"
        )
    return PublishError(f"{field}: publishing to {repo_id} failed: {type(exc).__name__}: {exc}")


def _commit_repo(
    api: Any,
    run: RunSpec,
    hub: HubPublishSpec,
    kind: RepoKind,
    repo_id: str,
    files: dict[str, Path | bytes],
) -> RepoResult:
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import RevisionNotFoundError

    field = f"publish.huggingFace.{kind}Repo"
    digests = {
        path: hashlib.sha256(src).hexdigest() if isinstance(src, bytes) else _sha256(src)
        for path, src in files.items()
    }
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=src)
        for path, src in sorted(files.items())
    ]
    operations.append(
        CommitOperationAdd(path_in_repo=MARKER, path_or_fileobj=_marker(run, kind, digests))
    )
    title = hub.commit_message or (
        f"Kakugo {run.name}: {run.language.name} {kind} ({_MADE_BY[kind]} {made_by(run, kind)})"
    )
    description = (
        f"Complete {kind} of Kakugo run {run.namespace}/{run.name}: {len(files)} files, "
        f"listed with their sha256 in {MARKER}."
    )
    try:
        url = api.create_repo(repo_id, repo_type=kind, private=hub.private, exist_ok=True)
        before = None
        if hub.revision != "main":
            api.create_branch(repo_id, repo_type=kind, branch=hub.revision, exist_ok=True)
        try:
            before = api.repo_info(repo_id, repo_type=kind, revision=hub.revision).sha
        except RevisionNotFoundError:
            before = None
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=title,
            commit_description=description,
            repo_type=kind,
            revision=hub.revision,
        )
    except Exception as exc:  # huggingface_hub and httpx raise many types: one message
        raise _wrap(exc, field, repo_id) from exc
    return RepoResult(
        kind=kind,
        repo_id=repo_id,
        revision=hub.revision,
        url=str(url),
        commit=info.oid,
        committed=info.oid != before,
        files={**digests, MARKER: hashlib.sha256(_marker(run, kind, digests)).hexdigest()},
    )


def publish_run(
    run: RunSpec,
    store: ArtifactStore,
    *,
    token: str | None,
    endpoint: str | None = None,
) -> dict[str, Any]:
    """Publish what `spec.publish.huggingFace` names; write and return publish/published.json.
    `endpoint` overrides the spec's (tests: a local server)."""
    if run.spec.publish is None:
        raise PublishError(
            "spec.publish is not set: name publish.huggingFace.datasetRepo and/or modelRepo"
        )
    hub = run.spec.publish.hugging_face
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint or hub.endpoint, token=token)
    repos: dict[str, dict[str, Any]] = {}
    if hub.dataset_repo is not None:
        with _local_folder(store, DATASET) as folder:
            files: dict[str, Path | bytes] = dict(_files(folder))
            if not any(p.endswith(".parquet") for p in files):
                raise PublishError(
                    f"no parquet split under {store.url(DATASET)}: run the filter stage first"
                )
            repos[DATASET] = _commit_repo(api, run, hub, DATASET, hub.dataset_repo, files).as_dict()
    if hub.model_repo is not None:
        with _local_folder(store, MODEL) as folder:
            files = dict(_files(folder))
            if not any(p.endswith(".safetensors") for p in files):
                raise PublishError(
                    f"no safetensors weights under {store.url(MODEL)}: run the train stage first"
                )
            card = (
                (folder / "README.md").read_text(encoding="utf-8") if "README.md" in files else ""
            )
            files["README.md"] = _model_card(run, store, card, hub).encode()
            repos[MODEL] = _commit_repo(api, run, hub, MODEL, hub.model_repo, files).as_dict()
    published = {"endpoint": api.endpoint, "repos": repos}
    store.write_json(PUBLISHED, published)
    return published
