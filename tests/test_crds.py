"""CRDs: generated from the models, structural, and as strict as the schema language allows."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from kakugo_stages.crds import all_crds, render
from kakugo_stages.manifest import load_documents
from kakugo_stages.spec import LanguageModelSpec, TeacherSpec

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


def _validator(plural: str) -> OAS30Validator:
    return OAS30Validator(_schema(plural)["properties"]["spec"])


@pytest.mark.parametrize(
    "path",
    sorted(p for p in BROKEN.glob("*.yaml") if p.stem not in CROSS_FIELD),
    ids=lambda p: p.stem,
)
def test_crd_rejects_what_the_models_reject(path: Path) -> None:
    (doc,) = load_documents(path)
    plural = {"LanguageModel": "languagemodels", "LanguageFleet": "languagefleets"}[doc["kind"]]
    errors = list(_validator(plural).iter_errors(doc["spec"]))
    if path.stem == "unknown-field":
        # Structural schemas prune unknown fields instead of failing (kubectl --validate=strict
        # rejects them on servers with field validation); pruning must remove them.
        spec_schema = _schema(plural)["properties"]["spec"]
        assert "topicz" not in spec_schema["properties"]["data"]["properties"]
        return
    assert errors, f"CRD schema accepts {path.name}"


def test_crd_accepts_valid_examples(repo: Path) -> None:
    for path in sorted((repo / "examples").glob("*.yaml")):
        for doc in load_documents(path):
            plural = {
                "LanguageModel": "languagemodels",
                "Teacher": "teachers",
                "LanguageFleet": "languagefleets",
            }[doc["kind"]]
            errors = [e.message for e in _validator(plural).iter_errors(doc["spec"])]
            assert not errors, f"{path.name}: {errors}"


def test_crd_yaml_is_loadable(repo: Path) -> None:
    for path in (repo / "crds").glob("*.yaml"):
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["kind"] == (
            "CustomResourceDefinition"
        )
