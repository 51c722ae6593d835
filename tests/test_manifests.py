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
    assert spec["budget"]["maxDollars"] == "75"
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


def _spec(**extra: object) -> dict:
    return {"language": "yo", "teacher": {"ref": {"name": "t"}}, **extra}


def _doc(body: str) -> str:
    return (
        "apiVersion: kakugo.io/v1alpha1\nkind: LanguageModel\nmetadata: {name: x}\n"
        "spec:\n  language: yo\n  teacher: {ref: {name: t}}\n" + body
    )


def test_yaml_reads_numbers_like_kubectl(tmp_path: Path) -> None:
    """1e-5 is a number for kubectl (YAML 1.2) and for us, not the string YAML 1.1 makes
    of it; a whole number written 1e4 or 4.0 is an integer, as the API server stores it."""
    path = tmp_path / "lm.yaml"
    path.write_text(
        _doc(
            "  training: {learningRate: 1e-5, weightDecay: 2E-2}\n"
            "  data: {translate: {samples: 1e4}, topics: {shards: 4.0}}\n"
        ),
        encoding="utf-8",
    )
    (lm,) = load_manifests(path)
    assert lm.spec.training.learning_rate == 1e-5 and lm.spec.training.weight_decay == 0.02
    assert lm.spec.data.translate.samples == 10_000 and lm.spec.data.topics.shards == 4
    assert type(lm.spec.data.topics.shards) is int


@pytest.mark.parametrize(
    ("body", "path", "text"),
    [
        ("  data:\n    seed: 1\n    seed: 2\n", "spec.data.seed", "line 8 and line 9"),
        (
            "  resources:\n    default:\n      nodeSelector: {pool: a, pool: b}\n",
            "spec.resources.default.nodeSelector.pool",
            "duplicate key 'pool' (line 9 and line 9)",
        ),
        (
            "  evaluation:\n    flores: {directions: [en-xx]}\n  evaluation: {}\n",
            "spec.evaluation",
            "line 7 and line 9",
        ),
    ],
)
def test_duplicate_keys_are_refused_where_they_are(
    tmp_path: Path, body: str, path: str, text: str
) -> None:
    file = tmp_path / "lm.yaml"
    file.write_text(_doc(body), encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifests(file)
    (error,) = info.value.errors
    assert error.path == path and text in error.message, error


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "lm.yaml"
    path.write_text(
        "base: &base {language: yo, teacher: {ref: {name: t}}}\n---\n"
        "apiVersion: kakugo.io/v1alpha1\nkind: LanguageModel\nmetadata: {name: x}\n"
        "spec:\n  <<: *base\n  language: ha\n",
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as info:  # the first document is no object
        load_manifests(path)
    assert all("duplicate" not in e.message for e in info.value.errors)


def test_alias_expansion_is_bounded(tmp_path: Path) -> None:
    """A "billion laughs" document: a one-line error, nothing built."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", "--quiet", str(path)])
    assert result.exit_code == 1 and "values once its aliases are expanded" in result.stderr
    assert "Traceback" not in result.output


def test_unreadable_input_is_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("spec: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", encoding="utf-8")
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(_doc("").encode("utf-16"))
    for path, text in ((deep, "nested more than 100 levels"), (utf16, "not UTF-8 text")):
        result = CliRunner().invoke(main, ["validate", "--quiet", str(path)])
        assert result.exit_code == 1 and text in result.stderr, result.output
        assert "Traceback" not in result.output and len(result.stderr.splitlines()) == 2


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket",
        "s3://bucket/",
        "s3://my.bucket-1/runs/kakugo/",
        "file:///data/runs",
        "/data/runs",
        "/data/.cache/runs",
        "/data/a..b/...",
        "/",
    ],
)
def test_storage_uris_accepted(uri: str) -> None:
    assert LanguageModelSpec.model_validate(_spec(storage={"uri": uri})).storage is not None


@pytest.mark.parametrize(
    "uri",
    [
        "/data/../etc",
        "/data/./runs",
        "/data/..",
        "s3://bucket/../other",
        "file://host/runs",
        "file://localhost/runs",
        "file:runs",
        "file:/data/runs",
        "runs",
        "file:///data/%2E%2E/etc",
        "s3://AKIA:secret@bucket/runs",
    ],
)
def test_storage_uris_refused(uri: str) -> None:
    with pytest.raises(ValueError, match=r"storage\.uri"):
        LanguageModelSpec.model_validate(_spec(storage={"uri": uri}))


def test_credentials_in_urls_are_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "lm.yaml"
    path.write_text(
        "apiVersion: kakugo.io/v1alpha1\nkind: LanguageModel\nmetadata: {name: x}\nspec:\n"
        "  language: yo\n  teacher:\n    endpoint:\n"
        "      url: https://user:hunter2@api.example.com/v1\n      model: m\n"
        "  storage:\n    uri: s3://bucket/runs\n"
        "    s3: {endpointUrl: 'http://minio:hunter2@minio:9000'}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["validate", "--quiet", str(path)])
    assert result.exit_code == 1
    assert "hunter2" not in result.output
    assert "teacher.endpoint.apiKeySecretRef" in result.stderr
    assert "storage.s3.credentialsSecretRef" in result.stderr
    # A user name alone is a credential too; an @ in the path is not.
    with pytest.raises(ValueError, match="credentials"):
        LanguageModelSpec.model_validate(
            _spec(teacher={"endpoint": {"url": "https://me@h/v1", "model": "m"}})
        )
    ok = _spec(teacher={"endpoint": {"url": "https://h:8443/v1/@x", "model": "m"}})
    assert LanguageModelSpec.model_validate(ok).teacher.endpoint is not None


def test_names_follow_what_the_operator_makes_of_them(tmp_path: Path) -> None:
    def errors(kind: str, name: str, spec: str) -> list[str]:
        path = tmp_path / "obj.yaml"
        path.write_text(
            f"apiVersion: kakugo.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name!r}}}\n"
            f"spec: {spec}\n",
            encoding="utf-8",
        )
        try:
            load_manifests(path)
        except ManifestError as exc:
            return [str(e) for e in exc.errors]
        return []

    assert errors("Teacher", "gpt-oss", "{}") == []
    assert "DNS-1035" in errors("Teacher", "gpt.oss", "{}")[0]
    assert "DNS-1035" in errors("Teacher", "1gpt", "{}")[0]
    ref = "{language: yo, teacher: {ref: {name: t}}}"
    serve = "{language: yo, teacher: {serve: {device: cpu, gpus: 0}}}"
    assert errors("LanguageModel", "2yoruba", ref) == []
    assert "2yoruba-teacher" in errors("LanguageModel", "2yoruba", serve)[0]
    assert errors("LanguageModel", "y" * 63, serve) == []  # shortened with a hash
    bad_ref = "{language: yo, teacher: {ref: {name: 1t}}}"
    assert "DNS-1035" in errors("LanguageModel", "x", bad_ref)[0]


def test_fleet_member_names_must_allow_a_served_teacher() -> None:
    from kakugo_stages.spec import LanguageFleetSpec

    fleet = LanguageFleetSpec.model_validate(
        {
            "languages": [{"language": "yo"}, {"language": "ha", "name": "9hausa"}],
            "template": {"teacher": {"serve": {"device": "cpu", "gpus": 0}}},
        }
    )
    yo, ha = fleet_members(fleet)
    assert yo.error is None and ha.error is not None
    (error,) = ha.error.errors
    assert error.path == "spec.languages[1].name" and "9hausa-teacher" in error.message


def test_bounds_are_refused_with_sizes_not_text() -> None:
    with pytest.raises(ManifestError) as info:
        from kakugo_stages.manifest import validate_spec

        validate_spec("LanguageModel", _spec(data={"respond": {"systemPrompt": "x" * 5000}}))
    (error,) = info.value.errors
    assert (
        str(error)
        == "spec.data.respond.systemPrompt: got 5000 characters; at most 4096 are allowed"
    )
