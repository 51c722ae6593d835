"""Per-stage fingerprints, from the stage graph's declarations: a hash of the spec fields
a stage reads and of its inputs' fingerprints. A new generation reruns exactly the stages
whose fingerprint moved (and so, through the input hashes, everything downstream of
them)."""

from __future__ import annotations

from kakugo_stages.contract import changed_paths, fingerprints

stage_fingerprints = fingerprints

__all__ = ["changed_paths", "stage_fingerprints"]
