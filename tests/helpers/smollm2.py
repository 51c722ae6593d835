"""The SmolLM2-135M-Instruct folder that `make models` prepares (scripts/setup_smollm2.py),
loaded from the script's file: scripts/ is not a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup_smollm2.py"


def setup_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("setup_smollm2", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup_smollm2 = setup_module()
