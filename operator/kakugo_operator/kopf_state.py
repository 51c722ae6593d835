"""Where Kopf keeps its own state: in `status.kopf`, never in annotations.

Kopf remembers, per object, the essence of what it last handled (its diff-base) and the
progress of running handlers. In annotations (as the operator first kept them) that
state counts against the 256 KiB all of an object's annotations share, and the diff-base
held a copy of the whole spec: a LanguageModel whose spec made it overflow was wedged for
good, since every patch Kopf sent was refused, including the one removing its finalizer.

So both live in status (the CRDs' status schemas keep `status.kopf` as Kopf writes it,
`kakugo_stages/crds.py`), and the diff-base leaves the spec out: none of our handlers
reacts to spec diffs (the daemons read the spec themselves, the deletion handlers need
none), so Kopf only needs it to tell a new object from one it has seen, and its size no
longer grows with the spec. A handler that wants `diff`/`old` of the spec would need the
spec back in it.
"""

from __future__ import annotations

from typing import Any

import kopf

from kakugo_stages.status import KOPF_FIELD

#: The annotation an older operator kept the diff-base in; removed when next stored.
LEGACY_DIFFBASE = "kakugo.io/last-handled-configuration"


class DiffBaseStorage(kopf.StatusDiffBaseStorage):
    """Kopf's diff-base in `status.kopf.last-handled-configuration`, without the spec."""

    def __init__(self) -> None:
        super().__init__(
            field=f"status.{KOPF_FIELD}.last-handled-configuration",
            ignored_fields=["spec", ("metadata", "annotations", LEGACY_DIFFBASE)],
        )

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        super().store(body=body, patch=patch, essence=essence)
        if LEGACY_DIFFBASE in (body.get("metadata", {}).get("annotations") or {}):
            patch.setdefault("metadata", {}).setdefault("annotations", {})[LEGACY_DIFFBASE] = None


def configure(settings: kopf.OperatorSettings) -> None:
    """Keep Kopf's progress and diff-base in `status.kopf`."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage(
        field=f"status.{KOPF_FIELD}.progress", touch_field=f"status.{KOPF_FIELD}.dummy"
    )
    settings.persistence.diffbase_storage = DiffBaseStorage()
