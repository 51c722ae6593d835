"""The status of LanguageModel, Teacher and LanguageFleet, typed.

The operator builds and reads status through these models, and `kakugo crds` generates
the CRDs' status schemas from them (as it does the spec schemas from `spec.py`), so what
the operator writes and what the API server keeps cannot drift apart: a field missing
here would be pruned by the API server.

They live in the pipeline package because the CRDs are generated here and the pipeline
never imports the operator. Unlike the spec models they are mutable and lenient: reading
a status written by an older operator ignores fields that are gone (`extra="ignore"`),
and every field has a default, so an empty or partial status parses.

Serialize with `dump()`: camelCase, JSON types, no None values (an absent key, not a
null, is what a reader of `kubectl get -o yaml` expects).

One key of every status is not modelled: `status.kopf` (`KOPF_FIELD`), where Kopf keeps
its own state (the diff-base and handler progress; see `handlers.configure`). The CRDs
keep it as Kopf writes it; the models ignore it on read, never write it, and the
operator's status writes leave it alone (`operator_status`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: An RFC 3339 time in UTC, seconds precision (`2026-11-26T12:00:00Z`).
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
#: Dollars as a decimal string with 4 places (money is never a float).
Dollars = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$")]

ConditionStatus = Literal["True", "False", "Unknown"]
#: A stage's state machine: Pending -> Running -> Succeeded, or -> Retrying -> Running ...,
#: or -> Failed when the retry budget is spent.
StageState = Literal["Pending", "Running", "Queued", "Retrying", "Succeeded", "Failed"]
#: Why a stage whose inputs are complete has not started (the first gate that holds it).
Gate = Literal["Backoff", "Suspended", "Budget", "GPUQuota", "Teacher", "Concurrency"]
AttemptOutcome = Literal["Succeeded", "Failed", "Disrupted"]
LanguageModelPhase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Stalled"]
TeacherPhase = Literal["Starting", "Ready", "Idle", "Stalled"]
#: The served model (spec.serve): no model to serve yet, starting, ready, scaled to zero,
#: or serving switched off.
ServePhase = Literal["WaitingForModel", "Starting", "Ready", "Idle", "Disabled"]
FleetPhase = Literal["Running", "Ready", "Suspended", "Stalled"]


class StatusModel(BaseModel):
    """Base of the status models: camelCase, lenient on read, None never written."""

    model_config = ConfigDict(
        extra="ignore",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_assignment=False,
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Condition(StatusModel):
    """A Kubernetes condition (metav1.Condition's fields), kstatus-style."""

    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this condition describes."
    )
    last_transition_time: Timestamp | None = None

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def find_condition(conditions: list[Condition], kind: str) -> Condition | None:
    return next((c for c in conditions if c.type == kind), None)


# ----------------------------------------------------------------- LanguageModel


class StageCounts(StatusModel):
    """Counts of a stage from its Pods' termination summaries."""

    rows_in: int | None = None
    rows_out: int | None = None
    requests: int | None = None
    requests_ok: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    batch_prompt_tokens: int | None = Field(
        default=None, description="Of promptTokens, those paid at Batch API prices."
    )
    batch_completion_tokens: int | None = Field(
        default=None, description="Of completionTokens, those paid at Batch API prices."
    )
    rejected: dict[str, int] | None = Field(default=None, description="Dropped rows by reason.")
    extra: dict[str, Any] | None = Field(
        default=None, description="The stage's declared summary keys (training, evaluation)."
    )


class ShardProgress(StatusModel):
    done: int = 0
    total: int = 1
    active: int = 0


class Attempt(StatusModel):
    """One finished attempt of a stage (the last ten are kept)."""

    job: str
    attempt: int
    outcome: AttemptOutcome
    reason: str | None = None
    finished_at: Timestamp | None = None
    gpu_seconds: float = 0.0
    dollars: Dollars = "0.0000"


class StageStatus(StatusModel):
    """One stage of the pipeline: its state machine, its Job and what it did."""

    name: str
    state: StageState = "Pending"
    fingerprint: str = Field(default="", description="Hash of the spec paths it reads.")
    attempt: int = Field(default=0, description="The attempt of its Job (0: none yet).")
    failures: int = Field(default=0, description="Failed attempts (spend the retry budget).")
    disruptions: int = Field(default=0, description="Evicted or preempted attempts (free).")
    job: str | None = None
    created_at: Timestamp | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    retry_at: Timestamp | None = None
    done_seen_at: Timestamp | None = Field(
        default=None, description="When its Job was first seen finished (Pods settling)."
    )
    waiting_for: Gate | None = Field(
        default=None,
        description="Its inputs are complete but it has not started: the gate that holds it.",
    )
    reset: bool | None = Field(
        default=None, description="Its inputs changed: its old outputs must not count."
    )
    message: str = ""
    counts: StageCounts = Field(default_factory=StageCounts)
    shards: ShardProgress | None = None
    attempts: list[Attempt] = Field(default_factory=list)


class StageCost(StatusModel):
    dollars: Dollars
    gpu_hours: str
    teacher_dollars: Dollars | None = None


class Cost(StatusModel):
    dollars: Dollars = Field(
        default="0.0000", description="Total spent, a decimal string (teacherShare included)."
    )
    gpu_hours: str = Field(
        default="0.0000", description="GPU-hours of its own Pods, a decimal string."
    )
    budget: Dollars | None = Field(default=None, description="spec.budget.maxDollars.")
    by_stage: dict[str, StageCost] = Field(default_factory=dict)
    teacher_share: Dollars | None = Field(
        default=None,
        description="Its share of its Teacher's GPU time (the Teacher's status.cost.charged).",
    )


class ForecastStatus(StatusModel):
    """The cost forecast of the spec's generation (`kakugo plan` in short): made before
    the first stage starts, from the spec's counts and the recipe's per-request means."""

    observed_generation: int | None = Field(
        default=None, description="The metadata.generation it forecasts."
    )
    dollars: Dollars = Field(default="0.0000", description="Forecast total, a decimal string.")
    by_stage: dict[str, Dollars] = Field(default_factory=dict, description="Dollars by stage.")
    gpu_hours: str = "0.0000"
    wall_hours: str = "0.00"
    budget: Dollars | None = Field(default=None, description="spec.budget.maxDollars.")
    over_budget: bool = False
    assumptions: list[str] = Field(
        default_factory=list, description="What the figures rest on, briefly."
    )


class TaskScore(StatusModel):
    base: float | None = None
    tuned: float | None = None
    delta: float | None = None


class Evaluation(StatusModel):
    summary: str = ""
    tasks: dict[str, TaskScore] = Field(default_factory=dict)


class Progress(StatusModel):
    stages_done: int = 0
    stages_total: int = 0
    percent: int = 0
    stages: list[str] = Field(
        default_factory=list, description="The stages whose Jobs run now, in run order."
    )
    waiting: dict[str, Gate] = Field(
        default_factory=dict,
        description="Stages whose inputs are complete, by the gate that holds them.",
    )


class ServeStatus(StatusModel):
    """The tuned model's vLLM server (spec.serve): where it answers and when it was used."""

    phase: ServePhase | None = None
    url: str | None = Field(default=None, description="The OpenAI-compatible API (…/v1).")
    model: str | None = Field(default=None, description="The model name the server answers to.")
    model_version: str | None = Field(
        default=None, description="The train stage's result being served (its fingerprint)."
    )
    replicas: int | None = None
    ready_replicas: int | None = None
    last_used: Timestamp | None = Field(
        default=None, description="The last request seen on vLLM's /metrics, or the last wake."
    )
    requests: float | None = Field(
        default=None, description="vLLM's request counter at the last look (a new value is use)."
    )
    wake: str | None = Field(
        default=None, description="The kakugo.io/serve-wake annotation value last honoured."
    )


class LanguageModelStatus(StatusModel):
    """A LanguageModel's status: its stages, progress, cost, artifacts and evaluation."""

    observed_generation: int | None = None
    phase: LanguageModelPhase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    stages: list[StageStatus] = Field(default_factory=list)
    progress: Progress | None = None
    cost: Cost | None = None
    forecast: ForecastStatus | None = None
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="URIs of what the run has produced so far."
    )
    evaluation: Evaluation | None = None
    spec_fingerprint: str | None = Field(
        default=None, description="Hash of the resolved spec in the spec ConfigMap."
    )
    retry_request: str | None = Field(
        default=None, description="The kakugo.io/retry annotation value last honoured."
    )
    serve: ServeStatus | None = Field(default=None, description="The served model (spec.serve).")

    def stage(self, name: str) -> StageStatus | None:
        return next((s for s in self.stages if s.name == name), None)


# ----------------------------------------------------------------- Teacher


class TeacherStageTokens(StatusModel):
    """The last token count seen of one teacher stage of a client (a cumulative counter)."""

    fingerprint: str = Field(default="", description="The stage's fingerprint it belongs to.")
    tokens: int = 0


class TeacherCharge(StatusModel):
    """What a Teacher charged one LanguageModel so far, and its counters for the deltas."""

    uid: str = Field(default="", description="The LanguageModel's uid (a new one starts over).")
    dollars: Dollars = "0.000000"
    tokens: int = Field(default=0, description="Its tokens served and charged for.")
    counters: dict[str, TeacherStageTokens] = Field(
        default_factory=dict, description="Per teacher stage: the last count seen."
    )


class TeacherInterval(StatusModel):
    """The last interval closed by tokens or idle: tokens reported in its last second join it."""

    end: Timestamp
    dollars: Dollars = "0.000000"
    tokens: dict[str, int] = Field(
        default_factory=dict, description="Tokens served per client (none: idle)."
    )


class TeacherCost(StatusModel):
    """A Teacher's GPU time in dollars (6 places): charged by tokens served, or idle."""

    observed_at: Timestamp | None = Field(
        default=None, description="The end of the last interval accrued."
    )
    dollars: Dollars = Field(default="0.000000", description="GPU time so far.")
    gpu_seconds: int = 0
    idle: Dollars = Field(default="0.000000", description="Charged to the Teacher itself.")
    pending: Dollars = Field(
        default="0.000000",
        description="GPU time with clients whose tokens are not reported yet.",
    )
    former_clients: Dollars = Field(
        default="0.000000",
        description="Charged to LanguageModels that no longer use the Teacher.",
    )
    charged: dict[str, TeacherCharge] = Field(
        default_factory=dict, description="Charged per LanguageModel that uses it."
    )
    last_interval: TeacherInterval | None = None


class TeacherStatus(StatusModel):
    """A Teacher's status: where it serves, whether it is ready and who needs it."""

    observed_generation: int | None = None
    phase: TeacherPhase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    url: str | None = None
    model: str | None = None
    clients: list[str] = Field(
        default_factory=list, description="LanguageModels that need the server now."
    )
    replicas: int | None = None
    ready_replicas: int | None = None
    last_used: Timestamp | None = None
    cost: TeacherCost | None = None


# ----------------------------------------------------------------- LanguageFleet


class GpuAdmission(StatusModel):
    max_concurrent: int | None = None
    in_use: int = 0
    queued: list[str] = Field(default_factory=list)


class FleetCost(StatusModel):
    dollars: Dollars = "0.0000"
    gpu_hours: str = "0.0000"
    by_language: dict[str, Dollars] = Field(default_factory=dict)
    forecast: Dollars | None = Field(
        default=None, description="The sum of the members' status.forecast.dollars."
    )
    teacher_share: Dollars | None = Field(
        default=None, description="The members' shares of their Teachers (in dollars)."
    )


class TaskMean(StatusModel):
    mean_delta: float
    languages: int


class StalledLanguage(StatusModel):
    name: str
    language: str
    reason: str
    message: str = ""


class InvalidLanguage(StatusModel):
    index: int
    language: str
    name: str | None = None
    errors: list[str] = Field(default_factory=list)


class MemberRow(StatusModel):
    name: str
    language: str
    phase: LanguageModelPhase
    stages: list[str] = Field(default_factory=list, description="Its running stages.")
    cost: Dollars | None = None


class LanguageFleetStatus(StatusModel):
    """A LanguageFleet's status: counts, GPU admission, cost and evaluation over members."""

    observed_generation: int | None = None
    phase: FleetPhase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    languages: int = 0
    members: int = 0
    ready: int = 0
    running: int = 0
    queued: int = 0
    pending: int = 0
    suspended: int = 0
    succeeded: int = 0
    stalled: int = 0
    invalid: int = 0
    phases: dict[str, int] = Field(default_factory=dict)
    gpu: GpuAdmission | None = None
    cost: FleetCost | None = None
    evaluation: dict[str, TaskMean] = Field(default_factory=dict)
    stalled_languages: list[StalledLanguage] = Field(default_factory=list)
    invalid_languages: list[InvalidLanguage] = Field(default_factory=list)
    member_status: list[MemberRow] = Field(default_factory=list)


#: Where Kopf keeps its state in every kind's status (not a field of the models).
KOPF_FIELD = "kopf"


def operator_status(raw: Any) -> dict[str, Any]:
    """A status as the operator's own writes see it: without Kopf's state, so that a merge
    patch computed from it never touches (nor nulls) `status.kopf`."""
    return {k: v for k, v in dict(raw or {}).items() if k != KOPF_FIELD}


STATUS_MODELS: dict[str, type[StatusModel]] = {
    "LanguageModel": LanguageModelStatus,
    "Teacher": TeacherStatus,
    "LanguageFleet": LanguageFleetStatus,
}
