"""CRDs: generated from the models, structural, and as strict as the schema language allows."""

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from kakugo_stages.crds import all_crds, render
from kakugo_stages.manifest import load_documents
from kakugo_stages.spec import LABEL_KEY_LENGTH, LanguageModelSpec, TeacherSpec

HERE = Path(__file__).parent
BROKEN = HERE / "manifests" / "broken"

# Broken manifests whose fault is a rule across fields: no structural schema (and no CEL
# on the 1.20 API server we test against) can state it; the operator reports them.
CROSS_FIELD = {
    "zero-gpus-train",
    "zero-gpus-teacher",
    "teacher-gpus-below-tp",
    "prompts-min-above-max",
    "ratio-order",
    "language-seed-placeholder",
    "unknown-language",
    "vllm-eval-on-cpu",
    "storage-s3-options-without-s3",
    "fleet-bad-member",
    "bad-metadata",
    "bad-kind",
    "yaml-syntax",
    "served-teacher-name",
    "serve-gpus-below-device",
    "serve-name",
    # Not cross-field, but no pattern states it either: a file URI's path once
    # percent-decoded. The models (and so the webhook) refuse it.
    "storage-encoded-dotdot",
}
# Faults the API server never sees (the YAML text, its bytes: kubectl sends JSON):
# `kakugo validate` reports them.
CLI_ONLY = {"duplicate-key", "not-utf8", "deep-nesting"}
# Refused by the API server's JSON decoding (an integer beyond int64 becomes a float, which
# is no integer to it), not by a schema keyword; Python's validator takes it as an integer.
# tests/e2e/test_negative.py shows the real API server refusing it.
DECODING = {"int-beyond-int64"}
PLURALS = {
    "LanguageModel": "languagemodels",
    "Teacher": "teachers",
    "LanguageFleet": "languagefleets",
}


def _schema(plural: str) -> dict[str, Any]:
    crd = all_crds()[f"{plural}.kakugo.io.yaml"]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("folder", ["crds", "helm/kakugo/files/crds"])
def test_checked_in_crds_match_the_models(repo: Path, folder: str) -> None:
    for name, crd in all_crds().items():
        path = repo / folder / name
        assert path.exists(), f"{path} missing: run `make crds`"
        assert path.read_text(encoding="utf-8") == render(crd), f"{path} drifted: `make crds`"


def _walk(node: dict[str, Any], path: str = "") -> None:
    assert "$ref" not in node and "$defs" not in node, path
    if node.get("x-kubernetes-int-or-string"):
        # The only union a structural schema allows, exactly (the API server refuses more).
        assert "type" not in node, path
        assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        return
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:
        return
    assert "type" in node, f"no type at {path}"
    assert "anyOf" not in node and "allOf" not in node, path
    assert "uniqueItems" not in node, path
    for key, child in (node.get("properties") or {}).items():
        _walk(child, f"{path}.{key}")
    if "items" in node:
        _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        assert "properties" not in node, path
        _walk(node["additionalProperties"], f"{path}{{}}")
    for branch in node.get("oneOf", []):
        assert set(branch) == {"required"}, f"oneOf at {path} may only require fields"


@pytest.mark.parametrize("plural", ["languagemodels", "teachers", "languagefleets"])
def test_schemas_are_structural(plural: str) -> None:
    _walk(_schema(plural))


@pytest.mark.parametrize("plural", ["languagemodels", "teachers", "languagefleets"])
def test_crd_metadata(plural: str) -> None:
    crd = all_crds()[f"{plural}.kakugo.io.yaml"]
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["group"] == "kakugo.io" and version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert "Ready" in names and "Age" in names


def test_language_model_printer_columns() -> None:
    version = all_crds()["languagemodels.kakugo.io.yaml"]["spec"]["versions"][0]
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(cols) == ["Language", "Phase", "Ready", "Cost", "Age", "Score"]
    assert cols["Score"]["priority"] == 1
    assert cols["Cost"]["jsonPath"] == ".status.cost.dollars"


def _apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """The API server's defaulting: fill absent properties, then recurse (defaults too)."""
    if isinstance(obj, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = _apply_defaults(obj[key], sub)
    elif isinstance(obj, list) and "items" in schema:
        return [_apply_defaults(x, schema["items"]) for x in obj]
    return obj


def _drop_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nones(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("plural", "model", "minimal"),
    [
        (
            "languagemodels",
            LanguageModelSpec,
            {"language": "yo", "teacher": {"ref": {"name": "t"}}},
        ),
        ("teachers", TeacherSpec, {}),
    ],
)
def test_crd_defaults_equal_model_defaults(plural: str, model: type, minimal: dict) -> None:
    spec_schema = _schema(plural)["properties"]["spec"]
    defaulted = _apply_defaults(copy.deepcopy(minimal), spec_schema)
    expected = model.model_validate(minimal).model_dump(mode="json", by_alias=True)
    assert defaulted == _drop_nones(expected)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in BROKEN.glob("*.yaml") if p.stem not in CROSS_FIELD | CLI_ONLY | DECODING),
    ids=lambda p: p.stem,
)
def test_crd_rejects_what_the_models_reject(path: Path) -> None:
    (doc,) = load_documents(path)
    plural = PLURALS[doc["kind"]]
    # The whole object: metadata.name has its rules too.
    errors = list(OAS30Validator(_schema(plural)).iter_errors(doc))
    if path.stem == "unknown-field":
        # Structural schemas prune unknown fields instead of failing (kubectl --validate=strict
        # rejects them on servers with field validation); pruning must remove them.
        spec_schema = _schema(plural)["properties"]["spec"]
        assert "topicz" not in spec_schema["properties"]["data"]["properties"]
        return
    assert errors, f"CRD schema accepts {path.name}"


def test_broken_manifests_are_classified() -> None:
    """Every name in the sets above is a broken manifest (no stale exemption)."""
    stems = {p.stem for p in BROKEN.glob("*.yaml")}
    assert stems >= (CROSS_FIELD | CLI_ONLY | DECODING)
    assert not CROSS_FIELD & CLI_ONLY and not DECODING & (CROSS_FIELD | CLI_ONLY)


def test_crd_accepts_valid_examples(repo: Path) -> None:
    for path in sorted((repo / "examples").glob("*.yaml")):
        for doc in load_documents(path):
            errors = [
                e.message for e in OAS30Validator(_schema(PLURALS[doc["kind"]])).iter_errors(doc)
            ]
            assert not errors, f"{path.name}: {errors}"


@pytest.mark.parametrize(
    ("plural", "good", "bad"),
    [
        ("teachers", ["gpt-oss", "t", "a" * 63], ["70b", "gpt.oss", "Gpt", "a" * 64, "-a"]),
        ("languagemodels", ["yoruba", "2yoruba"], ["yor.ub", "Yoruba", "a" * 64, "a_b"]),
        ("languagefleets", ["africa", "fleet-1"], ["africa.west", "a" * 64]),
    ],
)
def test_metadata_name_rules(plural: str, good: list[str], bad: list[str]) -> None:
    """The API server applies the names' rules too (a Teacher's Service takes its name, a
    DNS-1035 label; a LanguageModel's name goes into label values and Job names)."""
    schema = _schema(plural)["properties"]["metadata"]
    validator = OAS30Validator(schema)
    assert [n for n in good if list(validator.iter_errors({"name": n}))] == []
    assert [n for n in bad if not list(validator.iter_errors({"name": n}))] == []


@pytest.mark.parametrize("plural", ["languagemodels", "teachers", "languagefleets"])
def test_status_schema_keeps_kopf_state(plural: str) -> None:
    """Kopf keeps its state in status.kopf: a pruned field would wedge its patches."""
    kopf = _schema(plural)["properties"]["status"]["properties"]["kopf"]
    assert kopf["type"] == "object" and kopf["x-kubernetes-preserve-unknown-fields"] is True


def _unbounded(node: dict[str, Any], path: str = "") -> list[str]:
    """Paths with no size bound: strings without maxLength (an enum bounds them; a
    pattern does not), arrays without maxItems, maps without maxProperties."""
    if node.get("x-kubernetes-int-or-string") or "enum" in node:
        return []
    kind = node.get("type")
    out = []
    if kind == "string" and "maxLength" not in node:
        out.append(path)
    if kind == "array":
        if "maxItems" not in node:
            out.append(path)
        out += _unbounded(node["items"], f"{path}[]")
    if kind == "object":
        for key, child in (node.get("properties") or {}).items():
            out += _unbounded(child, f"{path}.{key}")
        if "properties" not in node and "maxProperties" not in node:
            out.append(path)
        if isinstance(node.get("additionalProperties"), dict):
            out += _unbounded(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("plural", ["languagemodels", "teachers", "languagefleets"])
def test_free_text_is_bounded(plural: str) -> None:
    assert _unbounded(_schema(plural)["properties"]["spec"], "spec") == []


def _largest(node: dict[str, Any]) -> int:
    """An upper bound of the JSON length (characters) of a value the schema admits: every
    string at its maxLength, every list and map full. A map's keys have no bound in a
    structural schema; the models bound them (label keys: LABEL_KEY_LENGTH)."""
    if node.get("x-kubernetes-int-or-string"):
        return 32
    if node.get("maxProperties") == 0 or node.get("maxItems") == 0:
        return 2  # a field the operator owns: only {} or [] gets in
    if "enum" in node:
        return max(len(json.dumps(e)) for e in node["enum"])
    kind = node["type"]
    if kind == "string":
        return 2 + node["maxLength"]
    if kind in ("integer", "number"):
        return 24  # -9223372036854775808, or a float's 17 digits with sign and exponent
    if kind == "boolean":
        return 5
    if kind == "array":
        return 2 + node["maxItems"] * (_largest(node["items"]) + 1)
    if "properties" in node:
        return 2 + sum(len(k) + 4 + _largest(v) for k, v in node["properties"].items())
    value = _largest(node["additionalProperties"])
    return 2 + node["maxProperties"] * (LABEL_KEY_LENGTH + 4 + value)


KIB = 1024
ETCD_LIMIT = 1536 * KIB  # etcd's default request limit: the largest object it stores
ANNOTATIONS_LIMIT = 256 * KIB  # all annotations of an object (kubectl's last-applied copy)


@pytest.mark.parametrize("plural", ["languagemodels", "teachers"])
def test_largest_spec_stays_far_below_the_limits(plural: str) -> None:
    """The largest spec the CRD admits fits with room to spare: below 210 KiB as JSON, so
    kubectl's last-applied copy of it fits the annotations' 256 KiB (with room for the
    object's metadata); and even were every character of it a 6-byte JSON escape, the
    object with a status stays under etcd's limit. (160 KiB until the stage pod templates,
    resources.podTemplates: two templates of about 28 KiB each at most; spec.serve adds
    3.3 KiB, its Pod fields coming from those templates; 208 KiB until spec.publish and
    spec.review, 1.8 KiB, with publish's strings cut to the Hub's own bounds: 210 KiB keeps
    six times the spec 20 KiB under etcd's limit less 256 KiB.) (Kopf's own state
    no longer holds the spec at all: kakugo_operator.kopf_state.)
    A fleet's per-language overrides are bounded in keys only; each member they make is a
    LanguageModel bounded like this."""
    largest = _largest(_schema(plural)["properties"]["spec"])
    print(f"\n{plural}: largest spec {largest / KIB:.0f} KiB")
    assert largest < 210 * KIB < ANNOTATIONS_LIMIT - 32 * KIB
    assert 6 * largest < ETCD_LIMIT - 256 * KIB  # room for metadata and status


def test_crd_yaml_is_loadable(repo: Path) -> None:
    for path in (repo / "crds").glob("*.yaml"):
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["kind"] == (
            "CustomResourceDefinition"
        )
