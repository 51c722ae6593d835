"""The release (.github/workflows/release.yaml) and the images it builds: actionlint on the
workflows (with shellcheck on their `run:` scripts), hadolint on every Dockerfile (any
ignore justified on the lines above it), and the workflow's shape: the five images of
images/, pushed with their digests, which the chart it pushes then pins (values paths the
chart and its schema accept)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.packaging_tools import CACHE_BIN, CHART, REPO, helm_template, run, tool
from tests.test_images import DOCKERFILES

WORKFLOW = REPO / ".github/workflows/release.yaml"


def _workflow() -> dict[Any, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def test_actionlint_is_clean() -> None:
    actionlint = tool("actionlint")
    env = {**os.environ, "PATH": f"{CACHE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    run([actionlint, "-no-color"], cwd=REPO, env=env)
    assert tool("shellcheck")  # so that actionlint also checked the run: scripts


def test_hadolint_is_clean_and_every_ignore_is_justified() -> None:
    hadolint = tool("hadolint")
    files = sorted((REPO / "images").glob("*.Dockerfile"))
    assert {f.name.removesuffix(".Dockerfile") for f in files} == set(DOCKERFILES.values())
    run([hadolint, "--no-color", "--failure-threshold", "info", *map(str, files)])
    for path in files:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint ignore" in line:
                assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                    f"{path.name}:{i + 1}: an ignore needs a comment above it saying why"
                )


def test_the_workflow_builds_the_five_images_and_pushes_the_chart() -> None:
    wf = _workflow()
    assert wf[True]["push"]["tags"] == ["v*.*.*"]  # YAML reads `on:` as True
    images = wf["jobs"]["images"]
    assert images["strategy"]["matrix"]["image"] == list(DOCKERFILES)
    assert images["permissions"]["packages"] == "write"
    steps = {s.get("uses", "").split("@")[0]: s for s in images["steps"]}
    build = steps["docker/build-push-action"]["with"]
    assert build["file"] == "images/${{ matrix.image }}.Dockerfile" and build["push"] is True
    assert build["context"] == "."  # each Dockerfile's .dockerignore narrows it
    for kind in DOCKERFILES.values():
        assert (REPO / f"images/{kind}.Dockerfile.dockerignore").exists()
    record = next(s for s in images["steps"] if s.get("name") == "Record the digest")
    assert record["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    chart = wf["jobs"]["chart"]
    assert chart["needs"] == ["version", "images"]
    script = "\n".join(s.get("run", "") for s in chart["steps"])
    assert "helm package helm/kakugo" in script
    assert 'helm push "dist/kakugo-$VERSION.tgz" "oci://$REGISTRY/$OWNER/charts"' in script
    # The values it writes: .image (the operator) and .images.<kind>, digest and tag.
    pins = re.search(r'if \[ "\$kind" = operator \]; then path="(.+?)"; else path="(.+?)"', script)
    assert pins and pins.groups() == (".image", ".images.$kind")
    assert "$path.digest = strenv(DIGEST)" in script


def test_the_chart_takes_what_the_release_writes(tmp_path: Path) -> None:
    """The values the release writes (repository, tag, digest of the five images) pass the
    schema and become repository@digest everywhere."""
    digest = {k: "sha256:" + f"{i:x}" * 64 for i, k in enumerate(DOCKERFILES, start=1)}
    values: dict[str, Any] = {
        "image": {"repository": "ghcr.io/o/kakugo-operator", "tag": "1.2.3"},
        "images": {},
    }
    values["image"]["digest"] = digest["operator"]
    for kind in ("stages", "trainer", "eval", "teacher"):
        values["images"][kind] = {
            "repository": f"ghcr.io/o/kakugo-{kind}",
            "tag": "1.2.3",
            "digest": digest[kind],
        }
    objects = helm_template(values, tmp=tmp_path)
    text = yaml.safe_dump_all(objects)
    for kind in DOCKERFILES:
        assert f"ghcr.io/o/kakugo-{kind}@{digest[kind]}" in text
    assert "ghcr.io/o/kakugo-stages:1.2.3" not in text
    run([tool("helm"), "lint", str(CHART), "--values", str(tmp_path / "values.yaml")])
