"""CustomResourceDefinitions generated from the spec models (`kakugo_stages/spec.py`) and
the status models (`kakugo_stages/status.py`) (`kakugo crds`).

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema:
no `$ref`, a `type` on every node, `nullable` instead of `null` branches, boolean
`exclusiveMinimum`, `x-kubernetes-list-type: set` instead of `uniqueItems`, and object
defaults of `{}` so the API server fills nested defaults. This module does that
translation, so whatever the models reject on type, enum, bound or pattern, the API
server rejects too. Cross-field rules (exactly one teacher source, GPUs where required)
are checked by the operator, which sets `Stalled/InvalidSpec` naming the field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kakugo_stages.spec import (
    API_GROUP,
    API_VERSION,
    DNS_1035_LABEL,
    DNS_LABEL,
    LanguageFleetSpec,
    LanguageModelSpec,
    TeacherSpec,
)
from kakugo_stages.status import (
    KOPF_FIELD,
    LanguageFleetStatus,
    LanguageModelStatus,
    TeacherStatus,
)

# Keys of JSON Schema that a structural schema keeps as they are.
_KEEP = {
    "description",
    "type",
    "format",
    "pattern",
    "enum",
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
}


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return target
    return node


def to_structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translate one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    node = _deref(dict(node), defs)

    if node.get("x-kubernetes-int-or-string"):
        # The one union a structural schema allows is exactly anyOf [integer, string], with
        # no type and nothing else in the branches; each branch's checks move to the node
        # (as controller-gen does for Quantity): `pattern` applies to strings only and
        # `minimum` to numbers only.
        int_or_string = {k: v for k, v in node.items() if k in _KEEP and k != "type"}
        int_or_string["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        for branch in node["anyOf"]:
            for key in ("pattern", "minimum", "maximum"):
                if key in branch:
                    int_or_string[key] = branch[key]
        if int_or_string.get("default") is None:
            int_or_string.pop("default", None)
        return int_or_string

    nullable = False
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        nullable = len(branches) < len(node["anyOf"])
        if len(branches) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        merged = _deref(dict(branches[0]), defs)
        # Keywords beside the anyOf (a field's json_schema_extra: e.g. maxItems 0 on a field
        # the operator owns) apply to the value.
        for key in ("description", "default", "enum", "maxItems", "maxProperties", "maxLength"):
            if key in node:
                merged[key] = node[key]
        node = merged
        if node.get("x-kubernetes-int-or-string"):
            inner = to_structural(node, defs)
            if nullable:
                inner["nullable"] = True
            return inner

    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = _json_type(node["enum"][0])

    out: dict[str, Any] = {}
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        props = node.get("properties")
        if props:
            out["properties"] = {k: to_structural(v, defs) for k, v in props.items()}
            for prop in out["properties"].values():
                if prop.get("type") == "object" and isinstance(prop.get("default"), dict):
                    # {} lets the API server apply the children's own defaults.
                    prop["default"] = {}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = to_structural(node["additionalProperties"], defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["type"] = "array"
        out["items"] = to_structural(node.get("items", {"type": "string"}), defs)
        if node.get("uniqueItems"):
            out["x-kubernetes-list-type"] = "set"
    elif kind is None:
        raise ValueError(f"schema node without a type: {node}")
    else:
        out["type"] = kind

    for key in (
        "description",
        "pattern",
        "enum",
        "default",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
    ):
        if key in node:
            out[key] = node[key]
    for low, high in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if low in node:
            out[low] = node[low]
        if high in node:
            out[low] = node[high]
            out[high] = True
    if nullable:
        out["nullable"] = True
    if out.get("default") is None:
        out.pop("default", None)
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def spec_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = to_structural(raw, raw.get("$defs", {}))
    schema.pop("default", None)
    return schema


def _strip_defaults(node: Any) -> Any:
    """No defaults in a status schema: the API server would write them into every status,
    and only the operator writes status."""
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_defaults(v) for v in node]
    return node


def _conditions_as_maps(node: dict[str, Any]) -> dict[str, Any]:
    """`conditions` lists are maps keyed by `type` (as metav1.Condition lists are)."""
    for key, child in (node.get("properties") or {}).items():
        if key == "conditions" and child.get("type") == "array":
            child["x-kubernetes-list-type"] = "map"
            child["x-kubernetes-list-map-keys"] = ["type"]
        elif isinstance(child, dict):
            _conditions_as_maps(child)
    return node


def status_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of a status model (`kakugo_stages/status.py`). Fields the
    model lacks are pruned by the API server, so the model is the whole truth, but for
    `status.kopf`: Kopf's own state (its diff-base and handler progress), which the API
    server must keep as Kopf writes it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _strip_defaults(to_structural(raw, raw.get("$defs", {})))
    schema.pop("required", None)
    schema["description"] = "Written by the operator only, through the status subresource."
    schema["properties"][KOPF_FIELD] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": "Kopf's own state (the last handled spec's essence, handler "
        "progress), written by Kopf; the operator's code never writes it.",
    }
    return _conditions_as_maps(schema)


def metadata_schema(name_pattern: str, what: str) -> dict[str, Any]:
    """`metadata`, with the rule of its `name` (the only fields of metadata a CRD may
    restrict): the operator names owned objects after it."""
    return {
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "pattern": name_pattern,
                "maxLength": 63,
                "description": what,
            }
        },
    }


_READY = '.status.conditions[?(@.type=="Ready")].status'
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _crd(
    kind: str,
    plural: str,
    short: list[str],
    spec: dict[str, Any],
    status: dict[str, Any],
    columns: list[dict[str, Any]],
    description: str,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "kakugo", "app.kubernetes.io/part-of": "kakugo"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["kakugo"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": metadata,
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def language_model_crd() -> dict[str, Any]:
    spec = spec_schema(LanguageModelSpec)
    # Exactly one teacher source: the one cross-field rule a structural schema can state.
    spec["properties"]["teacher"]["oneOf"] = [
        {"required": ["ref"]},
        {"required": ["endpoint"]},
        {"required": ["serve"]},
    ]
    status = status_schema(LanguageModelStatus)
    columns: list[dict[str, Any]] = [
        {"name": "Language", "type": "string", "jsonPath": ".spec.language"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": _READY},
        {"name": "Cost", "type": "string", "jsonPath": ".status.cost.dollars"},
        _AGE,
        {
            "name": "Score",
            "type": "string",
            "jsonPath": ".status.evaluation.summary",
            "priority": 1,
        },
    ]
    return _crd(
        "LanguageModel",
        "languagemodels",
        ["lm", "langmodel"],
        spec,
        status,
        columns,
        "One language, one pipeline: synthetic data from a teacher, a fine-tuned student, "
        "and its evaluation against the base model.",
        metadata_schema(
            DNS_LABEL,
            "A DNS label: it names the run's Jobs, ConfigMap and labels (and, with "
            "teacher.serve, the Teacher <name>-teacher, which must start with a letter).",
        ),
    )


def teacher_crd() -> dict[str, Any]:
    status = status_schema(TeacherStatus)
    columns: list[dict[str, Any]] = [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "GPUs", "type": "integer", "jsonPath": ".spec.gpus"},
        {"name": "Ready", "type": "string", "jsonPath": _READY},
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
        _AGE,
    ]
    return _crd(
        "Teacher",
        "teachers",
        ["tch"],
        spec_schema(TeacherSpec),
        status,
        columns,
        "A vLLM OpenAI-compatible server shared by LanguageModels; scales to zero when idle.",
        metadata_schema(
            DNS_1035_LABEL, "A DNS-1035 label (starts with a letter): its Service takes it."
        ),
    )


def language_fleet_crd() -> dict[str, Any]:
    spec = spec_schema(LanguageFleetSpec)
    template = spec_schema(LanguageModelSpec)
    template["properties"].pop("language")
    template["required"] = [r for r in template.get("required", []) if r != "language"]
    template["description"] = "A LanguageModel spec without `language`, used for every member."
    spec["properties"]["template"] = template
    status = status_schema(LanguageFleetStatus)
    columns: list[dict[str, Any]] = [
        {"name": "Languages", "type": "integer", "jsonPath": ".status.languages"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.ready"},
        {"name": "Running", "type": "integer", "jsonPath": ".status.running"},
        {"name": "Stalled", "type": "integer", "jsonPath": ".status.stalled"},
        {"name": "Cost", "type": "string", "jsonPath": ".status.cost.dollars"},
        _AGE,
    ]
    return _crd(
        "LanguageFleet",
        "languagefleets",
        ["fleet", "lf"],
        spec,
        status,
        columns,
        "Many languages from one manifest: one LanguageModel per language, from a template.",
        metadata_schema(DNS_LABEL, "A DNS label: its members carry it as a label value."),
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object."""
    return {
        "languagemodels.kakugo.io.yaml": language_model_crd(),
        "teachers.kakugo.io.yaml": teacher_crd(),
        "languagefleets.kakugo.io.yaml": language_fleet_crd(),
    }


HEADER = (
    "# Generated by `kakugo crds` from kakugo_stages/spec.py and status.py. Do not edit by hand.\n"
)


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, allow_unicode=True, width=100)


def write_crds(*folders: Path) -> list[Path]:
    """Write every CRD into each folder (repo `crds/` and the chart's `crds/`)."""
    written = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for name, crd in all_crds().items():
            path = folder / name
            path.write_text(render(crd), encoding="utf-8")
            written.append(path)
    return written
