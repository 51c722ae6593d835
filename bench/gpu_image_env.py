"""A virtualenv that sees only what a GPU machine's image holds, for the CPU dry run of
`bench/gpu_check.sh`.

The GPU machines reach no package registry: whatever the benchmarks import beyond the
image (`bench/gpu_image_packages.txt`) must travel as a wheel (`bench/gpu_wheels.txt`).
A missing one would show only on the GPU, minutes into a short lease. So the dry run
runs every step in a virtualenv without site-packages of its own, into which this script
links, from the running (project) environment, only the distributions on the image list
(torch, transformers, accelerate, numpy, ...) and what these need as installed here
(their own required dependencies, as the image's installs brought theirs). An import of
anything else fails there as it would on the GPU machine, and a library's optional import
(accelerate's boto3, say) sees the package absent, as it would there. Versions are this
machine's, not the image's.

    python bench/gpu_image_env.py DEST      # prints DEST/bin/python
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import sysconfig
import venv
from pathlib import Path

IMAGE_PACKAGES = Path(__file__).resolve().parent / "gpu_image_packages.txt"
CARRIED = Path(__file__).resolve().parent / "gpu_wheels.txt"


def normalize(name: str) -> str:
    """PEP 503: `PyYAML` and `pyyaml`, `typing_extensions` and `typing-extensions` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> set[str]:
    """Distribution names of a list file (one per line, `==` pins allowed, # comments)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {normalize(re.split(r"[=<>!~ ]", line)[0]) for line in lines if line}


def top_level_entries(dist: md.Distribution) -> set[str]:
    """The names a distribution puts directly into site-packages (packages, modules,
    `.libs` folders, `.pth` files, its .dist-info), from its RECORD."""
    entries = set()
    for file in dist.files or ():
        parts = Path(str(file)).parts
        if parts and parts[0] != "..":
            entries.add(parts[0])
    return entries


def with_requirements(names: set[str], exclude: set[str]) -> set[str]:
    """The names and, transitively, the distributions they require (no extras) that are
    installed here, except `exclude`."""
    from packaging.requirements import Requirement

    installed = {normalize(d.metadata["Name"] or ""): d for d in md.distributions()}
    todo, seen = [n for n in names if n in installed], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in installed[name].requires or ():
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = normalize(req.name)
            if dep in installed and dep not in seen and dep not in exclude:
                todo.append(dep)
    return names | seen


def create(dest: Path) -> tuple[Path, list[str]]:
    # What we carry is never taken from here, even where a newer release of an image
    # package requires it: the dry run must show that the carried wheels suffice.
    wanted = with_requirements(listed(IMAGE_PACKAGES), exclude=listed(CARRIED))
    venv.create(dest, with_pip=False, symlinks=True, clear=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(dest), "platbase": str(dest)}))
    site.mkdir(parents=True, exist_ok=True)
    linked = []
    for dist in md.distributions():
        name = normalize(dist.metadata["Name"] or "")
        if name not in wanted:
            continue
        root = Path(str(dist.locate_file("")))
        for entry in top_level_entries(dist):
            target = site / entry
            if (root / entry).exists() and not target.exists():
                target.symlink_to(root / entry)
        linked.append(name)
    return dest / "bin" / "python", sorted(set(linked))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    python, linked = create(Path(sys.argv[1]).resolve())
    print(f"gpu-image env: {len(linked)} distributions of the image linked", file=sys.stderr)
    print(python)


if __name__ == "__main__":
    main()
