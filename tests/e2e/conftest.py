"""Fixtures of the end-to-end suite: one real control plane per session, the CRDs applied
with kubectl, the operator running as the chart's ServiceAccount with the chart's RBAC and
settings, the fake kubelet, the scripted teacher and the tiny models.

Skips (with the reason) when the binaries are missing, unless KAKUGO_E2E_REQUIRED is set:
then missing tools fail the suite (CI sets it; `make e2e-tools` builds them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Cluster, Tools, find_tools
from tests.e2e.e2e_support import NS, RELEASE_NS, REPO, OperatorProcess
from tests.e2e.kubelet import FakeKubelet


@pytest.fixture(scope="session")
def tools() -> Tools:
    found, missing = find_tools()
    if found is None:
        message = "end-to-end tools missing: " + "; ".join(missing)
        if os.environ.get("KAKUGO_E2E_REQUIRED"):
            pytest.fail(message + " (KAKUGO_E2E_REQUIRED is set)", pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def cluster(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tools, tmp_path_factory.mktemp("cluster")) as c:
        c.kubectl("create", "namespace", NS)
        c.kubectl("create", "namespace", RELEASE_NS)
        yield c
        # Kept for a failed run: logs of etcd, the apiserver, the controller-manager.
        print(f"\ncontrol plane logs in {c.dir}")


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Any:
    """The admin's ApiClient."""
    return cluster.api_client()


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[str]:
    """`kubectl apply` of crds/, then wait until they are established.

    KAKUGO_E2E_CRDS=<folder> applies that folder instead: for trying a change of the CRD
    generator (kakugo_stages/crds.py) before `make crds`.
    """
    folder = Path(os.environ.get("KAKUGO_E2E_CRDS") or REPO / "crds")
    out = cluster.kubectl("apply", "-f", str(folder))
    names = [p.name.removesuffix(".yaml") for p in sorted(folder.glob("*.yaml"))]
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names]
    )
    assert out.stdout.count("created") + out.stdout.count("configured") + out.stdout.count(
        "unchanged"
    ) == len(names), out.stdout
    return names


@pytest.fixture(scope="session")
def teacher() -> Iterator[Any]:
    from tests.helpers.teacher_scripts import scripted_teacher
    from tests.helpers.teacher_server import TeacherServer

    with TeacherServer(scripted_teacher) as srv:
        yield srv


@pytest.fixture(scope="session")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny_models import build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("models")
    tok = build_tokenizer(folder / "tok")
    return build_model(folder / "student", tok)


@pytest.fixture(scope="session")
def kubelet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubelet]:
    with FakeKubelet(
        cluster.api_client(), tmp_path_factory.mktemp("kubelet"), namespaces=(NS,)
    ) as k:
        yield k
    assert not k.errors, k.errors


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster,
    crds: list[str],
    kubelet: FakeKubelet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    op.setup()
    op.start()
    yield op
    op.stop()
    print(f"\noperator log: {op.log}")
