"""Operator settings: images, default storage, GPU prices, retries, teacher idling.

Read from a YAML file (`KAKUGO_OPERATOR_SETTINGS`, the Helm chart mounts one) and then
from `KAKUGO_*` environment variables, which win. Everything has a working default, so
`kakugo operator` starts with no configuration at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

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


@dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator needs that is not in a LanguageModel's spec."""

    images: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    #: Storage root for LanguageModels whose spec has no `storage`.
    storage_uri: str | None = None
    #: $ per GPU-hour keyed by (nvidia.com/gpu.product, capacity type).
    gpu_prices: dict[tuple[str, str], Decimal] = field(
        default_factory=lambda: dict(DEFAULT_GPU_PRICES)
    )
    default_gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    default_capacity_type: str = "on-demand"
    #: Retry n waits backoff_base * 2**(n-1), at most backoff_max.
    backoff_base_seconds: float = 30.0
    backoff_max_seconds: float = 1800.0
    #: Failed attempts allowed per stage (evictions and preemptions are free).
    retry_budget: int = 3
    #: What a spec change does to finished stages: "rerun" the changed ones, or "refuse".
    spec_changes: str = "rerun"
    #: Overrides every Teacher's spec.idleSeconds when set (tests use 1).
    teacher_idle_seconds: float | None = None
    #: Namespaces to watch; empty means all (`-A`).
    namespaces: tuple[str, ...] = ()
    #: Re-read the world at least this often, even without events.
    resync_seconds: float = 30.0
    metrics_port: int = 9090
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    #: Lines of a failed Pod's log quoted in Stalled messages and Events.
    log_tail_lines: int = 20

    def image_for(self, stage: str) -> str:
        """The image of the stage's declared kind (images/: the data stages share one)."""
        from kakugo_stages.contract import decl

        return self.images[decl(stage).image]

    def gpu_price(self, product: str | None, capacity: str | None) -> Decimal:
        """$ per GPU-hour; unknown products fall back to the default product's price."""
        product = product or self.default_gpu_product
        capacity = capacity or self.default_capacity_type
        for key in ((product, capacity), (product, self.default_capacity_type),
                    (self.default_gpu_product, capacity),
                    (self.default_gpu_product, self.default_capacity_type)):
            if key in self.gpu_prices:
                return self.gpu_prices[key]
        return Decimal(0)

    def backoff(self, failures: int) -> float:
        """Seconds before the retry that follows the `failures`-th failure."""
        return min(self.backoff_base_seconds * 2 ** max(failures - 1, 0), self.backoff_max_seconds)


def _prices(raw: Any) -> dict[tuple[str, str], Decimal]:
    # YAML shape: {NVIDIA-H100-80GB-HBM3: {on-demand: "4.00", spot: "2.00"}}
    out: dict[tuple[str, str], Decimal] = {}
    for product, by_capacity in (raw or {}).items():
        for capacity, price in by_capacity.items():
            out[(str(product), str(capacity))] = Decimal(str(price))
    return out


def from_mapping(data: dict[str, Any], base: OperatorSettings | None = None) -> OperatorSettings:
    """Settings from a camelCase or snake_case mapping (the Helm values' shape)."""
    base = base or OperatorSettings()
    names = {f.name for f in fields(OperatorSettings)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
        if snake not in names:
            raise ValueError(f"unknown operator setting {key!r}; known: {', '.join(sorted(names))}")
        if snake == "images":
            value = {**base.images, **value}
        elif snake == "gpu_prices":
            value = {**base.gpu_prices, **_prices(value)}
        elif snake == "namespaces":
            value = tuple(value or ())
        changes[snake] = value
    return replace(base, **changes)


def load(env: dict[str, str] | None = None) -> OperatorSettings:
    """File named by KAKUGO_OPERATOR_SETTINGS, then KAKUGO_* environment overrides."""
    env = dict(os.environ if env is None else env)
    settings = OperatorSettings()
    if path := env.get(SETTINGS_FILE_ENV):
        settings = from_mapping(yaml.safe_load(Path(path).read_text()) or {}, settings)
    overrides: dict[str, Any] = {}
    for kind in DEFAULT_IMAGES:
        if image := env.get(f"KAKUGO_IMAGE_{kind.upper()}"):
            overrides.setdefault("images", {})[kind] = image
    simple = {
        "KAKUGO_STORAGE_URI": "storageUri",
        "KAKUGO_BACKOFF_BASE_SECONDS": "backoffBaseSeconds",
        "KAKUGO_BACKOFF_MAX_SECONDS": "backoffMaxSeconds",
        "KAKUGO_RETRY_BUDGET": "retryBudget",
        "KAKUGO_TEACHER_IDLE_SECONDS": "teacherIdleSeconds",
        "KAKUGO_RESYNC_SECONDS": "resyncSeconds",
        "KAKUGO_METRICS_PORT": "metricsPort",
        "KAKUGO_SPEC_CHANGES": "specChanges",
        "KAKUGO_DEFAULT_GPU_PRODUCT": "defaultGpuProduct",
    }
    types = {f.name: f.type for f in fields(OperatorSettings)}
    for var, key in simple.items():
        if (raw := env.get(var)) is None:
            continue
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
        kind = str(types[snake])
        overrides[key] = (
            int(raw) if kind.startswith("int") else float(raw) if "float" in kind else raw
        )
    if ns := env.get("KAKUGO_NAMESPACES"):
        overrides["namespaces"] = [n.strip() for n in ns.split(",") if n.strip()]
    settings = from_mapping(overrides, settings)
    if settings.spec_changes not in ("rerun", "refuse"):
        raise ValueError(f"specChanges must be rerun or refuse, got {settings.spec_changes!r}")
    return settings
