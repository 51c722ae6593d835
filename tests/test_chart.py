"""helm/kakugo: lint, render with default and non-default values, validate the objects
offline, and check that the chart matches the operator (settings, RBAC, CRDs, CLI)."""

from __future__ import annotations

import ast
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from kakugo_operator import settings as operator_settings

from tests.helpers.packaging_tools import CHART, REPO, by_kind, helm_template, one, run, tool

RULES = yaml.safe_load((CHART / "files/rbac/operator-rules.yaml").read_text())
NS = "kakugo-system"

#: Non-default values: everything switched the other way.
CUSTOM: dict[str, Any] = {
    "fullnameOverride": "kakugo-op",
    "crds": {"install": True, "keep": False},
    "image": {
        "repository": "registry.example/kakugo-operator",
        "tag": "1.2.3",
        "digest": "sha256:" + "a" * 64,
    },
    "imagePullSecrets": [{"name": "regcred"}],
    "images": {
        "stages": {
            "repository": "registry.example/kakugo-stages",
            "tag": "1.2.3",
            "digest": "sha256:" + "b" * 64,
        },
        "trainer": {"repository": "registry.example/kakugo-trainer", "tag": "1.2.3"},
        "eval": {"repository": "registry.example/kakugo-eval", "tag": "1.2.3"},
        "teacher": {"repository": "registry.example/kakugo-teacher", "tag": "1.2.3"},
    },
    "stages": {
        "imagePullPolicy": "Always",
        "serviceAccount": "kakugo-stages",
        "storageUri": "s3://kakugo-artifacts/runs",
        "backoffBaseSeconds": 10,
        "backoffMaxSeconds": 600,
        "retryBudget": 5,
        "specChanges": "refuse",
        "logTailLines": 50,
    },
    "gpuPrices": {
        "defaultProduct": "NVIDIA-L4",
        "defaultCapacityType": "spot",
        "products": {
            "NVIDIA-L4": {"on-demand": "0.90", "spot": "0.40"},
            "NVIDIA-B200": {"on-demand": "6.50"},
        },
    },
    "teacher": {
        "idleSeconds": 300,
        "networkPolicy": {
            "enabled": False,
            "ingressFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
            ],
        },
    },
    "rbac": {"clusterWide": True, "aggregateRoles": False},
    "webhook": {
        "port": 9444,
        "failurePolicy": "Ignore",
        "timeoutSeconds": 5,
        "certManager": {"enabled": True, "duration": "720h", "renewBefore": "240h"},
        "checkSeconds": 10,
        "allowedImages": ["registry.example/vllm/*"],
        "allowedExtraArgs": ["--enable-prefix-caching"],
    },
    "serviceAccount": {"name": "kakugo-sa", "annotations": {"example.com/role": "x"}},
    "operator": {
        "resyncSeconds": 60,
        "logLevel": "verbose",
        "logFormat": "full",
        "healthPort": 8081,
        "env": [{"name": "AWS_REGION", "value": "eu-west-1"}],
        "envFrom": [{"secretRef": {"name": "kakugo-s3"}}],
        "nodeSelector": {"pool": "system"},
        "priorityClassName": "system-cluster-critical",
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
    },
    "metrics": {
        "port": 9191,
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "teachers": {"enabled": True, "kind": "ServiceMonitor", "labels": {"release": "prom"}},
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "prom"},
            "additionalLabels": {"team": "ml"},
        },
    },
    "dashboards": {
        "label": "grafana_dashboard",
        "labelValue": "kakugo",
        "namespace": "monitoring",
        "folder": "ML",
    },
}


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return helm_template(namespace=NS)


@pytest.fixture(scope="module")
def custom_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return helm_template(CUSTOM, namespace=NS, tmp=tmp_path_factory.mktemp("values"))


def _values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_helm_lint(tmp_path: Path) -> None:
    helm = tool("helm")
    run([helm, "lint", "--strict", str(CHART)])
    run([helm, "lint", "--strict", str(CHART), "--values", _values_file(tmp_path, CUSTOM)])


def test_the_old_crds_folder_is_gone() -> None:
    # Helm installs crds/ by itself (and never upgrades it): with templates/crds.yaml the
    # CRDs would be installed twice. The generated copy lives in files/crds/.
    assert not (CHART / "crds").exists(), (
        "helm/kakugo/crds/ must go: the chart renders files/crds/ (make crds writes it)"
    )


def test_chart_crds_match_the_repository() -> None:
    names = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert names == sorted(p.name for p in (CHART / "files/crds").glob("*.yaml"))
    for name in names:
        assert (CHART / "files/crds" / name).read_text() == (REPO / "crds" / name).read_text(), (
            f"helm/kakugo/files/crds/{name} drifted from crds/: run `make crds`"
        )


def _crds(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in by_kind(objects, "CustomResourceDefinition")}


def test_crds_install_and_keep_switches(
    default_objects: list, custom_objects: list, tmp_path: Path
) -> None:
    repo_crds = {
        yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
        for p in (REPO / "crds").glob("*.yaml")
    }
    kept = _crds(default_objects)
    assert (
        set(kept)
        == set(repo_crds)
        == {"languagemodels.kakugo.io", "teachers.kakugo.io", "languagefleets.kakugo.io"}
    )
    for name, crd in kept.items():
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}
        assert crd == repo_crds[name], f"rendered CRD {name} differs from crds/"
    not_kept = _crds(custom_objects)
    assert set(not_kept) == set(repo_crds)
    for name, crd in not_kept.items():
        assert "annotations" not in crd["metadata"]
        assert crd == repo_crds[name]
    off = helm_template({"crds": {"install": False, "keep": True}}, namespace=NS, tmp=tmp_path)
    assert not _crds(off)


def test_default_deployment(default_objects: list[dict[str, Any]]) -> None:
    deploy = one(default_objects, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/kakugo/kakugo-operator:0.1.0"
    assert c["args"] == [
        "operator",
        f"--namespace={NS}",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--log-format=json",  # JSON logs by default
    ]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9090, "health": 8080, "webhook": 9443}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "kakugo"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KAKUGO_OPERATOR_SETTINGS"] == "/etc/kakugo-operator/settings.yaml"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/etc/kakugo-operator": "settings", "/tmp": "tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["settings"]["configMap"]["name"] == "kakugo-settings"


def _settings(objects: list[dict[str, Any]], tmp_path: Path) -> operator_settings.OperatorSettings:
    cm = next(
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-settings")
    )
    path = tmp_path / "settings.yaml"
    path.write_text(cm["data"]["settings.yaml"])
    # Exactly what the operator does at startup: an unknown key would raise.
    return operator_settings.load({operator_settings.SETTINGS_FILE_ENV: str(path)})


def test_settings_are_what_the_operator_reads(
    default_objects: list, custom_objects: list, tmp_path: Path
) -> None:
    default = _settings(default_objects, tmp_path)
    assert default.images == {
        k: f"ghcr.io/kakugo/kakugo-{k}:0.1.0" for k in ("stages", "trainer", "eval", "teacher")
    }
    assert default.gpu_prices == operator_settings.DEFAULT_GPU_PRICES
    assert default.metrics_port == 9090 and default.retry_budget == 3
    assert default.storage_uri is None and default.teacher_idle_seconds is None
    assert default.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    # The webhook: its own certificate for the Service's names, the caBundle of the
    # release's configuration, the operator's ServiceAccount trusted, nothing else allowed.
    assert default.webhook_port == 9443 and default.webhook_cert_dir is None
    assert default.webhook_configuration == f"kakugo-{NS}"
    assert default.webhook_hosts == (
        f"kakugo-webhook.{NS}.svc",
        "kakugo-webhook",
        f"kakugo-webhook.{NS}",
        f"kakugo-webhook.{NS}.svc.cluster.local",
    )
    assert default.webhook_cert_lifetime_seconds == 30 * 86400
    assert default.admission_trusted_users == (f"system:serviceaccount:{NS}:kakugo",)
    assert default.allowed_images == () and default.allowed_extra_args == ()
    assert default.teacher_network_policy is True and default.teacher_ingress_from == ()
    custom = _settings(custom_objects, tmp_path)
    assert custom.images["trainer"] == "registry.example/kakugo-trainer:1.2.3"
    # A digest wins over the tag: repository@digest.
    assert custom.images["stages"] == "registry.example/kakugo-stages@sha256:" + "b" * 64
    assert custom.teacher_network_policy is False
    assert custom.teacher_ingress_from == (
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}},
    )
    assert custom.gpu_prices[("NVIDIA-L4", "spot")] == Decimal("0.40")
    assert custom.gpu_prices[("NVIDIA-B200", "on-demand")] == Decimal("6.50")
    assert (custom.default_gpu_product, custom.default_capacity_type) == ("NVIDIA-L4", "spot")
    assert custom.storage_uri == "s3://kakugo-artifacts/runs"
    assert custom.service_account == "kakugo-stages" and custom.image_pull_policy == "Always"
    assert (custom.retry_budget, custom.spec_changes, custom.log_tail_lines) == (5, "refuse", 50)
    assert (custom.backoff_base_seconds, custom.backoff_max_seconds) == (10, 600)
    assert custom.teacher_idle_seconds == 300 and custom.resync_seconds == 60
    assert custom.metrics_port == 9191
    assert custom.liveness_endpoint == "http://0.0.0.0:8081/healthz"
    assert custom.webhook_port == 9444 and custom.webhook_check_seconds == 10
    assert custom.webhook_cert_dir == "/etc/kakugo-webhook-tls"
    assert custom.webhook_configuration is None  # cert-manager's injector owns the caBundle
    assert custom.admission_trusted_users == (f"system:serviceaccount:{NS}:kakugo-sa",)
    assert custom.allowed_images == ("registry.example/vllm/*",)
    assert custom.allowed_extra_args == ("--enable-prefix-caching",)


def _cli_argv(args: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What `kakugo <args>` hands to the operator (the CLI parses the container's args)."""
    from kakugo_operator import main as operator_main

    from kakugo_stages.cli import main as cli

    seen: list[list[str]] = []
    monkeypatch.setattr(operator_main, "run_operator", lambda argv=(): seen.append(list(argv)))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (argv,) = seen
    return argv


def test_container_args_are_a_valid_operator_command(
    default_objects: list, custom_objects: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kakugo_operator.main import kopf_args

    monkeypatch.delenv(operator_settings.SETTINGS_FILE_ENV, raising=False)
    monkeypatch.delenv("KAKUGO_NAMESPACES", raising=False)
    (c,) = one(default_objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    kopf = kopf_args(_cli_argv(c["args"], monkeypatch))
    assert f"--namespace={NS}" in kopf and "--all-namespaces" not in kopf
    assert "--standalone" in kopf and "--liveness=http://0.0.0.0:8080/healthz" in kopf
    assert "--log-format=json" in kopf
    (c,) = one(custom_objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    kopf = kopf_args(_cli_argv(c["args"], monkeypatch))
    assert "--all-namespaces" in kopf and "--verbose" in kopf
    assert "--liveness=http://0.0.0.0:8081/healthz" in kopf
    assert "--log-format=full" in kopf
    # Kopf itself accepts what the chart passes (its own option's choices).
    import kopf.cli

    (log_format,) = [p for p in kopf.cli.run.params if p.name == "log_format"]
    for fmt in ("json", "full", "plain"):
        assert log_format.type.convert(fmt, None, None)


def _rules(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["rules"]


def _webhook_rules(name: str) -> list[dict[str, Any]]:
    return [{**rule, "resourceNames": [name]} for rule in RULES["webhookConfiguration"]]


def test_rbac_namespaced_by_default(default_objects: list[dict[str, Any]]) -> None:
    # Cluster-wide: only get and patch of the release's own webhook configuration.
    cluster_role = one(default_objects, "ClusterRole", f"kakugo-{NS}-webhook")
    assert _rules(cluster_role) == _webhook_rules(f"kakugo-{NS}")
    assert RULES["webhookConfiguration"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations"],
            "verbs": ["get", "patch"],
        }
    ]
    cluster_binding = one(default_objects, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == f"kakugo-{NS}-webhook"
    assert cluster_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kakugo", "namespace": NS}
    ]
    role = one(default_objects, "Role")
    assert role["metadata"]["namespace"] == NS
    assert _rules(role) == RULES["namespaced"]
    binding = one(default_objects, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "kakugo",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kakugo", "namespace": NS}]
    assert one(default_objects, "ServiceAccount")["metadata"]["name"] == "kakugo"


def test_rbac_in_each_watched_namespace(tmp_path: Path) -> None:
    objects = helm_template(
        {"watch": {"namespaces": ["team-a", "team-b"]}}, namespace=NS, tmp=tmp_path
    )
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(objects, "RoleBinding")
    assert all(b["subjects"][0]["namespace"] == NS for b in bindings)
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [a for a in c["args"] if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_rbac_cluster_wide(custom_objects: list[dict[str, Any]], tmp_path: Path) -> None:
    assert not by_kind(custom_objects, "Role") and not by_kind(custom_objects, "RoleBinding")
    # With cert-manager the operator needs no right on the webhook configuration.
    role = one(custom_objects, "ClusterRole")  # aggregateRoles off: the operator's only
    assert _rules(role) == RULES["namespaced"] + RULES["clusterWideOnly"]
    binding = one(custom_objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kakugo-sa", "namespace": NS}]
    # Cluster-wide with the operator's own certificate: both ClusterRoles.
    objects = helm_template({"rbac": {"clusterWide": True}}, namespace=NS, tmp=tmp_path)
    roles = {
        r["metadata"]["name"]: _rules(r)
        for r in by_kind(objects, "ClusterRole")
        if not r["metadata"]["name"].endswith(("-edit", "-view"))
    }
    assert roles == {
        "kakugo": RULES["namespaced"] + RULES["clusterWideOnly"],
        f"kakugo-{NS}-webhook": _webhook_rules(f"kakugo-{NS}"),
    }


def _kopf_resources(source: str) -> dict[str, set[tuple[str, str]]]:
    """(group, plural) of every Kopf handler in the source, by decorator (index, event, ...)."""
    consts = {"GROUP": "kakugo.io", "VERSION": "v1alpha1"}
    out: dict[str, set[tuple[str, str]]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            if not isinstance(deco, ast.Call):
                continue
            name = ast.unparse(deco.func)
            if not name.startswith("kopf."):
                continue
            args = [
                a.value if isinstance(a, ast.Constant) else consts.get(ast.unparse(a))
                for a in deco.args
            ]
            if len(args) == 3:
                group, _version, plural = args
            elif len(args) == 2:  # ("v1", "pods"): the core group
                group, plural = "", args[1]
            else:
                continue
            out.setdefault(name, set()).add((group, plural))
    return out


def test_rbac_is_exactly_what_the_operator_code_uses() -> None:
    """Every resource the handlers watch or write is granted, and nothing else is."""
    ops = REPO / "operator/kakugo_operator"
    handlers = (ops / "handlers.py").read_text()
    granted = {
        (g, r): set(rule["verbs"])
        for rule in RULES["namespaced"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    kopf = _kopf_resources(handlers)
    expected: dict[tuple[str, str], set[str]] = {}
    # Kopf lists and watches every resource with a handler or an index.
    for resources in kopf.values():
        for key in resources:
            expected.setdefault(key, set()).update({"list", "watch"})
    # Daemons and deletion handlers: Kopf patches the object (finalizer, annotations), the
    # daemon writes the status subresource.
    for deco in ("kopf.daemon", "kopf.on.delete"):
        for group, plural in kopf.get(deco, set()):
            expected[(group, plural)].add("patch")
            expected.setdefault((group, f"{plural}/status"), set()).add("patch")
    # Writes through k8s.py, with the kinds the daemons create.
    writes = {
        # Served Teacher: created (409: get), its spec patched to teacher.serve.
        ("kakugo.io", "teachers"): {"create", "get", "patch"},
        # LanguageFleet members: created (409: get), spec and annotation patched, removed.
        ("kakugo.io", "languagemodels"): {"create", "get", "patch", "delete"},
        ("", "configmaps"): {"create", "get", "patch"},
        ("batch", "jobs"): {"create", "get", "patch", "delete"},
        ("apps", "deployments"): {"create", "get", "patch"},
        ("", "services"): {"create", "get", "patch"},  # a Teacher spec change rolls out
        ("networking.k8s.io", "networkpolicies"): {"create", "get", "patch"},
        ("", "persistentvolumeclaims"): {"create", "get"},  # model caches: never patched
        ("", "pods/log"): {"get"},
        ("", "events"): {"create"},  # kopf.event
        # A queued Job's Kueue Workload: found by the Job's uid, spec.active patched.
        ("kueue.x-k8s.io", "workloads"): {"list", "patch"},
    }
    for key, verbs in writes.items():
        expected.setdefault(key, set()).update(verbs)
    # The admission webhook (webhook.py): one LocalSubjectAccessReview per question.
    expected[("authorization.k8s.io", "localsubjectaccessreviews")] = {"create"}
    # Owner references with blockOwnerDeletion (kopf.adopt, kopf.append_owner_reference)
    # on what the daemons of each owner kind create: OwnerReferencesPermissionEnforcement
    # wants `update` on the owner's finalizers (tests/e2e proves it on a real API server).
    sources = "".join((ops / f).read_text() for f in ("handlers.py",))
    assert "kopf.adopt(" in sources and "kopf.append_owner_reference(" in sources
    for group, plural in kopf.get("kopf.daemon", set()):
        expected[(group, f"{plural}/finalizers")] = {"update"}
    assert granted == expected, (
        "files/rbac/operator-rules.yaml differs from what the operator uses: "
        f"granted-only {sorted(set(granted.items()) - set(expected.items()))}, "
        f"needed {sorted(set(expected.items()) - set(granted.items()))}"
    )
    # The k8s.py calls these rules assume: a new kind of call needs a new rule.
    k8s = (ops / "k8s.py").read_text()
    assert set(re.findall(r'call\(\s*"(GET|POST|PATCH|DELETE)"', k8s)) == {
        "GET",
        "POST",
        "PATCH",
        "DELETE",
    }
    calls = set(re.findall(r"k8s\.(\w+)\(", handlers))
    assert calls <= {
        "configure",
        "create",
        "merge_patch",
        "delete",
        "pod_log_tail",
        "list_objects",
    }, calls
    kinds = set(
        re.findall(
            r'"kind": "(\w+)"',
            "".join(
                (ops / f).read_text()
                for f in ("builders.py", "teacher.py", "fleet.py")
                if (ops / f).exists()
            ),
        )
    )
    assert kinds <= {
        "ConfigMap",
        "Job",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Teacher",
        "LanguageModel",
    }, kinds
    # The webhook's calls: the reviews (POST) and its configuration's caBundle (GET, PATCH
    # of webhookConfiguration's one resource), nothing else.
    hook = (ops / "webhook.py").read_text()
    assert set(re.findall(r"k8s\.(\w+)\(", hook)) == {"call", "api_path"}
    assert re.findall(r'k8s\.call\(\s*"(\w+)"', hook) == ["POST", "GET", "PATCH"]
    assert re.findall(r'k8s\.api_path\([^,]+,\s*"(\w+)"', hook) == [
        "localsubjectaccessreviews",
        "validatingwebhookconfigurations",
    ]
    (rule,) = RULES["webhookConfiguration"]
    assert (rule["resources"], set(rule["verbs"])) == (
        ["validatingwebhookconfigurations"],
        {"get", "patch"},
    )


def test_metrics_service_and_monitor(default_objects: list, custom_objects: list) -> None:
    svc = one(default_objects, "Service", "kakugo-metrics")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    deploy = one(default_objects, "Deployment")
    assert (
        svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    )
    assert not by_kind(default_objects, "ServiceMonitor")
    assert not by_kind(default_objects, "PrometheusRule")
    sm = one(custom_objects, "ServiceMonitor", "kakugo-op")
    svc = one(custom_objects, "Service", "kakugo-op-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True  # the objects' namespace label
    assert sm["metadata"]["labels"]["release"] == "prom"
    rule = one(custom_objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "KakugoStageStuck",
        "KakugoStageFailureRateHigh",
        "KakugoBudgetNearLimit",
        "KakugoTeacherDown",
    } <= set(alerts)
    assert all(r["labels"]["team"] == "ml" for r in alerts.values())


def test_dashboard_configmap(default_objects: list, custom_objects: list) -> None:
    cm = one(default_objects, "ConfigMap", "kakugo-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["kakugo.json"])
    assert dash["uid"] == "kakugo-overview" and dash["panels"]
    cm = one(custom_objects, "ConfigMap", "kakugo-op-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "kakugo"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "ML"


def test_custom_images_and_pod_settings(custom_objects: list[dict[str, Any]]) -> None:
    pod = one(custom_objects, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example/kakugo-operator@sha256:" + "a" * 64
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert c["envFrom"] == [{"secretRef": {"name": "kakugo-s3"}}]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in c["env"]
    assert one(custom_objects, "ServiceAccount")["metadata"]["annotations"] == {
        "example.com/role": "x"
    }


@pytest.mark.parametrize("which", ["default", "custom"])
def test_rendered_objects_are_valid(
    which: str, default_objects: list, custom_objects: list
) -> None:
    objects = default_objects if which == "default" else custom_objects
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            # Prometheus Operator kinds: not in the Kubernetes schemas; shape checked above.
            assert obj["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
            continue
        if obj["apiVersion"].startswith("cert-manager.io/"):
            # cert-manager kinds: shape checked in test_webhook_with_cert_manager.
            assert obj["kind"] in ("Certificate", "Issuer")
            continue
        kubernetes_validate.validate(obj, "1.30", strict=True)


@pytest.mark.parametrize(
    "bad",
    [
        {"stages": {"specChanges": "sometimes"}},
        {"gpuPrices": {"products": {"NVIDIA-L4": {"on-demand": "cheap"}}}},
        {"watch": {"namespaces": ["Not_A_Namespace"]}},
        {"unknownKey": 1},
        {"images": {"stages": {"repository": ""}}},
        {"crds": {"install": "yes"}},
        {"metrics": {"prometheusRule": {"stuckStageAfter": "soon"}}},
        {"webhook": {"failurePolicy": "Sometimes"}},
        {"webhook": {"url": "http://127.0.0.1:9443"}},
        {"webhook": {"timeoutSeconds": 31}},
        {"webhook": {"allowedExtraArgs": ["trust-remote-code"]}},
        {"webhook": {"certManager": {"issuerRef": {"kind": "Secret", "name": "x"}}}},
        {"images": {"eval": {"repository": "r", "digest": "latest"}}},
        {"operator": {"logFormat": "yaml"}},
        {"metrics": {"teachers": {"kind": "Probe"}}},
        {"metrics": {"prometheusRule": {"stuckStageAfter": "500ms"}}},
        {"metrics": {"prometheusRule": {"runbookBaseUrl": "docs/runbooks.md"}}},
        {"teacher": {"networkPolicy": {"ingressFrom": [{"ports": [80]}]}}},
        {"rbac": {"aggregateRoles": "yes"}},
    ],
)
def test_values_schema_rejects_bad_values(bad: dict[str, Any], tmp_path: Path) -> None:
    helm = tool("helm")
    path = _values_file(tmp_path, bad)
    with pytest.raises(AssertionError, match=r"values don't meet the specifications|schema"):
        run([helm, "template", "x", str(CHART), "--values", path])


def test_notes_render(tmp_path: Path) -> None:
    helm = tool("helm")
    out = run(
        [
            helm,
            "install",
            "kakugo",
            str(CHART),
            "--dry-run=client",
            "--namespace",
            NS,
            "--values",
            _values_file(tmp_path, {"watch": {"namespaces": ["langs"]}}),
        ]
    ).stdout
    notes = out.split("NOTES:", 1)[1]
    assert "kubectl -n langs apply -f yoruba.yaml" in notes
    assert "status.cost.dollars" in notes and "rollout status deployment/kakugo" in notes
    assert "WARNING" not in notes
    # vLLM metrics scraped through the Teachers' NetworkPolicies: say Prometheus needs in.
    values = {"metrics": {"teachers": {"enabled": True}}}
    out = run(
        [
            helm,
            "install",
            "kakugo",
            str(CHART),
            "--dry-run=client",
            "--namespace",
            NS,
            "--values",
            _values_file(tmp_path, values),
        ]
    ).stdout
    assert "teacher.networkPolicy.ingressFrom" in out.split("NOTES:", 1)[1]


# ------------------------------------------------------------------ the admission webhook


def _webhook_handlers() -> dict[str, Any]:
    """What handlers.py registers with @kopf.on.validate: plurals, ids, operations."""
    from kakugo_operator import webhook

    source = (REPO / "operator/kakugo_operator/handlers.py").read_text()
    plurals = {p for _, p in _kopf_resources(source).get("kopf.on.validate", set())}
    return {"plurals": plurals, "path": webhook.PATH, "operations": list(webhook.OPERATIONS)}


def test_webhook_configuration(default_objects: list[dict[str, Any]]) -> None:
    """The chart's configuration calls exactly what the operator serves."""
    served = _webhook_handlers()
    assert served["plurals"] == {"languagemodels", "teachers", "languagefleets"}
    config = one(default_objects, "ValidatingWebhookConfiguration")
    assert config["metadata"]["name"] == f"kakugo-{NS}"
    assert "annotations" not in config["metadata"]  # the operator writes the caBundle
    (hook,) = config["webhooks"]
    assert hook["name"] == "validate.kakugo.io"
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] == 10 and hook["admissionReviewVersions"][0] == "v1"
    assert hook["clientConfig"] == {
        "service": {"name": "kakugo-webhook", "namespace": NS, "port": 443, "path": served["path"]}
    }
    (rule,) = hook["rules"]
    assert rule["apiGroups"] == ["kakugo.io"] and rule["scope"] == "Namespaced"
    assert set(rule["resources"]) == served["plurals"]  # no subresources: status is free
    assert rule["operations"] == served["operations"] == ["CREATE", "UPDATE"]  # no DELETE
    # Namespaced mode: only the watched namespaces, where the operator may ask reviews.
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [NS]}
        ]
    }
    svc = one(default_objects, "Service", "kakugo-webhook")
    assert svc["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    deploy = one(default_objects, "Deployment")
    assert (
        svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    )
    assert not by_kind(default_objects, "Certificate")


def test_webhook_url_and_watched_namespaces(tmp_path: Path) -> None:
    objects = helm_template(
        {
            "webhook": {"url": "https://127.0.0.1:9555/", "failurePolicy": "Ignore"},
            "watch": {"namespaces": ["team-a", "team-b"]},
        },
        namespace=NS,
        tmp=tmp_path,
    )
    (hook,) = one(objects, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["clientConfig"] == {"url": "https://127.0.0.1:9555/validate"}
    assert hook["failurePolicy"] == "Ignore"
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["team-a", "team-b"]
    settings = _settings(objects, tmp_path)
    assert settings.webhook_hosts[-1] == "127.0.0.1"  # the URL's host is in the certificate


def test_webhook_with_cert_manager(custom_objects: list[dict[str, Any]], tmp_path: Path) -> None:
    config = one(custom_objects, "ValidatingWebhookConfiguration")
    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NS}/kakugo-op-webhook"
    }
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 5
    assert "namespaceSelector" not in hook  # cluster-wide: every namespace
    cert = one(custom_objects, "Certificate", "kakugo-op-webhook")
    assert cert["spec"]["secretName"] == "kakugo-op-webhook-tls"
    assert cert["spec"]["dnsNames"][0] == f"kakugo-op-webhook.{NS}.svc"
    assert cert["spec"]["issuerRef"] == {"kind": "Issuer", "name": "kakugo-op-webhook-ca"}
    assert (cert["spec"]["duration"], cert["spec"]["renewBefore"]) == ("720h", "240h")
    ca = one(custom_objects, "Certificate", "kakugo-op-webhook-ca")
    assert ca["spec"]["isCA"] is True
    assert one(custom_objects, "Issuer", "kakugo-op-webhook-ca")["spec"] == {
        "ca": {"secretName": "kakugo-op-webhook-ca"}
    }
    pod = one(custom_objects, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["webhook-tls"]["mountPath"] == "/etc/kakugo-webhook-tls"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"] == "kakugo-op-webhook-tls"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["webhook"] == 9444
    # An issuer of one's own: no CA of the chart's.
    objects = helm_template(
        {
            "webhook": {
                "certManager": {
                    "enabled": True,
                    "issuerRef": {"kind": "ClusterIssuer", "name": "corp-ca"},
                }
            }
        },
        namespace=NS,
        tmp=tmp_path,
    )
    assert [c["metadata"]["name"] for c in by_kind(objects, "Certificate")] == ["kakugo-webhook"]
    assert not by_kind(objects, "Issuer")
    cert = one(objects, "Certificate")
    assert cert["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}
    # No caBundle to write, no cluster right (the aggregated roles are for people).
    assert [r["metadata"]["name"] for r in by_kind(objects, "ClusterRole")] == [
        f"kakugo-{NS}-edit",
        f"kakugo-{NS}-view",
    ]


# ------------------------------------------------------------------ issue 18: operability


def test_aggregated_roles_for_namespace_admins_editors_and_viewers(
    default_objects: list[dict[str, Any]],
) -> None:
    edit = one(default_objects, "ClusterRole", f"kakugo-{NS}-edit")
    view = one(default_objects, "ClusterRole", f"kakugo-{NS}-view")
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in labels
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    kinds = {"languagemodels", "teachers", "languagefleets"}

    def granted(role: dict[str, Any]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["kakugo.io"]
            for resource in rule["resources"]:
                out.setdefault(resource, set()).update(rule["verbs"])
        return out

    edits = granted(edit)
    for kind in kinds:
        assert {"create", "update", "patch", "delete", "get", "list", "watch"} <= edits[kind]
        assert edits[f"{kind}/status"] == {"get", "list", "watch"}  # status is the operator's
    views = granted(view)
    assert set(views) == kinds | {f"{k}/status" for k in kinds}
    assert all(verbs == {"get", "list", "watch"} for verbs in views.values())
    # Not bound to anyone: Kubernetes aggregates them into admin, edit and view.
    bound = {b["roleRef"]["name"] for b in by_kind(default_objects, "ClusterRoleBinding")}
    assert not bound & {edit["metadata"]["name"], view["metadata"]["name"]}


def test_finalizers_rule_for_owner_references() -> None:
    """OwnerReferencesPermissionEnforcement: blockOwnerDeletion needs update on finalizers
    of every kind that owns something (tests/e2e runs with the plugin on)."""
    (rule,) = [r for r in RULES["namespaced"] if any("/finalizers" in x for x in r["resources"])]
    assert rule == {
        "apiGroups": ["kakugo.io"],
        "resources": [
            "languagemodels/finalizers",
            "teachers/finalizers",
            "languagefleets/finalizers",
        ],
        "verbs": ["update"],
    }


def test_image_digests_for_every_kind(tmp_path: Path) -> None:
    digests = {
        k: f"sha256:{c * 64}"
        for k, c in zip(("stages", "trainer", "eval", "teacher"), "1234", strict=True)
    }
    values = {
        "image": {"digest": "sha256:" + "0" * 64},
        "images": {k: {"repository": f"r.example/{k}", "digest": d} for k, d in digests.items()},
    }
    objects = helm_template(values, namespace=NS, tmp=tmp_path)
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "ghcr.io/kakugo/kakugo-operator@sha256:" + "0" * 64
    settings = _settings(objects, tmp_path)
    assert settings.images == {k: f"r.example/{k}@{d}" for k, d in digests.items()}


def test_teacher_monitor_switch(
    default_objects: list[dict[str, Any]], custom_objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    from kakugo_operator import naming

    assert not by_kind(default_objects, "PodMonitor")
    objects = helm_template(
        {"metrics": {"teachers": {"enabled": True}}, "watch": {"namespaces": ["a", "b"]}},
        namespace=NS,
        tmp=tmp_path,
    )
    pm = one(objects, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    # It selects what the operator labels a Teacher's Pods (and its Service) with.
    labels = naming.teacher_labels("gpt")
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")  # the server's port
    assert endpoint["relabelings"] == [
        {
            "sourceLabels": ["__meta_kubernetes_pod_label_kakugo_io_teacher"],
            "targetLabel": "teacher",
        }
    ]
    assert endpoint["metricRelabelings"][0]["replacement"] == "vllm:$1"
    # ServiceMonitor, cluster-wide: every namespace, the Service's label.
    sm = one(custom_objects, "ServiceMonitor", "kakugo-op-teachers")
    assert sm["spec"]["namespaceSelector"] == {"any": True}
    assert sm["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["relabelings"][0]["sourceLabels"] == [
        "__meta_kubernetes_service_label_kakugo_io_teacher"
    ]
    from kakugo_operator.settings import OperatorSettings
    from kakugo_operator.teacher import deployment, service

    from kakugo_stages.spec import TeacherSpec

    spec = TeacherSpec()
    (container,) = deployment("gpt", "ns", spec, OperatorSettings(), 1)["spec"]["template"]["spec"][
        "containers"
    ]
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert [p["name"] for p in service("gpt", "ns", spec)["spec"]["ports"]] == ["http"]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def test_every_alert_links_its_runbook(custom_objects: list[dict[str, Any]]) -> None:
    rule = one(custom_objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    runbooks = (REPO / "docs/runbooks.md").read_text()
    anchors = _anchors(runbooks)
    base = "https://github.com/kakugo/kakugo/blob/main/docs/runbooks.md#"
    for name, alert in alerts.items():
        url = alert["annotations"]["runbook_url"]
        assert url == base + name.lower()
        assert name.lower() in anchors, f"docs/runbooks.md has no heading for {name}"
        # Specific: what it means, what to look at, what to do.
        section = runbooks.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Meaning.**", "**Look at.**", "**Do.**"):
            assert part in section, f"{name}: no {part}"
    # No runbook without its alert.
    headings = set(re.findall(r"^## (\w+)$", runbooks, re.M))
    assert headings == set(alerts)


def test_stuck_stage_alert_is_per_languagemodel(tmp_path: Path) -> None:
    objects = helm_template(
        {
            "metrics": {
                "prometheusRule": {
                    "enabled": True,
                    "stuckStageAfter": "1d6h30m",
                    "runbookBaseUrl": "https://wiki.example/kakugo/",
                }
            }
        },
        namespace=NS,
        tmp=tmp_path,
    )
    rule = one(objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    stuck = alerts["KakugoStageStuck"]
    assert "kakugo_languagemodel_last_progress_timestamp_seconds" in stuck["expr"]
    assert stuck["expr"].split(">")[-1].strip() == str(86400 + 6 * 3600 + 30 * 60)
    assert "sum" not in stuck["expr"]  # one alert per LanguageModel, its labels kept
    assert "$labels.languagemodel" in stuck["annotations"]["summary"]
    assert stuck["annotations"]["runbook_url"] == "https://wiki.example/kakugo#kakugostagestuck"
