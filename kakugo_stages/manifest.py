"""Reading manifests (Kubernetes-style YAML) into spec models, with precise errors.

A validation error always names the field path as the user wrote it (camelCase, from
`spec`), what was given, and what is allowed; unknown fields get a "did you mean".

The YAML is read as the API server's clients read it, so that `kakugo validate` and
`kubectl apply` agree: a duplicate key is an error (YAML would silently keep the last one),
`1e-5` is a number (as in YAML 1.2 and kubectl), and a file that is not UTF-8, nests too
deeply or expands too far through aliases is one error line, not a traceback.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kakugo_stages.spec import (
    API_GROUP,
    API_VERSION,
    DNS_1035_LABEL,
    DNS_LABEL,
    PATTERN_MEANINGS,
    LanguageFleetSpec,
    LanguageModelSpec,
    TeacherSpec,
)

API = f"{API_GROUP}/{API_VERSION}"
KINDS: dict[str, type[BaseModel]] = {
    "LanguageModel": LanguageModelSpec,
    "Teacher": TeacherSpec,
    "LanguageFleet": LanguageFleetSpec,
}


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ManifestError(ValueError):
    """A manifest that cannot be used; `errors` lists every problem found."""

    def __init__(self, source: str, errors: Sequence[FieldError]):
        self.source = source
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n{lines}")


@dataclass(frozen=True)
class Manifest:
    """A validated object: kind, metadata and its spec model."""

    kind: str
    name: str
    namespace: str
    spec: Any
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _path(loc: Iterable[str | int], root: str) -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that holds the field at `loc` (aliases as in the input)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        by_alias = {(f.alias or n): f for n, f in current.model_fields.items()}
        info = by_alias.get(part) or current.model_fields.get(part)
        if info is None:
            return None
        current = _innermost_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _innermost_model(annotation: Any) -> Any:
    # Unwrap Optional[...] and list[...] down to a BaseModel subclass, if any.
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _innermost_model(arg)
        if found is not None:
            return found
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [(f.alias or n) for n, f in model.model_fields.items()]


def _describe(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    given = err.get("input")
    loc = err["loc"]
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        allowed = _field_names(owner) if owner else []
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        return (
            f"unknown field{hint} Allowed here: {', '.join(allowed)}"
            if allowed
            else ("unknown field")
        )
    if kind == "missing":
        return "required field is missing"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        bound = next(iter(ctx.values()))
        return f"got {_show(given)}; must be {op} {bound}"
    if kind == "literal_error":
        return f"got {_show(given)}; allowed: {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return f"got {_show(given)}; must match {PATTERN_MEANINGS.get(pattern, pattern)}"
    if kind == "string_too_long" and isinstance(given, str):
        return f"got {len(given)} characters; at most {ctx.get('max_length')} are allowed"
    if kind == "too_long" and isinstance(given, Sized):
        unit = "entries" if isinstance(given, Mapping) else "items"
        return f"got {len(given)} {unit}; at most {ctx.get('max_length')} are allowed"
    if kind in ("too_short", "too_long"):
        return f"got {_show(given)}; {err['msg'].lower()}"
    if kind == "value_error":
        return str(ctx.get("error") or err["msg"]).removeprefix("Value error, ")
    # Type errors: name the expected type and what came.
    message = f"got {_show(given)} ({type(given).__name__}); {err['msg'].lower()}"
    if isinstance(given, bool) and kind == "string_type":
        message += " (YAML reads yes, no, on, off, true and false as booleans: quote it)"
    return message


def field_errors(
    exc: ValidationError, model: type[BaseModel], root: str = "spec"
) -> list[FieldError]:
    """Turn a pydantic error into user-facing messages with camelCase field paths."""
    out = []
    for err in exc.errors(include_url=False):
        path, message = _path(tuple(err["loc"]), root), _describe(err, model)
        # Cross-field validators start their message with the field they blame.
        blamed = _BLAMED.match(message) if err["type"] == "value_error" else None
        if blamed:
            path, message = f"{path}.{blamed[1]}", blamed[2]
        out.append(FieldError(path, message))
    return out


_BLAMED = re.compile(r"^([A-Za-z][A-Za-z0-9_.]*): (.*)$", re.DOTALL)


def validate_spec(kind: str, spec: Any, source: str = "manifest") -> Any:
    """Validate a spec mapping for `kind`, raising ManifestError with every problem."""
    model = KINDS[kind]
    if not isinstance(spec, Mapping):
        raise ManifestError(source, [FieldError("spec", f"must be a mapping, got {_show(spec)}")])
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        raise ManifestError(source, field_errors(exc, model)) from None


def parse_object(obj: Any, source: str = "manifest") -> Manifest:
    """Validate one Kubernetes-style object (apiVersion, kind, metadata, spec)."""
    if not isinstance(obj, Mapping):
        raise ManifestError(
            source,
            [
                FieldError(
                    "(document)", "expected a mapping with apiVersion, kind, metadata and spec"
                )
            ],
        )
    errors: list[FieldError] = []
    if obj.get("apiVersion") != API:
        errors.append(FieldError("apiVersion", f"got {_show(obj.get('apiVersion'))}; use {API}"))
    kind = obj.get("kind")
    if kind not in KINDS:
        errors.append(FieldError("kind", f"got {_show(kind)}; allowed: {', '.join(KINDS)}"))
    meta = obj.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    name_problems = name_errors(kind if isinstance(kind, str) else "", name)
    errors.extend(name_problems)
    unknown = sorted(set(obj) - {"apiVersion", "kind", "metadata", "spec", "status"})
    errors.extend(FieldError(k, "unknown top-level field") for k in unknown)
    if "spec" not in obj:
        errors.append(FieldError("spec", "required field is missing"))
    if kind in KINDS and "spec" in obj:
        try:
            spec = validate_spec(kind, obj["spec"], source)
        except ManifestError as exc:
            errors.extend(exc.errors)
        else:
            if not name_problems:  # the rules of a name that depend on the spec
                errors.extend(name_errors(kind, name, spec))
    if errors:
        raise ManifestError(source, errors)
    # Checked above: a known kind and a DNS-label name.
    assert isinstance(kind, str) and isinstance(name, str)
    return Manifest(
        kind=kind,
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        spec=spec,
        metadata=dict(meta),
    )


def _is_label(name: str, pattern: str) -> bool:
    return len(name) <= 63 and re.fullmatch(pattern, name) is not None


def served_teacher_problem(name: str) -> str | None:
    """Why a LanguageModel of this name cannot serve its own teacher (None: it can).

    With teacher.serve the operator creates a Teacher named `<name>-teacher` (shortened with
    a hash past 63 characters), and a Teacher's Service takes its name: a DNS-1035 label,
    which must start with a letter."""
    if re.match(r"^[a-z]", name):
        return None
    return (
        f"got {name!r}; with teacher.serve the operator creates a Teacher named "
        f"'{name}-teacher', whose Service name must start with a letter (a DNS-1035 label): "
        "give the LanguageModel a name that starts with a letter"
    )


def name_errors(kind: str, name: Any, spec: Any = None) -> list[FieldError]:
    """What is wrong with an object's `metadata.name` (a Kubernetes name is more than a
    string: the operator names owned objects after it). With `spec` (the validated spec),
    also the rules that depend on it."""
    if kind == "Teacher":
        if not isinstance(name, str) or not _is_label(name, DNS_1035_LABEL):
            return [
                FieldError(
                    "metadata.name",
                    f"got {_show(name)}; a Teacher's Service takes its name, so it must be "
                    + PATTERN_MEANINGS[DNS_1035_LABEL],
                )
            ]
        return []
    if not isinstance(name, str) or not _is_label(name, DNS_LABEL):
        return [
            FieldError("metadata.name", f"got {_show(name)}; must be {PATTERN_MEANINGS[DNS_LABEL]}")
        ]
    serves = isinstance(spec, LanguageModelSpec) and spec.teacher.serve is not None
    if serves and (problem := served_teacher_problem(name)):
        return [FieldError("metadata.name", problem)]
    serving = isinstance(spec, LanguageModelSpec) and spec.serve is not None
    if serving and not re.match(r"^[a-z]", name):
        return [
            FieldError(
                "metadata.name",
                f"got {name!r}; with serve the operator creates a Service named "
                f"'{name}-serve', whose name must start with a letter (a DNS-1035 label): "
                "give the LanguageModel a name that starts with a letter",
            )
        ]
    return []


#: Deepest nesting of a document (the deepest spec field is a handful of levels down).
MAX_DEPTH = 100
#: Most nodes of a document, aliases counted each time they are used: a few aliases can
#: otherwise stand for a document too large to build ("billion laughs").
MAX_NODES = 200_000


class _Refused(yaml.YAMLError):
    """A document that is valid YAML but not a manifest we read."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded in depth (the composer recurses per level)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused("(yaml)", f"line {line}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# YAML 1.1 wants a dot in a float ("1.0e-5"); YAML 1.2 and kubectl also read 1e-5 and 2E3.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _audit(node: yaml.Node, path: str, sizes: dict[int, int]) -> int:
    """Refuse duplicate keys; returns the node count under `node`, aliases expanded."""
    if id(node) in sizes:  # an alias of a node already seen
        return sizes[id(node)]
    size = 1
    if isinstance(node, yaml.MappingNode):
        first: dict[str, yaml.Node] = {}
        for key, value in node.value:
            here = path
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                here = f"{path}.{key.value}" if path else str(key.value)
                if key.value in first:
                    raise _Refused(
                        here,
                        f"duplicate key {key.value!r} (line {first[key.value].start_mark.line + 1} "
                        f"and line {key.start_mark.line + 1}): YAML would silently keep only the "
                        "last one; remove one of them",
                    )
                first[key.value] = key
            size += _audit(key, here, sizes) + _audit(value, here, sizes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            size += _audit(item, f"{path}[{i}]", sizes)
    sizes[id(node)] = size
    if size > MAX_NODES:
        raise _Refused(
            "(yaml)",
            f"line {node.start_mark.line + 1}: more than {MAX_NODES} values once its aliases "
            "are expanded",
        )
    return size


def parse_documents(text: str, source: str = "manifest") -> list[Any]:
    """All YAML documents of a text (empty documents skipped), read strictly."""
    loader = _Loader(text)
    docs: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _audit(node, "", {})
            doc = loader.construct_document(node)
            if doc is not None:
                docs.append(doc)
    except _Refused as exc:
        raise ManifestError(source, [FieldError(exc.path, exc.message)]) from None
    except yaml.YAMLError as exc:
        problem = FieldError("(yaml)", str(exc).replace("\n", " "))
        raise ManifestError(source, [problem]) from None
    except RecursionError:
        problem = FieldError("(yaml)", "nested too deeply to read")
        raise ManifestError(source, [problem]) from None
    finally:
        loader.dispose()
    return docs


def load_documents(path: str | Path) -> list[Any]:
    """All YAML documents of a file (empty documents skipped)."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        problem = FieldError("(file)", f"cannot read it: {exc.strerror or exc}")
        raise ManifestError(source, [problem]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problem = FieldError(
            "(file)",
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} is not valid UTF-8; "
            "save the manifest as UTF-8",
        )
        raise ManifestError(source, [problem]) from None
    return parse_documents(text, source)


def load_manifests(path: str | Path) -> list[Manifest]:
    """Validate every object in a YAML file; all errors of all documents are reported."""
    docs = load_documents(path)
    if not docs:
        raise ManifestError(str(path), [FieldError("(file)", "no YAML documents found")])
    manifests: list[Manifest] = []
    errors: list[FieldError] = []
    for i, doc in enumerate(docs):
        source = str(path) if len(docs) == 1 else f"{path} (document {i + 1})"
        try:
            manifests.append(parse_object(doc, source))
        except ManifestError as exc:
            prefix = "" if len(docs) == 1 else f"document {i + 1}: "
            errors.extend(FieldError(prefix + e.path, e.message) for e in exc.errors)
    if errors:
        raise ManifestError(str(path), errors)
    return manifests


def merge_patch(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: how fleet overrides apply to the template."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(base) if isinstance(base, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass(frozen=True)
class FleetMember:
    """One language of a fleet: its LanguageModel name and spec, or why it is invalid."""

    index: int
    language: str
    name: str | None
    spec: LanguageModelSpec | None
    error: ManifestError | None


def member_name(code: str) -> str:
    """A DNS-safe LanguageModel name from a language code: yor_Latn -> yor-latn."""
    return code.lower().replace("_", "-")


def fleet_members(fleet: LanguageFleetSpec) -> list[FleetMember]:
    """Expand a fleet: template + per-language overrides + language, each validated alone,
    so that one invalid language never blocks the valid ones."""
    from kakugo_stages.languages import resolve

    members: list[FleetMember] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(fleet.languages):
        source = f"spec.languages[{i}] ({entry.language})"
        try:
            code = resolve(entry.language).code
        except ValueError as exc:
            err = ManifestError(source, [FieldError(f"spec.languages[{i}].language", str(exc))])
            members.append(FleetMember(i, entry.language, entry.name, None, err))
            continue
        body = merge_patch(fleet.template, entry.overrides or {})
        body = {**body, "language": entry.language}
        name = entry.name or member_name(code)
        if name in seen:
            err = ManifestError(
                source,
                [
                    FieldError(
                        f"spec.languages[{i}]",
                        f"{entry.language!r} gives the LanguageModel name {name!r}, already "
                        f"used by spec.languages[{seen[name]}]; remove the duplicate or set a "
                        "distinct name",
                    )
                ],
            )
            members.append(FleetMember(i, entry.language, name, None, err))
            continue
        seen[name] = i
        try:
            spec = validate_spec("LanguageModel", body, source)
        except ManifestError as exc:
            members.append(FleetMember(i, entry.language, name, None, exc))
            continue
        if spec.teacher.serve is not None and (problem := served_teacher_problem(name)):
            err = ManifestError(source, [FieldError(f"spec.languages[{i}].name", problem)])
            members.append(FleetMember(i, entry.language, name, None, err))
            continue
        members.append(FleetMember(i, entry.language, name, spec, None))
    return members
