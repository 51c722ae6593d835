"""Operator settings: images, default storage, GPU prices, retries, teacher idling, the
admission webhook.

Read from a YAML file (`KAKUGO_OPERATOR_SETTINGS`, the Helm chart mounts one) and then
from `KAKUGO_*` environment variables, which win. Everything has a working default, so
`kakugo operator` starts with no configuration at all. Validated by pydantic: an unknown
key or a bad value fails at startup with a `SettingsError` naming the key and where it
came from (the file or the environment variable).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

SETTINGS_FILE_ENV = "KAKUGO_OPERATOR_SETTINGS"

DEFAULT_IMAGES = {
    "stages": "ghcr.io/kakugo/kakugo-stages:latest",
    "trainer": "ghcr.io/kakugo/kakugo-trainer:latest",
    "eval": "ghcr.io/kakugo/kakugo-eval:latest",
    "teacher": "vllm/vllm-openai:latest",
}

# On-demand list prices per GPU-hour (2026, major clouds); the chart overrides them.
DEFAULT_GPU_PRICES = {
    ("NVIDIA-H100-80GB-HBM3", "on-demand"): Decimal("4.00"),
    ("NVIDIA-H100-80GB-HBM3", "spot"): Decimal("2.00"),
    ("NVIDIA-A100-SXM4-80GB", "on-demand"): Decimal("2.50"),
    ("NVIDIA-A100-SXM4-80GB", "spot"): Decimal("1.20"),
    ("NVIDIA-L4", "on-demand"): Decimal("0.80"),
    ("NVIDIA-L4", "spot"): Decimal("0.35"),
}

#: Environment variables and the settings they set (beside KAKUGO_IMAGE_<KIND>).
ENV_KEYS = {
    "KAKUGO_STORAGE_URI": "storageUri",
    "KAKUGO_BACKOFF_BASE_SECONDS": "backoffBaseSeconds",
    "KAKUGO_BACKOFF_MAX_SECONDS": "backoffMaxSeconds",
    "KAKUGO_RETRY_BUDGET": "retryBudget",
    "KAKUGO_TEACHER_IDLE_SECONDS": "teacherIdleSeconds",
    "KAKUGO_RESYNC_SECONDS": "resyncSeconds",
    "KAKUGO_METRICS_PORT": "metricsPort",
    "KAKUGO_SPEC_CHANGES": "specChanges",
    "KAKUGO_DEFAULT_GPU_PRODUCT": "defaultGpuProduct",
    "KAKUGO_NAMESPACES": "namespaces",
    "KAKUGO_WEBHOOK_PORT": "webhookPort",
    "KAKUGO_WEBHOOK_HOSTS": "webhookHosts",
    "KAKUGO_WEBHOOK_CONFIGURATION": "webhookConfiguration",
    "KAKUGO_WEBHOOK_CERT_DIR": "webhookCertDir",
    "KAKUGO_WEBHOOK_CHECK_SECONDS": "webhookCheckSeconds",
    "KAKUGO_ADMISSION_TRUSTED_USERS": "admissionTrustedUsers",
    "KAKUGO_ALLOWED_IMAGES": "allowedImages",
    "KAKUGO_ALLOWED_EXTRA_ARGS": "allowedExtraArgs",
    "KAKUGO_JOB_TTL_SECONDS_AFTER_FINISHED": "jobTtlSecondsAfterFinished",
    "KAKUGO_TEACHER_NETWORK_POLICY": "teacherNetworkPolicy",
}

#: Settings that are lists; a `KAKUGO_*` variable gives them comma-separated.
LIST_KEYS = (
    "namespaces",
    "webhook_hosts",
    "admission_trusted_users",
    "allowed_images",
    "allowed_extra_args",
)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the key and its source."""


class OperatorSettings(BaseModel):
    """Everything the operator needs that is not in a LanguageModel's spec."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    images: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_IMAGES))
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = None
    #: Storage root for LanguageModels whose spec has no `storage`.
    storage_uri: str | None = None
    #: $ per GPU-hour keyed by (nvidia.com/gpu.product, capacity type).
    gpu_prices: dict[tuple[str, str], Decimal] = Field(
        default_factory=lambda: dict(DEFAULT_GPU_PRICES)
    )
    default_gpu_product: str = Field(default="NVIDIA-H100-80GB-HBM3", min_length=1)
    default_capacity_type: str = Field(default="on-demand", min_length=1)
    #: Retry n waits backoff_base * 2**(n-1), at most backoff_max.
    backoff_base_seconds: float = Field(default=30.0, gt=0)
    backoff_max_seconds: float = Field(default=1800.0, gt=0)
    #: Failed attempts allowed per stage (evictions and preemptions are free).
    retry_budget: int = Field(default=3, ge=0)
    #: What a spec change does to finished stages: "rerun" the changed ones, or "refuse".
    spec_changes: Literal["rerun", "refuse"] = "rerun"
    #: Overrides every Teacher's spec.idleSeconds when set (tests use 1).
    teacher_idle_seconds: float | None = Field(default=None, ge=0)
    #: Namespaces to watch; empty means all (`-A`).
    namespaces: tuple[str, ...] = ()
    #: Re-read the world at least this often, even without events.
    resync_seconds: float = Field(default=30.0, gt=0)
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    #: Lines of a failed Pod's log quoted in Stalled messages and Events.
    log_tail_lines: int = Field(default=20, ge=0)
    #: Finished stage Jobs (and their Pods) are deleted this long after they finish
    #: (ttlSecondsAfterFinished); None keeps them until their LanguageModel goes. The
    #: operator records an attempt when it sees it finish, long before.
    job_ttl_seconds_after_finished: int | None = Field(default=7 * 86400, ge=0)
    #: Give every Teacher a NetworkPolicy (owned by it) that admits only the teacher
    #: stages' Pods of its namespace, and `teacher_ingress_from`, to its server's port.
    teacher_network_policy: bool = True
    #: More NetworkPolicy peers (`from` entries: podSelector, namespaceSelector, ipBlock)
    #: admitted to Teachers, e.g. the Prometheus that scrapes vLLM's /metrics (on the same
    #: port as the API, which the API key guards).
    teacher_ingress_from: tuple[dict[str, Any], ...] = ()

    # The admission webhook (webhook.py, admission.py; README "Trust model").
    #: HTTPS port of the validating admission webhook; 0: no webhook server (tests of the
    #: reconciliation only; the chart always serves it).
    webhook_port: int = Field(default=9443, ge=0, le=65535)
    webhook_address: str = "0.0.0.0"
    #: Names (DNS names or IP addresses) by which the API server reaches the webhook: the
    #: subject alternative names of the operator's own serving certificate.
    webhook_hosts: tuple[str, ...] = Field(default=("localhost", "127.0.0.1"), min_length=1)
    #: A folder with tls.crt and tls.key (cert-manager's Secret): served, and reloaded when
    #: they change. Unset: the operator makes its own CA and serving certificate.
    webhook_cert_dir: str | None = None
    #: The ValidatingWebhookConfiguration whose caBundle the operator keeps equal to its
    #: own CA (only without webhook_cert_dir; cert-manager's CA injector does it then).
    webhook_configuration: str | None = None
    #: Lifetime of the operator's own serving certificate; renewed at two thirds of it
    #: (the CA stays, so the caBundle does not change).
    webhook_cert_lifetime_seconds: float = Field(default=30 * 86400.0, ge=10)
    #: How often the webhook checks its caBundle, its certificate files and its renewal.
    webhook_check_seconds: float = Field(default=30.0, gt=0)
    #: Users whose writes skip the permission checks (validation still runs): the
    #: operator's own ServiceAccount, which writes fleet members and served Teachers
    #: from objects the webhook already checked for their authors.
    admission_trusted_users: tuple[str, ...] = ()
    #: Images a spec may name (Teacher.spec.image, teacher.serve.image) for users who may
    #: not create Pods, beside `images` (always allowed). An entry ending in `*` is a
    #: prefix: `registry.example/vllm/*`.
    allowed_images: tuple[str, ...] = ()
    #: vLLM arguments (flag names, e.g. --enable-prefix-caching) a spec's extraArgs may
    #: use for users who may not create Pods; default none.
    allowed_extra_args: tuple[str, ...] = ()

    @field_validator("images")
    @classmethod
    def _known_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(DEFAULT_IMAGES))
        if unknown:
            raise ValueError(
                f"unknown image kind(s) {unknown}; kinds are {', '.join(DEFAULT_IMAGES)}"
            )
        return {**DEFAULT_IMAGES, **value}

    @field_validator(*LIST_KEYS, mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):  # KAKUGO_NAMESPACES=a,b
            return tuple(n.strip() for n in value.split(",") if n.strip())
        return tuple(value or ())

    @field_validator("webhook_cert_dir", "webhook_configuration", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return value or None

    def image_for(self, stage: str) -> str:
        """The image of the stage's declared kind (images/: the data stages share one)."""
        from kakugo_stages.contract import decl

        return self.images[decl(stage).image]

    def gpu_price(self, product: str | None, capacity: str | None) -> Decimal:
        """$ per GPU-hour; unknown products fall back to the default product's price."""
        product = product or self.default_gpu_product
        capacity = capacity or self.default_capacity_type
        for key in (
            (product, capacity),
            (product, self.default_capacity_type),
            (self.default_gpu_product, capacity),
            (self.default_gpu_product, self.default_capacity_type),
        ):
            if key in self.gpu_prices:
                return self.gpu_prices[key]
        return Decimal(0)

    def backoff(self, failures: int) -> float:
        """Seconds before the retry that follows the `failures`-th failure."""
        return min(self.backoff_base_seconds * 2 ** max(failures - 1, 0), self.backoff_max_seconds)


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def _prices(raw: Any, where: str) -> dict[tuple[str, str], Decimal]:
    # YAML shape: {NVIDIA-H100-80GB-HBM3: {on-demand: "4.00", spot: "2.00"}}
    if not isinstance(raw, Mapping):
        raise SettingsError(
            f"operator setting gpuPrices ({where}): expected a mapping "
            "product -> capacity type -> dollars per GPU-hour"
        )
    out: dict[tuple[str, str], Decimal] = {}
    for product, by_capacity in raw.items():
        if not isinstance(by_capacity, Mapping):
            raise SettingsError(
                f"operator setting gpuPrices.{product} ({where}): expected a "
                "mapping capacity type -> dollars per GPU-hour"
            )
        for capacity, price in by_capacity.items():
            try:
                value = Decimal(str(price))
            except InvalidOperation:
                value = Decimal(-1)
            if not value.is_finite() or value < 0:
                raise SettingsError(
                    f"operator setting gpuPrices.{product}.{capacity} "
                    f"({where}): not a price: {price!r}"
                )
            out[(str(product), str(capacity))] = value
    return out


def from_mapping(
    data: Mapping[str, Any],
    base: OperatorSettings | None = None,
    sources: Mapping[str, str] | None = None,
) -> OperatorSettings:
    """Settings from a camelCase or snake_case mapping (the Helm values' shape) over
    `base`. `sources`: key -> where it came from, for error messages."""
    base = base or OperatorSettings()
    sources = sources or {}
    fields = OperatorSettings.model_fields
    changes: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in data.items():
        where = sources.get(key, "settings")
        snake = _snake(str(key))
        if snake not in fields:
            raise SettingsError(
                f"unknown operator setting {key!r} ({where}); known: "
                f"{', '.join(sorted(to_camel(f) for f in fields))}"
            )
        if snake == "images":
            if not isinstance(value, Mapping):
                raise SettingsError(
                    f"operator setting images ({where}): expected a mapping "
                    f"kind -> image, kinds {', '.join(DEFAULT_IMAGES)}"
                )
            value = {**base.images, **value}
        elif snake == "gpu_prices":
            value = {**base.gpu_prices, **_prices(value, where)}
        changes[snake] = value
        origin[snake] = where
    try:
        return OperatorSettings.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            path = ".".join([to_camel(field), *(str(p) for p in err["loc"][1:])])
            where = origin.get(field, "default")
            problems.append(
                f"operator setting {path} ({where}): {err['msg']}; got {err.get('input')!r}"
            )
        raise SettingsError("; ".join(problems)) from None


def load(env: Mapping[str, str] | None = None) -> OperatorSettings:
    """File named by KAKUGO_OPERATOR_SETTINGS, then KAKUGO_* environment overrides."""
    env = dict(os.environ if env is None else env)
    settings = OperatorSettings()
    if path := env.get(SETTINGS_FILE_ENV):
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(
                f"operator settings file {path} ({SETTINGS_FILE_ENV}): {exc}"
            ) from None
        if not isinstance(data, Mapping):
            raise SettingsError(
                f"operator settings file {path} ({SETTINGS_FILE_ENV}): "
                "expected a mapping of settings"
            )
        settings = from_mapping(data, settings, dict.fromkeys(data, f"file {path}"))
    overrides: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for kind in DEFAULT_IMAGES:
        var = f"KAKUGO_IMAGE_{kind.upper()}"
        if image := env.get(var):
            overrides.setdefault("images", {})[kind] = image
            sources["images"] = var
    for var, key in ENV_KEYS.items():
        if (raw := env.get(var)) is not None:
            overrides[key] = raw
            sources[key] = f"${var}"
    return from_mapping(overrides, settings, sources)
