"""The resolved spec a run works from: validated spec + language + where it stores things.

This is what the operator mounts into every Job (`/etc/kakugo/spec.yaml`), what
`kakugo run` writes to `<run>/spec.yaml`, and what `kakugo validate` prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kakugo_stages.graph import STAGES
from kakugo_stages.languages import Language
from kakugo_stages.manifest import API, Manifest, load_documents, parse_object
from kakugo_stages.spec import LanguageModelSpec

LOCAL_STORAGE_ROOT = "./runs"


def run_uri(storage_root: str, namespace: str, name: str) -> str:
    """Where a LanguageModel's artifacts live: <storage root>/<namespace>/<name>."""
    return f"{storage_root.rstrip('/')}/{namespace}/{name}"


@dataclass(frozen=True)
class RunSpec:
    """One LanguageModel, resolved: everything a stage needs to know."""

    name: str
    namespace: str
    spec: LanguageModelSpec
    storage_root: str  # the storage URI under which <namespace>/<name>/ lives
    #: Set for local runs (`kakugo run`: ./runs/<name>) and by a resolved spec.yaml.
    uri: str | None = None

    @property
    def language(self) -> Language:
        return self.spec.resolved_language

    @property
    def run_uri(self) -> str:
        """Where this run's artifacts live: <storage root>/<namespace>/<name>."""
        if self.uri is not None:
            return self.uri
        return run_uri(self.storage_root, self.namespace, self.name)

    def spec_dict(self) -> dict[str, Any]:
        return self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)

    def fingerprint(self) -> str:
        """Stable hash of the full spec with defaults (changes when any input changes)."""
        blob = json.dumps(self.spec_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_manifest(self) -> dict[str, Any]:
        """The resolved object as YAML-ready data, with every default filled in."""
        lang = self.language
        return {
            "apiVersion": API,
            "kind": "LanguageModel",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self.spec_dict(),
            "resolved": {
                "language": {
                    "code": lang.code,
                    "name": lang.name,
                    "iso639_1": lang.iso639_1,
                    "iso639_3": lang.iso639_3,
                    "fineweb2": lang.fineweb2,
                    "evaluationTasks": list(lang.tasks),
                },
                "runUri": self.run_uri,
                "fingerprint": self.fingerprint(),
                "resources": {
                    stage: self.spec.stage_resources(stage).model_dump(
                        mode="json", by_alias=True, exclude_none=True
                    )
                    for stage in STAGES
                },
            },
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_manifest(), sort_keys=False, allow_unicode=True, width=100)


def run_spec(manifest: Manifest, storage_root: str | None = None) -> RunSpec:
    """Resolve a LanguageModel manifest; `storage_root` is the fallback when spec has none."""
    if manifest.kind != "LanguageModel":
        raise ValueError(f"expected a LanguageModel, got {manifest.kind}")
    spec: LanguageModelSpec = manifest.spec
    root = spec.storage.root_uri if spec.storage else (storage_root or LOCAL_STORAGE_ROOT)
    return RunSpec(manifest.name, manifest.namespace, spec, root)


def load_run_spec(path: str | Path, storage_root: str | None = None) -> RunSpec:
    """Read a spec file: a LanguageModel manifest or a resolved spec.yaml."""
    docs = load_documents(path)
    lms = [d for d in docs if isinstance(d, dict) and d.get("kind") == "LanguageModel"]
    if len(lms) != 1:
        raise ValueError(f"{path}: expected exactly one LanguageModel, found {len(lms)}")
    obj = {k: v for k, v in lms[0].items() if k != "resolved"}
    run = run_spec(parse_object(obj, str(path)), storage_root)
    resolved = lms[0].get("resolved")
    if isinstance(resolved, dict) and isinstance(resolved.get("runUri"), str):
        # A resolved spec.yaml pins where its run lives (local runs use ./runs/<name>).
        run = dataclasses.replace(run, uri=resolved["runUri"])
    return run
