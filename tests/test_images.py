"""images/: one Dockerfile per image. The builds cannot run here; these tests read the
Dockerfiles: multi-stage, pinned bases, non-root, and an entrypoint that is a real
command of our CLI (or the vLLM server the operator starts for a Teacher)."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from kakugo_operator import settings as operator_settings

from kakugo_stages.cli import main as cli
from kakugo_stages.graph import STAGES

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
#: image kind (settings.DEFAULT_IMAGES, chart values `images`) -> Dockerfile
DOCKERFILES = {
    "operator": "operator",
    "stages": "stages",
    "trainer": "trainer",
    "eval": "eval",
    "teacher": "teacher",
}
#: Images we build ourselves: entrypoint `kakugo`.
KAKUGO_IMAGES = ("operator", "stages", "trainer", "eval")
VLLM_SERVER = ["python", "-m", "vllm.entrypoints.openai.api_server"]


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults before the first FROM
    stages: list[str] = field(default_factory=list)  # base image of each FROM, ARGs expanded
    instructions: list[tuple[str, str]] = field(default_factory=list)  # of the final stage

    def last(self, name: str) -> str | None:
        values = [v for k, v in self.instructions if k == name]
        return values[-1] if values else None

    def exec_form(self, name: str) -> list[str]:
        value = self.last(name)
        assert value is not None, f"{self.path.name}: no {name}"
        parsed = yaml.safe_load(value)  # JSON array = exec form
        assert isinstance(parsed, list), f"{self.path.name}: {name} must be in exec form"
        return [str(p) for p in parsed]


def parse(path: Path) -> Dockerfile:
    """A small Dockerfile parser: continuations, comments, ARG defaults, FROM stages."""
    text = re.sub(r"\\\n", " ", path.read_text())
    df = Dockerfile(path)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        name, value = name.upper(), value.strip()
        if name == "ARG" and not df.stages:
            key, _, default = value.partition("=")
            df.args[key] = default.strip('"')
        elif name == "FROM":
            image = value.split()[0]
            image = re.sub(
                r"\$\{(\w+)\}|\$(\w+)",
                lambda m: df.args.get(m.group(1) or m.group(2), m.group(0)),
                image,
            )
            df.stages.append(image)
            df.instructions = []
        else:
            df.instructions.append((name, value))
    return df


def dockerfile(kind: str) -> Dockerfile:
    path = IMAGES / f"{DOCKERFILES[kind]}.Dockerfile"
    assert path.exists(), f"no Dockerfile for image kind {kind!r}: {path}"
    return parse(path)


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return (
        bool(name)
        and "/" not in tag
        and tag not in ("latest", "")
        and any(c.isdigit() for c in tag)
    )


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_dockerfile_basics(kind: str) -> None:
    df = dockerfile(kind)
    assert df.stages, f"{df.path.name}: no FROM"
    for image in df.stages:
        assert _pinned(image), f"{df.path.name}: base image {image!r} is not pinned"
    if kind != "teacher":  # the teacher is the official vLLM image plus a user
        assert len(df.stages) >= 2, f"{df.path.name}: not a multi-stage build"
        assert any(k == "COPY" and v.startswith("--from=") for k, v in df.instructions), (
            f"{df.path.name}: the final stage copies nothing from the build stage"
        )
    user = df.last("USER")
    assert user is not None, f"{df.path.name}: runs as root (no USER)"
    uid = user.split(":")[0]
    assert uid not in ("0", "root") and uid.isdigit() and int(uid) >= 1000, (
        f"{df.path.name}: USER {user} must be a numeric non-root UID (runAsNonRoot checks it)"
    )
    # The build context is limited to the sources by a per-Dockerfile ignore file.
    assert (df.path.parent / f"{df.path.name}.dockerignore").exists()


@pytest.mark.parametrize("kind", KAKUGO_IMAGES)
def test_entrypoint_is_a_real_cli_command(kind: str) -> None:
    df = dockerfile(kind)
    assert df.exec_form("ENTRYPOINT") == ["kakugo"]
    cmd = df.exec_form("CMD")
    assert cmd and cli.get_command(click.Context(cli), cmd[0]) is not None, (
        f"{df.path.name}: CMD {cmd} is no kakugo command"
    )
    args = cmd if "--help" in cmd else [*cmd, "--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, f"kakugo {shlex.join(args)}: {result.output}"


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_images_run_as_the_pods_user(kind: str) -> None:
    """The operator's Pods run as POD_USER with runAsNonRoot and a read-only root
    filesystem: the images' USER is that numeric user, and the images the stage and
    Teacher Pods run keep HOME where the operator mounts a writable volume."""
    from kakugo_operator import pods

    from kakugo_stages.spec import HOME_DIR, POD_USER

    df = dockerfile(kind)
    assert df.last("USER") == f"{POD_USER}:{POD_USER}"
    assert pods.pod_security_context()["runAsUser"] == POD_USER
    if kind != "operator":  # the operator's chart mounts /tmp as its HOME
        env = " ".join(v for k, v in df.instructions if k == "ENV")
        assert f"HOME={HOME_DIR}" in env.split(), f"{df.path.name}: HOME must be {HOME_DIR}"
        cache_paths = re.findall(r"=(/home/\S+)", env)
        assert all(p.startswith(HOME_DIR + "/") or p == HOME_DIR for p in cache_paths), env


def test_operator_image_runs_the_operator() -> None:
    assert dockerfile("operator").exec_form("CMD") == ["operator"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_images_run_what_the_operator_runs(stage: str, tmp_path: Path) -> None:
    """The container command of each stage's Job, parsed by the real CLI with the spec file
    the Job mounts: the image's entry point, a real command, the stage, the spec, --reset."""
    from kakugo_operator import builders

    from kakugo_stages.contract import SPEC_PATH
    from kakugo_stages.manifest import parse_object
    from kakugo_stages.resolved import run_spec

    obj = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "LanguageModel",
        "metadata": {"name": "yo", "namespace": "t"},
        "spec": {
            "language": "Yoruba",
            "storage": {"uri": "s3://bucket/runs"},
            "teacher": {"endpoint": {"url": "http://teacher:8000/v1", "model": "m"}},
        },
    }
    run = run_spec(parse_object(obj))
    settings = operator_settings.OperatorSettings()
    job = builders.job(run, stage, 2, settings, builders.TeacherEnv(), reset=True)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    kind = _image_dockerfile(container["image"])
    assert kind is not None and dockerfile(kind).exec_form("ENTRYPOINT") == container["command"][:1]
    # The spec file as the Job mounts it (the ConfigMap's key under the volume's path).
    mount = next(m for m in container["volumeMounts"] if m["name"] == "spec")
    data = builders.config_map(run)["data"]
    assert SPEC_PATH.startswith(mount["mountPath"] + "/")
    spec_file = tmp_path / SPEC_PATH.removeprefix(mount["mountPath"] + "/")
    spec_file.write_text(data[spec_file.name])
    args = [str(spec_file) if a == SPEC_PATH else a for a in container["command"][1:]]
    ctx = click.Context(cli, info_name="kakugo")  # the group itself takes no options here
    name, command, rest = cli.resolve_command(ctx, list(args))
    assert command is not None
    params = command.make_context(name, rest, parent=ctx).params
    assert (name, params["name"], params["spec_path"], params["reset"]) == (
        "stage",
        stage,
        spec_file,
        True,
    )


def test_teacher_image_serves_what_the_operator_runs() -> None:
    from kakugo_operator import teacher

    from kakugo_stages.spec import TeacherSpec

    df = dockerfile("teacher")
    assert df.stages[-1].startswith("vllm/vllm-openai:"), "the teacher is the official image"
    deploy = teacher.deployment("t", "ns", TeacherSpec(), operator_settings.OperatorSettings(), 1)
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == VLLM_SERVER
    assert df.exec_form("ENTRYPOINT") == VLLM_SERVER
    # `python` exists in the image (the official one has python3 only in some releases).
    assert any("ln -s" in v and "python" in v for k, v in df.instructions if k == "RUN")


def _image_dockerfile(image: str) -> str | None:
    """Which Dockerfile builds an image name (or whose base it is)."""
    repo = image.split("@")[0].rsplit(":", 1)[0]
    base = repo.rsplit("/", 1)[-1]
    if base.startswith("kakugo-"):
        return base.removeprefix("kakugo-")
    if repo in ("vllm/vllm-openai", "docker.io/vllm/vllm-openai"):
        return "teacher"
    return None


def test_every_image_the_operator_refers_to_has_a_dockerfile() -> None:
    chart = yaml.safe_load((REPO / "helm/kakugo/values.yaml").read_text())
    refs = {f"settings.DEFAULT_IMAGES[{k}]": v for k, v in operator_settings.DEFAULT_IMAGES.items()}
    refs |= {f"values images.{k}": f"{v['repository']}:x" for k, v in chart["images"].items()}
    refs["values image"] = f"{chart['image']['repository']}:x"
    assert set(operator_settings.DEFAULT_IMAGES) <= set(chart["images"])
    for where, image in refs.items():
        name = _image_dockerfile(image)
        assert name is not None, f"{where}: {image} is built by no Dockerfile in images/"
        path = IMAGES / f"{name}.Dockerfile"
        assert path.exists(), f"{where}: {image} needs {path}"
        if name == "teacher" and image.startswith("vllm/"):
            assert parse(path).stages[-1].startswith("vllm/vllm-openai:")


def test_constraints_are_the_tested_versions() -> None:
    """images/constraints.txt pins what this test environment runs."""
    pins = {}
    for line in (IMAGES / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.strip()] = version.strip()
    wrong = {}
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed.split("+")[0] != version:
            wrong[name] = (version, installed)
    assert not wrong, f"images/constraints.txt differs from the tested versions: {wrong}"
    for kind in ("operator", "stages", "trainer", "eval"):
        text = (IMAGES / f"{kind}.Dockerfile").read_text()
        assert "constraints.txt" in text, f"{kind}.Dockerfile does not use the pins"
