"""A LanguageModel's served model (`spec.serve`): the tuned model behind a vLLM OpenAI
server (Deployment + Service, built by `server.py` as a Teacher's are), scaled to zero when
idle.

`decide_serve` is pure, a part of the LanguageModel decision: (spec, whether the object is
Ready, the train stage's fingerprint, the last `status.serve`, the Deployment and Service,
a look at vLLM's /metrics, the wake annotation, now) -> objects to create, patches, the
`Serving` condition and `status.serve`.

- **When.** Nothing is created before the LanguageModel is Ready (every stage succeeded, so
  the train stage's `model/` is in `status.artifacts`). While it is not Ready again (a spec
  change retrains it) the server is scaled to zero: the model it would load is being
  replaced. Without `spec.serve` (or with `enabled: false`) it is scaled to zero too; the
  objects stay, owned by the LanguageModel, until it is deleted.
- **The model files.** An init container of the stages image runs `kakugo fetch-model
  <run>/model /scratch/model` (S3 with the spec's endpoint and credentials Secret, or the
  storage PVC mounted read-only), and vLLM serves `--model /scratch/model` under the
  LanguageModel's name (`--served-model-name`). The Pod template carries the train
  stage's fingerprint (`kakugo.io/model-version`): a retrained model rolls out.
- **Use.** The server counts as used when (a) vLLM's /metrics shows requests running or
  waiting (`vllm:num_requests_running`, `vllm:num_requests_waiting`), or its finished
  request counter (`vllm:request_success_total`) moved since the last look; (b) the
  annotation `kakugo.io/serve-wake` got a new value (how a client brings it back from
  zero); (c) a new model version was just served. After `idleSeconds` without use it scales
  to zero; the operator looks at /metrics every `PROBE_SECONDS` while it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kakugo_operator import builders, naming, pods, server
from kakugo_operator.conditions import Want
from kakugo_operator.observe import iso, parse_time
from kakugo_operator.settings import OperatorSettings
from kakugo_stages.contract import RunSpec, fetch_model_command, served_model_uri
from kakugo_stages.spec import SERVED_MODEL, LanguageModelSpec, ServeSpec, TeacherSpec
from kakugo_stages.status import ServeStatus

#: A new value (any: a timestamp) on the LanguageModel counts as use: scale up from zero.
WAKE_ANNOTATION = "kakugo.io/serve-wake"
#: On the server's Pod template: the train stage's fingerprint of the model it serves.
MODEL_VERSION_ANNOTATION = "kakugo.io/model-version"
#: How often the operator looks at a running server's /metrics.
PROBE_SECONDS = 15.0
#: The condition of a LanguageModel with spec.serve.
CONDITION = "Serving"
FETCH_CONTAINER = "fetch-model"


# ------------------------------------------------------------------ vLLM's /metrics


@dataclass(frozen=True)
class Sample:
    """One look at vLLM's /metrics: requests in flight, and finished requests so far."""

    in_flight: float
    finished: float


_METRIC = re.compile(r"^(vllm:[a-z_]+)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def parse_metrics(text: str) -> Sample | None:
    """The sample in a Prometheus text page of vLLM (summed over its label sets: models,
    finish reasons); None when the page has none of vLLM's request metrics."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if m := _METRIC.match(line):
            try:
                value = float(m.group(3))
            except ValueError:
                continue
            sums[m.group(1)] = sums.get(m.group(1), 0.0) + value
    keys = ("vllm:num_requests_running", "vllm:num_requests_waiting")
    if not any(k in sums for k in (*keys, "vllm:request_success_total")):
        return None
    return Sample(sum(sums.get(k, 0.0) for k in keys), sums.get("vllm:request_success_total", 0.0))


async def scrape(url: str, timeout: float = 3.0) -> Sample | None:
    """GET `url` (a server's /metrics); None when it does not answer or has no sample."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                return None
            return parse_metrics(await response.text())
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return None


def metrics_url(name: str, namespace: str, raw_spec: dict[str, Any]) -> str:
    port = int(((raw_spec.get("serve") or {}).get("port")) or 8000)
    return f"http://{naming.serve_name(name)}.{namespace}.svc:{port}/metrics"


# ------------------------------------------------------------------ the objects


def server_spec(name: str, serve: ServeSpec) -> TeacherSpec:
    """The served model as the server builders take it: vLLM serves the model copied to
    the scratch volume, under the LanguageModel's name."""
    return serve.server(served_model_name=name)


def fetch_container(
    run: RunSpec, settings: OperatorSettings, like: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The init container that copies the model to the scratch volume (hardened like the
    server's container `like`), and the volumes it needs beside the Pod's."""
    env, env_from = builders.storage_env(run)
    volumes, mounts = builders.storage_volume(run, read_only=True)
    init: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": settings.images["stages"],
        "imagePullPolicy": settings.image_pull_policy,
        "command": fetch_model_command(served_model_uri(run.run_uri)),
        "env": [*env, {"name": "HF_HUB_DISABLE_PROGRESS_BARS", "value": "1"}],
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
        "volumeMounts": mounts,
    }
    if env_from:
        init["envFrom"] = env_from
    pods.harden_init(init, like)
    return init, volumes


def deployment(
    run: RunSpec,
    serve: ServeSpec,
    settings: OperatorSettings,
    replicas: int,
    model_version: str,
) -> dict[str, Any]:
    def prepare(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
        init, volumes = fetch_container(run, settings, container)
        pod_spec["initContainers"] = [init]
        pod_spec["volumes"] += volumes

    spec = server_spec(run.name, serve)
    return server.deployment(
        naming.serve_name(run.name),
        run.namespace,
        spec,
        settings,
        replicas,
        labels=naming.serve_labels(run.name, run.language.code),
        match_labels={naming.SERVE_LABEL: naming.label_value(run.name)},
        pod_template=run.spec.resources.pod_template_for(SERVED_MODEL),
        prepare=prepare,
        annotations={MODEL_VERSION_ANNOTATION: model_version},
    )


def service(run: RunSpec, serve: ServeSpec) -> dict[str, Any]:
    return server.service(
        naming.serve_name(run.name),
        run.namespace,
        serve.port,
        naming.serve_labels(run.name, run.language.code),
        {naming.SERVE_LABEL: naming.label_value(run.name)},
    )


# ------------------------------------------------------------------ the decision


@dataclass(frozen=True)
class ServeSeen:
    """What the handler saw of the served model."""

    deployment: dict[str, Any] | None = None
    service: dict[str, Any] | None = None
    sample: Sample | None = None  # None: not looked at, or no answer
    wake: str | None = None  # the WAKE_ANNOTATION value


@dataclass
class ServePlan:
    status: ServeStatus | None = None
    condition: Want | None = None
    create: list[dict[str, Any]] = field(default_factory=list)
    #: (apiVersion, plural, name, merge patch)
    patches: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


def _used(prev: ServeStatus, seen: ServeSeen, version: str | None) -> tuple[bool, str]:
    """Whether something used the server since the last look, and what."""
    if seen.wake is not None and seen.wake != prev.wake:
        return True, f"annotation {WAKE_ANNOTATION}={seen.wake}"
    if (sample := seen.sample) is not None:
        if sample.in_flight > 0:
            return True, f"{sample.in_flight:g} request(s) in flight"
        if prev.requests is not None and sample.finished != prev.requests:
            return True, "requests finished since the last look"
    if version is not None and version != prev.model_version:
        return True, "a new model"
    return False, ""


def decide_serve(
    run: RunSpec,
    spec: LanguageModelSpec,
    ready: bool,
    model_version: str | None,
    prev: ServeStatus | None,
    seen: ServeSeen,
    now: datetime,
    settings: OperatorSettings,
) -> ServePlan:
    """The served model's plan (see the module's docstring). `ready`: the LanguageModel is
    Ready; `model_version`: the train stage's fingerprint while its model is there."""
    serve = spec.serve
    deploy = seen.deployment
    if serve is None and deploy is None:
        return ServePlan()  # never served: nothing to say
    plan = ServePlan()
    prev = prev or ServeStatus()
    serving = serve is not None and serve.enabled
    version = model_version if ready and serving else None
    if deploy is None and version is None:
        plan.status = ServeStatus(phase="WaitingForModel" if serving else "Disabled")
        plan.condition = (
            Want(
                CONDITION,
                False,
                "WaitingForModel",
                "the tuned model is served once the LanguageModel is Ready",
            )
            if serving
            else Want(CONDITION, False, "Disabled", "spec.serve.enabled is false")
        )
        return plan

    used, why = _used(prev, seen, version) if serving else (False, "")
    last_used = iso(now) if used else (prev.last_used or iso(now))
    idle = float(serve.idle_seconds) if serve is not None else 0.0
    idle_for = (now - (parse_time(last_used) or now)).total_seconds()
    # Switched off, or being retrained: none.
    want = 0 if version is None else server.wanted_replicas([why] if used else [], idle, idle_for)
    current = server.replicas_of(deploy) if deploy is not None else want
    served_version = version or prev.model_version or ""
    if serve is not None:
        want_deploy = server.desired_deployment(
            deployment(run, serve, settings, want, served_version)
        )
        want_service = server.desired_service(service(run, serve))
        if deploy is None:
            plan.create.append(want_deploy)
        elif patch := server.deployment_patch(deploy, want_deploy):
            plan.patches.append(("apps/v1", "deployments", naming.serve_name(run.name), patch))
            if "spec" in patch:
                plan.events.append(
                    ("Normal", "RollingOut", "the served model's server: spec or model changed")
                )
        if seen.service is None:
            plan.create.append(want_service)
        elif patch := server.service_patch(seen.service, want_service):
            plan.patches.append(("v1", "services", naming.serve_name(run.name), patch))
    if deploy is not None and current != want:
        plan.patches.append(
            ("apps/v1", "deployments", naming.serve_name(run.name), {"spec": {"replicas": want}})
        )
        plan.events.append(
            (
                "Normal",
                "ServeScaledUp" if want else "ServeScaledToZero",
                why if want else f"no use for {idle_for:.0f}s (serve.idleSeconds {idle:g})",
            )
        )
    if want and idle > 0:
        plan.requeue_after = max(min(idle - idle_for, PROBE_SECONDS), 0.5)
    ready_replicas = server.ready_replicas(deploy)
    rolling = any(p[0] == "apps/v1" and "template" in p[3].get("spec", {}) for p in plan.patches)
    rolling = rolling or server.rolling_out(deploy)
    up = want > 0 and current > 0 and ready_replicas > 0 and not rolling
    if up:
        reason, message = "ServerReady", f"{ready_replicas} replica(s) ready"
    elif not serving:
        reason, message = "Disabled", "spec.serve is unset or not enabled"
    elif version is None:
        reason, message = "WaitingForModel", "the LanguageModel is not Ready: a new model comes"
    elif want == 0:
        reason, message = "ScaledToZero", f"no use for {idle_for:.0f}s (idleSeconds {idle:g})"
    elif rolling:
        reason, message = "RollingOut", "rolling the new spec or model out to the vLLM server"
    else:
        reason, message = "Starting", "copying the model and waiting for vLLM's readiness"
    plan.condition = Want(CONDITION, up, reason, message)
    port = serve.port if serve is not None else 8000
    plan.status = ServeStatus(
        phase="Ready"
        if up
        else "Disabled"
        if not serving
        else "WaitingForModel"
        if version is None
        else "Idle"
        if want == 0
        else "Starting",
        url=server.url(naming.serve_name(run.name), run.namespace, port),
        model=run.name,
        model_version=served_version or None,
        replicas=want,
        ready_replicas=ready_replicas,
        last_used=last_used,
        # Scaled to zero, the next server counts from 0 again: no baseline to compare.
        requests=None
        if want == 0
        else seen.sample.finished
        if seen.sample is not None
        else prev.requests,
        wake=seen.wake if seen.wake is not None else prev.wake,
    )
    return plan
