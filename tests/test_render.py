"""`kakugo render`: every object the operator would create for a manifest, built by the
operator's own code, with the settings of the chart's values or of flags."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from kakugo_operator import builders, render, teacher
from kakugo_operator import settings as operator_settings
from kakugo_operator.cli import render_cmd

from kakugo_stages.contract import STAGES, RunSpec, validate_spec
from tests.helpers.packaging_tools import CHART, REPO, by_kind, helm_template, one

YORUBA = REPO / "examples" / "yoruba.yaml"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(render_cmd, list(args))
    return result.exit_code, result.stdout, result.stderr


def objects(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_render_is_a_kakugo_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered like `kakugo operator`, through the kakugo.commands entry point (the
    pipeline package never imports the operator)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    commands = project["project"]["entry-points"]["kakugo.commands"]
    assert commands["render"] == "kakugo_operator.cli:render_cmd"
    points = importlib.metadata.EntryPoints(
        importlib.metadata.EntryPoint(name, value, "kakugo.commands")
        for name, value in commands.items()
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: points)
    from kakugo_stages.cli import main

    result = CliRunner().invoke(main, ["render", str(YORUBA), "--values", str(CHART)])
    assert result.exit_code == 0, result.output
    assert "kind: Job" in result.stdout
    assert "render" in CliRunner().invoke(main, ["--help"]).output


def test_render_a_language_model_and_its_teacher() -> None:
    code, out, err = invoke(str(YORUBA), "--values", str(CHART))
    assert code == 0, err
    objs = objects(out)
    assert [o["kind"] for o in objs] == [
        "ConfigMap",
        *(["Job"] * len(STAGES)),
        "Deployment",
        "Service",
        "PersistentVolumeClaim",  # the example's Teacher keeps its weights on a PVC
        "NetworkPolicy",  # only the teacher stages may reach it (the chart's default)
    ]
    jobs = {o["metadata"]["name"]: o for o in by_kind(objs, "Job")}
    assert sorted(jobs) == sorted(f"yoruba-{s}-1" for s in STAGES)
    # Exactly the operator's objects, with the chart's settings.
    values, app_version = render.chart_values(CHART)
    settings = render.settings_from_values(values, app_version)
    docs = list(yaml.safe_load_all(YORUBA.read_text()))
    lm, tdoc = docs[0], docs[1]
    spec = validate_spec("LanguageModel", lm["spec"])
    run = RunSpec("yoruba", "kakugo", spec, spec.storage.root_uri)
    tspec = validate_spec("Teacher", tdoc["spec"])
    tenv = builders.TeacherEnv(teacher.url("gpt-oss-120b", "kakugo", tspec), tspec.model)
    for stage in STAGES:
        assert jobs[f"yoruba-{stage}-1"] == builders.job(run, stage, 1, settings, tenv)
    assert one(objs, "ConfigMap") == builders.config_map(run)
    assert one(objs, "Deployment") == teacher.desired_deployment(
        "gpt-oss-120b", "kakugo", tspec, settings, 1
    )
    assert one(objs, "PersistentVolumeClaim") == teacher.model_cache_pvc(
        "gpt-oss-120b", "kakugo", tspec
    )
    assert one(objs, "NetworkPolicy") == teacher.desired_network_policy(
        "gpt-oss-120b", "kakugo", tspec, settings
    )
    # What the review is for: images of the chart, the queued train Job suspended, the
    # teacher's URL in the teacher stages, the token from its Secret.
    train = jobs["yoruba-train-1"]
    container = train["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/kakugo/kakugo-trainer:{app_version}"
    assert train["spec"]["suspend"] is True
    env = {
        e["name"]: e
        for e in jobs["yoruba-topics-1"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KAKUGO_TEACHER_URL"]["value"] == "http://gpt-oss-120b.kakugo.svc:8000/v1"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}


def test_render_flags_and_a_served_teacher(tmp_path: Path) -> None:
    code, out, err = invoke(
        str(REPO / "examples" / "demo-cpu.yaml"),
        "--image",
        "stages=registry.example/stages:9",
        "--service-account",
        "stage-runner",
        "--storage-uri",
        "s3://b/runs",
        "-n",
        "team-a",
    )
    assert code == 0, err
    objs = objects(out)
    assert [o["kind"] for o in objs][-4:] == ["Teacher", "Deployment", "Service", "NetworkPolicy"]
    assert {o["metadata"]["namespace"] for o in objs} == {"team-a"}
    topics = one(objs, "Job", "demo-yoruba-topics-1")["spec"]["template"]["spec"]
    assert topics["containers"][0]["image"] == "registry.example/stages:9"
    assert topics["serviceAccountName"] == "stage-runner"
    env = {e["name"]: e.get("value") for e in topics["containers"][0]["env"]}
    assert env["KAKUGO_TEACHER_URL"] == "http://demo-yoruba-teacher.team-a.svc:8000/v1"
    assert env["KAKUGO_RUN_URI"] == "s3://b/runs/team-a/demo-yoruba"
    # Without storage (neither the spec nor a default): the operator's own message.
    code, _, err = invoke(str(REPO / "examples" / "demo-cpu.yaml"))
    assert code == 1 and "spec.storage.uri: required" in err
    code, _, err = invoke(str(YORUBA), "--image", "stages")
    assert code == 1 and "KIND=IMAGE" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(YORUBA.read_text().replace("gpus: 8", "gpus: 8\n      podTemplates: []"))
    code, _, err = invoke(str(bad))
    assert code == 1 and "podTemplates" in err


def test_render_a_fleet_gives_its_members_and_theirs() -> None:
    code, out, err = invoke(str(REPO / "examples" / "fleet-small.yaml"), "--values", str(CHART))
    assert code == 0, err
    objs = objects(out)
    members = by_kind(objs, "LanguageModel")
    assert len(members) == 3
    for member in members:
        name = member["metadata"]["name"]
        assert member["metadata"]["labels"]["kakugo.io/fleet"] == "west-africa"
        assert {f"{name}-{s}-1" for s in STAGES} <= {
            j["metadata"]["name"] for j in by_kind(objs, "Job")
        }


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "images": {
                "stages": {"repository": "registry.example/stages", "tag": "2.0"},
                "trainer": {
                    "repository": "registry.example/trainer",
                    "digest": "sha256:" + "b" * 64,
                },
            },
            "stages": {
                "imagePullPolicy": "Always",
                "serviceAccount": "stage-runner",
                "storageUri": "s3://bucket/runs",
                "ttlSecondsAfterFinished": None,
            },
            "gpuPrices": {
                "defaultProduct": "NVIDIA-L4",
                "products": {"NVIDIA-L4": {"spot": "0.40"}},
            },
        },
    ],
)
def test_values_give_the_settings_the_chart_gives(values: dict[str, Any], tmp_path: Path) -> None:
    """The same translation as the chart's `kakugo.settings` template."""
    rendered = (
        helm_template(values, namespace="kakugo", tmp=tmp_path) if values else helm_template()
    )
    cm = next(
        o for o in by_kind(rendered, "ConfigMap") if o["metadata"]["name"].endswith("-settings")
    )
    path = tmp_path / "settings.yaml"
    path.write_text(cm["data"]["settings.yaml"])
    chart = operator_settings.load({operator_settings.SETTINGS_FILE_ENV: str(path)})
    defaults, app_version = render.chart_values(CHART)
    merged = defaults
    for key, sub in values.items():
        merged = {**merged, key: {**(merged.get(key) or {}), **sub}}
    ours = render.settings_from_values(merged, app_version)
    for field in (
        "images",
        "image_pull_policy",
        "service_account",
        "storage_uri",
        "job_ttl_seconds_after_finished",
        "gpu_prices",
        "default_gpu_product",
        "default_capacity_type",
    ):
        assert getattr(ours, field) == getattr(chart, field), field


def test_render_the_served_model(tmp_path: Path) -> None:
    """spec.serve: the Deployment (the train stage's fingerprint as its model version) and
    Service the operator makes once the LanguageModel is Ready, for review before."""
    from kakugo_operator import serve, server

    from kakugo_stages.contract import fingerprints

    docs = list(yaml.safe_load_all(YORUBA.read_text()))
    docs[0]["spec"]["serve"] = {"idleSeconds": 300, "resources": {"gpuType": "NVIDIA-L4"}}
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    code, out, err = invoke(str(path), "--values", str(CHART))
    assert code == 0, err
    objs = objects(out)
    deploy = one(objs, "Deployment", "yoruba-serve")
    svc = one(objs, "Service", "yoruba-serve")
    values, app_version = render.chart_values(CHART)
    settings = render.settings_from_values(values, app_version)
    spec = validate_spec("LanguageModel", docs[0]["spec"])
    run = RunSpec("yoruba", "kakugo", spec, spec.storage.root_uri)
    assert spec.serve is not None
    version = fingerprints(run.spec_dict())["train"]
    assert deploy == server.desired_deployment(
        serve.deployment(run, spec.serve, settings, 1, version)
    )
    assert svc == server.desired_service(serve.service(run, spec.serve))
    pod = deploy["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["initContainers"][0]["image"] == f"ghcr.io/kakugo/kakugo-stages:{app_version}"
    assert "created once it is Ready" in err
