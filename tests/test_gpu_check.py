"""`bench/gpu_check.sh --dry-run`: the GPU check, every step on the CPU with a tiny model,
in a virtualenv that sees only the GPU image's packages plus the carried wheels, so the
script and its wheel list cannot rot between GPU leases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".gpu-wheels"

pytestmark = pytest.mark.slow


def test_dry_run_does_every_step_with_the_carried_wheels(tmp_path: Path) -> None:
    if not (WHEELS / "requirements.txt").is_file():
        pytest.fail(f"{WHEELS} is missing: run `make gpu-wheels` (make test does)")
    out = tmp_path / "out"
    # Generous limits: a loaded machine may be slow; the dry run's speed is measured in
    # docs/benchmarks.md, not asserted here.
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path),
        "KAKUGO_GPU_CHECK_SLACK": "4",
    }
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert proc.returncode == 0, log[-4000:] or proc.stderr[-4000:]

    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry_run"] is True and summary["device"] == "cpu"
    assert {name: s["state"] for name, s in summary["steps"].items()} == {
        "train_ours": "ok",
        "train_baseline": "ok",
        "eval": "ok",
        "distributions": "ok",
    }
    assert summary["tokens_per_s"] > 0 and summary["baseline_tokens_per_s"] > 0
    assert summary["zero0_tokens_per_s"] > 0 and summary["eval_stage_seconds"] > 0
    ours = json.loads((out / "train_ours.json").read_text())
    assert ours["zero_stage"] == 3 and ours["attn_implementation"] == "sdpa"
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["items_per_model"] == sum(evaluation["tasks"].values()) > 0

    # The project and the wheels came from the carried folder, torch from the "image".
    loaded = json.loads((out / "distributions.json").read_text())
    for name in ("kakugo", "deepspeed", "pydantic", "lm-eval", "datasets"):
        assert loaded[name]["carried"], name
    for name in ("torch", "transformers", "accelerate"):
        assert not loaded[name]["carried"], name
    # The temporary folder (installed site, caches) is gone.
    assert not list(tmp_path.glob("kakugo-gpu-check.*"))
