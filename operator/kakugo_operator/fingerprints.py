"""Per-stage fingerprints: a hash of the spec fields a stage reads and of its upstream
stages' fingerprints. A new generation reruns exactly the stages whose fingerprint moved
(and so, through the upstream hashes, everything downstream of them)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kakugo_stages.spec import STAGES

#: Everything under the run: moving storage means starting over.
_COMMON = ("language", "storage.uri", "storage.pvc", "data.seed")
_TEACHER = ("teacher.sampling",)

#: stage -> spec paths it reads (camelCase, as in the manifest).
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "topics": (*_TEACHER, "data.topics", "data.mix.sources"),
    "scenarios": (*_TEACHER, "data.scenarios", "data.mix.sources"),
    "contexts": (*_TEACHER, "data.contexts", "data.mix.sources", "student.model",
                 "student.tokenizer"),
    "revise": (*_TEACHER, "data.revise", "data.mix.sources"),
    "respond": (*_TEACHER, "data.respond", "data.mix.sources"),
    "translate": (*_TEACHER, "data.translate", "data.mix.sources", "student.model",
                  "student.tokenizer"),
    "filter": ("data.filter", "data.mix", "student"),
    "train": ("student", "training"),
    "evaluate": ("student", "evaluation"),
}

#: stage -> stages whose outputs it reads.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "topics": (),
    "scenarios": (),
    "contexts": (),
    "revise": ("topics", "scenarios", "contexts"),
    "respond": ("revise",),
    "translate": (),
    "filter": ("respond", "translate"),
    "train": ("filter",),
    "evaluate": ("train",),
}


def _get(spec: dict[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def stage_fingerprints(spec: dict[str, Any]) -> dict[str, str]:
    """stage -> 16-hex fingerprint, from the resolved spec (camelCase, defaults filled)."""
    out: dict[str, str] = {}
    for stage in STAGES:
        inputs = {p: _get(spec, p) for p in (*_COMMON, *STAGE_INPUTS[stage])}
        blob = json.dumps(
            {"stage": stage, "inputs": inputs, "up": [out[u] for u in UPSTREAM[stage]]},
            sort_keys=True, default=str,
        )
        out[stage] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return out


def changed_paths(old: dict[str, Any], new: dict[str, Any], stage: str) -> list[str]:
    """The spec paths read by `stage` that differ between two specs (for messages)."""
    return [p for p in (*_COMMON, *STAGE_INPUTS[stage]) if _get(old, p) != _get(new, p)]
