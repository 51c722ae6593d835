"""The registry of pipeline stages: stage name -> implementation.

Stage names are those of `kakugo_stages.graph.STAGES`; each module registers its class
with `@register`. `get_stage` imports the modules on first use.
"""

from __future__ import annotations

import importlib
import importlib.util

from kakugo_stages.stages.base import (
    Stage,
    StageFailed,
    StageInterrupted,
    run_shard,
    run_stage,
)

_REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    # One module per stage, named after it (kakugo_stages/stages/<stage>.py).
    from kakugo_stages.graph import STAGES

    for name in STAGES:
        module = f"kakugo_stages.stages.{name}"
        if name not in _REGISTRY and importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def available() -> list[str]:
    from kakugo_stages.graph import STAGES

    _load()
    return [s for s in STAGES if s in _REGISTRY]


def get_stage(name: str) -> type[Stage]:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; available: {', '.join(available())}") from None


__all__ = [
    "Stage",
    "StageFailed",
    "StageInterrupted",
    "available",
    "get_stage",
    "register",
    "run_shard",
    "run_stage",
]
