"""Helpers of the packaging tests (chart, images, gitops, dashboards): the external tools
that `scripts/install_test_tools.sh` caches, and `helm template` as Python objects."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kakugo"
CACHE_BIN = Path(os.environ.get("KAKUGO_CACHE", Path.home() / ".cache" / "kakugo")) / "bin"
INSTALL_HINT = "run scripts/install_test_tools.sh (once per machine)"


def tool(name: str) -> str:
    """Path of a tool from the cache, else PATH; skips the test when it is missing."""
    cached = CACHE_BIN / name
    if cached.exists() and os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} not found in {CACHE_BIN} or on PATH: {INSTALL_HINT}")


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def helm_template(
    values: dict[str, Any] | None = None,
    *,
    namespace: str = "kakugo-system",
    release: str = "kakugo",
    extra: list[str] | None = None,
    tmp: Path | None = None,
) -> list[dict[str, Any]]:
    """`helm template` of the chart, as a list of objects."""
    args = [tool("helm"), "template", release, str(CHART), "--namespace", namespace]
    if values:
        assert tmp is not None, "values need a tmp folder"
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    args += extra or []
    out = run(args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the rendered chart"
    return found[0]
