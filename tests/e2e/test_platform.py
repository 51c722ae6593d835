"""The platform around the Teacher on a real kube-apiserver 1.20 (issue 18):

- owner references with blockOwnerDeletion pass OwnerReferencesPermissionEnforcement
  (enabled in cluster.py) only with `update` on the owner's finalizers: the chart's RBAC
  has it, the same rules without it are refused;
- a Teacher with an API key and a model cache gets its Deployment (the key from the
  Secret), Service, NetworkPolicy and PVC, all owned by it, made by the operator under the
  chart's RBAC;
- the chart's aggregated ClusterRoles reach Kubernetes' edit and view roles.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from tests.e2e.e2e_support import NS, RELEASE_NS, custom, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

KEY = {"name": "teacher-api", "key": "key"}


def _teacher(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "Teacher",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": "openai/gpt-oss-120b",
            "apiKeySecretRef": KEY,
            "modelCache": {"storageClassName": "fast-ssd", "size": "150Gi"},
            # Never needed here: no Deployment controller runs Pods in this cluster.
            "idleSeconds": 0,
        },
    }


def _apply(cluster: Any, tmp_path: Path, obj: dict[str, Any]) -> None:
    path = tmp_path / f"{obj['kind']}-{obj['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(obj))
    cluster.kubectl("apply", "-f", str(path))


def _owned_by(obj: Any, uid: str) -> bool:
    refs = obj.metadata.owner_references or []
    return any(r.uid == uid and r.block_owner_deletion for r in refs)


@pytest.mark.timeout(180)
def test_teacher_objects_on_a_real_api_server(
    cluster: Any, kube: Any, operator: Any, tmp_path: Path
) -> None:
    _apply(cluster, tmp_path, _teacher("platform"))
    teacher = custom(kube).get_namespaced_custom_object(
        "kakugo.io", "v1alpha1", NS, "teachers", "platform"
    )
    uid = teacher["metadata"]["uid"]
    apps = kubernetes.client.AppsV1Api(kube)
    core = kubernetes.client.CoreV1Api(kube)
    net = kubernetes.client.NetworkingV1Api(kube)

    def read(fn: Any, name: str) -> Any:
        try:
            return fn(name, NS)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    deploy = wait_for(
        lambda: read(apps.read_namespaced_deployment, "platform"), 60, "the Deployment"
    )
    pvc = wait_for(
        lambda: read(core.read_namespaced_persistent_volume_claim, "platform-model-cache"),
        60,
        "the model cache PVC",
    )
    policy = wait_for(
        lambda: read(net.read_namespaced_network_policy, "platform"), 60, "the NetworkPolicy"
    )
    service = wait_for(lambda: read(core.read_namespaced_service, "platform"), 60, "the Service")
    for obj in (deploy, pvc, policy, service):
        assert _owned_by(obj, uid), obj.metadata
    assert pvc.spec.storage_class_name == "fast-ssd"
    assert pvc.spec.resources.requests == {"storage": "150Gi"}
    (container,) = deploy.spec.template.spec.containers
    (key,) = [e for e in container.env if e.name == "VLLM_API_KEY"]
    assert key.value is None
    assert (key.value_from.secret_key_ref.name, key.value_from.secret_key_ref.key) == (
        KEY["name"],
        KEY["key"],
    )
    assert {"name": "model-cache", "mountPath": "/model-cache"} in [
        {"name": m.name, "mountPath": m.mount_path} for m in container.volume_mounts
    ]
    assert deploy.spec.strategy.type == "Recreate"
    assert container.resources.requests["cpu"] == "8"
    assert container.resources.requests["memory"] == "96Gi"
    (rule,) = policy.spec.ingress
    assert [p.port for p in rule.ports] == [8000]
    assert rule._from[0].pod_selector.match_labels == {
        "app.kubernetes.io/managed-by": "kakugo-operator"
    }
    assert not operator.forbidden(), operator.forbidden()
    custom(kube).delete_namespaced_custom_object(
        "kakugo.io", "v1alpha1", NS, "teachers", "platform"
    )


def _service_account_client(cluster: Any, kube: Any, name: str, rules: list[dict]) -> Any:
    """A ServiceAccount of the release namespace with exactly `rules` in NS."""
    core = kubernetes.client.CoreV1Api(kube)
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(RELEASE_NS, {"metadata": {"name": name}})
    rbac.create_namespaced_role(NS, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": RELEASE_NS}],
        },
    )
    token = core.create_namespaced_service_account_token(
        name,
        RELEASE_NS,
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600, "audiences": ["https://kubernetes.default.svc"]},
        },
    ).status.token
    return cluster.api_client(token)


@pytest.mark.timeout(180)
def test_owner_references_need_the_finalizers_rule(
    cluster: Any, kube: Any, operator: Any, tmp_path: Path
) -> None:
    """What the operator does for every object it owns (kopf.adopt), as a ServiceAccount
    with the chart's rules, and with the same rules less `*/finalizers`."""
    teacher = _teacher("owner")
    teacher["spec"].pop("modelCache")
    _apply(cluster, tmp_path, teacher)
    owner = custom(kube).get_namespaced_custom_object(
        "kakugo.io", "v1alpha1", NS, "teachers", "owner"
    )
    ref = {
        "apiVersion": "kakugo.io/v1alpha1",
        "kind": "Teacher",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    rules = yaml.safe_load(
        (
            Path(__file__).resolve().parents[2] / "helm/kakugo/files/rbac/operator-rules.yaml"
        ).read_text()
    )["namespaced"]
    without = [
        r
        for r in copy.deepcopy(rules)
        if not any(x.endswith("/finalizers") for x in r["resources"])
    ]
    assert len(without) == len(rules) - 1

    def config_map(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "ownerReferences": [ref]}, "data": {"a": "b"}}

    refused = kubernetes.client.CoreV1Api(
        _service_account_client(cluster, kube, "no-finalizers", without)
    )
    with pytest.raises(kubernetes.client.ApiException) as exc:
        refused.create_namespaced_config_map(NS, config_map("owned-refused"))
    assert exc.value.status == 403, exc.value
    assert "cannot set blockOwnerDeletion" in str(exc.value.body), exc.value.body
    allowed = kubernetes.client.CoreV1Api(
        _service_account_client(cluster, kube, "chart-rules", rules)
    )
    made = allowed.create_namespaced_config_map(NS, config_map("owned-allowed"))
    assert made.metadata.owner_references[0].block_owner_deletion is True
    # The operator itself, under the chart's RBAC, made the Teacher's objects the same way.
    deploy = wait_for(
        lambda: (
            kubernetes.client.AppsV1Api(kube)
            .list_namespaced_deployment(NS, field_selector="metadata.name=owner")
            .items
        ),
        60,
        "the Teacher's Deployment",
    )[0]
    assert deploy.metadata.owner_references[0].block_owner_deletion is True
    custom(kube).delete_namespaced_custom_object("kakugo.io", "v1alpha1", NS, "teachers", "owner")


@pytest.mark.timeout(120)
def test_namespace_editors_and_viewers_through_aggregated_roles(
    cluster: Any, kube: Any, operator: Any
) -> None:
    """`operator` applied the chart's RBAC (its aggregated ClusterRoles with it)."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube)
    for user, role in (("erin", "edit"), ("vic", "view"), ("ada", "admin")):
        rbac.create_namespaced_role_binding(
            NS,
            {
                "metadata": {"name": f"{user}-{role}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                ],
            },
        )

    def can(user: str, verb: str, resource: str, *more: str) -> bool:
        done = cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", NS, "--as", user, *more, check=False
        )
        return done.stdout.strip() == "yes"

    # The aggregation controller fills the built-in roles from the chart's ClusterRoles.
    wait_for(lambda: can("erin", "create", "languagemodels.kakugo.io"), 60, "edit aggregated")
    wait_for(lambda: can("vic", "list", "teachers.kakugo.io"), 60, "view aggregated")
    wait_for(lambda: can("ada", "delete", "languagefleets.kakugo.io"), 60, "admin aggregated")
    for resource in ("languagemodels", "teachers", "languagefleets"):
        assert can("erin", "patch", f"{resource}.kakugo.io")
        assert can("vic", "get", f"{resource}.kakugo.io")
        assert not can("vic", "create", f"{resource}.kakugo.io")
        # The status is the operator's.
        assert not can("erin", "patch", f"{resource}.kakugo.io", "--subresource=status")
