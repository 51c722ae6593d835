"""`kakugo render`: every object the operator would create for a manifest, built by the
operator's own code, so that platform teams can review, diff and policy-check them (kubectl
diff, conftest, checkov, kube-linter) before anything is applied.

For a LanguageModel: its spec ConfigMap, the Job of every stage (first attempt), with
`teacher.serve` its served Teacher with that Teacher's objects, and with `serve` the
served model's Deployment and Service (made once it is Ready). For a Teacher: its
Deployment (serving: one replica), Service, model-cache PVC (when the operator makes it)
and NetworkPolicy (when the settings ask for one). For a LanguageFleet: its member
LanguageModels, as the operator writes them, and theirs. A LanguageModel whose
`teacher.ref` names a Teacher of the same file gets that Teacher's URL (and API key
reference) in its stages' environment. Owner references are left out: the operator adds
them when it creates the objects.

Settings (images, pull policy, the stages' ServiceAccount, default storage) come from an
operator settings file, the Helm chart's values (`settings_from_values`, the same
translation as the chart's `kakugo.settings` template) and flags, in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from kakugo_operator import builders, naming, reconcile, server, teacher
from kakugo_operator import fleet as fleet_mod
from kakugo_operator import serve as serve_mod
from kakugo_operator import settings as settings_mod
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import (
    STAGES,
    ManifestError,
    RunSpec,
    fingerprints,
    load_documents,
    served_model_name,
    validate_spec,
)
from kakugo_stages.spec import SERVED_TEACHER, TeacherSpec

KINDS = ("LanguageModel", "Teacher", "LanguageFleet")


@dataclass
class Rendered:
    objects: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _image(image: Mapping[str, Any], app_version: str) -> str:
    """repository:tag or repository@digest, as the chart's `kakugo.image` helper."""
    if image.get("digest"):
        return f"{image['repository']}@{image['digest']}"
    return f"{image['repository']}:{image.get('tag') or app_version}"


def settings_from_values(
    values: Mapping[str, Any], app_version: str, base: OperatorSettings | None = None
) -> OperatorSettings:
    """The settings the chart gives the operator for these values (its `kakugo.settings`
    template, for what decides the objects: images, pull policy, the stages'
    ServiceAccount, default storage, GPU prices, the finished Jobs' TTL)."""
    stages = values.get("stages") or {}
    images = values.get("images") or {}
    data: dict[str, Any] = {
        "images": {
            kind: _image(images[kind], app_version)
            for kind in settings_mod.DEFAULT_IMAGES
            if kind in images
        },
        "imagePullPolicy": stages.get("imagePullPolicy", "IfNotPresent"),
    }
    if stages.get("serviceAccount"):
        data["serviceAccount"] = stages["serviceAccount"]
    if stages.get("storageUri"):
        data["storageUri"] = stages["storageUri"]
    if "ttlSecondsAfterFinished" in stages:
        data["jobTtlSecondsAfterFinished"] = stages["ttlSecondsAfterFinished"]
    prices = values.get("gpuPrices") or {}
    if prices.get("products"):
        data["gpuPrices"] = prices["products"]
    for key, setting in (
        ("defaultProduct", "defaultGpuProduct"),
        ("defaultCapacityType", "defaultCapacityType"),
    ):
        if prices.get(key):
            data[setting] = prices[key]
    where = dict.fromkeys(data, "chart values")
    return settings_mod.from_mapping(data, base, where)


def chart_values(path: Path) -> tuple[dict[str, Any], str]:
    """A chart's values file (or the chart folder) and the chart's appVersion (its
    Chart.yaml beside the values; "latest" without one)."""
    values_file = path / "values.yaml" if path.is_dir() else path
    values = yaml.safe_load(values_file.read_text()) or {}
    chart = values_file.parent / "Chart.yaml"
    app_version = "latest"
    if chart.exists():
        app_version = str((yaml.safe_load(chart.read_text()) or {}).get("appVersion") or "latest")
    return values, app_version


def _teacher_objects(
    name: str, namespace: str, spec: TeacherSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """What the operator makes for a Teacher: its Deployment and Service, the model
    cache's PVC when the operator creates it, and its NetworkPolicy when the setting
    asks for one."""
    objects = [
        teacher.desired_deployment(name, namespace, spec, settings, 1),
        teacher.desired_service(name, namespace, spec),
    ]
    if (pvc := teacher.model_cache_pvc(name, namespace, spec)) is not None:
        objects.append(pvc)
    if (policy := teacher.desired_network_policy(name, namespace, spec, settings)) is not None:
        objects.append(policy)
    return objects


def _meta(doc: Any) -> tuple[str, str, str]:
    meta = (doc.get("metadata") if isinstance(doc, Mapping) else None) or {}
    kind = str(doc.get("kind") or "") if isinstance(doc, Mapping) else ""
    return kind, str(meta.get("name") or ""), str(meta.get("namespace") or "")


def _language_model(
    name: str,
    namespace: str,
    raw_spec: dict[str, Any],
    settings: OperatorSettings,
    teachers: Mapping[tuple[str, str], TeacherSpec],
    out: Rendered,
) -> None:
    obs = reconcile.Observed(name, namespace, 1, raw_spec, {}, [], [], None, datetime.now(UTC))
    parsed = reconcile.parse_spec(obs, settings)
    if isinstance(parsed, str):
        out.errors.append(f"LanguageModel {namespace}/{name}: {parsed}")
        return
    spec = parsed
    root = spec.storage.root_uri if spec.storage else str(settings.storage_uri)
    run = RunSpec(name, namespace, spec, root)
    out.objects.append(builders.config_map(run))
    tenv = builders.TeacherEnv()
    served: dict[str, Any] | None = None
    if spec.teacher.serve is not None:
        create, _ = reconcile.served_teacher_actions(
            obs, spec.resources.pod_template_for(SERVED_TEACHER)
        )
        served = create
        tname = naming.served_teacher_name(name)
        tspec = validate_spec("Teacher", (create or {}).get("spec") or {}, f"{namespace}/{tname}")
        tenv = builders.TeacherEnv(
            teacher.url(tname, namespace, tspec), served_model_name(tspec), tspec.api_key_secret_ref
        )
    elif spec.teacher.ref is not None:
        ref = spec.teacher.ref.name
        if (namespace, ref) in teachers:
            tspec = teachers[(namespace, ref)]
            tenv = builders.TeacherEnv(
                teacher.url(ref, namespace, tspec),
                served_model_name(tspec),
                tspec.api_key_secret_ref,
            )
        else:
            out.notes.append(
                f"LanguageModel {namespace}/{name}: Teacher {ref} is not in the file; its "
                "stages get its URL from its status at run time"
            )
    for stage in STAGES:
        out.objects.append(builders.job(run, stage, 1, settings, tenv))
    if served is not None:
        tname = served["metadata"]["name"]
        out.objects.append(served)
        out.objects += _teacher_objects(tname, namespace, tspec, settings)
    if spec.serve is not None and spec.serve.enabled:
        version = fingerprints(run.spec_dict())["train"]  # what the trained model will carry
        deploy = serve_mod.deployment(run, spec.serve, settings, 1, version)
        out.objects.append(server.desired_deployment(deploy))
        out.objects.append(server.desired_service(serve_mod.service(run, spec.serve)))
        out.notes.append(
            f"LanguageModel {namespace}/{name}: the served model's Deployment and Service "
            "are created once it is Ready"
        )


def render_documents(
    docs: Iterable[Any], settings: OperatorSettings, default_namespace: str = "default"
) -> Rendered:
    """The objects for every LanguageModel, Teacher and LanguageFleet of the documents."""
    out = Rendered()
    docs = [d for d in docs if isinstance(d, Mapping)]
    teachers: dict[tuple[str, str], TeacherSpec] = {}
    for doc in docs:
        kind, name, namespace = _meta(doc)
        if kind == "Teacher":
            namespace = namespace or default_namespace
            try:
                teachers[(namespace, name)] = validate_spec(
                    "Teacher", doc.get("spec") or {}, f"{namespace}/{name}"
                )
            except ManifestError as exc:
                out.errors += [f"Teacher {namespace}/{name}: {e}" for e in exc.errors]
    for doc in docs:
        kind, name, namespace = _meta(doc)
        namespace = namespace or default_namespace
        if kind == "Teacher" and (namespace, name) in teachers:
            out.objects += _teacher_objects(name, namespace, teachers[(namespace, name)], settings)
        elif kind == "LanguageModel":
            _language_model(name, namespace, dict(doc.get("spec") or {}), settings, teachers, out)
        elif kind == "LanguageFleet":
            plan = fleet_mod.decide_fleet(
                name, namespace, 1, dict(doc.get("spec") or {}), {}, [], {}, datetime.now(UTC)
            )
            for bad in plan.status.invalid_languages:
                out.errors += [f"LanguageFleet {namespace}/{name}: {msg}" for msg in bad.errors]
            stalled = next((c for c in plan.status.conditions if c.type == "Stalled"), None)
            if stalled is not None and stalled.is_true:
                out.errors.append(f"LanguageFleet {namespace}/{name}: {stalled.message}")
            for member in plan.create:
                out.objects.append(member)
                meta = member["metadata"]
                _language_model(
                    meta["name"], namespace, dict(member["spec"]), settings, teachers, out
                )
        elif kind not in KINDS:
            out.notes.append(f"{kind or 'a document without a kind'} {name}: not rendered")
    return out


def render_file(
    path: str | Path, settings: OperatorSettings, default_namespace: str = "default"
) -> Rendered:
    return render_documents(load_documents(path), settings, default_namespace)


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(objects), sort_keys=False, allow_unicode=True, width=100)
