"""Publishing to the Hugging Face Hub, against a local Hub (tests/helpers/hub_server.py)
through the real huggingface_hub client: what arrives byte for byte, one commit per repo,
nothing uploaded twice, a failure halfway leaves no commit, the card's model-index."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kakugo_stages.cli import main
from kakugo_stages.publish.hub import MARKER, PublishError, made_by, publish_run
from kakugo_stages.publish.model_index import split_card
from kakugo_stages.stages import get_stage, run_stage
from kakugo_stages.store import open_store
from tests.helpers.finished_run import RESULTS, build_models, finish_run, make_run
from tests.helpers.hub_server import HubServer

DATASET_REPO = "kakugo-tests/yoruba-mix"
MODEL_REPO = "kakugo-tests/yoruba-granite"
TOKEN = "hf_kakugo_test_token"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants as constants

    # The suite is offline for loading; this client talks to loopback only, by endpoint.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # hf_xet is installed, and huggingface_hub then uploads through Xet whatever the server
    # says; the local Hub speaks plain LFS (as HF_HUB_DISABLE_XET=1 would choose).
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubServer() as server:
        yield server


def _run(tmp_path: Path, models, hub: HubServer, **hf):
    tok, base, tuned = models
    publish = {
        "huggingFace": {
            "datasetRepo": DATASET_REPO,
            "modelRepo": MODEL_REPO,
            "endpoint": hub.url,
            **hf,
        }
    }
    run = make_run(tmp_path / "runs", tok, base, publish=publish)
    finish_run(run, tuned)
    return run, open_store(run.run_uri)


def _local_files(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and not p.relative_to(folder).as_posix().startswith("_")
    }


def _api_auth(hub: HubServer) -> set[str | None]:
    """The Authorization headers of the API and LFS batch calls (uploads go to the URLs
    the batch answer gave, which carry no token, as presigned storage URLs do)."""
    return {auth for path, auth in hub.tokens if not path.startswith(("/lfs/", "/lfs-verify/"))}


def _sha(tree: dict[str, bytes]) -> dict[str, str]:
    return {p: hashlib.sha256(c).hexdigest() for p, c in tree.items()}


def test_publish_sends_every_file_byte_for_byte_in_one_commit_per_repo(
    tmp_path: Path, models, hub: HubServer
) -> None:
    run, store = _run(tmp_path, models, hub, private=True)
    out = publish_run(run, store, token=TOKEN)

    # Dataset: every file of dataset/ as it is on disk, and the marker.
    dataset = hub.tree("dataset", DATASET_REPO)
    local = _local_files(store.local_path("dataset"))
    assert {
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
        "README.md",
    } <= set(local)
    assert {p: h for p, h in _sha(dataset).items() if p in local} == local
    assert set(dataset) == {*local, MARKER, ".gitattributes"}
    # Model: weights, tokenizer, chat template byte for byte; the card gains model-index.
    model = hub.tree("model", MODEL_REPO)
    local = _local_files(store.local_path("model"))
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "chat_template.jinja",
    ):
        assert _sha(model)[name] == local[name], name
    assert set(model) == {*local, MARKER, ".gitattributes"}

    # One commit per repository on top of the repo's initial one, private as asked.
    assert hub.commits("dataset", DATASET_REPO)[0].title == "initial commit"
    assert len(hub.commits("dataset", DATASET_REPO)) == 2
    assert len(hub.commits("model", MODEL_REPO)) == 2
    assert hub.repo("model", MODEL_REPO).private and hub.repo("dataset", DATASET_REPO).private
    # The large and binary files went through LFS (batch, PUT, verify), the rest inline.
    payload = hub.commit_payloads[-1]
    lfs = {i["value"]["path"] for i in payload if i["key"] == "lfsFile"}
    inline = {i["value"]["path"] for i in payload if i["key"] == "file"}
    assert "model.safetensors" in lfs and "tokenizer.json" in lfs
    assert {"README.md", "config.json", MARKER} <= inline
    assert hub.unknown == [], hub.unknown  # nothing outside the implemented API (no Xet)
    assert any(path.endswith(".git/info/lfs/objects/batch") for _, path in hub.requests)
    assert _api_auth(hub) == {f"Bearer {TOKEN}"}

    # The marker lists what the commit holds; published.json says where it went.
    marker = json.loads(model[MARKER])
    assert marker["files"]["model.safetensors"] == local["model.safetensors"]
    assert marker["made_by"] == {"stage": "evaluate", "fingerprint": made_by(run, "model")}
    assert store.read_json("publish/published.json") == json.loads(json.dumps(out))
    assert out["repos"]["model"]["committed"] and out["repos"]["dataset"]["committed"]


def test_the_model_card_carries_the_evaluation_as_model_index(
    tmp_path: Path, models, hub: HubServer
) -> None:
    run, store = _run(tmp_path, models, hub)
    publish_run(run, store, token=TOKEN)
    meta, body = split_card(hub.tree("model", MODEL_REPO)["README.md"].decode())
    assert meta["datasets"] == [DATASET_REPO]
    assert meta["base_model"] == "tiny-base"  # the rest of the metadata is kept
    (index,) = meta["model-index"]
    assert index["name"] == "yoruba-granite"
    by_dataset = {r["dataset"]["type"]: r for r in index["results"]}
    assert set(by_dataset) == {"openlanguagedata/flores_plus", "facebook/belebele", "Davlan/sib200"}
    belebele = by_dataset["facebook/belebele"]
    assert belebele["dataset"] == {
        "name": "Belebele",
        "type": "facebook/belebele",
        "config": "yor_Latn",
        "split": "test",
    }
    assert belebele["metrics"][0]["type"] == "accuracy"
    assert belebele["metrics"][0]["value"] == RESULTS["tasks"]["belebele"]["tuned"]
    flores = by_dataset["openlanguagedata/flores_plus"]
    assert flores["task"]["type"] == "translation" and flores["metrics"][0]["type"] == "chrf"
    assert flores["dataset"]["split"] == "devtest" and flores["metrics"][0]["value"] == 31.25
    assert "# tiny-yoruba" in body  # the Markdown is untouched
    yaml.safe_load(yaml.safe_dump(meta))  # plain YAML, as the Hub's validator reads it


def test_publishing_again_uploads_nothing_and_makes_no_commit(
    tmp_path: Path, models, hub: HubServer
) -> None:
    run, store = _run(tmp_path, models, hub)
    first = publish_run(run, store, token=TOKEN)
    puts, commits = len(hub.lfs_puts), len(hub.commit_payloads)
    assert puts >= 3  # safetensors, tokenizer.json, two parquet splits at least
    second = publish_run(run, store, token=TOKEN)
    assert len(hub.lfs_puts) == puts  # no LFS object sent again
    assert len(hub.commit_payloads) == commits  # and no commit at all
    for kind in ("dataset", "model"):
        assert not second["repos"][kind]["committed"]
        assert second["repos"][kind]["commit"] == first["repos"][kind]["commit"]

    # One changed file: only it (and the marker listing it) is sent, in one new commit.
    store.write_text("model/README.md", store.read_text("model/README.md") + "\nMore.\n")
    third = publish_run(run, store, token=TOKEN)
    assert len(hub.lfs_puts) == puts
    (payload,) = hub.commit_payloads[commits:]
    changed = sorted(i["value"]["path"] for i in payload if i["key"] in ("file", "lfsFile"))
    assert changed == ["README.md", MARKER]
    assert third["repos"]["model"]["committed"] and not third["repos"]["dataset"]["committed"]


def test_a_failed_upload_commits_nothing_and_a_retry_completes(
    tmp_path: Path, models, hub: HubServer
) -> None:
    run, store = _run(tmp_path, models, hub)
    hub.fail_lfs_puts = 1  # the first LFS upload (a dataset split) is refused
    with pytest.raises(PublishError, match=r"publish\.huggingFace\.datasetRepo"):
        publish_run(run, store, token=TOKEN)
    # The repo exists, but no commit claims any of the files.
    assert [c.title for c in hub.commits("dataset", DATASET_REPO)] == ["initial commit"]
    assert ("model", MODEL_REPO) not in hub.repos
    assert not store.exists("publish/published.json")
    uploaded = len(hub.lfs_puts)

    out = publish_run(run, store, token=TOKEN)
    assert len(hub.commits("dataset", DATASET_REPO)) == 2
    assert out["repos"]["dataset"]["committed"] and out["repos"]["model"]["committed"]
    # What made it through before the failure was not sent again.
    assert len(hub.lfs_puts) == len(set(hub.lfs_puts))
    assert len(hub.lfs_puts) > uploaded


def test_a_branch_revision_and_commit_message(tmp_path: Path, models, hub: HubServer) -> None:
    run, store = _run(tmp_path, models, hub, revision="v1", commitMessage="First Yoruba model")
    publish_run(run, store, token=TOKEN)
    assert hub.commits("model", MODEL_REPO, "v1")[-1].title == "First Yoruba model"
    assert [c.title for c in hub.commits("model", MODEL_REPO, "main")] == ["initial commit"]


def test_refused_token_names_the_field(tmp_path: Path, models, hub: HubServer) -> None:
    run, store = _run(tmp_path, models, hub)
    hub.fail_lfs_puts = 100
    with pytest.raises(PublishError) as info:
        publish_run(run, store, token=TOKEN)
    assert "publish.huggingFace.datasetRepo" in str(info.value)
    assert TOKEN not in str(info.value)


def test_publish_stage_skips_without_spec_publish(tmp_path: Path, models) -> None:
    tok, base, tuned = models
    run = make_run(tmp_path / "runs", tok, base)
    finish_run(run, tuned)
    store = open_store(run.run_uri)
    summary = run_stage(get_stage("publish")(run, store), progress=False)
    assert summary.stats[0]["stage_skipped"] == "spec.publish is not set"
    assert not store.exists("publish/published.json")


def test_publish_stage_and_cli(tmp_path: Path, models, hub: HubServer, monkeypatch) -> None:
    run, store = _run(tmp_path, models, hub)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    summary = run_stage(get_stage("publish")(run, store), progress=False)
    assert summary.stats[0]["repos"] == {
        "dataset": f"{hub.url}/datasets/{DATASET_REPO}",
        "model": f"{hub.url}/{MODEL_REPO}",
    }
    # The command on the run folder, with a token file: nothing new to send.
    puts = len(hub.lfs_puts)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.delenv("HF_TOKEN")
    result = CliRunner().invoke(
        main, ["publish", str(store.local_path()), "--token-file", str(token_file)]
    )
    assert result.exit_code == 0, result.output
    assert "unchanged" in result.output and len(hub.lfs_puts) == puts
    assert _api_auth(hub) == {f"Bearer {TOKEN}"}


def test_publish_spec_is_checked() -> None:
    from kakugo_stages.manifest import ManifestError, validate_spec

    base = {"language": "yo", "teacher": {"endpoint": {"url": "http://t/v1", "model": "m"}}}
    with pytest.raises(ManifestError, match="datasetRepo"):
        validate_spec("LanguageModel", {**base, "publish": {"huggingFace": {}}})
    with pytest.raises(ManifestError, match="modelRepo"):
        validate_spec(
            "LanguageModel", {**base, "publish": {"huggingFace": {"modelRepo": "no-owner"}}}
        )
    with pytest.raises(ManifestError, match="credentials in a URL"):
        hf = {"modelRepo": "o/m", "endpoint": "https://user:pw@hub.example"}
        validate_spec("LanguageModel", {**base, "publish": {"huggingFace": hf}})
    spec = validate_spec(
        "LanguageModel", {**base, "publish": {"huggingFace": {"modelRepo": "o/m"}}}
    )
    assert spec.publish.hugging_face.private and spec.publish.hugging_face.revision == "main"
    # The review runs with the evaluate stage's resources.
    with pytest.raises(ManifestError, match=r"resources\.evaluate\.gpus"):
        validate_spec(
            "LanguageModel",
            {
                **base,
                "review": {},
                "evaluation": {"device": "cpu"},
                "resources": {"evaluate": {"gpus": 0}},
            },
        )


def test_cli_repos_without_a_publish_section(tmp_path: Path, models, hub: HubServer, monkeypatch):
    tok, base, tuned = models
    run = make_run(tmp_path / "runs", tok, base)  # no spec.publish
    finish_run(run, tuned)
    folder = str(open_store(run.run_uri).local_path())
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = CliRunner().invoke(main, ["publish", folder, "--endpoint", hub.url])
    assert result.exit_code == 1 and "--model-repo" in result.output
    result = CliRunner().invoke(
        main, ["publish", folder, "--endpoint", hub.url, "--model-repo", MODEL_REPO]
    )
    assert result.exit_code == 0, result.output
    assert f"model: {hub.url}/{MODEL_REPO} @ main (committed" in result.output
    assert set(hub.repos) == {("model", MODEL_REPO)}
    # What the files are is the run's, whatever the command line named as their target.
    marker = json.loads(hub.tree("model", MODEL_REPO)[MARKER])
    assert marker["made_by"]["fingerprint"] == made_by(run, "model")
    bad = CliRunner().invoke(main, ["publish", folder, "--model-repo", "no-owner"])
    assert bad.exit_code == 1 and "--model-repo" in bad.output


def test_model_only_drops_the_local_dataset_path_and_offline_is_explained(
    tmp_path: Path, models, hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok, base, tuned = models
    publish = {"huggingFace": {"modelRepo": MODEL_REPO, "endpoint": hub.url}}
    run = make_run(tmp_path / "runs", tok, base, publish=publish)
    finish_run(run, tuned)
    store = open_store(run.run_uri)
    assert "/runs/tests/yo-share/dataset" in store.read_text("model/README.md")
    publish_run(run, store, token=TOKEN)
    meta, _ = split_card(hub.tree("model", MODEL_REPO)["README.md"].decode())
    assert "datasets" not in meta and meta["model-index"]
    assert meta["base_model"] == "tiny-base"  # a Hub id: kept
    assert set(hub.repos) == {("model", MODEL_REPO)}

    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set"):
        publish_run(run, store, token=TOKEN)


def test_a_base_model_read_from_a_folder_is_not_named_on_the_hub(
    tmp_path: Path, models, hub: HubServer
) -> None:
    run, store = _run(tmp_path, models, hub)
    card = store.read_text("model/README.md").replace("base_model: tiny-base", "base_model: ~/m")
    store.write_text("model/README.md", card)
    publish_run(run, store, token=TOKEN)
    meta, _ = split_card(hub.tree("model", MODEL_REPO)["README.md"].decode())
    assert "base_model" not in meta and meta["datasets"] == [DATASET_REPO]
