"""`make gpu-wheels`: the wheels a GPU machine lacks, in one folder carried with the
working tree (`.gpu-wheels/`, ignored by git).

The GPU machines reach no package registry, run Python 3.12 and already hold torch,
transformers and accelerate (`bench/gpu_image_packages.txt`). `bench/gpu_wheels.txt`
pins what else the benchmarks import; this script fetches each as a wheel for CPython
3.12 (the GPU machine) and for the Python running it (the CPU dry run), building the
ones PyPI has only as sdists (pure Python: DeepSpeed without prebuilt ops). The result is
cached in `${KAKUGO_CACHE:-~/.cache/kakugo}/gpu-wheels/<hash of the pins>` and copied
into the folder; the whole folder must stay under the device tool's 64 MiB.

    python scripts/build_gpu_wheels.py [DEST]     # default: .gpu-wheels
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PINS = REPO / "bench" / "gpu_wheels.txt"
LIMIT_BYTES = 64 * 2**20
#: The GPU machines' Python; the running one is added for the dry run.
GPU_PYTHON = "3.12"
# manylinux tags pip must be told one by one when it downloads for another interpreter.
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
    "any",
]


def pins() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in PINS.read_text().splitlines())
    return [line for line in lines if line]


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )


def fetch(requirement: str, dest: Path, pythons: list[str]) -> None:
    """Binary wheels for every Python; else build one from the sdist, which must then be
    pure Python (a compiled build here would not run on the GPU machine's Python)."""
    missing = []
    for version in pythons:
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        got = pip(
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            version,
            "--implementation",
            "cp",
            *platforms,
            "--dest",
            str(dest),
            requirement,
        )
        if got.returncode != 0:
            missing.append(version)
    if not missing:
        return
    with tempfile.TemporaryDirectory() as tmp:
        built = pip("wheel", "--no-deps", "--wheel-dir", tmp, requirement)
        if built.returncode != 0:
            raise SystemExit(f"cannot get a wheel of {requirement}:\n{built.stderr}")
        for wheel in Path(tmp).glob("*.whl"):
            if not wheel.name.endswith("-none-any.whl"):
                raise SystemExit(
                    f"{requirement}: the wheel built here, {wheel.name}, is not "
                    "pure Python, so it would not run on the GPU machine"
                )
            shutil.copy2(wheel, dest / wheel.name)


def build(cache_root: Path) -> Path:
    pythons = sorted({GPU_PYTHON, f"{sys.version_info.major}.{sys.version_info.minor}"})
    key = hashlib.sha256((PINS.read_text() + " ".join(pythons)).encode()).hexdigest()[:16]
    cached = cache_root / key
    if (cached / ".complete").exists():
        print(f"gpu-wheels: cached in {cached}")
        return cached
    work = Path(tempfile.mkdtemp(prefix="gpu-wheels-", dir=cache_root))
    for requirement in pins():
        print(f"gpu-wheels: {requirement}")
        fetch(requirement, work, pythons)
    (work / ".complete").touch()
    shutil.rmtree(cached, ignore_errors=True)
    work.rename(cached)
    return cached


def main() -> None:
    dest = REPO / (sys.argv[1] if len(sys.argv) > 1 else ".gpu-wheels")
    cache_root = Path(os.environ.get("KAKUGO_CACHE") or Path.home() / ".cache" / "kakugo")
    cache_root = cache_root / "gpu-wheels"
    cache_root.mkdir(parents=True, exist_ok=True)
    cached = build(cache_root)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    wheels = sorted(cached.glob("*.whl"))
    for wheel in wheels:
        shutil.copy2(wheel, dest / wheel.name)
    shutil.copy2(PINS, dest / "requirements.txt")
    size = sum(w.stat().st_size for w in wheels)
    print(f"gpu-wheels: {len(wheels)} wheels, {size / 2**20:.1f} MiB in {dest}")
    if size > LIMIT_BYTES:
        raise SystemExit(
            f"gpu-wheels: {size / 2**20:.1f} MiB is over the 64 MiB that can "
            "travel to a GPU machine; carry less"
        )


if __name__ == "__main__":
    main()
