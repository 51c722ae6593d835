"""checkov's Kubernetes checks over what a cluster would run: the chart (`helm template`)
and every object the operator would create for each shipped example (`kakugo render`).

No check fails but those of tests/checkov-skips.yaml, each skipped with its reason; and a
skip that is no longer needed (its check passes everywhere) fails too, so the list stays
short and true. checkov lives in its own virtualenv (scripts/install_test_tools.sh)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.helpers.packaging_tools import CHART, REPO, run, tool

pytestmark = pytest.mark.slow
SKIPS_FILE = REPO / "tests" / "checkov-skips.yaml"
NAMESPACE = "kakugo"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _render(example: Path) -> str:
    """`kakugo render EXAMPLE --values helm/kakugo`, as the command line runs it."""
    from kakugo_operator.cli import render_cmd

    result = CliRunner().invoke(
        render_cmd,
        [
            str(example),
            "--values",
            str(CHART),
            "--namespace",
            NAMESPACE,
            # examples/demo-cpu.yaml names no storage (kakugo run has its own).
            "--storage-uri",
            "s3://kakugo-artifacts/runs",
        ],
    )
    assert result.exit_code == 0, f"kakugo render {example.name}: {result.output}"
    return result.stdout


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    checkov = tool("checkov")
    folder = tmp_path_factory.mktemp("checkov")
    chart = run([tool("helm"), "template", "kakugo", str(CHART), "--namespace", NAMESPACE])
    (folder / "chart.yaml").write_text(chart.stdout)
    for example in EXAMPLES:
        (folder / f"render-{example.name}").write_text(_render(example))
    files = sorted(p.name for p in folder.iterdir())
    result = subprocess.run(
        [checkov, "-d", str(folder), "--framework", "kubernetes", "--quiet", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return {"files": files, "reports": reports, "folder": folder}


def test_the_skips_say_why() -> None:
    skips = yaml.safe_load(SKIPS_FILE.read_text())
    assert isinstance(skips, dict) and skips
    for check, why in skips.items():
        assert str(check).startswith(("CKV_K8S_", "CKV2_K8S_")), check
        assert isinstance(why, str) and len(why.split()) >= 8, f"{check}: say why it is skipped"
    assert len(skips) <= 10, "the skip list must stay short"


def test_rendered_objects_pass_checkov(checked: dict[str, Any]) -> None:
    skips = set(yaml.safe_load(SKIPS_FILE.read_text()))
    failed: dict[str, list[str]] = {}
    resources = 0
    for report in checked["reports"]:
        summary = report["summary"]
        assert summary["parsing_errors"] == 0, summary
        resources += summary["resource_count"]
        for check in report["results"]["failed_checks"]:
            failed.setdefault(check["check_id"], []).append(
                f"{check['resource']} ({check['file_path'].lstrip('/')}): {check['check_name']}"
            )
    # Every file was read: the chart, and the stage Jobs of every example.
    assert checked["files"] == ["chart.yaml", *(f"render-{e.name}" for e in EXAMPLES)]
    assert resources > 9 * len(EXAMPLES)
    unexpected = {k: v[:5] for k, v in failed.items() if k not in skips}
    assert not unexpected, "checkov checks that fail:\n" + json.dumps(unexpected, indent=1)
    stale = sorted(skips - set(failed))
    assert not stale, f"skips no longer needed (remove them from {SKIPS_FILE.name}): {stale}"
