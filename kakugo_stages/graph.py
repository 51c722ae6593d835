"""The stage graph, declared once.

Each stage says which stages it reads, which spec paths decide its output (its
fingerprint), whether it talks to the teacher, where its shard count lives in the spec,
which image runs it, what it produces and which extra keys its termination summary
carries. Everything else derives from these declarations: the stage classes (`Stage.decl`),
the run order and the DAG of both executors, the operator's fingerprints, Job shapes,
images, artifacts and status counts, and the docs.

This module is plain data with no imports from the rest of the pipeline, so that the spec
models and the operator can read it without loading any stage code (aiohttp, transformers).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

ImageKind = Literal["stages", "trainer", "eval"]

#: Spec paths every stage's output depends on: moving them means starting over.
COMMON_READS: tuple[str, ...] = ("language", "storage.uri", "storage.pvc", "data.seed")
#: What a teacher stage's requests depend on besides its own section: the sampling
#: parameters and the other request fields (reasoning effort, the answer schema).
TEACHER_READS: tuple[str, ...] = (
    "teacher.sampling",
    "teacher.reasoningEffort",
    "teacher.structuredOutput",
)


@dataclass(frozen=True)
class StageDecl:
    """One stage of the pipeline, as the rest of the system sees it."""

    name: str
    #: Stages whose completed output this one reads (datatrove's `depends`).
    inputs: tuple[str, ...] = ()
    #: Spec paths (camelCase, as in the manifest) that decide this stage's output, beside
    #: COMMON_READS (and TEACHER_READS for teacher stages).
    reads: tuple[str, ...] = ()
    #: Sends requests to the teacher (needs it reachable; counts its tokens).
    teacher: bool = False
    #: Spec path of the shard count (an Indexed Job of that many completions); None: one.
    shards: str | None = None
    #: The image kind that runs it (images/: stages on CPU, trainer and eval on GPUs).
    image: ImageKind = "stages"
    #: Artifacts it produces: status.artifacts key -> path under the run.
    produces: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Keys of its shard stats copied into the termination summary, beyond the counts.
    summary: tuple[str, ...] = ()

    @property
    def fingerprint_paths(self) -> tuple[str, ...]:
        return (*COMMON_READS, *(TEACHER_READS if self.teacher else ()), *self.reads)

    @property
    def sharded(self) -> bool:
        return self.shards is not None

    def num_shards(self, spec: Mapping[str, Any]) -> int:
        """Shards of this stage for a spec dict (camelCase, defaults filled)."""
        if self.shards is None:
            return 1
        return int(spec_value(spec, self.shards))


def _artifacts(**paths: str) -> Mapping[str, str]:
    return MappingProxyType(dict(paths))


#: The pipeline, in a topological order (also the order of status.stages and of a
#: one-stage-at-a-time run). Stage names appear in status, labels and metrics: keep them.
GRAPH: tuple[StageDecl, ...] = (
    StageDecl(
        "topics",
        teacher=True,
        shards="data.topics.shards",
        reads=("data.topics", "data.mix.sources"),
    ),
    StageDecl(
        "scenarios",
        teacher=True,
        shards="data.scenarios.shards",
        reads=("data.scenarios", "data.mix.sources"),
    ),
    # contexts cuts documents to the student's tokens.
    StageDecl(
        "contexts",
        teacher=True,
        shards="data.contexts.shards",
        reads=("data.contexts", "data.mix.sources", "student.model", "student.tokenizer"),
    ),
    StageDecl(
        "revise",
        inputs=("topics", "scenarios", "contexts"),
        teacher=True,
        shards="data.revise.shards",
        reads=("data.revise", "data.mix.sources"),
    ),
    StageDecl(
        "respond",
        inputs=("revise",),
        teacher=True,
        shards="data.respond.shards",
        reads=("data.respond", "data.mix.sources"),
    ),
    # translate caps its sources by the student's tokens.
    StageDecl(
        "translate",
        teacher=True,
        shards="data.translate.shards",
        reads=("data.translate", "data.mix.sources", "student.model", "student.tokenizer"),
    ),
    # filter drops rows over the training cutoff and counts with the student's tokenizer
    # and chat template.
    StageDecl(
        "filter",
        inputs=("respond", "translate"),
        reads=("data.filter", "data.mix", "student", "training.cutoffLen"),
        produces=_artifacts(dataset="dataset"),
    ),
    # train writes the mix's thinking toggle into the model card.
    StageDecl(
        "train",
        inputs=("filter",),
        reads=(
            "student",
            "training",
            "data.mix.reasoning",
            "data.mix.thinkSystemPrompt",
            "data.mix.conciseSystemPrompt",
        ),
        image="trainer",
        produces=_artifacts(model="model"),
        summary=(
            "steps",
            "final_loss",
            "eval_loss",
            "train_tokens",
            "tokens_per_s",
            "resumed_from_step",
        ),
    ),
    StageDecl(
        "evaluate",
        inputs=("train",),
        reads=("student", "evaluation"),
        image="eval",
        produces=_artifacts(evaluation="evaluation/results.json"),
        summary=("summary", "evaluation", "skipped"),
    ),
    # review writes the blinded side-by-side page for native speakers; skipped without
    # spec.review. After evaluate: its GPU is free by then and the page never delays the
    # benchmark numbers. It reads the dataset's validation prompts and the tuned model.
    StageDecl(
        "review",
        inputs=("evaluate",),
        reads=("student", "review", "data.mix.conciseSystemPrompt"),
        image="eval",
        produces=_artifacts(review="review/index.html"),
        summary=("prompts", "page", "stage_skipped"),
    ),
    # publish pushes the dataset, the model and the evaluation results to the Hugging Face
    # Hub; skipped without spec.publish.
    StageDecl(
        "publish",
        inputs=("evaluate",),
        reads=("publish",),
        produces=_artifacts(published="publish/published.json"),
        summary=("repos", "stage_skipped"),
    ),
)

BY_NAME: Mapping[str, StageDecl] = MappingProxyType({d.name: d for d in GRAPH})
#: Stage names in run order.
STAGES: tuple[str, ...] = tuple(d.name for d in GRAPH)
#: Stages that send requests to the teacher.
TEACHER_STAGES: tuple[str, ...] = tuple(d.name for d in GRAPH if d.teacher)


def decl(stage: str) -> StageDecl:
    try:
        return BY_NAME[stage]
    except KeyError:
        raise KeyError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}") from None


def spec_value(spec: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted camelCase path of a spec dict (None where absent)."""
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def upstream(stage: str) -> tuple[str, ...]:
    """Every stage `stage` depends on, directly or not, in run order."""
    seen: set[str] = set()
    todo = list(decl(stage).inputs)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += decl(name).inputs
    return tuple(s for s in STAGES if s in seen)


def downstream(stage: str) -> tuple[str, ...]:
    """Every stage that depends on `stage`, directly or not, in run order."""
    return tuple(s for s in STAGES if stage in upstream(s))


def ready(done: Iterable[str], candidates: Iterable[str] = STAGES) -> Iterator[str]:
    """The candidates (in run order) whose inputs are all in `done`: what a DAG executor may
    start now."""
    finished = set(done)
    wanted = set(candidates)
    for d in GRAPH:
        if d.name in wanted and d.name not in finished and set(d.inputs) <= finished:
            yield d.name


def fingerprints(spec: Mapping[str, Any]) -> dict[str, str]:
    """stage -> 16-hex fingerprint of the spec paths it reads and of its inputs'
    fingerprints: a spec change reruns exactly the stages whose fingerprint moved, and
    through the input hashes everything downstream of them."""
    out: dict[str, str] = {}
    for d in GRAPH:
        values = {p: spec_value(spec, p) for p in d.fingerprint_paths}
        blob = json.dumps(
            {"stage": d.name, "inputs": values, "up": [out[u] for u in d.inputs]},
            sort_keys=True,
            default=str,
        )
        out[d.name] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return out


def changed_paths(old: Mapping[str, Any], new: Mapping[str, Any], stage: str) -> list[str]:
    """The spec paths read by `stage` that differ between two specs (for messages)."""
    return [p for p in decl(stage).fingerprint_paths if spec_value(old, p) != spec_value(new, p)]


def check() -> None:
    """The declarations are a DAG in run order with known names (a test calls this)."""
    seen: set[str] = set()
    for d in GRAPH:
        unknown = [i for i in d.inputs if i not in BY_NAME]
        if unknown:
            raise ValueError(f"stage {d.name} reads unknown stages {unknown}")
        later = [i for i in d.inputs if i not in seen]
        if later:
            raise ValueError(f"stage {d.name} reads {later}, which come after it")
        seen.add(d.name)
