"""Which installed distributions a benchmark process really loaded, and from where.

`bench/gpu_check.sh` sets `KAKUGO_RECORD_DISTRIBUTIONS` to a folder; every bench script
calls `record_at_exit()`, which then writes what its process imported (distribution,
version, the folder it came from) there. `report` merges the records into one JSON file
that says, for each distribution, whether it came from the carried wheels (the folder
`gpu_check.sh` installs them into) or from the machine: the record of what ran.

    python bench/loaded_distributions.py report RECORDS_DIR CARRIED_SITE OUT.json
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
from pathlib import Path

RECORD_ENV = "KAKUGO_RECORD_DISTRIBUTIONS"


def normalize(name: str) -> str:
    """PEP 503: `PyYAML` and `pyyaml`, `typing_extensions` and `typing-extensions` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def loaded() -> dict[str, dict[str, str]]:
    """Distribution -> {version, location} of every imported module that comes from one."""
    import importlib.metadata as md

    by_top = md.packages_distributions()
    out: dict[str, dict[str, str]] = {}
    for module in list(sys.modules):
        for name in by_top.get(module.partition(".")[0], ()):
            try:
                dist = md.distribution(name)
            except md.PackageNotFoundError:  # pragma: no cover - metadata vanished
                continue
            out[normalize(name)] = {"version": dist.version, "location": str(dist.locate_file(""))}
    return out


def record_at_exit() -> None:
    folder = os.environ.get(RECORD_ENV)
    if not folder:
        return

    def write() -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        target = Path(folder) / f"{Path(sys.argv[0]).stem}-{os.getpid()}.json"
        target.write_text(json.dumps(loaded(), sort_keys=True), encoding="utf-8")

    atexit.register(write)


def report(records: Path, carried_site: Path) -> dict[str, dict[str, object]]:
    merged: dict[str, dict[str, object]] = {}
    site = str(carried_site.resolve())
    for record in sorted(records.glob("*.json")):
        script = record.stem.rsplit("-", 1)[0]
        for name, info in json.loads(record.read_text(encoding="utf-8")).items():
            entry = merged.setdefault(
                name,
                {
                    "version": info["version"],
                    "carried": str(Path(info["location"]).resolve()).startswith(site),
                    "loaded_by": [],
                },
            )
            if script not in entry["loaded_by"]:  # type: ignore[operator]
                entry["loaded_by"].append(script)  # type: ignore[union-attr]
    return dict(sorted(merged.items()))


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[1] != "report":
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    merged = report(Path(argv[2]), Path(argv[3]))
    Path(argv[4]).write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    carried = [f"{n} {e['version']}" for n, e in merged.items() if e["carried"]]
    print(f"{len(merged)} distributions loaded; carried: {', '.join(carried) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
