"""Manifests: valid examples resolve with every default; broken ones get precise errors."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kakugo_stages.cli import main
from kakugo_stages.graph import STAGES
from kakugo_stages.manifest import ManifestError, fleet_members, load_manifests, merge_patch
from kakugo_stages.resolved import load_run_spec, run_spec
from kakugo_stages.spec import LanguageModelSpec

HERE = Path(__file__).parent
BROKEN = sorted((HERE / "manifests" / "broken").glob("*.yaml"))
EXAMPLES = sorted((HERE.parent / "examples").glob("*.yaml"))


def _expectations(path: Path) -> list[str]:
    # errors="replace": one of them is not UTF-8 on purpose.
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    return [line.split("# expect: ", 1)[1] for line in lines if line.startswith("# expect: ")]


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_manifest_gets_precise_message(path: Path) -> None:
    expected = _expectations(path)
    assert expected, f"{path.name} has no '# expect:' lines"
    result = CliRunner().invoke(main, ["validate", "--quiet", str(path)])
    assert result.exit_code == 1, result.output
    for text in expected:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_validate(path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    assert all(d["apiVersion"] == "kakugo.io/v1alpha1" for d in docs)


def test_validate_prints_every_default(repo: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(repo / "examples" / "yoruba.yaml")])
    assert result.exit_code == 0, result.stderr
    lm = next(yaml.safe_load_all(result.stdout))
    spec = lm["spec"]
    # Recipe numbers, filled in although the example does not write them.
    assert spec["teacher"]["sampling"]["temperature"] == 1.0
    assert spec["data"]["topics"]["macroTopicsPerSeed"] == 20
    assert spec["data"]["topics"]["topicsPerMacroTopic"] == 10
    assert spec["data"]["scenarios"]["detailedPerBroad"] == 30
    assert spec["data"]["contexts"]["maxDocuments"] == 10_000
    assert spec["data"]["contexts"]["taskWeights"]["questionAnswering"] == 4
    assert spec["data"]["revise"]["fraction"] == 0.5
    assert spec["data"]["respond"]["maxTokens"] == 4096
    assert spec["data"]["translate"]["samples"] == 15_000
    assert spec["data"]["filter"] == {
        "minTokenRatio": 0.75,
        "maxTokenRatio": 25.0,
        "mediaTags": ["<image>", "<video>", "<audio>"],
    }
    assert spec["data"]["mix"]["validationFraction"] == 0.02
    assert spec["training"]["learningRate"] == 1e-5
    assert spec["training"]["cutoffLen"] == 8000
    assert spec["training"]["deepspeedStage"] == 3
    assert spec["evaluation"]["flores"]["shots"] == 3
    assert spec["budget"]["maxDollars"] == "50"
    resolved = lm["resolved"]
    assert resolved["language"]["code"] == "yor_Latn"
    assert resolved["language"]["fineweb2"] == "yor_Latn"
    assert resolved["runUri"] == "s3://kakugo-artifacts/runs/kakugo/yoruba"
    assert resolved["resources"]["train"]["gpus"] == 8
    assert resolved["resources"]["topics"]["gpus"] == 0
    assert set(resolved["resources"]) == set(STAGES)


def test_resolved_spec_round_trips(tmp_path: Path, repo: Path) -> None:
    first = run_spec(load_manifests(repo / "examples" / "yoruba.yaml")[0])
    out = tmp_path / "spec.yaml"
    out.write_text(first.to_yaml(), encoding="utf-8")
    again = load_run_spec(out)
    assert again.spec == first.spec
    assert again.fingerprint() == first.fingerprint()


def test_every_error_of_a_manifest_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "apiVersion: kakugo.io/v1alpha1\nkind: LanguageModel\nmetadata: {name: x}\n"
        "spec:\n  language: yo\n  teacher: {ref: {name: t}}\n"
        "  data: {topics: {shards: 0}, scenarios: {broadGeneral: -1}}\n  bogus: 1\n",
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as info:
        load_manifests(path)
    paths = {e.path for e in info.value.errors}
    assert paths == {"spec.data.topics.shards", "spec.data.scenarios.broadGeneral", "spec.bogus"}


def test_specs_are_immutable() -> None:
    spec = LanguageModelSpec.model_validate({"language": "yo", "teacher": {"ref": {"name": "t"}}})
    with pytest.raises(Exception, match="frozen"):
        spec.data.topics.max_tokens = 1  # type: ignore[misc]


def test_stage_resources_layering() -> None:
    spec = LanguageModelSpec.model_validate(
        {
            "language": "yo",
            "teacher": {"ref": {"name": "t"}},
            "resources": {
                "default": {"nodeSelector": {"pool": "cpu"}, "queueName": "batch"},
                "train": {"gpus": 4, "nodeSelector": {"pool": "gpu"}},
            },
        }
    )
    train = spec.resources.for_stage("train")
    assert (train.gpus, train.node_selector, train.queue_name, train.memory) == (
        4,
        {"pool": "gpu"},
        "batch",
        "64Gi",
    )
    respond = spec.resources.for_stage("respond")
    assert (respond.gpus, respond.node_selector) == (0, {"pool": "cpu"})
    with pytest.raises(KeyError, match="unknown stage"):
        spec.resources.for_stage("trian")


def test_fleet_members_valid_ones_survive_invalid(repo: Path) -> None:
    (fleet,) = load_manifests(HERE / "manifests" / "broken" / "fleet-bad-member.yaml")
    members = fleet_members(fleet.spec)
    good = {m.name: m.spec.resolved_language.code for m in members if m.spec is not None}
    assert good == {"yor-latn": "yor_Latn", "ibo-latn": "ibo_Latn"}
    assert [m.index for m in members if m.error is not None] == [1, 2, 3]


def test_merge_patch_is_rfc7386() -> None:
    base = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}
    patch = {"b": {"c": None, "x": 9}, "e": [3], "f": "new"}
    assert merge_patch(base, patch) == {"a": 1, "b": {"d": 3, "x": 9}, "e": [3], "f": "new"}
    assert base["b"] == {"c": 2, "d": 3}  # the template is never mutated
