"""The run report: what a run made, what it dropped and why, what it cost, and how the
tuned model compares with the base model. Written as `report.md` in the run folder, with
two pictures beside it (training loss, evaluation), and printed at the end of `kakugo run`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kakugo_stages.cost import dollars, gpu_cost, token_cost
from kakugo_stages.graph import STAGES, TEACHER_STAGES
from kakugo_stages.resolved import RunSpec
from kakugo_stages.store import ArtifactNotFound, ArtifactStore, StageOutput

LOSS_PNG = "training-loss.png"
EVAL_PNG = "evaluation.png"


@dataclass
class StageLine:
    name: str
    state: str
    shards: str
    rows_in: int
    rows_out: int
    requests: int
    rejected: Counter[str]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    gpus: int
    #: Of the tokens, those paid at Batch API prices.
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0


@dataclass
class RunFacts:
    """Everything the report shows, gathered from the store."""

    stages: list[StageLine]
    filter_stats: dict[str, Any]
    evaluation: dict[str, Any] | None
    loss_history: list[tuple[float, float]]
    train_stats: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _sum_stats(stats: dict[int, dict[str, Any]], key: str) -> int:
    return sum(int(s.get(key, 0) or 0) for s in stats.values())


def gather(run: RunSpec, store: ArtifactStore) -> RunFacts:
    from kakugo_stages.stages import get_stage

    lines = []
    for name in STAGES:
        stage = get_stage(name)(run, store) if _has_stage(name) else None
        out = StageOutput(store, name)
        stats = out.all_stats()
        total = stage.num_shards() if stage is not None else max(len(stats), 1)
        done = len(out.completed_shards())
        skipped = any(s.get("stage_skipped") for s in stats.values())
        state = (
            "skipped" if skipped else "done" if done == total else "partial" if stats else "not run"
        )
        rejected: Counter[str] = Counter()
        for s in stats.values():
            rejected.update(s.get("rejected") or {})
        res = run.spec.stage_resources(name)
        on_gpu = _on_gpu(run, name)
        lines.append(
            StageLine(
                name,
                state,
                f"{done}/{total}",
                _sum_stats(stats, "rows_in"),
                _sum_stats(stats, "rows_out"),
                _sum_stats(stats, "requests"),
                rejected,
                sum(int(s.get("teacher", {}).get("prompt_tokens", 0)) for s in stats.values()),
                sum(int(s.get("teacher", {}).get("completion_tokens", 0)) for s in stats.values()),
                sum(float(s.get("seconds", 0)) for s in stats.values()),
                (res.gpus or 0) if on_gpu else 0,
                sum(
                    int(s.get("teacher", {}).get("batch_prompt_tokens", 0)) for s in stats.values()
                ),
                sum(
                    int(s.get("teacher", {}).get("batch_completion_tokens", 0))
                    for s in stats.values()
                ),
            )
        )
    filter_stats = StageOutput(store, "filter").read_stats(0) or {}
    train_stats = StageOutput(store, "train").read_stats(0) or {}
    try:
        evaluation = store.read_json("evaluation/results.json")
    except ArtifactNotFound:
        evaluation = None
    return RunFacts(lines, filter_stats, evaluation, _loss_history(store, train_stats), train_stats)


def _has_stage(name: str) -> bool:
    from kakugo_stages.stages import available

    return name in available()


def _on_gpu(run: RunSpec, stage: str) -> bool:
    spec = run.spec
    if stage == "train":
        return spec.training.device == "cuda"
    if stage == "evaluate":
        return spec.evaluation.device == "cuda"
    if stage == "review":
        return spec.review is not None and spec.review.device == "cuda"
    return False


def _loss_history(store: ArtifactStore, train_stats: dict[str, Any]) -> list[tuple[float, float]]:
    history = train_stats.get("loss_history")
    if not history:
        try:
            history = store.read_json("train/_progress.json").get("loss_history")
        except ArtifactNotFound:
            history = None
    out = []
    for point in history or []:
        if isinstance(point, dict) and "step" in point and "loss" in point:
            out.append((float(point["step"]), float(point["loss"])))
        elif isinstance(point, list | tuple) and len(point) >= 2:
            out.append((float(point[0]), float(point[1])))
    return out


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt_s(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.2f} h"


def cost_lines(run: RunSpec, facts: RunFacts, gpu_price: Decimal | None) -> list[tuple[str, str]]:
    """(item, dollars) lines of the estimate, with what each is computed from."""
    lines = []
    teacher = run.spec.teacher
    prompt = sum(s.prompt_tokens for s in facts.stages if s.name in TEACHER_STAGES)
    completion = sum(s.completion_tokens for s in facts.stages if s.name in TEACHER_STAGES)
    total = Decimal(0)
    if teacher.endpoint is not None:
        teaching = [s for s in facts.stages if s.name in TEACHER_STAGES]
        batch_prompt = sum(s.batch_prompt_tokens for s in teaching)
        batch_completion = sum(s.batch_completion_tokens for s in teaching)
        # Answers of the Batch API at its prices, the rest at the synchronous ones.
        for (p_tokens, c_tokens), p, how in (
            ((prompt - batch_prompt, completion - batch_completion), teacher.endpoint.prices, ""),
            ((batch_prompt, batch_completion), teacher.endpoint.batch_prices, " (Batch API)"),
        ):
            if how and not (p_tokens or c_tokens):
                continue
            cost = token_cost(p_tokens, c_tokens, p)
            total += cost
            lines.append(
                (
                    f"teacher API{how}: {p_tokens:,} prompt + {c_tokens:,} completion tokens "
                    f"at ${p.input_per_million}/${p.output_per_million} per 1M",
                    dollars(cost),
                )
            )
    gpu_seconds = sum(s.seconds * s.gpus for s in facts.stages)
    if gpu_price is not None and gpu_seconds:
        cost = gpu_cost(gpu_seconds, 1, gpu_price)
        total += cost
        lines.append(
            (
                f"GPU time: {gpu_seconds / 3600:.3f} GPU-hours at ${gpu_price}/GPU-hour",
                dollars(cost),
            )
        )
    if len(lines) == 0:
        lines.append(
            ("nothing priced: no teacher API; GPU time is priced with --gpu-price", dollars(total))
        )
    lines.append(("total", dollars(total)))
    return lines


def forecast_section(run: RunSpec, store: ArtifactStore, gpu_price: Decimal | None) -> list[str]:
    """The forecast of the run's spec (the recipe's estimates, as `kakugo plan` gives it)
    against what each stage measured: how far the estimates are from this teacher."""
    from kakugo_stages import forecast as fc_mod

    pricing = fc_mod.flat_pricing(gpu_price, f"--gpu-price {gpu_price}" if gpu_price else "")
    fc = fc_mod.forecast(run.name, run.spec, pricing)
    actual = fc_mod.measured({s: StageOutput(store, s).all_stats() for s in STAGES})
    rows: list[tuple[Any, ...]] = []
    for c in fc_mod.compare(fc, actual):
        if c.requests[1] is None:
            rows.append((c.stage, c.requests[0] or "", "", c.tokens[0] or "", "", "", ""))
            continue
        rows.append(
            (
                c.stage,
                c.requests[0] or "",
                c.requests[1] or "",
                c.tokens[0] or "",
                c.tokens[1] or "",
                _fmt_s(c.seconds[0]),
                _fmt_s(c.seconds[1] or 0.0),
            )
        )
    return [
        "## Forecast against actual",
        "",
        f"The forecast of this spec before the run (`kakugo plan`, the recipe's per-request "
        f"means; total ${fc.dollars}) beside what each stage measured. "
        f"`kakugo plan FILE --calibrate {store.url()}` forecasts with this run's means.",
        "",
        _table(
            (
                "stage",
                "requests (forecast)",
                "requests",
                "tokens (forecast)",
                "tokens",
                "time (forecast)",
                "time",
            ),
            rows,
        ),
        "",
    ]


def render(run: RunSpec, store: ArtifactStore, gpu_price: Decimal | None = None) -> str:
    """Write report.md (and its PNGs) into the run folder; return the Markdown."""
    facts = gather(run, store)
    lang = run.language
    parts = [
        f"# Kakugo run `{run.name}`: {lang.name} ({lang.code})",
        "",
        f"Run folder: `{store.url()}` · spec fingerprint `{run.fingerprint()}` · "
        f"student `{run.spec.student.model}`",
        "",
        "## Stages",
        "",
        _table(
            (
                "stage",
                "state",
                "shards",
                "rows in",
                "rows out",
                "teacher requests",
                "rejected",
                "prompt tokens",
                "completion tokens",
                "time",
                "GPUs",
            ),
            [
                (
                    s.name,
                    s.state,
                    s.shards,
                    s.rows_in,
                    s.rows_out,
                    s.requests or "",
                    sum(s.rejected.values()) or "",
                    s.prompt_tokens or "",
                    s.completion_tokens or "",
                    _fmt_s(s.seconds),
                    s.gpus or "CPU",
                )
                for s in facts.stages
            ],
        ),
        "",
    ]
    failures = [(s.name, reason, n) for s in facts.stages for reason, n in s.rejected.most_common()]
    parts += ["## Teacher failures", ""]
    if failures:
        parts += [
            "Requests whose answer failed or did not parse. None of them became a row; the "
            "raw answers are in `<stage>/_rejects/`.",
            "",
            _table(("stage", "reason", "requests"), failures),
            "",
        ]
    else:
        parts += ["None.", ""]
    fs = facts.filter_stats
    if fs:
        kept = fs.get("kept_by_source", {})
        tokens = fs.get("tokens_by_source", {})
        parts += [
            "## Training data",
            "",
            f"{fs.get('rows_out', 0)} rows ({fs.get('train', 0)} train, "
            f"{fs.get('validation', 0)} validation), {fs.get('reasoning_rows', 0)} with a "
            "reasoning block. Dataset: `dataset/` (card: `dataset/README.md`).",
            "",
            _table(
                ("source", "rows", "tokens"),
                [(k, v, tokens.get(k, "")) for k, v in sorted(kept.items())],
            ),
            "",
            "Rows dropped by the filters (every one is in `filter/_excluded/00000.jsonl`):",
            "",
            _table(
                ("reason", "rows"), sorted((fs.get("dropped") or {}).items()) or [("(none)", 0)]
            ),
            "",
        ]
    cpu = sum(s.seconds for s in facts.stages if not s.gpus)
    gpu_h = sum(s.seconds * s.gpus for s in facts.stages) / 3600
    parts += [
        "## Time and cost",
        "",
        f"CPU time {_fmt_s(cpu)}, GPU time {gpu_h:.3f} GPU-hours.",
        "",
        _table(("item", "dollars"), cost_lines(run, facts, gpu_price)),
        "",
    ]
    parts += forecast_section(run, store, gpu_price)
    if facts.loss_history or facts.train_stats:
        ts = facts.train_stats
        parts += ["## Training", ""]
        summary = [
            f"{k}: {ts[k]}"
            for k in ("steps", "final_loss", "tokens_per_s", "train_tokens")
            if k in ts
        ]
        if summary:
            parts += ["; ".join(summary), ""]
        if facts.loss_history and _plot_loss(store, facts.loss_history):
            parts += [f"![training loss]({LOSS_PNG})", ""]
    parts += ["## Evaluation", ""]
    if facts.evaluation:
        tasks = facts.evaluation.get("tasks", {})
        parts += [
            "Base model against tuned model, on identical prompts.",
            "",
            _table(
                ("task", "metric", "base", "tuned", "delta", "n"),
                [
                    (
                        t,
                        v.get("metric", ""),
                        _num(v.get("base")),
                        _num(v.get("tuned")),
                        _num(v.get("delta"), signed=True),
                        v.get("n", ""),
                    )
                    for t, v in tasks.items()
                ],
            ),
            "",
        ]
        skipped = facts.evaluation.get("skipped") or {}
        if skipped:
            parts += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()), ""]
        if tasks and _plot_eval(store, tasks):
            parts += [f"![evaluation]({EVAL_PNG})", ""]
    else:
        parts += ["Not run yet.", ""]
    parts += _review_section(store)
    text = "\n".join(parts)
    store.write_text("report.md", text)
    return text


def _review_section(store: ArtifactStore) -> list[str]:
    """Native speakers' verdict (`kakugo review import`), when there is one."""
    from kakugo_stages.review.results import markdown

    try:
        review = store.read_json("evaluation/review.json")
    except ArtifactNotFound:
        if store.exists("review/index.html"):
            return [
                "## Human review",
                "",
                "The blinded review page is `review/index.html`; import raters' files with "
                "`kakugo review import`.",
                "",
            ]
        return []
    return ["## Human review", "", markdown(review)]


def _num(value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _save_png(store: ArtifactStore, key: str, fig: Any) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    store.write_bytes(key, buf.getvalue())


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the report is still complete without pictures
        return None
    return plt


def _plot_loss(store: ArtifactStore, history: list[tuple[float, float]]) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([s for s, _ in history], [v for _, v in history], color="#1f77b4", linewidth=1.6)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    _save_png(store, LOSS_PNG, fig)
    plt.close(fig)
    return True


def _plot_eval(store: ArtifactStore, tasks: dict[str, dict[str, Any]]) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    names = list(tasks)
    base = [tasks[n].get("base") or 0 for n in names]
    tuned = [tasks[n].get("tuned") or 0 for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names)), 3.4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], base, width=0.4, label="base", color="#9e9e9e")
    ax.bar([x + 0.2 for x in xs], tuned, width=0.4, label="tuned", color="#2e7d32")
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    ax.set_ylabel("score (accuracy % or chrF++)")
    ax.set_title("Base against tuned")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save_png(store, EVAL_PNG, fig)
    plt.close(fig)
    return True
